//! Requests: a message with a reply channel, and the wait for the reply.

use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_host_core::{ComponentError, ComponentId, MessagingError};
use tokio::sync::oneshot;

use crate::mailbox::Envelope;
use crate::metrics::bump;
use crate::routing::{Access, Router};

/// The length of a handler's error text.
fn error_len(err: &ComponentError) -> usize {
    match err {
        ComponentError::InvalidMessage(text)
        | ComponentError::Unsupported(text)
        | ComponentError::Internal(text) => text.len(),
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
    /// requester as the target's failure.
    pub(crate) async fn request(
        &self,
        sender: &ComponentId,
        target: &str,
        payload: Bytes,
        timeout: Duration,
        access: Access,
    ) -> Result<Vec<u8>, MessagingError> {
        if timeout.is_zero() {
            // Nobody would wait for the reply: refused now rather than queued and
            // dead-lettered later.
            bump(&self.counters.sent);
            self.refused(self.registry.get(target).as_deref());
            return Err(MessagingError::Timeout);
        }
        let (reply, answer) = oneshot::channel();
        let envelope = Envelope::Request {
            sender: sender.clone(),
            payload,
            reply,
            expires: Instant::now() + timeout,
        };
        self.route(target, envelope, access, None)
            .map_err(|refused| refused.error)?;
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
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Ok(reply))) if reply.len() > limit => over_limit("replied with", reply.len()),
            Ok(Ok(Err(MessagingError::HandlerFailed(err)))) if error_len(&err) > limit => {
                over_limit("answered with an error of", error_len(&err))
            }
            Ok(Ok(answer)) => answer,
            // The actor dropped the reply without answering: it ended while the request
            // was queued. The request itself is in the dead-letter record.
            Ok(Err(_)) => Err(MessagingError::TargetCrashed(format!(
                "component `{target}` ended before answering"
            ))),
            Err(_) => Err(MessagingError::Timeout),
        }
    }
}
