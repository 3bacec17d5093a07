//! [`RedbStore`]: the embedded store, one redb file per host.

mod errors;
mod tables;
mod writer;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use self::errors::{database_error, storage_error, table_error, transaction_error};
use self::tables::{
    DEAD_LETTERS, DROPPED_DEAD_LETTERS_KEY, FORMAT_KEY, FORMAT_VERSION, MAILBOX, MARKS, META,
    NEXT_DEAD_LETTER_KEY, OUTBOX, POSITION_CEILING_KEY, STATE, TIMERS,
};
use self::writer::{Counters, Counts, Op, Outcome, Queue, Writer};
use crate::error::{Bound, StoreError};
use crate::limits::{
    MAX_DEAD_LETTER_PAYLOAD_BYTES, MAX_DEAD_LETTER_REASON_BYTES, MAX_ID_BYTES, MAX_PAYLOAD_BYTES,
    MAX_STATE_BYTES,
};
use crate::record::{
    Appended, Batch, Committed, DeadLetter, DeadLetters, Entry, Recovered, StoreStats, Timer,
    TimerChange,
};
use crate::store::{Store, StoreFuture};

/// The name of the store's file in a data folder ([`RedbStore::open_in_dir`]).
pub const FILE_NAME: &str = "courier.redb";

/// How much of the file redb keeps cached in memory. Recovery reads each actor once and the
/// writer touches the newest pages, so a modest cache serves both; redb's default (1 GiB)
/// would be a large share of a small host's memory.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// The embedded store: one redb file, written by one thread in group commits.
///
/// redb is pure Rust, ACID, and makes a commit durable with one fsync; its file format is
/// stable. Each commit of the store carries every write that arrived while the previous one
/// was committing, so many senders share one fsync.
///
/// Opening checks the whole file (redb's integrity check) and the store's format version,
/// and refuses a file that is corrupt, from a newer Courier, or open elsewhere, naming the
/// file and the cause: a store is never silently replaced by an empty one. Dropping the last
/// handle commits what is queued and closes the file.
///
/// ```
/// use courier_host_store::{Appended, Entry, Kind, RedbStore, Store, StoreError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = RedbStore::open_in_dir(dir.path())?;
/// let hello = Entry::new("greeter", "host", Kind::Message, &b"hello"[..]).with_seq(7);
/// let first = store.append(vec![hello.clone()]).await?;
/// let again = store.append(vec![hello]).await?;
/// assert!(matches!(first[0], Appended::Stored { .. }));
/// assert_eq!(again[0], Appended::Duplicate);
///
/// // The file is this process's until the store is dropped.
/// let refused = RedbStore::open_in_dir(dir.path()).unwrap_err();
/// assert!(matches!(refused, StoreError::Locked { .. }));
/// drop(store);
/// let store = RedbStore::open_in_dir(dir.path())?;
/// assert_eq!(store.load("greeter").await?.mailbox.len(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: Arc<Database>,
    queue: Arc<Queue>,
    counts: Arc<Counts>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.close();
        let writer = self.writer.get_mut().map(Option::take);
        if let Ok(Some(writer)) = writer {
            let _ = writer.join();
        }
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Open the store in the file at `path`, making it if there is no file or an empty one.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] for a file that is not a store or was damaged,
    /// [`StoreError::Version`] for one from a newer Courier, [`StoreError::Locked`] for one
    /// open in another process or already open in this one, [`StoreError::Full`] or
    /// [`StoreError::Io`] when the OS refuses.
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let db = open_database(&path)?;
        let (counters, counts) = prepare(&db, &path)?;
        let db = Arc::new(db);
        let queue = Arc::new(Queue::new(path.clone()));
        let counts = Arc::new(counts);
        let writer = Writer {
            db: Arc::clone(&db),
            path: path.clone(),
            counters,
            counts: Arc::clone(&counts),
            failed: None,
        };
        let writer_queue = Arc::clone(&queue);
        let writer = std::thread::Builder::new()
            .name("courier-store".to_string())
            .spawn(move || writer.run(writer_queue))
            .map_err(|e| StoreError::from_io(&path, "starting the writer thread", e))?;
        Ok(RedbStore {
            inner: Arc::new(Inner {
                path,
                db,
                queue,
                counts,
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    /// Open the store [`FILE_NAME`] in the folder `dir`, making the folder if it is missing.
    ///
    /// # Errors
    ///
    /// As [`RedbStore::open`], and [`StoreError::Io`] if the folder cannot be made.
    pub fn open_in_dir(dir: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        let dir = dir.as_ref();
        let path = dir.join(FILE_NAME);
        fs::create_dir_all(dir).map_err(|e| StoreError::from_io(&path, "making its folder", e))?;
        RedbStore::open(path)
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn write(
        &self,
        op: Op,
        bytes: usize,
    ) -> impl Future<Output = Result<Outcome, StoreError>> + Send + use<> {
        let queue = Arc::clone(&self.inner.queue);
        async move { queue.submit(op, bytes).await }
    }

    /// Run `read` on a snapshot of the file: on tokio's blocking threads when called inside
    /// a runtime, so a long read (a recovery) does not hold up a worker, and at once otherwise.
    fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Database, &Path) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<T> {
        let db = Arc::clone(&self.inner.db);
        let path = self.inner.path.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let task = runtime.spawn_blocking(move || read(&db, &path));
                let path = self.inner.path.clone();
                Box::pin(async move {
                    task.await.unwrap_or_else(|e| {
                        Err(StoreError::from_io(&path, "reading", io::Error::other(e)))
                    })
                })
            }
            Err(_) => {
                let result = read(&db, &path);
                Box::pin(async move { result })
            }
        }
    }

    fn too_large(&self, bound: Bound, found: usize, limit: usize) -> StoreError {
        StoreError::TooLarge {
            path: self.inner.path.clone(),
            bound,
            found,
            limit,
        }
    }

    fn check_id(&self, id: &str) -> Result<(), StoreError> {
        if id.len() > MAX_ID_BYTES {
            return Err(self.too_large(Bound::Id, id.len(), MAX_ID_BYTES));
        }
        Ok(())
    }

    fn check_payload(&self, payload: &[u8]) -> Result<(), StoreError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(self.too_large(Bound::Payload, payload.len(), MAX_PAYLOAD_BYTES));
        }
        Ok(())
    }
}

