//! Stopping a keyed component: no key is made from then on, every active key stops as a
//! component does (handling what it queued first), and the ones being put away are waited
//! for.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::broker::Broker;
use crate::registry::Entry;
use crate::report::ShutdownReport;

impl Broker {
    /// Stop the keyed component `id`, if it is one: its template goes first, so a message
    /// to one of its keys from then on is `target-not-found` (one that reached a key before
    /// is handled first); then every active key stops as [`Broker::stop`] stops a
    /// component. A durable key's committed state stays in the store, for the component
    /// spawned again under the same id. `None` if `id` is no keyed component.
    pub(crate) async fn stop_keyed(&self, id: &str) -> Option<ShutdownReport> {
        let router = self.router();
        let template = router
            .keyed
            .templates
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)?;
        if let Some(remote) = router.remote.get()
            && template.served().is_some()
        {
            remote.withdraw(&template.id);
        }
        let entries: Vec<Arc<Entry>> = {
            let mut keys = template.keys.lock().unwrap_or_else(|e| e.into_inner());
            keys.active
                .drain()
                .filter_map(|(_, entry)| router.registry.remove_if_current(&entry.shared))
                .collect()
        };
        let before = router.before_stopping(&entries);
        let report = router.stop_entries(entries, before).await;
        // Keys being put away hold their instances until their actors end.
        while template.passivating.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Its wake-ups end with it (a durable key's timers stay in the store).
        let wakeups = template.wakeups.clone();
        drop(template);
        wakeups.changed.notify_one();
        tracing::info!(component = %id, keys = report.stopped.len(), "keyed component stopped");
        Some(report)
    }
}
