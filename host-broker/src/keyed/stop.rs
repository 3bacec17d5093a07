//! Stopping a keyed component: no key is made from then on, every active key stops as a
//! component does (handling what it queued first), and the ones being put away are waited
//! for.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Keyed;
use crate::registry::Entry;
use crate::report::ShutdownReport;
use crate::routing::Router;

impl Keyed {
    /// Stop the keyed component `id`, if it is one: its template goes first, so no key of it
    /// is made from then on; then every active key stops as a component does, and the keys
    /// being put away are waited for. `None` if `id` is no keyed component.
    pub(crate) async fn stop(&self, router: &Router, id: &str) -> Option<ShutdownReport> {
        let template = self
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
