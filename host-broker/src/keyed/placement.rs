//! Where the keys of a keyed component run when several hosts serve it.
//!
//! A keyed component spawned with [`Exposure::Replicated`](crate::Exposure::Replicated) is
//! served by every host of a lattice that spawns it, and each of its keys runs on exactly
//! one of them: the attached [`Remote`] says which ([`Remote::place`]; the lattice hashes
//! the key over the hosts that serve the component, rendezvous hashing). The broker asks
//! before it routes to a key of such a component: a key placed elsewhere goes to the remote
//! like any target not registered here, and a key placed here is activated as on one host.
//!
//! When the hosts serving the component change, the remote calls
//! [`Broker::release_moved_keys`](crate::Broker::release_moved_keys): every active key now placed elsewhere is put away (a
//! durable one saves its state first), handling first what it already queued. What reaches
//! it while it is being put away goes to the key's new place, or, for what came from
//! another host that placed the key here, is refused with the host it is placed on now, so
//! its sender hears it: nothing is lost without a record.

use std::sync::Arc;

use courier_host_core::{ComponentId, MessagingError};

use super::{Keyed, Template};
use crate::exposure::Exposure;
use crate::registry::Entry;
use crate::remote::{Placement, Served};
use crate::routing::Router;

impl Template {
    /// Whether this component's keys are placed over the hosts that serve it.
    pub(crate) fn is_placed(&self) -> bool {
        self.exposure == Exposure::Replicated
    }

    /// What a remote serves of it: the component, whose keys it places; never a key.
    pub(crate) fn served(&self) -> Option<Served> {
        self.is_placed().then(|| Served {
            id: self.id.clone(),
            exposure: self.exposure,
            subscriptions: Vec::new(),
        })
    }
}

impl Keyed {
    /// What a remote attached now serves of the keyed components.
    pub(crate) fn served(&self) -> Vec<Served> {
        self.templates
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(|template| template.served())
            .collect()
    }

    /// The refusal of `target` here, if it is a key placed on another host.
    pub(crate) fn refuse_misplaced(
        &self,
        router: &Router,
        template: &Template,
        target: &str,
    ) -> Option<MessagingError> {
        if !template.is_placed() {
            return None;
        }
        let remote = router.remote.get()?;
        let (component, key) = target.split_once('/')?;
        match remote.place(component, key) {
            Placement::Here => None,
            Placement::Elsewhere(host) => Some(MessagingError::TargetNotFound(format!(
                "{target}: the key is placed on host `{host}` now"
            ))),
        }
    }
}

impl Template {
    /// Put away the key `id` if it is active.
    pub(super) fn release_one(self: &Arc<Self>, router: &Arc<Router>, id: &str) {
        let victim = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .active
            .remove(id);
        if let Some(victim) = victim {
            self.passivating
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.runtime
                .spawn(self.clone().passivate(router.clone(), victim));
        }
    }

    /// Put away the active keys whose ids `moved` picks; returns how many.
    pub(crate) fn release(
        self: &Arc<Self>,
        router: &Arc<Router>,
        moved: impl Fn(&ComponentId) -> bool,
    ) -> usize {
        let victims: Vec<Arc<Entry>> = {
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<ComponentId> =
                keys.active.keys().filter(|id| moved(id)).cloned().collect();
            ids.iter().filter_map(|id| keys.active.remove(id)).collect()
        };
        let count = victims.len();
        self.passivating
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        for victim in victims {
            self.runtime
                .spawn(self.clone().passivate(router.clone(), victim));
        }
        count
    }
}

impl Keyed {
    /// Put away every active key of the keyed component `id` that the attached remote now
    /// places on another host; returns how many.
    pub(crate) fn release_moved(&self, router: &Router, id: &str) -> usize {
        let (Some(template), Some(remote), Some(me)) =
            (self.template(id), router.remote.get(), router.me.upgrade())
        else {
            return 0;
        };
        if !template.is_placed() {
            return 0;
        }
        template.release(&me, |key| {
            key.split_once('/')
                .is_some_and(|(_, key)| remote.place(id, key) != Placement::Here)
        })
    }

    /// Put away every active key of the keyed component `id`; returns how many.
    pub(crate) fn release_all(&self, router: &Router, id: &str) -> usize {
        let (Some(template), Some(me)) = (self.template(id), router.me.upgrade()) else {
            return 0;
        };
        template.release(&me, |_| true)
    }
}