/// A refused request, as the future every operation returns.
fn refused<T: Send + 'static>(err: StoreError) -> StoreFuture<T> {
    Box::pin(async move { Err(err) })
}

/// Open the file with redb, turning a panic on a hostile file into [`StoreError::Corrupt`].
fn open_database(path: &Path) -> Result<Database, StoreError> {
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    // A file changed behind redb's back (a flipped bit, a bad copy) is refused at open
    // instead of failing some later read.
    builder.set_check_integrity_on_open(true);
    match catch_unwind(AssertUnwindSafe(|| builder.create(path))) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(err)) => Err(database_error(path, err)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("redb could not read it: {what}"),
            })
        }
    }
}

/// Check the format version (recording it in a new store) and make every table, then read
/// the counters the writer starts from.
fn prepare(db: &Database, path: &Path) -> Result<(Counters, Counts), StoreError> {
    let txn = db.begin_write().map_err(|e| transaction_error(path, e))?;
    let read = |e| storage_error(path, "reading", e);
    let write = |e| storage_error(path, "writing", e);
    let table = |e| table_error(path, e);
    let any_tables = txn.list_tables().map_err(read)?.next().is_some();
    let counters;
    {
        let mut meta = txn.open_table(META).map_err(table)?;
        let format = meta.get(FORMAT_KEY).map_err(read)?.map(|v| v.value());
        match format {
            Some(FORMAT_VERSION) => {}
            Some(found) => {
                return Err(StoreError::Version {
                    path: path.to_path_buf(),
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            None if any_tables => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: "a redb database, but not a Courier store (it has no format record)"
                        .to_string(),
                });
            }
            None => {
                meta.insert(FORMAT_KEY, FORMAT_VERSION).map_err(write)?;
            }
        }
        let get = |key| -> Result<u64, StoreError> {
            Ok(meta.get(key).map_err(read)?.map_or(0, |v| v.value()))
        };
        // Numbering resumes above everything reserved before; position 0 is never given, so
        // a reader can use it as "none".
        let ceiling = get(POSITION_CEILING_KEY)?.max(1);
        counters = Counters {
            next_position: ceiling,
            position_ceiling: ceiling,
            next_dead_letter: get(NEXT_DEAD_LETTER_KEY)?,
            dropped_dead_letters: get(DROPPED_DEAD_LETTERS_KEY)?,
            dead_letters: 0,
        };
    }
    let counts = Counts::default();
    let dead_letters;
    {
        let mailbox = txn.open_table(MAILBOX).map_err(table)?;
        counts
            .mailbox_entries
            .store(mailbox.len().map_err(read)?, Ordering::Relaxed);
        let outbox = txn.open_table(OUTBOX).map_err(table)?;
        counts
            .outbox_entries
            .store(outbox.len().map_err(read)?, Ordering::Relaxed);
        dead_letters = txn
            .open_table(DEAD_LETTERS)
            .map_err(table)?
            .len()
            .map_err(read)?;
        txn.open_table(MARKS).map_err(table)?;
        txn.open_table(STATE).map_err(table)?;
        txn.open_table(TIMERS).map_err(table)?;
    }
    txn.commit().map_err(|e| errors::commit_error(path, e))?;
    Ok((
        Counters {
            dead_letters,
            ..counters
        },
        counts,
    ))
}

