//! Per-component counters and a handler-latency histogram, cheap enough for every message.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets of the latency histogram: each power of two of nanoseconds split in four, which
/// keeps every percentile within about 19% of the true value from 1 ns to 2^63 ns.
const SUB_BUCKETS: u32 = 4;
const BUCKETS: usize = (64 * SUB_BUCKETS) as usize;

/// A lock-free histogram of durations.
pub(crate) struct Histogram {
    /// Made with the first call measured: 2 KiB that an actor never sent anything (most of
    /// a large, mostly idle population) does without.
    buckets: OnceLock<Box<[AtomicU64]>>,
    count: AtomicU64,
    /// Nanoseconds of all calls together, for the mean and Prometheus's `_sum`. A u64 of
    /// nanoseconds overflows after 584 years of handler time.
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Histogram {
            buckets: OnceLock::new(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, duration: Duration) {
        let ns = u64::try_from(duration.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let buckets = self
            .buckets
            .get_or_init(|| (0..BUCKETS).map(|_| AtomicU64::new(0)).collect());
        buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// The upper bound of the bucket holding the `q`-quantile (0.0..=1.0).
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count.load(Ordering::Relaxed);
        let buckets = self.buckets.get()?;
        if count == 0 {
            return None;
        }
        let rank = ((count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, bucket) in buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                let bound = upper_bound_of(index).min(self.max_ns.load(Ordering::Relaxed));
                return Some(Duration::from_nanos(bound));
            }
        }
        Some(Duration::from_nanos(self.max_ns.load(Ordering::Relaxed)))
    }

    pub(crate) fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count.load(Ordering::Relaxed),
            total: Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed)),
            p50: self.quantile(0.50),
            p90: self.quantile(0.90),
            p99: self.quantile(0.99),
            max: match self.max_ns.load(Ordering::Relaxed) {
                0 => None,
                ns => Some(Duration::from_nanos(ns)),
            },
        }
    }
}

fn bucket_of(ns: u64) -> usize {
    let log = 63 - ns.leading_zeros();
    let sub = if log >= 2 {
        ((ns >> (log - 2)) & 0b11) as u32
    } else {
        0
    };
    (log * SUB_BUCKETS + sub) as usize
}

fn upper_bound_of(index: usize) -> u64 {
    let log = index as u32 / SUB_BUCKETS;
    let sub = u64::from(index as u32 % SUB_BUCKETS);
    if log < 2 {
        return (1u64 << (log + 1)) - 1;
    }
    let base = 1u64 << log;
    let step = base / u64::from(SUB_BUCKETS);
    (base - 1).saturating_add(step.saturating_mul(sub + 1))
}

/// Handler latency percentiles of one component (approximate, within about 19%).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Handler calls measured.
    pub count: u64,
    /// The time of all of them together: with `count`, the mean.
    pub total: Duration,
    /// Median.
    pub p50: Option<Duration>,
    /// 90th percentile.
    pub p90: Option<Duration>,
    /// 99th percentile.
    pub p99: Option<Duration>,
    /// Slowest call.
    pub max: Option<Duration>,
}

/// The live counters of one component, which its actor updates for every message: on cache
/// lines of their own, away from what its senders update or read.
#[repr(align(128))]
pub(crate) struct Metrics {
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) handed_off: AtomicU64,
    pub(crate) latency: Histogram,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Metrics {
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            handed_off: AtomicU64::new(0),
            latency: Histogram::new(),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Broker-wide message accounting.
///
/// Once the broker is quiet (every mailbox empty, every remote send acknowledged),
/// `sent + arrived == delivered + refused + dead_lettered`: no message is lost without a
/// trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Messages and requests anyone here tried to send (a publication counts once per
    /// subscriber), to components here or on other hosts.
    pub sent: u64,
    /// Messages and requests that came from other hosts for components here (a publication
    /// counts once per subscriber here). They end here like the ones sent here.
    pub arrived: u64,
    /// Handled by their target's handler (whether it answered `Ok` or an error); for a
    /// message to another host, queued there (acknowledged by the serving host).
    pub delivered: u64,
    /// Refused to their sender at once with an error (unknown target, denied, mailbox
    /// full, too large, target failed, shutting down). A request to another host that the
    /// serving host answered with such an error counts here too, its handler's trap
    /// included: the requester heard why, and the dead letter is in that host's record.
    pub refused: u64,
    /// Accepted, then given up on, with a reason in the dead-letter record. A request to
    /// another host with no answer in time counts here (`unconfirmed`: it may have been
    /// handled there).
    pub dead_lettered: u64,
}

impl Accounting {
    /// Messages accepted and not yet delivered or dead-lettered (still in mailboxes or being
    /// handled).
    pub fn in_flight(&self) -> u64 {
        (self.sent + self.arrived)
            .saturating_sub(self.delivered + self.refused + self.dead_lettered)
    }
}

/// A counter on a cache line of its own. Senders bump `sent` on one core while actors bump
/// `delivered` on another; sharing a line would make every message bounce it between them.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct PaddedCounter(AtomicU64);

impl std::ops::Deref for PaddedCounter {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

#[derive(Default)]
pub(crate) struct BrokerCounters {
    pub(crate) sent: PaddedCounter,
    pub(crate) arrived: PaddedCounter,
    pub(crate) delivered: PaddedCounter,
    pub(crate) refused: PaddedCounter,
    pub(crate) dead_lettered: PaddedCounter,
    /// Payload bytes in every mailbox together, held to the broker's budget.
    pub(crate) queued_bytes: PaddedCounter,
}

impl BrokerCounters {
    pub(crate) fn snapshot(&self) -> Accounting {
        // Read the outcomes before `sent`, so a snapshot taken while messages move never
        // shows more outcomes than sends.
        let delivered = self.delivered.load(Ordering::Acquire);
        let refused = self.refused.load(Ordering::Acquire);
        let dead_lettered = self.dead_lettered.load(Ordering::Acquire);
        let sent = self.sent.load(Ordering::Acquire);
        let arrived = self.arrived.load(Ordering::Acquire);
        Accounting {
            sent,
            arrived,
            delivered,
            refused,
            dead_lettered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_bound_their_values() {
        for ns in [
            1u64,
            2,
            3,
            4,
            5,
            7,
            8,
            100,
            1000,
            123_456,
            1 << 40,
            u64::MAX,
        ] {
            let bucket = bucket_of(ns);
            assert!(
                upper_bound_of(bucket) >= ns,
                "{ns} above its bucket's bound"
            );
            if bucket > 0 {
                assert!(upper_bound_of(bucket - 1) < ns, "{ns} belongs lower");
            }
        }
    }

    #[test]
    fn quantiles_come_from_the_recorded_values() {
        let histogram = Histogram::new();
        for micros in 1..=100 {
            histogram.record(Duration::from_micros(micros));
        }
        let p50 = histogram.quantile(0.5).unwrap();
        assert!(
            p50 >= Duration::from_micros(50) && p50 <= Duration::from_micros(60),
            "{p50:?}"
        );
        let p99 = histogram.quantile(0.99).unwrap();
        assert!(
            p99 >= Duration::from_micros(99) && p99 <= Duration::from_micros(100),
            "{p99:?}"
        );
        let summary = histogram.summary();
        assert_eq!(summary.max, Some(Duration::from_micros(100)));
        assert_eq!(summary.count, 100);
        // 1 + 2 + ... + 100 microseconds, exactly: the sum is not bucketed.
        assert_eq!(summary.total, Duration::from_micros(5050));
        assert_eq!(Histogram::new().quantile(0.5), None);
    }
}
