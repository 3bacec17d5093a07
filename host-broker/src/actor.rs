//! The actor: a task that owns one instance and its mailbox and handles one message at a time.
//!
//! What handles a message is the actor's [`Core`]: the instance and what supervising it
//! needs. The actor's task holds the core while it works through its mailbox; while the
//! mailbox is empty it leaves the core at its hand-off point, where a request may borrow it
//! and run on the requester's task instead (`handoff`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Instant;

use courier_host_core::guest_log::escape;
use courier_host_core::{CallResult, Component, Instance, InstanceOptions, MessagingError};
use tokio::sync::mpsc;

use crate::dead_letter::{DeadLetters, MessageKind};
use crate::mailbox::Envelope;
use crate::metrics::{BrokerCounters, bump};
use crate::registry::{ActorShared, ComponentState, release};

use crate::supervisor::{RestartHistory, Supervision, Verdict};
use crate::telemetry::{CallTrace, HandlerKind, HandlerSpan, Outcome};
use crate::text::bounded_text;
use crate::timers::TIMER_SENDER_PREFIX;

/// How many ready messages an actor takes from its mailbox at once. Taking a batch costs
/// one synchronisation instead of one per message; the bound keeps a busy actor from
/// holding messages it has not started on when it stops.
const BATCH: usize = 64;

/// The actor's task: its mailbox, the batch taken from it, and its core when it holds it.
pub(crate) struct Actor {
    /// `None` while the core is left at the hand-off point.
    core: Option<Box<Core>>,
    shared: Arc<ActorShared>,
    counters: Arc<BrokerCounters>,
    mailbox: mpsc::Receiver<Envelope>,
    /// Messages taken from the mailbox and not yet handled, last first.
    batch: Vec<Envelope>,
    /// The messages of this batch taken so far and their payload bytes, still counted as
    /// queued (and charged to the budgets) until the batch is done.
    taken: Taken,
    /// For a durable component: the store positions of the messages handled since the last
    /// commit, and whether anything (a request, a timer) was handled since then.
    consumed: Vec<u64>,
    handled_since_commit: bool,
}

/// What handles a message: the instance and what supervising it needs. It is in one place
/// at a time: the actor's task, the hand-off point, or a requester that borrowed it.
pub(crate) struct Core {
    pub(crate) shared: Arc<ActorShared>,
    /// The broker's counters and dead letters, shared rather than reached through the
    /// broker, so an actor never keeps the broker (and so its own mailbox) alive.
    pub(crate) counters: Arc<BrokerCounters>,
    pub(crate) dead_letters: Arc<DeadLetters>,
    pub(crate) component: Component,
    pub(crate) options: InstanceOptions,
    pub(crate) supervision: Supervision,
    /// `None` between dropping a poisoned instance and creating its replacement.
    pub(crate) instance: Option<Instance>,
    pub(crate) history: RestartHistory,
    /// The message being handled, kept here rather than in the call so that it is still
    /// on hand to dead-letter if the call never comes back.
    pub(crate) current: Option<Envelope>,
    /// The state a restart starts from, and when it was saved ([`Supervision::checkpoint`]).
    pub(crate) checkpoint: Option<(Vec<u8>, Instant)>,
}

/// Messages taken from a mailbox, and their payload bytes.
#[derive(Default)]
struct Taken {
    messages: u64,
    bytes: u64,
}

/// Why the actor's loop ended, if it ended by itself.
pub(crate) enum End {
    /// Stopped on request, or its mailbox's senders are all gone.
    Stopped(String),
    /// Failed: too many restarts, or a policy that does not restart.
    Failed(String),
}

impl End {
    /// The state a component that ended so is in.
    fn state(&self) -> ComponentState {
        match self {
            End::Stopped(reason) => ComponentState::Stopped(reason.clone()),
            End::Failed(reason) => ComponentState::Failed(reason.clone()),
        }
    }
}

/// What a call leaves for the actor's task to deal with before the next message.
pub(crate) enum Aftermath {
    /// The instance trapped: the supervision decides what follows.
    Trapped(courier_host_core::Error),
    /// The instance trapped in `save-state`, after its message was handled: nothing was
    /// lost but that instance, which a fresh one of the same version replaces, from the
    /// last saved state, without a restart charged to the supervision.
    SaveFailed(courier_host_core::Error),
    /// The actor ends.
    Ended(End),
}

/// Make the core of one component (its shared state, the broker's books, how to make and
/// limit its instance, and the first instance) and leave it at the hand-off point, where
/// requests may borrow it before the actor's task first runs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn park_core(
    shared: &Arc<ActorShared>,
    counters: Arc<BrokerCounters>,
    dead_letters: Arc<DeadLetters>,
    component: Component,
    options: InstanceOptions,
    supervision: Supervision,
    instance: Instance,
    checkpoint: Option<Vec<u8>>,
) {
    let core = Core {
        shared: shared.clone(),
        counters,
        dead_letters,
        component,
        options,
        supervision,
        instance: Some(instance),
        history: RestartHistory::new(),
        current: None,
        checkpoint: checkpoint.map(|state| (state, Instant::now())),
    };
    shared.handoff.park(Box::new(core));
}

impl Actor {
    /// The actor of a component whose core [`park_core`] left at the hand-off point, with
    /// the mailbox it serves.
    pub(crate) fn new(
        shared: Arc<ActorShared>,
        counters: Arc<BrokerCounters>,
        mailbox: mpsc::Receiver<Envelope>,
    ) -> Actor {
        // A durable component's recovered messages are its first batch, ahead of anything
        // sent since its spawn; handled from the end, like every batch.
        let mut batch = shared
            .durable
            .as_ref()
            .map(|durable| durable.take_recovered())
            .unwrap_or_default();
        batch.reverse();
        Actor {
            core: None,
            shared,
            counters,
            mailbox,
            batch,
            taken: Taken::default(),
            consumed: Vec::new(),
            handled_since_commit: false,
        }
    }