/// `text` cut to at most `max` bytes at a character boundary.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

impl Store for RedbStore {
    fn append(&self, entries: Vec<Entry>) -> StoreFuture<Vec<Appended>> {
        let mut bytes = 0;
        for entry in &entries {
            let checked = self
                .check_id(&entry.actor)
                .and_then(|()| self.check_id(&entry.sender))
                .and_then(|()| self.check_payload(&entry.payload));
            if let Err(err) = checked {
                return refused(err);
            }
            bytes += entry.payload.len();
        }
        if entries.is_empty() {
            return Box::pin(async { Ok(Vec::new()) });
        }
        let write = self.write(Op::Append(entries), bytes);
        Box::pin(async move {
            match write.await? {
                Outcome::Appended(appended) => Ok(appended),
                _ => unreachable!("an append is answered with what it appended"),
            }
        })
    }

    fn commit(&self, batch: Batch) -> StoreFuture<Committed> {
        if let Err(err) = self.check_id(&batch.actor) {
            return refused(err);
        }
        let mut bytes = 0;
        if let Some(state) = &batch.state {
            if state.len() > MAX_STATE_BYTES {
                return refused(self.too_large(Bound::State, state.len(), MAX_STATE_BYTES));
            }
            bytes += state.len();
        }
        for outgoing in &batch.produced {
            let checked = self
                .check_id(&outgoing.destination)
                .and_then(|()| self.check_payload(&outgoing.payload));
            if let Err(err) = checked {
                return refused(err);
            }
            bytes += outgoing.payload.len();
        }
        for change in &batch.timers {
            let checked = match change {
                TimerChange::Put(timer) => self
                    .check_id(&timer.name)
                    .and_then(|()| self.check_payload(&timer.payload))
                    .map(|()| bytes += timer.payload.len()),
                TimerChange::Cancel(name) => self.check_id(name),
            };
            if let Err(err) = checked {
                return refused(err);
            }
        }
        let write = self.write(Op::Commit(batch), bytes);
        Box::pin(async move {
            match write.await? {
                Outcome::Committed(committed) => Ok(committed),
                _ => unreachable!("a commit is answered with what it assigned"),
            }
        })
    }

