//! The broker's public face: spawning and stopping components, the host's sends, and what
//! it reports. Routing lives in `routing`, requests in `request`, the guests' `messaging`
//! imports in `messaging`.

mod keyed;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_host_core::{Component, ComponentId, InstanceOptions, MessagingError, TraceContext};
use courier_host_store::Store;

use crate::actor::park_core;
use crate::config::BrokerConfig;
use crate::dead_letter::DeadLetter;
use crate::durable::{Durable, recover};
use crate::error::{BrokerError, SendError};
use crate::handle::ComponentHandle;
use crate::ids::{HOST_SENDER, check_id};
use crate::keyed::Keyed;
use crate::mailbox::Envelope;
use crate::messaging::ActorMessaging;
use crate::metrics::Accounting;
use crate::outbox::Outbox;
use crate::registry::{ActorShared, ComponentState, Entry, Insert};
use crate::remote::{Remote, RemoteAnswer, Served, served_of};
use crate::report::{MetricsSnapshot, ShutdownReport};
use crate::routing::{Access, Refused, Routed, Router};
use crate::spec::{ComponentSpec, MAX_MAILBOX_CAPACITY};
use crate::timers::{ActorTimers, TimerLimits, TimerWheel};
use crate::upgrade::{Upgraded, upgrade_registered};

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
/// let handle = broker.spawn(ComponentSpec::new("echo", echo)).await?;
///
/// broker.send("echo", b"fire and forget".to_vec())?;
/// let reply = broker.request("echo", b"hello".to_vec(), Duration::from_secs(1)).await?;
/// assert_eq!(reply, b"hello");
/// assert_eq!(handle.metrics().delivered, 2);
///
/// let report = broker.shutdown(Duration::from_secs(1)).await;
/// assert!(report.undelivered.is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Broker {
    inner: Arc<BrokerInner>,
}

/// A [`Broker`] held without keeping it alive: for what a broker itself holds (such as
/// its [`Remote`]), which would otherwise keep it alive in a cycle.
#[derive(Clone, Debug)]
pub struct WeakBroker {
    inner: Weak<BrokerInner>,
}

impl WeakBroker {
    /// The broker, if it is still there.
    pub fn upgrade(&self) -> Option<Broker> {
        self.inner.upgrade().map(|inner| Broker { inner })
    }
}

struct BrokerInner {
    engine: courier_host_core::Engine,
    /// The only strong reference: actors reach it weakly, so it goes with the broker.
    pub(crate) router: Arc<Router>,
    /// Whether [`keep_timer_armed`] runs for this broker; it starts with the first spawn,
    /// the first moment the broker is sure to be on a runtime.
    keepalive_started: AtomicBool,
    /// Whether the dead letters kept in the store were put in the record yet.
    dead_letters_restored: AtomicBool,
    /// The deadlines of every component's timers, and the one task that fires them.
    timer_wheel: Arc<TimerWheel>,
    /// The keyed components, which the router also holds (as what makes their keys).
    keyed: Arc<Keyed>,
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
            Some(inner) if !inner.router.is_shutting_down() => {}
            _ => return,
        }
    }
}

impl Broker {
    /// A broker with the default configuration.
    pub fn new(engine: courier_host_core::Engine) -> Broker {
        Broker::with_config(engine, BrokerConfig::default())
    }

    /// A broker with the given configuration.
    pub fn with_config(engine: courier_host_core::Engine, config: BrokerConfig) -> Broker {
        let keyed = Arc::new(Keyed::default());
        Broker {
            inner: Arc::new(BrokerInner {
                engine,
                router: Router::new(config, keyed.clone()),
                keyed,
                keepalive_started: AtomicBool::new(false),
                dead_letters_restored: AtomicBool::new(false),
                timer_wheel: TimerWheel::new(),
            }),
        }
    }

