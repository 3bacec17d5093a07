//! A durable component's outbox: what its handlers send leaves after the commit that records
//! it, is sent again after a crash, and is handled once by a durable target. Real
//! components, a real store, and faults made by a store that refuses some writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use courier_host_broker::{MAX_OUTBOX_MESSAGES, Supervision};
use courier_host_store::{
    Appended, Batch, Committed, DeadLetter, DeadLetters, Entry, Recovered, Store, StoreError,
    StoreFuture, StoreStats, Timer,
};

use crate::common::{SECOND, Setup, crashed_host, durable_setup, store_in};

/// A store that refuses some writes while told to, and passes everything else to a real
/// one: the fault is the test's input.
struct Faulty {
    inner: Arc<dyn Store>,
    /// Refuse the commits of this actor's batches that record sends.
    refuse_sends_of: Option<&'static str>,
    /// Refuse commits that mark outbox entries delivered.
    refuse_delivered_marks: bool,
    /// Refuse appends that come from an outbox (they carry a sequence number).
    refuse_outbox_appends: bool,
    /// Whether the refusals above are on.
    on: AtomicBool,
}

impl Faulty {
    fn new(inner: &Arc<dyn Store>) -> Faulty {
        Faulty {
            inner: inner.clone(),
            refuse_sends_of: None,
            refuse_delivered_marks: false,
            refuse_outbox_appends: false,
            on: AtomicBool::new(true),
        }
    }

    fn refused<T: Send + 'static>() -> StoreFuture<T> {
        Box::pin(async {
            Err(StoreError::Io {
                path: "faulty".into(),
                doing: "a write the test refuses",
                source: Arc::new(std::io::Error::other("refused by the test")),
            })
        })
    }
}

impl Store for Faulty {
    fn append(&self, entries: Vec<Entry>) -> StoreFuture<Vec<Appended>> {
        if self.on.load(Ordering::SeqCst)
            && self.refuse_outbox_appends
            && entries.iter().any(|e| e.seq.is_some())
        {
            return Faulty::refused();
        }
        self.inner.append(entries)
    }
    fn commit(&self, batch: Batch) -> StoreFuture<Committed> {
        let on = self.on.load(Ordering::SeqCst);
        if on && self.refuse_sends_of == Some(batch.actor.as_str()) && !batch.produced.is_empty() {
            return Faulty::refused();
        }
        if on && self.refuse_delivered_marks && !batch.delivered.is_empty() {
            return Faulty::refused();
        }
        self.inner.commit(batch)
    }
    fn forget(&self, actor: &str) -> StoreFuture<()> {
        self.inner.forget(actor)
    }
    fn actors(&self) -> StoreFuture<Vec<String>> {
        self.inner.actors()
    }
    fn load(&self, actor: &str) -> StoreFuture<Recovered> {
        self.inner.load(actor)
    }
    fn dead_letter(&self, letter: DeadLetter) -> StoreFuture<()> {
        self.inner.dead_letter(letter)
    }
    fn dead_letters(&self) -> StoreFuture<DeadLetters> {
        self.inner.dead_letters()
    }
    fn put_timer(&self, timer: Timer) -> StoreFuture<()> {
        self.inner.put_timer(timer)
    }
    fn cancel_timer(&self, actor: &str, name: &str) -> StoreFuture<bool> {
        self.inner.cancel_timer(actor, name)
    }
    fn timers(&self, actor: &str) -> StoreFuture<Vec<Timer>> {
        self.inner.timers(actor)
    }
    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}

/// A broker on `store` whose appends from an outbox are refused while the returned
/// store's `on` holds: a durable target that cannot take what is sent to it.
fn refusing_outbox_appends(store: &Arc<dyn Store>) -> (Arc<Faulty>, Setup) {
    let faulty = Arc::new(Faulty {
        refuse_outbox_appends: true,
        ..Faulty::new(store)
    });
    let setup = durable_setup(faulty.clone());
    (faulty, setup)
}

/// Pong's count and how many arrived out of order.
async fn pong(setup: &Setup, id: &str) -> (u64, u64) {
    let reply = setup
        .broker
        .request(id, Vec::new(), 10 * SECOND)
        .await
        .unwrap();
    let word = |i: usize| u64::from_le_bytes(reply[i * 8..i * 8 + 8].try_into().unwrap());
    (word(0), word(1))
}

