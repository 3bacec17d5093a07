//! Fault injection: a hundred components exchange messages with random routing while a share
//! of handlers trap, and at the end every message is accounted for and no sender's messages
//! were reordered.
//!
//! The size is set for CI (200,000 messages, well under two minutes on two cores).
//! `COURIER_SOAK_MESSAGES` makes it a long soak, `COURIER_SOAK_SEED` picks another routing,
//! and `COURIER_SOAK_TRAPS` the traps per mille.

use std::time::{Duration, Instant};

use crate::common::Setup;
use courier_host_broker::{ComponentState, Supervision};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A small seeded generator (SplitMix64), so a failing run can be repeated exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_components_with_random_traps_lose_nothing_and_keep_order() {
    let messages = setting("COURIER_SOAK_MESSAGES", 200_000);
    let seed = setting("COURIER_SOAK_SEED", 7);
    let traps_per_mille = setting("COURIER_SOAK_TRAPS", 2);
    let setup = Setup::new();
    let started = Instant::now();

    // Traps are expected here: restarts must never run out, nor wait.
    let supervision = Supervision::default()
        .intensity(u32::MAX, Duration::from_secs(1))
        .backoff(Duration::ZERO, Duration::ZERO);
    for i in 0..50 {
        let pong = setup
            .spec(&format!("pongs/{i}"), "pong")
            .mailbox_capacity(2048)
            .supervision(supervision);
        setup.spawn(pong).await;
        let ping = setup
            .spec(&format!("pings/{i}"), "ping")
            .may_send("pongs/*")
            .supervision(supervision);
        setup.spawn(ping).await;
    }

    // Orders of 50 to 500 messages from a random ping to a random pong, until the total
    // is reached.
    let mut rng = Rng(seed);
    let mut ordered = 0;
    let mut orders = 0;
    while ordered < messages {
        let count = (50 + rng.below(451)).min(messages - ordered);
        let ping = rng.below(50);
        let pong = rng.below(50);
        let order = format!("{count}@pongs/{pong}~{traps_per_mille}");
        // The host's own sends wait for room rather than fail, so every order is placed.
        setup
            .broker
            .send_waiting(
                &format!("pings/{ping}"),
                order.into_bytes(),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        ordered += count;
        orders += 1;
        if orders % 20 == 0 {
            // Let the pongs catch up now and then, so most sends find room.
            tokio::task::yield_now().await;
        }
    }
    assert!(
        setup.broker.quiesce(Duration::from_secs(120)).await,
        "still in flight"
    );

    let books = setup.broker.accounting();
    assert_eq!(books.sent, orders + messages, "{books:?}");
    assert_eq!(
        books.delivered + books.refused + books.dead_lettered,
        books.sent,
        "{books:?}"
    );

    let mut restarts = 0;
    for i in 0..50 {
        let id = format!("pongs/{i}");
        let figures = setup
            .broker
            .request(&id, Vec::new(), Duration::from_secs(10))
            .await
            .unwrap();
        let count = u64::from_le_bytes(figures[..8].try_into().unwrap());
        let out_of_order = u64::from_le_bytes(figures[8..16].try_into().unwrap());
        assert_eq!(out_of_order, 0, "{id} saw a sender's messages out of order");
        // Only the instance alive now: each restart starts the count again.
        assert!(count <= messages);
        let metrics = setup.broker.metrics(&id).unwrap();
        assert_eq!(metrics.state, ComponentState::Running, "{id}");
        restarts += metrics.restarts;
    }
    let pongs: Vec<_> = setup
        .broker
        .all_metrics()
        .into_iter()
        .filter(|m| m.id.starts_with("pongs/"))
        .collect();
    let traps: u64 = pongs.iter().map(|m| m.dead_lettered).sum();
    // Handled by some pong instance; less the 50 requests for the figures above.
    let received = pongs.iter().map(|m| m.delivered).sum::<u64>() - 50;
    assert_eq!(
        traps, restarts,
        "every trap cost exactly one message and one restart"
    );
    if traps_per_mille > 0 {
        assert!(traps > 0, "no fault was injected");
    }
    // Each ping's message to a pong ended in one of three places.
    let refused_pings = books.refused;
    assert_eq!(received + traps + refused_pings, messages, "{books:?}");
    eprintln!(
        "soak: {messages} messages in {orders} orders, seed {seed}: {received} received, \
         {traps} traps injected and dead-lettered, {refused_pings} refused (mailbox full), \
         lost 0, in {:.1?}",
        started.elapsed()
    );
}
