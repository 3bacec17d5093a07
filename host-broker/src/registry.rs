//! The registry: component ids to their mailboxes and shared state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use courier_host_core::guest_log::LineBudget;
use courier_host_core::{Component, ComponentId};
use tokio::sync::mpsc::error::{SendError, TrySendError};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::actor::Actor;
use crate::capabilities::Capabilities;
use crate::exposure::Exposure;
use crate::handoff::HandOff;
use crate::mailbox::Envelope;
use crate::metrics::{BrokerCounters, Histogram, Metrics};
use crate::timers::{ActorTimers, Doorbell, Ring};
use crate::upgrade::UpgradeOrder;

/// Where a component is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentState {
    /// Handling messages.
    Running,
    /// Its instance trapped; a fresh one is being created. Messages queue meanwhile.
    Restarting,
    /// Stopped by the host, or ended normally under a policy that does not restart it.
    Stopped(String),
    /// Restarted too often, or trapped under a policy that does not restart: messages to
    /// it are refused with `target-crashed`.
    Failed(String),
}

impl ComponentState {
    /// `running`, `restarting`, `stopped` or `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            ComponentState::Running => "running",
            ComponentState::Restarting => "restarting",
            ComponentState::Stopped(_) => "stopped",
            ComponentState::Failed(_) => "failed",
        }
    }
}

/// The counts of what is in a mailbox, on a cache line of their own: every sender updates
/// them, and sharing a line with what the actor updates per message (its metrics) or what
/// senders only read would make every message move that line between cores.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Queued {
    /// Messages routed to the mailbox and not yet handled (taken from it in a batch that is
    /// not done yet counts as not handled). A request is handed off only at zero, so it
    /// cannot overtake anything its sender sent before.
    pub(crate) messages: AtomicU64,
    /// Payload bytes in the mailbox, and taken from it but not yet handled.
    pub(crate) bytes: AtomicU64,
}

/// What the actor task and the senders share about one component.
pub(crate) struct ActorShared {
    pub(crate) id: ComponentId,
    pub(crate) capabilities: Capabilities,
    /// Whether other hosts may reach it.
    pub(crate) exposure: Exposure,
    pub(crate) metrics: Metrics,
    /// What is in its mailbox, which every sender updates.
    pub(crate) queued: Queued,
    /// The most payload bytes its mailbox may hold.
    pub(crate) mailbox_bytes: u64,
    /// What its handlers' failures may write to the host's log.
    pub(crate) log_budget: LineBudget,
    state: Mutex<ComponentState>,
    /// Set once the component stops taking messages, so senders need not take the lock.
    closed: AtomicBool,
    /// Set when the component is removed from the registry, so senders that cached its
    /// entry look it up again.
    retired: AtomicBool,
    /// Set while an upgrade waits for the actor, which looks before each message.
    pub(crate) upgrade_pending: AtomicBool,
    /// Its timers, which outlive its instances and end with it.
    pub(crate) timers: Arc<ActorTimers>,
    /// The store it is kept in, if it is durable.
    pub(crate) durable: Option<crate::durable::Durable>,
    /// Its keyed component, if it is a key of one.
    pub(crate) keyed: Option<KeyOf>,
    /// Where its handler calls' spans go, if the broker records any.
    pub(crate) telemetry: Option<crate::telemetry::Telemetry>,
    /// Where its core waits while the actor is idle, for a request to borrow.
    pub(crate) handoff: HandOff,
    /// Set by the first request for it, after which the actor leaves its core at the
    /// hand-off point whenever it is idle (it does from its spawn until its first message).
    pub(crate) requested: AtomicBool,
    upgrade: Mutex<Option<UpgradeOrder>>,
    /// The component it runs: the one it was spawned with, or the last it was upgraded to.
    component: Mutex<Component>,
    /// During shutdown, when the actor must stop handling and dead-letter the rest.
    drain_deadline: OnceLock<Instant>,
    /// Wakes an actor waiting in a handler call or a restart backoff when the drain
    /// deadline is set, so it can watch for it.
    draining: Notify,
}

/// What an active key's shared state holds of its keyed component: when it was last used,
/// for the component's LRU and idle sweep, and what its instance waits for before it is
/// made.
pub(crate) struct KeyOf {
    /// Its keyed component's epoch: `last_used` counts microseconds from it.
    epoch: Instant,
    /// Microseconds from the epoch to the last send to it.
    last_used: AtomicU64,
    /// When its entry was made.
    made: Instant,
    /// The actor of the same key that was being put away when this one was made; its
    /// instance is made only once that one has ended (closed when it has).
    predecessor: Mutex<Option<watch::Receiver<()>>>,
    /// Its keyed component's activation latencies, which its instance's making records.
    activation_latency: Arc<Histogram>,
}

