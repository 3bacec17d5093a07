//! Spawning actors from a loaded component, against a bare instantiation, and the memory of
//! many idle actors.
//!
//! - wasm floor: a bare `InstancePre::instantiate_async` of `echo` in a fresh store, with the
//!   pooling allocator (host-core's default) and with on-demand allocation;
//! - host-core: `Component::instantiate`, both ways;
//! - Courier: `Broker::spawn` (instance, mailbox, registry entry; the actor's task starts
//!   with its first message), both ways;
//! - scale: 10,000 and 100,000 idle `echo` actors in a row, each on an engine with room for
//!   5% more, timed against as many bare instantiations in a row on the same pool, and the
//!   growth of the process's resident memory divided among them, before and after one
//!   message each. If the pool cannot be reserved host-core falls back to on-demand
//!   allocation; the report says which it got, and how much address space each memory
//!   reserves. A run that needs more memory mappings than the host allows is skipped with
//!   a note;
//! - the kernel's floor under a run in a row: the first write to a fresh page.
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
/// Actors in the scale runs: the design's 10,000, and ten times as many.
const SCALE_RUNS: [u32; 2] = [10_000, 100_000];

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
        figures.push(Figure::time(
            "page_first_write",
            "kernel: the first write to a fresh 4 KiB page of memory, each",
            Some(first_page_writes()),
        ));
        for actors in SCALE_RUNS {
            scale_run(&rt, &mut figures, actors);
        }
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

