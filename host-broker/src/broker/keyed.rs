//! The broker's face for keyed components: registering one, upgrading its keys, putting
//! them away for a lattice, stopping it, and what it reports. What happens to the keys is
//! `keyed`'s; this checks what the caller asked for and hands it there.

use std::time::Instant;

use courier_host_core::{Component, ComponentId, InstanceOptions};

use super::{Broker, durable_store};
use crate::error::BrokerError;
use crate::exposure::Exposure;
use crate::ids::check_id;
use crate::keyed::{KeyedMetrics, Template};
use crate::keying::{DEFAULT_MAX_ACTIVE, MIN_IDLE};
use crate::report::ShutdownReport;
use crate::spec::{ComponentSpec, MAX_MAILBOX_CAPACITY};
use crate::upgrade::Upgraded;

impl Broker {
    /// Register the keyed component `spec` ([`ComponentSpec::keyed`]): nothing runs yet;
    /// a message, request or timer for `<id>/<key>` makes the instance of that key on its
    /// first arrival, with `<id>/<key>` as its own id (`self-id`). The key must pass
    /// [`check_key`](crate::check_key). Keys are put away when idle or beyond the bound
    /// ([`Keying`](crate::Keying)); a durable key's state is saved first and loaded on its
    /// next activation, a key that is not durable starts again from nothing.
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
        if keying.get_idle() < MIN_IDLE {
            return Err(invalid(
                "idle",
                format!(
                    "of {:?} is under the least, {MIN_IDLE:?}",
                    keying.get_idle()
                ),
            ));
        }
        let pool = self.engine().config().get_max_instances() as usize;
        let max_active = keying
            .get_max_active()
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
        if spec.exposure == Exposure::Lattice {
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
        let template = Template::new(spec, keying, store, self.timer_wheel(), pool);
        self.keyed().register(&self.inner.router, template).await
    }

    /// Upgrade a keyed component: keys made from now on run `component`, and every active
    /// key is upgraded as [`Broker::upgrade`] upgrades a component (its state moved, nothing
    /// lost or reordered). A key put away meanwhile comes back on the new version.
    pub(crate) async fn upgrade_keys(
        &self,
        template: &Template,
        component: Component,
    ) -> Result<Upgraded, BrokerError> {
        let started = Instant::now();
        let previous = template.swap_component(component.clone());
        let active = template.active_ids();
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
                component: template.id().clone(),
                reason: format!(
                    "{} of {} active keys kept the old version (new keys get the new one): {}",
                    failed.len(),
                    active.len(),
                    crate::text::bounded_text(&failed.join("; "))
                ),
            });
        }
        Ok(Upgraded {
            id: template.id().clone(),
            previous,
            version: component.version().to_string(),
            state_bytes: None,
            took: started.elapsed(),
        })
    }

    /// Stop the keyed component `id`, if it is one: its template goes first, so a message
    /// to one of its keys from then on is `target-not-found` (one that reached a key before
    /// is handled first); then every active key stops as [`Broker::stop`] stops a
    /// component. A durable key's committed state stays in the store, for the component
    /// spawned again under the same id. `None` if `id` is no keyed component.
    pub(crate) async fn stop_keyed(&self, id: &str) -> Option<ShutdownReport> {
        self.keyed().stop(self.router(), id).await
    }

    /// Every keyed component's counters, sorted by id: totals over its keys, never one row
    /// per key.
    pub fn keyed_metrics(&self) -> Vec<KeyedMetrics> {
        self.keyed().metrics()
    }

    /// The ids of every keyed component, sorted.
    pub fn keyed_components(&self) -> Vec<ComponentId> {
        self.keyed_metrics().into_iter().map(|m| m.id).collect()
    }

    /// How many keys of the keyed component `id` are active now, if it is one.
    pub fn active_keys(&self, id: &str) -> Option<usize> {
        self.keyed().active_keys(id)
    }

    /// Whether `id` is a keyed component registered here ([`Broker::spawn_keyed`]).
    pub fn is_keyed(&self, id: &str) -> bool {
        self.keyed().contains(id)
    }

    /// Put away every active key of the keyed component `id` that the attached remote now
    /// places on another host (one joined, say): called by a lattice when the hosts that
    /// serve `id` change. Returns how many keys are being put away.
    pub fn release_moved_keys(&self, id: &str) -> usize {
        self.keyed().release_moved(self.router(), id)
    }

    /// Put away every active key of the keyed component `id`: called by a lattice this host
    /// leaves, after which the other hosts place its keys. Returns how many.
    pub fn release_keys(&self, id: &str) -> usize {
        self.keyed().release_all(self.router(), id)
    }
}
