//! One component's timers: the guest's `timers` imports, and the firings its actor takes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use courier_host_core::{ComponentId, TimerError, TimerStart, Timers};
use courier_host_store::{Timer as StoredTimer, TimerChange};

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
    /// Whether the component is durable: its timers are kept in its store, and `changed`
    /// names those whose record must be written with its next commit.
    durable: AtomicBool,
    changed: Mutex<HashSet<Arc<str>>>,
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
    /// Ticks that came due while the host was down, found when the timer was loaded from
    /// the store and not yet told to the guest: the next firing stands for them too.
    missed_before: u64,
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
            durable: AtomicBool::new(false),
            changed: Mutex::new(HashSet::new()),
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
        let told = missed.saturating_add(std::mem::take(&mut timer.missed_before));
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
        self.missed_ticks.fetch_add(told, Ordering::Relaxed);
        Some(Firing {
            payload: timer.payload.clone(),
            missed: told,
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

    /// For a durable component: the record of `name` must be written with the next commit.
    fn changed(&self, name: &Arc<str>) {
        if self.durable.load(Ordering::Relaxed) {
            self.lock_changed().insert(name.clone());
        }
    }

    fn lock_changed(&self) -> std::sync::MutexGuard<'_, HashSet<Arc<str>>> {
        self.changed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Timer>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Durable timers: the table's changes as the store's records, and the records back in the
/// table at spawn.
impl ActorTimers {
    /// Keep this component's timers in its store from now on: every change to one is
    /// noted, for [`changes`](Self::changes) to give to the next commit.
    pub(crate) fn keep_in_store(&self) {
        self.durable.store(true, Ordering::Relaxed);
    }

    /// The actor handled the firing it took of `name`: the timer's record moves on (a
    /// one-shot goes, a periodic one is due at its next tick) with the commit of the batch
    /// that handled it, never before, so a crash before that commit fires it again.
    pub(crate) fn handled(&self, name: &str) {
        if !self.durable.load(Ordering::Relaxed) {
            return;
        }
        let name = match self.lock().get_key_value(name) {
            Some((name, _)) => name.clone(),
            None => Arc::from(name),
        };
        self.lock_changed().insert(name);
    }

    /// Whether any timer changed since the last [`changes`](Self::changes).
    pub(crate) fn has_changes(&self) -> bool {
        !self.lock_changed().is_empty()
    }

    /// The changes to write with the next commit, with the names they are for (to give
    /// back with [`unsent`](Self::unsent) if the commit fails). Each is the timer as it is
    /// now: one the table holds is put, with its next deadline on the wall clock; one it
    /// does not is cancelled.
    pub(crate) fn changes(&self) -> (Vec<Arc<str>>, Vec<TimerChange>) {
        let names: Vec<Arc<str>> = self.lock_changed().drain().collect();
        if names.is_empty() {
            return (names, Vec::new());
        }
        // The monotonic clock first: a pause between the two reads then makes the wall
        // deadline later than it should be, never earlier.
        let now = Instant::now();
        let wall = SystemTime::now();
        let table = self.lock();
        let changes = names
            .iter()
            .map(|name| match table.get(name) {
                Some(timer) => TimerChange::Put(StoredTimer {
                    actor: self.id.to_string(),
                    name: name.to_string(),
                    due: wall_clock(timer.due, wall, now),
                    period: timer.period,
                    payload: timer.payload.clone(),
                }),
                None => TimerChange::Cancel(name.to_string()),
            })
            .collect();
        (names, changes)
    }

    /// A commit that held the changes of `names` failed: they go with the next one.
    pub(crate) fn unsent(&self, names: Vec<Arc<str>>) {
        self.lock_changed().extend(names);
    }

    /// Put the timers the store kept for this component back in the table and the wheel,
    /// as a spawn finds them. One whose deadline passed while the host was down fires at
    /// once; a periodic one fires once for every tick it missed, which the guest's
    /// `missed-ticks` counts, and then keeps to its grid. Past the component's limit the
    /// rest are dropped (and forgotten in the store with the next commit).
    pub(crate) fn restore(&self, stored: Vec<StoredTimer>) {
        let (wall, now) = (SystemTime::now(), Instant::now());
        let mut table = self.lock();
        let mut dropped = 0usize;
        for record in stored {
            let name: Arc<str> = Arc::from(record.name.as_str());
            if table.len() >= self.limits.max_timers as usize {
                dropped += 1;
                self.lock_changed().insert(name);
                continue;
            }
            let (due, missed_before) = monotonic(record.due, record.period, wall, now);
            let key = self.wheel.arm(due, self.me.clone(), name.clone());
            table.insert(
                name,
                Timer {
                    payload: record.payload,
                    period: record.period,
                    due,
                    armed: Some(key),
                    in_flight: None,
                    missed_before,
                },
            );
        }
        if dropped > 0 {
            tracing::warn!(component = %self.id, dropped, limit = self.limits.max_timers, "stored timers over the component's limit were dropped");
        }
    }
}

/// The wall-clock time of the monotonic deadline `due`, given one moment on both clocks.
fn wall_clock(due: Instant, wall: SystemTime, now: Instant) -> SystemTime {
    match due.checked_duration_since(now) {
        Some(ahead) => wall.checked_add(ahead.min(NEVER)),
        None => wall.checked_sub(now.duration_since(due)),
    }
    .unwrap_or(wall)
}

/// The monotonic deadline of the stored wall-clock deadline `due`, and the ticks of a
/// periodic timer that passed before the latest one not after `wall` (the firing then
/// stands for them). A deadline too far back for the monotonic clock to hold (a host that
/// just booted) is now: late, never early.
fn monotonic(
    due: SystemTime,
    period: Option<Duration>,
    wall: SystemTime,
    now: Instant,
) -> (Instant, u64) {
    let Ok(behind) = wall.duration_since(due) else {
        let ahead = due.duration_since(wall).unwrap_or_default().min(NEVER);
        return (now.checked_add(ahead).unwrap_or(now + NEVER), 0);
    };
    let (behind, skipped) = match period {
        Some(period) if behind >= period => {
            let period_ns = period.as_nanos().max(1);
            let skipped = behind.as_nanos() / period_ns;
            let rest = behind.as_nanos() % period_ns;
            let rest = duration_from_nanos(rest).unwrap_or_default();
            (rest, u64::try_from(skipped).unwrap_or(u64::MAX))
        }
        _ => (behind, 0),
    };
    (now.checked_sub(behind).unwrap_or(now), skipped)
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
        self.changed(&name);
        table.insert(
            name,
            Timer {
                payload: payload.into(),
                period,
                due,
                armed: Some(key),
                in_flight: None,
                missed_before: 0,
            },
        );
        Ok(())
    }

    fn cancel(&self, name: &str) -> bool {
        let Some((name, timer)) = self.lock().remove_entry(name) else {
            return false;
        };
        self.changed(&name);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A mailbox that takes every firing and remembers it.
    #[derive(Default)]
    struct Mailbox(Mutex<Vec<(Arc<str>, u64)>>);

    impl Doorbell for Mailbox {
        fn ring(&self, name: Arc<str>, firing: u64) -> Ring {
            self.0.lock().unwrap().push((name, firing));
            Ring::Queued
        }
    }

    fn stored(changes: &[TimerChange]) -> &StoredTimer {
        match changes {
            [TimerChange::Put(timer)] => timer,
            other => panic!("not one put: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_durable_timers_record_moves_on_only_once_its_firing_was_handled() {
        let limits = TimerLimits {
            max_timers: 8,
            max_name_bytes: 255,
            max_payload_bytes: 1024,
        };
        let timers = ActorTimers::new("tk".into(), limits, TimerWheel::new());
        timers.keep_in_store();
        let mailbox = Arc::new(Mailbox::default());
        let doorbell: Arc<dyn Doorbell> = mailbox.clone();
        timers.ring_at(Arc::downgrade(&doorbell));
        let period = Duration::from_millis(200);
        timers
            .schedule(
                "tick",
                TimerStart::After(period),
                Some(period),
                b"p".to_vec(),
            )
            .unwrap();
        let (_, scheduled) = timers.changes();
        let first = stored(&scheduled).due;

        let firing = loop {
            if let Some((_, firing)) = mailbox.0.lock().unwrap().first() {
                break *firing;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        timers
            .take("tick", firing)
            .expect("the firing is still due");
        // Taken for its handler, which has not run: a crash now must fire it again.
        assert!(!timers.has_changes());
        timers.handled("tick");
        let (_, handled) = timers.changes();
        // Each wall deadline is read from the monotonic one through the two clocks, late by
        // however long the thread paused between reading them: the next is a period on,
        // give or take such a pause.
        assert!(
            stored(&handled).due >= first + period / 2,
            "{handled:?} after {first:?}"
        );

        // A failed commit gives its changes back for the next one.
        let (names, _) = {
            timers.handled("tick");
            timers.changes()
        };
        timers.unsent(names);
        assert!(timers.has_changes());
        assert!(timers.cancel("tick"));
        let (_, cancelled) = timers.changes();
        assert_eq!(cancelled, [TimerChange::Cancel("tick".into())]);
    }

    #[test]
    fn a_deadline_missed_for_several_periods_comes_back_as_now_with_the_ticks_counted() {
        let (wall, now) = (SystemTime::now(), Instant::now());
        let period = Duration::from_millis(100);
        let (due, missed) = monotonic(wall - Duration::from_millis(350), Some(period), wall, now);
        assert_eq!(missed, 3);
        // The latest tick not after now, 50 ms ago: late, never early.
        assert!(due <= now && now.duration_since(due) <= Duration::from_millis(51));
        let (due, missed) = monotonic(wall + Duration::from_secs(5), Some(period), wall, now);
        assert_eq!((due, missed), (now + Duration::from_secs(5), 0));
    }
}