/// Spawn `actors` idle echo actors on an engine sized for them (a pool a little larger, or
/// on-demand allocation where the pool cannot be reserved) and record the time and resident
/// memory they take.
fn scale_run(rt: &Runtime, figures: &mut Figures, actors_wanted: u32) {
    // Each live instance holds four memory mappings, and the pool one more pair for each
    // of its fiber stacks (a guard page apiece), made when the engine is (measured: with
    // on-demand allocation a host under Linux's default limit of 65,530 stops at 16,364
    // actors, and at that point even malloc and new threads fail, so the process aborts).
    // A run the limit cannot hold is skipped with a note rather than crashing the benchmark.
    let pool = actors_wanted + actors_wanted / 20;
    let mappings = u64::from(actors_wanted) * 4 + u64::from(pool) * 2;
    if let Some(limit) = max_map_count()
        && mappings > limit
    {
        figures.note(format!(
            "scale run of {actors_wanted}: skipped: it needs about {mappings} memory mappings \
             and this host allows {limit} (vm.max_map_count); raise that to run it"
        ));
        return;
    }
    println!("scale run: spawning {actors_wanted} idle echo actors");
    let config = EngineConfig::default().max_instances(pool);
    let reservation = config.get_memory_reservation();
    let engine = Engine::new(config).expect("building the engine");
    let allocation = match engine.allocation() {
        Allocation::Pooling => "pooling",
        Allocation::OnDemand => "on-demand",
    };
    let checks = if reservation < 4 << 30 {
        "bounds checks compiled in"
    } else {
        "no bounds checks"
    };
    figures.note(format!(
        "scale run: an engine for {pool} instances got the {allocation} allocator, each memory \
         reserving {} MiB of address space ({checks})",
        reservation >> 20
    ));
    let echo = courier_benches::load(&engine, "echo");
    let broker = Broker::new(engine.clone());
    let ids: Vec<ComponentId> = (0..actors_wanted)
        .map(|i| format!("echo-{i}").into())
        .collect();

    let before = resident_bytes();
    let started = Instant::now();
    // The host may run out of something first (on-demand allocation maps several regions
    // per instance, and Linux allows 65,530 mappings per process by default): the run then
    // reports how far it got and why, rather than nothing.
    let spawned = rt.block_on(async {
        for (count, id) in ids.iter().enumerate() {
            let spec = ComponentSpec::new(id.clone(), echo.clone());
            if let Err(err) = broker.spawn(spec).await {
                return (count, Some(err.to_string()));
            }
        }
        (ids.len(), None)
    });
    let elapsed = started.elapsed();
    let after = resident_bytes();
    let (spawned, stopped_by) = spawned;
    if let Some(err) = &stopped_by {
        figures.note(format!(
            "scale run of {actors_wanted}: stopped after {spawned} actors: {err}"
        ));
    }
    let reached = u32::try_from(spawned).expect("fewer actors than asked for");
    assert!(reached > 0, "not one actor spawned: {stopped_by:?}");
    // Every actor is alive and answering, not merely registered; unless the host ran out
    // of mappings, when even a new thread's signal stack may fail to map.
    if stopped_by.is_none() {
        let last = &ids[spawned - 1];
        let reply = rt.block_on(broker.request(last, b"ok".to_vec(), Duration::from_secs(5)));
        assert!(
            matches!(reply.as_deref(), Ok(b"ok")),
            "the last actor should answer, got {reply:?}"
        );
    }

    let actors = f64::from(reached);
    // The first run keeps the keys the report has always had.
    let key = |name: &str| match actors_wanted {
        10_000 => format!("scale_{name}"),
        n => format!("scale{}k_{name}", n / 1000),
    };
    let grown_since = |now: Option<u64>| {
        before
            .zip(now)
            .map(|(before, now)| now.saturating_sub(before) as f64)
    };
    let grown = grown_since(after);
    // An actor's task starts with the first message put in its mailbox: one message each
    // shows what an actor that has run takes.
    let grown_run = if stopped_by.is_none() {
        for id in &ids {
            broker.send(id, &b"hi"[..]).expect("echo takes a message");
        }
        courier_benches::settle(&broker, Duration::from_secs(60));
        grown_since(resident_bytes())
    } else {
        None
    };
    rt.block_on(broker.shutdown(Duration::from_secs(30)));
    drop((broker, echo, engine));
    // The floor at scale: as many bare instances in a row, kept alive, on a bare engine
    // with the same pool, so what is the engine's and the kernel's at scale shows apart
    // from what Courier adds. Made once host-core's engine is gone (two such pools do not
    // fit in one process's address space) and after the resident memory was read (its heap
    // would be warm for the actors otherwise). `None` if the pool cannot be had.
    let bare_each = std::panic::catch_unwind(|| BareEngine::with_pool(Some(pool)))
        .ok()
        .map(|bare| {
            let echo = bare.load(&guest_path("echo"));
            rt.block_on(async {
                let mut live = Vec::with_capacity(actors_wanted as usize);
                let started = Instant::now();
                for _ in 0..actors_wanted {
                    live.push(echo.instantiate("echo").await);
                }
                started.elapsed().as_nanos() as f64 / f64::from(actors_wanted)
            })
        });
    let in_a_row = Some(elapsed.as_nanos() as f64 / actors);
    figures.push(Figure::time(
        &key("bare"),
        &format!("wasm floor: bare instantiate of echo, {actors_wanted} in a row (pooling), each"),
        bare_each,
    ));
    let spawn = Figure::time(
        &key("spawn"),
        &format!("Broker::spawn of echo, {reached} in a row ({allocation}), each"),
        in_a_row,
    )
    .vs("spawn_pooling");
    // The target: a spawn in a row costs at most twice one in chunks.
    figures.push(if actors_wanted == 10_000 {
        spawn.target(Target::RatioAtMost(2.0))
    } else {
        spawn
    });
    figures.push(
        Figure::time(
            &key("spawn_vs_bare"),
            &format!(
                "Broker::spawn of echo, {reached} in a row ({allocation}), each (against the bare instantiations in a row)"
            ),
            in_a_row,
        )
        .vs(&key("bare")),
    );
    let rss = Figure::bytes(
        &key("rss"),
        &format!("resident memory of {reached} idle echo actors ({allocation})"),
        grown,
    );
    // The design's target is for 10,000 actors; the larger run is a scale point.
    figures.push(if actors_wanted == 10_000 {
        rss.target(Target::AtMost(f64::from(1u32 << 30)))
    } else {
        rss
    });
    figures.push(Figure::bytes(
        &key("rss_each"),
        &format!("resident memory per idle echo actor, never sent anything ({allocation})"),
        grown.map(|bytes| bytes / actors),
    ));
    figures.push(Figure::bytes(
        &key("rss_each_run"),
        &format!("resident memory per idle echo actor, after one message each ({allocation})"),
        grown_run.map(|bytes| bytes / actors),
    ));
}

/// Nanoseconds per first write to a page never touched before: what the kernel charges for
/// each page of memory a run in a row takes that a run in chunks finds already in use (a
/// fresh actor's heap and its instance's memory). A virtual machine whose host backs its
/// memory lazily charges several times what bare metal does.
fn first_page_writes() -> f64 {
    const PAGE: usize = 4096;
    const PAGES: usize = 16 * 1024;
    // Zeroed allocations this large are fresh mappings: no page of it is touched yet.
    let mut memory = vec![0u8; PAGES * PAGE];
    let started = Instant::now();
    for page in memory.chunks_mut(PAGE) {
        page[0] = 1;
    }
    let elapsed = started.elapsed();
    std::hint::black_box(&memory);
    elapsed.as_nanos() as f64 / PAGES as f64
}

/// Linux's limit on memory mappings per process, if this is Linux.
fn max_map_count() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}