    /// A handle that does not keep the broker alive.
    pub fn downgrade(&self) -> WeakBroker {
        WeakBroker {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// The engine components run on.
    pub fn engine(&self) -> &courier_host_core::Engine {
        &self.inner.engine
    }

    pub(crate) fn router(&self) -> &Router {
        &self.inner.router
    }

    pub(crate) fn router_weak(&self) -> Weak<Router> {
        Arc::downgrade(&self.inner.router)
    }

    pub(crate) fn keyed(&self) -> &Keyed {
        &self.inner.keyed
    }

    pub(crate) fn timer_wheel(&self) -> Arc<TimerWheel> {
        self.inner.timer_wheel.clone()
    }

    /// Instantiate the component and start its actor on the current tokio runtime.
    /// Refuses an id already in use, an id [`check_id`] refuses, and capability patterns
    /// that would not mean what they say.
    pub async fn spawn(&self, spec: ComponentSpec) -> Result<ComponentHandle, BrokerError> {
        let router = self.router();
        if router.is_shutting_down() {
            return Err(BrokerError::ShuttingDown);
        }
        let ComponentSpec {
            id,
            component,
            capabilities,
            exposure,
            mailbox_capacity,
            mailbox_bytes,
            deadline,
            memory_limit,
            fuel,
            max_state_bytes,
            supervision,
            max_timers,
            durable,
            keyed,
        } = spec;
        if keyed.is_some() {
            return Err(BrokerError::InvalidSpec {
                component: id,
                field: "keyed",
                reason: "is set: a keyed component is registered with `Broker::spawn_keyed`".into(),
            });
        }
        if self.keyed().contains(&id) {
            return Err(BrokerError::DuplicateId(id));
        }
        check_id(&id).map_err(|reason| BrokerError::InvalidId {
            id: id.to_string(),
            reason,
        })?;
        capabilities
            .validate()
            .map_err(|(list, error)| BrokerError::InvalidPattern {
                component: id.clone(),
                list,
                error,
            })?;
        if mailbox_capacity > MAX_MAILBOX_CAPACITY {
            return Err(BrokerError::InvalidSpec {
                component: id,
                field: "mailbox_capacity",
                reason: format!(
                    "of {mailbox_capacity} messages is over the most a mailbox may hold, {MAX_MAILBOX_CAPACITY}"
                ),
            });
        }
        if router.registry.contains(&id) {
            return Err(BrokerError::DuplicateId(id));
        }
        let store = match durable {
            true => Some(durable_store(
                &id,
                router.config.store.as_ref(),
                exposure,
                &capabilities,
            )?),
            false => None,
        };
        let (state, recovered, unsent) = match &store {
            Some(store) => recover(&**store, &id)
                .await
                .map_err(|source| BrokerError::Store {
                    component: id.clone(),
                    source,
                })?,
            None => (None, Vec::new(), Vec::new()),
        };
        if let Some(store) = &store {
            self.restore_dead_letters(store).await;
        }
        let mut limits = TimerLimits {
            max_timers,
            max_name_bytes: crate::ids::MAX_NAME_BYTES,
            max_payload_bytes: router.config.max_payload_bytes,
        };
        let stored_timers = match &store {
            Some(store) => {
                // Within what the store keeps, so that no commit of it is refused for a
                // timer the component was allowed to schedule.
                limits.max_timers = limits.max_timers.min(
                    u32::try_from(courier_host_store::limits::MAX_TIMERS_PER_ACTOR)
                        .unwrap_or(u32::MAX),
                );
                limits.max_payload_bytes = limits
                    .max_payload_bytes
                    .min(courier_host_store::limits::MAX_PAYLOAD_BYTES);
                store
                    .timers(&id)
                    .await
                    .map_err(|source| BrokerError::Store {
                        component: id.clone(),
                        source,
                    })?
            }
            None => Vec::new(),
        };
        let timers = ActorTimers::new(id.clone(), limits, self.inner.timer_wheel.clone());
        if store.is_some() {
            timers.keep_in_store();
        }
        let mut shared = ActorShared::new(
            id.clone(),
            capabilities.clone(),
            exposure,
            mailbox_bytes,
            component.clone(),
            timers.clone(),
        );
        shared.telemetry = self.router().config.telemetry.clone();
        let recovered_count = recovered.len() as u64;
        let recovered_bytes: u64 = recovered.iter().map(|e| e.payload().len() as u64).sum();
        // A publication is counted once per subscriber when it is fanned out, not here.
        let unsent_count = unsent
            .iter()
            .filter(|entry| entry.kind == courier_host_store::Kind::Message)
            .count() as u64;
        let outbox = store
            .as_ref()
            .map(|_| Arc::new(Outbox::new(id.clone(), unsent)));
        shared.durable = store.map(|store| {
            let outbox = outbox.clone().expect("made for every durable component");
            Durable::new(store, recovered, outbox)
        });
        let shared = Arc::new(shared);
        let messaging = Arc::new(ActorMessaging::new(
            &self.inner.router,
            capabilities,
            outbox.clone(),
        ));
        let mut options = InstanceOptions::new(id.clone())
            .deadline(deadline)
            .max_state_bytes(max_state_bytes)
            .messaging(messaging)
            .timers(timers);
        if let Some(bytes) = memory_limit {
            options = options.memory_limit(bytes);
        }
        if let Some(fuel) = fuel {
            options = options.fuel(fuel);
        }
        let mut instance = component.instantiate(options.clone()).await?;
        if let Some(state) = &state {
            load_committed_state(&id, &mut instance, state).await?;
        }

        park_core(
            &shared,
            router.counters.clone(),
            router.dead_letters.clone(),
            component,
            options,
            supervision,
            instance,
            state.map(Vec::from),
        );
        let entry = Arc::new(Entry::new(
            shared.clone(),
            router.counters.clone(),
            mailbox_capacity,
            tokio::runtime::Handle::current(),
        ));
        let doorbell: Arc<dyn crate::timers::Doorbell> = entry.clone();
        shared.timers.ring_at(Arc::downgrade(&doorbell));
        // Recovered messages were accepted in an earlier run and counted there: here they
        // are sent anew, queued (and charged to the budgets) like any message before anyone
        // can reach the actor, which takes them first.
        // So are the messages its outbox had not delivered: they are sent again.
        let charge_recovered = |apply: fn(&std::sync::atomic::AtomicU64, u64)| {
            if unsent_count > 0 {
                apply(&router.counters.sent, unsent_count);
            }
            if recovered_count > 0 {
                apply(&router.counters.sent, recovered_count);
                apply(&shared.queued.messages, recovered_count);
                apply(&shared.queued.bytes, recovered_bytes);
                apply(&router.counters.queued_bytes, recovered_bytes);
            }
        };
        charge_recovered(|counter, n| {
            counter.fetch_add(n, Ordering::Relaxed);
        });
        let refused = match router
            .registry
            .insert(entry.clone(), || router.is_shutting_down())
        {
            Insert::Done => None,
            Insert::Taken => Some(BrokerError::DuplicateId(id.clone())),
            // Shutdown began while the instance was being made: it must not start.
            Insert::Closed => Some(BrokerError::ShuttingDown),
        };
        if let Some(err) = refused {
            charge_recovered(|counter, n| {
                counter.fetch_sub(n, Ordering::Relaxed);
            });
            return Err(err);
        }
        if recovered_count > 0 {
            tracing::info!(component = %id, messages = recovered_count, "recovered stored messages");
            entry.start();
        }
        // Armed only once the component can take their firings: one already due rings now.
        if !stored_timers.is_empty() {
            tracing::info!(component = %id, timers = stored_timers.len(), "recovered stored timers");
            shared.timers.restore(stored_timers);
        }
        if let Some(durable) = &shared.durable {
            if durable.outbox.is_pending() {
                tracing::info!(component = %id, "sending again what its outbox had not delivered");
            }
            tokio::spawn(crate::dispatch::dispatch(
                Arc::downgrade(&self.inner.router),
                Arc::downgrade(&shared),
                durable.outbox.clone(),
                durable.store.clone(),
            ));
        }
        if !self.inner.keepalive_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(keep_timer_armed(Arc::downgrade(&self.inner)));
        }
        if let Some(remote) = router.remote.get()
            && let Some(served) = served_of(&shared)
            && let Err(reason) = remote.serve(served).await
        {
            // It ran for a moment; whatever reached it meanwhile is handled or accounted.
            let _ = self.router().stop_instance(&shared).await;
            return Err(BrokerError::Remote {
                component: id,
                reason,
            });
        }
        tracing::info!(component = %id, "spawned");
        Ok(ComponentHandle::new(shared, self.router_weak()))
    }

    /// Stop a component: it handles what is already in its mailbox, then ends and is
    /// removed. Messages sent to it afterwards get `target-not-found`. A durable component's
    /// state, stored messages and timers stay in the store for its next spawn.
    ///
    /// A keyed component stops with every active key, and no key is made from then on; it
    /// can be spawned again under its id.
    pub async fn stop(&self, id: &str) -> Result<ShutdownReport, BrokerError> {
        if let Some(report) = self.stop_keyed(id).await {
            return Ok(report);
        }
        let entry = self
            .router()
            .registry
            .remove(id)
            .ok_or_else(|| BrokerError::NotFound(id.into()))?;
        let entries = vec![entry];
        let before = self.router().before_stopping(&entries);
        Ok(self.router().stop_entries(entries, before).await)
    }

    /// Stop every component, giving them until `drain` from now to handle what is queued;
    /// whatever is left then is dead-lettered and reported. New messages are refused with
    /// `shutting-down` from the start.
    pub async fn shutdown(&self, drain: Duration) -> ShutdownReport {
        let router = self.router();
        router.shutting_down.store(true, Ordering::Release);
        let deadline = Instant::now() + drain;
        let entries = router.registry.all();
        // Counted before the drain deadline is set: from then on an actor may dead-letter
        // what is left, and the report must list it.
        let before = self.router().before_stopping(&entries);
        for entry in &entries {
            entry.shared.drain_by(deadline);
        }
        self.router().stop_entries(entries, before).await
    }

    /// Replace the running component `id` with `component`, a new version of it, without
    /// losing or reordering a message: the handler in flight finishes, then the next
    /// message is handled by an instance of the new version. Its id, mailbox, metrics and
    /// supervision stay; a restart after a trap makes an instance of the new version.
    ///
    /// The new instance is made while the old one still exists, so the engine's pool needs
    /// a free slot for it. If it cannot be made (no slot, its memory over the component's
    /// cap, a trap while it starts), the old version keeps serving and the error says why.
    /// If the running instance traps in `save-state`, the old version keeps serving from a
    /// fresh instance holding its last checkpoint ([`Supervision::checkpoint`]), or from a
    /// fresh one with no state if none was saved, and the error says which.
    ///
    /// [`Supervision::checkpoint`]: crate::Supervision::checkpoint
    ///
    /// ```no_run
    /// # async fn run(broker: courier_host_broker::Broker) -> Result<(), Box<dyn std::error::Error>> {
    /// let next = broker.engine().load_component_file("pong", "target/guests/pong.wasm")?;
    /// let upgraded = broker.upgrade("pong", next).await?;
    /// println!("pong: {} -> {} in {:?}", upgraded.previous, upgraded.version, upgraded.took);
    /// # Ok(()) }
    /// ```
    pub async fn upgrade(&self, id: &str, component: Component) -> Result<Upgraded, BrokerError> {
        if let Some(template) = self.keyed().template(id) {
            return self.upgrade_keys(&template, component).await;
        }
        upgrade_registered(&self.router().registry, id, component).await
    }

    /// Remove a component: [`stop`](Self::stop) it if it is running, and end what would
    /// outlive a stop. A durable component's timers are forgotten in the store, so a spawn
    /// on the same store starts with none (its state and stored messages stay, as after a
    /// stop); [`stop`](Self::stop) keeps them for the next spawn. A durable component that
    /// was stopped is removed the same way: its stored timers are forgotten. An id that is
    /// neither running nor has timers stored is [`NotFound`](BrokerError::NotFound).
    pub async fn remove(&self, id: &str) -> Result<(), BrokerError> {
        let store = match self.router().registry.remove(id) {
            Some(entry) => {
                let store = entry.shared.durable.as_ref().map(|d| d.store.clone());
                let entries = vec![entry];
                let before = self.router().before_stopping(&entries);
                self.router().stop_entries(entries, before).await;
                store
            }
            None => Some(self.stopped_durable(id).await?),
        };
        if let Some(store) = store {
            crate::timers::forget_stored(&*store, id)
                .await
                .map_err(|source| BrokerError::Store {
                    component: id.into(),
                    source,
                })?;
        }
        Ok(())
    }

    /// The store of `id`, a component that is not running, if it has timers stored there
    /// (a durable component that was stopped); otherwise `id` is not found.
    async fn stopped_durable(&self, id: &str) -> Result<Arc<dyn Store>, BrokerError> {
        let not_found = || BrokerError::NotFound(id.into());
        let store = self.router().config.store.clone().ok_or_else(not_found)?;
        let timers = store
            .timers(id)
            .await
            .map_err(|source| BrokerError::Store {
                component: id.into(),
                source,
            })?;
        match timers.is_empty() {
            true => Err(not_found()),
            false => Ok(store),
        }
    }

    /// Send a fire-and-forget message from the host (sender [`HOST_SENDER`]). A message
    /// the broker does not queue comes back in the error, so the caller can retry it.
    ///
    /// A durable component ([`ComponentSpec::durable`]) takes a message only once it is
    /// stored, which this call does not wait for: it is refused with `target-crashed`, whose
    /// text starts with `storage:` and points to [`send_durable`](Self::send_durable).
    ///
    /// The payload is anything that becomes [`Bytes`] (a `Vec<u8>`, a `String`, `Bytes`
    /// itself) without a copy: it is copied once, into the target's memory.
    pub fn send(&self, target: &str, payload: impl Into<Bytes>) -> Result<(), SendError> {
        self.send_as(&ComponentId::from(HOST_SENDER), target, payload)
    }

    /// Send a fire-and-forget message with a sender id of the integrator's choosing.
    /// The host is trusted: capabilities do not apply.
    pub fn send_as(
        &self,
        sender: &ComponentId,
        target: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        let envelope = Envelope::message(sender.clone(), payload.into());
        self.router()
            .route(target, envelope, Access::Host, None)
            .map_err(SendError::from)
    }

    /// Send a message, waiting up to `wait` for room in a full mailbox instead of failing
    /// at once. A message not queued by then comes back in the error. A message to a
    /// durable component is queued once it is stored, as with
    /// [`send_durable`](Self::send_durable).
    pub async fn send_waiting(
        &self,
        target: &str,
        payload: impl Into<Bytes>,
        wait: Duration,
    ) -> Result<(), SendError> {
        let envelope = Envelope::message(ComponentId::from(HOST_SENDER), payload.into());
        let router = &self.inner.router;
        if router
            .registry
            .get(target)
            .is_some_and(|entry| entry.shared.durable.is_some())
            || self.keyed().is_durable_key(target)
        {
            return Self::stored(router.route_or_store(
                target,
                envelope,
                Access::Host,
                None,
                Some(wait),
            ))
            .await;
        }
        router
            .route_waiting(target, envelope, wait)
            .await
            .map_err(SendError::from)
    }

    /// Send a fire-and-forget message from the host to any component, durable or not: to a
    /// durable one ([`ComponentSpec::durable`]) it resolves once the message is stored, so
    /// `Ok` means a crash from then on does not lose it (the store groups the messages that
    /// arrive while it commits into one transaction, so concurrent sends share an fsync). To
    /// another component it is [`send`](Self::send). A store that fails (a full disk, say)
    /// refuses the message with `target-crashed`, whose text starts with `storage:` and names
    /// the store's file; nothing was stored.
    pub async fn send_durable(
        &self,
        target: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        self.send_durable_traced(target, payload, None).await
    }

    /// [`send_durable`](Self::send_durable) in the trace `trace` names (the context of the
    /// caller's span, an HTTP client's, say): the target's handler call is its child.
    pub async fn send_durable_traced(
        &self,
        target: &str,
        payload: impl Into<Bytes>,
        trace: Option<TraceContext>,
    ) -> Result<(), SendError> {
        let envelope = Envelope::traced(ComponentId::from(HOST_SENDER), payload.into(), trace);
        Self::stored(
            self.inner
                .router
                .route_or_store(target, envelope, Access::Host, None, None),
        )
        .await
    }

    /// The answer of a message routed by [`Router::route_or_store`].
    async fn stored(routed: Result<Routed, Refused>) -> Result<(), SendError> {
        match routed.map_err(SendError::from)? {
            Routed::Queued => Ok(()),
            Routed::Storing(storing) => storing.await.map_err(SendError::from),
        }
    }

    /// Send a request from the host and wait up to `timeout` for the reply.
    pub async fn request(
        &self,
        target: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Vec<u8>, MessagingError> {
        self.request_traced(target, payload, timeout, None).await
    }

    /// [`request`](Self::request) in the trace `trace` names (the context of the caller's
    /// span): the target's handler call is its child, and so on down whatever it asks.
    pub async fn request_traced(
        &self,
        target: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
        trace: Option<TraceContext>,
    ) -> Result<Vec<u8>, MessagingError> {
        let sender = ComponentId::from(HOST_SENDER);
        self.router()
            .request(
                &sender,
                target,
                payload.into(),
                timeout,
                Access::Host,
                trace,
            )
            .await
    }

    /// Publish from the host to every subscriber of `topic`; returns how many it reached.
    pub fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<u32, MessagingError> {
        self.publish_traced(topic, payload, None)
    }

    /// [`publish`](Self::publish) in the trace `trace` names.
    pub fn publish_traced(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        trace: Option<TraceContext>,
    ) -> Result<u32, MessagingError> {
        let sender = ComponentId::from(HOST_SENDER);
        self.router()
            .publish(&sender, topic, payload.into(), Access::Host, trace)
    }

    /// Attach the way to other hosts: from now on a target not registered here goes to
    /// `remote`, and every component spawned is offered to it ([`Remote::serve`]), as are
    /// the ones already running, which this returns for the remote to serve.
    ///
    /// A broker has at most one remote; a second is refused and handed back.
    pub fn attach_remote(&self, remote: Arc<dyn Remote>) -> Result<Vec<Served>, Arc<dyn Remote>> {
        self.router().remote.set(remote)?;
        let mut served: Vec<Served> = self
            .router()
            .registry
            .all()
            .iter()
            .filter_map(|entry| served_of(&entry.shared))
            .collect();
        served.extend(self.keyed().served());
        Ok(served)
    }

    /// Detach `remote`, if it is the one attached: from now on a target not registered here
    /// is `target-not-found` again, and another remote may be attached. Returns whether it
    /// was attached. What `remote` still carries is its own to end.
    pub fn detach_remote(&self, remote: &Arc<dyn Remote>) -> bool {
        self.router().remote.take_if(remote)
    }

    /// Queue a message that came from another host for `target`, as
    /// [`accept_message`](Self::accept_message) does, and for a durable target once its
    /// store holds it: the answer is what the serving host may acknowledge, so an
    /// acknowledged message survives this host's crash. `durable_seq` is the sequence number
    /// a durable sender gave it ([`RemoteMessage::durable_seq`](crate::RemoteMessage::durable_seq)): a durable target that
    /// already holds that sender's message of this number (or a later one) answers `Ok`
    /// without keeping it again. A store that refuses it is `target-crashed("storage: …")`.
    /// `trace` is the context its sender's span sent it in, if any.
    pub async fn accept_message_stored(
        &self,
        sender: ComponentId,
        target: &str,
        payload: impl Into<Bytes>,
        durable_seq: Option<u64>,
        trace: Option<TraceContext>,
    ) -> Result<(), MessagingError> {
        self.inner
            .router
            .clone()
            .accept_message_stored(sender, target, payload.into(), durable_seq, trace)
            .await
    }

    /// Queue a message that came from another host for `target`, with the sender id its
    /// host stamped. Refused (and counted so) like a local send, and with
    /// `target-not-found` for a component that is not exposed to other hosts. A durable
    /// target takes a message only once it is stored, which this cannot wait for: it is
    /// refused, pointing to [`accept_message_stored`](Self::accept_message_stored).
    /// `trace` is the context its sender's span sent it in, if any.
    pub fn accept_message(
        &self,
        sender: ComponentId,
        target: &str,
        payload: impl Into<Bytes>,
        trace: Option<TraceContext>,
    ) -> Result<(), MessagingError> {
        self.router()
            .accept_message(sender, target, payload.into(), trace)
    }

    /// Queue a request that came from another host for `target`, whose sender waits at most
    /// `timeout`; the returned future is its answer. A request still queued when `timeout`
    /// has passed is dead-lettered, not handled.
    pub fn accept_request(
        &self,
        sender: ComponentId,
        target: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
        trace: Option<TraceContext>,
    ) -> Result<RemoteAnswer, MessagingError> {
        self.router()
            .accept_request(sender, target, payload.into(), timeout, trace)
    }

    /// Deliver a publication that came from another host to this host's subscribers of
    /// `topic`; returns how many it reached. Each copy counts as arrived here.
    pub fn accept_publication(
        &self,
        sender: &ComponentId,
        topic: &str,
        payload: impl Into<Bytes>,
        trace: Option<TraceContext>,
    ) -> u32 {
        self.router()
            .accept_publication(sender, topic, payload.into(), trace)
    }

    /// The most recent dead letters, oldest first. Those of durable components are kept in
    /// the store too, and listed again after a restart once a durable component is spawned
    /// on the same store (ahead of those of this run, within the record's capacity).
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.router().dead_letters.recent()
    }

    /// Put the dead letters `store` kept from earlier runs in the record, once per broker.
    async fn restore_dead_letters(&self, store: &Arc<dyn Store>) {
        if self
            .inner
            .dead_letters_restored
            .swap(true, Ordering::AcqRel)
        {
            return;
        }
        match crate::dead_letter::kept(&**store).await {
            Ok(kept) => self.router().dead_letters.restore(kept),
            Err(err) => {
                tracing::warn!(error = %err, "the dead letters kept in the store could not be read; they are not listed");
            }
        }
    }

    /// What the store of durable components holds and how its commits go, if the broker
    /// has one ([`BrokerConfig::store`]).
    pub fn store_stats(&self) -> Option<courier_host_store::StoreStats> {
        self.router()
            .config
            .store
            .as_ref()
            .map(|store| store.stats())
    }

    /// The broker-wide accounting of every message sent so far.
    pub fn accounting(&self) -> Accounting {
        self.router().counters.snapshot()
    }

    /// The component `id` runs now (the one it was spawned with, or the last it was
    /// upgraded to), if it is registered: what a restart of it should start from.
    pub fn running_component(&self, id: &str) -> Option<courier_host_core::Component> {
        Some(self.router().registry.get(id)?.shared.component())
    }

    /// The state of a component, if it is registered.
    pub fn state(&self, id: &str) -> Option<ComponentState> {
        self.router().registry.get(id).map(|e| e.shared.state())
    }

    /// The ids of every registered component, sorted.
    pub fn components(&self) -> Vec<ComponentId> {
        self.router()
            .registry
            .all()
            .into_iter()
            .map(|e| e.shared.id.clone())
            .collect()
    }

    /// A component's counters.
    pub fn metrics(&self, id: &str) -> Option<MetricsSnapshot> {
        let entry = self.router().registry.get(id)?;
        Some(MetricsSnapshot::of(&entry.shared, entry.mailbox_depth()))
    }

    /// Every component's counters, sorted by id. Keys of keyed components are left out:
    /// they come and go, and [`keyed_metrics`](Self::keyed_metrics) sums them per component.
    pub fn all_metrics(&self) -> Vec<MetricsSnapshot> {
        self.router()
            .registry
            .all()
            .iter()
            .filter(|e| e.shared.keyed.is_none())
            .map(|e| MetricsSnapshot::of(&e.shared, e.mailbox_depth()))
            .collect()
    }

    /// Wait until every mailbox is empty, no handler is running and every durable
    /// component's outbox is sent, or `timeout` passes. Returns whether the broker went
    /// quiet.
    pub async fn quiesce(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.accounting().in_flight() == 0 && !self.outboxes_pending() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Whether a durable component's outbox still holds something to send.
    fn outboxes_pending(&self) -> bool {
        self.router().registry.all().iter().any(|entry| {
            entry
                .shared
                .durable
                .as_ref()
                .is_some_and(|durable| durable.outbox.is_pending())
        })
    }
}

/// The store a durable component `id` is kept in, or why it cannot be durable: no store, or
/// a spec that would take messages the store does not keep yet.
pub(crate) fn durable_store(
    id: &ComponentId,
    store: Option<&Arc<dyn Store>>,
    exposure: crate::exposure::Exposure,
    capabilities: &crate::capabilities::Capabilities,
) -> Result<Arc<dyn Store>, BrokerError> {
    let invalid = |reason: &str| BrokerError::InvalidSpec {
        component: id.clone(),
        field: "durable",
        reason: reason.to_string(),
    };
    let Some(store) = store else {
        return Err(invalid(
            "is set, but the broker has no store to keep it in (`BrokerConfig::store`)",
        ));
    };
    if exposure == crate::exposure::Exposure::Replicated {
        return Err(invalid(
            "is set with replicas: each replica keeps its own store, so a durable sender's message sent again could reach another replica, which could not tell it was a copy; expose a durable component to other hosts with one host serving it",
        ));
    }
    if !capabilities.subscribe_patterns().is_empty() {
        return Err(invalid(
            "is set with `subscribe`: publications are not stored yet, so a durable component subscribes to no topic",
        ));
    }
    Ok(store.clone())
}

/// Load the state a durable component last committed into its new `instance`. A state it
/// cannot take is an error, never a silent fresh start: the stored messages after it would
/// be handled on the wrong state.
async fn load_committed_state(
    id: &ComponentId,
    instance: &mut courier_host_core::Instance,
    state: &[u8],
) -> Result<(), BrokerError> {
    let recovery = |reason: String| BrokerError::Recovery {
        component: id.clone(),
        reason,
    };
    if !instance.keeps_state() {
        return Err(recovery(format!(
            "the store holds a state of {} bytes for it, but it exports no `state` interface to load it",
            state.len()
        )));
    }
    match instance.load_state(state).await {
        Ok(Ok(())) => {
            tracing::info!(component = %id, bytes = state.len(), "loaded its committed state");
            Ok(())
        }
        Ok(Err(refusal)) => Err(recovery(format!(
            "its `load-state` refused its committed state of {} bytes: {refusal:?}",
            state.len()
        ))),
        Err(err) => Err(recovery(format!(
            "its `load-state` trapped on its committed state of {} bytes: {err}",
            state.len()
        ))),
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
