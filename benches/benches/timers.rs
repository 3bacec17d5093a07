//! Timers: what a pending timer costs, how fast timers fire, and how late.
//!
//! - memory: 100,000 one-shot timers an hour away, scheduled by one `timekeeper`, as the
//!   growth of resident memory per timer; against 100,000 tokio tasks each asleep for an
//!   hour (one task per timer, the design the broker's single timer task replaces), measured
//!   in the same run with the timers still pending;
//! - firing throughput: `timekeeper` schedules 10,000 timers due at once in one handler
//!   call; one iteration is until all of them have been handled. Per firing, against a
//!   message of ping to pong (the broker's message rate, wasm to wasm) in the same run;
//! - lateness at idle: one timer 2 ms ahead at a time, from its deadline to its handler
//!   (timed by the guest on the monotonic clock, from just before it schedules), p50 and
//!   p99; against tokio's own `sleep` of 2 ms on the same runtime, which is the floor a
//!   timer built on tokio's clock can reach;
//! - lateness with every core busy: the same timers while one host thread per core floods
//!   a `counter` of its own with messages (each counter handling them on the runtime's
//!   worker threads, which the timer's component shares), p50 and p99; against the lateness
//!   at idle of the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use courier_benches::memory::resident_bytes;
use courier_benches::sampling::percentile;
use courier_benches::{Figure, Figures, Settings, guest_built, measure, runtime, settle};
use courier_host_broker::{Broker, ComponentSpec};
use courier_host_core::{Engine, EngineConfig};
use tokio::runtime::Runtime;

/// Messages ping sends per batch, and timers per firing batch.
const BATCH: u64 = 10_000;
/// Pending timers in the memory figure.
const PENDING: u64 = 100_000;
/// How far ahead the lateness timers are.
const LATENESS_DELAY: Duration = Duration::from_millis(2);
/// Long enough for any batch; a batch that takes longer has found a bug.
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let settings = Settings::from_env();
    let mut criterion = settings.criterion();
    let mut figures = Figures::new("timers", &settings);
    if !["timekeeper", "ping", "pong", "counter"]
        .iter()
        .all(|guest| guest_built(guest))
    {
        figures.note(
            "timekeeper, ping, pong or counter is not built (run `cargo xtask build-guests`)",
        );
        figures.write();
        return;
    }
    let rt = runtime();
    let engine = Engine::new(EngineConfig::default()).expect("building the engine");
    let broker = Broker::new(engine.clone());
    let load = |name: &str| courier_benches::load(&engine, name);
    let spawn = |spec: ComponentSpec| {
        let id = spec.id().clone();
        rt.block_on(broker.spawn(spec))
            .unwrap_or_else(|err| panic!("spawning {id}: {err}"));
    };
    spawn(ComponentSpec::new("pong", load("pong")).mailbox_capacity(BATCH as usize));
    spawn(ComponentSpec::new("ping", load("ping")).may_send("pong"));
    // Room for a whole batch of firings at once, so none waits for room in the mailbox.
    spawn(
        ComponentSpec::new("fire", load("timekeeper"))
            .max_timers(BATCH as u32)
            .mailbox_capacity(BATCH as usize),
    );
    spawn(ComponentSpec::new("late", load("timekeeper")));

    let mut group = criterion.benchmark_group("timers");
    group.throughput(criterion::Throughput::Elements(BATCH));
    let count = BATCH.to_string().into_bytes();
    let ping_pong = measure(&mut group, "broker/ping_pong", &settings, |iters| {
        let started = Instant::now();
        for _ in 0..iters {
            broker
                .send("ping", count.clone())
                .expect("ping takes its count");
            settle(&broker, BATCH_TIMEOUT);
        }
        started.elapsed()
    });
    let firing = measure(&mut group, "broker/timer_firing", &settings, |iters| {
        let started = Instant::now();
        for _ in 0..iters {
            let before = fired(&broker, "fire");
            let scheduled = command(&rt, &broker, "fire", &format!("many:f:{BATCH}:0"));
            assert_eq!(scheduled, "ok");
            wait_for(|| fired(&broker, "fire") >= before + BATCH);
        }
        started.elapsed()
    });
    group.finish();
    let per = |batch: Option<f64>| batch.map(|ns| ns / BATCH as f64);
    figures.push(Figure::time(
        "ping_pong",
        &format!("ping to pong, 8 B, batches of {BATCH}, per message"),
        per(ping_pong),
    ));
    figures.push(
        Figure::time(
            "firing",
            &format!(
                "timer firing: {BATCH} due at once, scheduled in one handler call, per firing"
            ),
            per(firing),
        )
        .vs("ping_pong"),
    );
    figures.push(
        Figure::rate(
            "firing_rate",
            "timer firing throughput (firings/s)",
            per(firing).map(|ns| 1e9 / ns),
        )
        .vs("ping_pong_rate"),
    );
    figures.push(Figure::rate(
        "ping_pong_rate",
        "ping to pong throughput (msg/s)",
        per(ping_pong).map(|ns| 1e9 / ns),
    ));

    if settings.recording {
        lateness(&rt, &broker, &settings, &mut figures);
        memory(&rt, &broker, &engine, &mut figures);
        // Last: its counters and their messages stay on the broker.
        lateness_busy(&rt, &broker, &engine, &settings, &mut figures);
    }
    rt.block_on(broker.shutdown(Duration::from_secs(5)));
    figures.write();
    criterion.final_summary();
}