/// Wait until `done` holds, for at most ten seconds.
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + 10 * SECOND;
    while !done().await {
        assert!(Instant::now() < deadline, "waited 10 s for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A durable ping and a durable pong, and a counter that is not durable, on `setup`.
async fn spawn_ping_pong(setup: &Setup) {
    setup.spawn(setup.spec("pong", "pong").durable(true)).await;
    setup.spawn(setup.spec("counter", "counter")).await;
    setup
        .spawn(
            setup
                .spec("ping", "ping")
                .durable(true)
                .may_send("pong")
                .may_send("counter"),
        )
        .await;
}

#[tokio::test]
async fn a_durable_handlers_sends_leave_only_after_the_commit_that_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    let faulty = Arc::new(Faulty {
        refuse_sends_of: Some("ping"),
        ..Faulty::new(&store)
    });
    let setup = durable_setup(faulty.clone());
    spawn_ping_pong(&setup).await;
    setup.broker.send_durable("ping", "5").await.unwrap();
    setup
        .broker
        .send_durable("ping", "3@counter")
        .await
        .unwrap();
    until("ping's refused commit", async || {
        let metrics = setup.broker.metrics("ping").unwrap();
        metrics.delivered == 2 && metrics.durable.unwrap().failed_commits > 0
    })
    .await;
    // Handled, and its commit refused: nothing it sent has left, to a durable target or not.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pong(&setup, "pong").await, (0, 0));
    assert_eq!(setup.count("counter").await, 0);

    // The next batch commits what the refused one held, and only then do the sends leave.
    faulty.on.store(false, Ordering::SeqCst);
    setup.broker.send_durable("ping", "0").await.unwrap();
    setup.assert_accounted().await;
    assert_eq!(pong(&setup, "pong").await, (5, 0));
    assert_eq!(setup.count("counter").await, 3);
    until("the delivered marks", async || {
        store.load("ping").await.unwrap().outbox.is_empty()
    })
    .await;
}

#[tokio::test]
async fn what_can_be_checked_at_the_call_fails_the_durable_guests_call_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let setup = durable_setup(store_in(&dir));
    setup
        .spawn(setup.spec("counter", "counter").subscribe("ticks"))
        .await;
    setup
        .spawn(
            setup
                .spec("probe", "probe")
                .durable(true)
                .may_send("counter")
                .may_send("nobody")
                .may_publish("ticks"),
        )
        .await;
    let unknown = setup.probe("probe", "send:nobody").await;
    assert!(unknown.contains("TargetNotFound"), "{unknown}");
    let denied = setup.probe("probe", "send:elsewhere").await;
    assert!(denied.contains("AccessDenied"), "{denied}");
    assert_eq!(setup.probe("probe", "send:counter").await, "ok");
    // A publication counts the subscribers here now, and reaches them after the commit.
    assert_eq!(setup.probe("probe", "publish:ticks").await, "1");
    setup.assert_accounted().await;
    assert_eq!(setup.count("counter").await, 2);
}

#[tokio::test]
async fn a_durable_publication_leaves_only_after_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    let faulty = Arc::new(Faulty {
        refuse_sends_of: Some("probe"),
        ..Faulty::new(&store)
    });
    let setup = durable_setup(faulty.clone());
    setup
        .spawn(setup.spec("counter", "counter").subscribe("ticks"))
        .await;
    setup
        .spawn(
            setup
                .spec("probe", "probe")
                .durable(true)
                .may_publish("ticks"),
        )
        .await;
    assert_eq!(setup.probe("probe", "publish:ticks").await, "1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(setup.count("counter").await, 0, "not before the commit");
    faulty.on.store(false, Ordering::SeqCst);
    assert_eq!(setup.probe("probe", "self").await, "probe");
    setup.assert_accounted().await;
    assert_eq!(setup.count("counter").await, 1);
}

#[tokio::test]
async fn an_outbox_entry_sent_again_after_a_crash_is_handled_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    // A crash after pong stored what ping sent and before ping marked it delivered: the
    // marks are refused, and the broker goes.
    {
        let faulty = Arc::new(Faulty {
            refuse_delivered_marks: true,
            ..Faulty::new(&store)
        });
        let setup = durable_setup(faulty);
        spawn_ping_pong(&setup).await;
        setup.broker.send_durable("ping", "20").await.unwrap();
        assert!(setup.broker.quiesce(10 * SECOND).await);
        assert_eq!(pong(&setup, "pong").await, (20, 0));
        setup.broker.shutdown(SECOND).await;
    }
    assert_eq!(
        store.load("ping").await.unwrap().outbox.len(),
        20,
        "delivered, and not marked so"
    );

    // The next run sends all twenty again; pong's store drops them by ping's numbers.
    let setup = durable_setup(store.clone());
    spawn_ping_pong(&setup).await;
    setup.assert_accounted().await;
    until("the delivered marks", async || {
        store.load("ping").await.unwrap().outbox.is_empty()
    })
    .await;
    assert_eq!(pong(&setup, "pong").await, (20, 0), "each handled once");
}