    fn forget(&self, actor: &str) -> StoreFuture<()> {
        if let Err(err) = self.check_id(actor) {
            return refused(err);
        }
        let write = self.write(Op::Forget(actor.to_string()), 0);
        Box::pin(async move { write.await.map(|_| ()) })
    }

    fn actors(&self) -> StoreFuture<Vec<String>> {
        self.read(|db, path| {
            let read = |e| storage_error(path, "reading", e);
            let txn = db.begin_read().map_err(|e| transaction_error(path, e))?;
            let mut actors = BTreeSet::new();
            let state = txn.open_table(STATE).map_err(|e| table_error(path, e))?;
            for item in state.iter().map_err(read)? {
                actors.insert(item.map_err(read)?.0.value().to_string());
            }
            // The keyed tables hold many records per actor: jump from each actor to the
            // first key after its records instead of reading them all.
            for table in [MAILBOX, OUTBOX] {
                let table = txn.open_table(table).map_err(|e| table_error(path, e))?;
                let mut from = String::new();
                while let Some(item) = table.range((from.as_str(), 0)..).map_err(read)?.next() {
                    let actor = item.map_err(read)?.0.value().0.to_string();
                    from = tables::after(&actor);
                    actors.insert(actor);
                }
            }
            let timers = txn.open_table(TIMERS).map_err(|e| table_error(path, e))?;
            let mut from = String::new();
            while let Some(item) = timers.range((from.as_str(), "")..).map_err(read)?.next() {
                let actor = item.map_err(read)?.0.value().0.to_string();
                from = tables::after(&actor);
                actors.insert(actor);
            }
            Ok(actors.into_iter().collect())
        })
    }