impl KeyOf {
    pub(crate) fn new(
        epoch: Instant,
        activation_latency: Arc<Histogram>,
        predecessor: Option<watch::Receiver<()>>,
    ) -> KeyOf {
        KeyOf {
            last_used: AtomicU64::new(epoch.elapsed().as_micros() as u64),
            epoch,
            made: Instant::now(),
            predecessor: Mutex::new(predecessor),
            activation_latency,
        }
    }

    /// Mark it used now, for the LRU and the idle sweep: a relaxed store per send.
    pub(crate) fn touch(&self) {
        let now = self.epoch.elapsed().as_micros() as u64;
        self.last_used.store(now, Ordering::Relaxed);
    }

    /// Microseconds from its component's epoch to its last use.
    pub(crate) fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// The predecessor it still has to wait for, taken: whoever takes it waits.
    pub(crate) fn take_predecessor(&self) -> Option<watch::Receiver<()>> {
        self.predecessor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Record that its instance is ready, from when its entry was made.
    pub(crate) fn activated(&self) {
        self.activation_latency.record(self.made.elapsed());
    }
}

/// Count `messages` out of a mailbox's queued messages and give back their `len` bytes of
/// its budget and the broker's: they are handled, or were never let in.
pub(crate) fn release(shared: &ActorShared, counters: &BrokerCounters, messages: u64, len: u64) {
    if messages > 0 {
        // Release: whoever sees the count drop sees what handling them did.
        shared
            .queued
            .messages
            .fetch_sub(messages, Ordering::Release);
    }
    if len > 0 {
        shared.queued.bytes.fetch_sub(len, Ordering::Relaxed);
        counters.queued_bytes.fetch_sub(len, Ordering::Relaxed);
    }
}

impl ActorShared {
    pub(crate) fn new(
        id: ComponentId,
        capabilities: Capabilities,
        exposure: Exposure,
        mailbox_bytes: u64,
        component: Component,
        timers: Arc<ActorTimers>,
    ) -> Self {
        ActorShared {
            timers,
            durable: None,
            keyed: None,
            telemetry: None,
            upgrade_pending: AtomicBool::new(false),
            upgrade: Mutex::new(None),
            component: Mutex::new(component),
            id,
            capabilities,
            exposure,
            metrics: Metrics::new(),
            queued: Queued::default(),
            handoff: HandOff::default(),
            requested: AtomicBool::new(false),
            mailbox_bytes,
            log_budget: LineBudget::default(),
            state: Mutex::new(ComponentState::Running),
            closed: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            drain_deadline: OnceLock::new(),
            draining: Notify::new(),
        }
    }

    /// Leave an upgrade for the actor; refused (and handed back) while another waits.
    pub(crate) fn order_upgrade(&self, order: UpgradeOrder) -> Result<(), UpgradeOrder> {
        let mut slot = self.upgrade.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return Err(order);
        }
        *slot = Some(order);
        self.upgrade_pending.store(true, Ordering::Release);
        Ok(())
    }

    pub(crate) fn take_upgrade_order(&self) -> Option<UpgradeOrder> {
        let mut slot = self.upgrade.lock().unwrap_or_else(|e| e.into_inner());
        self.upgrade_pending.store(false, Ordering::Release);
        slot.take()
    }

    /// The component it runs now.
    pub(crate) fn component(&self) -> Component {
        self.component
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_component(&self, component: Component) {
        *self.component.lock().unwrap_or_else(|e| e.into_inner()) = component;
    }

    pub(crate) fn state(&self) -> ComponentState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_state(&self, state: ComponentState) {
        let closed = matches!(
            state,
            ComponentState::Stopped(_) | ComponentState::Failed(_)
        );
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
        if closed {
            self.closed.store(true, Ordering::Release);
        }
    }

    /// Whether the component has stopped taking messages.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn retire(&self) {
        // Sequentially consistent: a key's passivation reads the queued count after this
        // and senders read it after counting (`Router::charge`).
        self.retired.store(true, Ordering::SeqCst);
    }

    /// Whether it was removed from the registry.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Whether a sender may keep using a cached entry for this component.
    pub(crate) fn is_current(&self) -> bool {
        !self.retired.load(Ordering::Acquire) && !self.is_closed()
    }