    /// The core, which the actor holds whenever it is not waiting on its mailbox.
    fn core(&mut self) -> &mut Core {
        self.core
            .as_mut()
            .expect("the actor holds its core outside its wait for the mailbox")
    }

    /// Serve the mailbox until the actor ends, then account for everything left in it.
    ///
    /// A panic in the host while serving (a bug, never a guest's doing: guest faults are
    /// traps) is caught here rather than left to end the task silently: the component is
    /// marked failed, the panic logged, and the message in hand and every queued one
    /// dead-lettered.
    pub(crate) async fn run(mut self) {
        let served = catching_panics(std::pin::pin!(self.serve())).await;
        let end = served.unwrap_or_else(|panic| {
            if let Some(core) = self.core.as_mut() {
                core.panicked(&*panic)
            } else {
                End::Failed(format!(
                    "the host panicked while serving it: {}",
                    panic_text(&*panic)
                ))
            }
        });
        self.close(end).await;
    }

    /// Take messages in batches and handle them one at a time until a stop, a failure or
    /// the end of the broker.
    async fn serve(&mut self) -> End {
        let mut stopping = false;
        if self.core.is_none()
            && !self.batch.is_empty()
            && let Err(end) = self.unpark().await
        {
            return end;
        }
        loop {
            let envelope = match self.next(stopping).await {
                Ok(Some(envelope)) => envelope,
                Ok(None) if stopping => return End::Stopped("stopped by the host".into()),
                Ok(None) => return End::Stopped("the broker was dropped".into()),
                Err(end) => return end,
            };
            if self.shared.upgrade_pending.load(Ordering::Acquire)
                && let Some(aftermath) = self.core().take_upgrade().await
                && let Some(end) = self.core().settle(aftermath).await
            {
                // Taken from the batch and not handled: dead-lettered on closing.
                self.core().current = Some(envelope);
                return end;
            }
            if matches!(envelope, Envelope::Wake) {
                // A key woken for its timers makes its instance, which loads them.
                if self.core().instance.is_none()
                    && self.shared.keyed.is_some()
                    && let Some(aftermath) = activate_core(self.core()).await
                    && let Some(end) = self.core().settle(aftermath).await
                {
                    return end;
                }
                continue;
            }
            if matches!(envelope, Envelope::Stop) {
                // What was taken with the stop was accepted before it, so it is owed a
                // delivery; what is still in the channel is dead-lettered on closing.
                stopping = true;
                continue;
            }
            let (envelope, timer) = match envelope {
                Envelope::Timer { name, firing } => {
                    match self.core().timer_message(&name, firing) {
                        Some(message) => (message, Some(name)),
                        // Cancelled or replaced since it was rung.
                        None => continue,
                    }
                }
                envelope => (envelope, None),
            };
            self.wait_for_outbox().await;
            let core = self.core();
            if core.shared.past_drain_deadline() {
                core.dead_letter(envelope, "the shutdown deadline passed before delivery");
                continue;
            }
            let position = envelope.position();
            core.current = Some(envelope);
            let aftermath = core.handle().await;
            if timer.is_some() {
                core.shared.timers.set_missed(0);
            }
            // A message whose handling the shutdown cut is not consumed: its effects are not
            // in any state, so the next start handles it again. Nor is a timer's firing.
            if !matches!(aftermath, Some(Aftermath::Ended(_))) {
                self.handled_since_commit = true;
                self.consumed.extend(position);
                if let Some(name) = timer {
                    self.shared.timers.handled(&name);
                }
            }
            self.core().settle_outbox(&aftermath);
            let core = self.core();
            if let Some(aftermath) = aftermath
                && let Some(end) = core.settle(aftermath).await
            {
                return end;
            }
            // A handler call never waits on tokio, and a busy mailbox always has a batch
            // ready, so without this an actor flooded with messages would keep its worker
            // for thousands of them (tokio's budget counts only the mailbox reads, one per
            // batch): timers due, I/O and every other actor on that worker would wait.
            // One unit per message yields every 128 or so.
            tokio::task::coop::consume_budget().await;
        }
    }

    /// The next message, with the core in hand: from the batch in hand, or a new batch from
    /// the mailbox unless the actor is stopping. `None` when there is nothing more to
    /// handle; an end if what a requester gave back with the core ended the actor.
    async fn next(&mut self, stopping: bool) -> Result<Option<Envelope>, End> {
        if self.batch.is_empty() {
            // Committed before its messages leave the counts, so a broker that is quiet has
            // committed what it handled.
            self.commit().await;
            // The batch is handled: it leaves the counts together, one atomic update (on
            // counters the senders share) per batch rather than per message.
            let taken = std::mem::take(&mut self.taken);
            release(&self.shared, &self.counters, taken.messages, taken.bytes);
            if stopping || self.take_batch().await? == 0 {
                return Ok(None);
            }
            // Handled from the end, so a message leaves the batch without shifting the rest,
            // and whatever is left at any moment is exactly what has not been handled.
            self.batch.reverse();
        }
        let Some(envelope) = self.batch.pop() else {
            return Ok(None);
        };
        if envelope.is_counted() {
            self.taken.messages += 1;
            self.taken.bytes += envelope.payload().len() as u64;
        }
        Ok(Some(envelope))
    }

