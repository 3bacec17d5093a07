//! Spawning actors from a loaded component, against a bare instantiation, and the memory of
//! many idle actors.
//!
//! - wasm floor: a bare `InstancePre::instantiate_async` of `echo` in a fresh store, with the
//!   pooling allocator (host-core's default) and with on-demand allocation;
//! - host-core: `Component::instantiate`, both ways;
//! - Courier: `Broker::spawn` (instance, mailbox, task, registry entry), both ways;
//! - scale: 10,000 idle `echo` actors on an engine with room for 10,500 instances, timed, and
//!   the growth of the process's resident memory divided among them. If the pool cannot be
//!   reserved host-core falls back to on-demand allocation; the report says which it got.
//!
//! Instances are created in chunks and dropped (actors shut down) between chunks, outside
//! the time measured, so a run never needs more than a chunk's worth of pool slots.

use std::time::{Duration, Instant};

use courier_benches::bare::{BareComponent, BareEngine};
use courier_benches::memory::resident_bytes;
use courier_benches::{Figure, Figures, Settings, Target, measure, runtime};
use courier_host_broker::{Broker, ComponentSpec};
use courier_host_core::{
    Allocation, Component, ComponentId, Engine, EngineConfig, InstanceOptions,
};
use courier_test_support::guest_path;
use tokio::runtime::Runtime;

/// Instances alive at once while measuring: well inside the default pool of 1,000.
const CHUNK: u64 = 200;
/// Actors in the scale run.
const SCALE_ACTORS: u32 = 10_000;
/// The scale run's engine leaves a little room beyond its actors.
const SCALE_POOL: u32 = 10_500;

fn main() {
    let settings = Settings::from_env();
    let mut criterion = settings.criterion();
    let mut figures = Figures::new("spawn", &settings);
    let rt = runtime();
    let ids: Vec<ComponentId> = (0..CHUNK).map(|i| format!("echo-{i}").into()).collect();

    let mut group = criterion.benchmark_group("spawn");
    for pooling in [true, false] {
        let mode = if pooling { "pooling" } else { "on-demand" };
        let bare = BareEngine::new(pooling);
        let bare_echo = bare.load(&guest_path("echo"));
        let engine =
            Engine::new(EngineConfig::default().pooling(pooling)).expect("building the engine");
        if pooling && engine.allocation() != Allocation::Pooling {
            figures.note("host-core could not reserve its pool: its pooling figures are on-demand");
        }
        let echo = courier_benches::load(&engine, "echo");

        let floor = measure(
            &mut group,
            &format!("wasm_floor/{mode}"),
            &settings,
            |iters| bare_instantiations(&rt, &bare_echo, iters),
        );
        let core = measure(
            &mut group,
            &format!("host_core/{mode}"),
            &settings,
            |iters| core_instantiations(&rt, &echo, &ids, iters),
        );
        let spawn = measure(&mut group, &format!("broker/{mode}"), &settings, |iters| {
            broker_spawns(&rt, &engine, &echo, &ids, iters)
        });

        let floor_key = format!("bare_{mode}");
        figures.push(Figure::time(
            &floor_key,
            &format!("wasm floor: bare instantiate of echo, {mode}"),
            floor,
        ));
        figures.push(
            Figure::time(
                &format!("core_{mode}"),
                &format!("host-core: Component::instantiate of echo, {mode}"),
                core,
            )
            .vs(&floor_key),
        );
        let spawn = Figure::time(
            &format!("spawn_{mode}"),
            &format!("Broker::spawn of echo, {mode}"),
            spawn,
        )
        .vs(&floor_key);
        figures.push(if pooling {
            spawn.target(Target::AtMost(20_000.0))
        } else {
            spawn
        });
    }
    group.finish();

    if settings.recording {
        scale_run(&rt, &mut figures);
    }
    figures.write();
    criterion.final_summary();
}

/// Instantiate bare `echo` `iters` times; the time excludes dropping the instances.
fn bare_instantiations(rt: &Runtime, echo: &BareComponent, iters: u64) -> Duration {
    in_chunks(iters, |n| {
        rt.block_on(async {
            let mut live = Vec::with_capacity(n as usize);
            let started = Instant::now();
            for _ in 0..n {
                live.push(echo.instantiate("echo").await);
            }
            let elapsed = started.elapsed();
            drop(live);
            elapsed
        })
    })
}

