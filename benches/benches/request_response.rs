//! Request/response round trips through the broker, against their floors.
//!
//! - native floor: a request over tokio mpsc carrying a oneshot for the reply, from one task
//!   to another and back;
//! - wasm floors: a bare call of `echo`'s `handle-request`; and, for wasm to wasm to wasm, a
//!   bare call of `probe`'s `handle-request` with `request:echo`, whose `send-request` stub
//!   calls a bare `echo`'s `handle-request` inline;
//! - Courier: `Broker::request` to `echo` (host to wasm), and to `asker`, a `probe` allowed to
//!   request from `echo`, with `request:echo`: the host asks asker, asker's handler calls
//!   `send-request`, echo answers, asker returns echo's reply (host to wasm to wasm).
//!
//! The host's requests are made from a task on the runtime, as a service embedding Courier
//! would make them. The broker figures are taken twice: on tokio's multi-threaded runtime
//! with a worker per core (the default), and on a current-thread runtime, where a request
//! and its answer never cross from one core to another (see `benches/README.md`).
//!
//! Criterion reports the median of its samples (each the mean of many round trips); the tail
//! comes from a plain loop afterwards that times every round trip on its own, for the p99.

use std::hint::black_box;
use std::time::{Duration, Instant};

use courier_benches::bare::{BareEngine, BareInstance};
use courier_benches::native::Timing;
use courier_benches::sampling::percentile;
use courier_benches::{Figure, Figures, Settings, Target, measure, native, runtime};
use courier_host_broker::{Broker, ComponentSpec};
use courier_host_core::{Engine, EngineConfig};
use courier_test_support::guest_path;

/// What probe sends with `send-request`; echo's requests carry the same.
const HI: &[u8] = b"hi";
/// Asker's command: request from echo.
const ASK_ECHO: &[u8] = b"request:echo";
const TIMEOUT: Duration = Duration::from_secs(1);