    /// Fill the batch from the mailbox; 0 once it is closed and empty. While the mailbox is
    /// empty the core waits at the hand-off point, where a request may borrow it, and the
    /// actor takes it back before handling what came in.
    async fn take_batch(&mut self) -> Result<usize, End> {
        // Only an actor that has been sent a request leaves its core out: one that only ever
        // gets messages pays nothing for the hand-off on its idle cycles.
        // A core already away (from the spawn until the first wait) is taken back below too.
        let mut parked = self.core.is_none();
        let mut to_park = if self.shared.requested.load(Ordering::Relaxed) {
            self.core.take()
        } else {
            None
        };
        let (mailbox, batch, shared) = (&mut self.mailbox, &mut self.batch, &self.shared);
        let mut kept = None;
        let taken = std::future::poll_fn(|cx| {
            let polled = mailbox.poll_recv_many(cx, batch, BATCH);
            // An actor that finds messages waiting keeps its core; one that must wait
            // leaves it at the hand-off point before it yields (the poll above has already
            // asked to be woken, so nothing sent meanwhile is missed).
            if let Some(core) = to_park.take() {
                if polled.is_ready() {
                    kept = Some(core);
                } else {
                    shared.handoff.park(core);
                    parked = true;
                }
            }
            polled
        })
        .await;
        if let Some(core) = kept {
            self.core = Some(core);
        } else if parked {
            self.unpark().await?;
        }
        Ok(taken)
    }

    /// Take the core back from the hand-off point, and deal with what a requester gave
    /// back with it.
    async fn unpark(&mut self) -> Result<(), End> {
        let (core, aftermath) = self.shared.handoff.reclaim().await;
        let core = self.core.insert(core);
        match aftermath {
            Some(aftermath) => core.settle(aftermath).await.map_or(Ok(()), Err),
            None => Ok(()),
        }
    }

    /// For a durable component whose outbox holds half its bound or more: commit what it
    /// handled so far (its sends can leave only once committed), then wait until the outbox
    /// drains below half. Its mailbox fills meanwhile, so its own senders are slowed down
    /// rather than its sends refused or the host's memory grown.
    async fn wait_for_outbox(&mut self) {
        let Some(durable) = &self.shared.durable else {
            return;
        };
        if !durable.outbox.needs_draining() {
            return;
        }
        let outbox = durable.outbox.clone();
        self.commit().await;
        // A commit the store refused keeps the sends, which cannot leave before one is
        // taken: try again, unless a shutdown is under way, which leaves them to the final
        // commit.
        while outbox.has_produced() && !self.shared.is_draining() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            self.commit().await;
        }
        outbox.wait_for_room().await;
    }

    /// For a durable component that handled anything since its last commit: commit the
    /// positions of the stored messages it handled and its state after them, in one
    /// transaction.
    async fn commit(&mut self) {
        let Some(durable) = &self.shared.durable else {
            return;
        };
        if !self.handled_since_commit
            && self.consumed.is_empty()
            && !self.shared.timers.has_changes()
            && !durable.outbox.has_produced()
        {
            return;
        }
        // A durable actor never lends its core, so it holds it here; were it away, the
        // state would be unknown, and the positions wait for a commit that has it.
        let Some(core) = self.core.as_ref() else {
            return;
        };
        let state = core
            .checkpoint
            .as_ref()
            .map(|(state, _)| bytes::Bytes::copy_from_slice(state));
        durable
            .commit(
                &self.shared.id,
                &mut self.consumed,
                state,
                &self.shared.timers,
            )
            .await;
        self.handled_since_commit = false;
    }

    /// Give back what `envelope` held of the counts of queued messages and bytes.
    fn release(&self, envelope: &Envelope) {
        if envelope.is_counted() {
            release(
                &self.shared,
                &self.counters,
                1,
                envelope.payload().len() as u64,
            );
        }
    }

    /// Close the mailbox and account for whatever was not handled: the message in hand (if
    /// a panic interrupted it), the rest of the batch and what is still in the channel. All
    /// get the same reason: whether a message was still in the channel or already taken out
    /// of it is an accident of timing its sender cannot see.
    async fn close(mut self, end: End) {
        if !matches!(self.shared.state(), ComponentState::Failed(_)) {
            self.shared.set_state(end.state());
        }
        if self.core.is_none() {
            // Ended while its core was away (a panic while waiting on the mailbox): what
            // was given back with it no longer matters, the actor is ending anyway.
            let (core, _) = self.shared.handoff.reclaim().await;
            self.core = Some(core);
        }
        // What it handled is kept; what it did not stays stored for the next start.
        self.commit().await;
        let dead_letters = self.core().dead_letters.clone();
        if let Some(durable) = &self.shared.durable {
            durable.outbox.actor_ended(&self.counters, &dead_letters);
        }
        self.shared.handoff.close();
        // Its timers end with it here: none fires for it again. A durable component's stay
        // in its store, as its last commit left them, for its next spawn.
        self.shared.timers.end();
        if let Some(order) = self.shared.take_upgrade_order() {
            let _ = order
                .reply
                .send(Err("it stopped before it took the upgrade".into()));
        }
        if let End::Failed(reason) = &end {
            tracing::error!(component = %self.shared.id, %reason, "component failed: it takes no more messages until it is removed or restarted");
        }
        self.mailbox.close();
        let taken = std::mem::take(&mut self.taken);
        release(&self.shared, &self.counters, taken.messages, taken.bytes);
        if let Some(envelope) = self.core().current.take() {
            self.core().refuse_after_end(envelope, &end);
        }
        let batch: Vec<Envelope> = self.batch.drain(..).rev().collect();
        for envelope in batch {
            self.release(&envelope);
            self.core().refuse_after_end(envelope, &end);
        }
        // A sender that took its slot before the close may still be putting its message in:
        // `recv` waits for it, where `try_recv` could return before it lands.
        while let Some(envelope) = self.mailbox.recv().await {
            self.release(&envelope);
            self.core().refuse_after_end(envelope, &end);
        }
        tracing::debug!(component = %self.shared.id, state = self.shared.state().name(), "actor ended");
    }
}