/// One timer at a time on the timekeeper `id`, `rounds` of them: each one's time from its
/// deadline to its handler, in nanoseconds.
fn timer_lateness(rt: &Runtime, broker: &Broker, id: &str, rounds: usize) -> Vec<f64> {
    let delay_ms = LATENESS_DELAY.as_millis();
    for _ in 0..rounds {
        let before = fired(broker, id);
        let scheduled = command(rt, broker, id, &format!("after:l:{delay_ms}:l"));
        assert_eq!(scheduled, "ok");
        wait_for(|| fired(broker, id) > before);
    }
    let record = command(rt, broker, id, "fired");
    let late: Vec<f64> = record
        .lines()
        .filter_map(|line| line.split(' ').nth(3)?.parse::<f64>().ok())
        .map(|elapsed| elapsed - LATENESS_DELAY.as_nanos() as f64)
        .collect();
    assert_eq!(late.len(), rounds, "every timer was recorded");
    late
}

/// One timer at a time on `late`, each from its deadline to its handler, then the same for
/// tokio's sleep.
fn lateness(rt: &Runtime, broker: &Broker, settings: &Settings, figures: &mut Figures) {
    let rounds = settings.pick(400, 100);
    let courier = timer_lateness(rt, broker, "late", rounds);
    let tokio: Vec<f64> = rt.block_on(async {
        let mut late = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            tokio::time::sleep(LATENESS_DELAY).await;
            late.push((started.elapsed() - LATENESS_DELAY).as_nanos() as f64);
        }
        late
    });
    for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
        figures.push(Figure::time(
            &format!("tokio_sleep_{name}"),
            &format!("tokio::time::sleep of 2 ms at idle: lateness {name}"),
            percentile(tokio.clone(), q),
        ));
        figures.push(
            Figure::time(
                &format!("lateness_{name}"),
                &format!("a timer 2 ms ahead at idle: from its deadline to its handler, {name}"),
                percentile(courier.clone(), q),
            )
            .vs(&format!("tokio_sleep_{name}")),
        );
    }
}

