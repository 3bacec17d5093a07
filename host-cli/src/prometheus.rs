//! The broker's metrics in the Prometheus text exposition format (version 0.0.4), which
//! Prometheus, VictoriaMetrics, the OpenTelemetry collector and most agents scrape.
//!
//! The broker keeps its own counters, so each scrape writes out a snapshot; there is no
//! registry of live metric objects to keep in step with it.

use std::fmt::Write;

use courier_host_broker::{Accounting, KeyedMetrics, MetricsSnapshot};
use courier_host_lattice::LatticeMetrics;
use courier_host_store::StoreStats;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One sample: its labels and its value.
type Sample = (Vec<(&'static str, String)>, f64);

/// A per-component counter: its name, its help and how to read it from a snapshot.
type Counter = (&'static str, &'static str, fn(&MetricsSnapshot) -> f64);

/// Writes every component's counters and the broker-wide accounting.
///
/// Per component (label `component`): the counters `courier_messages_delivered_total`,
/// `courier_messages_failed_total`, `courier_messages_dead_lettered_total`,
/// `courier_messages_refused_total`, `courier_restarts_total` and
/// `courier_requests_handed_off_total`; the gauges
/// `courier_mailbox_depth`, `courier_component_state` (1 for the current `state`),
/// `courier_component_info` (1, with the `version` it runs) and
/// `courier_handler_latency_max_seconds`; the summary `courier_handler_latency_seconds`
/// (label `quantile`: 0.5, 0.9, 0.99, with `_sum` and `_count`). Broker-wide:
/// `courier_broker_messages_{sent,arrived,delivered,refused,dead_lettered}_total` and the
/// gauge `courier_broker_messages_in_flight`. Timers, per component:
/// `courier_timers_pending`, `courier_timers_{fired,cancelled,replaced,missed_ticks}_total`
/// and the summary `courier_timer_lateness_seconds` (quantiles 0.5 and 0.99).
pub fn render(components: &[MetricsSnapshot], accounting: &Accounting) -> String {
    let mut out = String::new();
    let per = |value: fn(&MetricsSnapshot) -> f64| -> Vec<Sample> {
        components
            .iter()
            .map(|m| (vec![("component", m.id.to_string())], value(m)))
            .collect()
    };

    let counters: [Counter; 6] = [
        (
            "courier_messages_delivered_total",
            "Messages and requests whose handler ran to completion (Ok or a handler error).",
            |m| m.delivered as f64,
        ),
        (
            "courier_messages_failed_total",
            "Handler calls that returned an error or trapped.",
            |m| m.failed as f64,
        ),
        (
            "courier_messages_dead_lettered_total",
            "Messages for the component that were accepted, then given up on.",
            |m| m.dead_lettered as f64,
        ),
        (
            "courier_messages_refused_total",
            "Messages for the component refused to their senders at once.",
            |m| m.refused as f64,
        ),
        (
            "courier_restarts_total",
            "Instances replaced after a trap.",
            |m| m.restarts as f64,
        ),
        (
            "courier_requests_handed_off_total",
            "Requests the component answered on its requester's task, found idle, rather than from its mailbox.",
            |m| m.handed_off as f64,
        ),
    ];
    for (name, help, value) in counters {
        family(&mut out, name, "counter", help, per(value));
    }
    family(
        &mut out,
        "courier_mailbox_depth",
        "gauge",
        "Messages waiting in the component's mailbox.",
        per(|m| m.mailbox_depth as f64),
    );
    family(
        &mut out,
        "courier_component_state",
        "gauge",
        "1 for the component's current state: running, restarting, stopped or failed.",
        components
            .iter()
            .map(|m| {
                let labels = vec![
                    ("component", m.id.to_string()),
                    ("state", m.state.name().to_string()),
                ];
                (labels, 1.0)
            })
            .collect(),
    );
    family(
        &mut out,
        "courier_component_info",
        "gauge",
        "1, labelled with the version of the component it runs (a digest of its bytes).",
        components
            .iter()
            .map(|m| {
                let labels = vec![
                    ("component", m.id.to_string()),
                    ("version", m.version.clone()),
                ];
                (labels, 1.0)
            })
            .collect(),
    );
    latency_summary(&mut out, components);
    timers(&mut out, components);
    family(
        &mut out,
        "courier_handler_latency_max_seconds",
        "gauge",
        "Slowest handler call since start.",
        components
            .iter()
            .filter_map(|m| {
                let max = m.latency.max?;
                Some((vec![("component", m.id.to_string())], max.as_secs_f64()))
            })
            .collect(),
    );

    let broker = |value: u64| vec![(Vec::new(), value as f64)];
    for (name, help, value) in [
        (
            "courier_broker_messages_sent_total",
            "Messages and requests anyone tried to send (a publication counts once per subscriber).",
            accounting.sent,
        ),
        (
            "courier_broker_messages_arrived_total",
            "Messages and requests that came from other hosts of the lattice (a publication counts once per subscriber here).",
            accounting.arrived,
        ),
        (
            "courier_broker_messages_delivered_total",
            "Messages handled by their target's handler.",
            accounting.delivered,
        ),
        (
            "courier_broker_messages_refused_total",
            "Messages refused to their sender at once with an error.",
            accounting.refused,
        ),
        (
            "courier_broker_messages_dead_lettered_total",
            "Messages accepted, then given up on, with a reason in the dead-letter record.",
            accounting.dead_lettered,
        ),
    ] {
        family(&mut out, name, "counter", help, broker(value));
    }
    family(
        &mut out,
        "courier_broker_messages_in_flight",
        "gauge",
        "Messages accepted and not yet delivered or dead-lettered.",
        broker(accounting.in_flight()),
    );
    out
}

/// Appends what the store of durable components holds and how its commits go to `out`:
/// `courier_store_messages` (stored messages not yet consumed), the counters
/// `courier_store_commits_total` (transactions; each holds every write that arrived while the
/// one before it committed) and `courier_store_writes_total`, the gauges
/// `courier_store_commit_seconds` (label `stat`: `last`, `mean`; fsync included) and
/// `courier_store_file_bytes`; and per durable component (label `component`)
/// `courier_durable_commits_total`, `courier_durable_commits_failed_total` and
/// `courier_durable_commit_mean_seconds`.
pub fn render_store(out: &mut String, stats: &StoreStats, components: &[MetricsSnapshot]) {
    let one = |value: f64| vec![(Vec::new(), value)];
    family(
        out,
        "courier_store_messages",
        "gauge",
        "Messages to durable components stored and not yet consumed.",
        one(stats.mailbox_entries as f64),
    );
    family(
        out,
        "courier_store_commits_total",
        "counter",
        "Transactions the store committed since the run started.",
        one(stats.commits as f64),
    );
    family(
        out,
        "courier_store_writes_total",
        "counter",
        "Writes (appends, commits of batches) in those transactions.",
        one(stats.writes as f64),
    );
    family(
        out,
        "courier_store_commit_seconds",
        "gauge",
        "How long the store's commits take, fsync included: the last one and the mean.",
        vec![
            (
                vec![("stat", "last".to_string())],
                stats.last_commit.as_secs_f64(),
            ),
            (
                vec![("stat", "mean".to_string())],
                stats.mean_commit.as_secs_f64(),
            ),
        ],
    );
    family(
        out,
        "courier_store_file_bytes",
        "gauge",
        "The size of the store's file.",
        one(stats.file_bytes as f64),
    );
    let durable = |value: fn(&courier_host_broker::DurableMetrics) -> f64| -> Vec<Sample> {
        components
            .iter()
            .filter_map(|m| {
                Some((
                    vec![("component", m.id.to_string())],
                    value(m.durable.as_ref()?),
                ))
            })
            .collect()
    };
    family(
        out,
        "courier_durable_commits_total",
        "counter",
        "Handled batches the durable component committed (consumed messages and state).",
        durable(|d| d.commits as f64),
    );
    family(
        out,
        "courier_durable_commits_failed_total",
        "counter",
        "Commits the store refused; their messages are committed with the next batch.",
        durable(|d| d.failed_commits as f64),
    );
    family(
        out,
        "courier_durable_commit_mean_seconds",
        "gauge",
        "The mean time of the durable component's commits, fsync included.",
        durable(|d| d.mean_commit.as_secs_f64()),
    );
}

/// A keyed family: its name, kind, help, and how a component's value is read.
type KeyedFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&KeyedMetrics) -> f64,
);