impl Drop for Actor {
    /// A task dropped without closing (its runtime shut down) still lets go of a core it
    /// left at the hand-off point.
    fn drop(&mut self) {
        self.shared.handoff.close();
        self.shared.timers.end();
    }
}

impl Core {
    /// The end of an actor whose host code panicked while it served (a bug, never a
    /// guest's doing: guest faults are traps): logged, and the instance, which was part-way
    /// through a call, never runs again.
    pub(crate) fn panicked(&mut self, panic: &(dyn std::any::Any + Send)) -> End {
        let text = panic_text(panic);
        tracing::error!(component = %self.shared.id, panic = %text, "actor panicked; the component is failed");
        self.instance = None;
        End::Failed(format!("the host panicked while serving it: {text}"))
    }

    /// Deliver the message in hand, then save a checkpoint if one is due. What is left for
    /// the actor's task (a trap, an end) comes back rather than being dealt with here, so a
    /// requester that borrowed the core never waits out a restart.
    pub(crate) async fn handle(&mut self) -> Option<Aftermath> {
        // A key's instance is made by the first call that needs it (`keyed`).
        if self.instance.is_none()
            && self.shared.keyed.is_some()
            && let Some(aftermath) = activate_core(self).await
        {
            return Some(aftermath);
        }
        if let Some(aftermath) = self.deliver().await {
            return Some(aftermath);
        }
        // A durable component's state after every message is what its batch commits, and
        // what an instance that traps later in the batch is replaced from, so the messages
        // handled before the trap keep their effects.
        if self.shared.durable.is_some() {
            return self.save_state_now().await;
        }
        if self.supervision.checkpoint.is_some() {
            return self.save_checkpoint().await;
        }
        None
    }

    /// For a durable component, after a handler call: what the handler sent goes with the
    /// next commit if it returned (a `save-state` that trapped after it returned included);
    /// if it trapped or the shutdown cut it, its state does not keep what it did, so its
    /// sends are dead-lettered with the reason (kept in the store only after a trap: a
    /// message the shutdown cut is handled again at the next start, and sends them again).
    fn settle_outbox(&self, aftermath: &Option<Aftermath>) {
        let Some(durable) = &self.shared.durable else {
            return;
        };
        let reason = match aftermath {
            None | Some(Aftermath::SaveFailed(_)) => return durable.outbox.keep_handled(),
            Some(Aftermath::Trapped(err)) => format!(
                "its sender's handler trapped after sending it, so what that handler did is not kept: {err}"
            ),
            Some(Aftermath::Ended(end)) => format!(
                "its sender's handler did not finish ({}); the message it handled is handled again at the next start",
                match end {
                    End::Stopped(r) | End::Failed(r) => r,
                }
            ),
        };
        let store = matches!(aftermath, Some(Aftermath::Trapped(_))).then_some(&durable.store);
        for outgoing in durable.outbox.discard_handled() {
            crate::outbox::dead_letter(
                &self.counters,
                &self.dead_letters,
                &self.shared.id,
                &outgoing,
                &reason,
                store,
            );
        }
    }

    /// Deal with what a call left: replace a trapped instance as the supervision says.
    /// Returns how the actor ends, if it does.
    async fn settle(&mut self, aftermath: Aftermath) -> Option<End> {
        match aftermath {
            Aftermath::Trapped(err) => self.recover(err).await,
            Aftermath::SaveFailed(err) => self.replace_after_failed_save(err).await,
            Aftermath::Ended(end) => Some(end),
        }
    }