#[tokio::test]
async fn an_outbox_entry_a_crash_kept_from_its_target_is_sent_at_the_next_spawn() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    {
        let (_faulty, setup) = refusing_outbox_appends(&store);
        spawn_ping_pong(&setup).await;
        setup.broker.send_durable("ping", "20").await.unwrap();
        until("ping's commit", async || {
            store.load("ping").await.unwrap().outbox.len() == 20
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pong(&setup, "pong").await, (0, 0));
        setup.broker.shutdown(SECOND).await;
    }
    let setup = durable_setup(store.clone());
    spawn_ping_pong(&setup).await;
    setup.assert_accounted().await;
    assert_eq!(pong(&setup, "pong").await, (20, 0));
    // Ping's numbering was committed with its state: the next ones follow on.
    setup.broker.send_durable("ping", "5").await.unwrap();
    setup.assert_accounted().await;
    assert_eq!(pong(&setup, "pong").await, (25, 0));
}

#[tokio::test]
async fn a_stopped_durable_sender_leaves_its_outbox_stored_and_sends_it_when_spawned_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    let (faulty, setup) = refusing_outbox_appends(&store);
    spawn_ping_pong(&setup).await;
    setup.broker.send_durable("ping", "20").await.unwrap();
    until("ping's commit", async || {
        store.load("ping").await.unwrap().outbox.len() == 20
    })
    .await;
    setup.broker.stop("ping").await.unwrap();
    // In this run's books the twenty end as dead letters that say where they are; they
    // are not dead for good, so the store does not keep them as such.
    setup.assert_accounted().await;
    let letters = setup.broker.dead_letters();
    assert_eq!(letters.len(), 20, "{letters:?}");
    assert!(
        letters[0].reason.contains("stays stored"),
        "{}",
        letters[0].reason
    );
    assert!(store.dead_letters().await.unwrap().letters.is_empty());
    assert_eq!(store.load("ping").await.unwrap().outbox.len(), 20);

    faulty.on.store(false, Ordering::SeqCst);
    setup.broker.remove("ping").await.ok();
    setup
        .spawn(
            setup
                .spec("ping", "ping")
                .durable(true)
                .may_send("pong")
                .may_send("counter"),
        )
        .await;
    setup.assert_accounted().await;
    assert_eq!(pong(&setup, "pong").await, (20, 0));
}

#[tokio::test]
async fn an_outbox_entry_that_meets_a_full_mailbox_waits_its_turn() {
    let dir = tempfile::tempdir().unwrap();
    let setup = durable_setup(store_in(&dir));
    // Two slots each: a target that is not durable takes what comes without waiting for a
    // disk, so the outbox's burst after the commit finds its mailbox full again and again.
    setup
        .spawn(setup.spec("pong", "pong").mailbox_capacity(2))
        .await;
    setup
        .spawn(
            setup
                .spec("pongs/durable", "pong")
                .durable(true)
                .mailbox_capacity(2),
        )
        .await;
    setup
        .spawn(
            setup
                .spec("ping", "ping")
                .durable(true)
                .may_send("pong")
                .may_send("pongs/*"),
        )
        .await;
    setup.broker.send_durable("ping", "300").await.unwrap();
    setup
        .broker
        .send_durable("ping", "300@pongs/durable")
        .await
        .unwrap();
    setup.assert_accounted().await;
    assert_eq!(pong(&setup, "pong").await, (300, 0), "all, in order");
    assert_eq!(
        pong(&setup, "pongs/durable").await,
        (300, 0),
        "all, in order"
    );
    let sent = setup
        .broker
        .request("ping", Vec::new(), 10 * SECOND)
        .await
        .unwrap();
    assert_eq!(sent, 600u64.to_le_bytes(), "no send was refused");
    assert_eq!(setup.broker.accounting().refused, 0);
}

#[tokio::test]
async fn a_durable_handler_past_its_outbox_bound_is_refused_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let setup = durable_setup(store_in(&dir));
    setup.spawn(setup.spec("pong", "pong").durable(true)).await;
    setup
        .spawn(setup.spec("ping", "ping").durable(true).may_send("pong"))
        .await;
    let asked = MAX_OUTBOX_MESSAGES as u64 + 10;
    setup
        .broker
        .send_durable("ping", asked.to_string())
        .await
        .unwrap();
    setup.assert_accounted().await;
    let sent = setup
        .broker
        .request("ping", Vec::new(), 10 * SECOND)
        .await
        .unwrap();
    let bound = MAX_OUTBOX_MESSAGES as u64;
    assert_eq!(sent, bound.to_le_bytes(), "the ten past the bound refused");
    assert_eq!(pong(&setup, "pong").await, (bound, 0));
    assert_eq!(setup.broker.accounting().refused, 10);
}

