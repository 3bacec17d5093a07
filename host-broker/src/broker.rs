//! The broker: spawns actors, routes messages, requests and publications between them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use courier_host_core::{
    BoxFuture, ComponentError, ComponentId, InstanceOptions, Messaging, MessagingError,
};
use tokio::sync::{mpsc, oneshot};

use crate::actor::Actor;
use crate::capabilities::Capabilities;
use crate::dead_letter::{DEFAULT_DEAD_LETTER_CAPACITY, DeadLetter, DeadLetters};
use crate::error::{BrokerError, check_id};
use crate::mailbox::Envelope;
use crate::metrics::{Accounting, BrokerCounters, LatencySummary, bump};
use crate::registry::{ActorShared, ComponentState, Entry, Registry};
use crate::spec::ComponentSpec;
use crate::supervisor::RestartHistory;

/// The sender id of messages the host sends without naming another.
pub const HOST_SENDER: &str = "host";

/// Default largest payload: generous for messages, small enough that one sender cannot make
/// the host hold gigabytes in a mailbox.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 4 << 20;

/// Settings of a [`Broker`].
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Largest payload of a message, request or reply, in bytes.
    pub max_payload_bytes: usize,
    /// How many recent dead letters are kept for inspection.
    pub dead_letter_capacity: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            dead_letter_capacity: DEFAULT_DEAD_LETTER_CAPACITY,
        }
    }
}

/// The actor runtime: components spawned from specs, each an actor with a bounded mailbox,
/// reaching each other through their `messaging` imports.
///
/// Cloning is cheap and shares the broker. It must be used within a tokio runtime.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use courier_host_core::{Engine, EngineConfig};
/// use courier_host_broker::{Broker, ComponentSpec};
///
/// let engine = Engine::new(EngineConfig::default())?;
/// let broker = Broker::new(engine.clone());
/// let echo = engine.load_component_file("echo", "target/guests/echo.wasm")?;
/// broker.spawn(ComponentSpec::new("echo", echo)).await?;
///
/// broker.send("echo", b"fire and forget".to_vec())?;
/// let reply = broker.request("echo", b"hello".to_vec(), Duration::from_secs(1)).await?;
/// assert_eq!(reply, b"hello");
///
/// let report = broker.shutdown(Duration::from_secs(1)).await;
/// assert!(report.undelivered.is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Broker {
    inner: Arc<BrokerInner>,
}

pub(crate) struct BrokerInner {
    engine: courier_host_core::Engine,
    config: BrokerConfig,
    registry: Registry,
    shutting_down: AtomicBool,
    /// Whether [`keep_timer_armed`] runs for this broker; it starts with the first spawn,
    /// the first moment the broker is sure to be on a runtime.
    keepalive_started: AtomicBool,
    pub(crate) counters: Arc<BrokerCounters>,
    pub(crate) dead_letters: Arc<DeadLetters>,
}

/// How often the broker's keep-alive timer fires; see [`keep_timer_armed`].
const TIMER_KEEPALIVE: Duration = Duration::from_millis(100);

/// Keeps a timer pending on the runtime, never more than [`TIMER_KEEPALIVE`] away, for as
/// long as the broker lives.
///
/// Every request waits for its reply under a timeout, which registers a timer with tokio.
/// tokio wakes the thread parked on its timer driver (a write to an eventfd, a system call,
/// and a context switch on the other core) whenever a new timer expires before everything
/// the driver is already waiting for, which, with no other timer pending, is every request.
/// With this one pending, a request whose timeout is longer than the period registers its
/// timer without a wake-up: about a fifth of a host-to-component round trip on two cores.
async fn keep_timer_armed(broker: Weak<BrokerInner>) {
    let mut ticks = tokio::time::interval(TIMER_KEEPALIVE);
    loop {
        ticks.tick().await;
        match broker.upgrade() {
            Some(inner) if !inner.shutting_down.load(Ordering::Acquire) => {}
            _ => return,
        }
    }
}

