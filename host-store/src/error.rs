//! What can go wrong with a store: one error type, each case naming the store's file.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A store operation that failed, or a store that could not be opened.
///
/// Every case names the store's file. The error is `Clone` because one failed group commit
/// fails every write that was in it; the OS error behind `Full` and `Io` is shared and stays
/// reachable through [`std::error::Error::source`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file is not a store this Courier wrote, or was damaged after it was written: it is
    /// refused rather than replaced.
    #[error("store {} is corrupt: {detail}", path.display())]
    Corrupt {
        /// The store's file.
        path: PathBuf,
        /// What was found wrong.
        detail: String,
    },
    /// The file was written in a format this Courier does not read (a newer Courier wrote it).
    #[error(
        "store {} has format version {found}; this Courier reads version {supported}",
        path.display()
    )]
    Version {
        /// The store's file.
        path: PathBuf,
        /// The format version recorded in the file.
        found: u64,
        /// The format version this Courier reads and writes.
        supported: u64,
    },
    /// Another process, or another open in this process, has the store open.
    #[error(
        "store {} is locked: another process (another `courier run`?) or another open in this \
         process has it open",
        path.display()
    )]
    Locked {
        /// The store's file.
        path: PathBuf,
    },
    /// The disk is full, or the file reached a size limit: nothing in the failed write was
    /// stored, and the store takes no more writes until it is opened again.
    #[error("store {} is full: {source}", path.display())]
    Full {
        /// The store's file.
        path: PathBuf,
        /// The OS error (`ENOSPC`, `EFBIG`, `EDQUOT`).
        source: Arc<io::Error>,
    },
    /// Reading or writing the file failed for another reason.
    #[error("store {}: {doing}: {source}", path.display())]
    Io {
        /// The store's file.
        path: PathBuf,
        /// What the store was doing.
        doing: &'static str,
        /// The OS error.
        source: Arc<io::Error>,
    },
    /// A request was over one of the store's bounds ([`crate::limits`]); nothing was stored.
    #[error(
        "store {} refused {bound}: {found} is over the bound of {limit}",
        path.display()
    )]
    TooLarge {
        /// The store's file.
        path: PathBuf,
        /// Which bound.
        bound: Bound,
        /// The size or count asked for.
        found: usize,
        /// The bound.
        limit: usize,
    },
    /// The store was closed, or stopped after an earlier failure it reported.
    #[error("store {} is closed", path.display())]
    Closed {
        /// The store's file.
        path: PathBuf,
    },
}

impl StoreError {
    /// The store's file.
    pub fn path(&self) -> &Path {
        match self {
            StoreError::Corrupt { path, .. }
            | StoreError::Version { path, .. }
            | StoreError::Locked { path }
            | StoreError::Full { path, .. }
            | StoreError::Io { path, .. }
            | StoreError::TooLarge { path, .. }
            | StoreError::Closed { path } => path,
        }
    }

    /// An OS error met while `doing` something to the file at `path`: `Full` when it says the
    /// disk or a file size limit was reached, `Io` otherwise.
    pub(crate) fn from_io(path: &Path, doing: &'static str, err: io::Error) -> StoreError {
        if is_out_of_space(&err) {
            StoreError::Full {
                path: path.to_path_buf(),
                source: Arc::new(err),
            }
        } else {
            StoreError::Io {
                path: path.to_path_buf(),
                doing,
                source: Arc::new(err),
            }
        }
    }
}

/// Whether an OS error means "no room": the disk, a quota, or a file size limit.
fn is_out_of_space(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::FileTooLarge | io::ErrorKind::QuotaExceeded
    ) || matches!(err.raw_os_error(), Some(code) if code == ENOSPC || code == EFBIG || code == EDQUOT)
}

// Linux's numbers; the `ErrorKind`s above cover every platform std maps them on.
const EFBIG: i32 = 27;
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

/// Which of the store's bounds a request was over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Bound {
    /// An actor id, sender id, destination or timer name over
    /// [`MAX_ID_BYTES`](crate::limits::MAX_ID_BYTES).
    Id,
    /// A payload over [`MAX_PAYLOAD_BYTES`](crate::limits::MAX_PAYLOAD_BYTES).
    Payload,
    /// A state over [`MAX_STATE_BYTES`](crate::limits::MAX_STATE_BYTES).
    State,
    /// An actor's timers over [`MAX_TIMERS_PER_ACTOR`](crate::limits::MAX_TIMERS_PER_ACTOR).
    TimersPerActor,
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bound::Id => "an id of this many bytes",
            Bound::Payload => "a payload of this many bytes",
            Bound::State => "a state of this many bytes",
            Bound::TimersPerActor => "this many timers for one actor",
        })
    }
}
