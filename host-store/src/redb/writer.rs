//! The one writer thread and its group commits.
//!
//! Writes queue here; the writer takes everything queued, applies it in one transaction and
//! commits (one fsync), then answers each caller. Whatever arrives while a commit runs waits
//! for the next one, so under load a commit carries many writes and a quiet store commits a
//! lone write at once. The queue is bounded by writes and by bytes: past either bound a
//! caller waits for room, so a disk slower than the senders slows the senders down instead
//! of growing memory.
//!
//! The writer is a std thread, not a tokio task: a commit blocks on the disk, and a blocked
//! runtime worker would stall every actor on it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, Table, WriteTransaction};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::errors::{commit_error, storage_error, table_error, transaction_error};
use super::tables::{
    self, DEAD_LETTERS, DROPPED_DEAD_LETTERS_KEY, MAILBOX, MARKS, META, NEXT_DEAD_LETTER_KEY,
    OUTBOX, POSITION_BLOCK, POSITION_CEILING_KEY, STATE, TIMERS,
};
use crate::error::{Bound, StoreError};
use crate::limits::{MAX_DEAD_LETTERS, MAX_QUEUED_BYTES, MAX_QUEUED_WRITES, MAX_TIMERS_PER_ACTOR};
use crate::record::{Appended, Batch, Committed, DeadLetter, Entry, Timer, TimerChange};

/// One write, as a caller asked for it.
pub(crate) enum Op {
    Append(Vec<Entry>),
    Commit(Batch),
    Forget(String),
    DeadLetter(DeadLetter),
    PutTimer(Timer),
    CancelTimer { actor: String, name: String },
}

/// What a write did, for its caller.
pub(crate) enum Outcome {
    Appended(Vec<Appended>),
    Committed(Committed),
    Done,
    Cancelled(bool),
}

struct Queued {
    op: Op,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
    // Room in the queue, given back when the write is answered.
    _slots: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

#[derive(Default)]
struct Pending {
    writes: Vec<Queued>,
    closed: bool,
}

/// The queue between callers and the writer thread.
pub(crate) struct Queue {
    path: PathBuf,
    pending: Mutex<Pending>,
    ready: Condvar,
    write_slots: Arc<Semaphore>,
    byte_slots: Arc<Semaphore>,
}

impl Queue {
    pub(crate) fn new(path: PathBuf) -> Queue {
        Queue {
            path,
            pending: Mutex::new(Pending::default()),
            ready: Condvar::new(),
            write_slots: Arc::new(Semaphore::new(MAX_QUEUED_WRITES)),
            byte_slots: Arc::new(Semaphore::new(MAX_QUEUED_BYTES)),
        }
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed {
            path: self.path.clone(),
        }
    }

    /// Queue `op`, waiting for room first, and wait for its commit.
    pub(crate) async fn submit(&self, op: Op, bytes: usize) -> Result<Outcome, StoreError> {
        let write = Arc::clone(&self.write_slots)
            .acquire_owned()
            .await
            .map_err(|_| self.closed())?;
        // A write larger than the whole byte bound waits for an empty queue rather than
        // forever.
        let cost = u32::try_from(bytes.min(MAX_QUEUED_BYTES)).expect("the byte bound fits a u32");
        let bytes = Arc::clone(&self.byte_slots)
            .acquire_many_owned(cost)
            .await
            .map_err(|_| self.closed())?;
        let (reply, answer) = oneshot::channel();
        {
            let mut pending = self
                .pending
                .lock()
                .expect("the queue lock is never poisoned");
            if pending.closed {
                return Err(self.closed());
            }
            pending.writes.push(Queued {
                op,
                reply,
                _slots: (write, bytes),
            });
        }
        self.ready.notify_one();
        answer.await.map_err(|_| self.closed())?
    }

    /// Take no more writes; the writer answers those queued and ends.
    pub(crate) fn close(&self) {
        self.pending
            .lock()
            .expect("the queue lock is never poisoned")
            .closed = true;
        self.write_slots.close();
        self.byte_slots.close();
        self.ready.notify_all();
    }

