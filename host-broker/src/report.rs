//! What the broker reports of its components: one component's counters at one moment, and
//! what stopping components delivered and left undelivered.

use std::sync::atomic::Ordering;
use std::time::Duration;

use courier_host_core::ComponentId;

use crate::dead_letter::DeadLetter;
use crate::metrics::LatencySummary;
use crate::registry::{ActorShared, ComponentState};
use crate::timers::TimerMetrics;

/// A component's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// The component.
    pub id: ComponentId,
    /// Where it is in its life.
    pub state: ComponentState,
    /// Messages and requests its handlers completed (with `Ok` or a handler error).
    pub delivered: u64,
    /// Handler errors and traps.
    pub failed: u64,
    /// Messages for it that were dead-lettered.
    pub dead_lettered: u64,
    /// Messages for it refused to their senders (mailbox full, failed, too large).
    pub refused: u64,
    /// Instances replaced after a trap.
    pub restarts: u64,
    /// Requests it was handed directly, idle, and answered on the requester's task rather
    /// than from its mailbox (a part of `delivered`, `failed` and `dead_lettered`).
    pub handed_off: u64,
    /// Messages waiting in its mailbox.
    pub mailbox_depth: usize,
    /// The version of the component it runs ([`Component::version`](courier_host_core::Component::version)).
    pub version: String,
    /// Handler latency percentiles.
    pub latency: LatencySummary,
    /// Its timers: pending, fired, cancelled, and how late they fired.
    pub timers: TimerMetrics,
    /// Its commits to the store, if it is durable.
    pub durable: Option<DurableMetrics>,
}

/// A durable component's commits: one per handled batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DurableMetrics {
    /// Batches committed.
    pub commits: u64,
    /// Commits the store refused (their messages go again with the next batch).
    pub failed_commits: u64,
    /// The mean time of its commits, fsync included.
    pub mean_commit: Duration,
}

/// What [`Broker::shutdown`](crate::Broker::shutdown) or [`Broker::stop`](crate::Broker::stop)
/// could not deliver.
#[derive(Debug, Clone, Default)]
pub struct ShutdownReport {
    /// Components that were stopped.
    pub stopped: Vec<ComponentId>,
    /// Messages delivered while draining.
    pub delivered_while_draining: u64,
    /// Messages that were still queued when the deadline passed, now dead letters.
    pub undelivered: Vec<DeadLetter>,
}

impl MetricsSnapshot {
    pub(crate) fn of(shared: &ActorShared, mailbox_depth: usize) -> MetricsSnapshot {
        let m = &shared.metrics;
        MetricsSnapshot {
            id: shared.id.clone(),
            state: shared.state(),
            delivered: m.delivered.load(Ordering::Relaxed),
            failed: m.failed.load(Ordering::Relaxed),
            dead_lettered: m.dead_lettered.load(Ordering::Relaxed),
            refused: m.refused.load(Ordering::Relaxed),
            restarts: m.restarts.load(Ordering::Relaxed),
            handed_off: m.handed_off.load(Ordering::Relaxed),
            mailbox_depth,
            version: shared.component().version().to_string(),
            latency: m.latency.summary(),
            timers: shared.timers.metrics(),
            durable: shared.durable.as_ref().map(|durable| DurableMetrics {
                commits: durable.commits.load(Ordering::Relaxed),
                failed_commits: durable.failed_commits.load(Ordering::Relaxed),
                mean_commit: durable.mean_commit(),
            }),
        }
    }
}
