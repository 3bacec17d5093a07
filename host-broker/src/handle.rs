//! A handle to one spawned component.

use std::sync::{Arc, Weak};

use courier_host_core::ComponentId;

use crate::error::BrokerError;
use crate::registry::{ActorShared, ComponentState};
use crate::report::{MetricsSnapshot, ShutdownReport};
use crate::routing::Router;

/// What [`Broker::spawn`](crate::Broker::spawn) returns: the component's id, its state and counters, and a way to
/// stop it.
///
/// The handle follows the one instance of the component it was spawned as: once that
/// component is stopped or removed, the handle still reports its last state and counters,
/// and [`stop`](Self::stop) no longer reaches a component spawned later under the same id.
/// It holds the broker weakly, so keeping a handle does not keep the broker's actors alive.
#[derive(Clone)]
pub struct ComponentHandle {
    shared: Arc<ActorShared>,
    /// Held weakly, as actors hold it: the broker holds the only strong reference.
    router: Weak<Router>,
}

impl ComponentHandle {
    pub(crate) fn new(shared: Arc<ActorShared>, router: Weak<Router>) -> ComponentHandle {
        ComponentHandle { shared, router }
    }

    /// The id it was spawned with.
    pub fn id(&self) -> &ComponentId {
        &self.shared.id
    }

    /// Where it is in its life.
    pub fn state(&self) -> ComponentState {
        self.shared.state()
    }

    /// Its counters now; the mailbox depth is 0 once it is no longer registered.
    pub fn metrics(&self) -> MetricsSnapshot {
        let depth = self
            .router
            .upgrade()
            .and_then(|router| router.registry.mailbox_depth_of(&self.shared))
            .unwrap_or(0);
        MetricsSnapshot::of(&self.shared, depth)
    }

    /// Stop it as [`Broker::stop`](crate::Broker::stop) does: it handles what is already in its mailbox, then
    /// ends and is removed. [`BrokerError::NotFound`] if it is no longer registered.
    pub async fn stop(&self) -> Result<ShutdownReport, BrokerError> {
        match self.router.upgrade() {
            Some(router) => router.stop_instance(&self.shared).await,
            None => Err(BrokerError::NotFound(self.shared.id.clone())),
        }
    }
}

impl std::fmt::Debug for ComponentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentHandle")
            .field("id", &self.shared.id)
            .field("state", &self.shared.state())
            .finish()
    }
}