    /// Everything queued, waiting until there is something; `None` once closed and empty.
    fn take(&self) -> Option<Vec<Queued>> {
        let mut pending = self
            .pending
            .lock()
            .expect("the queue lock is never poisoned");
        loop {
            if !pending.writes.is_empty() {
                return Some(std::mem::take(&mut pending.writes));
            }
            if pending.closed {
                return None;
            }
            pending = self
                .ready
                .wait(pending)
                .expect("the queue lock is never poisoned");
        }
    }
}

/// Counts the writer keeps for [`StoreStats`](crate::StoreStats).
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) mailbox_entries: AtomicU64,
    pub(crate) outbox_entries: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) last_commit_nanos: AtomicU64,
    pub(crate) total_commit_nanos: AtomicU64,
}

/// The store-wide counters kept in [`META`], as of the last commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) next_position: u64,
    /// The top of the positions reserved in [`META`]: `next_position` stays below it.
    pub(crate) position_ceiling: u64,
    pub(crate) next_dead_letter: u64,
    pub(crate) dropped_dead_letters: u64,
    pub(crate) dead_letters: u64,
}

/// The writer thread's state.
pub(crate) struct Writer {
    pub(crate) db: Arc<Database>,
    pub(crate) path: PathBuf,
    pub(crate) counters: Counters,
    pub(crate) counts: Arc<Counts>,
    /// The error that stopped the store: after a failed commit redb refuses every write until
    /// the file is opened again, and each caller is told why.
    pub(crate) failed: Option<StoreError>,
}

impl Writer {
    /// Commit groups until the queue is closed and drained.
    pub(crate) fn run(mut self, queue: Arc<Queue>) {
        while let Some(group) = queue.take() {
            self.commit_group(group);
        }
    }

