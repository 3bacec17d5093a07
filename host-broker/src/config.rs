//! The broker's settings: a builder whose defaults suit most hosts, below everything that
//! reads them.

use std::sync::Arc;
use std::time::Duration;

use courier_host_store::Store;

use crate::dead_letter::DEFAULT_DEAD_LETTER_CAPACITY;
use crate::telemetry::Telemetry;

/// Default largest payload: generous for messages, small enough that one sender cannot make
/// the host hold gigabytes in a mailbox.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 4 << 20;

/// Default budget of payload bytes queued in all mailboxes together: with the default
/// per-mailbox budget, sixteen components can be full at once before the broker refuses.
pub const DEFAULT_MAX_QUEUED_BYTES: u64 = 1 << 30;

/// Settings of a [`Broker`](crate::Broker): a builder whose defaults suit most hosts.
///
/// ```
/// use courier_host_broker::BrokerConfig;
///
/// let config = BrokerConfig::default().max_payload_bytes(1 << 20);
/// assert_eq!(config.get_max_payload_bytes(), 1 << 20);
/// ```
#[derive(Clone)]
pub struct BrokerConfig {
    pub(crate) max_payload_bytes: usize,
    pub(crate) dead_letter_capacity: usize,
    pub(crate) max_queued_bytes: u64,
    pub(crate) store: Option<Arc<dyn Store>>,
    pub(crate) remote_retention: Duration,
    pub(crate) telemetry: Option<Telemetry>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            dead_letter_capacity: DEFAULT_DEAD_LETTER_CAPACITY,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            store: None,
            remote_retention: crate::outbox::DEFAULT_REMOTE_RETENTION,
            telemetry: None,
        }
    }
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("dead_letter_capacity", &self.dead_letter_capacity)
            .field("max_queued_bytes", &self.max_queued_bytes)
            .field("store", &self.store.as_ref().map(|_| "Store"))
            .field("remote_retention", &self.remote_retention)
            .field("telemetry", &self.telemetry)
            .finish()
    }
}

impl BrokerConfig {
    /// Largest payload of a message, request or reply, in bytes
    /// ([`DEFAULT_MAX_PAYLOAD_BYTES`] by default). A larger one is refused with
    /// `payload-too-large`.
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// How many recent dead letters are kept for inspection
    /// ([`DEFAULT_DEAD_LETTER_CAPACITY`] by default); older ones stay counted.
    pub fn dead_letter_capacity(mut self, capacity: usize) -> Self {
        self.dead_letter_capacity = capacity;
        self
    }

    /// Most payload bytes queued in all mailboxes together ([`DEFAULT_MAX_QUEUED_BYTES`] by
    /// default), on top of each mailbox's own budget
    /// ([`ComponentSpec::mailbox_bytes`](crate::ComponentSpec::mailbox_bytes)): a send that would pass either is refused with
    /// `mailbox-full`, so senders cannot make the host hold more than this.
    pub fn max_queued_bytes(mut self, bytes: u64) -> Self {
        self.max_queued_bytes = bytes;
        self
    }

    /// Keep durable components in `store` ([`ComponentSpec::durable`](crate::ComponentSpec::durable)): their messages are
    /// stored before their senders hear `Ok`, and their state and the messages they handled
    /// are committed after every batch. Without a store a durable component is refused at
    /// spawn; components that are not durable never touch it.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use courier_host_broker::BrokerConfig;
    /// use courier_host_store::RedbStore;
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = RedbStore::open_in_dir(dir.path()).expect("the store opens");
    /// let config = BrokerConfig::default().store(Arc::new(store));
    /// assert!(config.get_store().is_some());
    /// ```
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Record a span per handler call of a sampled trace into `telemetry`'s sink
    /// ([`Telemetry`]). Without it (the default) no span is built and no trace is started;
    /// a message that carries a trace context still hands it on to what its handler sends.
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Where spans go, if anywhere.
    pub fn get_telemetry(&self) -> Option<&Telemetry> {
        self.telemetry.as_ref()
    }

    /// The store durable components are kept in, if there is one.
    pub fn get_store(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }

    /// How long a durable component's message to a component on another host is tried
    /// until the serving host acknowledges it
    /// ([`DEFAULT_REMOTE_RETENTION`](crate::DEFAULT_REMOTE_RETENTION), a day, by default),
    /// counted from its first try in the sender's current run. Past it the message is
    /// dead-lettered with the reason, in the store too, and the sender's next messages go.
    pub fn remote_retention(mut self, retention: Duration) -> Self {
        self.remote_retention = retention;
        self
    }

    /// How long a durable component's message to another host is tried.
    pub fn get_remote_retention(&self) -> Duration {
        self.remote_retention
    }

    /// The most payload bytes queued in all mailboxes together.
    pub fn get_max_queued_bytes(&self) -> u64 {
        self.max_queued_bytes
    }

    /// The largest payload, in bytes.
    pub fn get_max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// How many dead letters are kept.
    pub fn get_dead_letter_capacity(&self) -> usize {
        self.dead_letter_capacity
    }
}
