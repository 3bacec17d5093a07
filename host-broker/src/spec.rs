//! What a host integrator says about a component when spawning it.

use std::time::Duration;

use courier_host_core::{Component, ComponentId, DEFAULT_DEADLINE, DEFAULT_MAX_STATE_BYTES};

use crate::capabilities::{Capabilities, Pattern};
use crate::exposure::Exposure;
use crate::supervisor::Supervision;
use crate::timers::DEFAULT_MAX_TIMERS;

/// Default mailbox capacity: deep enough to absorb bursts, shallow enough that a stuck
/// component pushes back on its senders quickly.
pub const DEFAULT_MAILBOX_CAPACITY: usize = 1024;

/// Default budget of payload bytes in one mailbox: a deep queue of ordinary messages, and
/// sixteen of the largest the broker accepts by default.
pub const DEFAULT_MAILBOX_BYTES: u64 = 64 << 20;

/// The largest mailbox capacity [`Broker::spawn`](crate::Broker::spawn) accepts: a million
/// messages, far beyond what back-pressure needs, and well inside what the channel under a
/// mailbox can count.
pub const MAX_MAILBOX_CAPACITY: usize = 1 << 20;

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
    pub(crate) id: ComponentId,
    pub(crate) component: Component,
    pub(crate) capabilities: Capabilities,
    pub(crate) exposure: Exposure,
    pub(crate) mailbox_capacity: usize,
    pub(crate) mailbox_bytes: u64,
    pub(crate) deadline: Duration,
    pub(crate) memory_limit: Option<usize>,
    pub(crate) fuel: Option<u64>,
    pub(crate) max_state_bytes: usize,
    pub(crate) supervision: Supervision,
    pub(crate) max_timers: u32,
    pub(crate) durable: bool,
    pub(crate) keyed: Option<crate::keying::Keying>,
}

impl ComponentSpec {
    /// A spec for running `component` as the id `id` (the id it is reached by and sends
    /// as), with no capabilities, a mailbox of [`DEFAULT_MAILBOX_CAPACITY`], the default
    /// deadline, the engine's memory maximum and the default supervision.
    pub fn new(id: impl Into<ComponentId>, component: Component) -> Self {
        ComponentSpec {
            id: id.into(),
            component,
            capabilities: Capabilities::none(),
            exposure: Exposure::Local,
            mailbox_capacity: DEFAULT_MAILBOX_CAPACITY,
            mailbox_bytes: DEFAULT_MAILBOX_BYTES,
            deadline: DEFAULT_DEADLINE,
            memory_limit: None,
            fuel: None,
            max_state_bytes: DEFAULT_MAX_STATE_BYTES,
            supervision: Supervision::default(),
            max_timers: DEFAULT_MAX_TIMERS,
            durable: false,
            keyed: None,
        }
    }

    /// Replace all capabilities: whom it may reach, what it hears.
    pub fn capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Allow sending messages to ids matching `pattern` (`pong`, `orders/*`, `*`).
    /// [`Broker::spawn`](crate::Broker::spawn) refuses a pattern that would not mean what
    /// it says ([`Pattern::try_parse`]).
    pub fn may_send(mut self, pattern: &str) -> Self {
        self.capabilities = self.capabilities.allow_send(Pattern::parse(pattern));
        self
    }

    /// Allow sending requests to ids matching `pattern`.
    pub fn may_request(mut self, pattern: &str) -> Self {
        self.capabilities = self.capabilities.allow_request(Pattern::parse(pattern));
        self
    }

    /// Allow publishing on topics matching `pattern`.
    pub fn may_publish(mut self, pattern: &str) -> Self {
        self.capabilities = self.capabilities.allow_publish(Pattern::parse(pattern));
        self
    }

    /// Receive publications on topics matching `pattern`.
    pub fn subscribe(mut self, pattern: &str) -> Self {
        self.capabilities = self.capabilities.subscribe(Pattern::parse(pattern));
        self
    }

    /// Whether components on other hosts of a lattice may reach it ([`Exposure::Local`],
    /// only this host, by default). Senders on other hosts still need the capability for
    /// its id on their own host.
    pub fn expose(mut self, exposure: Exposure) -> Self {
        self.exposure = exposure;
        self
    }