/// A component's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// The component.
    pub id: ComponentId,
    /// Where it is in its life.
    pub state: ComponentState,
    /// Messages and requests its handlers completed (with `Ok` or a handler error).
    pub delivered: u64,
    /// Handler errors and traps.
    pub failed: u64,
    /// Messages for it that were dead-lettered.
    pub dead_lettered: u64,
    /// Messages for it refused to their senders (mailbox full, failed, too large).
    pub refused: u64,
    /// Instances replaced after a trap.
    pub restarts: u64,
    /// Messages waiting in its mailbox.
    pub mailbox_depth: usize,
    /// Handler latency percentiles.
    pub latency: LatencySummary,
}

/// What [`Broker::shutdown`] or [`Broker::stop`] could not deliver.
#[derive(Debug, Clone, Default)]
pub struct ShutdownReport {
    /// Components that were stopped.
    pub stopped: Vec<ComponentId>,
    /// Messages delivered while draining.
    pub delivered_while_draining: u64,
    /// Messages that were still queued when the deadline passed, now dead letters.
    pub undelivered: Vec<DeadLetter>,
}

impl Broker {
    /// A broker with the default configuration.
    pub fn new(engine: courier_host_core::Engine) -> Broker {
        Broker::with_config(engine, BrokerConfig::default())
    }

    /// A broker with the given configuration.
    pub fn with_config(engine: courier_host_core::Engine, config: BrokerConfig) -> Broker {
        Broker {
            inner: Arc::new(BrokerInner {
                engine,
                dead_letters: Arc::new(DeadLetters::new(config.dead_letter_capacity)),
                config,
                registry: Registry::default(),
                shutting_down: AtomicBool::new(false),
                keepalive_started: AtomicBool::new(false),
                counters: Arc::default(),
            }),
        }
    }

    /// The engine components run on.
    pub fn engine(&self) -> &courier_host_core::Engine {
        &self.inner.engine
    }

    /// Instantiate the component and start its actor. Refuses an id already in use.
    pub async fn spawn(&self, spec: ComponentSpec) -> Result<(), BrokerError> {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::Acquire) {
            return Err(BrokerError::ShuttingDown);
        }
        check_id(&spec.id).map_err(|reason| BrokerError::InvalidId {
            id: spec.id.to_string(),
            reason,
        })?;
        spec.capabilities
            .validate()
            .map_err(|(list, error)| BrokerError::InvalidPattern {
                component: spec.id.clone(),
                list,
                error,
            })?;
        if inner.registry.contains(&spec.id) {
            return Err(BrokerError::DuplicateId(spec.id));
        }
        let shared = Arc::new(ActorShared::new(spec.id.clone(), spec.capabilities.clone()));
        let messaging = Arc::new(ActorMessaging {
            broker: Arc::downgrade(inner),
            capabilities: spec.capabilities,
            last_target: std::sync::Mutex::new(None),
        });
        let mut options = InstanceOptions::new(spec.id.clone())
            .deadline(spec.deadline)
            .messaging(messaging);
        options.memory_limit = spec.memory_limit;
        options.fuel = spec.fuel;
        let instance = spec.component.instantiate(options.clone()).await?;

