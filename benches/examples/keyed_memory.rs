//! Resident memory of a keyed component after 1,000,000 keys were touched once each, with at
//! most 10,000 active at a time: what a keyed component costs is bounded by its active keys,
//! not by the keys it has seen.
//!
//! ```text
//! cargo build --release --workspace --examples && target/release/examples/keyed_memory
//! ```
//!
//! Each active key's instance takes about six memory mappings, so 10,000 active keys need
//! more than Linux's default `vm.max_map_count` of 65,530 allows: raise it first
//! (`sysctl -w vm.max_map_count=262144`), or instances fail with `Cannot allocate memory`
//! and their messages are dead-lettered (the run prints the books and a dead letter).
//!
//! (`COURIER_KEYED_KEYS` sets another count of keys.) Memory does not depend on the load of
//! the machine, so one run gives the figure; it prints the resident set before, at every
//! tenth of the keys, and once every key is handled and the bound is reached again.

use std::time::{Duration, Instant};

use courier_benches::memory::resident_bytes;
use courier_host_broker::{Broker, ComponentSpec, Keying, MessagingError};
use courier_host_core::{Engine, EngineConfig};

/// The most keys active at once.
const MAX_ACTIVE: usize = 10_000;

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("?".into(), |b| {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    })
}

fn main() {
    let keys: u64 = std::env::var("COURIER_KEYED_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = courier_benches::runtime();
    // Room for the active keys, the ones being put away (an eighth more) and slack: a key
    // being put away holds its slot until its actor has ended.
    let engine = Engine::new(EngineConfig::default().max_instances(MAX_ACTIVE as u32 * 5 / 4))
        .expect("building the engine");
    let counter = courier_benches::load(&engine, "counter");
    rt.block_on(async {
        let broker = Broker::new(engine.clone());
        let spec =
            ComponentSpec::new("cart", counter).keyed(Keying::default().max_active(MAX_ACTIVE));
        broker.spawn_keyed(spec).await.expect("cart registers");
        let before = resident_bytes();
        println!("keys: {keys}, max_active: {MAX_ACTIVE}");
        println!("resident before any key: {}", mib(before));
        let started = Instant::now();
        let mut peak = before.unwrap_or(0);
        for i in 0..keys {
            let key = format!("cart/{i}");
            loop {
                match broker.send(&key, b"add".to_vec()) {
                    Ok(()) => break,
                    // Too many keys being put away: the sender waits, as any would.
                    Err(err) if matches!(err.error(), MessagingError::MailboxFull(_)) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(err) => panic!("send to {key}: {:?}", err.error()),
                }
            }
            if (i + 1) % (keys / 10).max(1) == 0 {
                let now = resident_bytes();
                peak = peak.max(now.unwrap_or(0));
                println!(
                    "{:>8} keys touched in {:>6.1} s: resident {}",
                    i + 1,
                    started.elapsed().as_secs_f64(),
                    mib(now)
                );
            }
        }
        assert!(
            broker.quiesce(Duration::from_secs(600)).await,
            "every message handled"
        );
        while broker.keyed_metrics()[0].passivating > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let metrics = &broker.keyed_metrics()[0];
        let after = resident_bytes();
        peak = peak.max(after.unwrap_or(0));
        println!(
            "done in {:.1} s: {} activations, {} passivations, {} active, {} delivered",
            started.elapsed().as_secs_f64(),
            metrics.activations,
            metrics.passivations,
            metrics.active,
            metrics.delivered
        );
        println!(
            "resident after {keys} keys touched once: {} (growth {}, peak seen {})",
            mib(after),
            mib(after.zip(before).map(|(a, b)| a.saturating_sub(b))),
            mib(Some(peak))
        );
        let maps = std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count());
        println!("memory mappings of the process now: {maps}");
        let books = broker.accounting();
        println!(
            "accounting: sent {}, delivered {}, refused {}, dead-lettered {}",
            books.sent, books.delivered, books.refused, books.dead_lettered
        );
        if let Some(letter) = broker.dead_letters().first() {
            println!("a dead letter: {}: {}", letter.target, letter.reason);
        }
        broker.shutdown(Duration::from_secs(10)).await;
    });
}
