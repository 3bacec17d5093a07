//! What a host integrator says about a component when spawning it.

use std::time::Duration;

use courier_host_core::{Component, ComponentId, DEFAULT_DEADLINE};

use crate::capabilities::{Capabilities, Pattern};
use crate::supervisor::Supervision;

/// Default mailbox capacity: deep enough to absorb bursts, shallow enough that a stuck
/// component pushes back on its senders quickly.
pub const DEFAULT_MAILBOX_CAPACITY: usize = 1024;

/// Everything the broker needs to run a component as an actor.
///
/// ```no_run
/// # async fn run(broker: courier_host_broker::Broker, pong: courier_host_core::Component) {
/// use std::time::Duration;
/// use courier_host_broker::{ComponentSpec, RestartPolicy, Supervision};
///
/// let spec = ComponentSpec::new("pong", pong)
///     .may_send("audit")
///     .subscribe("scores/*")
///     .mailbox_capacity(256)
///     .deadline(Duration::from_millis(50))
///     .memory_limit(16 << 20)
///     .supervision(Supervision::new(RestartPolicy::Transient));
/// broker.spawn(spec).await.expect("pong starts");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ComponentSpec {
    /// The id the component is reached by and that it sends as.
    pub id: ComponentId,
    /// The loaded component to instantiate.
    pub component: Component,
    /// Whom it may reach, what it hears. Nothing by default.
    pub capabilities: Capabilities,
    /// Messages its mailbox holds before senders get `mailbox-full`.
    pub mailbox_capacity: usize,
    /// How long one handler call may run.
    pub deadline: Duration,
    /// Cap on its linear memory, in bytes; `None` for the engine's maximum.
    pub memory_limit: Option<usize>,
    /// Fuel per handler call, if the engine meters fuel.
    pub fuel: Option<u64>,
    /// What happens when its instance traps.
    pub supervision: Supervision,
}

impl ComponentSpec {
    /// A spec with no capabilities and default limits.
    pub fn new(id: impl Into<ComponentId>, component: Component) -> Self {
        ComponentSpec {
            id: id.into(),
            component,
            capabilities: Capabilities::none(),
            mailbox_capacity: DEFAULT_MAILBOX_CAPACITY,
            deadline: DEFAULT_DEADLINE,
            memory_limit: None,
            fuel: None,
            supervision: Supervision::default(),
        }
    }

    /// Replace all capabilities.
    pub fn capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Allow sending messages to ids matching `pattern` (`pong`, `orders/*`, `*`).
    pub fn may_send(mut self, pattern: &str) -> Self {
        self.capabilities.send.push(Pattern::parse(pattern));
        self
    }

    /// Allow sending requests to ids matching `pattern`.
    pub fn may_request(mut self, pattern: &str) -> Self {
        self.capabilities.request.push(Pattern::parse(pattern));
        self
    }

    /// Allow publishing on topics matching `pattern`.
    pub fn may_publish(mut self, pattern: &str) -> Self {
        self.capabilities.publish.push(Pattern::parse(pattern));
        self
    }

    /// Receive publications on topics matching `pattern`.
    pub fn subscribe(mut self, pattern: &str) -> Self {
        self.capabilities.subscribe.push(Pattern::parse(pattern));
        self
    }

    /// Set the mailbox capacity (at least 1).
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.mailbox_capacity = capacity.max(1);
        self
    }

    /// Set the per-call deadline.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Cap linear memory at `bytes`.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Give each handler call `fuel` units (the engine must meter fuel).
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.fuel = Some(fuel);
        self
    }

    /// Set the supervision.
    pub fn supervision(mut self, supervision: Supervision) -> Self {
        self.supervision = supervision;
        self
    }
}
