//! Timers: messages a component schedules to itself, once or periodically, by name.
//!
//! Two parts, one per job. `table` keeps one component's timers (its `timers` imports,
//! through host-core's [`Timers`](courier_host_core::Timers) trait): what each is, its
//! limits, which firing of it is in the component's mailbox, and its counters. `wheel` is
//! the host's one task that waits for the next deadline among every component's timers and
//! rings the component's mailbox when one comes due.
//!
//! A firing travels as a small `Timer` envelope naming the timer and the firing; the payload
//! stays in the table until the actor takes the firing, just before the handler runs. So a
//! cancel or a replacement that comes between the ring and the handler still wins: the actor
//! finds the firing gone and handles nothing. A periodic timer has at most one firing in the
//! mailbox; ticks that come due meanwhile are counted when the firing is taken, not queued.
//!
//! The table lives in memory, with the component. A durable component's timers are kept in
//! its store too, keyed by (component, name) as in the table: the table notes which timers
//! changed, and the actor's commit after each batch writes them as they are then, in the
//! transaction that consumes the batch's messages and keeps its state. A firing counts as a
//! change only once its handler has run, so the stored record moves on with the commit of
//! the state that handler left, never before: a crash in between fires it again after the
//! restart (at least once), and never early. At spawn the stored timers are put back in the
//! table and armed; one due while the host was down rings at once, a periodic one once for
//! all the ticks it missed. A stop keeps them in the store for the next spawn; a removal
//! forgets them ([`forget_stored`]).
//!
//! Nothing here knows the registry or the actor: the table rings a [`Doorbell`], which the
//! registry's entry implements, and the actor asks the table for a firing by its name.

mod table;
mod wheel;

use std::sync::Arc;
use std::time::Duration;

use courier_host_store::{Batch, Store, StoreError, TimerChange};

use crate::metrics::LatencySummary;

pub(crate) use table::{ActorTimers, TimerLimits};
pub(crate) use wheel::TimerWheel;

/// How many timers one component may have pending unless its spec says otherwise
/// ([`ComponentSpec::max_timers`](crate::ComponentSpec::max_timers)).
pub const DEFAULT_MAX_TIMERS: u32 = 64;

/// The shortest period of a periodic timer. A timer is for work that recurs on a human or
/// housekeeping scale; faster than every 10 ms, a component is better served by a loop of
/// its own messages. It also bounds what one component's timers can ask of the host: 64
/// timers at the minimum are 6,400 firings a second.
pub const MIN_TIMER_PERIOD: Duration = Duration::from_millis(10);

/// The sender id of a timer's messages is this prefix and the timer's name. A component id
/// cannot contain `:` ([`check_id`](crate::check_id)), so no component can send as a timer.
pub const TIMER_SENDER_PREFIX: &str = "timer:";

/// How soon a firing that found its component's mailbox full tries again. A full mailbox
/// means a busy component, which would not take the firing sooner anyway.
const RETRY_WHEN_FULL: Duration = Duration::from_millis(10);

/// Forget every timer the store keeps for `actor`, in one transaction: a removed durable
/// component's timers end with it.
pub(crate) async fn forget_stored(store: &dyn Store, actor: &str) -> Result<(), StoreError> {
    let stored = store.timers(actor).await?;
    if stored.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::new(actor);
    batch.timers = stored
        .into_iter()
        .map(|timer| TimerChange::Cancel(timer.name))
        .collect();
    store.commit(batch).await.map(|_| ())
}

/// What ringing a component's mailbox did.
pub(crate) enum Ring {
    /// The firing is in the mailbox.
    Queued,
    /// The mailbox is full; try again later.
    Full,
    /// The component takes no more messages.
    Closed,
}

/// Where a component's timer firings go: its mailbox.
pub(crate) trait Doorbell: Send + Sync {
    /// Put the firing `firing` of the timer `name` in the mailbox, without waiting.
    fn ring(&self, name: Arc<str>, firing: u64) -> Ring;
}

/// A component's timers at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerMetrics {
    /// Timers scheduled and not yet fired or cancelled (a one-shot timer whose message is
    /// waiting in the mailbox is still pending: it can still be cancelled).
    pub pending: usize,
    /// Timer messages handed to the handler.
    pub fired: u64,
    /// Timers cancelled while pending.
    pub cancelled: u64,
    /// Timers replaced while pending by a timer of the same name.
    pub replaced: u64,
    /// Ticks of periodic timers that came due while the component was busy and were
    /// folded into the next message instead of delivered ([`missed-ticks`]).
    ///
    /// [`missed-ticks`]: https://docs.rs/courier-sdk/latest/courier_sdk/fn.missed_ticks.html
    pub missed_ticks: u64,
    /// How late timer messages reached the handler: from the moment each was due to the
    /// moment its handler started (so it includes any wait behind other messages).
    pub lateness: LatencySummary,
}
