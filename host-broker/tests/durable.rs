//! Durable components: accepted means stored, one commit per handled batch, recovery at
//! spawn. Real components, a real store on real files.

use std::time::Duration;

use courier_host_broker::{BrokerError, Exposure, MessagingError};
use courier_host_store::{Entry, Kind};

use crate::common::{SECOND, Setup, durable_setup, load, store_in};

#[tokio::test]
async fn a_durable_component_without_a_store_is_refused_naming_it_and_the_cause() {
    let setup = Setup::new();
    let spec = setup.spec("counter", "counter").durable(true);
    let err = setup.broker.spawn(spec).await.unwrap_err();
    assert!(matches!(err, BrokerError::InvalidSpec { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("`counter`") && text.contains("durable") && text.contains("no store"));
}

#[tokio::test]
async fn a_durable_component_cannot_subscribe_or_be_replicated() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    let setup = durable_setup(store.clone());
    let spec = setup
        .spec("counter", "counter")
        .durable(true)
        .subscribe("ticks");
    let err = setup.broker.spawn(spec).await.unwrap_err();
    assert!(
        err.to_string().contains("publications are not stored"),
        "{err}"
    );
    let spec = setup
        .spec("counter", "counter")
        .durable(true)
        .expose(Exposure::Replicated);
    let err = setup.broker.spawn(spec).await.unwrap_err();
    assert!(
        err.to_string().contains("each replica keeps its own store"),
        "{err}"
    );
}

/// What another host sends to an exposed durable component is answered `Ok` (which its
/// lattice acknowledges) only once stored, and a durable sender's copy of a message the
/// component already holds, by (sender, sequence number), is dropped, across a restart too.
#[tokio::test]
async fn a_message_from_another_host_is_stored_before_its_ok_and_a_durable_senders_copy_is_dropped()
{
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    {
        let setup = durable_setup(store.clone());
        setup
            .spawn(
                setup
                    .spec("counter", "counter")
                    .durable(true)
                    .expose(Exposure::Lattice),
            )
            .await;
        let refused = setup
            .broker
            .accept_message("ping".into(), "counter", &b"+1"[..], None)
            .unwrap_err();
        assert!(
            matches!(&refused, MessagingError::TargetCrashed(text) if text.starts_with("storage:")),
            "a way in that cannot wait for the store is refused: {refused:?}"
        );
        for seq in [1, 2, 2, 1, 3] {
            setup
                .broker
                .accept_message_stored("ping".into(), "counter", &b"+1"[..], Some(seq), None)
                .await
                .unwrap();
        }
        // A sender that is not durable has no number: each of its messages counts.
        for _ in 0..2 {
            setup
                .broker
                .accept_message_stored("host".into(), "counter", &b"+1"[..], None, None)
                .await
                .unwrap();
        }
        assert_eq!(setup.count("counter").await, 5);
        let accounting = setup.broker.accounting();
        assert_eq!(accounting.arrived, 8, "{accounting:?}");
        setup.broker.shutdown(SECOND).await;
    }
    // The marks are the store's: a copy that comes after a restart is dropped too.
    let setup = durable_setup(store.clone());
    setup
        .spawn(
            setup
                .spec("counter", "counter")
                .durable(true)
                .expose(Exposure::Lattice),
        )
        .await;
    for seq in [3, 2, 4] {
        setup
            .broker
            .accept_message_stored("ping".into(), "counter", &b"+1"[..], Some(seq), None)
            .await
            .unwrap();
    }
    assert_eq!(setup.count("counter").await, 6);
}

#[tokio::test]
async fn components_that_are_not_durable_never_touch_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    let setup = durable_setup(store.clone());
    setup.spawn(setup.spec("counter", "counter")).await;
    for _ in 0..10 {
        setup.broker.send("counter", &b"+1"[..]).unwrap();
    }
    assert_eq!(setup.count("counter").await, 10);
    let stats = store.stats();
    assert_eq!((stats.commits, stats.writes), (0, 0), "{stats:?}");
    assert!(store.actors().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_send_that_cannot_wait_for_the_store_is_refused_pointing_to_send_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    let setup = durable_setup(store.clone());
    setup
        .spawn(setup.spec("counter", "counter").durable(true))
        .await;
    let refused = setup.broker.send("counter", &b"+1"[..]).unwrap_err();
    match refused.error() {
        MessagingError::TargetCrashed(text) => {
            assert!(
                text.starts_with("storage:") && text.contains("send_durable"),
                "{text}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(refused.payload(), b"+1", "the payload comes back");
    setup.assert_accounted().await;
}

#[tokio::test]
async fn accepted_messages_and_committed_state_survive_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    let accepted = {
        let setup = durable_setup(store.clone());
        setup
            .spawn(setup.spec("counter", "counter").durable(true))
            .await;
        // Many at once, so that they share commits, and a shutdown that gives no time at
        // all, so that some are still unhandled when the broker goes.
        let sends = (0..300).map(|_| setup.broker.send_durable("counter", &b"+1"[..]));
        let answers = futures_join_all(sends).await;
        let accepted = answers.iter().filter(|a| a.is_ok()).count() as u64;
        assert!(accepted > 0, "{:?}", answers.iter().find(|a| a.is_err()));
        setup.broker.shutdown(Duration::ZERO).await;
        accepted
    };
    assert!(store.stats().commits > 0);

    let setup = durable_setup(store.clone());
    setup
        .spawn(setup.spec("counter", "counter").durable(true))
        .await;
    assert!(setup.broker.quiesce(10 * SECOND).await);
    assert_eq!(
        setup.count("counter").await,
        accepted,
        "every accepted message counted once: the committed state plus the stored messages \
         it did not include"
    );
    let left = store.load("counter").await.unwrap();
    assert!(
        left.mailbox.is_empty(),
        "all consumed: {:?}",
        left.mailbox.len()
    );
}

#[tokio::test]
async fn a_handled_batch_is_one_commit_of_its_messages_and_the_state_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    let setup = durable_setup(store.clone());
    setup
        .spawn(setup.spec("counter", "counter").durable(true))
        .await;
    let sends = (0..200).map(|_| setup.broker.send_durable("counter", &b"+1"[..]));
    assert!(futures_join_all(sends).await.iter().all(Result::is_ok));
    assert!(setup.broker.quiesce(10 * SECOND).await);
    let durable = setup.broker.metrics("counter").unwrap().durable.unwrap();
    assert!(
        durable.commits >= 1 && durable.commits < 200 && durable.failed_commits == 0,
        "messages stored together are handled and committed together: {durable:?}"
    );
    // Delivered is counted per message, the commit comes when the batch is done: soon after.
    let deadline = std::time::Instant::now() + 10 * SECOND;
    while store.stats().mailbox_entries > 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", store.stats());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // What a crash now would find: every message consumed, and the count in the state.
    let stored = store.load("counter").await.unwrap();
    assert!(stored.mailbox.is_empty());
    assert!(stored.state.is_some());
    let stats = setup.broker.store_stats().unwrap();
    assert_eq!(stats.mailbox_entries, 0, "{stats:?}");
}

#[tokio::test]
async fn stored_messages_are_handled_at_spawn_in_their_order_before_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    {
        let setup = durable_setup(store.clone());
        setup
            .spawn(setup.spec("keeper", "keeper").durable(true))
            .await;
        for part in ["a", "b", "c"] {
            setup.broker.send_durable("keeper", part).await.unwrap();
        }
        assert!(setup.broker.quiesce(10 * SECOND).await);
        setup.broker.shutdown(SECOND).await;
    }
    // Accepted by a run that then died before its actor took them.
    let entries = ["d", "e"]
        .map(|part| Entry::new("keeper", "host", Kind::Message, part.as_bytes().to_vec()));
    store.append(entries.to_vec()).await.unwrap();

    let setup = durable_setup(store.clone());
    setup
        .spawn(setup.spec("keeper", "keeper").durable(true))
        .await;
    setup.broker.send_durable("keeper", "f").await.unwrap();
    assert!(setup.broker.quiesce(10 * SECOND).await);
    let reply = setup
        .broker
        .request("keeper", Vec::new(), 10 * SECOND)
        .await
        .unwrap();
    assert_eq!(u64::from_le_bytes(reply.try_into().unwrap()), 6);
    let kept = store.load("keeper").await.unwrap();
    let state = kept.state.expect("a committed state");
    assert!(
        state.windows(6).any(|w| w == b"abcdef"),
        "the state holds every part in order: {state:?}"
    );
    assert!(kept.mailbox.is_empty());
}

#[tokio::test]
async fn a_guests_send_to_a_durable_component_is_stored_before_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    let setup = durable_setup(store.clone());
    setup.spawn(setup.spec("pong", "pong").durable(true)).await;
    setup
        .spawn(setup.spec("ping", "ping").may_send("pong"))
        .await;
    setup.broker.send("ping", "50").unwrap();
    assert!(setup.broker.quiesce(30 * SECOND).await);
    let reply = setup
        .broker
        .request("pong", Vec::new(), 10 * SECOND)
        .await
        .unwrap();
    assert_eq!(&reply[..8], &50u64.to_le_bytes(), "all counted");
    assert_eq!(&reply[8..], &0u64.to_le_bytes(), "in order");
    assert!(store.stats().writes >= 50, "{:?}", store.stats());
    setup.assert_accounted().await;
}

#[tokio::test]
async fn a_state_the_component_cannot_load_refuses_the_spawn() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    let mut batch = courier_host_store::Batch::new("counter");
    batch.state = Some(bytes::Bytes::from_static(b"not a counter's state"));
    store.commit(batch).await.unwrap();
    let setup = durable_setup(store.clone());
    let err = setup
        .broker
        .spawn(
            courier_host_broker::ComponentSpec::new("counter", load(&setup.engine, "counter"))
                .durable(true),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::Recovery { .. }), "{err:?}");
    assert!(err.to_string().contains("`counter`"), "{err}");
}

/// Await every future, concurrently, on this task.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for future in futures {
        set.push(Box::pin(future));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in set.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}