    /// Deliver the message in hand. Returns what the delivery left for the actor's task.
    async fn deliver(&mut self) -> Option<Aftermath> {
        let started = Instant::now();
        if let Some(Envelope::Request { reply, expires, .. }) = &self.current
            && (reply.is_closed() || started >= *expires)
        {
            let envelope = self.current.take()?;
            self.dead_letter(envelope, "the requester stopped waiting before delivery");
            return None;
        }
        let (Some(envelope), Some(instance)) = (&self.current, self.instance.as_mut()) else {
            return None;
        };
        let kind = match envelope {
            Envelope::Request { .. } => "request",
            _ => "message",
        };
        // `None`, deciding nothing and reading no clock, unless the message carries a trace
        // or telemetry is on.
        let call_trace = CallTrace::begin(envelope.trace(), self.shared.telemetry.as_ref());
        instance.set_trace(call_trace.as_ref().map(|call| call.context));
        let span = tracing::debug_span!("deliver", sender = %envelope.sender(), target = %self.shared.id, kind, outcome = tracing::field::Empty);
        // Pinned where it is built and polled through references from then on: the call's
        // future is large, and every move of it is a copy.
        let called = {
            let call = std::pin::pin!(async {
                match envelope {
                    Envelope::Request {
                        sender, payload, ..
                    } => Call::Request(instance.call_handle_request(sender, payload).await),
                    Envelope::Message {
                        sender, payload, ..
                    } => Call::Message(instance.call_handle_message(sender, payload).await),
                    Envelope::Stop | Envelope::Wake | Envelope::Timer { .. } => {
                        Call::Message(Ok(Ok(())))
                    }
                }
            });
            unless_drained(&self.shared, Some(&span), call).await
        };
        let envelope = self.current.take()?;
        if let Some(call) = call_trace
            && let Some(start) = call.recording
        {
            self.record_span(call, start, &envelope, called.as_ref(), started);
        }
        let Some(called) = called else {
            span.record("outcome", "abandoned");
            // The call was dropped part-way: its instance must not run again.
            self.instance = None;
            let reason = "the shutdown deadline passed during delivery";
            self.dead_letter(envelope, reason);
            return Some(Aftermath::Ended(End::Stopped(reason.into())));
        };
        let err = match (called, envelope) {
            (Call::Message(Ok(answer)), Envelope::Message { sender, .. }) => {
                if let Err(err) = answer {
                    bump(&self.shared.metrics.failed);
                    // Held to a rate: a handler that fails every message cannot flood the log.
                    if let Some(suppressed) = self.shared.log_budget.admit() {
                        let error = bounded_text(&format!("{err:?}"));
                        let error = escape(&error);
                        tracing::warn!(%sender, target = %self.shared.id, %error, suppressed, "handler refused a message");
                    }
                    span.record("outcome", "handler-error");
                } else {
                    span.record("outcome", "ok");
                }
                self.delivered(started);
                return None;
            }
            (Call::Request(Ok(answer)), Envelope::Request { reply, .. }) => {
                span.record(
                    "outcome",
                    if answer.is_ok() {
                        "ok"
                    } else {
                        "handler-error"
                    },
                );
                if answer.is_err() {
                    bump(&self.shared.metrics.failed);
                }
                // Counted before the reply leaves, so whoever holds the reply sees the
                // delivery in the metrics.
                self.delivered(started);
                let _ = reply.send(answer.map_err(MessagingError::HandlerFailed));
                return None;
            }
            (Call::Message(Err(err)) | Call::Request(Err(err)), envelope) => {
                span.record("outcome", "trap");
                self.dead_letter(envelope, &err.to_string());
                err
            }
            // A call is made for the kind of envelope it answers.
            (_, envelope) => {
                self.dead_letter(envelope, "the host mixed up a message and a request");
                return None;
            }
        };
        Some(Aftermath::Trapped(err))
    }

    /// Save the instance's state for restarts, if the supervision asks for it and the last
    /// save is old enough. A trap while saving leaves the last checkpoint as it was and the
    /// instance to be replaced from it ([`Aftermath::SaveFailed`]); a save the drain
    /// deadline cuts ends the actor.
    async fn save_checkpoint(&mut self) -> Option<Aftermath> {
        let every = self.supervision.checkpoint?;
        if self
            .checkpoint
            .as_ref()
            .is_some_and(|(_, saved)| saved.elapsed() < every)
        {
            return None;
        }
        self.save_state_now().await
    }

    /// Save the instance's state, if it keeps one, as the state a restart starts from.
    /// A trap while saving leaves the last saved state as it was and the instance to be
    /// replaced from it ([`Aftermath::SaveFailed`]); a save the drain deadline cuts ends
    /// the actor.
    async fn save_state_now(&mut self) -> Option<Aftermath> {
        let instance = self.instance.as_mut().filter(|i| i.keeps_state())?;
        let saved = {
            let saving = std::pin::pin!(instance.save_state());
            unless_drained(&self.shared, None, saving).await
        };
        match saved {
            Some(Ok(state)) => {
                self.checkpoint = Some((state, Instant::now()));
                None
            }
            // Refused by the host (a state over the limit): the instance is as it was, and
            // the last checkpoint stays the one a restart starts from.
            Some(Err(err)) if !instance.is_poisoned() => {
                if let Some(suppressed) = self.shared.log_budget.admit() {
                    tracing::warn!(component = %self.shared.id, error = %err, suppressed, "its state was not saved; a restart starts from the last one that was");
                }
                None
            }
            Some(Err(err)) => Some(Aftermath::SaveFailed(err)),
            None => {
                // Cut part-way through the call: the instance must not run again.
                self.instance = None;
                Some(Aftermath::Ended(End::Stopped(
                    "the shutdown deadline passed while it saved its state".into(),
                )))
            }
        }
    }

    /// After a `save-state` that trapped (a checkpoint's or an upgrade's): the message was
    /// handled, so nothing is dead-lettered and no restart is charged; the poisoned instance
    /// is replaced by a fresh one of the same version holding the last state saved, if
    /// there is one. Only if no replacement can be made does the supervision take over, as
    /// after any trap.
    async fn replace_after_failed_save(&mut self, err: courier_host_core::Error) -> Option<End> {
        // Its slot goes back to the pool before the replacement takes one.
        self.instance = None;
        if let Some(suppressed) = self.shared.log_budget.admit() {
            let error = bounded_text(&err.to_string());
            let error = escape(&error);
            tracing::warn!(component = %self.shared.id, %error, saved = self.checkpoint.is_some(), suppressed, "save-state failed; the instance is replaced from its last saved state");
        }
        match self.restored().await {
            Some(Ok(instance)) => {
                self.instance = Some(instance);
                None
            }
            Some(Err(failed)) => {
                tracing::warn!(component = %self.shared.id, error = %failed, "no instance could replace one whose save-state failed");
                self.recover(err).await
            }
            None => Some(End::Stopped(
                "the shutdown deadline passed while its instance was replaced".into(),
            )),
        }
    }

