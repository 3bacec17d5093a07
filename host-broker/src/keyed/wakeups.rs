//! Durable timers of keys that are not active: a durable key's timers are kept in the store
//! like a durable component's, and a key put away (or found in the store at registration)
//! with a timer pending is woken when the earliest comes due: activated, its timers loaded
//! back into its table (`activate_core`), where the due one fires at once.
//!
//! One task per keyed component waits for the earliest wake-up among its keys; a wake-up
//! is an entry of (when, key) in an ordered set, about a hundred bytes per key that waits,
//! never an instance. A key that is active when its wake-up comes has its timers armed
//! already, and the wake-up does nothing. Keys that are not durable lose their timers when
//! put away, as their state.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use courier_host_core::{ComponentId, MessagingError};
use courier_host_store::Store;
use tokio::sync::Notify;

use super::{Stored, Template};
use crate::mailbox::Envelope;
use crate::routing::Router;

/// How soon a wake-up refused for now (too many keys being put away) is tried again.
const RETRY: Duration = Duration::from_millis(10);

/// The keys of one keyed component to wake, by when.
#[derive(Default)]
pub(crate) struct Wakeups {
    due: Mutex<BTreeSet<(Instant, ComponentId)>>,
    pub(super) changed: Notify,
}

impl Wakeups {
    fn add(&self, at: Instant, id: ComponentId) {
        self.due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((at, id));
        self.changed.notify_one();
    }

    fn next(&self) -> Option<Instant> {
        self.due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .map(|(at, _)| *at)
    }

    /// The keys due by `now`, taken out.
    fn take_due(&self, now: Instant) -> Vec<ComponentId> {
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken = Vec::new();
        while let Some((at, _)) = due.first() {
            if *at > now {
                break;
            }
            if let Some((_, id)) = due.pop_first() {
                taken.push(id);
            }
        }
        taken
    }
}

impl Template {
    /// Wake the durable key `id`, which is not active, when the earliest timer the store
    /// keeps for it is due (if it keeps any).
    pub(crate) async fn wake_for_timers(&self, store: &dyn Store, id: &ComponentId) {
        match store.timers(id).await {
            Ok(timers) => {
                if let Some(due) = timers.iter().map(|timer| timer.due).min() {
                    let ahead = due
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO);
                    self.wakeups.add(Instant::now() + ahead, id.clone());
                }
            }
            Err(err) => {
                tracing::error!(component = %id, error = %err, "its stored timers could not be read: they do not wake it until its next message");
            }
        }
    }

    /// Activate the key `id` for its timers, unless it is active (its timers are armed).
    fn wake(self: &Arc<Self>, router: &Arc<Router>, id: ComponentId) {
        if router.registry.get(&id).is_some() {
            return;
        }
        match self.activate(router, &id, Stored::default()) {
            // Not a message: the actor makes the instance, which loads the timers.
            Ok(entry) => {
                let _ = entry.try_send(Envelope::Wake);
            }
            Err(MessagingError::MailboxFull(_)) => self.wakeups.add(Instant::now() + RETRY, id),
            Err(err) => {
                tracing::warn!(component = %id, error = %err, "not woken for its timers");
            }
        }
    }
}

/// Wake the template's keys as their timers come due, for as long as it and the broker
/// live.
pub(crate) async fn wake_keys(template: Weak<Template>, router: Weak<Router>) {
    let Some(wakeups) = template.upgrade().map(|t| t.wakeups.clone()) else {
        return;
    };
    loop {
        let changed = wakeups.changed.notified();
        let next = wakeups.next();
        tokio::select! {
            () = changed => {}
            () = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let (Some(template), Some(router)) = (template.upgrade(), router.upgrade()) else {
            return;
        };
        if router.is_shutting_down() {
            return;
        }
        for id in wakeups.take_due(Instant::now()) {
            template.wake(&router, id);
        }
    }
}
