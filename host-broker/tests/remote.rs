//! What the broker does with requests to other hosts, through a `Remote` of the test's own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_host_broker::{Broker, MessageKind, Remote, RemoteMessage, RemoteRefusal, Served};
use courier_host_core::{BoxFuture, ComponentId, MessagingError, TraceContext};

use crate::common::{SECOND, Setup};

/// The rest of the lattice, as a test needs it.
enum FarAway {
    /// Another host that takes every message and request and never answers a request.
    Silent,
    /// No host serves anything: every message is refused as having nowhere to go, the
    /// answer a lattice gives while the target's host is away.
    Nobody,
}
use FarAway::{Nobody, Silent};

impl Remote for FarAway {
    fn send(&self, message: RemoteMessage) -> Result<(), RemoteRefusal> {
        match self {
            Silent => {
                message.delivered();
                Ok(())
            }
            Nobody => Err(RemoteRefusal {
                error: MessagingError::TargetNotFound(format!(
                    "no host of the lattice serves `{}` now",
                    message.target()
                )),
                message,
            }),
        }
    }

    fn request(
        &self,
        _sender: &ComponentId,
        target: &str,
        _payload: Bytes,
        _timeout: Duration,
        _trace: Option<TraceContext>,
    ) -> BoxFuture<'static, Result<Vec<u8>, MessagingError>> {
        match self {
            Silent => Box::pin(std::future::pending()),
            Nobody => {
                let error = MessagingError::TargetNotFound(target.to_string());
                Box::pin(async { Err(error) })
            }
        }
    }

    fn publish(
        &self,
        _sender: &ComponentId,
        _topic: &str,
        _payload: Bytes,
        _trace: Option<TraceContext>,
    ) {
    }

    fn serve(&self, _served: Served) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn withdraw(&self, _id: &ComponentId) {}
}

/// The books balance with nothing in flight, and each of `requesters`' requests to
/// `far-away` is dead-lettered with a reason.
fn assert_every_request_ended(broker: &Broker, requesters: &[&str]) {
    let books = broker.accounting();
    assert_eq!(
        books.sent,
        books.delivered + books.refused + books.dead_lettered,
        "{books:?}"
    );
    assert_eq!(books.in_flight(), 0, "{books:?}");
    let letters = broker.dead_letters();
    for requester in requesters {
        let letter = letters
            .iter()
            .find(|letter| &*letter.sender == *requester && &*letter.target == "far-away")
            .unwrap_or_else(|| panic!("no dead letter for {requester}'s request: {letters:#?}"));
        assert_eq!(letter.kind, MessageKind::Request);
        assert!(
            letter.reason.contains("stopped waiting"),
            "{}",
            letter.reason
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_request_whose_requester_stops_waiting_is_dead_lettered() {
    let setup = Setup::new();
    assert!(setup.broker.attach_remote(Arc::new(Silent)).is_ok());
    // An embedder that gives up on the answer first: its `select!` drops the request.
    tokio::select! {
        answer = setup.broker.request("far-away", b"hello".to_vec(), 10 * SECOND) => {
            panic!("nobody answers, yet: {answer:?}")
        }
        () = tokio::time::sleep(Duration::from_millis(50)) => {}
    }
    assert_every_request_ended(&setup.broker, &["host"]);

    // A guest asking another host when the drain cuts its call: its `send-request` is
    // dropped with the call.
    setup
        .spawn(setup.spec("asker", "probe").may_request("far-away"))
        .await;
    let broker = setup.broker.clone();
    let asked = tokio::spawn(async move {
        broker
            .request("asker", b"request:far-away".to_vec(), 10 * SECOND)
            .await
    });
    let deadline = Instant::now() + 10 * SECOND;
    while setup.broker.accounting().sent < 3 {
        assert!(Instant::now() < deadline, "asker never asked");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let report = setup.broker.shutdown(Duration::from_millis(100)).await;
    assert!(
        asked.await.unwrap().is_err(),
        "the drain ended asker's call"
    );
    assert_eq!(report.undelivered.len(), 1, "asker's request from the host");
    assert_every_request_ended(&setup.broker, &["host", "asker"]);
}

/// A durable sender's message to another host is tried again for the broker's remote
/// retention and no longer: then it is dead-lettered with the last reason it was refused,
/// in the store too, so the record outlives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_senders_remote_message_is_dead_lettered_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::common::store_in(&dir);
    let engine = crate::common::engine();
    let retention = Duration::from_millis(300);
    let broker = Broker::with_config(
        engine.clone(),
        courier_host_broker::BrokerConfig::default()
            .store(store.clone())
            .remote_retention(retention),
    );
    let setup = Setup { engine, broker };
    assert!(setup.broker.attach_remote(Arc::new(Nobody)).is_ok());
    setup
        .spawn(
            setup
                .spec("front", "probe")
                .durable(true)
                .may_send("far-away"),
        )
        .await;
    let sent = Instant::now();
    assert_eq!(setup.probe("front", "send:far-away").await, "ok");
    setup
        .wait_until(|broker| !broker.dead_letters().is_empty())
        .await;
    assert!(sent.elapsed() >= retention, "not before the retention");
    let letters = setup.broker.dead_letters();
    let letter = &letters[0];
    assert_eq!((&*letter.sender, &*letter.target), ("front", "far-away"));
    assert!(
        letter.reason.contains("no host of the lattice serves"),
        "{}",
        letter.reason
    );
    setup.assert_accounted().await;
    // Written by the store's writer after the record here.
    let deadline = Instant::now() + 10 * SECOND;
    while store.dead_letters().await.unwrap().letters.is_empty()
        || !store.load("front").await.unwrap().outbox.is_empty()
    {
        assert!(Instant::now() < deadline, "never stored as a dead letter");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stored = store.dead_letters().await.unwrap().letters;
    assert_eq!(stored.len(), 1, "{stored:?}");
}
