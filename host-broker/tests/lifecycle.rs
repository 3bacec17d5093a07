//! How an actor's life ends, whatever happens meanwhile: restarts with a full pool, shutdown
//! against stuck guests and restart backoffs, publications to components that have ended,
//! and a host that panics.

use std::time::{Duration, Instant};

use courier_host_broker::{
    Broker, ComponentSpec, ComponentState, MessagingError, RestartPolicy, Supervision,
};
use courier_host_core::wasmtime::StoreContextMut;
use courier_host_core::{Engine, EngineConfig, HostState};
use courier_test_support::guest_bytes;

use crate::common::{SECOND, Setup, load};

const MS: Duration = Duration::from_millis(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reuses_the_slot_of_the_instance_it_replaces_when_the_pool_is_full() {
    // One instance slot: the trapped instance must give it up before its replacement
    // can be made.
    let engine = Engine::new(EngineConfig::default().max_instances(1)).unwrap();
    let broker = Broker::new(engine.clone());
    broker
        .spawn(ComponentSpec::new("bad", load(&engine, "hostile")))
        .await
        .unwrap();
    let crashed = broker.request("bad", b"panic".to_vec(), 5 * SECOND).await;
    assert!(
        matches!(crashed, Err(MessagingError::TargetCrashed(_))),
        "{crashed:?}"
    );
    let count = broker
        .request("bad", b"count".to_vec(), 5 * SECOND)
        .await
        .expect("the replacement answers");
    assert_eq!(count, b"1", "a fresh instance has run one command");
    assert_eq!(broker.metrics("bad").unwrap().restarts, 1);
}

/// An actor nobody sent anything has no task: its instance waits at the hand-off point,
/// and whoever ends the actor (a shutdown, or dropping the broker) must give its pool slot
/// back, or a full pool could never be filled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_that_never_ran_give_back_their_pool_slots() {
    const POOL: u32 = 3;
    let engine = Engine::new(EngineConfig::default().max_instances(POOL)).unwrap();
    let echo = load(&engine, "echo");
    let fill = |broker: &Broker| {
        let broker = broker.clone();
        let echo = echo.clone();
        async move {
            for n in 0..POOL {
                let id = format!("echo-{n}");
                let spawned = broker
                    .spawn(ComponentSpec::new(id.as_str(), echo.clone()))
                    .await;
                spawned.unwrap_or_else(|err| panic!("spawning {id}: {err}"));
            }
        }
    };

    // Dropped with the broker.
    let broker = Broker::new(engine.clone());
    fill(&broker).await;
    let full = broker
        .spawn(ComponentSpec::new("one-more", echo.clone()))
        .await;
    assert!(full.is_err(), "the pool holds {POOL}");
    drop(broker);

    // Shut down, after a request that ran on the caller's task started nothing.
    let broker = Broker::new(engine.clone());
    fill(&broker).await;
    let reply = broker.request("echo-0", b"hi".to_vec(), 5 * SECOND).await;
    assert_eq!(reply.unwrap(), b"hi");
    let report = broker.shutdown(5 * SECOND).await;
    assert_eq!(report.stopped.len(), POOL as usize);

    // Every slot is free again.
    fill(&Broker::new(engine.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_to_a_subscriber_that_has_ended_is_dead_lettered() {
    let setup = Setup::new();
    let spec = setup
        .spec("listener", "hostile")
        .subscribe("news")
        .supervision(Supervision::new(RestartPolicy::Temporary));
    setup.spawn(spec).await;
    setup.broker.send("listener", b"panic".to_vec()).unwrap();
    setup
        .state_becomes("listener", |state| {
            matches!(state, ComponentState::Failed(_))
        })
        .await;
    let before = setup.broker.accounting();

    // The publisher learns only a count, so a subscriber it missed must be on record.
    assert_eq!(setup.broker.publish("news", b"extra".to_vec()).unwrap(), 0);
    let after = setup.broker.accounting();
    assert_eq!(
        after.refused, before.refused,
        "the publisher got no refusal"
    );
    assert_eq!(after.dead_lettered, before.dead_lettered + 1);
    let letter = setup.broker.dead_letters().pop().unwrap();
    assert_eq!(letter.payload, b"extra");
    assert!(
        letter.reason.starts_with("publication on `news`: "),
        "{}",
        letter.reason
    );
    setup.assert_accounted().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_in_time_with_a_guest_stuck_in_a_host_call_and_one_in_restart_backoff() {
    let setup = Setup::new();
    // Sleeps in a host call far longer than the drain allows, under a deadline that would
    // let it.
    let sleeper = setup.spec("sleeper", "hostile").deadline(60 * SECOND);
    // Trapped, and waiting a minute before its restart.
    let backoff = Supervision::new(RestartPolicy::Permanent).backoff(60 * SECOND, 60 * SECOND);
    let restarting = setup.spec("restarting", "hostile").supervision(backoff);
    setup.spawn(sleeper).await;
    setup.spawn(restarting).await;

    setup
        .broker
        .send("sleeper", b"sleep:30000".to_vec())
        .unwrap();
    setup.broker.send("restarting", b"panic".to_vec()).unwrap();
    setup
        .state_becomes("restarting", |state| *state == ComponentState::Restarting)
        .await;
    setup.mailbox_drains("sleeper").await;
    for _ in 0..3 {
        setup.broker.send("sleeper", b"count".to_vec()).unwrap();
        setup.broker.send("restarting", b"count".to_vec()).unwrap();
    }

    let drain = 200 * MS;
    let started = Instant::now();
    let report = setup.broker.shutdown(drain).await;
    let took = started.elapsed();
    assert!(
        took < drain + 5 * SECOND,
        "shutdown took {took:?} with a drain of {drain:?}"
    );
    // The sleeping message and everything queued behind both: 1 + 3 + 3.
    assert_eq!(report.undelivered.len(), 7, "{:#?}", report.undelivered);
    let books = setup.broker.accounting();
    assert_eq!(books.in_flight(), 0, "{books:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_in_time_with_a_save_state_that_sleeps_in_a_checkpoint_or_an_upgrade() {
    let setup = Setup::new();
    // Under deadlines that would let them sleep: only the drain can cut them short.
    let always = Supervision::default().checkpoint(Duration::ZERO);
    setup
        .spawn(
            setup
                .spec("saver", "keeper")
                .deadline(60 * SECOND)
                .supervision(always),
        )
        .await;
    setup
        .spawn(setup.spec("upgrading", "keeper").deadline(60 * SECOND))
        .await;

    // saver answers, then sleeps in the checkpoint's save-state (on the actor's task once
    // this request stops waiting for it).
    let answer = setup
        .broker
        .request("saver", b"save:sleep:30000".to_vec(), 200 * MS)
        .await;
    assert!(answer.is_ok(), "{answer:?}");
    // upgrading sleeps in save-state when its upgrade asks for its state.
    let answer = setup
        .broker
        .request("upgrading", b"save:sleep:30000".to_vec(), SECOND)
        .await;
    assert!(answer.is_ok(), "{answer:?}");
    let broker = setup.broker.clone();
    let next = load(&setup.engine, "keeper");
    let upgrade = tokio::spawn(async move { broker.upgrade("upgrading", next).await });
    tokio::time::sleep(100 * MS).await;
    for _ in 0..3 {
        setup.broker.send("saver", "kept").unwrap();
        setup.broker.send("upgrading", "kept").unwrap();
    }

    let drain = 200 * MS;
    let started = Instant::now();
    let report = setup.broker.shutdown(drain).await;
    let took = started.elapsed();
    // Far under the 30 s the handlers sleep, with room for a loaded machine: what this
    // checks is that the drain cut them short, not how fast a busy box unwinds.
    assert!(
        took < drain + 10 * SECOND,
        "shutdown took {took:?} with a drain of {drain:?}"
    );
    let upgraded = upgrade.await.unwrap();
    assert!(
        upgraded
            .as_ref()
            .is_err_and(|err| err.to_string().contains("shutdown deadline")),
        "{upgraded:?}"
    );
    // What was queued behind both.
    assert_eq!(report.undelivered.len(), 6, "{:#?}", report.undelivered);
    let books = setup.broker.accounting();
    assert_eq!(books.in_flight(), 0, "{books:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_that_races_a_shutdown_never_leaves_a_running_component() {
    let engine = crate::common::engine();
    let echo = load(&engine, "echo");
    for _ in 0..20 {
        let broker = Broker::new(engine.clone());
        let (spawned, _) = tokio::join!(
            broker.spawn(ComponentSpec::new("echo", echo.clone())),
            broker.shutdown(SECOND)
        );
        if let Ok(handle) = spawned {
            assert_ne!(
                handle.state(),
                ComponentState::Running,
                "an actor started after the shutdown that should have stopped it"
            );
        }
    }
}

/// An engine whose `courier:alien/rocket.launch` panics: a bug in the host, as seen from the
/// actor that made the call.
fn engine_with_a_panicking_host() -> Engine {
    Engine::builder(EngineConfig::default().max_instances(4))
        .unwrap()
        .link(|linker| {
            linker.instance("courier:alien/rocket@0.1.0")?.func_wrap(
                "launch",
                |_: StoreContextMut<'_, HostState>,
                 (): ()|
                 -> courier_host_core::wasmtime::Result<()> {
                    panic!("the launch pad is on fire")
                },
            )
        })
        .unwrap()
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_whose_host_panics_is_failed_and_its_messages_are_dead_lettered() {
    let engine = engine_with_a_panicking_host();
    let broker = Broker::new(engine.clone());
    let alien = engine
        .load_component("alien", &guest_bytes("alien_import"))
        .unwrap();
    let handle = broker
        .spawn(ComponentSpec::new("alien", alien).mailbox_capacity(16))
        .await
        .unwrap();
    for i in 0..4u8 {
        broker.send("alien", vec![i]).unwrap();
    }
    let crashed = broker.request("alien", b"ask".to_vec(), 5 * SECOND).await;
    assert!(
        matches!(&crashed, Err(MessagingError::TargetCrashed(reason)) if reason.contains("the launch pad is on fire")),
        "{crashed:?}"
    );
    let ComponentState::Failed(reason) = handle.state() else {
        panic!("expected a failed component, got {:?}", handle.state());
    };
    assert!(reason.contains("the host panicked"), "{reason}");
    assert!(
        broker.quiesce(5 * SECOND).await,
        "nothing may stay in flight"
    );
    let books = broker.accounting();
    assert_eq!(books.sent, 5);
    assert_eq!(books.dead_lettered, 5, "{books:?}");
    assert!(matches!(
        broker.request("alien", Vec::new(), SECOND).await,
        Err(MessagingError::TargetCrashed(_))
    ));
}
