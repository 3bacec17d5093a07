//! Keyed components: one spec, an instance per key, made on the key's first message and put
//! away when idle.
//!
//! A keyed component `cart` is registered as a template ([`Broker::spawn_keyed`](crate::Broker::spawn_keyed)); a send,
//! request or timer for `cart/<key>` that finds no entry in the registry activates the key:
//! the router makes its entry at once, synchronously, from the template, with its core parked
//! and *no instance yet*. The instance is made by the first call that handles something for
//! it (the actor's task, or a requester that borrows the core), so a send that cannot wait
//! (`Broker::send`) can still activate a key, and everything sent to it queues in its mailbox
//! in order meanwhile.
//!
//! Only active keys are in memory: the registry holds their entries, the template the list
//! it evicts from. Beyond [`Keying::max_active`] the least recently used keys are put away
//! (passivated), and so is a key idle for [`Keying::idle`]. Passivation takes the entry out
//! of the registry, waits until the mailbox holds nothing, then stops the actor (a durable
//! key commits its state as it ends). A message that arrives meanwhile activates a successor
//! whose instance waits for the predecessor to end before it is made, so it is neither lost
//! nor handled before what was sent earlier. A sender that still held the old entry sees it
//! retired once it has counted its message, takes it back and goes to the successor
//! (`Router::enqueue`).
//!
//! `register` makes a keyed component's template and registers it, and reports it;
//! `placement` where a key runs when several hosts of a lattice serve its component;
//! `recovery` how a durable one's keys get back what a crash left stored; `wakeups` how a
//! durable key put away is woken by its timers; `stop` how a keyed component stops with all
//! its keys.

mod placement;
mod recovery;
mod register;
mod stop;
mod wakeups;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use courier_host_core::{ComponentId, InstanceOptions, MessagingError};
use courier_host_store::Store;
use tokio::sync::watch;

use crate::actor::Core;
use crate::keying::{Keying, check_key};
use crate::mailbox::Envelope;
use crate::messaging::ActorMessaging;
use crate::metrics::{Histogram, LatencySummary};
use crate::registry::{ActorShared, Entry, Insert, KeyOf};
use crate::remote::{Placement, Remote};
use crate::routing::{Keys, Router};
use crate::spec::ComponentSpec;
use crate::supervisor::RestartHistory;
use crate::timers::{ActorTimers, TimerLimits, TimerWheel};

/// One keyed component's counters, over all its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedMetrics {
    /// The component.
    pub id: ComponentId,
    /// Keys with an instance (or one being made) now.
    pub active: usize,
    /// Keys being put away now.
    pub passivating: usize,
    /// Keys activated so far.
    pub activations: u64,
    /// Keys put away so far.
    pub passivations: u64,
    /// From a key's first message to its instance being ready (waiting for a predecessor
    /// that was being put away included).
    pub activation_latency: LatencySummary,
    /// What its keys' instances handled, failed, and so on, summed over the keys active now
    /// and the ones put away.
    pub delivered: u64,
    /// Handler errors and traps, over all its keys.
    pub failed: u64,
    /// The version new keys start with.
    pub version: String,
    /// Its limits, the most keys active resolved against the engine's pool.
    pub keying: Keying,
}

/// The keyed components of one broker.
#[derive(Default)]
pub(crate) struct Keyed {
    templates: RwLock<HashMap<ComponentId, Arc<Template>>>,
}

