//! The guests' `messaging` imports: host-core's [`Messaging`] trait, implemented by routing.

use std::sync::{Arc, Weak};
use std::time::Duration;

use courier_host_core::{BoxFuture, ComponentId, Messaging, MessagingError};

use crate::capabilities::Capabilities;
use crate::mailbox::Envelope;
use crate::routing::{Access, RouteCache, Router};

/// The messaging of one spawned component: its capabilities, and a way back to the
/// broker's router that does not keep it alive, so dropping the broker ends every actor.
pub(crate) struct ActorMessaging {
    router: Weak<Router>,
    capabilities: Capabilities,
    last_target: RouteCache,
}

impl ActorMessaging {
    pub(crate) fn new(router: &Arc<Router>, capabilities: Capabilities) -> ActorMessaging {
        ActorMessaging {
            router: Arc::downgrade(router),
            capabilities,
            last_target: RouteCache::default(),
        }
    }

    fn router(&self) -> Result<Arc<Router>, MessagingError> {
        self.router.upgrade().ok_or(MessagingError::ShuttingDown)
    }
}

impl Messaging for ActorMessaging {
    fn send_message(
        &self,
        sender: &ComponentId,
        target: &str,
        message: Vec<u8>,
    ) -> Result<(), MessagingError> {
        let access = Access::of_component(self.capabilities.may_send(target));
        let envelope = Envelope::Message {
            sender: sender.clone(),
            payload: message.into(),
        };
        self.router()?
            .route(target, envelope, access, Some(&self.last_target))
            .map_err(|refused| refused.error)
    }

    fn send_request(
        &self,
        sender: &ComponentId,
        target: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, MessagingError>> {
        let router = self.router();
        let access = Access::of_component(self.capabilities.may_request(target));
        let sender = sender.clone();
        let target = target.to_string();
        Box::pin(async move {
            router?
                .request(&sender, &target, request, timeout, access)
                .await
        })
    }

    fn publish(
        &self,
        sender: &ComponentId,
        topic: &str,
        message: Vec<u8>,
    ) -> Result<u32, MessagingError> {
        let access = Access::of_component(self.capabilities.may_publish(topic));
        self.router()?.publish(sender, topic, message, access)
    }
}