fn main() {
    let settings = Settings::from_env();
    let mut criterion = settings.criterion();
    let mut figures = Figures::new("request_response", &settings);
    let rt = runtime();

    let bare = BareEngine::new(true);
    let bare_echo_component = bare.load(&guest_path("echo"));
    let mut bare_echo = rt.block_on(bare_echo_component.instantiate("echo"));
    let mut bare_asker = rt.block_on(bare.load(&guest_path("probe")).instantiate("asker"));
    bare_asker.connect(rt.block_on(bare_echo_component.instantiate("echo")));

    let engine = Engine::new(EngineConfig::default()).expect("building the engine");
    let load = |name: &str| courier_benches::load(&engine, name);
    let (echo_component, probe_component) = (load("echo"), load("probe"));
    // `echo`, and `asker`: a probe allowed to request from echo, on a broker of its own
    // whose actors run on `rt`.
    let echo_and_asker = |rt: &tokio::runtime::Runtime| {
        let broker = Broker::new(engine.clone());
        for spec in [
            ComponentSpec::new("echo", echo_component.clone()),
            ComponentSpec::new("asker", probe_component.clone()).may_request("echo"),
        ] {
            let id = spec.id().clone();
            rt.block_on(broker.spawn(spec))
                .unwrap_or_else(|err| panic!("spawning {id}: {err}"));
        }
        broker
    };
    let broker = echo_and_asker(&rt);
    let reply = rt.block_on(broker.request("asker", ASK_ECHO.to_vec(), TIMEOUT));
    assert!(
        matches!(reply.as_deref(), Ok(HI)),
        "asker should relay echo's reply to `request:echo`, got {reply:?}"
    );

    // The same components under a broker whose actors run on one current-thread runtime.
    let local_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the current-thread runtime");
    let local_broker = echo_and_asker(&local_rt);

    let mut group = criterion.benchmark_group("request_response");
    let native = measure(&mut group, "native_floor/round_trip", &settings, |iters| {
        native::mpsc_round_trips(&rt, iters, HI, Timing::Total)
            .into_iter()
            .sum()
    });
    let wasm_echo = measure(&mut group, "wasm_floor/echo", &settings, |iters| {
        bare_requests(&rt, &mut bare_echo, HI, iters, Timing::Total)
            .into_iter()
            .sum()
    });
    let wasm_chain = measure(
        &mut group,
        "wasm_floor/asker_echo_inline",
        &settings,
        |iters| {
            bare_requests(&rt, &mut bare_asker, ASK_ECHO, iters, Timing::Total)
                .into_iter()
                .sum()
        },
    );
    let echo = measure(&mut group, "broker/host_echo", &settings, |iters| {
        broker_requests(&rt, &broker, "echo", HI, iters, Timing::Total)
            .into_iter()
            .sum()
    });
    let chain = measure(&mut group, "broker/host_asker_echo", &settings, |iters| {
        broker_requests(&rt, &broker, "asker", ASK_ECHO, iters, Timing::Total)
            .into_iter()
            .sum()
    });
    let local_echo = measure(
        &mut group,
        "broker_current_thread/host_echo",
        &settings,
        |iters| {
            broker_requests(&local_rt, &local_broker, "echo", HI, iters, Timing::Total)
                .into_iter()
                .sum()
        },
    );
    let local_chain = measure(
        &mut group,
        "broker_current_thread/host_asker_echo",
        &settings,
        |iters| {
            broker_requests(
                &local_rt,
                &local_broker,
                "asker",
                ASK_ECHO,
                iters,
                Timing::Total,
            )
            .into_iter()
            .sum()
        },
    );
    group.finish();

    figures.push(Figure::time(
        "native",
        "native floor: mpsc request + oneshot reply, median",
        native,
    ));
    figures.push(Figure::time(
        "wasm_echo",
        "wasm floor: bare handle-request on echo, median",
        wasm_echo,
    ));
    figures.push(Figure::time(
        "wasm_chain",
        "wasm floor: bare asker → echo inline (send-request stub), median",
        wasm_chain,
    ));
    figures.push(
        Figure::time(
            "echo",
            "Broker::request host → echo round trip, median",
            echo,
        )
        .vs("wasm_echo")
        .target(Target::RatioAtMost(2.5)),
    );
    figures.push(
        Figure::time(
            "chain",
            "Broker::request host → asker → echo (wasm to wasm to wasm), median",
            chain,
        )
        .vs("wasm_chain")
        .target(Target::RatioAtMost(2.0)),
    );
    figures.push(
        Figure::time(
            "echo_current_thread",
            "Broker::request host → echo round trip, current-thread runtime, median",
            local_echo,
        )
        .vs("wasm_echo"),
    );
    figures.push(
        Figure::time(
            "chain_current_thread",
            "Broker::request host → asker → echo, current-thread runtime, median",
            local_chain,
        )
        .vs("wasm_chain")
        .target(Target::AtMost(5_000.0)),
    );

    if settings.recording {
        // Every round trip timed on its own, for the tail criterion's means hide.
        let count = settings.pick(20_000, 5_000);
        let p99 = |times: Vec<Duration>| {
            percentile(
                times.into_iter().map(|t| t.as_nanos() as f64).collect(),
                0.99,
            )
        };
        let tails = [
            (
                "native_p99",
                "native floor round trip, p99",
                p99(native::mpsc_round_trips(&rt, count, HI, Timing::Each)),
                None,
            ),
            (
                "wasm_echo_p99",
                "wasm floor: bare echo, p99",
                p99(bare_requests(&rt, &mut bare_echo, HI, count, Timing::Each)),
                None,
            ),
            (
                "wasm_chain_p99",
                "wasm floor: bare asker → echo inline, p99",
                p99(bare_requests(
                    &rt,
                    &mut bare_asker,
                    ASK_ECHO,
                    count,
                    Timing::Each,
                )),
                None,
            ),
            (
                "echo_p99",
                "Broker::request host → echo, p99",
                p99(broker_requests(
                    &rt,
                    &broker,
                    "echo",
                    HI,
                    count,
                    Timing::Each,
                )),
                Some("echo"),
            ),
            (
                "chain_p99",
                "Broker::request host → asker → echo, p99",
                p99(broker_requests(
                    &rt,
                    &broker,
                    "asker",
                    ASK_ECHO,
                    count,
                    Timing::Each,
                )),
                Some("chain"),
            ),
        ];
        // A tail is held against its own median: how much worse the slow requests are
        // than the typical one.
        for (key, label, value, median) in tails {
            let label = format!("{label} of {count} timed one by one");
            let figure = Figure::time(key, &label, value);
            figures.push(match median {
                Some(median) => figure.vs(median).target(Target::RatioAtMost(3.0)),
                None => figure,
            });
        }
    }

    figures.write();
    criterion.final_summary();
    rt.block_on(broker.shutdown(Duration::from_secs(5)));
    local_rt.block_on(local_broker.shutdown(Duration::from_secs(5)));
}

/// Make `count` bare requests and return their times (see [`Timing`]).
fn bare_requests(
    rt: &tokio::runtime::Runtime,
    instance: &mut BareInstance,
    request: &[u8],
    count: u64,
    timing: Timing,
) -> Vec<Duration> {
    rt.block_on(timing.run(count, async || {
        let reply = instance.handle_request("host", black_box(request)).await;
        black_box(reply.expect("the request is answered"));
    }))
}

/// Make `count` requests through the broker and return their times (see [`Timing`]).
///
/// The requests are made from a task on the runtime, as an integrator's service would make
/// them, rather than from the thread that drives the benchmark: that thread is not a worker,
/// and every reply would have to wake it from outside the runtime.
fn broker_requests(
    rt: &tokio::runtime::Runtime,
    broker: &Broker,
    target: &str,
    request: &[u8],
    count: u64,
    timing: Timing,
) -> Vec<Duration> {
    let broker = broker.clone();
    let target = target.to_string();
    let request = request.to_vec();
    let client = rt.spawn(async move {
        // Written out rather than through `Timing::run`: a spawned task must be `Send`,
        // which an async closure borrowing the broker cannot yet promise.
        let mut times = Vec::new();
        let started = Instant::now();
        for _ in 0..count {
            let call_started = Instant::now();
            let reply = broker.request(&target, request.clone(), TIMEOUT).await;
            if timing == Timing::Each {
                times.push(call_started.elapsed());
            }
            black_box(reply.expect("the request is answered"));
        }
        if timing == Timing::Total {
            times.push(started.elapsed());
        }
        times
    });
    rt.block_on(client).expect("the client task finishes")
}