    /// Set when a shutdown must be over; the first deadline set stays.
    pub(crate) fn drain_by(&self, deadline: Instant) {
        let _ = self.drain_deadline.set(deadline);
        self.draining.notify_waiters();
    }

    /// Completes once a drain deadline is set and has passed.
    pub(crate) async fn drain_deadline_passed(&self) {
        loop {
            // Created before the look, so a deadline set in between still wakes it.
            let set = self.draining.notified();
            if let Some(deadline) = self.drain_deadline.get() {
                tokio::time::sleep_until((*deadline).into()).await;
                return;
            }
            set.await;
        }
    }

    /// Whether a shutdown has set a drain deadline.
    pub(crate) fn is_draining(&self) -> bool {
        self.drain_deadline.get().is_some()
    }

    pub(crate) fn past_drain_deadline(&self) -> bool {
        self.drain_deadline
            .get()
            .is_some_and(|deadline| Instant::now() >= *deadline)
    }
}

/// A registered component: its mailbox, its shared state and its actor's task.
///
/// The mailbox and the actor's task are made by the first envelope put in, not at the
/// spawn: an actor nobody has sent anything holds neither (a mailbox's first block of slots
/// is 2 KiB), and a spawn wakes no worker to run a task only for it to wait. Requests to it
/// meanwhile borrow its core at the hand-off point, where
/// [`park_core`](crate::actor::park_core) leaves it. Every put goes through the methods
/// here.
pub(crate) struct Entry {
    mailbox: OnceLock<mpsc::Sender<Envelope>>,
    pub(crate) shared: Arc<ActorShared>,
    task: Mutex<Task>,
}

/// Where an entry's actor is.
enum Task {
    /// Its core is parked and nothing has been put in its mailbox: what it takes to make the
    /// mailbox and start the actor on the runtime it was spawned on.
    Waiting {
        counters: Arc<BrokerCounters>,
        capacity: usize,
        runtime: tokio::runtime::Handle,
    },
    /// Running (or ended) on its own task.
    Running(JoinHandle<()>),
    /// Its task was taken by a stop that waits for it.
    Taken,
}

impl Entry {
    /// The entry of a component whose core is parked, whose mailbox will hold `capacity`
    /// envelopes and whose actor will run on `runtime` once something is put in.
    pub(crate) fn new(
        shared: Arc<ActorShared>,
        counters: Arc<BrokerCounters>,
        capacity: usize,
        runtime: tokio::runtime::Handle,
    ) -> Entry {
        Entry {
            mailbox: OnceLock::new(),
            shared,
            task: Mutex::new(Task::Waiting {
                counters,
                capacity,
                runtime,
            }),
        }
    }

    pub(crate) fn mailbox_depth(&self) -> usize {
        self.mailbox
            .get()
            .map_or(0, |mailbox| mailbox.max_capacity() - mailbox.capacity())
    }

    /// Put `envelope` in the mailbox if there is room now.
    pub(crate) fn try_send(&self, envelope: Envelope) -> Result<(), TrySendError<Envelope>> {
        self.mailbox().try_send(envelope)
    }

    /// Put `envelope` in the mailbox, waiting for room.
    pub(crate) async fn send(&self, envelope: Envelope) -> Result<(), SendError<Envelope>> {
        self.mailbox().send(envelope).await
    }

    /// Hold room in the mailbox for one envelope if there is some now; `Err(true)` if it is
    /// full, `Err(false)` if it is closed.
    pub(crate) fn try_reserve(&self) -> Result<mpsc::Permit<'_, Envelope>, bool> {
        self.mailbox().try_reserve().map_err(|err| match err {
            TrySendError::Full(()) => true,
            TrySendError::Closed(()) => false,
        })
    }

    /// Start the actor's task now, for a component that has messages before anyone sends
    /// it one (a durable one's recovered messages).
    pub(crate) fn start(&self) {
        self.mailbox();
    }

    /// Wait for room in the mailbox, and hold it for one envelope.
    pub(crate) async fn reserve(&self) -> Result<mpsc::Permit<'_, Envelope>, SendError<()>> {
        self.mailbox().reserve().await
    }

    /// The mailbox, made with the actor's task if this is the first put: an envelope put in
    /// is always read.
    fn mailbox(&self) -> &mpsc::Sender<Envelope> {
        if let Some(mailbox) = self.mailbox.get() {
            return mailbox;
        }
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        *task = match std::mem::replace(&mut *task, Task::Taken) {
            Task::Waiting {
                counters,
                capacity,
                runtime,
            } => {
                let (sender, receiver) = mpsc::channel(capacity);
                // Set under the lock, so no second put makes a second mailbox.
                let _ = self.mailbox.set(sender);
                let actor = Actor::new(self.shared.clone(), counters, receiver);
                Task::Running(runtime.spawn(actor.run()))
            }
            started => started,
        };
        self.mailbox
            .get()
            .expect("an actor that left Waiting has its mailbox")
    }

    /// The actor's task, started if it was still waiting, for a stop to wait on; `None` if
    /// another stop took it.
    pub(crate) fn take_task(&self) -> Option<JoinHandle<()>> {
        self.mailbox();
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *task, Task::Taken) {
            Task::Running(handle) => Some(handle),
            Task::Waiting { .. } | Task::Taken => None,
        }
    }
}

