//! redb's errors as [`StoreError`]s naming the file.

use std::io;
use std::path::Path;

use redb::{CommitError, DatabaseError, StorageError, TableError, TransactionError};

use crate::error::StoreError;

/// An error opening the file.
pub(crate) fn database_error(path: &Path, err: DatabaseError) -> StoreError {
    match err {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::Locked {
                path: path.to_path_buf(),
            }
        }
        DatabaseError::UpgradeRequired(version) => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "written by an old redb (file format {version}) that must be upgraded first"
            ),
        },
        DatabaseError::RepairAborted => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "it needs a repair, which was aborted".to_string(),
        },
        DatabaseError::Storage(err) => storage_error(path, "opening", err),
        other => StoreError::from_io(path, "opening", io::Error::other(other.to_string())),
    }
}

/// An error of the storage under a transaction; `doing` says what the store was doing.
pub(crate) fn storage_error(path: &Path, doing: &'static str, err: StorageError) -> StoreError {
    match err {
        StorageError::Corrupted(detail) => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail,
        },
        // redb reports a file that is not a database, or ends too early, as an I/O error.
        StorageError::Io(err)
            if matches!(
                err.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) =>
        {
            StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: err.to_string(),
            }
        }
        StorageError::Io(err) => StoreError::from_io(path, doing, err),
        StorageError::DatabaseClosed => StoreError::Closed {
            path: path.to_path_buf(),
        },
        other => StoreError::from_io(path, doing, io::Error::other(other.to_string())),
    }
}

pub(crate) fn transaction_error(path: &Path, err: TransactionError) -> StoreError {
    match err {
        TransactionError::Storage(err) => storage_error(path, "starting a transaction", err),
        other => StoreError::from_io(
            path,
            "starting a transaction",
            io::Error::other(other.to_string()),
        ),
    }
}

pub(crate) fn table_error(path: &Path, err: TableError) -> StoreError {
    match err {
        TableError::Storage(err) => storage_error(path, "opening a table", err),
        other => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

pub(crate) fn commit_error(path: &Path, err: CommitError) -> StoreError {
    match err {
        CommitError::Storage(err) => storage_error(path, "committing", err),
        other => StoreError::from_io(path, "committing", io::Error::other(other.to_string())),
    }
}
