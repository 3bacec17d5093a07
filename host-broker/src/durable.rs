//! Durable components: what of them is kept in the store, and when.
//!
//! A durable component's messages are appended to the store before their sender hears `Ok`
//! ([`Router::store_then_enqueue`]), so "accepted" means "stored". Its actor saves its state
//! after every message it handles and commits, once per batch, the positions of the stored
//! messages it handled together with that state and what its handlers sent, in one
//! transaction ([`Durable::commit`]). A crash therefore replays, on top of the last
//! committed state, exactly the stored messages that state does not include, and none of
//! their sends has left. At spawn the broker loads that state and the unconsumed messages,
//! which the actor handles, in their order, before anything new, and the outbox's
//! undelivered entries, which go again before anything new ([`recover`]).
//!
//! What the handlers send waits in the component's outbox (`outbox`) until that commit,
//! then goes out in order, each message to a durable target carrying the sender's
//! sequence number so that the target's store drops one it already holds. Dead letters of
//! durable components are kept in the store too ([`keep_dead_letter`]) and listed again
//! after a restart. Its timers are kept in the store as well, changed with the batch that
//! changed them: what a handler scheduled or cancelled, and the firings it handled
//! (`timers` says how).
//!
//! Across hosts the same holds: a message from another host is stored before the serving
//! host acknowledges it (`Router::accept_message_stored`), and a durable sender's message to
//! another host stays in its outbox until acknowledged, carrying its sequence number, so the
//! target's store drops a copy.
//!
//! What is not covered: requests a durable handler makes go at once (they need their answer
//! during the handler), so a replayed message asks again; sends to components that are not
//! durable and publications are at least once (a crash between sending and marking one
//! delivered sends it again, and nothing there drops it); requests to a durable component
//! are not stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_host_core::{ComponentId, MessagingError};
use courier_host_store::{Appended, Batch, Kind, Store, StoreError, StoredOutgoing};

use crate::dead_letter::{DeadLetter, MessageKind};
use crate::mailbox::Envelope;
use crate::outbox::Outbox;
use crate::registry::Entry;
use crate::routing::{Refused, Router, release};
use crate::timers::ActorTimers;

/// What a durable component's actor and its senders share: the store, and until the actor
/// first runs, what was recovered from it.
pub(crate) struct Durable {
    pub(crate) store: Arc<dyn Store>,
    /// What its handlers sent, until it is committed and dispatched.
    pub(crate) outbox: Arc<Outbox>,
    /// The stored messages a spawn found unconsumed, in order, for the actor to take before
    /// its mailbox.
    recovered: Mutex<Vec<Envelope>>,
    /// Batches committed, and their total time, for the component's metrics.
    pub(crate) commits: AtomicU64,
    pub(crate) commit_nanos: AtomicU64,
    /// Commits the store refused; their positions are retried with the next batch.
    pub(crate) failed_commits: AtomicU64,
}

