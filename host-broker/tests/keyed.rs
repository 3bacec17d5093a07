//! Keyed components: `cart/<key>` reaches the instance of that key, made on its first
//! message and put away when idle or beyond the bound.

use std::sync::Arc;
use std::time::Duration;

use courier_host_broker::{Broker, BrokerConfig, ComponentSpec, Keying, MessagingError};
use courier_host_core::{Engine, EngineConfig};
use courier_host_store::Store;

use crate::common::{SECOND, Setup, engine, load, store_in};

fn keyed(setup: &Setup, guest: &str, keying: Keying) -> ComponentSpec {
    setup.spec("cart", guest).keyed(keying)
}

/// The count a counter key reports.
async fn count(broker: &Broker, id: &str) -> u64 {
    let reply = broker
        .request(id, Vec::new(), 10 * SECOND)
        .await
        .unwrap_or_else(|err| panic!("count of {id}: {err:?}"));
    u64::from_le_bytes(reply.try_into().unwrap())
}

/// Send from the host, retrying while the key's component refuses for now (`mailbox-full`
/// while too many keys are being put away).
async fn send_retrying(broker: &Broker, target: &str) {
    loop {
        match broker.send(target, b"add".to_vec()) {
            Ok(()) => return,
            Err(err) if matches!(err.error(), MessagingError::MailboxFull(_)) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(err) => panic!("send to {target}: {:?}", err.error()),
        }
    }
}

async fn quiet(broker: &Broker) {
    assert!(broker.quiesce(30 * SECOND).await, "the broker goes quiet");
}

fn balanced(broker: &Broker) {
    let books = broker.accounting();
    assert_eq!(
        books.sent,
        books.delivered + books.refused + books.dead_lettered,
        "every message ends delivered, refused or dead-lettered: {books:?}"
    );
}

#[tokio::test]
async fn the_first_message_to_a_key_makes_its_instance_and_its_id_is_the_key() {
    let setup = Setup::new();
    let broker = &setup.broker;
    broker
        .spawn_keyed(keyed(&setup, "counter", Keying::default()))
        .await
        .unwrap();
    assert_eq!(
        broker.active_keys("cart"),
        Some(0),
        "nothing runs before a message"
    );

    // A send that cannot wait makes the key, and what it queues is handled in order.
    for _ in 0..3 {
        broker.send("cart/8812", b"add".to_vec()).unwrap();
    }
    broker.send("cart/7", b"add".to_vec()).unwrap();
    assert_eq!(count(broker, "cart/8812").await, 3);
    assert_eq!(count(broker, "cart/7").await, 1);
    // A request alone makes a key too.
    assert_eq!(count(broker, "cart/new").await, 0);

    let metrics = &broker.keyed_metrics()[0];
    assert_eq!(metrics.id.as_ref() as &str, "cart");
    assert_eq!((metrics.active, metrics.activations), (3, 3));
    assert_eq!(metrics.delivered, 7, "four messages and three requests");
    assert_eq!(metrics.activation_latency.count, 3);

    let probes = Setup::new();
    let spec = probes.spec("probe", "probe").keyed(Keying::default());
    probes.broker.spawn_keyed(spec).await.unwrap();
    assert_eq!(probes.probe("probe/8812", "self").await, "probe/8812");
}

