//! Hosts that restart, leave with no server to reach, get dropped, or start the same
//! component at the same moment: nothing is delivered to the wrong run, twice, or after it
//! was given up on, and nothing hangs.

use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_host_broker::{Exposure, MessagingError};
use courier_host_lattice::{Lattice, LatticeConfig, LatticeError};
use courier_test_support::nats::NatsServer;

use crate::common::{Host, LATTICE, SECOND, eventually};

/// Join as `name`, retrying while the previous run under that name is still being taken
/// down by the server (its connection closes a moment after it is dropped).
async fn join_again(name: &str, server: &str) -> Host {
    let deadline = Instant::now() + 10 * SECOND;
    loop {
        let engine = courier_host_core::Engine::new(
            courier_host_core::EngineConfig::default().max_instances(50),
        )
        .expect("engine");
        let broker = courier_host_broker::Broker::new(engine.clone());
        match Lattice::join(&broker, LatticeConfig::new(LATTICE, name).server(server)).await {
            Ok(lattice) => {
                return Host {
                    engine,
                    broker,
                    lattice: Some(lattice),
                };
            }
            Err(LatticeError::HostNameTaken { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("joining again as `{name}`: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_host_never_takes_its_previous_runs_replies() {
    let server = NatsServer::start();
    let b = Host::join("b", &[server.url()]).await;
    b.spawn(b.spec("slow", "hostile").expose(Exposure::Lattice))
        .await;

    // The first run of `a` asks for an answer that takes 1.5 s, and is gone before it comes.
    let first = Host::join("a", &[server.url()]).await;
    first.sees("slow").await;
    let broker = first.broker.clone();
    let asked = tokio::spawn(async move {
        broker
            .request("slow", b"sleep:1500".to_vec(), 10 * SECOND)
            .await
    });
    eventually("the first run's request to reach b", || {
        b.lattice().metrics().arrived_requests == 1
    })
    .await;
    asked.abort();
    drop(first);

    // The second run asks at once: its request is queued behind the first, and must get
    // its own answer (the second command `slow` handled), not the first run's `slept`.
    let second = join_again("a", &server.url()).await;
    second.sees("slow").await;
    let reply = second
        .broker
        .request("slow", b"count".to_vec(), 10 * SECOND)
        .await
        .expect("the second run's request is answered");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "2",
        "the second run got another request's reply"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_under_a_live_hosts_name_is_refused_naming_it() {
    let server = NatsServer::start();
    let _a = Host::join("a", &[server.url()]).await;
    let engine =
        courier_host_core::Engine::new(courier_host_core::EngineConfig::default()).unwrap();
    let broker = courier_host_broker::Broker::new(engine);
    let refused = Lattice::join(
        &broker,
        LatticeConfig::new(LATTICE, "a").server(server.url()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&refused, LatticeError::HostNameTaken { host, .. } if host == "a"),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .contains("host `a` already runs in the lattice `test`"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_ack_timeout_or_heartbeat_is_refused_at_join() {
    let engine =
        courier_host_core::Engine::new(courier_host_core::EngineConfig::default()).unwrap();
    let broker = courier_host_broker::Broker::new(engine);
    // Refused before any connection is tried: no server listens here.
    let base = || LatticeConfig::new(LATTICE, "a").server("nats://127.0.0.1:9");
    let zero_ack = Lattice::join(&broker, base().ack_timeout(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(zero_ack.to_string().contains("ack_timeout"), "{zero_ack}");
    let zero_beat = Lattice::join(&broker, base().heartbeat(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(zero_beat.to_string().contains("heartbeat"), "{zero_beat}");
}

/// A peer on the lattice, host `z`, that says it serves `pong` (a heartbeat every 200 ms,
/// as long as the returned guard lives) and takes every message for it without a word:
/// nothing sent to it is ever acknowledged.
async fn black_hole(server: &NatsServer) -> BlackHole {
    let peer = async_nats::connect(server.url()).await.unwrap();
    let swallowed = peer
        .subscribe(format!("courier.{LATTICE}.a.*.pong"))
        .await
        .unwrap();
    let announcing = tokio::spawn(async move {
        loop {
            // The server may be gone (a test kills it): the heartbeat is best effort.
            let _ = peer
                .publish(
                    format!("courier.{LATTICE}.h.z.hb"),
                    Bytes::from_static(br#"{"host":"z","served":["pong"]}"#),
                )
                .await;
            tokio::time::sleep(SECOND / 5).await;
        }
    });
    BlackHole {
        _swallowed: swallowed,
        announcing,
    }
}

struct BlackHole {
    _swallowed: async_nats::Subscriber,
    announcing: tokio::task::JoinHandle<()>,
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.announcing.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lattice_ends_its_messages_and_the_broker_joins_again() {
    let server = NatsServer::start();
    let _black_hole = black_hole(&server).await;
    let mut a = Host::join_with(
        LatticeConfig::new(LATTICE, "a").ack_timeout(60 * SECOND),
        &[server.url()],
    )
    .await;
    a.spawn(a.spec("ping", "ping").may_send("pong")).await;
    a.sees("pong").await;
    a.broker.send("ping", b"20".to_vec()).unwrap();
    eventually("ping's 20 messages to be on the wire", || {
        a.lattice().metrics().awaiting_ack == 20
    })
    .await;

    drop(a.lattice.take());

    assert!(a.broker.quiesce(10 * SECOND).await, "every message ended");
    let books = a.broker.accounting();
    assert_eq!(
        books.sent,
        books.delivered + books.refused + books.dead_lettered,
        "{books:?}"
    );
    let letters = a.broker.dead_letters();
    assert_eq!(
        letters
            .iter()
            .filter(|l| l.reason.contains("was dropped"))
            .count(),
        20,
        "{letters:?}"
    );

    // The broker is free again: it joins anew and reaches the peer's `pong` once more.
    let lattice = Lattice::join(
        &a.broker,
        LatticeConfig::new(LATTICE, "a").server(server.url()),
    )
    .await
    .expect("a broker whose lattice was dropped joins again");
    assert!(lattice.wait_for("pong", 10 * SECOND).await);
    lattice.leave(SECOND).await;
    let again = Lattice::join(
        &a.broker,
        LatticeConfig::new(LATTICE, "a").server(server.url()),
    )
    .await;
    assert!(again.is_ok(), "and after leaving, too: {again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_with_every_server_gone_ends_within_the_drain() {
    let mut server = NatsServer::start();
    let _black_hole = black_hole(&server).await;
    let a = Host::join_with(
        LatticeConfig::new(LATTICE, "a").ack_timeout(60 * SECOND),
        &[server.url()],
    )
    .await;
    a.spawn(
        a.spec("ping", "ping")
            .may_send("pong")
            .expose(Exposure::Lattice),
    )
    .await;
    a.spawn(a.spec("news", "counter").subscribe("news/*")).await;
    a.sees("pong").await;
    a.broker.send("ping", b"50".to_vec()).unwrap();
    eventually("ping's messages to be on the wire", || {
        a.lattice().metrics().awaiting_ack == 50
    })
    .await;

    server.kill();
    // More to send while no server can be reached: they wait, then end.
    a.broker.send("ping", b"50".to_vec()).unwrap();
    let drain = SECOND;
    let started = Instant::now();
    let left = tokio::time::timeout(drain + SECOND, a.lattice().leave(drain)).await;
    assert!(
        left.is_ok(),
        "leave did not end within the drain and a second"
    );
    let report = tokio::time::timeout(drain + SECOND, a.broker.shutdown(drain)).await;
    assert!(report.is_ok(), "shutdown did not end within the drain");
    assert!(started.elapsed() < 2 * drain + 2 * SECOND);
    let books = a.broker.accounting();
    assert_eq!(
        books.sent,
        books.delivered + books.refused + books.dead_lettered,
        "{books:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_given_up_on_during_an_outage_is_sent_after_it() {
    // The server goes down: host a can reach nothing (a cluster would not do, as a's client
    // fails over to the servers the cluster tells it of), and b keeps what it serves.
    let mut server = NatsServer::start();
    let b = Host::join("b", &[server.url()]).await;
    b.spawn(
        b.spec("pong", "pong")
            .expose(Exposure::Lattice)
            .mailbox_capacity(4096),
    )
    .await;
    b.spawn(b.spec("slow", "hostile").expose(Exposure::Lattice))
        .await;
    let a = Host::join_with(
        LatticeConfig::new(LATTICE, "a").ack_timeout(SECOND / 2),
        &[server.url()],
    )
    .await;
    a.spawn(a.spec("ping", "ping").may_send("pong").may_request("slow"))
        .await;
    a.sees("pong").await;
    a.sees("slow").await;
    a.broker.send("ping", b"100".to_vec()).unwrap();
    a.settles().await;
    assert_eq!(b.counts("pong").await[0], 100);

    server.kill();
    // Sent while the directory still lists pong and slow (for three heartbeats), due
    // long before the server is back: the first hundred at once, which a's client may
    // take into its buffer before it notices the server is gone (their deadline has b
    // drop them when they arrive after the reconnect), the next once it has noticed
    // (they wait on a, and are never published).
    a.broker.send("ping", b"100".to_vec()).unwrap();
    tokio::time::sleep(SECOND / 4).await;
    a.broker.send("ping", b"100".to_vec()).unwrap();
    let asked = a
        .broker
        .request("slow", b"sleep:1".to_vec(), SECOND / 2)
        .await;
    assert!(matches!(asked, Err(MessagingError::Timeout)), "{asked:?}");
    eventually("the messages sent during the outage to end", || {
        a.lattice().metrics().awaiting_ack == 0
    })
    .await;
    tokio::time::sleep(SECOND).await;

    server.restart();
    // Give whatever the client might have kept time to arrive.
    tokio::time::sleep(2 * SECOND).await;
    assert_eq!(
        b.counts("pong").await[0],
        100,
        "a message given up on during the outage was delivered after it"
    );
    let commands = b
        .broker
        .request("slow", b"count".to_vec(), 5 * SECOND)
        .await
        .unwrap();
    assert_eq!(
        commands, b"1",
        "a request whose requester had timed out was handled after the outage"
    );
    let books = a.broker.accounting();
    assert_eq!(
        books.sent,
        books.delivered + books.refused + books.dead_lettered,
        "{books:?}"
    );
    let remote = a.lattice().metrics();
    assert_eq!(
        remote.sent,
        remote.acked + remote.refused_there + remote.no_host + remote.unconfirmed + remote.unsent,
        "{remote:?}"
    );
    assert!(remote.unsent > 0, "{remote:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_id_started_on_two_hosts_at_once_is_never_delivered_twice() {
    let server = NatsServer::start();
    let a = Host::join("a", &[server.url()]).await;
    let b = Host::join("b", &[server.url()]).await;
    let c = Host::join("c", &[server.url()]).await;
    let rounds = 6;
    let mut both = 0;
    for round in 0..rounds {
        let id = format!("pong{round}");
        let (on_a, on_b) = tokio::join!(
            a.broker
                .spawn(a.spec(&id, "counter").expose(Exposure::Lattice)),
            b.broker
                .spawn(b.spec(&id, "counter").expose(Exposure::Lattice)),
        );
        assert!(on_a.is_ok() || on_b.is_ok(), "one of them serves {id}");
        if on_a.is_ok() && on_b.is_ok() {
            both += 1;
            eventually("the directory to report the conflict", || {
                a.lattice().conflicts().iter().any(|c| c.id == id)
                    && b.lattice().metrics().conflicts > 0
            })
            .await;
        }
        c.sees(&id).await;
        for _ in 0..50 {
            c.broker.send(&id, b"1".to_vec()).unwrap();
        }
        c.settles().await;
        let count = |host: &Host| {
            host.broker
                .metrics(&id)
                .map_or(0, |metrics| metrics.delivered)
        };
        eventually("every message to be handled", || {
            count(&a) + count(&b) == 50
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count(&a) + count(&b), 50, "{id} delivered twice");
    }
    eprintln!("both hosts started the id in {both} of {rounds} rounds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_that_hear_one_topic_spawned_together_hear_each_publication_once() {
    let server = NatsServer::start();
    let a = Host::join("a", &[server.url()]).await;
    let b = Host::join("b", &[server.url()]).await;
    let (x, y) = tokio::join!(
        b.broker.spawn(b.spec("x", "counter").subscribe("news")),
        b.broker.spawn(b.spec("y", "counter").subscribe("news")),
    );
    x.unwrap();
    y.unwrap();
    eventually("a to hear that b listens to news", || {
        a.lattice()
            .hosts()
            .iter()
            .any(|h| h.topics.contains(&"news".to_string()))
    })
    .await;
    a.broker.publish("news", b"1".to_vec()).unwrap();
    eventually("both to hear it", || {
        b.broker.metrics("x").unwrap().delivered >= 1
            && b.broker.metrics("y").unwrap().delivered >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.counts("x").await[0], 1, "x heard the publication twice");
    assert_eq!(b.counts("y").await[0], 1, "y heard the publication twice");
}

/// `value` as an LEB128 varint, as a host writes its envelope's numbers.
fn varint(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Milliseconds since the Unix epoch, `offset_ms` from now.
fn unix_ms(offset_ms: i64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now + offset_ms) as u64
}

/// A message from `ping` on host `a` (unnumbered) whose sender stops waiting at `deadline`.
fn message_until(deadline: u64, payload: &[u8]) -> Bytes {
    let mut bytes = vec![0xC2, 1, 4];
    bytes.extend_from_slice(b"ping");
    varint(deadline, &mut bytes);
    bytes.push(0);
    bytes.extend_from_slice(payload);
    bytes.into()
}

/// A request from `ping` on host `a` whose requester waits `timeout_ms` and stops at
/// `deadline`.
fn request_until(deadline: u64, timeout_ms: u32, payload: &[u8]) -> Bytes {
    let mut bytes = vec![0xC2, 2, 4];
    bytes.extend_from_slice(b"ping");
    varint(deadline, &mut bytes);
    bytes.extend_from_slice(&timeout_ms.to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes.into()
}

/// Ask `subject` as a plain NATS client, waiting at most `wait` for an answer.
async fn ask(
    client: &async_nats::Client,
    subject: &str,
    payload: Bytes,
    wait: Duration,
) -> Result<async_nats::Message, async_nats::RequestError> {
    let request = async_nats::Request::new()
        .payload(payload)
        .timeout(Some(wait));
    client.send_request(subject.to_string(), request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_arrives_after_its_deadline_is_not_handled() {
    // What a NATS client kept in its buffer through a reconnect arrives late, with the
    // deadline its sending host wrote: a client of the server plays that host here.
    let server = NatsServer::start();
    let b = Host::join("b", &[server.url()]).await;
    b.spawn(b.spec("pong", "pong").expose(Exposure::Lattice))
        .await;
    b.spawn(b.spec("slow", "hostile").expose(Exposure::Lattice))
        .await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let pong = format!("courier.{LATTICE}.a.a.pong");
    let slow = format!("courier.{LATTICE}.a.a.slow");

    // A message and a request whose senders gave up a second ago.
    let late = ask(
        &client,
        &pong,
        message_until(unix_ms(-1000), b"late"),
        SECOND,
    )
    .await;
    assert!(late.is_err(), "an expired message is not acknowledged");
    let late = ask(
        &client,
        &slow,
        request_until(unix_ms(-1000), 5000, b"count"),
        SECOND,
    )
    .await;
    assert!(late.is_err(), "an expired request is not answered");
    assert_eq!(b.lattice().metrics().expired, 2);
    assert_eq!(b.broker.metrics("pong").unwrap().delivered, 0);
    assert_eq!(b.broker.metrics("slow").unwrap().delivered, 0);

    // What is still owed is handled.
    let owed = ask(
        &client,
        &pong,
        message_until(unix_ms(60_000), b"owed"),
        5 * SECOND,
    )
    .await
    .expect("acknowledged");
    assert!(owed.headers.is_none(), "{owed:?}");
    eventually("pong to handle the message still owed", || {
        b.broker.metrics("pong").unwrap().delivered == 1
    })
    .await;

    // A request's handler gets the time its requester has left by the deadline, not the
    // timeout written when it went on the wire (which a buffered request outlives).
    let answer = ask(
        &client,
        &slow,
        request_until(unix_ms(300), 5000, b"sleep:1500"),
        5 * SECOND,
    )
    .await
    .expect("answered");
    let error = answer.headers.as_ref().and_then(|h| h.get("Courier-Error"));
    assert_eq!(error.map(|e| e.as_str()), Some("timeout"), "{answer:?}");
    assert_eq!(b.lattice().metrics().expired, 2);
}
