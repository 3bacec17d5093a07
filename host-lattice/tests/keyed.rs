//! Keyed components served by several hosts: every key on one host, chosen by rendezvous
//! hashing over the hosts that serve the component, reached from any host, moved when a
//! host leaves or joins.

use std::collections::BTreeSet;

use courier_host_broker::{Broker, ComponentSpec, Exposure, Keying, MessagingError};
use courier_host_core::{Engine, EngineConfig};
use courier_host_lattice::{Lattice, LatticeConfig};
use courier_test_support::guest_path;
use courier_test_support::nats::NatsServer;

use crate::common::{Host, LATTICE, SECOND, eventually};

const KEYS: u64 = 100;

/// A host whose engine has room for every key of the test at once, serving the keyed
/// component `cart` (pong, which counts what it gets and checks each sender's order).
async fn cart_host(name: &str, server: &NatsServer) -> Host {
    let engine = Engine::new(EngineConfig::default().max_instances(160)).expect("engine");
    let broker = Broker::new(engine.clone());
    let lattice = Lattice::join(
        &broker,
        LatticeConfig::new(LATTICE, name).server(server.url()),
    )
    .await
    .unwrap_or_else(|err| panic!("joining the lattice: {err}"));
    let pong = engine
        .load_component_file("pong", guest_path("pong"))
        .unwrap();
    let spec = ComponentSpec::new("cart", pong)
        .keyed(Keying::default())
        .expose(Exposure::Replicated)
        .mailbox_capacity(2_048);
    broker.spawn_keyed(spec).await.expect("cart is registered");
    Host {
        engine,
        broker,
        lattice: Some(lattice),
    }
}

fn key(k: u64) -> String {
    format!("cart/{k}")
}

/// The keys active on `host` now.
fn active(host: &Host) -> BTreeSet<u64> {
    (0..KEYS)
        .filter(|k| host.broker.metrics(&key(*k)).is_some())
        .collect()
}

/// Wait until `host` has put away every key it was putting away.
async fn settled(host: &Host) {
    eventually("keys to be put away", || {
        host.broker
            .keyed_metrics()
            .iter()
            .all(|m| m.passivating == 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_the_hosts_reach_their_owner_from_any_host_and_move_only_when_they_must() {
    let server = NatsServer::start();
    let a = cart_host("a", &server).await;
    let b = cart_host("b", &server).await;
    a.sees("cart").await;
    b.sees("cart").await;

    // One message to each key from host a, wherever the key is placed.
    for k in 0..KEYS {
        a.broker.send(&key(k), 0u64.to_le_bytes().to_vec()).unwrap();
    }
    a.settles().await;
    // Asked from host b, each key answers from the instance that took a's message: one
    // owner, whichever host asks.
    for k in 0..KEYS {
        assert_eq!(b.counts(&key(k)).await, [1, 0], "{}", key(k));
    }
    let on_a = active(&a);
    let on_b = active(&b);
    assert!(
        on_a.is_disjoint(&on_b),
        "a key active on both hosts: {on_a:?} {on_b:?}"
    );
    assert_eq!(on_a.len() + on_b.len(), KEYS as usize, "{on_a:?} {on_b:?}");
    assert!(
        (25..=75).contains(&on_a.len()),
        "rendezvous spreads keys over both hosts: {} of {KEYS} on a",
        on_a.len()
    );

    // A host that does not own a key refuses what another host sends it by an older view,
    // naming the owner: the sender hears it.
    let elsewhere = *on_b.first().unwrap();
    match a.broker.accept_message(
        "host".into(),
        &key(elsewhere),
        1u64.to_le_bytes().to_vec(),
        None,
    ) {
        Err(MessagingError::TargetNotFound(reason)) => {
            assert!(reason.contains("placed on host `b`"), "{reason}")
        }
        other => panic!("a took a message for a key b owns: {other:?}"),
    }

    // Per-sender order to a key on the other host holds while it stays there.
    for n in 1..=1_000u64 {
        a.broker
            .send(&key(elsewhere), n.to_le_bytes().to_vec())
            .unwrap();
    }
    a.settles().await;
    assert_eq!(
        a.counts(&key(elsewhere)).await,
        [1_001, 0],
        "all there, in order"
    );

    // Host b leaves: it puts its keys away, and a places every key on itself. The keys a
    // had stay with their state; b's start afresh on a (pong is not durable).
    b.lattice().leave(5 * SECOND).await;
    assert_eq!(
        b.broker.active_keys("cart"),
        Some(0),
        "b put its keys away as it left"
    );
    eventually("a to hear that b left", || !a.lattice().serves("cart")).await;
    for k in 0..KEYS {
        let expected = if on_a.contains(&k) { [1, 0] } else { [0, 0] };
        assert_eq!(a.counts(&key(k)).await, expected, "{}", key(k));
    }
    assert_eq!(active(&a).len(), KEYS as usize, "every key on a now");
    drop(b);

    // Host b comes back: exactly the keys it won before move to it again, and a puts them
    // away; the others stay on a.
    let b = cart_host("b", &server).await;
    a.sees("cart").await;
    eventually("a to put away the keys b owns", || active(&a) == on_a).await;
    settled(&a).await;
    for k in &on_b {
        b.broker
            .send(&key(*k), 0u64.to_le_bytes().to_vec())
            .unwrap();
    }
    b.settles().await;
    assert_eq!(active(&b), on_b, "b's keys, made on b by b's own sends");
    assert!(
        active(&a).is_disjoint(&active(&b)),
        "no key active on both hosts"
    );
}