/// Append the keyed components' families: one sample per keyed component, never per key, so
/// a million keys do not make a million series.
pub fn render_keyed(out: &mut String, keyed: &[KeyedMetrics]) {
    let per = |value: fn(&KeyedMetrics) -> f64| -> Vec<Sample> {
        keyed
            .iter()
            .map(|m| (vec![("component", m.id.to_string())], value(m)))
            .collect()
    };
    let families: [KeyedFamily; 7] = [
        (
            "courier_keyed_active_keys",
            "gauge",
            "Keys of the keyed component with an instance now.",
            |m| m.active as f64,
        ),
        (
            "courier_keyed_activations_total",
            "counter",
            "Keys activated: made on their first message.",
            |m| m.activations as f64,
        ),
        (
            "courier_keyed_passivations_total",
            "counter",
            "Keys put away, idle or least recently used.",
            |m| m.passivations as f64,
        ),
        (
            "courier_keyed_activation_seconds_sum",
            "counter",
            "Time from keys' first messages to their instances being ready, summed.",
            |m| m.activation_latency.total.as_secs_f64(),
        ),
        (
            "courier_keyed_activation_seconds_count",
            "counter",
            "Activations timed.",
            |m| m.activation_latency.count as f64,
        ),
        (
            "courier_keyed_messages_delivered_total",
            "counter",
            "Messages and requests handled by any key of the component.",
            |m| m.delivered as f64,
        ),
        (
            "courier_keyed_messages_failed_total",
            "counter",
            "Handler errors and traps of any key of the component.",
            |m| m.failed as f64,
        ),
    ];
    for (name, kind, help, value) in families {
        family(out, name, kind, help, per(value));
    }
}

