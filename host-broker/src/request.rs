//! Requests: a message with a reply channel, and the wait for the reply.

use std::time::{Duration, Instant};

use courier_host_core::{ComponentError, ComponentId, MessagingError};
use tokio::sync::oneshot;

use crate::mailbox::Envelope;
use crate::routing::{Access, Router};

impl Router {
    /// Send `payload` as a request from `sender` to `target` and wait at most `timeout` for
    /// the reply.
    ///
    /// The request carries when its sender stops waiting, so a target that reaches it later
    /// dead-letters it instead of handling it: a request never outlives its caller's wait,
    /// and a cycle of requests ends in a timeout.
    pub(crate) async fn request(
        &self,
        sender: &ComponentId,
        target: &str,
        payload: Vec<u8>,
        timeout: Duration,
        access: Access,
    ) -> Result<Vec<u8>, MessagingError> {
        let (reply, answer) = oneshot::channel();
        let envelope = Envelope::Request {
            sender: sender.clone(),
            payload,
            reply,
            expires: Instant::now() + timeout,
        };
        self.route(target, envelope, access, None)
            .map_err(|refused| refused.error)?;
        match tokio::time::timeout(timeout, answer).await {
            // The request was fine and the handler ran; the fault is the target's, so the
            // requester hears it as the target's failure, not as `payload-too-large`, which
            // would say its own request was too big.
            Ok(Ok(Ok(reply))) if reply.len() > self.config.max_payload_bytes => Err(
                MessagingError::HandlerFailed(ComponentError::Internal(format!(
                    "component `{target}` replied with {} bytes, over the limit of {} bytes",
                    reply.len(),
                    self.config.max_payload_bytes
                ))),
            ),
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
