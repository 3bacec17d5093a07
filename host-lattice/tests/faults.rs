//! Hosts and servers that go away mid-stream: every message a host sent still ends
//! delivered, refused or dead-lettered with a reason, and traffic resumes.

use std::time::{Duration, Instant};

use courier_host_broker::{Accounting, Exposure, MessageKind};
use courier_host_lattice::LatticeConfig;
use courier_test_support::nats::start_cluster;

use crate::common::{Host, LATTICE, SECOND, eventually};

/// Host A's books balance, and every message to another host ended one of the ways
/// the lattice promises.
fn assert_every_message_ended(a: &Host) {
    let books: Accounting = a.broker.accounting();
    assert_eq!(
        books.sent,
        books.delivered + books.refused + books.dead_lettered,
        "{books:?}"
    );
    let remote = a.lattice().metrics();
    assert_eq!(
        remote.sent,
        remote.acked + remote.refused_there + remote.no_host + remote.unconfirmed,
        "{remote:?}"
    );
    for letter in a.broker.dead_letters() {
        assert!(
            ["no-host", "unconfirmed", "refused by host"]
                .iter()
                .any(|why| letter.reason.starts_with(why)),
            "a dead letter with an unexpected reason: {letter:?}"
        );
        if letter.kind == MessageKind::Message {
            assert_eq!(&*letter.sender, "ping", "stamped with its sender");
        }
    }
}

/// Host A with ping, which sends to pong on other hosts; acknowledgements overdue after
/// half a second, so the test does not wait long for `unconfirmed`.
async fn sender(server: &str) -> Host {
    let config = LatticeConfig::new(LATTICE, "a").ack_timeout(SECOND / 2);
    let a = Host::join_with(config, &[server.to_string()]).await;
    a.spawn(a.spec("ping", "ping").may_send("pong")).await;
    a
}

async fn receiver(name: &str, server: &str) -> Host {
    let b = Host::join(name, &[server.to_string()]).await;
    b.spawn(
        b.spec("pong", "pong")
            .expose(Exposure::Lattice)
            .mailbox_capacity(16_384),
    )
    .await;
    b
}

/// Send `chunks` bursts of 200 from ping, calling `midway` after the third.
async fn stream(a: &Host, chunks: usize, mut midway: impl FnMut()) {
    for chunk in 0..chunks {
        // A refusal (the directory already forgot host B) is an error of ping's handler,
        // not of this send.
        a.broker.send("ping", b"200".to_vec()).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        if chunk == 2 {
            midway();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_stream_loses_no_message_without_a_record_and_traffic_resumes() {
    let servers = start_cluster(2);
    let a = sender(&servers[0].url()).await;
    let mut b = receiver("b", &servers[1].url()).await;
    a.sees("pong").await;

    stream(&a, 10, || {
        // Host B dies: its lattice stops answering at once.
        drop(b.lattice.take());
    })
    .await;
    drop(b);
    a.settles().await;
    assert_every_message_ended(&a);
    let remote = a.lattice().metrics();
    assert!(remote.acked > 0, "some arrived before the kill: {remote:?}");
    assert!(
        remote.no_host + remote.unconfirmed + a.broker.accounting().refused > 0,
        "some were sent after it: {remote:?}"
    );

    // Host B comes back (a new process, as after a crash) and traffic resumes.
    let b = receiver("b-again", &servers[1].url()).await;
    eventually("host A to forget the dead host", || {
        a.lattice().hosts().iter().all(|h| h.host != "b")
    })
    .await;
    a.sees("pong").await;
    let acked = a.lattice().metrics().acked;
    a.broker.send("ping", b"500".to_vec()).unwrap();
    a.settles().await;
    assert_eq!(a.lattice().metrics().acked, acked + 500);
    assert_eq!(b.counts("pong").await, [500, 0]);
    assert_every_message_ended(&a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_hosts_server_dies_it_fails_over_and_every_message_is_accounted_for() {
    let mut servers = start_cluster(2);
    let a = sender(&servers[0].url()).await;
    let b = receiver("b", &servers[1].url()).await;
    a.sees("pong").await;

    stream(&a, 10, || servers[1].kill()).await;
    a.settles().await;
    assert_every_message_ended(&a);

    // Host B's client reconnects to the other server and subscribes again; then pong is
    // reachable from host A once more.
    let deadline = Instant::now() + 30 * SECOND;
    while a.broker.request("pong", Vec::new(), SECOND).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "pong never answered host A again"
        );
        tokio::time::sleep(SECOND / 10).await;
    }
    let acked = a.lattice().metrics().acked;
    let before = b.counts("pong").await[0];
    a.broker.send("ping", b"500".to_vec()).unwrap();
    a.settles().await;
    assert_eq!(a.lattice().metrics().acked, acked + 500);
    assert_eq!(b.counts("pong").await[0], before + 500);
    assert_every_message_ended(&a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failover_while_both_hosts_live_loses_and_repeats_nothing() {
    let mut servers = start_cluster(2);
    // Host A on the server about to die (it learns the other from the cluster), host B
    // on the other; the default ack timeout of 5 s.
    let a = Host::join("a", &[servers[0].url()]).await;
    a.spawn(a.spec("ping", "ping").may_send("pong")).await;
    let b = receiver("b", &servers[1].url()).await;
    a.sees("pong").await;

    // One burst of 50,000; A's server is frozen while at least 200 of them wait for their
    // acknowledgements, then killed, so what it held then (messages, or acknowledgements
    // on their way back) dies with it and the failover has to send them again.
    const BURSTS: u64 = 1;
    const BURST: u64 = 50_000;
    a.broker
        .send("ping", BURST.to_string().into_bytes())
        .unwrap();
    let deadline = Instant::now() + 10 * SECOND;
    while a.lattice().metrics().awaiting_ack < 200 {
        assert!(
            Instant::now() < deadline,
            "the burst never had 200 messages on their way: {:?}",
            a.lattice().metrics()
        );
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
    servers[0].freeze();
    // What host A writes meanwhile piles up unread on the frozen server.
    tokio::time::sleep(SECOND / 5).await;
    servers[0].kill();
    a.settles().await;
    assert!(b.broker.quiesce(10 * SECOND).await);

    let books = a.broker.accounting();
    let remote = a.lattice().metrics();
    assert_eq!(
        books.dead_lettered,
        0,
        "nothing dead-lettered: {:?}\n{remote:?}",
        a.broker.dead_letters().first()
    );
    assert_eq!(
        (remote.sent, remote.acked),
        (BURSTS * BURST, BURSTS * BURST),
        "{remote:?}"
    );
    // Pong counts what it handled and how many came out of order (a duplicate among
    // them): each message once, in order.
    assert_eq!(
        b.counts("pong").await,
        [BURSTS * BURST, 0],
        "sent: {remote:?}\nreceived: {:?}",
        b.lattice().metrics()
    );
    assert!(
        remote.resent > 0,
        "the failover had messages on the dead server to send again: {remote:?}"
    );
    assert_every_message_ended(&a);
}