#[tokio::test]
async fn a_message_that_traps_a_durable_handler_is_dead_lettered_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let setup = durable_setup(store_in(&dir));
    setup.spawn(setup.spec("pong", "pong").durable(true)).await;
    // Pong traps on a marked message; a durable pong keeps nothing of it.
    setup
        .broker
        .send_durable("pong", [0, 0, 0, 0, 0, 0, 0, 0, 1].to_vec())
        .await
        .unwrap();
    setup.assert_accounted().await;
    assert_eq!(pong(&setup, "pong").await, (0, 0));
    assert_eq!(setup.broker.dead_letters().len(), 1);
}

#[tokio::test]
async fn what_a_durable_handler_sent_before_it_trapped_is_dead_lettered_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    let setup = durable_setup(store.clone());
    setup.spawn(setup.spec("counter", "counter")).await;
    setup
        .spawn(
            setup
                .spec("hostile", "hostile")
                .durable(true)
                .may_send("counter"),
        )
        .await;
    setup
        .broker
        .send_durable("hostile", "send-then-panic:counter:sent")
        .await
        .unwrap();
    setup
        .broker
        .send_durable("hostile", "send:counter")
        .await
        .unwrap();
    setup.assert_accounted().await;
    assert_eq!(
        setup.count("counter").await,
        1,
        "only the handler that returned"
    );
    let letters = setup.broker.dead_letters();
    let sent = letters
        .iter()
        .find(|letter| &*letter.target == "counter")
        .expect("the trapped handler's send is dead-lettered");
    assert_eq!(&*sent.sender, "hostile");
    assert_eq!(sent.payload, b"sent");
    assert!(sent.reason.contains("trapped"), "{}", sent.reason);
    until("both dead letters in the store", async || {
        store.dead_letters().await.unwrap().letters.len() == 2
    })
    .await;
}