/// Appends the lattice counters of this host to `out`: what it sent to other hosts and how
/// each ended, and what arrived from them (all `courier_lattice_*`).
pub fn render_lattice(out: &mut String, metrics: &LatticeMetrics) {
    let one = |value: u64| vec![(Vec::new(), value as f64)];
    let outcome =
        |outcome: &str, value: u64| (vec![("outcome", outcome.to_string())], value as f64);
    family(
        out,
        "courier_lattice_messages_sent_total",
        "counter",
        "Messages put on their way to another host.",
        one(metrics.sent),
    );
    family(
        out,
        "courier_lattice_messages_ended_total",
        "counter",
        "How messages sent to other hosts ended: acked (queued there), refused_there, no_host, unconfirmed (no ack in time), unsent (never on the wire: no server before it was due); refused_here were refused before the wire (messages and requests).",
        vec![
            outcome("acked", metrics.acked),
            outcome("refused_there", metrics.refused_there),
            outcome("no_host", metrics.no_host),
            outcome("unconfirmed", metrics.unconfirmed),
            outcome("unsent", metrics.unsent),
            outcome("refused_here", metrics.refused_here),
        ],
    );
    family(
        out,
        "courier_lattice_slow_consumer_drops_total",
        "counter",
        "Messages from other hosts that the NATS client dropped because a subscription here was full.",
        one(metrics.slow_consumer_drops),
    );
    family(
        out,
        "courier_lattice_conflicts",
        "gauge",
        "Ids that more than one host claims to serve alone (this host included); should be 0.",
        one(metrics.conflicts),
    );
    family(
        out,
        "courier_lattice_messages_resent_total",
        "counter",
        "Messages to other hosts put on the wire again (after a reconnect, a missing \
         acknowledgement or no responders); the serving host drops duplicates.",
        one(metrics.resent),
    );
    family(
        out,
        "courier_lattice_duplicates_total",
        "counter",
        "Messages from other hosts that arrived again and were not delivered twice.",
        one(metrics.duplicates),
    );
    family(
        out,
        "courier_lattice_out_of_order_total",
        "counter",
        "Messages from other hosts that came before their turn: held for it (held), or \
         dropped for their sender to send again when there was no room (dropped).",
        vec![
            outcome("held", metrics.out_of_order),
            outcome("dropped", metrics.dropped_out_of_order),
        ],
    );
    family(
        out,
        "courier_lattice_expired_total",
        "counter",
        "Messages and requests from other hosts that arrived after their sender stopped \
         waiting for them, dropped unhandled (their sender already ended them).",
        one(metrics.expired),
    );
    family(
        out,
        "courier_lattice_messages_awaiting_ack",
        "gauge",
        "Messages sent to other hosts and not yet acknowledged.",
        one(metrics.awaiting_ack),
    );
    family(
        out,
        "courier_lattice_requests_sent_total",
        "counter",
        "Requests sent to other hosts.",
        one(metrics.requests),
    );
    family(
        out,
        "courier_lattice_publications_total",
        "counter",
        "Publications offered to other hosts (sent) or not (dropped: too large, queue full).",
        vec![
            outcome("sent", metrics.publications),
            outcome("dropped", metrics.publications_dropped),
        ],
    );
    family(
        out,
        "courier_lattice_arrivals_total",
        "counter",
        "What arrived from other hosts, by kind; malformed ones were refused, and so were \
         forged ones (a sender id or an acknowledgement that another host owns).",
        [
            ("message", metrics.arrived_messages),
            ("request", metrics.arrived_requests),
            ("publication", metrics.arrived_publications),
            ("malformed", metrics.malformed),
            ("forged", metrics.forged),
        ]
        .into_iter()
        .map(|(kind, value)| (vec![("kind", kind.to_string())], value as f64))
        .collect(),
    );
}