/// A keyed component: what each of its keys is made from, and its active keys.
pub(crate) struct Template {
    id: ComponentId,
    spec: Mutex<ComponentSpec>,
    keying: Keying,
    /// `Replicated`: its keys are placed over the hosts of a lattice that serve it.
    exposure: crate::exposure::Exposure,
    store: Option<Arc<dyn Store>>,
    timer_wheel: Arc<TimerWheel>,
    runtime: tokio::runtime::Handle,
    /// When the template was made: `last_used` marks count microseconds from it, fine
    /// enough that keys activated in a burst are still ordered.
    epoch: Instant,
    /// The most keys active at once, resolved against the engine's pool.
    max_active: usize,
    /// How many keys may be being put away at once before new keys wait: an eighth of the
    /// active ones (at least 64, so a small bound does not throttle), within the slots of
    /// the pool the active keys leave.
    max_passivating: usize,
    keys: Mutex<InMemory>,
    activations: AtomicU64,
    passivations: AtomicU64,
    /// Keys chosen to be put away whose actors have not ended yet: they still hold their
    /// instances, so new keys wait while there are many (see [`Template::activate`]).
    passivating: AtomicUsize,
    activation_latency: Arc<Histogram>,
    /// Delivered and failed counts of keys put away, so the totals survive them.
    retired_delivered: AtomicU64,
    retired_failed: AtomicU64,
    /// Whether the loss of a non-durable key's state on passivation was logged: once per
    /// component, not per key.
    warned: AtomicBool,
    /// Durable keys put away with timers pending, to wake when the earliest is due.
    wakeups: Arc<wakeups::Wakeups>,
}

/// A template's keys in memory: the active ones and the ones being put away.
#[derive(Default)]
struct InMemory {
    active: HashMap<ComponentId, Arc<Entry>>,
    /// Closed (the sender dropped) when the key's old actor has ended.
    ending: HashMap<ComponentId, watch::Receiver<()>>,
}

impl Keyed {
    pub(crate) fn template(&self, id: &str) -> Option<Arc<Template>> {
        self.templates
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Whether `id` is a keyed component's.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.templates
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    /// Whether `target` is a key of a durable keyed component.
    pub(crate) fn is_durable_key(&self, target: &str) -> bool {
        target
            .split_once('/')
            .and_then(|(component, _)| self.template(component))
            .is_some_and(|template| template.store.is_some())
    }
}

impl Keys for Keyed {
    /// The entry for `target`, made now if `target` is `<keyed component>/<key>`: `None` if
    /// it is no keyed component's, an error naming the component and key if the key is
    /// refused or the broker is shutting down.
    fn activate(
        &self,
        router: &Router,
        target: &str,
    ) -> Option<Result<Arc<Entry>, MessagingError>> {
        let (component, key) = target.split_once('/')?;
        let template = self.template(component)?;
        if let Err(reason) = check_key(key) {
            return Some(Err(MessagingError::TargetNotFound(format!(
                "{target}: not a key of component `{component}`: {reason}"
            ))));
        }
        // What another host sent here by an older view of who serves the component.
        if let Some(refusal) = self.refuse_misplaced(router, &template, target) {
            return Some(Err(refusal));
        }
        let router = router.me.upgrade()?;
        Some(template.activate(&router, target, Stored::default()))
    }

    /// The entry of `target` for what another host sent it, made now if `target` is a key
    /// of a component placed over the hosts that serve it and placed here: `None` if it is
    /// not such a key, the refusal if it is placed on another host.
    fn activate_arrival(
        &self,
        router: &Router,
        target: &str,
    ) -> Option<Result<Arc<Entry>, MessagingError>> {
        let (component, _) = target.split_once('/')?;
        if !self.template(component)?.is_placed() {
            return None;
        }
        self.activate(router, target)
    }