    fn load(&self, actor: &str) -> StoreFuture<Recovered> {
        let actor = actor.to_string();
        self.read(move |db, path| {
            let read = |e| storage_error(path, "reading", e);
            let corrupt = |what: &str| StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("{what} of actor `{actor}` does not decode"),
            };
            let txn = db.begin_read().map_err(|e| transaction_error(path, e))?;
            let open_error = |e| table_error(path, e);
            let mut recovered = Recovered::default();

            let state = txn.open_table(STATE).map_err(open_error)?;
            recovered.state = state
                .get(actor.as_str())
                .map_err(read)?
                .map(|v| bytes::Bytes::copy_from_slice(v.value()));

            let range = (actor.as_str(), 0)..=(actor.as_str(), u64::MAX);
            let mailbox = txn.open_table(MAILBOX).map_err(open_error)?;
            for item in mailbox.range(range.clone()).map_err(read)? {
                let (key, value) = item.map_err(read)?;
                let entry = tables::decode_entry(key.value().1, value.value())
                    .ok_or_else(|| corrupt("a mailbox entry"))?;
                recovered.mailbox.push(entry);
            }
            let outbox = txn.open_table(OUTBOX).map_err(open_error)?;
            for item in outbox.range(range).map_err(read)? {
                let (key, value) = item.map_err(read)?;
                let outgoing = tables::decode_outgoing(key.value().1, value.value())
                    .ok_or_else(|| corrupt("an outbox entry"))?;
                recovered.outbox.push(outgoing);
            }
            recovered.timers = read_timers(&txn, path, &actor)?;
            Ok(recovered)
        })
    }

    fn dead_letter(&self, letter: DeadLetter) -> StoreFuture<()> {
        // Dead letters are kept for people to read: cut to the bounds, never refused.
        let mut letter = letter;
        letter.sender = cut(&letter.sender, MAX_ID_BYTES);
        letter.target = cut(&letter.target, MAX_ID_BYTES);
        letter.reason = cut(&letter.reason, MAX_DEAD_LETTER_REASON_BYTES);
        if letter.payload.len() > MAX_DEAD_LETTER_PAYLOAD_BYTES {
            letter.payload = letter.payload.slice(..MAX_DEAD_LETTER_PAYLOAD_BYTES);
        }
        let bytes = letter.payload.len();
        let write = self.write(Op::DeadLetter(letter), bytes);
        Box::pin(async move { write.await.map(|_| ()) })
    }

    fn dead_letters(&self) -> StoreFuture<DeadLetters> {
        self.read(|db, path| {
            let read = |e| storage_error(path, "reading", e);
            let txn = db.begin_read().map_err(|e| transaction_error(path, e))?;
            let table = txn
                .open_table(DEAD_LETTERS)
                .map_err(|e| table_error(path, e))?;
            let mut letters = Vec::new();
            for item in table.iter().map_err(read)? {
                let (_, value) = item.map_err(read)?;
                letters.push(tables::decode_dead_letter(value.value()).ok_or_else(|| {
                    StoreError::Corrupt {
                        path: path.to_path_buf(),
                        detail: "a dead letter does not decode".to_string(),
                    }
                })?);
            }
            let meta = txn.open_table(META).map_err(|e| table_error(path, e))?;
            let dropped = meta
                .get(DROPPED_DEAD_LETTERS_KEY)
                .map_err(read)?
                .map_or(0, |v| v.value());
            Ok(DeadLetters { letters, dropped })
        })
    }

    fn put_timer(&self, timer: Timer) -> StoreFuture<()> {
        let checked = self
            .check_id(&timer.actor)
            .and_then(|()| self.check_id(&timer.name))
            .and_then(|()| self.check_payload(&timer.payload));
        if let Err(err) = checked {
            return refused(err);
        }
        let bytes = timer.payload.len();
        let write = self.write(Op::PutTimer(timer), bytes);
        Box::pin(async move { write.await.map(|_| ()) })
    }

    fn cancel_timer(&self, actor: &str, name: &str) -> StoreFuture<bool> {
        if let Err(err) = self.check_id(actor).and_then(|()| self.check_id(name)) {
            return refused(err);
        }
        let op = Op::CancelTimer {
            actor: actor.to_string(),
            name: name.to_string(),
        };
        let write = self.write(op, 0);
        Box::pin(async move {
            match write.await? {
                Outcome::Cancelled(cancelled) => Ok(cancelled),
                _ => unreachable!("a cancel is answered with whether there was a timer"),
            }
        })
    }

    fn timers(&self, actor: &str) -> StoreFuture<Vec<Timer>> {
        let actor = actor.to_string();
        self.read(move |db, path| {
            let txn = db.begin_read().map_err(|e| transaction_error(path, e))?;
            read_timers(&txn, path, &actor)
        })
    }

    fn stats(&self) -> StoreStats {
        let counts = &self.inner.counts;
        StoreStats {
            mailbox_entries: counts.mailbox_entries.load(Ordering::Relaxed),
            outbox_entries: counts.outbox_entries.load(Ordering::Relaxed),
            commits: counts.commits.load(Ordering::Relaxed),
            writes: counts.writes.load(Ordering::Relaxed),
            last_commit: Duration::from_nanos(counts.last_commit_nanos.load(Ordering::Relaxed)),
            mean_commit: counts.mean_commit(),
            file_bytes: fs::metadata(&self.inner.path).map_or(0, |m| m.len()),
        }
    }
}

fn read_timers(
    txn: &redb::ReadTransaction,
    path: &Path,
    actor: &str,
) -> Result<Vec<Timer>, StoreError> {
    let read = |e| storage_error(path, "reading", e);
    let table = txn.open_table(TIMERS).map_err(|e| table_error(path, e))?;
    let after = tables::after(actor);
    let mut timers = Vec::new();
    for item in table
        .range((actor, "")..(after.as_str(), ""))
        .map_err(read)?
    {
        let (key, value) = item.map_err(read)?;
        let (actor, name) = key.value();
        timers.push(
            tables::decode_timer(actor, name, value.value()).ok_or_else(|| {
                StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: format!("timer `{name}` of actor `{actor}` does not decode"),
                }
            })?,
        );
    }
    Ok(timers)
}