        let (sender, receiver) = mpsc::channel(spec.mailbox_capacity);
        let entry = Arc::new(Entry {
            mailbox: sender,
            shared: shared.clone(),
            task: std::sync::Mutex::new(None),
        });
        if inner.registry.insert(entry.clone()).is_err() {
            return Err(BrokerError::DuplicateId(spec.id));
        }
        let actor = Actor {
            shared,
            counters: inner.counters.clone(),
            dead_letters: inner.dead_letters.clone(),
            component: spec.component,
            options,
            supervision: spec.supervision,
            instance,
            mailbox: receiver,
            history: RestartHistory::new(),
        };
        let task = tokio::spawn(actor.run());
        *entry.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        if !inner.keepalive_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(keep_timer_armed(Arc::downgrade(inner)));
        }
        tracing::info!(component = %spec.id, "spawned");
        Ok(())
    }

    /// Stop a component: it handles what is already in its mailbox, then ends and is
    /// removed. Messages sent to it afterwards get `target-not-found`.
    pub async fn stop(&self, id: &str) -> Result<ShutdownReport, BrokerError> {
        let entry = self
            .inner
            .registry
            .remove(id)
            .ok_or_else(|| BrokerError::NotFound(id.into()))?;
        Ok(self.stop_entries(vec![entry]).await)
    }

    /// Stop every component, giving them until `drain` from now to handle what is queued;
    /// whatever is left then is dead-lettered and reported. New messages are refused with
    /// `shutting-down` from the start.
    pub async fn shutdown(&self, drain: Duration) -> ShutdownReport {
        self.inner.shutting_down.store(true, Ordering::Release);
        let deadline = Instant::now() + drain;
        let entries = self.inner.registry.all();
        for entry in &entries {
            let _ = entry.shared.drain_deadline.set(deadline);
        }
        self.stop_entries(entries).await
    }

    async fn stop_entries(&self, entries: Vec<Arc<Entry>>) -> ShutdownReport {
        let dead_before = self.inner.dead_letters.total();
        let delivered_before: u64 = entries
            .iter()
            .map(|e| e.shared.metrics.delivered.load(Ordering::Relaxed))
            .sum();
        for entry in &entries {
            // Queued behind what is already there, so those messages are handled first.
            // A send fails only if the actor has already ended, which is just as good.
            let _ = entry.mailbox.send(Envelope::Stop).await;
        }
        for entry in &entries {
            if let Some(task) = entry.take_task() {
                let _ = task.await;
            }
        }
        let delivered_after: u64 = entries
            .iter()
            .map(|e| e.shared.metrics.delivered.load(Ordering::Relaxed))
            .sum();
        let new_dead = (self.inner.dead_letters.total() - dead_before) as usize;
        let mut undelivered = self.inner.dead_letters.recent();
        let ids: Vec<ComponentId> = entries.iter().map(|e| e.shared.id.clone()).collect();
        undelivered = undelivered
            .split_off(undelivered.len().saturating_sub(new_dead))
            .into_iter()
            .filter(|letter| ids.contains(&letter.target))
            .collect();
        ShutdownReport {
            stopped: ids,
            delivered_while_draining: delivered_after - delivered_before,
            undelivered,
        }
    }

    /// Remove a component that has failed or stopped, so its id can be used again.
    pub async fn remove(&self, id: &str) -> Result<(), BrokerError> {
        self.stop(id).await.map(|_| ())
    }

    /// Send a fire-and-forget message from the host (sender [`HOST_SENDER`]).
    pub fn send(&self, target: &str, payload: Vec<u8>) -> Result<(), MessagingError> {
        self.send_as(&ComponentId::from(HOST_SENDER), target, payload)
    }

    /// Send a fire-and-forget message with a sender id of the integrator's choosing.
    /// The host is trusted: capabilities do not apply.
    pub fn send_as(
        &self,
        sender: &ComponentId,
        target: &str,
        payload: Vec<u8>,
    ) -> Result<(), MessagingError> {
        self.inner
            .route_message(sender, target, payload, None, None)
    }

    /// Send a message, waiting up to `wait` for room in a full mailbox instead of failing
    /// at once.
    pub async fn send_waiting(
        &self,
        target: &str,
        payload: Vec<u8>,
        wait: Duration,
    ) -> Result<(), MessagingError> {
        let inner = &self.inner;
        bump(&inner.counters.sent);
        let entry = match inner.check_target(target, payload.len(), None) {
            Ok(entry) => entry,
            Err(err) => return Err(inner.refused(None, err)),
        };
        let envelope = Envelope::Message {
            sender: ComponentId::from(HOST_SENDER),
            payload,
        };
        match tokio::time::timeout(wait, entry.mailbox.send(envelope)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(inner.refused(Some(&entry), closed_error(&entry))),
            Err(_) => Err(inner.refused(Some(&entry), MessagingError::MailboxFull(target.into()))),
        }
    }

    /// Send a request from the host and wait up to `timeout` for the reply.
    pub async fn request(
        &self,
        target: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, MessagingError> {
        let sender = ComponentId::from(HOST_SENDER);
        self.inner
            .route_request(&sender, target, payload, timeout, None)
            .await
    }

    /// Publish from the host to every subscriber of `topic`; returns how many it reached.
    pub fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<u32, MessagingError> {
        let sender = ComponentId::from(HOST_SENDER);
        self.inner.route_publish(&sender, topic, payload, None)
    }

    /// The most recent dead letters, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.dead_letters.recent()
    }

    /// The broker-wide accounting of every message sent so far.
    pub fn accounting(&self) -> Accounting {
        self.inner.counters.snapshot()
    }

    /// The state of a component, if it is registered.
    pub fn state(&self, id: &str) -> Option<ComponentState> {
        self.inner.registry.get(id).map(|e| e.shared.state())
    }

    /// The ids of every registered component, sorted.
    pub fn components(&self) -> Vec<ComponentId> {
        self.inner
            .registry
            .all()
            .into_iter()
            .map(|e| e.shared.id.clone())
            .collect()
    }

    /// A component's counters.
    pub fn metrics(&self, id: &str) -> Option<MetricsSnapshot> {
        self.inner.registry.get(id).map(|entry| snapshot(&entry))
    }

    /// Every component's counters, sorted by id.
    pub fn all_metrics(&self) -> Vec<MetricsSnapshot> {
        self.inner
            .registry
            .all()
            .iter()
            .map(|e| snapshot(e))
            .collect()
    }

    /// Wait until every mailbox is empty and no handler is running, or `timeout` passes.
    /// Returns whether the broker went quiet.
    pub async fn quiesce(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.accounting().in_flight() == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("components", &self.components())
            .field("accounting", &self.accounting())
            .finish()
    }
}

