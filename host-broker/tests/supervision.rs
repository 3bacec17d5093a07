//! Supervision: traps dead-letter their message, instances are replaced, nothing is lost.

use std::time::Duration;

use crate::common::{SECOND, Setup};
use courier_host_broker::{ComponentState, MessagingError, RestartPolicy, SendError, Supervision};

const MS: Duration = Duration::from_millis(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_message_is_dead_lettered_and_the_next_is_handled_by_a_fresh_instance() {
    let setup = Setup::new();
    setup
        .spawn(setup.spec("worker", "hostile").deadline(100 * MS))
        .await;

    assert_eq!(setup.probe("worker", "count").await, "1");
    assert_eq!(setup.probe("worker", "count").await, "2");

    let err = setup
        .broker
        .request("worker", b"spin".to_vec(), 10 * SECOND)
        .await
        .unwrap_err();
    let MessagingError::TargetCrashed(reason) = &err else {
        panic!("expected target-crashed, got {err:?}");
    };
    assert!(reason.contains("deadline of 100 ms"), "{reason}");

    // A fresh instance: its count starts again.
    assert_eq!(setup.probe("worker", "count").await, "1");
    let metrics = setup.broker.metrics("worker").unwrap();
    assert_eq!(metrics.restarts, 1);
    assert_eq!(metrics.state, ComponentState::Running);

    let letters = setup.broker.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].payload, b"spin");
    assert!(
        letters[0].reason.contains("deadline of 100 ms"),
        "{}",
        letters[0].reason
    );
    setup.assert_accounted().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_behind_a_trap_are_handled_after_the_restart() {
    let setup = Setup::new();
    setup
        .spawn(setup.spec("worker", "hostile").deadline(100 * MS))
        .await;
    setup.broker.send("worker", b"spin".to_vec()).unwrap();
    let answer = setup.probe("worker", "count").await;
    assert_eq!(
        answer, "1",
        "the request queued behind the looping message reached a fresh instance"
    );
    setup.assert_accounted().await;
    assert_eq!(setup.broker.accounting().dead_lettered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_the_restart_intensity_fails_the_component() {
    let setup = Setup::new();
    let supervision = Supervision::default()
        .intensity(2, Duration::from_secs(60))
        .backoff(MS, 10 * MS);
    setup
        .spawn(setup.spec("panicker", "panicker").supervision(supervision))
        .await;

    for i in 0..5u8 {
        setup.broker.send("panicker", vec![b'0' + i]).unwrap();
    }
    setup.assert_accounted().await;

    let metrics = setup.broker.metrics("panicker").unwrap();
    assert_eq!(metrics.restarts, 2);
    let ComponentState::Failed(reason) = &metrics.state else {
        panic!("expected failed, got {:?}", metrics.state);
    };
    assert!(reason.contains("restart intensity exceeded"), "{reason}");
    // Three traps, then two messages left in the mailbox: all five are on record.
    let letters = setup.broker.dead_letters();
    assert_eq!(letters.len(), 5);
    assert!(
        letters[0]
            .reason
            .contains("panicked: \"panicker refuses: 0\""),
        "{}",
        letters[0].reason
    );
    assert!(
        letters[4].reason.starts_with("component failed"),
        "{}",
        letters[4].reason
    );

    let err = setup.broker.send("panicker", vec![]).unwrap_err();
    assert!(
        matches!(err.error(), MessagingError::TargetCrashed(_)),
        "{err:?}"
    );
    setup.assert_accounted().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_queued_behind_a_failure_is_dead_lettered_as_failed() {
    // More messages than an actor takes from its mailbox at once, so when the component
    // fails some are still in the channel and some already taken out: all get one reason.
    // The first message holds the actor in a host call while the rest are queued.
    const BEHIND: usize = 150;
    let setup = Setup::new();
    let spec = setup
        .spec("bad", "hostile")
        .mailbox_capacity(BEHIND + 2)
        .supervision(Supervision::new(RestartPolicy::Temporary));
    setup.spawn(spec).await;
    setup.broker.send("bad", b"sleep:500".to_vec()).unwrap();
    setup.broker.send("bad", b"panic".to_vec()).unwrap();
    for _ in 0..BEHIND {
        setup.broker.send("bad", b"count".to_vec()).unwrap();
    }
    setup.assert_accounted().await;

    let letters = setup.broker.dead_letters();
    assert_eq!(letters.len(), 1 + BEHIND);
    assert!(
        letters[0].reason.contains("panicked"),
        "{}",
        letters[0].reason
    );
    for letter in &letters[1..] {
        assert!(
            letter
                .reason
                .starts_with("component failed: not restarted after: component `bad` panicked"),
            "{}",
            letter.reason
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_component_is_not_restarted() {
    let setup = Setup::new();
    let spec = setup
        .spec("panicker", "panicker")
        .supervision(Supervision::new(RestartPolicy::Temporary));
    setup.spawn(spec).await;
    setup.broker.send("panicker", b"once".to_vec()).unwrap();
    setup.assert_accounted().await;
    // The trapped message is on record a moment before the actor has closed its mailbox.
    setup
        .state_becomes("panicker", |state| {
            matches!(state, ComponentState::Failed(_))
        })
        .await;
    assert_eq!(setup.broker.metrics("panicker").unwrap().restarts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_exit_restarts_a_permanent_component_but_stops_a_transient_one() {
    let setup = Setup::new();
    setup.spawn(setup.spec("permanent", "hostile")).await;
    let transient = Supervision::new(RestartPolicy::Transient);
    setup
        .spawn(setup.spec("transient", "hostile").supervision(transient))
        .await;
    setup
        .spawn(setup.spec("crashing", "hostile").supervision(transient))
        .await;

    for id in ["permanent", "transient", "crashing"] {
        let command = if id == "crashing" { "exit:3" } else { "exit:0" };
        let err = setup
            .broker
            .request(id, command.as_bytes().to_vec(), SECOND)
            .await;
        assert!(
            matches!(err, Err(MessagingError::TargetCrashed(_))),
            "{id}: {err:?}"
        );
    }
    setup.assert_accounted().await;
    // A fresh instance answers (a request waits in the mailbox while the restart runs).
    assert_eq!(setup.probe("permanent", "count").await, "1");
    assert_eq!(setup.probe("crashing", "count").await, "1");
    assert_eq!(
        setup.broker.state("permanent"),
        Some(ComponentState::Running)
    );
    assert!(matches!(
        setup.broker.state("transient"),
        Some(ComponentState::Stopped(_))
    ));
    assert_eq!(
        setup.broker.state("crashing"),
        Some(ComponentState::Running)
    );
    assert_eq!(setup.broker.metrics("crashing").unwrap().restarts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_mailboxes() {
    let setup = Setup::new();
    setup.spawn(setup.spec("counter", "counter")).await;
    for _ in 0..500 {
        setup.broker.send("counter", b"tick".to_vec()).unwrap();
    }
    let report = setup.broker.shutdown(10 * SECOND).await;
    assert_eq!(report.stopped.len(), 1);
    assert!(report.undelivered.is_empty(), "{:?}", report.undelivered);
    let books = setup.broker.accounting();
    assert_eq!(books.delivered, 500);
    assert!(matches!(
        setup
            .broker
            .send("counter", vec![])
            .map_err(SendError::into_error),
        Err(MessagingError::ShuttingDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_what_it_could_not_deliver_by_its_deadline() {
    let setup = Setup::new();
    setup
        .spawn(setup.spec("looper", "looper").deadline(300 * MS))
        .await;
    for i in 0..4u8 {
        setup.broker.send("looper", vec![i]).unwrap();
    }
    let report = setup.broker.shutdown(50 * MS).await;
    // The first message was being handled (and trapped at its deadline); the rest waited
    // past the shutdown deadline.
    assert!(report.undelivered.len() >= 3, "{:?}", report.undelivered);
    assert!(
        report
            .undelivered
            .iter()
            .any(|letter| letter.reason.contains("shutdown deadline")),
        "{:?}",
        report.undelivered
    );
    let books = setup.broker.accounting();
    assert_eq!(
        books.delivered + books.refused + books.dead_lettered,
        books.sent,
        "{books:?}"
    );
}
