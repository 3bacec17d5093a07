//! The outbox of a durable component: what its handlers send leaves only after the commit
//! that records it.
//!
//! A durable component's messages and publications are checked at the call (capability,
//! size, a known target), counted sent, and held here instead of being routed. Those of a
//! handler that returns go with the batch's commit ([`Batch::produced`]), in the same
//! transaction as the positions it consumed and its state; those of a handler that traps
//! are dead-lettered with the message that trapped it, since its state does not keep them
//! either. Once committed, the outbox's dispatcher takes them in order: each message is
//! appended to its durable target's stored mailbox carrying the sender's sequence number
//! ([`Entry::with_seq`]), so the target's store drops one it already holds, or queued for a
//! target that is not durable; each publication is fanned out. What was dispatched is
//! marked delivered in the store. A crash anywhere in between leaves the undelivered
//! entries stored, and the spawn on the same store sends them again, before anything new.
//!
//! An entry that meets a full mailbox waits and is tried again, in order: nothing behind it
//! overtakes it, so a target sees one sender's messages in the order they were sent. An
//! outbox at its bound ([`MAX_OUTBOX_MESSAGES`], [`MAX_OUTBOX_BYTES`]) refuses its
//! component's sends with `mailbox-full`; one at half its bound or more has its actor
//! commit what it handled and take no further message until the outbox is below half
//! again, so a handler always has half the bound to send in: a slow target slows its
//! durable senders down rather than growing the host's memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use courier_host_core::{ComponentId, MessagingError};
use courier_host_store::{Batch, Entry, Kind, Outgoing, Store, StoredOutgoing};
use tokio::sync::Notify;

use crate::dead_letter::{DeadLetters, MessageKind};
use crate::metrics::{BrokerCounters, bump};

/// How many messages and publications a durable component's outbox holds, sent and not yet
/// dispatched, before its sends are refused; at half of it, its actor stops taking
/// messages until it drains.
///
/// Sixteen batches of 64 messages that each send one: enough that a target keeping up never
/// stalls its sender, few enough that a stalled target holds a bounded part of memory.
pub const MAX_OUTBOX_MESSAGES: usize = 1024;

/// How many payload bytes a durable component's outbox holds before its sends are refused
/// (at half of it, its actor stops taking messages until it drains): the store's largest
/// payload
/// ([`MAX_PAYLOAD_BYTES`](courier_host_store::limits::MAX_PAYLOAD_BYTES), four of the
/// broker's default largest messages), so one message that the store takes always fits in
/// an empty outbox, and a stalled target holds that much memory per durable sender.
pub const MAX_OUTBOX_BYTES: u64 = courier_host_store::limits::MAX_PAYLOAD_BYTES as u64;

/// How long an entry waits for room in a full mailbox before the dispatcher looks again
/// whether the broker and the sender are still there.
pub(crate) const RETRY_WAIT: Duration = Duration::from_millis(100);

/// How long a durable component's message to a component on another host is tried until
/// the serving host acknowledges it (it stored it, for a durable target), by default
/// ([`BrokerConfig::remote_retention`](crate::BrokerConfig::remote_retention)): a day, so
/// an outage of a host, a NATS cluster or the network over a night loses nothing. Past it
/// the message is dead-lettered, with the last reason it failed, in the store too.
///
/// It is counted from the entry's first try in the sender's current run. The entries behind
/// it wait meanwhile (a sender's messages go in order), so the retention is also how long
/// an unreachable target can hold its durable senders up; memory stays within the outbox's
/// bounds ([`MAX_OUTBOX_MESSAGES`], [`MAX_OUTBOX_BYTES`]) however long it is.
pub const DEFAULT_REMOTE_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The outbox of one durable component.
pub(crate) struct Outbox {
    id: ComponentId,
    inner: Mutex<Inner>,
    /// Wakes the dispatcher when entries are committed.
    committed: Notify,
    /// Wakes an actor waiting for its outbox to go below its bound.
    drained: Notify,
    /// Set when the dispatcher has ended: nothing will drain the outbox until the next
    /// spawn, so an actor must not wait for it.
    dispatcher_ended: AtomicBool,
    /// Set when the actor has ended: once the queue is empty, the dispatcher ends too.
    actor_ended: AtomicBool,
}