/// Writes handler latency as a Prometheus summary: the quantiles of each component that has
/// any, then its `_sum` and `_count`, from which a scraper computes the mean over any window.
fn latency_summary(out: &mut String, components: &[MetricsSnapshot]) {
    const NAME: &str = "courier_handler_latency_seconds";
    if components.is_empty() {
        return;
    }
    header(
        out,
        NAME,
        "summary",
        "Handler latency since start; quantiles approximate (within about 19%).",
    );
    for m in components {
        let quantiles = [
            ("0.5", m.latency.p50),
            ("0.9", m.latency.p90),
            ("0.99", m.latency.p99),
        ];
        let (total, count) = (m.latency.total, m.latency.count);
        summary_samples(out, NAME, &m.id, &quantiles, total, count);
    }
}

/// Writes one component's samples of the summary `name`: its quantiles that are known,
/// then its `_sum` and `_count`.
fn summary_samples(
    out: &mut String,
    name: &str,
    id: &str,
    quantiles: &[(&str, Option<std::time::Duration>)],
    total: std::time::Duration,
    count: u64,
) {
    let component = ("component", id.to_string());
    for (quantile, value) in quantiles {
        if let Some(value) = value {
            let labels = [component.clone(), ("quantile", quantile.to_string())];
            sample(out, name, &labels, value.as_secs_f64());
        }
    }
    let labels = [component];
    sample(out, &format!("{name}_sum"), &labels, total.as_secs_f64());
    sample(out, &format!("{name}_count"), &labels, count as f64);
}

/// Writes the timer families: how many are pending, how many fired, were cancelled or
/// replaced, how many periodic ticks were folded into one message, and how late they fired.
fn timers(out: &mut String, components: &[MetricsSnapshot]) {
    let per = |value: fn(&MetricsSnapshot) -> f64| -> Vec<Sample> {
        components
            .iter()
            .map(|m| (vec![("component", m.id.to_string())], value(m)))
            .collect()
    };
    family(
        out,
        "courier_timers_pending",
        "gauge",
        "Timers the component has scheduled that have not fired or been cancelled.",
        per(|m| m.timers.pending as f64),
    );
    let counters: [Counter; 4] = [
        (
            "courier_timers_fired_total",
            "Timer messages handed to the component's handler.",
            |m| m.timers.fired as f64,
        ),
        (
            "courier_timers_cancelled_total",
            "Timers cancelled while pending.",
            |m| m.timers.cancelled as f64,
        ),
        (
            "courier_timers_replaced_total",
            "Timers replaced while pending by one of the same name.",
            |m| m.timers.replaced as f64,
        ),
        (
            "courier_timers_missed_ticks_total",
            "Ticks of periodic timers folded into a later message while the component was busy.",
            |m| m.timers.missed_ticks as f64,
        ),
    ];
    for (name, help, value) in counters {
        family(out, name, "counter", help, per(value));
    }
    const NAME: &str = "courier_timer_lateness_seconds";
    let fired: Vec<&MetricsSnapshot> = components
        .iter()
        .filter(|m| m.timers.lateness.count > 0)
        .collect();
    if fired.is_empty() {
        return;
    }
    header(
        out,
        NAME,
        "summary",
        "From a timer's deadline to its handler's start; quantiles approximate (within about 19%).",
    );
    for m in fired {
        let lateness = &m.timers.lateness;
        let quantiles = [("0.5", lateness.p50), ("0.99", lateness.p99)];
        let (total, count) = (lateness.total, lateness.count);
        summary_samples(out, NAME, &m.id, &quantiles, total, count);
    }
}

