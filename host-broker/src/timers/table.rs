//! One component's timers: the guest's `timers` imports, and the firings its actor takes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_host_core::{ComponentId, TimerError, TimerStart, Timers};

use super::wheel::{Key, TimerWheel};
use super::{Doorbell, MIN_TIMER_PERIOD, RETRY_WHEN_FULL, Ring, TimerMetrics};
use crate::metrics::{Histogram, bump};

/// Far enough ahead to mean never, near enough that `Instant` can hold it: a delay past
/// what `Instant` holds is cut to this.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// What one component may schedule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimerLimits {
    /// Timers pending at once; 0 turns timers off.
    pub(crate) max_timers: u32,
    /// The longest name, in bytes.
    pub(crate) max_name_bytes: usize,
    /// The largest payload, in bytes.
    pub(crate) max_payload_bytes: usize,
}

/// One component's timers, shared by every instance it has: they outlive a restart and an
/// upgrade, and end with the component ([`ActorTimers::end`]).
pub(crate) struct ActorTimers {
    id: ComponentId,
    limits: TimerLimits,
    table: Mutex<HashMap<Arc<str>, Timer>>,
    wheel: Arc<TimerWheel>,
    /// This table, for the wheel's entries, which must not keep it alive.
    me: Weak<ActorTimers>,
    /// The component's mailbox, once it has an entry in the registry.
    doorbell: OnceLock<Weak<dyn Doorbell>>,
    /// The missed ticks of the firing being handled, for the guest's `missed-ticks`.
    missed_now: AtomicU64,
    ended: AtomicBool,
    fired: AtomicU64,
    cancelled: AtomicU64,
    replaced: AtomicU64,
    missed_ticks: AtomicU64,
    lateness: Histogram,
}

/// One timer.
struct Timer {
    payload: Bytes,
    period: Option<Duration>,
    /// When its next firing is due, or, while a firing is in the mailbox, when that one was.
    due: Instant,
    /// Its entry in the wheel, while it waits for a deadline.
    armed: Option<Key>,
    /// The firing in the mailbox, if there is one.
    in_flight: Option<u64>,
}

/// A firing the actor takes to deliver.
pub(crate) struct Firing {
    pub(crate) payload: Bytes,
    /// Ticks after the one delivered that came due before it was taken.
    pub(crate) missed: u64,
}

impl ActorTimers {
    pub(crate) fn new(
        id: ComponentId,
        limits: TimerLimits,
        wheel: Arc<TimerWheel>,
    ) -> Arc<ActorTimers> {
        Arc::new_cyclic(|me| ActorTimers {
            id,
            limits,
            table: Mutex::new(HashMap::new()),
            wheel,
            me: me.clone(),
            doorbell: OnceLock::new(),
            missed_now: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            fired: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            replaced: AtomicU64::new(0),
            missed_ticks: AtomicU64::new(0),
            lateness: Histogram::new(),
        })
    }

    /// Where firings go from now on.
    pub(crate) fn ring_at(&self, doorbell: Weak<dyn Doorbell>) {
        let _ = self.doorbell.set(doorbell);
    }

    /// The wheel found the timer `name` due under `key`: put a firing in the mailbox, unless
    /// the timer was cancelled or replaced meanwhile.
    pub(crate) fn fire(&self, name: &Arc<str>, key: Key) {
        let mut table = self.lock();
        let Some(timer) = table.get_mut(name) else {
            return;
        };
        if timer.armed != Some(key) {
            return;
        }
        timer.armed = None;
        let ring = match self.doorbell.get().and_then(Weak::upgrade) {
            Some(doorbell) => doorbell.ring(name.clone(), key.1),
            None => Ring::Closed,
        };
        match ring {
            Ring::Queued => timer.in_flight = Some(key.1),
            Ring::Full => {
                let retry = Instant::now() + RETRY_WHEN_FULL;
                timer.armed = Some(self.wheel.arm(retry, self.me.clone(), name.clone()));
            }
            Ring::Closed => {
                drop(table);
                self.end();
            }
        }
    }