#[derive(Default)]
struct Inner {
    /// Sent by the handler that runs now: kept if it returns, dead-lettered if it traps.
    handling: Vec<Outgoing>,
    /// Sent by handlers that returned, for the next commit.
    produced: Vec<Outgoing>,
    /// Committed, in order, for the dispatcher.
    queue: VecDeque<StoredOutgoing>,
    /// Dispatched, and not yet marked delivered in the store.
    delivered: Vec<u64>,
    /// Entries and payload bytes held in all of the above but `delivered`, and the one
    /// being dispatched.
    messages: usize,
    bytes: u64,
}

impl Outbox {
    /// The outbox of `id`, holding what a spawn found stored and undelivered.
    pub(crate) fn new(id: ComponentId, recovered: Vec<StoredOutgoing>) -> Outbox {
        let inner = Inner {
            messages: recovered.len(),
            bytes: recovered.iter().map(|e| e.payload.len() as u64).sum(),
            queue: recovered.into(),
            ..Inner::default()
        };
        Outbox {
            id,
            inner: Mutex::new(inner),
            committed: Notify::new(),
            drained: Notify::new(),
            dispatcher_ended: AtomicBool::new(false),
            actor_ended: AtomicBool::new(false),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hold `outgoing`, sent by the handler that runs now; `mailbox-full` naming its
    /// destination if the outbox is at its bound, `payload-too-large` if it is larger than
    /// the store keeps.
    pub(crate) fn hold(&self, outgoing: Outgoing) -> Result<(), MessagingError> {
        let len = outgoing.payload.len() as u64;
        // The store would refuse its commit, and with it the whole batch, again and again.
        if len > MAX_OUTBOX_BYTES {
            return Err(MessagingError::PayloadTooLarge(MAX_OUTBOX_BYTES));
        }
        let mut inner = self.inner();
        if inner.messages >= MAX_OUTBOX_MESSAGES || inner.bytes + len > MAX_OUTBOX_BYTES {
            return Err(MessagingError::MailboxFull(outgoing.destination));
        }
        inner.messages += 1;
        inner.bytes += len;
        inner.handling.push(outgoing);
        Ok(())
    }

    /// The handler that ran returned: what it sent goes with the next commit.
    pub(crate) fn keep_handled(&self) {
        let mut inner = self.inner();
        let handling = std::mem::take(&mut inner.handling);
        inner.produced.extend(handling);
    }

    /// The handler that ran did not return (a trap, or a shutdown that cut it): what it
    /// sent is not kept, and is given back to be dead-lettered.
    pub(crate) fn discard_handled(&self) -> Vec<Outgoing> {
        let mut inner = self.inner();
        let handling = std::mem::take(&mut inner.handling);
        inner.messages -= handling.len();
        inner.bytes -= handling.iter().map(|o| o.payload.len() as u64).sum::<u64>();
        drop(inner);
        self.drained.notify_waiters();
        handling
    }

    /// What the next commit records, in order.
    pub(crate) fn produced(&self) -> Vec<Outgoing> {
        self.inner().produced.clone()
    }

    /// Whether sends wait for a commit (one the store refused keeps them).
    pub(crate) fn has_produced(&self) -> bool {
        !self.inner().produced.is_empty()
    }

    /// The first `seqs.len()` produced entries were committed under `seqs`: they go to the
    /// dispatcher.
    pub(crate) fn committed(&self, seqs: &[u64]) {
        let mut inner = self.inner();
        let committed: Vec<Outgoing> = inner.produced.drain(..seqs.len()).collect();
        inner
            .queue
            .extend(
                committed
                    .into_iter()
                    .zip(seqs)
                    .map(|(outgoing, &seq)| StoredOutgoing {
                        seq,
                        destination: outgoing.destination,
                        kind: outgoing.kind,
                        payload: outgoing.payload,
                    }),
            );
        drop(inner);
        if !seqs.is_empty() {
            self.committed.notify_one();
        }
    }

    /// Whether the outbox holds something its dispatcher will still send: a publication is
    /// counted sent only when it is fanned out, so a broker waiting for quiet asks this too.
    pub(crate) fn is_pending(&self) -> bool {
        self.inner().messages > 0 && !self.dispatcher_ended.load(Ordering::Acquire)
    }

    /// Whether the outbox holds half its bound or more, in messages or bytes: its actor
    /// then handles nothing more until it drains below, so every handler it calls has at
    /// least half the bound to send in, and only one that sends more than that in one call
    /// is refused.
    pub(crate) fn needs_draining(&self) -> bool {
        let inner = self.inner();
        inner.messages >= MAX_OUTBOX_MESSAGES / 2 || inner.bytes >= MAX_OUTBOX_BYTES / 2
    }

    /// Wait until the outbox is below half its bound, or nothing will drain it.
    pub(crate) async fn wait_for_room(&self) {
        loop {
            let drained = self.drained.notified();
            if !self.needs_draining() || self.dispatcher_ended.load(Ordering::Acquire) {
                return;
            }
            // Bounded, so an actor never misses the dispatcher's end for long.
            let _ = tokio::time::timeout(RETRY_WAIT, drained).await;
        }
    }

    /// The next committed entry, once there is one; `None` once the actor has ended and
    /// everything it committed was taken.
    pub(crate) async fn next(&self) -> Option<StoredOutgoing> {
        loop {
            let committed = self.committed.notified();
            if let Some(entry) = self.inner().queue.front().cloned() {
                return Some(entry);
            }
            if self.actor_ended.load(Ordering::Acquire) {
                return None;
            }
            committed.await;
        }
    }

    /// The actor has ended, after its last commit: the dispatcher sends what is queued and
    /// ends, or, if it has ended already, what is left is accounted for now.
    pub(crate) fn actor_ended(&self, counters: &BrokerCounters, dead_letters: &DeadLetters) {
        self.actor_ended.store(true, Ordering::Release);
        self.committed.notify_one();
        if self.dispatcher_ended.load(Ordering::Acquire) {
            self.leave_stored(counters, dead_letters);
        }
    }

    /// What this run will not send (its dispatcher or its actor ended first) stays stored
    /// and goes at the next spawn on the same store, which counts it sent again: in this
    /// run's books it ends in the dead-letter record (not the store's) saying so.
    /// The dispatcher has ended: nothing drains the outbox until the next spawn. With the
    /// broker's `books`, what is still in it is accounted for as left stored; without (the
    /// broker is gone), an actor waiting for room is let go.
    pub(crate) fn dispatcher_ended(&self, books: Option<(&BrokerCounters, &DeadLetters)>) {
        self.dispatcher_ended.store(true, Ordering::Release);
        match books {
            Some((counters, dead_letters)) => self.leave_stored(counters, dead_letters),
            None => self.drained.notify_waiters(),
        }
    }

    /// The component whose outbox it is.
    pub(crate) fn id(&self) -> &ComponentId {
        &self.id
    }

    fn leave_stored(&self, counters: &BrokerCounters, dead_letters: &DeadLetters) {
        let (committed, uncommitted) = {
            let mut inner = self.inner();
            let committed: Vec<Outgoing> = inner
                .queue
                .drain(..)
                .map(|entry| Outgoing::new(entry.destination, entry.kind, entry.payload))
                .collect();
            let mut uncommitted = std::mem::take(&mut inner.produced);
            uncommitted.append(&mut inner.handling);
            inner.messages = 0;
            inner.bytes = 0;
            (committed, uncommitted)
        };
        let reasons = [
            "its sender ended before it was sent; it stays stored and goes when the sender is spawned again on the same store",
            // A commit the store refused: the message that sent it is still stored, and
            // sends it again when it is handled again.
            "its sender ended before its batch was committed; the message that sent it stays stored and is handled again when the sender is spawned again on the same store",
        ];
        for (left, reason) in [committed, uncommitted].into_iter().zip(reasons) {
            for outgoing in left {
                dead_letter(counters, dead_letters, &self.id, &outgoing, reason, None);
            }
        }
        self.drained.notify_waiters();
    }

    /// The entry `seq`, at the front, was dispatched or dead-lettered.
    pub(crate) fn done(&self, seq: u64, len: usize) {
        let mut inner = self.inner();
        if inner.queue.front().is_some_and(|front| front.seq == seq) {
            inner.queue.pop_front();
        }
        inner.messages -= 1;
        inner.bytes -= len as u64;
        inner.delivered.push(seq);
        drop(inner);
        self.drained.notify_waiters();
    }

    /// The committed messages at the front of the queue that go to `target`, in order, at
    /// most `max`.
    pub(crate) fn run_to(&self, target: &str, max: usize) -> Vec<StoredOutgoing> {
        self.inner()
            .queue
            .iter()
            .take(max)
            .take_while(|entry| entry.kind == Kind::Message && entry.destination == target)
            .cloned()
            .collect()
    }

    /// The sequence numbers and payload lengths of the first `n` committed entries.
    pub(crate) fn front(&self, n: usize) -> Vec<(u64, usize)> {
        self.inner()
            .queue
            .iter()
            .take(n)
            .map(|entry| (entry.seq, entry.payload.len()))
            .collect()
    }

    pub(crate) fn queue_is_empty(&self) -> bool {
        self.inner().queue.is_empty()
    }

    /// How many dispatched entries wait to be marked delivered in the store.
    pub(crate) fn unmarked(&self) -> usize {
        self.inner().delivered.len()
    }

    /// Commit the delivered marks the dispatcher has gathered; kept for the next try if the
    /// store refuses (a crash before then sends those entries again, which their targets drop).
    pub(crate) async fn mark_delivered(&self, store: &dyn Store) {
        let delivered = std::mem::take(&mut self.inner().delivered);
        if delivered.is_empty() {
            return;
        }
        let mut batch = Batch::new(self.id.to_string());
        batch.delivered = delivered.clone();
        if let Err(err) = store.commit(batch).await {
            tracing::warn!(component = %self.id, error = %err, "its delivered outbox entries were not marked so; a crash before the next mark sends them again");
            self.inner().delivered.extend(delivered);
        }
    }
}

/// Dead-letter what the durable `sender` sent to `destination` with `reason`: counted,
/// recorded, and kept in `store` when given.
pub(crate) fn dead_letter(
    counters: &BrokerCounters,
    dead_letters: &DeadLetters,
    sender: &ComponentId,
    outgoing: &Outgoing,
    reason: &str,
    store: Option<&Arc<dyn Store>>,
) {
    let reason = match outgoing.kind {
        Kind::Publication => format!("publication on `{}`: {reason}", outgoing.destination),
        _ => reason.to_string(),
    };
    // A publication is counted sent per subscriber as it is fanned out: one that never
    // was is on record without being counted.
    if outgoing.kind == Kind::Message {
        bump(&counters.dead_lettered);
    }
    let letter = dead_letters.record(
        sender.clone(),
        outgoing.destination.as_str().into(),
        MessageKind::Message,
        &outgoing.payload,
        &reason,
    );
    if let Some(store) = store {
        crate::dead_letter::keep(store, &letter);
    }
}

/// What a durable sender's outbox entry becomes in its target's stored mailbox: the
/// sender's sequence number goes with it, so a target that already holds it drops it.
pub(crate) fn stored_entry(target: &str, sender: &str, payload: Bytes, seq: Option<u64>) -> Entry {
    let entry = Entry::new(target, sender, Kind::Message, payload);
    match seq {
        Some(seq) => entry.with_seq(seq),
        None => entry,
    }
}