impl Durable {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        recovered: Vec<Envelope>,
        outbox: Arc<Outbox>,
    ) -> Durable {
        Durable {
            store,
            outbox,
            recovered: Mutex::new(recovered),
            commits: AtomicU64::new(0),
            commit_nanos: AtomicU64::new(0),
            failed_commits: AtomicU64::new(0),
        }
    }

    /// The recovered messages, once: the actor takes them as its first batch.
    pub(crate) fn take_recovered(&self) -> Vec<Envelope> {
        std::mem::take(&mut *self.recovered.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Commit what the actor of `id` handled since its last commit: the positions in
    /// `consumed`, its `state`, what its handlers sent (its outbox's produced entries) and
    /// the changes to its `timers`, in one transaction. On success `consumed` is emptied and
    /// the sends go to the dispatcher; on failure all are kept, to go with the next batch
    /// (until then a crash replays those messages, which sends them again: none has left
    /// yet).
    pub(crate) async fn commit(
        &self,
        id: &ComponentId,
        consumed: &mut Vec<u64>,
        state: Option<Bytes>,
        timers: &ActorTimers,
    ) {
        let mut batch = Batch::new(id.to_string());
        batch.consumed = consumed.clone();
        batch.state = state;
        batch.produced = self.outbox.produced();
        let (changed, changes) = timers.changes();
        batch.timers = changes;
        let started = Instant::now();
        let committed = self.store.commit(batch).await;
        if committed.is_err() {
            timers.unsent(changed);
        }
        match committed {
            Ok(committed) => {
                consumed.clear();
                self.outbox.committed(&committed.produced);
                self.commits.fetch_add(1, Ordering::Relaxed);
                let nanos = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
                self.commit_nanos.fetch_add(nanos, Ordering::Relaxed);
            }
            Err(err) => {
                self.failed_commits.fetch_add(1, Ordering::Relaxed);
                tracing::error!(component = %id, error = %err, pending = consumed.len(), "its batch was not committed; a crash before the next commit replays those messages");
            }
        }
    }

    /// The mean time of this component's commits, fsync included.
    pub(crate) fn mean_commit(&self) -> Duration {
        let commits = self.commits.load(Ordering::Relaxed);
        match commits {
            0 => Duration::ZERO,
            n => Duration::from_nanos(self.commit_nanos.load(Ordering::Relaxed) / n),
        }
    }
}

/// What the store holds of the durable component `id`: its last committed state, its
/// unconsumed messages, in the order they were stored, as envelopes that name their
/// positions, and its undelivered outbox, in the order it was sent.
pub(crate) async fn recover(store: &dyn Store, id: &ComponentId) -> Result<Recovery, StoreError> {
    let recovered = store.load(id).await?;
    let mailbox = recovered
        .mailbox
        .into_iter()
        .map(|entry| Envelope::Message {
            sender: entry.sender.into(),
            payload: entry.payload,
            position: Some(entry.position),
            // What the store keeps is the message, not its trace: a message handled after a
            // restart starts a trace of its own.
            trace: None,
            published: false,
        })
        .collect();
    Ok((recovered.state, mailbox, recovered.outbox))
}

/// What [`recover`] found: state, unconsumed messages, undelivered outbox.
pub(crate) type Recovery = (Option<Bytes>, Vec<Envelope>, Vec<StoredOutgoing>);

/// Keep `letter`, a dead letter of a durable component, in `store`, so it is still listed
/// after a restart. Written on its own task: whoever dead-letters does not wait on the
/// disk, and a store that refuses it loses only the record, which is logged.
pub(crate) fn keep_dead_letter(store: &Arc<dyn Store>, letter: &DeadLetter) {
    let kept = courier_host_store::DeadLetter {
        sender: letter.sender.to_string(),
        target: letter.target.to_string(),
        kind: match letter.kind {
            MessageKind::Message => Kind::Message,
            MessageKind::Request => Kind::Request,
        },
        payload: Bytes::copy_from_slice(&letter.payload),
        payload_len: letter.payload_len as u64,
        reason: letter.reason.clone(),
        at: letter.at,
    };
    let written = store.dead_letter(kept);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        if let Err(err) = written.await {
            tracing::warn!(error = %err, "a dead letter of a durable component was not kept in the store");
        }
    });
}

/// The dead letters `store` keeps, oldest first, as the broker lists them.
pub(crate) async fn kept_dead_letters(store: &dyn Store) -> Result<Vec<DeadLetter>, StoreError> {
    let kept = store.dead_letters().await?;
    Ok(kept
        .letters
        .into_iter()
        .map(|letter| DeadLetter {
            sender: letter.sender.into(),
            target: letter.target.into(),
            kind: match letter.kind {
                Kind::Request => MessageKind::Request,
                Kind::Message | Kind::Publication => MessageKind::Message,
            },
            payload: letter.payload.to_vec(),
            payload_len: letter.payload_len as usize,
            reason: letter.reason,
            at: letter.at,
        })
        .collect())
}

