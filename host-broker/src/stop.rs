//! Stopping components, as every way of stopping does it ([`Broker::stop`], a component's
//! handle, a keyed component's stop, shutdown): withdrawn from other hosts, a stop order
//! queued behind what each mailbox holds, their actors waited for, and a report of what was
//! delivered meanwhile and what was left.
//!
//! [`Broker::stop`]: crate::Broker::stop

use std::sync::Arc;
use std::sync::atomic::Ordering;

use courier_host_core::ComponentId;

use crate::error::BrokerError;
use crate::mailbox::Envelope;
use crate::registry::{ActorShared, Entry};
use crate::remote::served_of;
use crate::report::ShutdownReport;
use crate::routing::Router;

impl Router {
    /// [`Broker::stop`](crate::Broker::stop) the component whose actor shares `shared`, if it is still the
    /// one registered under its id.
    pub(crate) async fn stop_instance(
        &self,
        shared: &Arc<ActorShared>,
    ) -> Result<ShutdownReport, BrokerError> {
        let entry = self
            .registry
            .remove_if_current(shared)
            .ok_or_else(|| BrokerError::NotFound(shared.id.clone()))?;
        let entries = vec![entry];
        let before = self.before_stopping(&entries);
        Ok(self.stop_entries(entries, before).await)
    }

    /// The dead letters recorded so far and the messages `entries` delivered so far, for
    /// a report of what stopping them did.
    pub(crate) fn before_stopping(&self, entries: &[Arc<Entry>]) -> (u64, u64) {
        (self.dead_letters.total(), delivered(entries))
    }

    pub(crate) async fn stop_entries(
        &self,
        entries: Vec<Arc<Entry>>,
        (dead_before, delivered_before): (u64, u64),
    ) -> ShutdownReport {
        if let Some(remote) = self.remote.get() {
            for entry in &entries {
                if served_of(&entry.shared).is_some() {
                    remote.withdraw(&entry.shared.id);
                }
            }
        }
        let dead_letters = &self.dead_letters;
        for entry in &entries {
            // Queued behind what is already there, so those messages are handled first.
            // A send fails only if the actor has already ended, which is just as good.
            let _ = entry.send(Envelope::Stop).await;
        }
        for entry in &entries {
            if let Some(task) = entry.take_task() {
                let _ = task.await;
            }
        }
        let new_dead = (dead_letters.total() - dead_before) as usize;
        let mut undelivered = dead_letters.recent();
        let ids: Vec<ComponentId> = entries.iter().map(|e| e.shared.id.clone()).collect();
        undelivered = undelivered
            .split_off(undelivered.len().saturating_sub(new_dead))
            .into_iter()
            .filter(|letter| ids.contains(&letter.target))
            .collect();
        ShutdownReport {
            stopped: ids,
            delivered_while_draining: delivered(&entries) - delivered_before,
            undelivered,
        }
    }
}

/// The messages `entries` have delivered, in all.
fn delivered(entries: &[Arc<Entry>]) -> u64 {
    entries
        .iter()
        .map(|e| e.shared.metrics.delivered.load(Ordering::Relaxed))
        .sum()
}