#[tokio::test]
async fn keys_are_bounded_and_a_refused_key_names_its_component_and_key() {
    let setup = Setup::new();
    let broker = &setup.broker;
    broker
        .spawn_keyed(keyed(&setup, "counter", Keying::default()))
        .await
        .unwrap();
    let long = format!("cart/{}", "k".repeat(129));
    for target in ["cart/a b", "cart/x/y", "cart/é", long.as_str()] {
        let err = broker.send(target, b"add".to_vec()).unwrap_err();
        let MessagingError::TargetNotFound(text) = err.error() else {
            panic!("{target}: {:?}", err.error());
        };
        assert!(
            text.contains("not a key of component `cart`"),
            "{target}: {text}"
        );
        let err = broker
            .request(target, Vec::new(), SECOND)
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::TargetNotFound(_)), "{err:?}");
    }
    assert_eq!(broker.active_keys("cart"), Some(0));
    balanced(broker);

    // A keyed id is one part, and a key spawned as a plain component is refused.
    let err = broker
        .spawn_keyed(setup.spec("a/b", "counter").keyed(Keying::default()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("one part"), "{err}");
    let err = broker
        .spawn(setup.spec("cart", "counter"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");
}

#[tokio::test]
async fn capability_patterns_reach_keys() {
    let setup = Setup::new();
    let broker = &setup.broker;
    broker
        .spawn_keyed(keyed(&setup, "counter", Keying::default()))
        .await
        .unwrap();
    setup
        .spawn(setup.spec("allowed", "probe").may_send("cart/*"))
        .await;
    setup
        .spawn(setup.spec("denied", "probe").may_send("orders/*"))
        .await;
    assert_eq!(setup.probe("allowed", "send:cart/42").await, "ok");
    let denied = setup.probe("denied", "send:cart/42").await;
    assert!(denied.contains("AccessDenied"), "{denied}");
    quiet(broker).await;
    assert_eq!(count(broker, "cart/42").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_active_the_least_recently_used_keys_are_put_away_and_nothing_is_lost() {
    // Room in the pool for the active keys and the ones being put away.
    let engine = Engine::new(EngineConfig::default().max_instances(1_300)).unwrap();
    let setup = Setup {
        broker: Broker::new(engine.clone()),
        engine,
    };
    let broker = &setup.broker;
    let max_active = 1_000;
    let keying = Keying::default().max_active(max_active);
    broker
        .spawn_keyed(keyed(&setup, "counter", keying))
        .await
        .unwrap();
    // Kept busy all along, so it is never the least recently used.
    let keys = 100_000;
    let mut resident_peak = 0;
    for key in 0..keys {
        send_retrying(broker, &format!("cart/{key}")).await;
        if key % 100 == 0 {
            send_retrying(broker, "cart/hot").await;
        }
        if key % 500 == 0 {
            resident_peak = resident_peak.max(broker.components().len());
            assert!(broker.active_keys("cart").unwrap() <= max_active + max_active / 32 + 1);
        }
    }
    quiet(broker).await;
    let slack = max_active / 32 + max_active / 8 + 64;
    assert!(
        resident_peak <= max_active + slack,
        "{resident_peak} entries at most, for {max_active} active keys"
    );
    setup
        .wait_until(|broker| broker.keyed_metrics()[0].passivating == 0)
        .await;
    let metrics = broker.keyed_metrics().remove(0);
    assert_eq!(metrics.delivered, keys as u64 + 1_000, "{metrics:?}");
    assert_eq!(metrics.failed, 0);
    assert!(metrics.passivations >= (keys - max_active) as u64);
    assert_eq!(count(broker, "cart/hot").await, 1_000, "never put away");
    balanced(broker);
    let books = broker.accounting();
    assert_eq!(books.dead_lettered, 0);
}

#[tokio::test]
async fn an_idle_key_is_put_away_and_made_again_by_its_next_message() {
    let setup = Setup::new();
    let broker = &setup.broker;
    let keying = Keying::default().idle(Duration::from_millis(50));
    broker
        .spawn_keyed(keyed(&setup, "counter", keying))
        .await
        .unwrap();
    broker.send("cart/1", b"add".to_vec()).unwrap();
    assert_eq!(count(broker, "cart/1").await, 1);
    setup
        .wait_until(|broker| broker.active_keys("cart") == Some(0))
        .await;
    assert!(broker.components().is_empty(), "its entry is gone");
    let metrics = broker.keyed_metrics().remove(0);
    assert_eq!((metrics.activations, metrics.passivations), (1, 1));
    // Not durable: it starts again from nothing.
    broker.send("cart/1", b"add".to_vec()).unwrap();
    assert_eq!(count(broker, "cart/1").await, 1);
    assert_eq!(broker.keyed_metrics()[0].activations, 2);
    balanced(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_racing_a_passivation_is_delivered() {
    let setup = Setup::new();
    let broker = &setup.broker;
    // The shortest timeout, so the sweep meets keys between messages over and over.
    let keying = Keying::default().idle(Duration::from_millis(10));
    broker
        .spawn_keyed(keyed(&setup, "counter", keying))
        .await
        .unwrap();
    let mut sent = 0u64;
    for round in 0..400u64 {
        for key in 0..4 {
            broker
                .send(&format!("cart/{key}"), b"add".to_vec())
                .unwrap();
            sent += 1;
        }
        tokio::time::sleep(Duration::from_micros(2_000 + (round * 37) % 9_000)).await;
    }
    quiet(broker).await;
    setup
        .wait_until(|broker| broker.keyed_metrics()[0].passivating == 0)
        .await;
    let metrics = broker.keyed_metrics().remove(0);
    // How many passivations meet the traffic depends on the machine's load; each key put
    // away at least once on average is enough for the race to have been run.
    assert!(metrics.passivations >= 3, "passivations met: {metrics:?}");
    assert_eq!(metrics.delivered, sent, "{metrics:?}");
    let books = broker.accounting();
    assert_eq!((books.refused, books.dead_lettered), (0, 0), "{books:?}");
    balanced(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_key_keeps_its_state_across_passivations() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let broker = Broker::with_config(
        engine.clone(),
        BrokerConfig::default().store(store_in(&dir)),
    );
    let keying = Keying::default()
        .max_active(8)
        .idle(Duration::from_millis(10));
    let spec = ComponentSpec::new("cart", load(&engine, "counter"))
        .durable(true)
        .keyed(keying);
    broker.spawn_keyed(spec).await.unwrap();
    // A plain send cannot wait for the store, as for any durable component.
    assert!(broker.send("cart/1", b"add".to_vec()).is_err());
    let keys = 40;
    let rounds = 3;
    for round in 0..rounds {
        for key in 0..keys {
            broker
                .send_durable(&format!("cart/{key}"), b"add".to_vec())
                .await
                .unwrap();
        }
        if round == 1 {
            // Long enough for the sweep to put every key away.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    quiet(&broker).await;
    for key in 0..keys {
        assert_eq!(
            count(&broker, &format!("cart/{key}")).await,
            rounds,
            "cart/{key}"
        );
    }
    let metrics = broker.keyed_metrics().remove(0);
    assert!(metrics.passivations >= keys as u64, "{metrics:?}");
    balanced(&broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_key_put_away_while_messages_arrive_loses_no_count() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let broker = Broker::with_config(
        engine.clone(),
        BrokerConfig::default().store(store_in(&dir)),
    );
    let keying = Keying::default().idle(Duration::from_millis(10));
    let spec = ComponentSpec::new("cart", load(&engine, "counter"))
        .durable(true)
        .keyed(keying);
    broker.spawn_keyed(spec).await.unwrap();
    let rounds = 150;
    for round in 0..rounds {
        for key in 0..3 {
            broker
                .send_durable(&format!("cart/{key}"), b"add".to_vec())
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_micros(2_000 + (round * 37) % 11_000)).await;
    }
    quiet(&broker).await;
    let metrics = broker.keyed_metrics().remove(0);
    // How many passivations meet the traffic depends on the machine's load; each key put
    // away at least once on average is enough for the race to have been run.
    assert!(metrics.passivations >= 3, "passivations met: {metrics:?}");
    for key in 0..3 {
        assert_eq!(
            count(&broker, &format!("cart/{key}")).await,
            rounds,
            "cart/{key}"
        );
    }
    balanced(&broker);
}

#[tokio::test]
async fn an_upgrade_reaches_every_active_key_and_every_key_made_after() {
    let setup = Setup::new();
    let broker = &setup.broker;
    broker
        .spawn_keyed(keyed(&setup, "echo", Keying::default()))
        .await
        .unwrap();
    let echoed = broker
        .request("cart/1", b"hi".to_vec(), SECOND)
        .await
        .unwrap();
    assert_eq!(echoed, b"hi");
    // Made, its instance not yet: the upgrade reaches it too.
    broker.send("cart/2", b"queued".to_vec()).unwrap();

    let counter = load(&setup.engine, "counter");
    let version = counter.version().to_string();
    let upgraded = broker.upgrade("cart", counter).await.unwrap();
    assert_eq!(upgraded.version, version);
    for key in ["cart/1", "cart/2", "cart/3"] {
        let reply = broker.request(key, b"hi".to_vec(), SECOND).await.unwrap();
        assert_eq!(reply.len(), 8, "{key} answers as a counter");
    }
    assert_eq!(broker.keyed_metrics()[0].version, version);
    assert_eq!(broker.metrics("cart/1").unwrap().version, version);
    quiet(broker).await;
    balanced(broker);
}

#[tokio::test]
async fn stopping_a_keyed_component_stops_every_active_key_and_makes_no_key_after() {
    let setup = Setup::new();
    let broker = &setup.broker;
    broker
        .spawn_keyed(keyed(&setup, "counter", Keying::default()))
        .await
        .unwrap();
    for k in 0..10 {
        for _ in 0..5 {
            broker.send(&format!("cart/{k}"), b"add".to_vec()).unwrap();
        }
    }
    assert_eq!(broker.active_keys("cart"), Some(10));

    // What the keys queued is handled before they stop.
    let report = broker.stop("cart").await.expect("cart stops");
    assert_eq!(report.stopped.len(), 10, "{report:?}");
    assert!(report.undelivered.is_empty(), "{report:?}");
    assert_eq!(
        broker.active_keys("cart"),
        None,
        "no longer a keyed component"
    );
    assert!(broker.components().is_empty(), "{:?}", broker.components());
    assert_eq!(broker.accounting().delivered, 50);

    // No key is made after.
    let refused = broker.send("cart/1", b"add".to_vec()).unwrap_err();
    assert!(
        matches!(refused.error(), MessagingError::TargetNotFound(_)),
        "{:?}",
        refused.error()
    );
    assert!(matches!(
        broker.stop("cart").await,
        Err(courier_host_broker::BrokerError::NotFound(_))
    ));
    balanced(broker);

    // And it can be spawned again under its id, its keys starting afresh.
    broker
        .spawn_keyed(keyed(&setup, "counter", Keying::default()))
        .await
        .expect("spawned again");
    assert_eq!(count(broker, "cart/1").await, 0);
}

/// A broker keeping durable components in `store`, with a durable keyed `timekeeper` as
/// `cart` whose keys are put away after 20 ms without a message.
async fn durable_timekeepers(store: &Arc<dyn Store>) -> Broker {
    let engine = engine();
    let broker = Broker::with_config(engine.clone(), BrokerConfig::default().store(store.clone()));
    let spec = ComponentSpec::new("cart", load(&engine, "timekeeper"))
        .durable(true)
        .keyed(Keying::default().idle(Duration::from_millis(20)));
    broker.spawn_keyed(spec).await.unwrap();
    broker
}

/// Wait until `cart`'s keys, summed, have handled `delivered` messages.
async fn delivered(broker: &Broker, delivered: u64) -> courier_host_broker::KeyedMetrics {
    let deadline = std::time::Instant::now() + 20 * SECOND;
    loop {
        let metrics = broker.keyed_metrics().remove(0);
        if metrics.delivered >= delivered {
            return metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cart's keys handled {} of {delivered}: {metrics:?}",
            metrics.delivered
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_keys_timer_wakes_it_after_it_was_put_away_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    let broker = durable_timekeepers(&store).await;
    let scheduled = broker
        .request("cart/1", b"after:t:3000:hello".to_vec(), 10 * SECOND)
        .await
        .unwrap();
    assert_eq!(scheduled, b"ok");
    // Put away long before its timer is due; the timer wakes it, with nothing sent to it.
    let deadline = std::time::Instant::now() + 10 * SECOND;
    while broker.keyed_metrics()[0].passivations == 0 {
        assert!(std::time::Instant::now() < deadline, "never put away");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        broker.keyed_metrics()[0].delivered,
        1,
        "put away before its timer"
    );
    let metrics = delivered(&broker, 2).await;
    assert_eq!(
        metrics.activations, 2,
        "made again by its timer: {metrics:?}"
    );
    assert!(metrics.passivations >= 1, "{metrics:?}");

    // A timer pending when the host stops wakes the key after the next start.
    let scheduled = broker
        .request("cart/2", b"after:t:3000:again".to_vec(), 10 * SECOND)
        .await
        .unwrap();
    assert_eq!(scheduled, b"ok");
    broker.shutdown(10 * SECOND).await;
    drop(broker);
    let broker = durable_timekeepers(&store).await;
    let metrics = delivered(&broker, 1).await;
    assert_eq!(
        (metrics.activations, metrics.delivered),
        (1, 1),
        "woken by its stored timer alone: {metrics:?}"
    );
    // The one-shot timer leaves the store with the commit of the batch that handled it.
    let deadline = std::time::Instant::now() + 20 * SECOND;
    while !store.timers("cart/2").await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the handled one-shot timer is still stored"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_durable_loses_its_timers_when_put_away() {
    let setup = Setup::new();
    let spec = setup
        .spec("cart", "timekeeper")
        .keyed(Keying::default().idle(Duration::from_millis(20)));
    setup.broker.spawn_keyed(spec).await.unwrap();
    let scheduled = setup
        .broker
        .request("cart/1", b"after:t:1000:hello".to_vec(), 10 * SECOND)
        .await
        .unwrap();
    assert_eq!(scheduled, b"ok");
    // Put away before it is due, and not woken by it.
    let deadline = std::time::Instant::now() + 10 * SECOND;
    while setup.broker.keyed_metrics()[0].passivations == 0 {
        assert!(std::time::Instant::now() < deadline, "never put away");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        setup.broker.keyed_metrics()[0].delivered,
        1,
        "put away before its timer"
    );
    // Well past when it was due.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = setup.broker.keyed_metrics().remove(0);
    assert_eq!(
        (metrics.activations, metrics.delivered),
        (1, 1),
        "its timer ended with it: {metrics:?}"
    );
}