    /// The remote to send `target` to, if it is a key of a component placed over several
    /// hosts and the remote places it on another host. A key of it still active here is put
    /// away: its host changed.
    fn placed_elsewhere(&self, router: &Router, target: &str) -> Option<Arc<dyn Remote>> {
        let remote = router.remote.get()?;
        let (component, key) = target.split_once('/')?;
        let template = self.template(component)?;
        if !template.is_placed() {
            return None;
        }
        match remote.place(component, key) {
            Placement::Here => None,
            Placement::Elsewhere(_) => {
                if let Some(router) = router.me.upgrade() {
                    template.release_one(&router, target);
                }
                Some(remote)
            }
        }
    }
}

/// What a crash left in the store for a durable key, which its entry takes when it is made
/// at the component's registration (`recovery`): its unconsumed messages and its undelivered
/// outbox.
#[derive(Default)]
pub(crate) struct Stored {
    pub(crate) messages: Vec<Envelope>,
    pub(crate) outbox: Vec<courier_host_store::StoredOutgoing>,
}

impl Template {
    fn activate(
        self: &Arc<Self>,
        router: &Arc<Router>,
        target: &str,
        stored: Stored,
    ) -> Result<Arc<Entry>, MessagingError> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        // Another sender may have made it since the registry was read.
        if let Some(entry) = router.registry.get(target) {
            return Ok(entry);
        }
        // Keys being put away still hold their instances: past a bound, a new key is refused
        // for now (`mailbox-full`, which senders retry) rather than let a flood of new keys
        // outrun the passivations and hold memory without bound.
        if self.passivating.load(Ordering::Relaxed) >= self.max_passivating {
            return Err(MessagingError::MailboxFull(target.to_string()));
        }
        let id = ComponentId::from(target);
        let predecessor = keys.ending.get(target).cloned();
        let entry = self.make_entry(router, id.clone(), predecessor, stored);
        match router
            .registry
            .insert(entry.clone(), || router.is_shutting_down())
        {
            Insert::Done => {}
            // Spawned by the host under this id (`Broker::spawn` of `cart/1`): that one
            // serves it.
            Insert::Taken => {
                return router
                    .registry
                    .get(target)
                    .ok_or_else(|| MessagingError::TargetNotFound(target.to_string()));
            }
            Insert::Closed => return Err(MessagingError::ShuttingDown),
        }
        self.activations.fetch_add(1, Ordering::Relaxed);
        keys.active.insert(id, entry.clone());
        if keys.active.len() > self.max_active {
            let victims = self.least_recently_used(&mut keys);
            drop(keys);
            self.passivating.fetch_add(victims.len(), Ordering::Relaxed);
            for victim in victims {
                self.runtime
                    .spawn(self.clone().passivate(router.clone(), victim));
            }
        }
        Ok(entry)
    }

    /// Take the least recently used keys out of the active ones, enough to be a little
    /// under the bound, so the scan (linear in the active keys) runs once per many
    /// activations rather than once for each.
    fn least_recently_used(&self, keys: &mut InMemory) -> Vec<Arc<Entry>> {
        let max = self.max_active;
        let excess = keys.active.len() - max + (max / 32).min(keys.active.len() - 1);
        let mut by_use: Vec<(u64, ComponentId)> = keys
            .active
            .iter()
            .map(|(id, entry)| (last_used(entry), id.clone()))
            .collect();
        by_use.select_nth_unstable_by_key(excess - 1, |(used, _)| *used);
        by_use
            .into_iter()
            .take(excess)
            .filter_map(|(_, id)| keys.active.remove(&id))
            .collect()
    }