impl Doorbell for Entry {
    fn ring(&self, name: Arc<str>, firing: u64) -> Ring {
        if self.shared.is_closed() {
            return Ring::Closed;
        }
        match self.try_send(Envelope::Timer { name, firing }) {
            Ok(()) => Ring::Queued,
            Err(TrySendError::Full(_)) => Ring::Full,
            Err(TrySendError::Closed(_)) => Ring::Closed,
        }
    }
}

impl Drop for Entry {
    /// An actor that never started has no task to let go of its parked core: the entry
    /// does (a started actor's task does it as it ends).
    fn drop(&mut self) {
        let task = self.task.get_mut().unwrap_or_else(|e| e.into_inner());
        if matches!(task, Task::Waiting { .. }) {
            self.shared.handoff.close();
        }
    }
}

/// What [`Registry::insert`] did.
pub(crate) enum Insert {
    Done,
    /// The id is in use.
    Taken,
    /// The broker is shutting down.
    Closed,
}

/// Component ids to entries. Read on every send; written only on spawn and removal.
#[derive(Default)]
pub(crate) struct Registry {
    entries: RwLock<HashMap<ComponentId, Arc<Entry>>>,
}

impl Registry {
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.read().get(id).cloned()
    }

    /// The mailbox depth of the component whose actor shares `shared`, if it is still
    /// the one registered under its id.
    pub(crate) fn mailbox_depth_of(&self, shared: &Arc<ActorShared>) -> Option<usize> {
        let entry = self.get(&shared.id)?;
        Arc::ptr_eq(&entry.shared, shared).then(|| entry.mailbox_depth())
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.read().contains_key(id)
    }

    /// Add `entry` unless its id is taken or `closed` says the registry takes no more.
    ///
    /// `closed` is read under the lock that [`all`](Self::all) takes, so an entry is either
    /// refused or seen by a shutdown that sets the flag and then lists the entries.
    pub(crate) fn insert(&self, entry: Arc<Entry>, closed: impl Fn() -> bool) -> Insert {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if closed() {
            return Insert::Closed;
        }
        if entries.contains_key(&entry.shared.id) {
            return Insert::Taken;
        }
        entries.insert(entry.shared.id.clone(), entry);
        Insert::Done
    }

    pub(crate) fn remove(&self, id: &str) -> Option<Arc<Entry>> {
        let entry = self
            .entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)?;
        entry.shared.retire();
        Some(entry)
    }

    /// Remove the entry of `shared`'s actor, if it is still the one registered under its id.
    pub(crate) fn remove_if_current(&self, shared: &Arc<ActorShared>) -> Option<Arc<Entry>> {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let current = entries
            .get(&shared.id)
            .is_some_and(|entry| Arc::ptr_eq(&entry.shared, shared));
        let entry = if current {
            entries.remove(&shared.id)?
        } else {
            return None;
        };
        entry.shared.retire();
        Some(entry)
    }

    pub(crate) fn all(&self) -> Vec<Arc<Entry>> {
        let mut all: Vec<_> = self.read().values().cloned().collect();
        all.sort_by(|a, b| a.shared.id.cmp(&b.shared.id));
        all
    }

    /// Every entry subscribed to `topic`.
    pub(crate) fn subscribers(&self, topic: &str) -> Vec<Arc<Entry>> {
        let mut subscribers: Vec<_> = self
            .read()
            .values()
            .filter(|entry| entry.shared.capabilities.subscribes_to(topic))
            .cloned()
            .collect();
        subscribers.sort_by(|a, b| a.shared.id.cmp(&b.shared.id));
        subscribers
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ComponentId, Arc<Entry>>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }
}
