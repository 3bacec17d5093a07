//! The direct hand-off: a request to an idle component runs on the requester's task. These
//! are the invariants a hand-off could break if it were wrong: per-sender order, request
//! cycles, supervision of a trap, and a requester that stops waiting or goes away while the
//! handler it borrowed is still running.

use std::time::Duration;

use courier_host_broker::{ComponentState, MessagingError, RestartPolicy, Supervision};

use crate::common::{SECOND, Setup};

/// How many requests `id` answered on its requesters' tasks.
fn handed_off(setup: &Setup, id: &str) -> u64 {
    setup.broker.metrics(id).unwrap().handed_off
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_never_overtakes_messages_its_sender_queued_before_it() {
    let setup = Setup::new();
    setup.spawn(setup.spec("counter", "counter")).await;

    let mut sent = 0;
    for round in 0..300u64 {
        // Idle for a moment, so the first request of the round finds the counter idle and
        // is handed off; the messages that follow are queued, and the request after them
        // must not run before them, however fast it comes.
        tokio::time::sleep(Duration::from_micros(200)).await;
        assert_eq!(setup.count("counter").await, sent, "round {round}");
        for _ in 0..(round % 7 + 1) {
            setup.broker.send("counter", b"+".to_vec()).unwrap();
            sent += 1;
        }
        assert_eq!(
            setup.count("counter").await,
            sent,
            "round {round}: a request overtook messages queued before it"
        );
    }
    assert!(
        handed_off(&setup, "counter") > 0,
        "some requests found the counter idle"
    );
    setup.assert_accounted().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guests_request_never_overtakes_the_messages_it_sent_before() {
    let setup = Setup::new();
    setup
        .spawn(setup.spec("counter", "counter").mailbox_capacity(1_000))
        .await;
    setup
        .spawn(
            setup
                .spec("sender", "hostile")
                .may_send("counter")
                .may_request("counter"),
        )
        .await;

    for round in 1..=50u64 {
        // Each command is one handler of `sender`'s: it queues 20 messages to the counter,
        // then (the next command) asks for the count from the same sender.
        let flooded = setup.probe("sender", "flood:counter:20").await;
        assert!(flooded.starts_with("sent=20 "), "{flooded}");
        let reply = setup
            .broker
            .request("sender", b"request:counter".to_vec(), 10 * SECOND)
            .await
            .unwrap();
        let count = u64::from_le_bytes(reply.try_into().expect("a count"));
        assert_eq!(count, round * 20, "round {round}");
    }
    assert!(handed_off(&setup, "sender") > 0);
    setup.assert_accounted().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cycle_through_handed_off_calls_ends_in_a_timeout() {
    let setup = Setup::new();
    setup
        .spawn(setup.spec("alice", "hostile").may_request("bob"))
        .await;
    setup
        .spawn(setup.spec("bob", "hostile").may_request("alice"))
        .await;

    // Both idle: the host runs alice, alice runs bob, and bob's request finds alice lent
    // out, so it waits in alice's mailbox until bob's one-second timeout ends it.
    let answer = setup.probe("alice", "request:bob:request:alice:self").await;
    assert_eq!(answer, "err: Timeout");
    assert_eq!(handed_off(&setup, "alice"), 1, "the host's request");
    assert_eq!(handed_off(&setup, "bob"), 1, "alice's request");
    setup.assert_accounted().await;
    let letters = setup.broker.dead_letters();
    assert_eq!(letters.len(), 1, "bob's request expired: {letters:?}");
    assert_eq!(&*letters[0].sender, "bob");
    assert_eq!(&*letters[0].target, "alice");

    // Both are whole afterwards.
    assert_eq!(setup.probe("alice", "request:bob:self").await, "bob");
    assert_eq!(setup.probe("bob", "request:alice:self").await, "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_in_a_handed_off_handler_is_supervised_like_any_other() {
    let setup = Setup::new();
    setup.spawn(setup.spec("probe", "probe")).await;
    setup.spawn(setup.spec("hostile", "hostile")).await;

    for (id, command) in [("probe", "trap"), ("hostile", "panic")] {
        let answer = setup
            .broker
            .request(id, command.as_bytes().to_vec(), 10 * SECOND)
            .await;
        assert!(
            matches!(answer, Err(MessagingError::TargetCrashed(_))),
            "{id}: {answer:?}"
        );
        assert_eq!(handed_off(&setup, id), 1, "{id} was idle");
        // The actor replaces the instance; the next request reaches the new one.
        setup
            .state_becomes(id, |s| *s == ComponentState::Running)
            .await;
        let again = setup.probe(id, "self").await;
        assert_eq!(again, id);
        let metrics = setup.broker.metrics(id).unwrap();
        assert_eq!(metrics.restarts, 1, "{id}");
        assert_eq!(metrics.dead_lettered, 1, "{id}");
    }
    setup.assert_accounted().await;
    let letters = setup.broker.dead_letters();
    assert_eq!(letters.len(), 2, "{letters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_in_a_handed_off_handler_fails_a_component_that_is_not_restarted() {
    let setup = Setup::new();
    setup
        .spawn(
            setup
                .spec("once", "probe")
                .supervision(Supervision::new(RestartPolicy::Temporary)),
        )
        .await;
    let answer = setup.broker.request("once", b"trap".to_vec(), SECOND).await;
    assert!(matches!(answer, Err(MessagingError::TargetCrashed(_))));
    let state = setup
        .state_becomes("once", |s| matches!(s, ComponentState::Failed(_)))
        .await;
    assert!(matches!(state, ComponentState::Failed(_)));
    let after = setup.broker.request("once", b"self".to_vec(), SECOND).await;
    assert!(
        matches!(after, Err(MessagingError::TargetCrashed(_))),
        "{after:?}"
    );
    setup.assert_accounted().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_that_stops_waiting_leaves_the_handler_to_the_actor() {
    let setup = Setup::new();
    setup.spawn(setup.spec("sleeper", "hostile")).await;

    // The handler sleeps in a host call longer than the requester waits: the requester
    // hears `timeout` when its time is up, and the actor finishes the call.
    let answer = setup
        .broker
        .request("sleeper", b"sleep:300".to_vec(), Duration::from_millis(50))
        .await;
    assert!(matches!(answer, Err(MessagingError::Timeout)), "{answer:?}");
    assert_eq!(handed_off(&setup, "sleeper"), 1);
    // Queued behind the sleep, so answered after it: the instance ran both.
    assert_eq!(setup.probe("sleeper", "count").await, "2");
    let metrics = setup.broker.metrics("sleeper").unwrap();
    assert_eq!((metrics.delivered, metrics.dead_lettered), (2, 0));
    setup.assert_accounted().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_dropped_during_a_handed_off_call_gives_the_call_back() {
    let setup = Setup::new();
    setup.spawn(setup.spec("sleeper", "hostile")).await;

    let broker = setup.broker.clone();
    let requester = tokio::spawn(async move {
        broker
            .request("sleeper", b"sleep:200".to_vec(), 10 * SECOND)
            .await
    });
    // Until the requester has borrowed the sleeper, then a little into the sleep.
    while handed_off(&setup, "sleeper") == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    requester.abort();
    assert!(requester.await.unwrap_err().is_cancelled());

    assert_eq!(setup.probe("sleeper", "count").await, "2");
    let metrics = setup.broker.metrics("sleeper").unwrap();
    assert_eq!((metrics.delivered, metrics.restarts), (2, 0));
    setup.assert_accounted().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_requests_to_idle_components_runs_on_the_requesters_task() {
    let setup = Setup::new();
    const LINKS: usize = 8;
    for i in 0..LINKS {
        let spec = setup.spec(&format!("link{i}"), "probe");
        let spec = if i + 1 < LINKS {
            spec.may_request(&format!("link{}", i + 1))
        } else {
            spec
        };
        setup.spawn(spec).await;
    }
    // `ask:link1:ask:link2:...:self`: each link asks the next, the last answers its id.
    let command = (1..LINKS).fold(String::from("self"), |inner, i| {
        format!("ask:link{}:{inner}", LINKS - i)
    });
    assert_eq!(
        setup.probe("link0", &command).await,
        format!("link{}", LINKS - 1)
    );
    for i in 0..LINKS {
        assert_eq!(handed_off(&setup, &format!("link{i}")), 1, "link{i}");
    }
    setup.assert_accounted().await;
    assert_eq!(setup.broker.accounting().delivered, LINKS as u64);
}
