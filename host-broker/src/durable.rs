//! Durable components: what of them is kept in the store, and when.
//!
//! A durable component's messages are appended to the store before their sender hears `Ok`
//! (`Router::store_then_enqueue`, in `storing`), so "accepted" means "stored". Its actor saves its state
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
//! durable components are kept in the store too (`dead_letter::keep`) and listed again
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
use courier_host_store::{Batch, Store, StoreError, StoredOutgoing};

use crate::mailbox::Envelope;
use crate::outbox::Outbox;
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