    /// A fresh instance of the running version holding the last saved state, if there is
    /// one; fresh, and the checkpoint forgotten, if loading it traps. Bounded by the drain
    /// deadline: `None` if it passed.
    async fn restored(&mut self) -> Option<courier_host_core::Result<Instance>> {
        let made = {
            let making = std::pin::pin!(self.component.instantiate(self.options.clone()));
            unless_drained(&self.shared, None, making).await?
        };
        let mut instance = match made {
            Ok(instance) => instance,
            Err(err) => return Some(Err(err)),
        };
        let Some((state, _)) = &self.checkpoint else {
            return Some(Ok(instance));
        };
        let loaded = {
            let loading = std::pin::pin!(instance.load_state(state));
            unless_drained(&self.shared, None, loading).await?
        };
        match loaded {
            Ok(Ok(())) => Some(Ok(instance)),
            Ok(Err(refusal)) => {
                tracing::warn!(component = %self.shared.id, refusal = ?refusal, "its saved state was refused; it starts fresh");
                Some(Ok(instance))
            }
            Err(err) => {
                tracing::warn!(component = %self.shared.id, error = %err, "loading its saved state trapped; it starts fresh");
                self.checkpoint = None;
                drop(instance);
                let making = std::pin::pin!(self.component.instantiate(self.options.clone()));
                unless_drained(&self.shared, None, making).await
            }
        }
    }

    /// The message of the timer `name`'s firing `firing`, if it is still due: sent by
    /// `timer:<name>`, and counted as a message the host sent now, so it ends in the books
    /// like any other (delivered, or dead-lettered if its handler traps). Until the handler
    /// returns, the guest's `missed-ticks` answers the ticks it stands for.
    fn timer_message(&mut self, name: &str, firing: u64) -> Option<Envelope> {
        let firing = self.shared.timers.take(name, firing)?;
        self.shared.timers.set_missed(firing.missed);
        bump(&self.counters.sent);
        Some(Envelope::message(
            format!("{TIMER_SENDER_PREFIX}{name}").into(),
            firing.payload,
        ))
    }

    /// Hand the span of the call just made for `envelope` to the telemetry: `called` is
    /// what it answered (`None`: the drain cut it).
    fn record_span(
        &self,
        call: CallTrace,
        start: std::time::SystemTime,
        envelope: &Envelope,
        called: Option<&Call>,
        started: Instant,
    ) {
        let Some(telemetry) = &self.shared.telemetry else {
            return;
        };
        let kind = match envelope {
            Envelope::Request { .. } => HandlerKind::Request,
            Envelope::Message {
                published: true, ..
            } => HandlerKind::Publication,
            Envelope::Message { sender, .. } if sender.starts_with(TIMER_SENDER_PREFIX) => {
                HandlerKind::Timer
            }
            _ => HandlerKind::Message,
        };
        let failed = |err: &courier_host_core::Error| match err.kind() {
            courier_host_core::ErrorKind::DeadlineExceeded { .. } => Outcome::Timeout,
            _ => Outcome::Trap,
        };
        let (outcome, reply_bytes) = match called {
            None => (Outcome::Abandoned, 0),
            Some(Call::Message(Ok(Ok(())))) => (Outcome::Ok, 0),
            Some(Call::Request(Ok(Ok(reply)))) => (Outcome::Ok, reply.len()),
            Some(Call::Message(Ok(Err(_))) | Call::Request(Ok(Err(_)))) => (Outcome::Error, 0),
            Some(Call::Message(Err(err)) | Call::Request(Err(err))) => (failed(err), 0),
        };
        telemetry.record(HandlerSpan {
            context: call.context,
            parent: call.parent,
            component: self.shared.id.clone(),
            sender: match envelope {
                Envelope::Message { sender, .. } | Envelope::Request { sender, .. } => {
                    sender.clone()
                }
                Envelope::Stop | Envelope::Wake | Envelope::Timer { .. } => "host".into(),
            },
            kind,
            outcome,
            start,
            duration: started.elapsed(),
            payload_bytes: envelope.payload().len(),
            reply_bytes,
        });
    }

    fn delivered(&self, started: Instant) {
        self.shared.metrics.latency.record(started.elapsed());
        bump(&self.shared.metrics.delivered);
        bump(&self.counters.delivered);
    }

    /// After a trap: replace the instance as the supervision says, or end the actor.
    async fn recover(&mut self, err: courier_host_core::Error) -> Option<End> {
        bump(&self.shared.metrics.failed);
        // The poisoned instance goes first, so its slot in the pool is free for the
        // replacement even when the pool is full.
        self.instance = None;
        let mut cause = err.to_string();
        let normal_exit = err.is_normal_exit();
        tracing::warn!(component = %self.shared.id, error = %cause, "instance ended");
        loop {
            match self
                .history
                .decide(&self.supervision, normal_exit, Instant::now())
            {
                Verdict::Stop if normal_exit => {
                    return Some(End::Stopped(format!("ended normally: {cause}")));
                }
                Verdict::Stop => {
                    return Some(End::Failed(format!("not restarted after: {cause}")));
                }
                Verdict::Fail(why) => return Some(End::Failed(format!("{why}; last: {cause}"))),
                Verdict::Restart(backoff) => {
                    self.shared.set_state(ComponentState::Restarting);
                    let backoff_ends = Instant::now() + backoff;
                    let backoff = std::pin::pin!(tokio::time::sleep_until(backoff_ends.into()));
                    if unless_drained(&self.shared, None, backoff).await.is_none() {
                        return Some(End::Stopped(
                            "the shutdown deadline passed while it was restarting".into(),
                        ));
                    }
                    let made = {
                        let making =
                            std::pin::pin!(self.component.instantiate(self.options.clone()));
                        unless_drained(&self.shared, None, making).await
                    };
                    let Some(made) = made else {
                        return Some(End::Stopped(
                            "the shutdown deadline passed while it was restarting".into(),
                        ));
                    };
                    match made {
                        Ok(mut instance) => {
                            if let Some((state, _)) = &self.checkpoint {
                                let loaded = {
                                    let loading = std::pin::pin!(instance.load_state(state));
                                    unless_drained(&self.shared, None, loading).await
                                };
                                let Some(loaded) = loaded else {
                                    return Some(End::Stopped(
                                        "the shutdown deadline passed while it was restarting"
                                            .into(),
                                    ));
                                };
                                match loaded {
                                    Ok(Ok(())) => {
                                        tracing::info!(component = %self.shared.id, bytes = state.len(), "restarted from its last saved state");
                                    }
                                    Ok(Err(refusal)) => {
                                        tracing::warn!(component = %self.shared.id, refusal = ?refusal, "its saved state was refused; it starts fresh");
                                    }
                                    Err(err) => {
                                        // The replacement is poisoned: make another, fresh.
                                        tracing::warn!(component = %self.shared.id, error = %err, "loading its saved state trapped; it starts fresh");
                                        self.checkpoint = None;
                                        cause = err.to_string();
                                        continue;
                                    }
                                }
                            }
                            self.instance = Some(instance);
                            bump(&self.shared.metrics.restarts);
                            self.shared.set_state(ComponentState::Running);
                            tracing::info!(component = %self.shared.id, "instance replaced");
                            return None;
                        }
                        Err(err) => {
                            cause = err.to_string();
                            tracing::warn!(component = %self.shared.id, error = %cause, "restart failed");
                        }
                    }
                }
            }
        }
    }

