//! The guests' `messaging` imports: host-core's [`Messaging`] trait, implemented by routing.

use std::sync::{Arc, Weak};
use std::time::Duration;

use courier_host_core::guest_log::{LineBudget, escape};
use courier_host_core::{BoxFuture, ComponentId, Messaging, MessagingError, Sending, TraceContext};

use crate::capabilities::Capabilities;
use crate::mailbox::Envelope;
use crate::outbox::Outbox;
use crate::routing::{Access, RouteCache, Routed, Router};

/// The messaging of one spawned component: its capabilities, and a way back to the
/// broker's router that does not keep it alive, so dropping the broker ends every actor.
pub(crate) struct ActorMessaging {
    router: Weak<Router>,
    capabilities: Capabilities,
    last_target: RouteCache,
    /// The component's denied sends are logged at a bounded rate: a guest that tries in a
    /// loop cannot flood the host's log.
    denials: LineBudget,
    /// A durable component's outbox, where its messages and publications wait for the
    /// commit of the batch that sent them.
    outbox: Option<Arc<Outbox>>,
}

impl ActorMessaging {
    pub(crate) fn new(
        router: &Arc<Router>,
        capabilities: Capabilities,
        outbox: Option<Arc<Outbox>>,
    ) -> ActorMessaging {
        ActorMessaging {
            router: Arc::downgrade(router),
            capabilities,
            last_target: RouteCache::default(),
            denials: LineBudget::default(),
            outbox,
        }
    }

    /// For a durable component: hold its message for the commit, after the checks.
    fn send_later(
        &self,
        outbox: &Outbox,
        sender: &ComponentId,
        target: &str,
        message: Vec<u8>,
    ) -> Result<(), MessagingError> {
        let access = Access::of_component(self.capabilities.may_send(target));
        let held = self.router()?.send_later(
            outbox,
            target,
            message.into(),
            access,
            Some(&self.last_target),
        );
        self.denied(sender, "send to", held)
    }

    fn router(&self) -> Result<Arc<Router>, MessagingError> {
        self.router.upgrade().ok_or(MessagingError::ShuttingDown)
    }

    /// Log the denial in `result`, if it is one.
    fn denied<T>(
        &self,
        sender: &ComponentId,
        action: &str,
        result: Result<T, MessagingError>,
    ) -> Result<T, MessagingError> {
        log_denial(&self.denials, sender, action, &result);
        result
    }
}

/// Log that `sender` was denied `action`, if `result` says so, within `denials`. The name in
/// a denial is at most `MAX_NAME_BYTES` long: longer names are refused before capabilities.
fn log_denial<T>(
    denials: &LineBudget,
    sender: &ComponentId,
    action: &str,
    result: &Result<T, MessagingError>,
) {
    if let Err(MessagingError::AccessDenied(name)) = result
        && let Some(suppressed) = denials.admit()
    {
        let name = escape(name);
        tracing::warn!(%sender, target = %name, suppressed, "access denied: {action}");
    }
}

impl Messaging for ActorMessaging {
    fn start_send_message(
        &self,
        sender: &ComponentId,
        target: &str,
        message: Vec<u8>,
        trace: Option<TraceContext>,
    ) -> Sending {
        if let Some(outbox) = &self.outbox {
            return Sending::Done(self.send_later(outbox, sender, target, message));
        }
        let access = Access::of_component(self.capabilities.may_send(target));
        let envelope = Envelope::traced(sender.clone(), message.into(), trace);
        let router = match self.router() {
            Ok(router) => router,
            Err(err) => return Sending::Done(Err(err)),
        };
        let routed = router.route_or_store(target, envelope, access, Some(&self.last_target), None);
        match self.denied(sender, "send to", routed.map_err(|refused| refused.error)) {
            Ok(Routed::Queued) => Sending::Done(Ok(())),
            Ok(Routed::Storing(storing)) => Sending::Waiting(Box::pin(async move {
                storing.await.map_err(|refused| refused.error)
            })),
            Err(err) => Sending::Done(Err(err)),
        }
    }

    fn send_message(
        &self,
        sender: &ComponentId,
        target: &str,
        message: Vec<u8>,
        trace: Option<TraceContext>,
    ) -> Result<(), MessagingError> {
        if let Some(outbox) = &self.outbox {
            return self.send_later(outbox, sender, target, message);
        }
        let access = Access::of_component(self.capabilities.may_send(target));
        let envelope = Envelope::traced(sender.clone(), message.into(), trace);
        let routed = self
            .router()?
            .route(target, envelope, access, Some(&self.last_target))
            .map_err(|refused| refused.error);
        self.denied(sender, "send to", routed)
    }

    fn send_request(
        &self,
        sender: &ComponentId,
        target: &str,
        request: Vec<u8>,
        timeout: Duration,
        trace: Option<TraceContext>,
    ) -> BoxFuture<'static, Result<Vec<u8>, MessagingError>> {
        let router = self.router();
        let access = Access::of_component(self.capabilities.may_request(target));
        // Only a denied request can come back denied; the others need no budget.
        let denials = (access == Access::Denied).then(|| self.denials.clone());
        let sender = sender.clone();
        let target = target.to_string();
        Box::pin(async move {
            let answer = router?
                .request(&sender, &target, request.into(), timeout, access, trace)
                .await;
            if let Some(denials) = &denials {
                log_denial(denials, &sender, "request from", &answer);
            }
            answer
        })
    }

    fn publish(
        &self,
        sender: &ComponentId,
        topic: &str,
        message: Vec<u8>,
        trace: Option<TraceContext>,
    ) -> Result<u32, MessagingError> {
        let access = Access::of_component(self.capabilities.may_publish(topic));
        let router = self.router()?;
        let published = match &self.outbox {
            Some(outbox) => router.publish_later(outbox, topic, message.into(), access),
            None => router.publish(sender, topic, message.into(), access, trace),
        };
        self.denied(sender, "publish on", published)
    }
}
