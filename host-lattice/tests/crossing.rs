//! What crosses between hosts: messages in order, requests there and back, publications.

use courier_host_broker::{Accounting, Exposure, MessagingError};
use courier_test_support::nats::{NatsServer, start_cluster};

use crate::common::{Host, SECOND, eventually, urls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_cross_hosts_in_order_and_both_hosts_balance() {
    let servers = start_cluster(2);
    let a = Host::join("a", &urls(&servers, 0)[..1]).await;
    let b = Host::join("b", &urls(&servers, 1)[..1]).await;
    // A mailbox deep enough for the burst: this test is about order and accounting, not
    // back-pressure.
    b.spawn(
        b.spec("pong", "pong")
            .expose(Exposure::Lattice)
            .mailbox_capacity(16_384),
    )
    .await;
    a.spawn(a.spec("ping", "ping").may_send("pong")).await;
    a.sees("pong").await;

    a.broker.send("ping", b"10000".to_vec()).unwrap();
    eventually("pong to count 10,000", || {
        b.broker.metrics("pong").unwrap().delivered >= 10_000
    })
    .await;
    a.settles().await;
    let [count, out_of_order] = b.counts("pong").await[..] else {
        panic!("pong's counts")
    };
    assert_eq!((count, out_of_order), (10_000, 0), "all arrived, in order");

    let remote = a.lattice().metrics();
    assert_eq!((remote.sent, remote.acked), (10_000, 10_000), "{remote:?}");
    // Host A: the host's message to ping, and ping's 10,000 to pong, each delivered (the
    // remote ones acknowledged by host B).
    assert_eq!(
        a.broker.accounting(),
        Accounting {
            sent: 10_001,
            arrived: 0,
            delivered: 10_001,
            refused: 0,
            dead_lettered: 0,
        }
    );
    // Host B: 10,000 arrived, plus the host's request for the count; all handled.
    assert!(b.broker.quiesce(10 * SECOND).await);
    assert_eq!(
        b.broker.accounting(),
        Accounting {
            sent: 1,
            arrived: 10_000,
            delivered: 10_001,
            refused: 0,
            dead_lettered: 0,
        }
    );
    assert_eq!(b.lattice().metrics().arrived_messages, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_there_and_back_and_a_cycle_across_hosts_times_out() {
    let servers = start_cluster(2);
    let a = Host::join("a", &urls(&servers, 0)[..1]).await;
    let b = Host::join("b", &urls(&servers, 1)[..1]).await;
    a.spawn(
        a.spec("probe-a", "probe")
            .expose(Exposure::Lattice)
            .may_request("*"),
    )
    .await;
    a.spawn(a.spec("echo-a", "echo").expose(Exposure::Lattice))
        .await;
    b.spawn(
        b.spec("probe-b", "probe")
            .expose(Exposure::Lattice)
            .may_request("*"),
    )
    .await;
    a.sees("probe-b").await;
    b.sees("echo-a").await;
    b.sees("probe-a").await;

    // host → probe-a (A) → probe-b (B) → its own id, back through both.
    assert_eq!(a.probe("probe-a", "ask:probe-b:self").await, "probe-b");
    // A → B → A: probe-b asks echo-a, on A, which echoes what probe-b sent.
    assert_eq!(
        a.probe("probe-a", "ask:probe-b:ask:echo-a:hello").await,
        "hello"
    );
    // A cycle across hosts: probe-b asks probe-a, which is still busy asking probe-b.
    assert_eq!(
        a.probe("probe-a", "ask:probe-b:ask:probe-a:self").await,
        "err: MessagingError::Timeout",
        "probe-a is busy waiting for probe-b, so probe-b's request to it can only time out"
    );
    // A host's request to a component on another host, directly.
    let reply = a
        .broker
        .request("probe-b", b"self".to_vec(), 5 * SECOND)
        .await
        .unwrap();
    assert_eq!(reply, b"probe-b");
    // A handler's error crosses as the same typed error.
    let refused = a
        .broker
        .request("probe-b", b"no-such-command".to_vec(), 5 * SECOND)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, MessagingError::HandlerFailed(cause) if format!("{cause:?}").contains("unknown probe command")),
        "{refused:?}"
    );
    a.settles().await;
    b.settles().await;
    for host in [&a, &b] {
        let books = host.broker.accounting();
        assert_eq!(
            books.sent + books.arrived,
            books.delivered + books.refused + books.dead_lettered,
            "{books:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_reaches_subscribers_on_every_host_once() {
    let servers = start_cluster(2);
    let a = Host::join("a", &urls(&servers, 0)[..1]).await;
    let b = Host::join("b", &urls(&servers, 1)[..1]).await;
    a.spawn(a.spec("news-a", "counter").subscribe("news")).await;
    // Two patterns that both match `news` on one host: still one copy each.
    b.spawn(b.spec("news-b", "counter").subscribe("news")).await;
    b.spawn(b.spec("all-b", "counter").subscribe("*")).await;
    a.spawn(a.spec("publisher", "probe").may_publish("news"))
        .await;
    eventually("host A to hear of host B's topics", || {
        a.lattice()
            .hosts()
            .iter()
            .any(|h| h.topics.contains(&"*".to_string()))
    })
    .await;

    // The publisher's count is its own host's subscribers.
    assert_eq!(a.probe("publisher", "publish:news").await, "1");
    assert_eq!(
        a.broker.publish("news", b"from the host".to_vec()).unwrap(),
        1
    );
    eventually("host B's subscribers to hear both", || {
        ["news-b", "all-b"]
            .iter()
            .all(|id| b.broker.metrics(id).unwrap().delivered == 2)
    })
    .await;
    // Time for a duplicate to show up, if there were one.
    tokio::time::sleep(SECOND / 5).await;
    assert_eq!(a.counts("news-a").await, [2]);
    assert_eq!(b.counts("news-b").await, [2]);
    assert_eq!(b.counts("all-b").await, [2]);
    assert_eq!(b.lattice().metrics().arrived_publications, 2);
    assert_eq!(b.broker.accounting().arrived, 4, "two copies of each here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_requests_ending_is_counted_where_its_record_is() {
    // The rule (see `Accounting`): on the requesting host a request to another host ends
    // delivered when answered (a reply or a handler's error), dead-lettered when no
    // answer came in time (it may have been handled), refused when the serving host
    // answered with any other error; what became of it there (a trap's dead letter, say)
    // is in the serving host's own books and record.
    let server = NatsServer::start();
    let a = Host::join("a", &[server.url()]).await;
    let b = Host::join("b", &[server.url()]).await;
    b.spawn(b.spec("hostile", "hostile").expose(Exposure::Lattice))
        .await;
    a.sees("hostile").await;
    let before_a = a.broker.accounting();

    let trapped = a
        .broker
        .request("hostile", b"panic".to_vec(), 10 * SECOND)
        .await
        .unwrap_err();
    assert!(
        matches!(trapped, MessagingError::TargetCrashed(_)),
        "{trapped:?}"
    );
    let timed_out = a
        .broker
        .request("hostile", b"sleep:1500".to_vec(), SECOND / 4)
        .await
        .unwrap_err();
    assert!(
        matches!(timed_out, MessagingError::Timeout),
        "{timed_out:?}"
    );
    let answered = a
        .broker
        .request("hostile", b"fail:10".to_vec(), 10 * SECOND)
        .await
        .unwrap_err();
    assert!(
        matches!(answered, MessagingError::HandlerFailed(_)),
        "{answered:?}"
    );
    a.settles().await;
    b.settles().await;

    let books = a.broker.accounting();
    assert_eq!(books.sent - before_a.sent, 3, "{books:?}");
    assert_eq!(
        books.delivered - before_a.delivered,
        1,
        "the handler's error"
    );
    assert_eq!(books.refused - before_a.refused, 1, "the trap, answered");
    assert_eq!(
        books.dead_lettered - before_a.dead_lettered,
        1,
        "the timeout"
    );
    let letters = a.broker.dead_letters();
    assert!(
        letters
            .iter()
            .any(|l| &*l.target == "hostile" && l.reason.starts_with("unconfirmed")),
        "{letters:?}"
    );

    // On b: three arrived; the trap dead-lettered there with its cause, the other two
    // handled (the slow one after its requester stopped waiting, as a local one would be
    // once its handler had started).
    eventually("b to handle the slow request", || {
        b.broker.accounting().in_flight() == 0
    })
    .await;
    let there = b.broker.accounting();
    assert_eq!(there.arrived, 3, "{there:?}");
    assert_eq!(there.dead_lettered, 1, "{there:?}");
    assert_eq!(there.delivered, 2, "{there:?}");
    let letters = b.broker.dead_letters();
    assert!(
        letters
            .iter()
            .any(|l| &*l.target == "hostile" && l.reason.contains("panic")),
        "{letters:?}"
    );
}