    /// A message the actor will never handle because it has ended.
    fn refuse_after_end(&self, envelope: Envelope, end: &End) {
        let reason = match end {
            // What a shutdown could not reach in time says so, however the actor ended.
            _ if self.shared.past_drain_deadline() => {
                "the shutdown deadline passed before delivery".to_string()
            }
            End::Stopped(r) => format!("component stopped: {r}"),
            End::Failed(r) => format!("component failed: {r}"),
        };
        let reason = match envelope.position() {
            // Not dead for good, so not kept in the store's dead letters.
            Some(_) => {
                let reason = format!(
                    "{reason}; it stays stored and is handled when the component is spawned again on the same store"
                );
                return self.record_dead_letter(envelope, &reason, false);
            }
            None => reason,
        };
        self.dead_letter(envelope, &reason);
    }

    /// Put `envelope` in the dead-letter record with `reason`, and in the store's if the
    /// component is durable; a requester hears the reason as `target-crashed`.
    pub(crate) fn dead_letter(&self, envelope: Envelope, reason: &str) {
        self.record_dead_letter(envelope, reason, true)
    }

    /// [`dead_letter`](Self::dead_letter), kept in a durable component's store only if
    /// `keep`.
    fn record_dead_letter(&self, envelope: Envelope, reason: &str, keep: bool) {
        let (sender, kind, payload, reply) = match envelope {
            Envelope::Message {
                sender, payload, ..
            } => (sender, MessageKind::Message, payload, None),
            Envelope::Request {
                sender,
                payload,
                reply,
                ..
            } => (sender, MessageKind::Request, payload, Some(reply)),
            // A timer's firing that was never taken ends with the component's timers.
            Envelope::Stop | Envelope::Wake | Envelope::Timer { .. } => return,
        };
        bump(&self.shared.metrics.dead_lettered);
        bump(&self.counters.dead_lettered);
        let letter =
            self.dead_letters
                .record(sender, self.shared.id.clone(), kind, &payload, reason);
        if keep && let Some(durable) = &self.shared.durable {
            crate::dead_letter::keep(&durable.store, &letter);
        }
        if let Some(reply) = reply {
            let _ = reply.send(Err(MessagingError::TargetCrashed(reason.to_string())));
        }
    }
}

/// What a handler call answered, by kind.
enum Call {
    Message(CallResult<()>),
    Request(CallResult<Vec<u8>>),
}

/// Run `work`, within `span` if one is given, unless the broker's shutdown deadline passes
/// first; `None` if it did, and `work` was left part-way.
///
/// `work` is polled first on its own: a handler that returns without yielding, the common
/// case, costs no timer and no registration with the shutdown signal.
pub(crate) async fn unless_drained<F: Future>(
    shared: &ActorShared,
    span: Option<&tracing::Span>,
    mut work: std::pin::Pin<&mut F>,
) -> Option<F::Output> {
    let mut drained = None;
    std::future::poll_fn(|cx| {
        let polled = {
            let _entered = span.map(tracing::Span::enter);
            work.as_mut().poll(cx)
        };
        if let Poll::Ready(output) = polled {
            return Poll::Ready(Some(output));
        }
        let drained = drained.get_or_insert_with(|| Box::pin(shared.drain_deadline_passed()));
        match drained.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Poll `work` to its end, catching a panic in it: `Err` with the panic if there was one.
pub(crate) async fn catching_panics<F: Future>(
    mut work: std::pin::Pin<&mut F>,
) -> Result<F::Output, Box<dyn std::any::Any + Send>> {
    std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    })
    .await
}

/// What a panic carried, as text.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    bounded_text(&text)
}

