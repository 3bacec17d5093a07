//! The actor: a task that owns one instance and its mailbox and handles one message at a time.

use std::sync::Arc;
use std::time::Instant;

use courier_host_core::{Component, ComponentId, Instance, InstanceOptions, MessagingError};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::dead_letter::{DeadLetters, MessageKind};
use crate::mailbox::Envelope;
use crate::metrics::{BrokerCounters, bump};
use crate::registry::{ActorShared, ComponentState};
use crate::supervisor::{RestartHistory, Supervision, Verdict};

/// How many ready messages an actor takes from its mailbox at once. Taking a batch costs
/// one synchronisation instead of one per message; the bound keeps a busy actor from
/// holding messages it has not started on when it stops.
const BATCH: usize = 64;

pub(crate) struct Actor {
    pub(crate) shared: Arc<ActorShared>,
    /// The broker's counters and dead letters, shared rather than reached through the
    /// broker, so an actor never keeps the broker (and so its own mailbox) alive.
    pub(crate) counters: Arc<BrokerCounters>,
    pub(crate) dead_letters: Arc<DeadLetters>,
    pub(crate) component: Component,
    pub(crate) options: InstanceOptions,
    pub(crate) supervision: Supervision,
    pub(crate) instance: Instance,
    pub(crate) mailbox: mpsc::Receiver<Envelope>,
    pub(crate) history: RestartHistory,
}

/// Why the actor's loop ended, if it ended by itself.
enum End {
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

impl Actor {
    pub(crate) async fn run(mut self) {
        let mut batch = Vec::with_capacity(BATCH);
        let end = 'outer: loop {
            if self.mailbox.recv_many(&mut batch, BATCH).await == 0 {
                break End::Stopped("the broker was dropped".into());
            }
            let mut envelopes = batch.drain(..);
            while let Some(envelope) = envelopes.next() {
                if matches!(envelope, Envelope::Stop) {
                    let rest: Vec<Envelope> = envelopes.collect();
                    self.handle_rest(rest).await;
                    break 'outer End::Stopped("stopped by the host".into());
                }
                if self.shared.past_drain_deadline() {
                    self.dead_letter(envelope, "the shutdown deadline passed before delivery");
                    continue;
                }
                if let Some(end) = self.deliver(envelope).await {
                    let rest: Vec<Envelope> = envelopes.collect();
                    for envelope in rest {
                        self.refuse_after_end(envelope, &end);
                    }
                    break 'outer end;
                }
            }
        };
        self.close(end);
    }

    /// Handle the messages that were queued before a stop arrived (they were accepted, so
    /// they are owed a delivery), within the shutdown deadline if there is one.
    async fn handle_rest(&mut self, rest: Vec<Envelope>) {
        for envelope in rest {
            if matches!(envelope, Envelope::Stop) {
                continue;
            }
            if self.shared.past_drain_deadline() {
                self.dead_letter(envelope, "the shutdown deadline passed before delivery");
                continue;
            }
            if let Some(end) = self.deliver(envelope).await {
                self.shared.set_state(end.state());
                return;
            }
        }
    }

    /// Close the mailbox and account for whatever is still in it. What is left gets the same
    /// reason as what was left in the last batch taken: whether a message was still in the
    /// channel or already taken out of it is an accident of timing its sender cannot see.
    fn close(mut self, end: End) {
        if !matches!(self.shared.state(), ComponentState::Failed(_)) {
            self.shared.set_state(end.state());
        }
        self.mailbox.close();
        while let Ok(envelope) = self.mailbox.try_recv() {
            if !matches!(envelope, Envelope::Stop) {
                self.refuse_after_end(envelope, &end);
            }
        }
        tracing::debug!(component = %self.shared.id, state = self.shared.state().name(), "actor ended");
    }