/// The lateness of one timer at a time, as [`lateness`] measures it, while one host thread
/// per core sends to a `counter` of its own without pause, so every worker thread of the
/// runtime has messages to handle; the messages handled meanwhile show that they did.
fn lateness_busy(
    rt: &Runtime,
    broker: &Broker,
    engine: &Engine,
    settings: &Settings,
    figures: &mut Figures,
) {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let spawn = |spec: ComponentSpec| {
        rt.block_on(broker.spawn(spec))
            .unwrap_or_else(|err| panic!("spawning: {err}"));
    };
    spawn(ComponentSpec::new(
        "late_busy",
        courier_benches::load(engine, "timekeeper"),
    ));
    for core in 0..cores {
        spawn(
            ComponentSpec::new(
                format!("busy{core}"),
                courier_benches::load(engine, "counter"),
            )
            .mailbox_capacity(1024),
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..cores)
        .map(|core| {
            let (broker, stop) = (broker.clone(), stop.clone());
            std::thread::spawn(move || {
                let id = format!("busy{core}");
                while !stop.load(Ordering::Relaxed) {
                    // A full mailbox means its counter has plenty to do for now.
                    if broker.send(&id, &b"+1"[..]).is_err() {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
            })
        })
        .collect();
    let delivered = || broker.accounting().delivered;
    let (before, started) = (delivered(), Instant::now());
    let busy = timer_lateness(rt, broker, "late_busy", settings.pick(400, 100));
    let handled = (delivered() - before) as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.join().expect("a sender thread");
    }
    figures.push(Figure::rate(
        "busy_messages",
        &format!("messages handled per second meanwhile, {cores} counters flooded by {cores} host threads"),
        Some(handled),
    ));
    for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
        figures.push(
            Figure::time(
                &format!("lateness_busy_{name}"),
                &format!(
                    "a timer 2 ms ahead with every core busy handling messages: from its deadline to its handler, {name}"
                ),
                percentile(busy.clone(), q),
            )
            .vs(&format!("lateness_{name}")),
        );
    }
}

/// Resident memory per pending timer, and per tokio task asleep as the baseline, each
/// measured while the other's memory is still held.
fn memory(rt: &Runtime, broker: &Broker, engine: &Engine, figures: &mut Figures) {
    let timekeeper = courier_benches::load(engine, "timekeeper");
    let spec = ComponentSpec::new("memory", timekeeper).max_timers(PENDING as u32);
    rt.block_on(broker.spawn(spec)).expect("spawning memory");
    // The instance exists and its handler has run once, so what grows is the timers'.
    assert_eq!(command(rt, broker, "memory", "cancel:none"), "false");
    let before = resident_bytes();
    let scheduled = command(rt, broker, "memory", &format!("many:m:{PENDING}:3600000"));
    assert_eq!(scheduled, "ok");
    let after = resident_bytes();
    let pending = broker
        .metrics("memory")
        .expect("memory runs")
        .timers
        .pending;
    assert_eq!(pending as u64, PENDING);
    let per_timer = grown(before, after);

    let before = resident_bytes();
    let sleepers: Vec<_> = rt.block_on(async {
        (0..PENDING)
            .map(|_| tokio::spawn(async { tokio::time::sleep(Duration::from_secs(3600)).await }))
            .collect()
    });
    // Every task has been polled once (and so has registered its timer) by now.
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    let after = resident_bytes();
    let per_task = grown(before, after);
    for sleeper in sleepers {
        sleeper.abort();
    }
    rt.block_on(broker.stop("memory")).expect("stopping memory");
    figures.push(Figure::bytes(
        "tokio_task_memory",
        "a tokio task asleep for an hour (one task per timer), resident memory per task",
        per_task,
    ));
    figures.push(
        Figure::bytes(
            "timer_memory",
            &format!("{PENDING} pending timers an hour ahead: resident memory per timer"),
            per_timer,
        )
        .vs("tokio_task_memory"),
    );
}

fn grown(before: Option<u64>, after: Option<u64>) -> Option<f64> {
    Some(after?.saturating_sub(before?) as f64 / PENDING as f64)
}

/// Timer messages `id` has handled.
fn fired(broker: &Broker, id: &str) -> u64 {
    broker.metrics(id).expect("the component runs").timers.fired
}

fn command(rt: &Runtime, broker: &Broker, id: &str, command: &str) -> String {
    let reply = rt
        .block_on(broker.request(id, command.as_bytes().to_vec(), Duration::from_secs(30)))
        .unwrap_or_else(|err| panic!("{id} `{command}`: {err:?}"));
    String::from_utf8(reply).expect("timekeeper answers in text")
}

/// Poll `done` every 20 µs, as `settle` does.
fn wait_for(done: impl Fn() -> bool) {
    let deadline = Instant::now() + BATCH_TIMEOUT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "not done after {BATCH_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_micros(20));
    }
}
