//! Keyed components, each against its plain counterpart in the same run:
//!
//! - activation: the first request to a new key of a keyed `echo` (its entry, its instance,
//!   the handler), against `Broker::spawn` of a plain `echo` followed by its first request;
//! - an active key: a request to a key that is already active, against a request to a
//!   declared component (target: at most 1.2 times).
//!
//! Keys are made in chunks, each on a fresh broker shut down outside the time measured, so a
//! run never needs more than a chunk's worth of pool slots.

use std::time::{Duration, Instant};

use courier_benches::{Figure, Figures, Settings, Target, measure, runtime};
use courier_host_broker::{Broker, ComponentSpec, Keying};
use courier_host_core::{Component, ComponentId, Engine, EngineConfig};
use tokio::runtime::Runtime;

/// Keys or actors alive at once while measuring: well inside the default pool of 1,000.
const CHUNK: u64 = 200;
const TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    let settings = Settings::from_env();
    let mut criterion = settings.criterion();
    let mut figures = Figures::new("keyed", &settings);
    let rt = runtime();
    let engine = Engine::new(EngineConfig::default()).expect("building the engine");
    let echo = courier_benches::load(&engine, "echo");
    let ids: Vec<ComponentId> = (0..CHUNK).map(|i| format!("echo-{i}").into()).collect();
    let keys: Vec<String> = (0..CHUNK).map(|i| format!("cart/{i}")).collect();

    let mut group = criterion.benchmark_group("keyed");
    let spawned = measure(&mut group, "spawn_then_request", &settings, |iters| {
        spawns(&rt, &engine, &echo, &ids, iters)
    });
    let activated = measure(&mut group, "first_request_to_a_key", &settings, |iters| {
        activations(&rt, &engine, &echo, &keys, iters)
    });

    let (declared, key) = rt.block_on(async {
        let broker = Broker::new(engine.clone());
        broker
            .spawn(ComponentSpec::new("echo", echo.clone()))
            .await
            .expect("echo spawns");
        broker
            .spawn_keyed(ComponentSpec::new("cart", echo.clone()).keyed(Keying::default()))
            .await
            .expect("cart registers");
        broker
            .request("cart/1", b"warm".to_vec(), TIMEOUT)
            .await
            .unwrap();
        (broker.clone(), broker)
    });
    let to_declared = measure(
        &mut group,
        "request_to_a_declared_component",
        &settings,
        |iters| requests(&rt, &declared, "echo", iters),
    );
    let to_key = measure(&mut group, "request_to_an_active_key", &settings, |iters| {
        requests(&rt, &key, "cart/1", iters)
    });
    group.finish();
    rt.block_on(declared.shutdown(TIMEOUT));

    figures.push(Figure::time(
        "spawn_then_request",
        "Broker::spawn of echo, then its first request",
        spawned,
    ));
    figures.push(
        Figure::time(
            "first_request_to_a_key",
            "the first request to a new key of a keyed echo (activation)",
            activated,
        )
        .vs("spawn_then_request"),
    );
    figures.push(Figure::time(
        "request_to_a_declared_component",
        "a request from the host to a declared echo",
        to_declared,
    ));
    figures.push(
        Figure::time(
            "request_to_an_active_key",
            "a request from the host to an active key of a keyed echo",
            to_key,
        )
        .vs("request_to_a_declared_component")
        .target(Target::RatioAtMost(1.2)),
    );
    figures.write();
    criterion.final_summary();
}

/// Spawn `iters` echo actors and send each its first request, a chunk per broker; the
/// time excludes the shutdowns.
fn spawns(
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
                broker
                    .spawn(ComponentSpec::new(id.clone(), echo.clone()))
                    .await
                    .expect("echo spawns");
                broker.request(id, b"hi".to_vec(), TIMEOUT).await.unwrap();
            }
            let elapsed = started.elapsed();
            broker.shutdown(TIMEOUT).await;
            elapsed
        })
    })
}

/// Send `iters` first requests to new keys, a chunk per broker; the time excludes
/// registering the keyed component and the shutdowns.
fn activations(
    rt: &Runtime,
    engine: &Engine,
    echo: &Component,
    keys: &[String],
    iters: u64,
) -> Duration {
    in_chunks(iters, |n| {
        rt.block_on(async {
            let broker = Broker::new(engine.clone());
            broker
                .spawn_keyed(ComponentSpec::new("cart", echo.clone()).keyed(Keying::default()))
                .await
                .expect("cart registers");
            let started = Instant::now();
            for key in &keys[..n as usize] {
                broker.request(key, b"hi".to_vec(), TIMEOUT).await.unwrap();
            }
            let elapsed = started.elapsed();
            broker.shutdown(TIMEOUT).await;
            elapsed
        })
    })
}

/// `iters` requests from the host to `target`, one after another.
fn requests(rt: &Runtime, broker: &Broker, target: &str, iters: u64) -> Duration {
    rt.block_on(async {
        let started = Instant::now();
        for _ in 0..iters {
            broker
                .request(target, b"hi".to_vec(), TIMEOUT)
                .await
                .unwrap();
        }
        started.elapsed()
    })
}

/// Run `iters` iterations as chunks of at most [`CHUNK`], adding up their times.
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