    /// Deliver one message. Returns how the actor ends if this delivery ended it.
    async fn deliver(&mut self, envelope: Envelope) -> Option<End> {
        let started = Instant::now();
        let outcome = match envelope {
            Envelope::Message { sender, payload } => {
                let span = tracing::debug_span!("deliver", %sender, target = %self.shared.id, kind = "message", outcome = tracing::field::Empty);
                let result = self
                    .instance
                    .call_handle_message(&sender, &payload)
                    .instrument(span.clone())
                    .await;
                match result {
                    Ok(answer) => {
                        if let Err(err) = answer {
                            bump(&self.shared.metrics.failed);
                            tracing::warn!(%sender, target = %self.shared.id, error = ?err, "handler refused a message");
                            span.record("outcome", "handler-error");
                        } else {
                            span.record("outcome", "ok");
                        }
                        self.delivered(started);
                        None
                    }
                    Err(err) => {
                        span.record("outcome", "trap");
                        self.record_dead_letter(
                            sender,
                            MessageKind::Message,
                            &payload,
                            err.to_string(),
                        );
                        Some(err)
                    }
                }
            }
            Envelope::Request {
                sender,
                payload,
                reply,
                expires,
            } => {
                if reply.is_closed() || Instant::now() >= expires {
                    let reason = "the requester stopped waiting before delivery".to_string();
                    self.record_dead_letter(sender, MessageKind::Request, &payload, reason);
                    return None;
                }
                let span = tracing::debug_span!("deliver", %sender, target = %self.shared.id, kind = "request", outcome = tracing::field::Empty);
                let result = self
                    .instance
                    .call_handle_request(&sender, &payload)
                    .instrument(span.clone())
                    .await;
                match result {
                    Ok(Ok(bytes)) => {
                        span.record("outcome", "ok");
                        // Counted before the reply leaves, so whoever holds the reply sees
                        // the delivery in the metrics.
                        self.delivered(started);
                        let _ = reply.send(Ok(bytes));
                        None
                    }
                    Ok(Err(err)) => {
                        span.record("outcome", "handler-error");
                        bump(&self.shared.metrics.failed);
                        self.delivered(started);
                        let _ = reply.send(Err(MessagingError::HandlerFailed(err)));
                        None
                    }
                    Err(err) => {
                        span.record("outcome", "trap");
                        let reason = err.to_string();
                        self.record_dead_letter(
                            sender,
                            MessageKind::Request,
                            &payload,
                            reason.clone(),
                        );
                        let _ = reply.send(Err(MessagingError::TargetCrashed(reason)));
                        Some(err)
                    }
                }
            }
            Envelope::Stop => None,
        };
        let err = outcome?;
        self.recover(err).await
    }

    fn delivered(&self, started: Instant) {
        self.shared.metrics.latency.record(started.elapsed());
        bump(&self.shared.metrics.delivered);
        bump(&self.counters.delivered);
    }

    /// After a trap: replace the instance as the supervision says, or end the actor.
    async fn recover(&mut self, err: courier_host_core::Error) -> Option<End> {
        bump(&self.shared.metrics.failed);
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
                    tokio::time::sleep(backoff).await;
                    match self.component.instantiate(self.options.clone()).await {
                        Ok(instance) => {
                            self.instance = instance;
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
            End::Stopped(r) => format!("component stopped: {r}"),
            End::Failed(r) => format!("component failed: {r}"),
        };
        self.dead_letter(envelope, &reason);
    }

    fn dead_letter(&self, envelope: Envelope, reason: &str) {
        match envelope {
            Envelope::Message { sender, payload } => {
                self.record_dead_letter(sender, MessageKind::Message, &payload, reason.to_string());
            }
            Envelope::Request {
                sender,
                payload,
                reply,
                ..
            } => {
                self.record_dead_letter(sender, MessageKind::Request, &payload, reason.to_string());
                let _ = reply.send(Err(MessagingError::TargetCrashed(reason.to_string())));
            }
            Envelope::Stop => {}
        }
    }

    fn record_dead_letter(
        &self,
        sender: ComponentId,
        kind: MessageKind,
        payload: &[u8],
        reason: String,
    ) {
        bump(&self.shared.metrics.dead_lettered);
        bump(&self.counters.dead_lettered);
        self.dead_letters
            .record(sender, self.shared.id.clone(), kind, payload, reason);
    }
}
