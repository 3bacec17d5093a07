//! The broker's face for keyed components: registering one, upgrading its keys, and what
//! it reports.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use courier_host_core::{ComponentId, InstanceOptions};

use super::{DEFAULT_MAX_ACTIVE, KeyedMetrics, MIN_IDLE, Template};
use crate::broker::{Broker, durable_store};
use crate::error::BrokerError;
use crate::ids::check_id;
use crate::metrics::Histogram;
use crate::routing::Router;
use crate::spec::{ComponentSpec, MAX_MAILBOX_CAPACITY};

impl Broker {
    /// Register the keyed component `spec` ([`ComponentSpec::keyed`]): nothing runs yet;
    /// a message, request or timer for `<id>/<key>` makes the instance of that key on its
    /// first arrival, with `<id>/<key>` as its own id (`self-id`). The key must pass
    /// [`check_key`](crate::check_key). Keys are put away when idle or beyond the bound
    /// ([`Keying`](crate::Keying)); a durable key's state is saved first and loaded on its next activation,
    /// a key that is not durable starts again from nothing.
    ///
    /// ```no_run
    /// # async fn run(broker: courier_host_broker::Broker, counter: courier_host_core::Component) {
    /// use std::time::Duration;
    /// use courier_host_broker::{ComponentSpec, Keying};
    ///
    /// let spec = ComponentSpec::new("cart", counter)
    ///     .keyed(Keying::default().idle(Duration::from_secs(60)).max_active(1_000));
    /// broker.spawn_keyed(spec).await.expect("cart is registered");
    /// broker.send("cart/8812", b"add".to_vec()).expect("cart/8812 is made");
    /// # }
    /// ```
    pub async fn spawn_keyed(&self, spec: ComponentSpec) -> Result<(), BrokerError> {
        let router = self.router();
        if router.is_shutting_down() {
            return Err(BrokerError::ShuttingDown);
        }
        let id = spec.id.clone();
        let invalid = |field: &'static str, reason: String| BrokerError::InvalidSpec {
            component: id.clone(),
            field,
            reason,
        };
        let Some(keying) = spec.keyed else {
            return Err(invalid(
                "keyed",
                "is not set: `Broker::spawn` runs a component that is not keyed".into(),
            ));
        };
        check_id(&id).map_err(|reason| BrokerError::InvalidId {
            id: id.to_string(),
            reason,
        })?;
        if id.contains('/') {
            return Err(BrokerError::InvalidId {
                id: id.to_string(),
                reason: "a keyed component's id is one part, without `/`: its keys are the part after it",
            });
        }
        spec.capabilities
            .validate()
            .map_err(|(list, error)| BrokerError::InvalidPattern {
                component: id.clone(),
                list,
                error,
            })?;
        if spec.mailbox_capacity > MAX_MAILBOX_CAPACITY {
            return Err(invalid(
                "mailbox_capacity",
                format!("is over the most a mailbox may hold, {MAX_MAILBOX_CAPACITY}"),
            ));
        }
        if keying.idle < MIN_IDLE {
            return Err(invalid(
                "idle",
                format!("of {:?} is under the least, {MIN_IDLE:?}", keying.idle),
            ));
        }
        let pool = self.engine().config().get_max_instances() as usize;
        let max_active = keying
            .max_active
            .unwrap_or(DEFAULT_MAX_ACTIVE.min(pool - pool / 8).max(1));
        if max_active == 0 {
            return Err(invalid(
                "max_active",
                "is 0: at least one key must fit".into(),
            ));
        }
        if max_active > pool {
            return Err(invalid(
                "max_active",
                format!(
                    "of {max_active} keys is over the engine's pool of {pool} instances: each active key holds one"
                ),
            ));
        }
        let keying = keying.max_active(max_active);
        if spec.exposure == crate::Exposure::Lattice {
            return Err(invalid(
                "expose",
                "is `Lattice`: a keyed component reached from other hosts is `Replicated`, its keys placed over the hosts that serve it".into(),
            ));
        }
        if !spec.capabilities.subscribe_patterns().is_empty() {
            return Err(invalid(
                "subscribe",
                "is set: a publication would have to reach every key ever made, so a keyed component subscribes to no topic".into(),
            ));
        }
        let store = match spec.durable {
            true => Some(durable_store(
                &id,
                router.config.store.as_ref(),
                spec.exposure,
                &spec.capabilities,
            )?),
            false => None,
        };
        // The component must be able to run: one instance is made and dropped now, so a
        // component that cannot start is refused here rather than at every key.
        drop(
            spec.component
                .instantiate(InstanceOptions::new(format!("{id}/check")))
                .await?,
        );
        let exposure = spec.exposure;
        let template = Arc::new(Template {
            id: id.clone(),
            spec: Mutex::new(spec),
            keying,
            exposure,
            store,
            timer_wheel: self.timer_wheel(),
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
            activation_latency: Histogram::new(),
            retired_delivered: AtomicU64::new(0),
            retired_failed: AtomicU64::new(0),
            warned: AtomicBool::new(false),
            wakeups: Arc::default(),
        });
        if router.keyed.contains(&id) || router.registry.contains(&id) {
            return Err(BrokerError::DuplicateId(id));
        }
        // Before any sender can reach a key: what a crash left stored for its keys.
        if let (Some(store), Some(me)) = (&template.store, router.me.upgrade()) {
            template.recover_keys(&me, store).await?;
        }
        {
            let mut templates = router
                .keyed
                .templates
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if templates.contains_key(&id) || router.registry.contains(&id) {
                return Err(BrokerError::DuplicateId(id));
            }
            templates.insert(id.clone(), template.clone());
        }
        if let Some(remote) = router.remote.get()
            && let Some(served) = template.served()
            && let Err(reason) = remote.serve(served).await
        {
            router
                .keyed
                .templates
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(BrokerError::Remote {
                component: id,
                reason,
            });
        }
        tokio::spawn(sweep_idle(Arc::downgrade(&template), self.router_weak()));
        tokio::spawn(super::wakeups::wake_keys(
            Arc::downgrade(&template),
            self.router_weak(),
        ));
        tracing::info!(component = %id, idle = ?keying.idle, max_active, "keyed component registered");
        Ok(())
    }

    /// Upgrade a keyed component: keys made from now on run `component`, and every active
    /// key is upgraded as [`Broker::upgrade`] upgrades a component (its state moved, nothing
    /// lost or reordered). A key put away meanwhile comes back on the new version.
    pub(crate) async fn upgrade_keys(
        &self,
        template: Arc<Template>,
        component: courier_host_core::Component,
    ) -> Result<crate::Upgraded, BrokerError> {
        let started = Instant::now();
        let previous = {
            let mut spec = template.spec.lock().unwrap_or_else(|e| e.into_inner());
            let previous = spec.component.version().to_string();
            spec.component = component.clone();
            previous
        };
        let active: Vec<ComponentId> = {
            let keys = template.keys.lock().unwrap_or_else(|e| e.into_inner());
            keys.active.keys().cloned().collect()
        };
        let mut failed = Vec::new();
        for key in &active {
            match Box::pin(self.upgrade(key, component.clone())).await {
                Ok(_) | Err(BrokerError::NotFound(_)) => {}
                // Put away, stopped or failed meanwhile: it comes back on the new version.
                Err(BrokerError::Upgrade { reason, .. })
                    if reason.contains("stopped before") || reason.contains("only a running") => {}
                Err(err) => failed.push(format!("{key}: {err}")),
            }
        }
        if !failed.is_empty() {
            return Err(BrokerError::Upgrade {
                component: template.id.clone(),
                reason: format!(
                    "{} of {} active keys kept the old version (new keys get the new one): {}",
                    failed.len(),
                    active.len(),
                    crate::text::bounded_text(&failed.join("; "))
                ),
            });
        }
        Ok(crate::Upgraded {
            id: template.id.clone(),
            previous,
            version: component.version().to_string(),
            state_bytes: None,
            took: started.elapsed(),
        })
    }

    /// Every keyed component's counters, sorted by id: totals over its keys, never one row
    /// per key.
    pub fn keyed_metrics(&self) -> Vec<KeyedMetrics> {
        let templates: Vec<Arc<Template>> = self
            .router()
            .keyed
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

    /// The ids of every keyed component, sorted.
    pub fn keyed_components(&self) -> Vec<ComponentId> {
        self.keyed_metrics().into_iter().map(|m| m.id).collect()
    }

    /// How many keys of the keyed component `id` are active now, if it is one.
    pub fn active_keys(&self, id: &str) -> Option<usize> {
        let template = self.router().keyed.template(id)?;
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
            (template.keying.idle / 4).clamp(Duration::from_millis(5), Duration::from_secs(1))
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