    /// The entry of key `id`, its core parked without an instance: [`activate_core`](crate::actor::activate_core) makes
    /// it, from the template's component of the moment, when the first call needs it.
    fn make_entry(
        self: &Arc<Self>,
        router: &Arc<Router>,
        id: ComponentId,
        predecessor: Option<watch::Receiver<()>>,
        stored: Stored,
    ) -> Arc<Entry> {
        let spec = self.spec.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut limits = TimerLimits {
            max_timers: spec.max_timers,
            max_name_bytes: crate::ids::MAX_NAME_BYTES,
            max_payload_bytes: router.config.max_payload_bytes,
        };
        if self.store.is_some() {
            // Within what the store keeps, as for a durable component.
            limits.max_timers = limits.max_timers.min(
                u32::try_from(courier_host_store::limits::MAX_TIMERS_PER_ACTOR).unwrap_or(u32::MAX),
            );
            limits.max_payload_bytes = limits
                .max_payload_bytes
                .min(courier_host_store::limits::MAX_PAYLOAD_BYTES);
        }
        let timers = ActorTimers::new(id.clone(), limits, self.timer_wheel.clone());
        if self.store.is_some() {
            timers.keep_in_store();
        }
        let mut shared = ActorShared::new(
            id.clone(),
            spec.capabilities.clone(),
            spec.exposure,
            spec.mailbox_bytes,
            spec.component.clone(),
            timers.clone(),
        );
        // A durable key's sends wait in its outbox for its commits, like a durable
        // component's; the sequence numbers its receivers deduplicate by are the store's,
        // so they go on across activations of the key.
        let outbox = self
            .store
            .as_ref()
            .map(|_| Arc::new(crate::outbox::Outbox::new(id.clone(), stored.outbox)));
        shared.durable = self
            .store
            .clone()
            .zip(outbox.clone())
            .map(|(store, outbox)| crate::durable::Durable::new(store, stored.messages, outbox));
        shared.telemetry = router.config.telemetry.clone();
        shared.keyed = Some(KeyOf::new(
            self.epoch,
            self.activation_latency.clone(),
            predecessor,
        ));
        let shared = Arc::new(shared);
        if let Some(durable) = &shared.durable {
            self.runtime.spawn(crate::dispatch::dispatch(
                Arc::downgrade(router),
                Arc::downgrade(&shared),
                durable.outbox.clone(),
                durable.store.clone(),
            ));
        }
        let messaging = Arc::new(ActorMessaging::new(
            router,
            spec.capabilities.clone(),
            outbox,
        ));
        let mut options = InstanceOptions::new(id)
            .deadline(spec.deadline)
            .max_state_bytes(spec.max_state_bytes)
            .messaging(messaging)
            .timers(timers);
        if let Some(bytes) = spec.memory_limit {
            options = options.memory_limit(bytes);
        }
        if let Some(fuel) = spec.fuel {
            options = options.fuel(fuel);
        }
        let core = Core {
            shared: shared.clone(),
            counters: router.counters.clone(),
            dead_letters: router.dead_letters.clone(),
            component: spec.component,
            options,
            supervision: spec.supervision,
            instance: None,
            history: RestartHistory::new(),
            current: None,
            checkpoint: None,
        };
        shared.handoff.park(Box::new(core));
        let entry = Arc::new(Entry::new(
            shared.clone(),
            router.counters.clone(),
            spec.mailbox_capacity,
            self.runtime.clone(),
        ));
        let doorbell: Arc<dyn crate::timers::Doorbell> = entry.clone();
        shared.timers.ring_at(Arc::downgrade(&doorbell));
        entry
    }

