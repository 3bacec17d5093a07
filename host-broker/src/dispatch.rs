//! The dispatcher of durable components' outboxes (`outbox`), and the router's way in to
//! them: what a durable handler sends is checked and counted like any send, held in its
//! outbox until its batch commits, then routed here, in order, each message to a durable
//! target appended to that target's stored mailbox with the sender's sequence number.

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

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_host_core::{ComponentId, MessagingError};
use courier_host_store::{Appended, Kind, Outgoing, Store, StoredOutgoing};

use crate::mailbox::Envelope;
use crate::metrics::bump;
use crate::outbox::{Outbox, RETRY_WAIT, dead_letter, stored_entry};
use crate::registry::{ActorShared, release};
use crate::remote::{RemoteMessage, RemoteOutcome, RemoteRefusal};
use crate::routing::{Access, RouteCache, Router, Target};

/// How long an entry for an id that nobody serves is tried again before it is
/// dead-lettered: at a restart the sender may be spawned before its target.
const UNKNOWN_TARGET_GRACE: Duration = Duration::from_secs(30);

/// The longest wait between two tries of a message to another host that failed at once (no
/// host serves its target now, say, while that host restarts).
const REMOTE_RETRY_WAIT: Duration = Duration::from_secs(1);

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
                    outbox.id(),
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
        if outbox.queue_is_empty() || outbox.unmarked() >= MARK_EVERY {
            outbox.mark_delivered(&*store).await;
        }
    }
    outbox.mark_delivered(&*store).await;
    // What the actor committed before it ended is accounted for here; what it commits
    // later, by the actor when it ends.
    let router = router.upgrade();
    outbox.dispatcher_ended(
        router
            .as_ref()
            .map(|router| (&*router.counters, &*router.dead_letters)),
    );
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
    let sender = outbox.id();
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
    if let Some(remote) = router.keys.placed_elsewhere(router, target) {
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
    remote: &dyn crate::remote::Remote,
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
