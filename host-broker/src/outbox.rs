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
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_host_core::{ComponentId, MessagingError};
use courier_host_store::{Appended, Batch, Entry, Kind, Outgoing, Store, StoredOutgoing};
use tokio::sync::Notify;

use crate::dead_letter::{DeadLetters, MessageKind};
use crate::mailbox::Envelope;
use crate::metrics::{BrokerCounters, bump};
use crate::registry::ActorShared;
use crate::remote::{RemoteMessage, RemoteOutcome, RemoteRefusal};
use crate::routing::{Access, RouteCache, Router, Target, release};

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
const RETRY_WAIT: Duration = Duration::from_millis(100);

/// How long an entry for an id that nobody serves is tried again before it is
/// dead-lettered: at a restart the sender may be spawned before its target.
const UNKNOWN_TARGET_GRACE: Duration = Duration::from_secs(30);

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

/// The longest wait between two tries of a message to another host that failed at once (no
/// host serves its target now, say, while that host restarts).
const REMOTE_RETRY_WAIT: Duration = Duration::from_secs(1);

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
    fn hold(&self, outgoing: Outgoing) -> Result<(), MessagingError> {
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
    async fn next(&self) -> Option<StoredOutgoing> {
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
    fn done(&self, seq: u64, len: usize) {
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
    fn run_to(&self, target: &str, max: usize) -> Vec<StoredOutgoing> {
        self.inner()
            .queue
            .iter()
            .take(max)
            .take_while(|entry| entry.kind == Kind::Message && entry.destination == target)
            .cloned()
            .collect()
    }

    /// The sequence numbers and payload lengths of the first `n` committed entries.
    fn front(&self, n: usize) -> Vec<(u64, usize)> {
        self.inner()
            .queue
            .iter()
            .take(n)
            .map(|entry| (entry.seq, entry.payload.len()))
            .collect()
    }

    fn queue_is_empty(&self) -> bool {
        self.inner().queue.is_empty()
    }
}

impl Router {
    /// A durable `sender`'s message to `target`: checked and counted now like any send, and
    /// held in its outbox until its batch is committed. `mailbox-full` if the outbox is at
    /// its bound.
    pub(crate) fn send_later(
        &self,
        outbox: &Outbox,
        target: &str,
        payload: Bytes,
        access: Access,
        cache: Option<&RouteCache>,
    ) -> Result<(), MessagingError> {
        let admitted = self.admit_counted(target, payload.len(), access, cache)?;
        let entry = match &admitted {
            Target::Local(entry) => Some(entry.clone()),
            Target::Remote(_) => None,
        };
        outbox
            .hold(Outgoing::new(target, Kind::Message, payload))
            .inspect_err(|_| self.refused(entry.as_deref()))
    }

    /// A durable `sender`'s publication on `topic`: checked now, held in its outbox until
    /// its batch is committed, then fanned out. The count is of the subscribers here now.
    pub(crate) fn publish_later(
        &self,
        outbox: &Outbox,
        topic: &str,
        payload: Bytes,
        access: Access,
    ) -> Result<u32, MessagingError> {
        self.check_sender(topic, payload.len(), access)?;
        let subscribers = self.registry.subscribers(topic).len() as u32;
        outbox.hold(Outgoing::new(topic, Kind::Publication, payload))?;
        Ok(subscribers)
    }
}

/// What became of one outbox entry the dispatcher tried.
enum Dispatched {
    /// Queued, appended, published, or found already held: it is done.
    Done,
    /// It and the entries after it up to this many in all (a run to one durable target,
    /// appended together) are done.
    Run(usize),
    /// It will never be delivered: dead-lettered with this reason.
    Dead(String),
    /// Not now (a full mailbox, a store that refused, a target not spawned yet): try it
    /// again.
    Later,
    /// Not acknowledged by another host: try it again after at most this long.
    Retry(Duration),
    /// The broker is going or the sender was replaced: it stays stored for the next spawn.
    Stop,
}

/// Dispatch the committed entries of `shared`'s outbox, in order, for as long as the broker
/// lives and `shared` is the component registered under its id, marking in `store` what
/// was dispatched. What is left when it ends stays stored, for the next spawn.
pub(crate) async fn dispatch(
    router: Weak<Router>,
    shared: Weak<ActorShared>,
    outbox: Arc<Outbox>,
    store: Arc<dyn Store>,
) {
    let mut unknown_since: Option<Instant> = None;
    let mut remote_tries: Option<RemoteTries> = None;
    let mut backoff = Duration::from_millis(10);
    loop {
        let Some(entry) = outbox.next().await else {
            break;
        };
        let (Some(router), Some(shared)) = (router.upgrade(), shared.upgrade()) else {
            break;
        };
        if !shared.is_current() {
            break;
        }
        let len = entry.payload.len();
        let seq = entry.seq;
        let tried = try_dispatch(
            &router,
            &outbox,
            &entry,
            &mut unknown_since,
            &mut remote_tries,
        )
        .await;
        match tried {
            Dispatched::Done => {
                backoff = Duration::from_millis(10);
                outbox.done(seq, len);
            }
            Dispatched::Run(n) => {
                backoff = Duration::from_millis(10);
                for (seq, len) in outbox.front(n) {
                    outbox.done(seq, len);
                }
            }
            Dispatched::Dead(reason) => {
                unknown_since = None;
                if let Some(target) = router.registry.get(&entry.destination) {
                    bump(&target.shared.metrics.dead_lettered);
                }
                let outgoing =
                    Outgoing::new(entry.destination.clone(), entry.kind, entry.payload.clone());
                dead_letter(
                    &router.counters,
                    &router.dead_letters,
                    &outbox.id,
                    &outgoing,
                    &reason,
                    Some(&store),
                );
                outbox.done(seq, len);
            }
            Dispatched::Later => {
                drop((router, shared));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_WAIT);
                continue;
            }
            Dispatched::Retry(wait) => {
                drop((router, shared));
                tokio::time::sleep(wait).await;
                continue;
            }
            Dispatched::Stop => break,
        }
        // Marked when the dispatcher catches up, or every so many under a steady stream, so
        // the store's outbox (and what a crash would send again) stays short.
        if outbox.queue_is_empty() || outbox.inner().delivered.len() >= MARK_EVERY {
            mark_delivered(&outbox, &*store).await;
        }
    }
    mark_delivered(&outbox, &*store).await;
    outbox.dispatcher_ended.store(true, Ordering::Release);
    // What the actor committed before it ended is accounted for here; what it commits
    // later, by the actor when it ends.
    match router.upgrade() {
        Some(router) => outbox.leave_stored(&router.counters, &router.dead_letters),
        None => outbox.drained.notify_waiters(),
    }
}

/// Commit the delivered marks the dispatcher has gathered; kept for the next try if the
/// store refuses (a crash before then sends those entries again, which their targets drop).
async fn mark_delivered(outbox: &Outbox, store: &dyn Store) {
    let delivered = std::mem::take(&mut outbox.inner().delivered);
    if delivered.is_empty() {
        return;
    }
    let mut batch = Batch::new(outbox.id.to_string());
    batch.delivered = delivered.clone();
    if let Err(err) = store.commit(batch).await {
        tracing::warn!(component = %outbox.id, error = %err, "its delivered outbox entries were not marked so; a crash before the next mark sends them again");
        outbox.inner().delivered.extend(delivered);
    }
}

/// The tries of the outbox entry at the front, whose target is on another host.
struct RemoteTries {
    seq: u64,
    /// Its first try in this run: the retention counts from it.
    since: Instant,
    /// How many of its tries failed at once; the wait before the next grows with them.
    quick_failures: u32,
}

/// Try the outbox entry `entry` of `sender` once.
async fn try_dispatch(
    router: &Arc<Router>,
    outbox: &Outbox,
    entry: &StoredOutgoing,
    unknown_since: &mut Option<Instant>,
    remote_tries: &mut Option<RemoteTries>,
) -> Dispatched {
    let sender = &outbox.id;
    if router.is_shutting_down() {
        return Dispatched::Stop;
    }
    if entry.kind == Kind::Publication {
        // Checked at the call; the fan-out dead-letters a subscriber it cannot reach.
        let _ = router.publish(
            sender,
            &entry.destination,
            entry.payload.clone(),
            Access::Host,
            // What a durable handler sent leaves after its commit, out of its call's trace.
            None,
        );
        return Dispatched::Done;
    }
    let target = entry.destination.as_str();
    // A key another host of the lattice runs goes there, as a send to it would.
    if let Some(remote) = router.keyed.placed_elsewhere(router, target) {
        *unknown_since = None;
        return send_remote(router, &*remote, sender, entry, remote_tries).await;
    }
    let target_entry = match router.local_entry(target) {
        Some(Ok(target_entry)) => Some(target_entry),
        // Refused for now (too many keys being put away) or for good (not a key it takes).
        Some(Err(MessagingError::MailboxFull(_))) => return Dispatched::Later,
        Some(Err(MessagingError::ShuttingDown)) => return Dispatched::Stop,
        Some(Err(error)) => return Dispatched::Dead(error.to_string()),
        None => None,
    };
    let Some(target_entry) = target_entry else {
        if let Some(remote) = router.remote.get() {
            *unknown_since = None;
            return send_remote(router, &*remote, sender, entry, remote_tries).await;
        }
        let since = *unknown_since.get_or_insert_with(Instant::now);
        if since.elapsed() < UNKNOWN_TARGET_GRACE {
            return Dispatched::Later;
        }
        return Dispatched::Dead(format!(
            "no component `{target}` was spawned within {} s of its sender's commit",
            UNKNOWN_TARGET_GRACE.as_secs()
        ));
    };
    *unknown_since = None;
    if target_entry.shared.is_closed() {
        return Dispatched::Dead(crate::routing::closed_error(&target_entry).to_string());
    }
    // It would wait for room that no empty mailbox has.
    if entry.payload.len() as u64 > target_entry.shared.mailbox_bytes {
        return Dispatched::Dead(format!(
            "its {} bytes are more than the mailbox of `{target}` holds ({} bytes)",
            entry.payload.len(),
            target_entry.shared.mailbox_bytes
        ));
    }
    if let Some(durable) = target_entry.shared.durable.as_ref() {
        let run = outbox.run_to(target, MAX_RUN);
        return append_run(router, sender, &target_entry, &durable.store, &run).await;
    }
    let envelope = Envelope::message(sender.clone(), entry.payload.clone());
    let answer = router
        .enqueue_waiting(&target_entry, envelope, RETRY_WAIT)
        .await;
    match answer {
        Ok(()) => Dispatched::Done,
        Err(refused) => match refused.error {
            MessagingError::MailboxFull(_) => Dispatched::Later,
            MessagingError::ShuttingDown => Dispatched::Stop,
            MessagingError::TargetCrashed(text) if text.starts_with("storage:") => {
                tracing::warn!(component = %sender, target, error = %text, "an outbox entry could not be stored by its target; it is tried again");
                Dispatched::Later
            }
            error => Dispatched::Dead(error.to_string()),
        },
    }
}

/// Send `entry`, a message of the durable `sender`, to the host that serves its target, and
/// wait for that host to acknowledge it: it is done only then, so a crash of either host,
/// of a NATS server, or an acknowledgement lost on the way leaves it in the outbox, to go
/// again (the serving host drops a copy its durable target already holds, by `sender` and
/// the entry's sequence number). One entry is on its way at a time: the next goes once this
/// one is acknowledged, so a durable target never holds a later message of a sender
/// without every earlier one, and one sequence mark per sender is enough to tell copies.
///
/// A refusal that can never pass (too large, access denied) dead-letters it at once;
/// anything else (no acknowledgement, no host serving the target now, a full mailbox, a
/// store that failed) is tried again until the broker's remote retention has passed since
/// its first try, then it is dead-lettered with the last reason.
async fn send_remote(
    router: &Arc<Router>,
    remote: &dyn crate::Remote,
    sender: &ComponentId,
    entry: &StoredOutgoing,
    tries: &mut Option<RemoteTries>,
) -> Dispatched {
    let tried = match tries {
        Some(tried) if tried.seq == entry.seq => tried,
        _ => tries.insert(RemoteTries {
            seq: entry.seq,
            since: Instant::now(),
            quick_failures: 0,
        }),
    };
    let (message, outcome) = RemoteMessage::durable(
        router.me.clone(),
        sender.clone(),
        entry.destination.as_str().into(),
        entry.payload.clone(),
        entry.seq,
    );
    let started = Instant::now();
    let failure = match remote.send(message) {
        Ok(()) => match outcome.await {
            Ok(RemoteOutcome::Delivered) => {
                bump(&router.counters.delivered);
                *tries = None;
                return Dispatched::Done;
            }
            Ok(RemoteOutcome::Refused(error)) => error,
            Ok(RemoteOutcome::Failed(reason)) => MessagingError::TargetCrashed(reason),
            Err(_) => {
                MessagingError::TargetCrashed("its carrier ended without an outcome".to_string())
            }
        },
        Err(RemoteRefusal { error, message }) => {
            message.refused();
            error
        }
    };
    if let MessagingError::PayloadTooLarge(_) | MessagingError::AccessDenied(_) = failure {
        *tries = None;
        return Dispatched::Dead(failure.to_string());
    }
    let retention = router.config.remote_retention;
    if tried.since.elapsed() >= retention {
        *tries = None;
        return Dispatched::Dead(crate::text::bounded_text(&format!(
            "not acknowledged by a host serving `{}` within {} of tries (the remote retention of a durable sender); last: {failure}",
            entry.destination,
            courier_host_core::units::format_duration(retention)
        )));
    }
    tracing::debug!(component = %sender, target = %entry.destination, error = %failure, "a durable message to another host is tried again");
    // A try that waited for its acknowledgement goes again at once; one refused at once
    // (nobody serves the target now) waits, longer each time, so an outage is not a spin.
    if started.elapsed() >= RETRY_WAIT {
        tried.quick_failures = 0;
        return Dispatched::Retry(Duration::ZERO);
    }
    tried.quick_failures = tried.quick_failures.saturating_add(1);
    let wait = Duration::from_millis(10) * 2u32.pow(tried.quick_failures.min(7));
    Dispatched::Retry(wait.min(REMOTE_RETRY_WAIT))
}

/// How many dispatched entries wait for their delivered mark at most, under a stream that
/// never lets the dispatcher catch up: a few runs' worth, one commit for them all.
const MARK_EVERY: usize = 4 * MAX_RUN;

/// The most outbox entries appended to one target's store together: one fsync for a run of
/// messages to the same target instead of one each, the size of an actor's batch.
const MAX_RUN: usize = 64;

/// Append `run`, the outbox entries at the front of `sender`'s outbox (all messages to the
/// durable `target`, in order), to the target's store in one write, as many as its mailbox
/// has room for (at least the first, waiting for it up to [`RETRY_WAIT`]), each carrying its
/// sequence number, and queue those the store did not already hold.
async fn append_run(
    router: &Router,
    sender: &ComponentId,
    target: &Arc<crate::registry::Entry>,
    store: &Arc<dyn Store>,
    run: &[StoredOutgoing],
) -> Dispatched {
    let first = match tokio::time::timeout(RETRY_WAIT, target.reserve()).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(_)) => return Dispatched::Dead(crate::routing::closed_error(target).to_string()),
        Err(_) => return Dispatched::Later,
    };
    let mut permits = vec![first];
    while permits.len() < run.len() {
        match target.try_reserve() {
            Ok(permit) => permits.push(permit),
            Err(_) => break,
        }
    }
    // Charged to the mailbox's byte budget and the broker's like any message; the run ends
    // where the budget does.
    let mut charged = 0;
    for entry in &run[..permits.len()] {
        let envelope = Envelope::message(sender.clone(), entry.payload.clone());
        if router.charge(target, envelope).is_err() {
            break;
        }
        charged += 1;
    }
    permits.truncate(charged);
    let run = &run[..charged];
    if run.is_empty() {
        return Dispatched::Later;
    }
    let records = run
        .iter()
        .map(|entry| {
            stored_entry(
                &target.shared.id,
                sender,
                entry.payload.clone(),
                Some(entry.seq),
            )
        })
        .collect();
    match store.append(records).await {
        Ok(appended) if appended.len() == run.len() => {
            for ((permit, entry), appended) in permits.into_iter().zip(run).zip(appended) {
                match appended {
                    Appended::Stored { position } => permit.send(Envelope::Message {
                        sender: sender.clone(),
                        payload: entry.payload.clone(),
                        position: Some(position),
                        trace: None,
                        published: false,
                    }),
                    Appended::Duplicate => {
                        drop(permit);
                        release(
                            &target.shared,
                            &router.counters,
                            1,
                            entry.payload.len() as u64,
                        );
                        // Delivered by an earlier run, which the crash kept from marking it
                        // so; counted sent again at this spawn, so it ends here.
                        bump(&router.counters.delivered);
                    }
                }
            }
            Dispatched::Run(run.len())
        }
        answer => {
            drop(permits);
            let bytes = run.iter().map(|e| e.payload.len() as u64).sum();
            release(&target.shared, &router.counters, run.len() as u64, bytes);
            let error = match answer {
                Err(err) => err.to_string(),
                Ok(_) => "the store gave a wrong number of answers".to_string(),
            };
            tracing::warn!(component = %sender, target = %target.shared.id, %error, "outbox entries could not be stored by their target; they are tried again");
            Dispatched::Later
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
        crate::durable::keep_dead_letter(store, &letter);
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
