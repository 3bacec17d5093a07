//! Live upgrade: a running component swapped for a new version between two messages.

use courier_host_broker::{Broker, BrokerError, ComponentSpec};
use courier_host_core::{Engine, EngineConfig};

use crate::common::{SECOND, Setup, load};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_loses_no_message_and_keeps_the_books() {
    let setup = Setup::new();
    setup
        .spawn(setup.spec("pong", "pong").mailbox_capacity(16_384))
        .await;
    setup
        .spawn(setup.spec("ping", "ping").may_send("pong"))
        .await;

    setup.broker.send("ping", b"10000".to_vec()).unwrap();
    // Twice while pong works through the burst; senders never notice.
    for _ in 0..2 {
        let next = load(&setup.engine, "pong");
        let upgraded = setup.broker.upgrade("pong", next).await.unwrap();
        assert_eq!(upgraded.previous, upgraded.version, "the same build again");
        assert!(upgraded.state_bytes.is_some(), "pong keeps state");
    }
    assert!(setup.broker.quiesce(10 * SECOND).await);
    let pong = setup.broker.metrics("pong").unwrap();
    assert_eq!(
        (
            pong.delivered,
            pong.dead_lettered,
            pong.refused,
            pong.restarts
        ),
        (10_000, 0, 0, 0),
        "{pong:?}"
    );
    // Its state (the count and the order check) moved to each new instance.
    let reply = setup
        .broker
        .request("pong", Vec::new(), SECOND)
        .await
        .unwrap();
    assert_eq!(reply[..8], 10_000u64.to_le_bytes(), "the count survived");
    assert_eq!(reply[8..], 0u64.to_le_bytes(), "none out of order");
    let books = setup.broker.accounting();
    assert_eq!(books.sent, books.delivered, "{books:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_component_runs_the_new_version_under_the_same_id() {
    let setup = Setup::new();
    let echo = load(&setup.engine, "echo");
    let counter = load(&setup.engine, "counter");
    assert_ne!(echo.version(), counter.version());
    setup.spawn(ComponentSpec::new("svc", echo.clone())).await;
    let reply = setup.broker.request("svc", b"hi".to_vec(), SECOND).await;
    assert_eq!(reply.unwrap(), b"hi");
    assert_eq!(setup.broker.metrics("svc").unwrap().version, echo.version());

    let upgraded = setup.broker.upgrade("svc", counter.clone()).await.unwrap();
    assert_eq!(
        (upgraded.previous.as_str(), upgraded.version.as_str()),
        (echo.version(), counter.version())
    );
    // A counter now: it answers with how many messages it has counted.
    setup.broker.send("svc", b"one".to_vec()).unwrap();
    assert_eq!(setup.count("svc").await, 1);
    let svc = setup.broker.metrics("svc").unwrap();
    assert_eq!(svc.version, counter.version());
    assert_eq!(svc.delivered, 3, "the metrics carry on across the upgrade");
    // What a restart of it starts from.
    let running = setup.broker.running_component("svc").unwrap();
    assert_eq!(running.version(), counter.version());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_instance_cannot_be_made_leaves_the_old_one_serving() {
    // One slot in the pool: the new instance cannot be made beside the old one.
    let engine = Engine::new(EngineConfig::default().max_instances(1)).unwrap();
    let broker = Broker::new(engine.clone());
    let echo = load(&engine, "echo");
    broker
        .spawn(ComponentSpec::new("echo", echo.clone()))
        .await
        .unwrap();
    let refused = broker
        .upgrade("echo", load(&engine, "counter"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, BrokerError::Upgrade { reason, .. } if reason.contains("cannot be instantiated")),
        "{refused}"
    );
    let reply = broker.request("echo", b"still".to_vec(), SECOND).await;
    assert_eq!(reply.unwrap(), b"still");
    assert_eq!(broker.metrics("echo").unwrap().version, echo.version());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_running_component_is_upgraded() {
    let setup = Setup::new();
    let echo = load(&setup.engine, "echo");
    let missing = setup.broker.upgrade("nobody", echo.clone()).await;
    assert!(matches!(missing, Err(BrokerError::NotFound(_))));
    let handle = setup
        .broker
        .spawn(ComponentSpec::new("echo", echo.clone()))
        .await
        .unwrap();
    handle.stop().await.unwrap();
    let stopped = setup.broker.upgrade("echo", echo).await;
    assert!(stopped.is_err(), "{stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_cannot_take_the_state_leaves_the_old_one_serving_with_it() {
    let setup = Setup::new();
    setup.spawn(setup.spec("pong", "pong")).await;
    for n in 0..3u64 {
        setup.broker.send("pong", n.to_le_bytes().to_vec()).unwrap();
    }
    assert!(setup.broker.quiesce(10 * SECOND).await);
    // counter's state is another shape: pong's does not decode as it.
    let refused = setup
        .broker
        .upgrade("pong", load(&setup.engine, "counter"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, BrokerError::Upgrade { reason, .. } if reason.contains("refused the state") && reason.contains("cannot be read by this version")),
        "{refused}"
    );
    // bad_state traps in load-state.
    let trapped = setup
        .broker
        .upgrade("pong", load(&setup.engine, "bad_state"))
        .await
        .unwrap_err();
    assert!(
        matches!(&trapped, BrokerError::Upgrade { reason, .. } if reason.contains("failed taking the state")),
        "{trapped}"
    );
    let reply = setup
        .broker
        .request("pong", Vec::new(), SECOND)
        .await
        .unwrap();
    assert_eq!(
        reply[..8],
        3u64.to_le_bytes(),
        "the old version, with its state"
    );
    let pong = setup.broker.metrics("pong").unwrap();
    assert_eq!((pong.restarts, pong.dead_lettered), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_trap_starts_from_the_last_saved_state_when_the_spec_asks() {
    use std::time::Duration;

    use courier_host_broker::Supervision;

    let setup = Setup::new();
    setup
        .spawn(
            setup
                .spec("kept", "pong")
                .supervision(Supervision::default().checkpoint(Duration::ZERO)),
        )
        .await;
    setup.spawn(setup.spec("fresh", "pong")).await;
    for id in ["kept", "fresh"] {
        for n in 0..5u64 {
            setup.broker.send(id, n.to_le_bytes().to_vec()).unwrap();
        }
        // pong traps on a number flagged with a 1 byte after it.
        let mut trap = 5u64.to_le_bytes().to_vec();
        trap.push(1);
        setup.broker.send(id, trap).unwrap();
    }
    assert!(setup.broker.quiesce(10 * SECOND).await);
    let count = |reply: Vec<u8>| u64::from_le_bytes(reply[..8].try_into().unwrap());
    for (id, expected) in [("kept", 5), ("fresh", 0)] {
        setup
            .state_becomes(id, |state| {
                *state == courier_host_broker::ComponentState::Running
            })
            .await;
        let metrics = setup.broker.metrics(id).unwrap();
        assert_eq!(metrics.restarts, 1, "{id}: {metrics:?}");
        let reply = setup.broker.request(id, Vec::new(), SECOND).await.unwrap();
        assert_eq!(count(reply), expected, "{id}");
    }
}

/// How many bytes `keeper` says it keeps, after a request carrying `command` (empty: just
/// the length).
async fn kept(setup: &Setup, id: &str, command: &str) -> u64 {
    let reply = setup
        .broker
        .request(id, command.as_bytes().to_vec(), 10 * SECOND)
        .await
        .unwrap_or_else(|err| panic!("{id} `{command}`: {err:?}"));
    u64::from_le_bytes(reply.try_into().unwrap())
}

/// Nothing dead-lettered, no restart charged, the books balanced.
async fn assert_nothing_lost(setup: &Setup, id: &str) {
    setup.assert_accounted().await;
    let metrics = setup.broker.metrics(id).unwrap();
    assert_eq!(
        (metrics.restarts, metrics.dead_lettered, metrics.failed),
        (0, 0, 0),
        "{metrics:?}"
    );
    assert!(
        setup.broker.dead_letters().is_empty(),
        "{:#?}",
        setup.broker.dead_letters()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_whose_save_state_traps_leaves_the_last_saved_state_serving() {
    use std::time::Duration;

    use courier_host_broker::Supervision;

    let setup = Setup::new();
    // Saves once, after its first message, and not again for an hour.
    let hourly = Supervision::default().checkpoint(Duration::from_secs(3600));
    setup
        .spawn(setup.spec("keeper", "keeper").supervision(hourly))
        .await;
    setup.broker.send("keeper", "a").unwrap();
    setup.broker.send("keeper", "b").unwrap();
    assert_eq!(kept(&setup, "keeper", "save:fail").await, 2);

    let refused = setup
        .broker
        .upgrade("keeper", load(&setup.engine, "keeper"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, BrokerError::Upgrade { reason, .. }
            if reason.contains("could not save its state") && reason.contains("last saved state (")),
        "{refused}"
    );
    // No message meets the instance that trapped: the next one reaches a fresh instance
    // holding what was saved ("a"), and "b", never saved, is what the trap lost.
    setup.broker.send("keeper", "c").unwrap();
    assert_eq!(kept(&setup, "keeper", "").await, 2, "\"ac\"");
    assert_nothing_lost(&setup, "keeper").await;

    // The replacement saves well: the next upgrade moves its state.
    let upgraded = setup
        .broker
        .upgrade("keeper", load(&setup.engine, "keeper"))
        .await
        .unwrap();
    assert!(upgraded.state_bytes.is_some(), "{upgraded:?}");
    assert_eq!(kept(&setup, "keeper", "").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_whose_save_state_traps_costs_no_restart_and_keeps_the_last_saved_state() {
    use std::time::Duration;

    use courier_host_broker::Supervision;

    let setup = Setup::new();
    // Saves after every message and request.
    let always = Supervision::default().checkpoint(Duration::ZERO);
    setup
        .spawn(setup.spec("keeper", "keeper").supervision(always))
        .await;
    setup.broker.send("keeper", "ab").unwrap();
    // Answered, then its save traps: the state saved after "ab" is the last one.
    assert_eq!(kept(&setup, "keeper", "save:fail").await, 2);
    setup.broker.send("keeper", "c").unwrap();
    assert_eq!(kept(&setup, "keeper", "").await, 3, "\"abc\"");
    assert_nothing_lost(&setup, "keeper").await;
    assert_eq!(
        setup.broker.state("keeper"),
        Some(courier_host_broker::ComponentState::Running)
    );
}
