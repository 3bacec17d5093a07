//! Live upgrade: from `Broker::upgrade` to the first message handled by the new version.
//!
//! - baseline: `Component::instantiate` of the same component, the part of an upgrade that
//!   makes the new instance, measured in the same run;
//! - `echo` upgraded to itself (no state to move: `echo` keeps none), then one request
//!   answered by the new version;
//! - `keeper` holding 1 MiB of state (16 messages of 64 KiB), upgraded to itself: the
//!   running instance saves the state (CBOR), the new one loads it, then answers a request
//!   (which checks that all of the state arrived).

use std::time::{Duration, Instant};

use courier_benches::{Figure, Figures, Settings, measure, runtime};
use courier_host_broker::{Broker, ComponentSpec};
use courier_host_core::{Component, Engine, EngineConfig, InstanceOptions};
use tokio::runtime::Runtime;

/// The state `keeper` holds while it is upgraded.
const STATE_BYTES: usize = 1 << 20;

fn main() {
    let settings = Settings::from_env();
    let mut criterion = settings.criterion();
    let mut figures = Figures::new("upgrade", &settings);
    let rt = runtime();
    let engine = Engine::new(EngineConfig::default()).expect("building the engine");
    let broker = Broker::new(engine.clone());

    let mut group = criterion.benchmark_group("upgrade");
    for (name, state) in [("echo", 0), ("keeper", STATE_BYTES)] {
        let component = courier_benches::load(&engine, name);
        rt.block_on(broker.spawn(ComponentSpec::new(name, component.clone())))
            .expect("spawning");
        if state > 0 {
            fill(&rt, &broker, name, state);
        }
        let instantiate = measure(
            &mut group,
            &format!("instantiate/{name}"),
            &settings,
            |iters| instantiations(&rt, &component, iters),
        );
        let upgrade = measure(&mut group, &format!("upgrade/{name}"), &settings, |iters| {
            upgrades(&rt, &broker, name, &component, state, iters)
        });
        let label = if state > 0 {
            format!(
                "{name} with {} of state",
                courier_benches::size_label(state)
            )
        } else {
            format!("{name}, no state")
        };
        let floor = format!("instantiate_{name}");
        figures.push(Figure::time(
            &floor,
            &format!("Component::instantiate of {name}"),
            instantiate,
        ));
        figures.push(
            Figure::time(
                &format!("upgrade_{name}"),
                &format!(
                    "Broker::upgrade of {label}, until the new version has answered a request"
                ),
                upgrade,
            )
            .vs(&floor),
        );
    }
    group.finish();
    rt.block_on(broker.shutdown(Duration::from_secs(5)));
    figures.write();
    criterion.final_summary();
}

/// Send `keeper` 64 KiB messages until it holds `bytes` of state.
fn fill(rt: &Runtime, broker: &Broker, id: &str, bytes: usize) {
    let chunk = "x".repeat(64 << 10);
    for _ in 0..bytes / chunk.len() {
        broker
            .send(id, chunk.clone())
            .expect("keeper takes the message");
    }
    assert_eq!(kept(rt, broker, id), bytes as u64);
}

/// The length `keeper` says its state has.
fn kept(rt: &Runtime, broker: &Broker, id: &str) -> u64 {
    let reply = rt
        .block_on(broker.request(id, Vec::new(), Duration::from_secs(10)))
        .expect("keeper answers");
    u64::from_le_bytes(reply[..8].try_into().expect("eight bytes"))
}

fn instantiations(rt: &Runtime, component: &Component, iters: u64) -> Duration {
    rt.block_on(async {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let started = Instant::now();
            let instance = component
                .instantiate(InstanceOptions::new("bench"))
                .await
                .expect("instantiates");
            total += started.elapsed();
            drop(instance);
        }
        total
    })
}

/// Upgrade `id` to `component` `iters` times, each until the new version has answered a
/// request; for a component with state, the answer must show all of it.
fn upgrades(
    rt: &Runtime,
    broker: &Broker,
    id: &str,
    component: &Component,
    state: usize,
    iters: u64,
) -> Duration {
    rt.block_on(async {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let started = Instant::now();
            let upgraded = broker
                .upgrade(id, component.clone())
                .await
                .expect("the upgrade succeeds");
            // Empty: keeper reads a request's payload as a command to change how it saves.
            let reply = broker
                .request(id, Vec::new(), Duration::from_secs(10))
                .await
                .expect("the new version answers");
            total += started.elapsed();
            if state > 0 {
                assert!(upgraded.state_bytes.unwrap_or(0) >= state);
                assert_eq!(reply[..8], (state as u64).to_le_bytes());
            }
        }
        total
    })
}