/// Writes one metric family: its help, its type and its samples. A family with no samples
/// is left out, as the format asks.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: Vec<Sample>) {
    if samples.is_empty() {
        return;
    }
    header(out, name, kind, help);
    for (labels, value) in samples {
        sample(out, name, &labels, value);
    }
}

/// Writes a family's `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample line: `name{label="value",...} value`.
fn sample(out: &mut String, name: &str, labels: &[(&str, String)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (index, (label, value)) in labels.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", format_value(value));
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use courier_host_broker::{ComponentState, LatencySummary, TimerMetrics};

    use super::*;

    fn snapshot(id: &str) -> MetricsSnapshot {
        MetricsSnapshot {
            id: id.into(),
            state: ComponentState::Running,
            delivered: 7,
            failed: 1,
            dead_lettered: 1,
            refused: 2,
            restarts: 1,
            handed_off: 0,
            mailbox_depth: 3,
            version: "0123456789abcdef".into(),
            latency: LatencySummary {
                count: 8,
                total: Duration::from_micros(250),
                p50: Some(Duration::from_micros(12)),
                p90: Some(Duration::from_micros(40)),
                p99: None,
                max: Some(Duration::from_millis(2)),
            },
            timers: TimerMetrics {
                pending: 2,
                fired: 5,
                cancelled: 1,
                replaced: 0,
                missed_ticks: 3,
                lateness: LatencySummary {
                    count: 5,
                    total: Duration::from_millis(5),
                    p50: Some(Duration::from_millis(1)),
                    p90: Some(Duration::from_millis(1)),
                    p99: None,
                    max: Some(Duration::from_millis(1)),
                },
            },
            durable: None,
        }
    }

    #[test]
    fn counters_and_gauges_carry_the_component_label() {
        let text = render(
            &[snapshot("echo")],
            &Accounting {
                sent: 10,
                arrived: 0,
                delivered: 7,
                refused: 2,
                dead_lettered: 1,
            },
        );
        assert!(text.contains("# TYPE courier_messages_delivered_total counter\n"));
        assert!(text.contains("courier_messages_delivered_total{component=\"echo\"} 7\n"));
        assert!(text.contains("courier_mailbox_depth{component=\"echo\"} 3\n"));
        assert!(text.contains(
            "courier_component_info{component=\"echo\",version=\"0123456789abcdef\"} 1\n"
        ));
        assert!(text.contains(
            "courier_handler_latency_seconds{component=\"echo\",quantile=\"0.5\"} 0.000012\n"
        ));
        assert!(
            !text.contains("quantile=\"0.99\""),
            "absent quantiles are left out"
        );
        assert!(text.contains("# TYPE courier_handler_latency_seconds summary\n"));
        assert!(text.contains("courier_handler_latency_seconds_sum{component=\"echo\"} 0.00025\n"));
        assert!(text.contains("courier_handler_latency_seconds_count{component=\"echo\"} 8\n"));
        assert!(text.contains("courier_component_state{component=\"echo\",state=\"running\"} 1\n"));
        assert!(text.contains("courier_broker_messages_sent_total 10\n"));
        assert!(text.contains("courier_timers_pending{component=\"echo\"} 2\n"));
        assert!(text.contains("courier_timers_fired_total{component=\"echo\"} 5\n"));
        assert!(text.contains("courier_timers_cancelled_total{component=\"echo\"} 1\n"));
        assert!(text.contains("courier_timers_missed_ticks_total{component=\"echo\"} 3\n"));
        assert!(text.contains(
            "courier_timer_lateness_seconds{component=\"echo\",quantile=\"0.5\"} 0.001\n"
        ));
        assert!(text.contains("courier_timer_lateness_seconds_count{component=\"echo\"} 5\n"));
        assert!(text.contains("courier_broker_messages_in_flight 0\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn no_components_means_no_per_component_families() {
        let text = render(&[], &Accounting::default());
        assert!(!text.contains("courier_messages_delivered_total"));
        assert!(text.contains("courier_broker_messages_sent_total 0\n"));
    }
}
