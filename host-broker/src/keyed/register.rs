//! Registering a keyed component, what it reports, and the sweep that puts its idle keys
//! away. The broker's face for keyed components (`broker::keyed`) checks the spec and calls
//! these.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use courier_host_core::{Component, ComponentId};
use courier_host_store::Store;

use super::{Keyed, KeyedMetrics, Template};
use crate::error::BrokerError;
use crate::keying::Keying;
use crate::metrics::Histogram;
use crate::routing::Router;
use crate::spec::ComponentSpec;
use crate::timers::TimerWheel;

impl Template {
    /// The template of the keyed component `spec`, checked by the broker: `keying` with its
    /// most keys active resolved against `pool`, the engine's pool of instances, and its
    /// keys kept in `store` if it is durable.
    pub(crate) fn new(
        spec: ComponentSpec,
        keying: Keying,
        store: Option<Arc<dyn Store>>,
        timer_wheel: Arc<TimerWheel>,
        pool: usize,
    ) -> Arc<Template> {
        let max_active = keying.get_max_active().unwrap_or(1).max(1);
        Arc::new(Template {
            id: spec.id.clone(),
            exposure: spec.exposure,
            spec: Mutex::new(spec),
            keying,
            store,
            timer_wheel,
            runtime: tokio::runtime::Handle::current(),
            epoch: Instant::now(),
            max_active,
            max_passivating: (max_active / 8)
                .max(64)
                .min(pool.saturating_sub(max_active))
                .max(1),
            keys: Mutex::default(),
            activations: AtomicU64::new(0),
            passivations: AtomicU64::new(0),
            passivating: AtomicUsize::new(0),
            activation_latency: Arc::new(Histogram::new()),
            retired_delivered: AtomicU64::new(0),
            retired_failed: AtomicU64::new(0),
            warned: AtomicBool::new(false),
            wakeups: Arc::default(),
        })
    }

    /// The keyed component's id.
    pub(crate) fn id(&self) -> &ComponentId {
        &self.id
    }

    /// Make keys from `component` from now on; returns the version it replaces.
    pub(crate) fn swap_component(&self, component: Component) -> String {
        let mut spec = self.spec.lock().unwrap_or_else(|e| e.into_inner());
        let previous = spec.component.version().to_string();
        spec.component = component;
        previous
    }

    /// The ids of its active keys.
    pub(crate) fn active_ids(&self) -> Vec<ComponentId> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.active.keys().cloned().collect()
    }
}

impl Keyed {
    /// Register `template`, so its keys are made on their first message: first what a crash
    /// left stored for its keys, then the template, then (if a remote is attached and it is
    /// placed over the hosts that serve it) the remote's answer; its sweep and its timers'
    /// wake-ups start last. A duplicate id, a store that cannot be read or a remote's refusal
    /// is the error, and leaves nothing registered.
    pub(crate) async fn register(
        &self,
        router: &Arc<Router>,
        template: Arc<Template>,
    ) -> Result<(), BrokerError> {
        let id = template.id.clone();
        if self.contains(&id) || router.registry.contains(&id) {
            return Err(BrokerError::DuplicateId(id));
        }
        // Before any sender can reach a key: what a crash left stored for its keys.
        if let Some(store) = &template.store {
            template.recover_keys(router, store).await?;
        }
        {
            let mut templates = self.templates.write().unwrap_or_else(|e| e.into_inner());
            if templates.contains_key(&id) || router.registry.contains(&id) {
                return Err(BrokerError::DuplicateId(id));
            }
            templates.insert(id.clone(), template.clone());
        }
        if let Some(remote) = router.remote.get()
            && let Some(served) = template.served()
            && let Err(reason) = remote.serve(served).await
        {
            self.templates
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(BrokerError::Remote {
                component: id,
                reason,
            });
        }
        tokio::spawn(sweep_idle(
            Arc::downgrade(&template),
            Arc::downgrade(router),
        ));
        tokio::spawn(super::wakeups::wake_keys(
            Arc::downgrade(&template),
            Arc::downgrade(router),
        ));
        tracing::info!(component = %id, idle = ?template.keying.get_idle(), max_active = template.max_active, "keyed component registered");
        Ok(())
    }

    /// Every keyed component's counters, sorted by id: totals over its keys, never one row
    /// per key.
    pub(crate) fn metrics(&self) -> Vec<KeyedMetrics> {
        let templates: Vec<Arc<Template>> = self
            .templates
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut metrics: Vec<KeyedMetrics> = templates.iter().map(|t| t.metrics()).collect();
        metrics.sort_by(|a, b| a.id.cmp(&b.id));
        metrics
    }

    /// How many keys of the keyed component `id` are active now, if it is one.
    pub(crate) fn active_keys(&self, id: &str) -> Option<usize> {
        let template = self.template(id)?;
        let active = template
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .active
            .len();
        Some(active)
    }
}

/// Put away the template's idle keys every quarter of its timeout (at most every second,
/// so a long timeout is still kept to within a second or so), for as long as it and the
/// broker live.
async fn sweep_idle(template: Weak<Template>, router: Weak<Router>) {
    let period = match template.upgrade() {
        Some(template) => {
            (template.keying.get_idle() / 4).clamp(Duration::from_millis(5), Duration::from_secs(1))
        }
        None => return,
    };
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (Some(template), Some(router)) = (template.upgrade(), router.upgrade()) else {
            return;
        };
        if router.is_shutting_down() {
            return;
        }
        template.sweep(&router);
    }
}