/// Make the instance of a key's core that has none yet, once the key's predecessor (if it
/// was being put away) has ended; a durable key's instance starts from its committed state.
/// What a failure leaves goes back as after any call: the message in hand is dead-lettered
/// with the reason, and the supervision decides what follows.
pub(crate) async fn activate_core(core: &mut Core) -> Option<Aftermath> {
    let shared = core.shared.clone();
    let key = shared.keyed.as_ref()?;
    let predecessor = key.take_predecessor();
    if let Some(mut predecessor) = predecessor {
        // Ends with an error once the predecessor's passivation drops its sender.
        while predecessor.changed().await.is_ok() {}
    }
    if let Some(durable) = &core.shared.durable {
        match crate::durable::recover(&*durable.store, &core.shared.id).await {
            // Only the state: what a crash left unconsumed or unsent was taken at the
            // component's registration (keyed components' recovery), and what is unconsumed now is in this
            // key's mailbox already (stored, then queued) or its predecessor's, which has
            // handled it; an outbox still pending is its predecessor's dispatcher's to send.
            Ok((state, _unconsumed, _unsent)) => {
                core.checkpoint = state.map(|state| (state.to_vec(), Instant::now()));
                // Its timers, kept while it was put away: one due meanwhile fires now.
                match durable.store.timers(&core.shared.id).await {
                    Ok(timers) => core.shared.timers.restore(timers),
                    Err(err) => {
                        tracing::error!(component = %core.shared.id, error = %err, "its stored timers could not be read: they stay stored, not armed");
                    }
                }
            }
            Err(err) => {
                let reason = format!("its state could not be read from the store: {err}");
                if let Some(envelope) = core.current.take() {
                    core.dead_letter(envelope, &reason);
                }
                return Some(Aftermath::Ended(End::Failed(reason)));
            }
        }
    }
    let mut instance = match core.component.instantiate(core.options.clone()).await {
        Ok(instance) => instance,
        Err(err) => {
            if let Some(envelope) = core.current.take() {
                core.dead_letter(envelope, &format!("its instance could not be made: {err}"));
            }
            return Some(Aftermath::Trapped(err));
        }
    };
    if let Some((state, _)) = &core.checkpoint {
        let loaded = instance.load_state(state).await;
        if !matches!(loaded, Ok(Ok(()))) {
            // A state it cannot take is never a silent fresh start: what follows would be
            // handled on the wrong state.
            let reason = format!(
                "its `load-state` did not take its committed state of {} bytes",
                state.len()
            );
            if let Some(envelope) = core.current.take() {
                core.dead_letter(envelope, &reason);
            }
            return Some(Aftermath::Ended(End::Failed(reason)));
        }
    }
    core.instance = Some(instance);
    key.activated();
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::sync::atomic::Ordering;

    use courier_host_core::{Engine, EngineConfig};
    use tokio::sync::oneshot;

    use super::*;
    use crate::capabilities::Capabilities;
    use crate::supervisor::RestartPolicy;

    fn message(payload: &[u8]) -> Envelope {
        Envelope::message("host".into(), payload.to_vec().into())
    }

    /// A stop queued ahead of messages that came in after it, in the one batch, where the
    /// first of those messages traps a component that is not restarted: the others must be
    /// dead-lettered, not dropped with the batch.
    #[tokio::test]
    async fn what_follows_a_stop_is_dead_lettered_when_a_message_ends_the_actor() {
        let engine = Engine::new(EngineConfig::default().max_instances(2)).unwrap();
        let hostile = engine
            .load_component_file("hostile", courier_test_support::guest_path("hostile"))
            .unwrap();
        let options = InstanceOptions::new("bad");
        let instance = hostile.instantiate(options.clone()).await.unwrap();
        let (mailbox, receiver) = mpsc::channel(8);
        let (reply, answer) = oneshot::channel();
        mailbox.try_send(Envelope::Stop).unwrap();
        mailbox.try_send(message(b"panic")).unwrap();
        mailbox.try_send(message(b"count")).unwrap();
        mailbox
            .try_send(Envelope::Request {
                sender: "host".into(),
                payload: b"count".to_vec().into(),
                reply,
                expires: Instant::now() + Duration::from_secs(10),
                trace: None,
            })
            .unwrap();
        let shared = Arc::new(ActorShared::new(
            "bad".into(),
            Capabilities::none(),
            crate::exposure::Exposure::Local,
            1 << 20,
            hostile.clone(),
            crate::timers::ActorTimers::new(
                "bad".into(),
                crate::timers::TimerLimits {
                    max_timers: 0,
                    max_name_bytes: 255,
                    max_payload_bytes: 1 << 20,
                },
                crate::timers::TimerWheel::new(),
            ),
        ));
        // The bytes the three messages would have been charged on their way in.
        let queued = (b"panic".len() + 2 * b"count".len()) as u64;
        shared.queued.bytes.store(queued, Ordering::Relaxed);
        shared.queued.messages.store(3, Ordering::Relaxed);
        let router = crate::routing::Router::new(
            crate::config::BrokerConfig::default(),
            std::sync::Arc::new(crate::keyed::Keyed::default()),
        );
        router
            .counters
            .queued_bytes
            .store(queued, Ordering::Relaxed);
        park_core(
            &shared,
            router.counters.clone(),
            router.dead_letters.clone(),
            hostile,
            options,
            Supervision::new(RestartPolicy::Temporary),
            instance,
            None,
        );
        Actor::new(shared.clone(), router.counters.clone(), receiver)
            .run()
            .await;

        let letters = router.dead_letters.recent();
        let payloads: Vec<&[u8]> = letters.iter().map(|l| l.payload.as_slice()).collect();
        assert_eq!(payloads, [&b"panic"[..], b"count", b"count"]);
        assert!(matches!(
            answer.await,
            Ok(Err(MessagingError::TargetCrashed(_)))
        ));
        assert!(matches!(shared.state(), ComponentState::Failed(_)));
        assert_eq!(
            shared.queued.bytes.load(Ordering::Relaxed),
            0,
            "all released"
        );
        assert_eq!(router.counters.queued_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(shared.queued.messages.load(Ordering::Relaxed), 0);
    }
}
