//! What tracing costs a request chain: the same host → asker → echo chain (wasm to wasm to
//! wasm, as in `request_response.rs`) on three brokers in one run:
//!
//! - telemetry off and no trace context: today's path, the baseline;
//! - telemetry off, each request carrying a `traceparent` (an HTTP client's, say): the
//!   context is handed on, each handler call gets a span id, nothing is recorded;
//! - telemetry on at sampling 1.0: every handler call builds its span and hands it to a
//!   sink, here one that counts and drops it, so the figure is Courier's own cost (an OTLP
//!   exporter then queues the span, one `try_send`, and posts it from another task).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_benches::{Figure, Figures, Settings, Target, measure, runtime};
use courier_host_broker::{
    Broker, BrokerConfig, ComponentSpec, HandlerSpan, SpanSink, Telemetry, TraceContext,
};
use courier_host_core::{Engine, EngineConfig};

const ASK_ECHO: &[u8] = b"request:echo";
const TIMEOUT: Duration = Duration::from_secs(1);

/// A sink that counts spans and keeps none.
#[derive(Default)]
struct Counting(AtomicU64);

impl SpanSink for Counting {
    fn record(&self, span: HandlerSpan) {
        black_box(span);
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn main() {
    let settings = Settings::from_env();
    let mut criterion = settings.criterion();
    let mut figures = Figures::new("telemetry", &settings);
    let rt = runtime();

    let engine = Engine::new(EngineConfig::default()).expect("building the engine");
    let echo = courier_benches::load(&engine, "echo");
    let probe = courier_benches::load(&engine, "probe");
    let broker_with = |config: BrokerConfig| {
        let broker = Broker::with_config(engine.clone(), config);
        for spec in [
            ComponentSpec::new("echo", echo.clone()),
            ComponentSpec::new("asker", probe.clone()).may_request("echo"),
        ] {
            rt.block_on(broker.spawn(spec)).expect("spawning");
        }
        broker
    };
    let off = broker_with(BrokerConfig::default());
    let sink = Arc::new(Counting::default());
    let on = broker_with(BrokerConfig::default().telemetry(Telemetry::new(sink.clone(), 1.0)));
    let incoming = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");

    let mut group = criterion.benchmark_group("telemetry");
    measure(&mut group, "off/chain", &settings, |iters| {
        requests(&rt, &off, None, iters)
    });
    measure(
        &mut group,
        "off_with_traceparent/chain",
        &settings,
        |iters| requests(&rt, &off, incoming, iters),
    );
    measure(&mut group, "sampling_1/chain", &settings, |iters| {
        requests(&rt, &on, None, iters)
    });
    group.finish();
    // The three differ by less than this box's drift between criterion's runs of them
    // (each a few seconds, one after another; their medians moved by 20% from run to run,
    // and not always the same way). The figures come from rounds that take the three in
    // turn instead, each in a rotating order, so all three meet the same drift.
    let [baseline, carried, sampled] = interleaved(&settings, |variant, count| match variant {
        0 => requests(&rt, &off, None, count),
        1 => requests(&rt, &off, incoming, count),
        _ => requests(&rt, &on, None, count),
    });
    assert!(
        sink.0.load(Ordering::Relaxed) > 0,
        "the traced broker recorded spans"
    );

    figures.push(Figure::time(
        "off",
        "Broker::request host → asker → echo, telemetry off, median of interleaved rounds",
        baseline,
    ));
    figures.push(
        Figure::time(
            "carried",
            "the same, telemetry off, each request carrying a traceparent, median",
            carried,
        )
        .vs("off")
        .target(Target::RatioAtMost(1.1)),
    );
    figures.push(
        Figure::time(
            "sampled",
            "the same, telemetry on at sampling 1.0 (two spans a request), median",
            sampled,
        )
        .vs("off"),
    );
    figures.write();
    criterion.final_summary();
    rt.block_on(off.shutdown(Duration::from_secs(5)));
    rt.block_on(on.shutdown(Duration::from_secs(5)));
}

/// Rounds of requests for each of three variants in turn, the order rotating from round to
/// round; the median time a request of each, in nanoseconds (`None` when not recording).
fn interleaved(
    settings: &Settings,
    mut run: impl FnMut(usize, u64) -> Duration,
) -> [Option<f64>; 3] {
    if !settings.recording {
        return [None; 3];
    }
    let (rounds, per_round) = if settings.quick {
        (30, 500)
    } else {
        (150, 2_000)
    };
    let mut times: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        for turn in 0..3 {
            let variant = (round + turn) % 3;
            let took = run(variant, per_round);
            times[variant].push(took.as_nanos() as f64 / per_round as f64);
        }
    }
    times.map(|mut times| {
        times.sort_by(f64::total_cmp);
        Some(times[times.len() / 2])
    })
}

/// Time `count` requests to asker through `broker`, each in the trace `trace` names, made
/// from a task on the runtime.
fn requests(
    rt: &tokio::runtime::Runtime,
    broker: &Broker,
    trace: Option<TraceContext>,
    count: u64,
) -> Duration {
    let broker = broker.clone();
    let client = rt.spawn(async move {
        let started = Instant::now();
        for _ in 0..count {
            let reply = broker
                .request_traced("asker", ASK_ECHO.to_vec(), TIMEOUT, trace)
                .await;
            black_box(reply.expect("the request is answered"));
        }
        started.elapsed()
    });
    rt.block_on(client).expect("the client task finishes")
}