/// The error of a send that cannot wait (`Broker::send`) to a durable component, which
/// takes a message only once it is stored; like a store's refusal, `target-crashed` with a
/// text that starts with `storage:` and says which call waits.
pub(crate) fn needs_waiting(target: &ComponentId) -> MessagingError {
    MessagingError::TargetCrashed(format!(
        "storage: component `{target}` is durable and takes a message only once it is stored, which this call cannot wait for: use `Broker::send_durable`, which does"
    ))
}

/// The error a sender gets when the store would not take its message. The WIT's
/// `messaging-error` has no case for it, and a new case would change the type of every
/// messaging import, so components built against today's WIT would no longer load: it is
/// `target-crashed` (the target cannot take it; nothing was stored, nothing will be
/// delivered), with a text that starts with `storage:` and names the store's file.
pub(crate) fn storage_error(target: &ComponentId, err: &StoreError) -> MessagingError {
    MessagingError::TargetCrashed(crate::text::bounded_text(&format!(
        "storage: component `{target}` could not store the message: {err}"
    )))
}

impl Router {
    /// Put `envelope` (a message) in the durable `entry`'s mailbox once the store holds it:
    /// room in the mailbox is taken first, so nothing is stored that would then be refused;
    /// the store's answer decides; and only a stored message goes in, naming its position.
    /// Whatever is refused is counted so and handed back. The message was already counted
    /// sent and admitted. `seq` is its durable sender's sequence number, if it has one: a
    /// message the store already holds from that sender is not queued again, and counted
    /// delivered (its first copy is, or was, handled).
    pub(crate) async fn store_then_enqueue(
        self: Arc<Router>,
        entry: Arc<Entry>,
        store: Arc<dyn Store>,
        envelope: Envelope,
        wait: Option<Duration>,
        seq: Option<u64>,
    ) -> Result<(), Refused> {
        let reserved = match wait {
            None => entry.try_reserve(),
            Some(wait) => match tokio::time::timeout(wait, entry.reserve()).await {
                Ok(Ok(permit)) => Ok(permit),
                Ok(Err(_)) => Err(false),
                Err(_) => Err(true),
            },
        };
        let permit = match reserved {
            Ok(permit) => permit,
            Err(full) => {
                self.refused(Some(&entry));
                let error = if full {
                    MessagingError::MailboxFull(entry.shared.id.to_string())
                } else {
                    crate::routing::closed_error(&entry)
                };
                return Err(Refused { error, envelope });
            }
        };
        let envelope = self
            .charge(&entry, envelope)
            .inspect_err(|_| self.refused(Some(&entry)))?;
        let len = envelope.payload().len() as u64;
        let Envelope::Message {
            sender,
            payload,
            trace,
            ..
        } = envelope
        else {
            unreachable!("only messages are stored")
        };
        let record = crate::outbox::stored_entry(&entry.shared.id, &sender, payload.clone(), seq);
        let stored = store.append(vec![record]).await;
        let position = match stored.as_deref() {
            Ok([appended]) => appended.position(),
            Ok(_) => None,
            Err(_) => None,
        };
        match (stored, position) {
            (Ok(appended), None) if seq.is_some() && appended == [Appended::Duplicate] => {
                drop(permit);
                release(&entry.shared, &self.counters, 1, len);
                crate::metrics::bump(&self.counters.delivered);
                Ok(())
            }
            (Ok(_), Some(position)) => {
                permit.send(Envelope::Message {
                    sender,
                    payload,
                    position: Some(position),
                    trace,
                    published: false,
                });
                Ok(())
            }
            (stored, _) => {
                drop(permit);
                release(&entry.shared, &self.counters, 1, len);
                self.refused(Some(&entry));
                let error = match stored {
                    Err(err) => storage_error(&entry.shared.id, &err),
                    // An entry without a sequence number is never a duplicate, and one
                    // entry in gives one answer out: a store that says otherwise is broken.
                    Ok(_) => MessagingError::TargetCrashed(format!(
                        "storage: component `{}`: the store did not say where it kept the message",
                        entry.shared.id
                    )),
                };
                Err(Refused {
                    error,
                    envelope: Envelope::traced(sender, payload, trace.map(|trace| *trace)),
                })
            }
        }
    }
}