fn snapshot(entry: &Entry) -> MetricsSnapshot {
    let m = &entry.shared.metrics;
    MetricsSnapshot {
        id: entry.shared.id.clone(),
        state: entry.shared.state(),
        delivered: m.delivered.load(Ordering::Relaxed),
        failed: m.failed.load(Ordering::Relaxed),
        dead_lettered: m.dead_lettered.load(Ordering::Relaxed),
        refused: m.refused.load(Ordering::Relaxed),
        restarts: m.restarts.load(Ordering::Relaxed),
        mailbox_depth: entry.mailbox_depth(),
        latency: m.latency.summary(),
    }
}

fn closed_error(entry: &Entry) -> MessagingError {
    match entry.shared.state() {
        ComponentState::Failed(reason) => MessagingError::TargetCrashed(format!(
            "component `{}` failed: {reason}",
            entry.shared.id
        )),
        _ => MessagingError::TargetNotFound(entry.shared.id.to_string()),
    }
}

impl BrokerInner {
    /// Checks that apply to every send: shutdown, size, capability, existence, liveness.
    /// `allowed` is the sender's capability verdict, `None` for the host, which is trusted.
    fn check_target(
        &self,
        target: &str,
        payload_len: usize,
        allowed: Option<bool>,
    ) -> Result<Arc<Entry>, MessagingError> {
        self.check_target_cached(target, payload_len, allowed, None)
    }