    /// Put `entry`'s key away: out of the registry first (new sends go to a successor,
    /// whose instance waits for this one), then, once nothing is queued for it, its actor
    /// stopped; a durable key commits its state as it ends.
    async fn passivate(self: Arc<Self>, router: Arc<Router>, entry: Arc<Entry>) {
        let shared = entry.shared.clone();
        // However it ends, it is no longer being put away.
        let _counted = Decrement(&self.passivating);
        let (ended, ending) = watch::channel(());
        {
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            if router.registry.remove_if_current(&shared).is_none() {
                // Stopped or removed by the host meanwhile.
                return;
            }
            keys.ending.insert(shared.id.clone(), ending.clone());
        }
        // The entry is retired: a sender that counts a message into it from now on sees
        // that and takes it to the successor, so once the count is zero it stays zero.
        while shared.queued.messages.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = entry.send(Envelope::Stop).await;
        if let Some(task) = entry.take_task() {
            let _ = task.await;
        }
        // A key put away before it made its instance never waited for its own predecessor,
        // and its successor waits for it alone (the ending it finds is this one's): this one
        // has not ended until that one has, or the successor could load a durable state
        // before that one's last commit, or handle a message before those sent earlier.
        let predecessor = shared.keyed.as_ref().and_then(KeyOf::take_predecessor);
        if let Some(mut predecessor) = predecessor {
            while predecessor.changed().await.is_ok() {}
        }
        // Its timers stay in the store: the earliest wakes it.
        if let Some(durable) = &shared.durable {
            self.wake_for_timers(&*durable.store, &shared.id).await;
        }
        if shared.durable.is_none()
            && shared.metrics.delivered.load(Ordering::Relaxed) > 0
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(component = %self.id, "a key of this component was put away and its state is lost: it is not durable (this is logged once per component)");
        }
        self.retired_delivered.fetch_add(
            shared.metrics.delivered.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.retired_failed.fetch_add(
            shared.metrics.failed.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.passivations.fetch_add(1, Ordering::Relaxed);
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys
            .ending
            .get(&shared.id)
            .is_some_and(|current| current.same_channel(&ending))
        {
            keys.ending.remove(&shared.id);
        }
        drop(keys);
        // Wakes the successor, if one is waiting to make its instance.
        drop(ended);
    }

    /// Put away every key idle for the template's timeout.
    fn sweep(self: &Arc<Self>, router: &Arc<Router>) {
        let idle = self.keying.get_idle().as_micros() as u64;
        let now = self.epoch.elapsed().as_micros() as u64;
        let victims: Vec<Arc<Entry>> = {
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            let idle_ids: Vec<ComponentId> = keys
                .active
                .iter()
                .filter(|(_, entry)| {
                    now.saturating_sub(last_used(entry)) >= idle
                        && entry.shared.queued.messages.load(Ordering::Relaxed) == 0
                })
                .map(|(id, _)| id.clone())
                .collect();
            idle_ids
                .iter()
                .filter_map(|id| keys.active.remove(id))
                .collect()
        };
        self.passivating.fetch_add(victims.len(), Ordering::Relaxed);
        for victim in victims {
            self.runtime
                .spawn(self.clone().passivate(router.clone(), victim));
        }
    }

    fn metrics(&self) -> KeyedMetrics {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let (mut delivered, mut failed) = (
            self.retired_delivered.load(Ordering::Relaxed),
            self.retired_failed.load(Ordering::Relaxed),
        );
        for entry in keys.active.values() {
            delivered += entry.shared.metrics.delivered.load(Ordering::Relaxed);
            failed += entry.shared.metrics.failed.load(Ordering::Relaxed);
        }
        let spec = self.spec.lock().unwrap_or_else(|e| e.into_inner());
        KeyedMetrics {
            id: self.id.clone(),
            active: keys.active.len(),
            passivating: self.passivating.load(Ordering::Relaxed),
            activations: self.activations.load(Ordering::Relaxed),
            passivations: self.passivations.load(Ordering::Relaxed),
            activation_latency: self.activation_latency.summary(),
            delivered,
            failed,
            version: spec.component.version().to_string(),
            keying: self.keying,
        }
    }
}

/// Takes one off a count when dropped.
struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn last_used(entry: &Entry) -> u64 {
    entry.shared.keyed.as_ref().map_or(0, KeyOf::last_used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Broker;

    /// A broker with `cart`, a keyed counter.
    async fn carts() -> Broker {
        let engine = courier_host_core::Engine::new(
            courier_host_core::EngineConfig::default().max_instances(8),
        )
        .unwrap();
        let counter = engine
            .load_component_file("counter", courier_test_support::guest_path("counter"))
            .unwrap();
        let broker = Broker::new(engine);
        let spec = ComponentSpec::new("cart", counter).keyed(Keying::default());
        broker.spawn_keyed(spec).await.unwrap();
        broker
    }

    /// The window this covers (a sender that read a key's entry just before a passivation
    /// retired it) is too narrow to hit reliably from outside, so it is made here by hand.
    #[tokio::test]
    async fn a_sender_holding_a_retired_key_reaches_its_successor() {
        let broker = carts().await;
        let router = broker.router();
        let stale = router.keys.activate(router, "cart/1").unwrap().unwrap();
        // What a passivation does first: out of the registry, retired.
        router.registry.remove_if_current(&stale.shared).unwrap();
        let message = Envelope::message("host".into(), b"add".to_vec().into());
        router.enqueue(&stale, message).ok().unwrap();

        let successor = router.registry.get("cart/1").expect("a successor was made");
        assert!(!Arc::ptr_eq(&successor, &stale));
        assert_eq!(
            stale.mailbox_depth(),
            0,
            "nothing went into the retired mailbox"
        );
        let reply = broker
            .request("cart/1", Vec::new(), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(reply, 1u64.to_le_bytes(), "the successor handled it");
    }

    /// A sender held up after reading a key's entry for as long as the key's whole
    /// passivation took (retired, stopped, its actor ended) finds the successor, not a
    /// closed component it would answer `target-not-found` for. Made by hand for the same
    /// reason as above.
    #[tokio::test]
    async fn a_sender_holding_a_key_put_away_to_its_end_reaches_its_successor() {
        let broker = carts().await;
        let router = broker.router();
        let stale = router.keys.activate(router, "cart/1").unwrap().unwrap();
        // The whole of a passivation: out of the registry, retired, stopped, ended.
        router.registry.remove_if_current(&stale.shared).unwrap();
        stale.send(Envelope::Stop).await.unwrap();
        stale.take_task().unwrap().await.unwrap();
        assert!(stale.shared.is_closed());

        let serving = router.past_put_away("cart/1", stale.clone()).unwrap();
        assert!(!Arc::ptr_eq(&serving, &stale));
        assert!(!serving.shared.is_closed());
        let message = Envelope::message("host".into(), b"add".to_vec().into());
        router.enqueue(&serving, message).ok().unwrap();
        let reply = broker
            .request("cart/1", Vec::new(), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(reply, 1u64.to_le_bytes(), "the successor handled it");
    }

    /// A key put away before it made its instance (a successor whose only message went
    /// to its own successor, say) has not ended while its predecessor runs: the next
    /// successor waits for it alone, and must not make its instance (load its state,
    /// handle what came later) before the first has ended.
    #[tokio::test]
    async fn a_key_put_away_before_its_instance_ends_after_its_predecessor() {
        let broker = carts().await;
        let router = broker.router();
        let template = broker.keyed().template("cart").unwrap();
        let first = router.keys.activate(router, "cart/1").unwrap().unwrap();
        // The first half of the first one's passivation, by hand: out of the registry, its
        // ending registered, its actor still running.
        let (first_ended, first_ending) = watch::channel(());
        {
            let mut keys = template.keys.lock().unwrap();
            keys.active.remove("cart/1");
            router.registry.remove_if_current(&first.shared).unwrap();
            keys.ending.insert("cart/1".into(), first_ending);
        }
        let second = router.keys.activate(router, "cart/1").unwrap().unwrap();
        template.keys.lock().unwrap().active.remove("cart/1");
        template.passivating.fetch_add(1, Ordering::Relaxed);
        let router_arc = router.me.upgrade().unwrap();
        let put_away = tokio::spawn(template.clone().passivate(router_arc, second));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !put_away.is_finished(),
            "the second ended while the first still runs"
        );
        drop(first_ended);
        tokio::time::timeout(Duration::from_secs(10), put_away)
            .await
            .expect("the second ends once the first has")
            .unwrap();
        drop(first);
    }

    #[test]
    fn keys_are_one_bounded_segment_of_plain_characters() {
        assert!(check_key("8812").is_ok());
        assert!(check_key("user-7_a.b").is_ok());
        assert!(check_key(&"k".repeat(128)).is_ok());
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(129)).is_err());
        assert!(check_key("a/b").is_err());
        assert!(check_key("a b").is_err());
        assert!(check_key("é").is_err());
    }
}