#[tokio::test]
async fn dead_letters_of_durable_components_are_listed_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    let marked = [7, 0, 0, 0, 0, 0, 0, 0, 1].to_vec();
    {
        let setup = durable_setup(store.clone());
        setup.spawn(setup.spec("pong", "pong").durable(true)).await;
        setup
            .broker
            .send_durable("pong", marked.clone())
            .await
            .unwrap();
        setup.assert_accounted().await;
        until("the stored dead letter", async || {
            !store.dead_letters().await.unwrap().letters.is_empty()
        })
        .await;
        setup.broker.shutdown(SECOND).await;
    }
    let setup = durable_setup(store.clone());
    setup.spawn(setup.spec("pong", "pong").durable(true)).await;
    let letters = setup.broker.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(&*letters[0].target, "pong");
    assert_eq!(letters[0].payload, marked);
    assert!(letters[0].reason.contains("chaos"), "{}", letters[0].reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_upgrades_trapping_handlers_and_a_crash_keep_each_message_once_in_order() {
    const ROUNDS: u64 = 6;
    const EACH: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    // Pong traps on about 20 in 1,000 of ping's messages; it is restarted each time, from
    // the state after the last message it handled.
    let spawn = async |setup: &Setup| {
        let restarts = Supervision::default()
            .intensity(1000, 10 * SECOND)
            .backoff(Duration::from_millis(1), Duration::from_millis(1));
        let pong = setup.spec("pong", "pong").durable(true);
        setup.spawn(pong.supervision(restarts)).await;
        let ping = setup.spec("ping", "ping").durable(true);
        setup.spawn(ping.may_send("pong")).await;
    };
    crashed_host(&store, move |setup| async move {
        spawn(&setup).await;
        for round in 0..ROUNDS {
            let count = format!("{EACH}@pong~20");
            setup.broker.send_durable("ping", count).await.unwrap();
            // Each live upgrade lands while ping's sends are still arriving at pong.
            let upgrading = match round {
                1 => Some("pong"),
                3 => Some("ping"),
                _ => None,
            };
            if let Some(id) = upgrading {
                let new_version = crate::common::load(&setup.engine, id);
                setup.broker.upgrade(id, new_version).await.unwrap();
            }
        }
        // The crash comes while pong is still working through what ping sent.
        until("pong's first commits", async || {
            setup.broker.metrics("pong").unwrap().delivered > 0
        })
        .await;
    })
    .await;

    let setup = durable_setup(store.clone());
    spawn(&setup).await;
    let sent = {
        let reply = setup.broker.request("ping", Vec::new(), 10 * SECOND).await;
        u64::from_le_bytes(reply.unwrap().try_into().unwrap())
    };
    assert_eq!(sent, ROUNDS * EACH, "ping handled each accepted count once");
    let trapped = || {
        let letters = setup.broker.dead_letters();
        let numbers = letters
            .iter()
            .filter(|l| &*l.target == "pong" && l.payload.len() == 9)
            .map(|l| u64::from_le_bytes(l.payload[..8].try_into().unwrap()));
        numbers.collect::<std::collections::BTreeSet<u64>>()
    };
    let mut counted = (0, 0);
    until(
        "pong to count or dead-letter everything ping sent",
        async || {
            counted = pong(&setup, "pong").await;
            counted.0 + trapped().len() as u64 >= sent
        },
    )
    .await;
    assert!(setup.broker.quiesce(10 * SECOND).await);
    let (count, out_of_order) = pong(&setup, "pong").await;
    let trapped = trapped();
    assert!(!trapped.is_empty(), "pong trapped on some of them");
    assert_eq!(
        (count + trapped.len() as u64, out_of_order),
        (sent, 0),
        "each of ping's messages was counted once, in order, or dead-lettered by its trap"
    );
}

/// An outbox entry for a key that was put away before it left (here: its sender stopped
/// while the key's store refused it, then spawned again) makes the key again, as a send
/// would; it is not taken for a message to an unknown component and dead-lettered after the
/// grace such a one gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_entry_for_a_key_put_away_meanwhile_makes_the_key_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    let (faulty, setup) = refusing_outbox_appends(&store);
    let keying = courier_host_broker::Keying::default().idle(Duration::from_millis(10));
    setup
        .broker
        .spawn_keyed(setup.spec("cart", "counter").durable(true).keyed(keying))
        .await
        .unwrap();
    let front = || {
        setup
            .spec("front", "probe")
            .durable(true)
            .may_send("cart/*")
    };
    setup.spawn(front()).await;
    assert_eq!(setup.probe("front", "send:cart/7").await, "ok");
    until("front's commit", async || {
        store.load("front").await.unwrap().outbox.len() == 1
    })
    .await;
    setup.broker.stop("front").await.unwrap();
    // The key its call made, idle since, is put away.
    setup
        .wait_until(|broker| broker.keyed_metrics()[0].active == 0)
        .await;
    faulty.on.store(false, Ordering::SeqCst);
    setup.broker.remove("front").await.ok();
    setup.spawn(front()).await;
    // Not asked for its count, which would make the key itself.
    setup
        .wait_until(|broker| broker.keyed_metrics()[0].delivered == 1)
        .await;
    until("front's outbox marked delivered", async || {
        store.load("front").await.unwrap().outbox.is_empty()
    })
    .await;
    assert!(
        setup
            .broker
            .dead_letters()
            .iter()
            .all(|l| !l.reason.contains("no component"))
    );
}

/// A durable key's outbox survives a crash like a durable component's: what its handler
/// sent and its commit recorded, undelivered when the host died, goes out when the keyed
/// component is registered again, each message once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_keys_outbox_left_by_a_crash_is_sent_when_its_component_is_registered() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    let faulty: Arc<dyn Store> = Arc::new(Faulty {
        refuse_outbox_appends: true,
        ..Faulty::new(&store)
    });
    let kept = store.clone();
    crashed_host(&faulty, move |setup| async move {
        spawn_keyed_ping(&setup).await;
        setup.broker.send_durable("ping/1", "20").await.unwrap();
        // Committed by the key, refused by pong's store: it waits in the outbox.
        until("the key's commit", async || {
            kept.load("ping/1").await.unwrap().outbox.len() == 20
        })
        .await;
    })
    .await;

    let setup = durable_setup(store.clone());
    spawn_keyed_ping(&setup).await;
    setup.assert_accounted().await;
    assert_eq!(pong(&setup, "pong").await, (20, 0));
    until("the key's outbox marked delivered", async || {
        store.load("ping/1").await.unwrap().outbox.is_empty()
    })
    .await;
}

/// A durable pong, and `ping` as a durable keyed component whose keys send to it.
async fn spawn_keyed_ping(setup: &Setup) {
    setup.spawn(setup.spec("pong", "pong").durable(true)).await;
    let keyed = setup
        .spec("ping", "ping")
        .durable(true)
        .may_send("pong")
        .keyed(courier_host_broker::Keying::default());
    setup.broker.spawn_keyed(keyed).await.unwrap();
}