    /// [`check_target`](Self::check_target), looking in `cache` before the registry and
    /// leaving the entry found there: a component that sends to the same target again and
    /// again (the common case) then skips the registry's lock and hash lookup.
    fn check_target_cached(
        &self,
        target: &str,
        payload_len: usize,
        allowed: Option<bool>,
        cache: Option<&RouteCache>,
    ) -> Result<Arc<Entry>, MessagingError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(MessagingError::ShuttingDown);
        }
        if payload_len > self.config.max_payload_bytes {
            return Err(MessagingError::PayloadTooLarge(
                self.config.max_payload_bytes as u64,
            ));
        }
        // The capability is checked before the registry, so a denied sender learns nothing
        // about which ids exist.
        if allowed == Some(false) {
            return Err(MessagingError::AccessDenied(target.to_string()));
        }
        if let Some(entry) = cache.and_then(|cache| cache.get(target)) {
            return Ok(entry);
        }
        let entry = self
            .registry
            .get(target)
            .ok_or_else(|| MessagingError::TargetNotFound(target.to_string()))?;
        if let Some(cache) = cache {
            cache.put(&entry);
        }
        if entry.shared.is_closed() {
            return Err(closed_error(&entry));
        }
        Ok(entry)
    }

    /// Count a refusal and hand the error back.
    fn refused(&self, entry: Option<&Entry>, err: MessagingError) -> MessagingError {
        bump(&self.counters.refused);
        if let Some(entry) = entry {
            bump(&entry.shared.metrics.refused);
        }
        err
    }

    fn route_message(
        &self,
        sender: &ComponentId,
        target: &str,
        payload: Vec<u8>,
        allowed: Option<bool>,
        cache: Option<&RouteCache>,
    ) -> Result<(), MessagingError> {
        bump(&self.counters.sent);
        let entry = match self.check_target_cached(target, payload.len(), allowed, cache) {
            Ok(entry) => entry,
            Err(err) => return Err(self.deny_or_refuse(sender, target, "send to", err)),
        };
        let envelope = Envelope::Message {
            sender: sender.clone(),
            payload,
        };
        match entry.mailbox.try_send(envelope) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(self.refused(
                Some(&entry),
                MessagingError::MailboxFull(target.to_string()),
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(self.refused(Some(&entry), closed_error(&entry)))
            }
        }
    }

    async fn route_request(
        &self,
        sender: &ComponentId,
        target: &str,
        payload: Vec<u8>,
        timeout: Duration,
        allowed: Option<bool>,
    ) -> Result<Vec<u8>, MessagingError> {
        bump(&self.counters.sent);
        let entry = match self.check_target(target, payload.len(), allowed) {
            Ok(entry) => entry,
            Err(err) => return Err(self.deny_or_refuse(sender, target, "request from", err)),
        };
        let (reply, answer) = oneshot::channel();
        let envelope = Envelope::Request {
            sender: sender.clone(),
            payload,
            reply,
            expires: Instant::now() + timeout,
        };
        match entry.mailbox.try_send(envelope) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(self.refused(
                    Some(&entry),
                    MessagingError::MailboxFull(target.to_string()),
                ));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(self.refused(Some(&entry), closed_error(&entry)));
            }
        }
        drop(entry);
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

    fn route_publish(
        &self,
        sender: &ComponentId,
        topic: &str,
        payload: Vec<u8>,
        allowed: Option<bool>,
    ) -> Result<u32, MessagingError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(MessagingError::ShuttingDown);
        }
        if allowed == Some(false) {
            tracing::warn!(%sender, topic, "access denied: publish");
            return Err(MessagingError::AccessDenied(topic.to_string()));
        }
        if payload.len() > self.config.max_payload_bytes {
            return Err(MessagingError::PayloadTooLarge(
                self.config.max_payload_bytes as u64,
            ));
        }
        let subscribers = self.registry.subscribers(topic);
        let mut reached = 0;
        let mut payload = Some(payload);
        let last = subscribers.len().saturating_sub(1);
        for (index, entry) in subscribers.iter().enumerate() {
            bump(&self.counters.sent);
            // The last subscriber takes the payload itself; the others get copies.
            let payload = if index == last {
                payload.take().unwrap_or_default()
            } else {
                payload.clone().unwrap_or_default()
            };
            if entry.shared.is_closed() {
                self.refused(Some(entry), closed_error(entry));
                continue;
            }
            let envelope = Envelope::Message {
                sender: sender.clone(),
                payload,
            };
            match entry.mailbox.try_send(envelope) {
                Ok(()) => reached += 1,
                Err(mpsc::error::TrySendError::Full(Envelope::Message { payload, .. })) => {
                    // The publisher learns only a count, so a subscriber it missed is kept
                    // on record rather than silently skipped.
                    bump(&self.counters.dead_lettered);
                    bump(&entry.shared.metrics.dead_lettered);
                    self.dead_letters.record(
                        sender.clone(),
                        entry.shared.id.clone(),
                        crate::dead_letter::MessageKind::Message,
                        &payload,
                        format!("publication on `{topic}`: mailbox full"),
                    );
                }
                Err(_) => {
                    self.refused(Some(entry), closed_error(entry));
                }
            }
        }
        Ok(reached)
    }

    /// Count a refusal, logging a denial with both ids.
    fn deny_or_refuse(
        &self,
        sender: &ComponentId,
        target: &str,
        action: &str,
        err: MessagingError,
    ) -> MessagingError {
        if matches!(err, MessagingError::AccessDenied(_)) {
            tracing::warn!(%sender, target, "access denied: {action}");
        }
        let entry = self.registry.get(target);
        self.refused(entry.as_deref(), err)
    }
}

