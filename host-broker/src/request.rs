//! Requests: a message with a reply channel, and the wait for the reply.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_host_core::{ComponentError, ComponentId, MessagingError, TraceContext};
use tokio::sync::oneshot;

use crate::dead_letter::MessageKind;
use crate::handoff::try_deliver_here;
use crate::mailbox::Envelope;
use crate::metrics::bump;
use crate::routing::{Access, Router, Target};

/// The length of a handler's error text.
fn error_len(err: &ComponentError) -> usize {
    match err {
        ComponentError::InvalidMessage(text)
        | ComponentError::Unsupported(text)
        | ComponentError::Internal(text) => text.len(),
    }
}

/// The answer to a request queued for `target`, waited for until `expires`.
pub(crate) async fn answer_by(
    target: &str,
    answer: oneshot::Receiver<Result<Vec<u8>, MessagingError>>,
    expires: Instant,
) -> Result<Vec<u8>, MessagingError> {
    match tokio::time::timeout_at(expires.into(), answer).await {
        Ok(Ok(answer)) => answer,
        // The actor dropped the reply without answering: it ended while the request was
        // queued. The request itself is in the dead-letter record.
        Ok(Err(_)) => Err(MessagingError::TargetCrashed(format!(
            "component `{target}` ended before answering"
        ))),
        Err(_) => Err(MessagingError::Timeout),
    }
}

/// A request to another host that is counted sent and not yet answered. Dropped while it
/// waits (the requester's future was dropped: an HTTP client gone, an embedder's `select!`,
/// a drain that cut the guest asking), it is dead-lettered, as a [`RemoteMessage`] dropped
/// without an ending is, so the books still balance. Forgotten once the answer is in hand.
///
/// [`RemoteMessage`]: crate::RemoteMessage
struct Unanswered<'a> {
    router: &'a Router,
    sender: &'a ComponentId,
    target: &'a str,
    payload: &'a Bytes,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        bump(&self.router.counters.dead_lettered);
        self.router.dead_letters.record(
            self.sender.clone(),
            self.target.into(),
            MessageKind::Request,
            self.payload,
            "the requester stopped waiting for another host's answer; it may have been handled",
        );
    }
}

impl Router {
    /// Send `payload` as a request from `sender` to `target` and wait at most `timeout` for
    /// the reply.
    ///
    /// The request carries when its sender stops waiting, so a target that reaches it later
    /// dead-letters it instead of handling it: a request never outlives its caller's wait,
    /// and a cycle of requests ends in a timeout. A request with no time at all is refused
    /// with `timeout` at once. A reply or an error text over the payload limit reaches the
    /// requester as the target's failure. `trace` is the context of the requester's span.
    pub(crate) async fn request(
        &self,
        sender: &ComponentId,
        target: &str,
        payload: Bytes,
        timeout: Duration,
        access: Access,
        trace: Option<TraceContext>,
    ) -> Result<Vec<u8>, MessagingError> {
        if timeout.is_zero() {
            // Nobody would wait for the reply: refused now rather than queued and
            // dead-lettered later.
            bump(&self.counters.sent);
            self.refused(self.registry.get(target).as_deref());
            return Err(MessagingError::Timeout);
        }
        let entry = match self.admit_counted(target, payload.len(), access, None)? {
            Target::Local(entry) => entry,
            Target::Remote(remote) => {
                // Counted sent: if this future is dropped before the answer (its caller
                // stopped waiting), the guard ends it in the books.
                let unanswered = Unanswered {
                    router: self,
                    sender,
                    target,
                    payload: &payload,
                };
                // The remote is held to the timeout too: however it waits, the caller
                // waits no longer than it asked.
                let asked = remote.request(sender, target, payload.clone(), timeout, trace);
                let answer = tokio::time::timeout(timeout, asked)
                    .await
                    .unwrap_or(Err(MessagingError::Timeout));
                std::mem::forget(unanswered);
                let answer = self.remote_answer(sender, target, &payload, answer);
                return self.held_to_limit(target, answer);
            }
        };
        let (reply, mut answer) = oneshot::channel();
        let expires = Instant::now() + timeout;
        let envelope = Envelope::Request {
            sender: sender.clone(),
            payload,
            reply,
            expires,
            trace: trace.map(Box::new),
        };
        // A durable target answers from its own task, which commits what the request
        // changed with its batch; it never lends its core.
        let durable = entry.shared.durable.is_some();
        if !durable && !entry.shared.requested.load(Ordering::Relaxed) {
            entry.shared.requested.store(true, Ordering::Relaxed);
        }
        // An idle target answers on this task; a busy one gets the request in its mailbox.
        let handed = match durable {
            true => Err(envelope),
            false => try_deliver_here(&entry, envelope, expires).await,
        };
        let envelope = match handed {
            Ok(()) => {
                // Usually answered by now. Taken without a wait, which would count against
                // the task's cooperative budget and, every so many requests, make it yield
                // to the scheduler (and wake an idle worker) for nothing.
                let answer = match answer.try_recv() {
                    Ok(answer) => answer,
                    Err(_) => answer_by(target, answer, expires).await,
                };
                return self.held_to_limit(target, answer);
            }
            Err(envelope) => envelope,
        };
        self.enqueue(&entry, envelope).map_err(|refused| {
            self.refused(Some(&entry));
            refused.error
        })?;
        let answer = answer_by(target, answer, expires).await;
        self.held_to_limit(target, answer)
    }

    /// `answer`, unless it is a reply or an error text over the payload limit.
    fn held_to_limit(
        &self,
        target: &str,
        answer: Result<Vec<u8>, MessagingError>,
    ) -> Result<Vec<u8>, MessagingError> {
        let limit = self.config.max_payload_bytes;
        // The request was fine and the handler ran; a reply over the limit is the target's
        // fault, so the requester hears it as the target's failure, not as
        // `payload-too-large`, which would say its own request was too big. An error text
        // is a reply too, and held to the same limit.
        let over_limit = |what: &str, len: usize| {
            Err(MessagingError::HandlerFailed(ComponentError::Internal(
                format!("component `{target}` {what} {len} bytes, over the limit of {limit} bytes"),
            )))
        };
        match answer {
            Ok(reply) if reply.len() > limit => over_limit("replied with", reply.len()),
            Err(MessagingError::HandlerFailed(err)) if error_len(&err) > limit => {
                over_limit("answered with an error of", error_len(&err))
            }
            answer => answer,
        }
    }

    /// Count the ending of a request another host answered (or did not): a reply or a
    /// handler's error is delivered; a refusal is refused; no answer in time is
    /// dead-lettered, since the request may have been handled.
    fn remote_answer(
        &self,
        sender: &ComponentId,
        target: &str,
        payload: &[u8],
        answer: Result<Vec<u8>, MessagingError>,
    ) -> Result<Vec<u8>, MessagingError> {
        match &answer {
            Ok(_) | Err(MessagingError::HandlerFailed(_)) => bump(&self.counters.delivered),
            Err(MessagingError::Timeout) => {
                bump(&self.counters.dead_lettered);
                self.dead_letters.record(
                    sender.clone(),
                    target.into(),
                    MessageKind::Request,
                    payload,
                    "unconfirmed: no answer from another host before the timeout; it may have been handled",
                );
            }
            Err(_) => bump(&self.counters.refused),
        }
        answer
    }
}
