//! The host's timer task: one task, one ordered map of deadlines, for every component's
//! timers. A task per timer would cost a task's memory for each of possibly hundreds of
//! thousands; a map entry is a few dozen bytes, and the task sleeps until the earliest.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use tokio::sync::Notify;

use super::table::ActorTimers;

/// A timer armed in the wheel: when it is due and which arming it is. Arming numbers are
/// unique, so a key never names a timer that was replaced or cancelled since.
pub(crate) type Key = (Instant, u64);

/// Every armed timer of one host, in deadline order, and the task that fires them.
pub(crate) struct TimerWheel {
    deadlines: Mutex<BTreeMap<Key, Armed>>,
    next_arming: AtomicU64,
    /// Wakes the task when a deadline earlier than every other is armed, and when the wheel
    /// is dropped.
    wake: Arc<Notify>,
    started: AtomicBool,
}

/// Whose timer an entry of the wheel is.
struct Armed {
    owner: Weak<ActorTimers>,
    name: Arc<str>,
}

impl TimerWheel {
    pub(crate) fn new() -> Arc<TimerWheel> {
        Arc::new(TimerWheel {
            deadlines: Mutex::new(BTreeMap::new()),
            next_arming: AtomicU64::new(1),
            wake: Arc::new(Notify::new()),
            started: AtomicBool::new(false),
        })
    }

    /// Arm `owner`'s timer `name` for `due`; the key that disarms it.
    pub(crate) fn arm(
        self: &Arc<Self>,
        due: Instant,
        owner: Weak<ActorTimers>,
        name: Arc<str>,
    ) -> Key {
        let key = (due, self.next_arming.fetch_add(1, Ordering::Relaxed));
        let earliest = {
            let mut deadlines = self.lock();
            deadlines.insert(key, Armed { owner, name });
            deadlines
                .first_key_value()
                .is_some_and(|(first, _)| *first == key)
        };
        self.start();
        if earliest {
            // Stores a permit if the task is busy firing, so it looks again before it sleeps.
            self.wake.notify_one();
        }
        key
    }

    /// Take the timer armed under `key` out of the wheel, if it is still there.
    pub(crate) fn disarm(&self, key: Key) {
        self.lock().remove(&key);
    }

    /// Start the task on the runtime of the first arming: a timer is armed by a guest's
    /// handler or by the actor that delivers a timer's message, both of which run on the
    /// broker's runtime.
    fn start(self: &Arc<Self>) {
        if self.started.load(Ordering::Relaxed) || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(run(Arc::downgrade(self), self.wake.clone()));
            }
            Err(_) => {
                self.started.store(false, Ordering::Release);
                tracing::error!(
                    "a timer was armed outside a tokio runtime; it fires once the next timer is armed on one"
                );
            }
        }
    }

    /// Take every entry due at `now`, earliest first, and the deadline after them.
    fn take_due(&self, now: Instant) -> (Vec<(Key, Armed)>, Option<Instant>) {
        let mut deadlines = self.lock();
        let mut due = Vec::new();
        while let Some(entry) = deadlines.first_entry() {
            if entry.key().0 > now {
                return (due, Some(entry.key().0));
            }
            due.push(entry.remove_entry());
        }
        (due, None)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Armed>> {
        self.deadlines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for TimerWheel {
    /// Lets the task see that the wheel is gone and end.
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// The task: fire what is due, sleep until the next deadline or an earlier arming, and end
/// once the wheel is dropped (with the broker and its last component).
async fn run(wheel: Weak<TimerWheel>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(wheel) = wheel.upgrade() else {
                return;
            };
            // tokio's timer never completes early, and nothing due later than now is taken:
            // a timer never fires before its deadline.
            let (due, next) = wheel.take_due(Instant::now());
            for (key, armed) in due {
                if let Some(owner) = armed.owner.upgrade() {
                    owner.fire(&armed.name, key);
                }
            }
            next
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}