/// The messaging of one spawned component: its capabilities and a way back to the broker.
struct ActorMessaging {
    broker: Weak<BrokerInner>,
    capabilities: Capabilities,
    last_target: RouteCache,
}

/// The entry a component last sent to. Only its own actor uses it, so the lock is never
/// contended.
type RouteCache = std::sync::Mutex<Option<Arc<Entry>>>;

trait CachedRoute {
    fn get(&self, target: &str) -> Option<Arc<Entry>>;
    fn put(&self, entry: &Arc<Entry>);
}

impl CachedRoute for RouteCache {
    fn get(&self, target: &str) -> Option<Arc<Entry>> {
        let cached = self.lock().unwrap_or_else(|e| e.into_inner());
        cached
            .as_ref()
            .filter(|entry| &*entry.shared.id == target && entry.shared.is_current())
            .cloned()
    }

    fn put(&self, entry: &Arc<Entry>) {
        *self.lock().unwrap_or_else(|e| e.into_inner()) = Some(entry.clone());
    }
}

impl ActorMessaging {
    fn broker(&self) -> Result<Arc<BrokerInner>, MessagingError> {
        self.broker.upgrade().ok_or(MessagingError::ShuttingDown)
    }
}

impl Messaging for ActorMessaging {
    fn send_message(
        &self,
        sender: &ComponentId,
        target: &str,
        message: Vec<u8>,
    ) -> Result<(), MessagingError> {
        let allowed = self.capabilities.may_send(target);
        self.broker()?.route_message(
            sender,
            target,
            message,
            Some(allowed),
            Some(&self.last_target),
        )
    }

    fn send_request(
        &self,
        sender: &ComponentId,
        target: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, MessagingError>> {
        let broker = self.broker();
        let allowed = self.capabilities.may_request(target);
        let sender = sender.clone();
        let target = target.to_string();
        Box::pin(async move {
            broker?
                .route_request(&sender, &target, request, timeout, Some(allowed))
                .await
        })
    }

    fn publish(
        &self,
        sender: &ComponentId,
        topic: &str,
        message: Vec<u8>,
    ) -> Result<u32, MessagingError> {
        let allowed = self.capabilities.may_publish(topic);
        self.broker()?
            .route_publish(sender, topic, message, Some(allowed))
    }
}