    /// How many messages its mailbox holds before senders get `mailbox-full` (at least 1;
    /// spawn refuses more than [`MAX_MAILBOX_CAPACITY`]).
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.mailbox_capacity = capacity.max(1);
        self
    }

    /// How many payload bytes its mailbox holds before senders get `mailbox-full`
    /// ([`DEFAULT_MAILBOX_BYTES`] by default): with the message count, this bounds the
    /// memory a mailbox can hold, whatever its senders send.
    pub fn mailbox_bytes(mut self, bytes: u64) -> Self {
        self.mailbox_bytes = bytes;
        self
    }

    /// How long one handler call may run.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Cap its linear memory at `bytes`; without it the engine's maximum applies.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Give each handler call `fuel` units (the engine must meter fuel).
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.fuel = Some(fuel);
        self
    }

    /// Refuse a state of more than `bytes` from its `save-state`
    /// ([`DEFAULT_MAX_STATE_BYTES`] by default): an upgrade that would move a larger one
    /// fails with the old version still serving, and a checkpoint that large is not kept
    /// (the last one is).
    pub fn max_state_bytes(mut self, bytes: usize) -> Self {
        self.max_state_bytes = bytes;
        self
    }

    /// What happens when its instance traps.
    pub fn supervision(mut self, supervision: Supervision) -> Self {
        self.supervision = supervision;
        self
    }

    /// How many timers it may have pending at once ([`DEFAULT_MAX_TIMERS`] by default); a
    /// schedule beyond that is refused with `limit-reached`. 0 turns its timers off: every
    /// schedule is refused with `disabled`. A durable component's limit is capped at what
    /// the store keeps per actor
    /// ([`MAX_TIMERS_PER_ACTOR`](courier_host_store::limits::MAX_TIMERS_PER_ACTOR)).
    pub fn max_timers(mut self, max_timers: u32) -> Self {
        self.max_timers = max_timers;
        self
    }

    /// Keep it in the broker's store ([`BrokerConfig::store`](crate::BrokerConfig::store)):
    /// a message for it is stored before its sender hears `Ok`, its state (through the
    /// `state` interface, if it exports it) and the messages it handled are committed in one
    /// transaction after every batch, and a spawn on the same store starts from the last
    /// committed state and handles the stored messages it had not, in order, before anything
    /// new. Off by default: a component that is not durable never touches the disk.
    ///
    /// Exposed to other hosts ([`Exposure::Lattice`]), a message from another host is
    /// acknowledged only once stored, and a durable sender's copy of one it holds is dropped
    /// by (sender, sequence number). It subscribes to no topic, since publications are not
    /// stored yet, and it is not replicated ([`Exposure::Replicated`] is refused: each
    /// replica would keep its own store). Requests to it are answered as for any component
    /// and not stored; the state they change is committed with the batch.
    ///
    /// Its timers are kept in the store too, changed in the transaction of the batch that
    /// changed them, and armed again at spawn: they survive a stop, a crash and a restart,
    /// and end with [`Broker::remove`](crate::Broker::remove). A firing is at least once: a
    /// crash after its handler ran and before its batch's commit fires it again.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Make it a keyed component, registered with
    /// [`Broker::spawn_keyed`](crate::Broker::spawn_keyed): `<id>/<key>` reaches the
    /// instance of that key, made on its first message and put away as `keying` says. Its
    /// capabilities, limits, supervision and durability apply to each key.
    pub fn keyed(mut self, keying: crate::keying::Keying) -> Self {
        self.keyed = Some(keying);
        self
    }

    /// How its keys come and go, if it is keyed.
    pub fn get_keyed(&self) -> Option<crate::keying::Keying> {
        self.keyed
    }

    /// Whether it is kept in the broker's store.
    pub fn get_durable(&self) -> bool {
        self.durable
    }

    /// The same spec for another component: a new version of it, say.
    pub fn replace_component(mut self, component: Component) -> Self {
        self.component = component;
        self
    }

    /// The id it will run as.
    pub fn id(&self) -> &ComponentId {
        &self.id
    }

    /// The component it will run.
    pub fn component(&self) -> &Component {
        &self.component
    }

    /// Its capabilities.
    pub fn get_capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Whether other hosts may reach it.
    pub fn get_exposure(&self) -> Exposure {
        self.exposure
    }

    /// Its mailbox capacity.
    pub fn get_mailbox_capacity(&self) -> usize {
        self.mailbox_capacity
    }

    /// Its mailbox's byte budget.
    pub fn get_mailbox_bytes(&self) -> u64 {
        self.mailbox_bytes
    }

    /// Its per-call deadline.
    pub fn get_deadline(&self) -> Duration {
        self.deadline
    }

    /// Its memory cap, if one was set.
    pub fn get_memory_limit(&self) -> Option<usize> {
        self.memory_limit
    }

    /// Its per-call fuel budget, if one was set.
    pub fn get_fuel(&self) -> Option<u64> {
        self.fuel
    }

    /// The largest state its `save-state` may return.
    pub fn get_max_state_bytes(&self) -> usize {
        self.max_state_bytes
    }

    /// How many timers it may have pending at once; 0 if its timers are off.
    pub fn get_max_timers(&self) -> u32 {
        self.max_timers
    }

    /// Its supervision.
    pub fn get_supervision(&self) -> Supervision {
        self.supervision
    }
}