    fn commit_group(&mut self, group: Vec<Queued>) {
        if let Some(err) = &self.failed {
            for queued in group {
                let _ = queued.reply.send(Err(err.clone()));
            }
            return;
        }
        let ops: Vec<&Op> = group.iter().map(|q| &q.op).collect();
        match self.transaction(&ops) {
            Ok(outcomes) => {
                for (queued, outcome) in group.into_iter().zip(outcomes) {
                    let _ = queued.reply.send(Ok(outcome));
                }
            }
            Err(err) if group.len() > 1 && !stops_the_store(&err) => {
                // One write was refused (a bound only the tables can check, a record that
                // does not decode): commit the others without it, each on its own.
                for queued in group {
                    self.commit_group(vec![queued]);
                }
            }
            Err(err) => {
                if stops_the_store(&err) {
                    self.failed = Some(err.clone());
                }
                for queued in group {
                    let _ = queued.reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// Apply `ops` in one transaction and commit it.
    fn transaction(&mut self, ops: &[&Op]) -> Result<Vec<Outcome>, StoreError> {
        let started = Instant::now();
        let path = self.path.clone();
        let txn = self
            .db
            .begin_write()
            .map_err(|e| transaction_error(&path, e))?;
        let mut tx = Tx::new(&txn, &path, self.counters);
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            outcomes.push(tx.apply(op)?);
        }
        let (counters, mailbox_delta, outbox_delta) = tx.finish()?;
        txn.commit().map_err(|e| commit_error(&path, e))?;

        self.counters = counters;
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let counts = &self.counts;
        add(&counts.mailbox_entries, mailbox_delta);
        add(&counts.outbox_entries, outbox_delta);
        counts.commits.fetch_add(1, Ordering::Relaxed);
        counts.writes.fetch_add(ops.len() as u64, Ordering::Relaxed);
        counts.last_commit_nanos.store(elapsed, Ordering::Relaxed);
        counts
            .total_commit_nanos
            .fetch_add(elapsed, Ordering::Relaxed);
        Ok(outcomes)
    }
}

impl Counts {
    pub(crate) fn mean_commit(&self) -> Duration {
        let commits = self.commits.load(Ordering::Relaxed);
        let total = self.total_commit_nanos.load(Ordering::Relaxed);
        Duration::from_nanos(total.checked_div(commits).unwrap_or(0))
    }
}

fn add(counter: &AtomicU64, delta: i64) {
    if delta >= 0 {
        counter.fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
    } else {
        counter.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
    }
}

/// Whether an error means the file can take no more writes (as opposed to one refused write).
fn stops_the_store(err: &StoreError) -> bool {
    matches!(
        err,
        StoreError::Full { .. } | StoreError::Io { .. } | StoreError::Closed { .. }
    )
}

type MailboxTable<'t> = Table<'t, (&'static str, u64), &'static [u8]>;
type MarksTable<'t> = Table<'t, (&'static str, &'static str), u64>;
type StateTable<'t> = Table<'t, &'static str, &'static [u8]>;
type DeadLetterTable<'t> = Table<'t, u64, &'static [u8]>;
type TimerTable<'t> = Table<'t, (&'static str, &'static str), &'static [u8]>;

/// One transaction being filled: the tables it has opened (only those its writes need, since
/// each table touched costs pages at commit), the sequence marks it has read or moved, and
/// the counters as they will be once it commits.
struct Tx<'t> {
    txn: &'t WriteTransaction,
    path: &'t std::path::Path,
    mailbox: Option<MailboxTable<'t>>,
    marks_table: Option<MarksTable<'t>>,
    state: Option<StateTable<'t>>,
    outbox: Option<MailboxTable<'t>>,
    dead_letters: Option<DeadLetterTable<'t>>,
    timers: Option<TimerTable<'t>>,
    /// (actor, sender) to (highest sequence number, changed in this transaction), keyed by
    /// the actor's length, the actor and the sender, so a lookup needs no allocation.
    marks: HashMap<Vec<u8>, (Option<u64>, bool)>,
    key: Vec<u8>,
    value: Vec<u8>,
    counters: Counters,
    start: Counters,
    mailbox_delta: i64,
    outbox_delta: i64,
}

/// Open `table` on first use.
macro_rules! open {
    ($tx:ident . $field:ident, $def:expr) => {{
        if $tx.$field.is_none() {
            $tx.$field = Some(
                $tx.txn
                    .open_table($def)
                    .map_err(|e| table_error($tx.path, e))?,
            );
        }
        $tx.$field.as_mut().expect("opened above")
    }};
}

impl<'t> Tx<'t> {
    fn new(txn: &'t WriteTransaction, path: &'t std::path::Path, counters: Counters) -> Tx<'t> {
        Tx {
            txn,
            path,
            mailbox: None,
            marks_table: None,
            state: None,
            outbox: None,
            dead_letters: None,
            timers: None,
            marks: HashMap::new(),
            key: Vec::new(),
            value: Vec::new(),
            counters,
            start: counters,
            mailbox_delta: 0,
            outbox_delta: 0,
        }
    }

    fn apply(&mut self, op: &Op) -> Result<Outcome, StoreError> {
        match op {
            Op::Append(entries) => self.append(entries).map(Outcome::Appended),
            Op::Commit(batch) => self.commit(batch).map(Outcome::Committed),
            Op::Forget(actor) => self.forget(actor).map(|()| Outcome::Done),
            Op::DeadLetter(letter) => self.dead_letter(letter).map(|()| Outcome::Done),
            Op::PutTimer(timer) => self.put_timer(&timer.actor, timer).map(|()| Outcome::Done),
            Op::CancelTimer { actor, name } => {
                self.cancel_timer(actor, name).map(Outcome::Cancelled)
            }
        }
    }

    fn append(&mut self, entries: &[Entry]) -> Result<Vec<Appended>, StoreError> {
        let mut results = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Some(seq) = entry.seq {
                let mark = self.mark(&entry.actor, &entry.sender)?;
                if mark.0.is_some_and(|highest| highest >= seq) {
                    results.push(Appended::Duplicate);
                    continue;
                }
                *mark = (Some(seq), true);
            }
            let position = self.counters.next_position;
            self.counters.next_position += 1;
            tables::encode_entry(
                &mut self.value,
                &entry.sender,
                entry.seq,
                entry.kind,
                &entry.payload,
            );
            let value = std::mem::take(&mut self.value);
            let mailbox = open!(self.mailbox, MAILBOX);
            mailbox
                .insert((entry.actor.as_str(), position), value.as_slice())
                .map_err(|e| storage_error(self.path, "writing", e))?;
            self.value = value;
            self.mailbox_delta += 1;
            results.push(Appended::Stored { position });
        }
        Ok(results)
    }

    /// The mark of (actor, sender) as this transaction sees it.
    fn mark(&mut self, actor: &str, sender: &str) -> Result<&mut (Option<u64>, bool), StoreError> {
        self.key.clear();
        self.key
            .push(u8::try_from(actor.len()).expect("ids are checked"));
        self.key.extend_from_slice(actor.as_bytes());
        self.key.extend_from_slice(sender.as_bytes());
        if !self.marks.contains_key(self.key.as_slice()) {
            let table = open!(self.marks_table, MARKS);
            let stored = table
                .get((actor, sender))
                .map_err(|e| storage_error(self.path, "reading", e))?
                .map(|guard| guard.value());
            self.marks.insert(self.key.clone(), (stored, false));
        }
        Ok(self
            .marks
            .get_mut(self.key.as_slice())
            .expect("inserted above"))
    }

    fn commit(&mut self, batch: &Batch) -> Result<Committed, StoreError> {
        let actor = batch.actor.as_str();
        if !batch.consumed.is_empty() {
            let mailbox = open!(self.mailbox, MAILBOX);
            for &position in &batch.consumed {
                if mailbox
                    .remove((actor, position))
                    .map_err(|e| storage_error(self.path, "writing", e))?
                    .is_some()
                {
                    self.mailbox_delta -= 1;
                }
            }
        }
        if let Some(state) = &batch.state {
            let table = open!(self.state, STATE);
            table
                .insert(actor, state.as_ref())
                .map_err(|e| storage_error(self.path, "writing", e))?;
        }
        let mut produced = Vec::with_capacity(batch.produced.len());
        if !batch.produced.is_empty() || !batch.delivered.is_empty() {
            let mut value = std::mem::take(&mut self.value);
            let path = self.path;
            let outbox = open!(self.outbox, OUTBOX);
            for &seq in &batch.delivered {
                if outbox
                    .remove((actor, seq))
                    .map_err(|e| storage_error(path, "writing", e))?
                    .is_some()
                {
                    self.outbox_delta -= 1;
                }
            }
            for outgoing in &batch.produced {
                let seq = self.counters.next_position;
                self.counters.next_position += 1;
                tables::encode_outgoing(&mut value, outgoing);
                outbox
                    .insert((actor, seq), value.as_slice())
                    .map_err(|e| storage_error(path, "writing", e))?;
                self.outbox_delta += 1;
                produced.push(seq);
            }
            self.value = value;
        }
        for change in &batch.timers {
            match change {
                TimerChange::Put(timer) => self.put_timer(actor, timer)?,
                TimerChange::Cancel(name) => {
                    self.cancel_timer(actor, name)?;
                }
            }
        }
        Ok(Committed { produced })
    }

    fn forget(&mut self, actor: &str) -> Result<(), StoreError> {
        let path = self.path;
        let write = |e| storage_error(path, "writing", e);
        let after = tables::after(actor);

        let mailbox = open!(self.mailbox, MAILBOX);
        let removed = remove_range(mailbox, (actor, 0), (after.as_str(), 0)).map_err(write)?;
        self.mailbox_delta -= removed as i64;

        let outbox = open!(self.outbox, OUTBOX);
        let removed = remove_range(outbox, (actor, 0), (after.as_str(), 0)).map_err(write)?;
        self.outbox_delta -= removed as i64;

        let state = open!(self.state, STATE);
        state.remove(actor).map_err(write)?;

        let marks = open!(self.marks_table, MARKS);
        remove_range(marks, (actor, ""), (after.as_str(), "")).map_err(write)?;
        self.marks.retain(|key, _| {
            let len = usize::from(key[0]);
            key.get(1..=len) != Some(actor.as_bytes())
        });

        let timers = open!(self.timers, TIMERS);
        remove_range(timers, (actor, ""), (after.as_str(), "")).map_err(write)?;
        Ok(())
    }

    fn dead_letter(&mut self, letter: &DeadLetter) -> Result<(), StoreError> {
        let path = self.path;
        let write = |e| storage_error(path, "writing", e);
        let value = tables::encode_dead_letter(letter);
        let id = self.counters.next_dead_letter;
        self.counters.next_dead_letter += 1;
        let table = open!(self.dead_letters, DEAD_LETTERS);
        table.insert(id, value.as_slice()).map_err(write)?;
        self.counters.dead_letters += 1;
        while self.counters.dead_letters > MAX_DEAD_LETTERS as u64 {
            if table.pop_first().map_err(write)?.is_none() {
                break;
            }
            self.counters.dead_letters -= 1;
            self.counters.dropped_dead_letters += 1;
        }
        Ok(())
    }

    /// Keep `timer` as `actor`'s (a batch's timers are its actor's, whatever they say).
    fn put_timer(&mut self, actor: &str, timer: &Timer) -> Result<(), StoreError> {
        let path = self.path;
        let write = |e| storage_error(path, "writing", e);
        let after = tables::after(actor);
        let table = open!(self.timers, TIMERS);
        let replacing = table
            .get((actor, timer.name.as_str()))
            .map_err(write)?
            .is_some();
        if !replacing {
            let held = table
                .range((actor, "")..(after.as_str(), ""))
                .map_err(write)?
                .count();
            if held >= MAX_TIMERS_PER_ACTOR {
                return Err(StoreError::TooLarge {
                    path: path.to_path_buf(),
                    bound: Bound::TimersPerActor,
                    found: held + 1,
                    limit: MAX_TIMERS_PER_ACTOR,
                });
            }
        }
        let value = tables::encode_timer(timer);
        table
            .insert((actor, timer.name.as_str()), value.as_slice())
            .map_err(write)?;
        Ok(())
    }

    fn cancel_timer(&mut self, actor: &str, name: &str) -> Result<bool, StoreError> {
        let path = self.path;
        let table = open!(self.timers, TIMERS);
        Ok(table
            .remove((actor, name))
            .map_err(|e| storage_error(path, "writing", e))?
            .is_some())
    }

    /// Write the marks and counters this transaction moved; what it changed, for the stats.
    fn finish(mut self) -> Result<(Counters, i64, i64), StoreError> {
        let path = self.path;
        let write = |e| storage_error(path, "writing", e);
        if self.marks.values().any(|(_, changed)| *changed) {
            let marks = std::mem::take(&mut self.marks);
            let table = open!(self.marks_table, MARKS);
            for (key, (seq, changed)) in marks {
                let (Some(seq), true) = (seq, changed) else {
                    continue;
                };
                let len = usize::from(key[0]);
                let actor = std::str::from_utf8(&key[1..=len]).expect("made from a str");
                let sender = std::str::from_utf8(&key[1 + len..]).expect("made from a str");
                table.insert((actor, sender), seq).map_err(write)?;
            }
        }
        if self.counters.next_position > self.counters.position_ceiling {
            self.counters.position_ceiling = self.counters.next_position + POSITION_BLOCK;
        }
        let recorded = |c: Counters| {
            (
                c.position_ceiling,
                c.next_dead_letter,
                c.dropped_dead_letters,
            )
        };
        if recorded(self.counters) != recorded(self.start) {
            let mut meta = self
                .txn
                .open_table(META)
                .map_err(|e| table_error(path, e))?;
            let (now, then) = (self.counters, self.start);
            for (key, new, old) in [
                (
                    POSITION_CEILING_KEY,
                    now.position_ceiling,
                    then.position_ceiling,
                ),
                (
                    NEXT_DEAD_LETTER_KEY,
                    now.next_dead_letter,
                    then.next_dead_letter,
                ),
                (
                    DROPPED_DEAD_LETTERS_KEY,
                    now.dropped_dead_letters,
                    then.dropped_dead_letters,
                ),
            ] {
                if new != old {
                    meta.insert(key, new).map_err(write)?;
                }
            }
        }
        Ok((self.counters, self.mailbox_delta, self.outbox_delta))
    }
}

/// Remove every key from `from` (inclusive) to `to` (exclusive); how many there were.
fn remove_range<'a, K, V>(
    table: &mut Table<'_, K, V>,
    from: K::SelfType<'a>,
    to: K::SelfType<'a>,
) -> Result<u64, redb::StorageError>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    let mut removed = 0;
    for item in table.extract_from_if(from..to, |_, _| true)? {
        item?;
        removed += 1;
    }
    Ok(removed)
}