    /// Take the firing `firing` of the timer `name` for delivery, if it is still the one:
    /// `None` if the timer was cancelled or replaced since it was rung. A one-shot timer is
    /// done; a periodic one is armed for its first tick after now, and the ticks between are
    /// counted as missed.
    pub(crate) fn take(&self, name: &str, firing: u64) -> Option<Firing> {
        let now = Instant::now();
        let mut table = self.lock();
        let timer = table.get_mut(name)?;
        if timer.in_flight != Some(firing) {
            return None;
        }
        timer.in_flight = None;
        let due = timer.due;
        self.lateness.record(now.saturating_duration_since(due));
        bump(&self.fired);
        let Some(period) = timer.period else {
            let (_, timer) = table.remove_entry(name)?;
            return Some(Firing {
                payload: timer.payload,
                missed: 0,
            });
        };
        let behind = now.saturating_duration_since(due).as_nanos();
        let period_ns = period.as_nanos().max(1);
        let missed = u64::try_from(behind / period_ns).unwrap_or(u64::MAX);
        // The first tick strictly after now: never early, and never one already counted.
        let ahead = period_ns.saturating_mul(u128::from(missed) + 1);
        let next = duration_from_nanos(ahead)
            .and_then(|ahead| due.checked_add(ahead))
            .unwrap_or_else(|| now + NEVER);
        timer.due = next;
        let name = table.get_key_value(name)?.0.clone();
        let key = self.wheel.arm(next, self.me.clone(), name.clone());
        let timer = table.get_mut(&name)?;
        timer.armed = Some(key);
        self.missed_ticks.fetch_add(missed, Ordering::Relaxed);
        Some(Firing {
            payload: timer.payload.clone(),
            missed,
        })
    }

    /// The missed ticks the guest's `missed-ticks` answers for the call about to start.
    pub(crate) fn set_missed(&self, missed: u64) {
        self.missed_now.store(missed, Ordering::Relaxed);
    }

    /// The component ended: its timers go, and no more are taken. Idempotent.
    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        let ended: Vec<Timer> = self.lock().drain().map(|(_, timer)| timer).collect();
        for key in ended.into_iter().filter_map(|timer| timer.armed) {
            self.wheel.disarm(key);
        }
    }

    /// Its counters now.
    pub(crate) fn metrics(&self) -> TimerMetrics {
        TimerMetrics {
            pending: self.lock().len(),
            fired: self.fired.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            replaced: self.replaced.load(Ordering::Relaxed),
            missed_ticks: self.missed_ticks.load(Ordering::Relaxed),
            lateness: self.lateness.summary(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Timer>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `nanos` as a `Duration`, if it fits.
fn duration_from_nanos(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

impl Timers for ActorTimers {
    fn schedule(
        &self,
        name: &str,
        start: TimerStart,
        period: Option<Duration>,
        payload: Vec<u8>,
    ) -> Result<(), TimerError> {
        let limits = self.limits;
        if limits.max_timers == 0 || self.ended.load(Ordering::Acquire) {
            return Err(TimerError::Disabled);
        }
        if name.len() > limits.max_name_bytes {
            return Err(TimerError::NameTooLong(
                u32::try_from(limits.max_name_bytes).unwrap_or(u32::MAX),
            ));
        }
        if payload.len() > limits.max_payload_bytes {
            return Err(TimerError::PayloadTooLarge(limits.max_payload_bytes as u64));
        }
        if period.is_some_and(|period| period < MIN_TIMER_PERIOD) {
            return Err(TimerError::PeriodTooShort(
                MIN_TIMER_PERIOD.as_nanos() as u64
            ));
        }
        let now = Instant::now();
        let due = now
            .checked_add(start.delay().min(NEVER))
            .unwrap_or(now + NEVER);
        let mut table = self.lock();
        let name: Arc<str> = match table.get_key_value(name) {
            Some((name, timer)) => {
                // Replaced: its wheel entry goes now, and a firing of it in the mailbox
                // finds it gone.
                if let Some(key) = timer.armed {
                    self.wheel.disarm(key);
                }
                bump(&self.replaced);
                name.clone()
            }
            None if table.len() >= limits.max_timers as usize => {
                return Err(TimerError::LimitReached(limits.max_timers));
            }
            None => Arc::from(name),
        };
        let key = self.wheel.arm(due, self.me.clone(), name.clone());
        table.insert(
            name,
            Timer {
                payload: payload.into(),
                period,
                due,
                armed: Some(key),
                in_flight: None,
            },
        );
        Ok(())
    }

    fn cancel(&self, name: &str) -> bool {
        let Some(timer) = self.lock().remove(name) else {
            return false;
        };
        if let Some(key) = timer.armed {
            self.wheel.disarm(key);
        }
        bump(&self.cancelled);
        true
    }

    fn missed_ticks(&self) -> u64 {
        self.missed_now.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for ActorTimers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorTimers")
            .field("id", &self.id)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}