/// Instantiate `echo` through host-core `iters` times; the time excludes dropping them.
fn core_instantiations(
    rt: &Runtime,
    echo: &Component,
    ids: &[ComponentId],
    iters: u64,
) -> Duration {
    in_chunks(iters, |n| {
        rt.block_on(async {
            let mut live = Vec::with_capacity(n as usize);
            let started = Instant::now();
            for id in &ids[..n as usize] {
                let instance = echo.instantiate(InstanceOptions::new(id.clone())).await;
                live.push(instance.expect("echo instantiates"));
            }
            let elapsed = started.elapsed();
            drop(live);
            elapsed
        })
    })
}

/// Spawn `iters` echo actors, a chunk per broker; the time excludes the shutdowns.
fn broker_spawns(
    rt: &Runtime,
    engine: &Engine,
    echo: &Component,
    ids: &[ComponentId],
    iters: u64,
) -> Duration {
    in_chunks(iters, |n| {
        rt.block_on(async {
            let broker = Broker::new(engine.clone());
            let started = Instant::now();
            for id in &ids[..n as usize] {
                let spec = ComponentSpec::new(id.clone(), echo.clone());
                broker.spawn(spec).await.expect("echo spawns");
            }
            let elapsed = started.elapsed();
            broker.shutdown(Duration::from_secs(5)).await;
            elapsed
        })
    })
}

/// Run `iters` iterations as chunks of at most [`CHUNK`], adding up the times `chunk`
/// returns for each.
fn in_chunks(iters: u64, mut chunk: impl FnMut(u64) -> Duration) -> Duration {
    let mut total = Duration::ZERO;
    let mut remaining = iters;
    while remaining > 0 {
        let n = remaining.min(CHUNK);
        total += chunk(n);
        remaining -= n;
    }
    total
}

/// Spawn [`SCALE_ACTORS`] idle echo actors and record the time and resident memory they take.
fn scale_run(rt: &Runtime, figures: &mut Figures) {
    println!("scale run: spawning {SCALE_ACTORS} idle echo actors");
    let engine = Engine::new(EngineConfig::default().max_instances(SCALE_POOL))
        .expect("building the engine");
    let allocation = match engine.allocation() {
        Allocation::Pooling => "pooling",
        Allocation::OnDemand => "on-demand",
    };
    figures.note(format!(
        "scale run: an engine for {SCALE_POOL} instances got the {allocation} allocator"
    ));
    let echo = courier_benches::load(&engine, "echo");
    let broker = Broker::new(engine.clone());
    let ids: Vec<ComponentId> = (0..SCALE_ACTORS)
        .map(|i| format!("echo-{i}").into())
        .collect();

    let before = resident_bytes();
    let started = Instant::now();
    rt.block_on(async {
        for id in &ids {
            let spec = ComponentSpec::new(id.clone(), echo.clone());
            broker.spawn(spec).await.expect("echo spawns");
        }
    });
    let elapsed = started.elapsed();
    let after = resident_bytes();
    // Every actor is alive and answering, not merely registered.
    let last = ids.last().expect("at least one actor");
    let reply = rt.block_on(broker.request(last, b"ok".to_vec(), Duration::from_secs(5)));
    assert!(
        matches!(reply.as_deref(), Ok(b"ok")),
        "the last actor should answer, got {reply:?}"
    );

    let actors = f64::from(SCALE_ACTORS);
    let grown = match (before, after) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before) as f64),
        _ => None,
    };
    figures.push(
        Figure::time(
            "scale_spawn",
            &format!("Broker::spawn of echo, {SCALE_ACTORS} in a row ({allocation}), each"),
            Some(elapsed.as_nanos() as f64 / actors),
        )
        .vs("spawn_pooling"),
    );
    figures.push(
        Figure::bytes(
            "scale_rss",
            &format!("resident memory of {SCALE_ACTORS} idle echo actors ({allocation})"),
            grown,
        )
        .target(Target::AtMost(f64::from(1u32 << 30))),
    );
    figures.push(Figure::bytes(
        "scale_rss_each",
        &format!("resident memory per idle echo actor ({allocation})"),
        grown.map(|bytes| bytes / actors),
    ));
    rt.block_on(broker.shutdown(Duration::from_secs(30)));
}
