//! What a host refuses, and where: before the wire when it can, with a typed error always.

use std::time::{Duration, Instant};

use courier_host_broker::{BrokerError, Exposure, MessagingError};
use courier_host_lattice::{Auth, HEADER_ROOM, LatticeConfig};
use courier_test_support::nats::{NatsServer, start_cluster};
use futures_util::StreamExt;

use crate::common::{Host, LATTICE, SECOND, urls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_and_unexposed_targets_are_refused_before_anything_goes_on_the_wire() {
    let servers = start_cluster(2);
    let a = Host::join("a", &urls(&servers, 0)[..1]).await;
    let b = Host::join("b", &urls(&servers, 1)[..1]).await;
    b.spawn(b.spec("pong", "pong").expose(Exposure::Lattice))
        .await;
    b.spawn(b.spec("secret", "counter")).await;
    a.spawn(a.spec("outsider", "probe")).await;
    a.spawn(a.spec("insider", "probe").may_send("*")).await;
    a.sees("pong").await;

    // A spy on everything sent to components and topics of the lattice.
    let spy = async_nats::connect(servers[0].url()).await.unwrap();
    let mut seen = spy
        .subscribe(format!("courier.{LATTICE}.a.>"))
        .await
        .unwrap();
    spy.flush().await.unwrap();

    assert_eq!(
        a.probe("outsider", "send:pong").await,
        "err: MessagingError::AccessDenied(\"pong\")"
    );
    assert_eq!(
        a.probe("insider", "send:secret").await,
        "err: MessagingError::TargetNotFound(\"secret\")",
        "`secret` runs on host B but is not exposed"
    );
    assert_eq!(
        a.probe("insider", "send:nowhere").await,
        "err: MessagingError::TargetNotFound(\"nowhere\")"
    );
    assert!(
        tokio::time::timeout(SECOND / 2, seen.next()).await.is_err(),
        "nothing went on the wire"
    );
    // The spy does see what is allowed, so its silence above means something.
    assert_eq!(a.probe("insider", "send:pong").await, "ok");
    let crossed = tokio::time::timeout(5 * SECOND, seen.next())
        .await
        .expect("the allowed send is on the wire")
        .unwrap();
    assert_eq!(
        crossed.subject.as_str(),
        format!("courier.{LATTICE}.a.a.pong"),
        "sent by host A to pong"
    );
    assert!(
        crossed.headers.is_none(),
        "no headers: the envelope says it"
    );
    // The envelope: tag, kind 1 (a message), the sender's length and name, then its
    // deadline and stream numbers and the payload.
    let mut envelope = vec![0xC2, 1, 7];
    envelope.extend_from_slice(b"insider");
    assert!(
        crossed.payload.starts_with(&envelope),
        "{:?}",
        crossed.payload
    );
    let reply = crossed.reply.as_deref().unwrap_or_default();
    assert!(
        reply.starts_with(&format!("courier.{LATTICE}.h.a.r.")),
        "acknowledged to host A: {reply}"
    );
    assert_eq!(b.broker.metrics("secret").unwrap().delivered, 0);

    // Host B itself refuses an unexposed id, whatever a host asks for.
    let refused = b
        .broker
        .accept_message("insider".into(), "secret", b"hi".to_vec(), None)
        .unwrap_err();
    assert!(
        matches!(&refused, MessagingError::TargetNotFound(id) if id == "secret"),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_served_nowhere_is_not_found_without_waiting_for_the_timeout() {
    let server = NatsServer::start();
    let a = Host::join("a", &[server.url()]).await;
    a.spawn(a.spec("asker", "probe").may_request("*")).await;
    let began = Instant::now();
    // The probe waits up to a second for a reply; the answer is the refusal, not a timeout.
    assert_eq!(
        a.probe("asker", "request:nowhere").await,
        "err: MessagingError::TargetNotFound(\"nowhere\")"
    );
    assert!(began.elapsed() < 10 * SECOND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_over_the_servers_limit_is_refused_naming_the_limit() {
    let server = NatsServer::builder().max_payload(48 * 1024).start();
    let a = Host::join("a", &[server.url()]).await;
    let b = Host::join("b", &[server.url()]).await;
    b.spawn(b.spec("pong", "pong").expose(Exposure::Lattice))
        .await;
    a.spawn(a.spec("big", "probe").may_send("*").may_publish("*"))
        .await;
    a.sees("pong").await;
    let limit = 48 * 1024 - HEADER_ROOM;
    assert_eq!(a.lattice().max_payload(), limit);
    // Each subscription buffers what the inbound byte budget holds of the server's largest
    // message, from 64 to the client's own 65,536: sized from the server's 48 KiB, not
    // from a guess of 1 MiB (which would make 96 here).
    assert_eq!(
        a.lattice().subscription_capacity(),
        65_536,
        "the default budget"
    );
    let sized = Host::join_with(
        LatticeConfig::new(LATTICE, "c").inbound_bytes(96 << 20),
        &[server.url()],
    )
    .await;
    assert_eq!(sized.lattice().subscription_capacity(), 2048);
    let tight = Host::join_with(
        LatticeConfig::new(LATTICE, "d").inbound_bytes(1 << 20),
        &[server.url()],
    )
    .await;
    assert_eq!(
        tight.lattice().subscription_capacity(),
        64,
        "the least it takes"
    );
    // `send-big:` sends 64 KiB.
    assert_eq!(
        a.probe("big", "send-big:pong").await,
        format!("err: MessagingError::PayloadTooLarge({limit})")
    );
    assert_eq!(a.lattice().metrics().refused_here, 1);
    let books = a.broker.accounting();
    assert_eq!((books.refused, books.dead_lettered), (1, 0), "{books:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_client_with_the_hosts_credentials_can_speak_for_a_component() {
    let server = NatsServer::builder().token("lattice-secret").start();
    let config =
        |host: &str| LatticeConfig::new(LATTICE, host).auth(Auth::Token("lattice-secret".into()));
    let b = Host::join_with(config("b"), &[server.url()]).await;
    b.spawn(b.spec("pong", "pong").expose(Exposure::Lattice))
        .await;

    // A plain client without the token cannot even connect, so it cannot publish a message
    // with a forged `Courier-Sender`.
    let forger = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(server.url())
        .await;
    assert!(forger.is_err(), "connected without the token");
    let wrong = async_nats::ConnectOptions::with_token("guess".into())
        .connection_timeout(Duration::from_secs(2))
        .connect(server.url())
        .await;
    assert!(wrong.is_err(), "connected with a wrong token");

    // A host without the token cannot join.
    let mut engine_config = courier_host_core::EngineConfig::default();
    engine_config = engine_config.max_instances(5);
    let engine = courier_host_core::Engine::new(engine_config).unwrap();
    let broker = courier_host_broker::Broker::new(engine);
    let refused = courier_host_lattice::Lattice::join(
        &broker,
        LatticeConfig::new(LATTICE, "intruder").server(server.url()),
    )
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("cannot connect"), "{refused}");
    assert_eq!(b.broker.metrics("pong").unwrap().delivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_is_served_by_one_host_unless_it_is_replicated() {
    let server = NatsServer::start();
    let a = Host::join("a", &[server.url()]).await;
    let b = Host::join("b", &[server.url()]).await;
    a.spawn(a.spec("pong", "pong").expose(Exposure::Lattice))
        .await;
    let refused = b
        .broker
        .spawn(b.spec("pong", "pong").expose(Exposure::Lattice))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, BrokerError::Remote { reason, .. } if reason.contains("host `a` already serves `pong`")),
        "{refused}"
    );
    assert!(
        b.broker.metrics("pong").is_none(),
        "the refused spawn is undone"
    );

    a.spawn(a.spec("echo", "echo").expose(Exposure::Replicated))
        .await;
    b.spawn(b.spec("echo", "echo").expose(Exposure::Replicated))
        .await;
    // A third host reaches the replicas; each request is answered once, by one of them.
    let c = Host::join("c", &[server.url()]).await;
    c.sees("echo").await;
    for i in 0..20u8 {
        let reply = c.broker.request("echo", vec![i], 5 * SECOND).await.unwrap();
        assert_eq!(reply, [i]);
    }
    let handled = |host: &Host| host.broker.metrics("echo").unwrap().delivered;
    assert_eq!(handled(&a) + handled(&b), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_to_other_hosts_are_refused_once_the_outbound_queue_is_full() {
    let server = NatsServer::start();
    let config = LatticeConfig::new(LATTICE, "a").outbound_bytes(16 * 1024);
    let a = Host::join_with(config, &[server.url()]).await;
    let b = Host::join("b", &[server.url()]).await;
    b.spawn(b.spec("pong", "pong").expose(Exposure::Lattice))
        .await;
    a.spawn(a.spec("big", "probe").may_send("*")).await;
    a.sees("pong").await;
    // 64 KiB do not fit in a 16 KiB queue: refused at once, nothing queued or sent.
    assert_eq!(
        a.probe("big", "send-big:pong").await,
        "err: MessagingError::MailboxFull(\"pong\")"
    );
    let remote = a.lattice().metrics();
    assert_eq!((remote.sent, remote.refused_here), (0, 1), "{remote:?}");
    assert_eq!(remote.outbound_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arrival_without_a_valid_kind_and_sender_is_refused_not_delivered() {
    let server = NatsServer::start();
    let b = Host::join("b", &[server.url()]).await;
    b.spawn(b.spec("pong", "pong").expose(Exposure::Lattice))
        .await;
    // A client with the server's (here: no) credentials, writing its own envelopes.
    let client = async_nats::connect(server.url()).await.unwrap();
    let subject = format!("courier.{LATTICE}.a.a.pong");
    let garbage: [&[u8]; 6] = [
        b"",
        b"no envelope at all",
        &[
            0xC2, 1, 10, b'n', b'o', b't', b' ', b'a', b'n', b' ', b'i', b'd', b'!',
        ],
        &[0xC2, 9, 4, b'p', b'i', b'n', b'g'],
        &[0xC2, 1, 200, b'p'],
        &[0xC2, 3, 4, b'p', b'i', b'n', b'g'],
    ];
    // A valid envelope on a subject whose host token is not a host name.
    let nameless = format!("courier.{LATTICE}.a.%25.pong");
    let valid: &[u8] = &[0xC2, 1, 4, b'p', b'i', b'n', b'g', 0, 0];
    let cases = garbage
        .iter()
        .map(|payload| (subject.as_str(), *payload))
        .chain([(nameless.as_str(), valid)]);
    let mut refused = 0;
    for (subject, payload) in cases {
        let answer = client
            .request(subject.to_string(), payload.to_vec().into())
            .await
            .unwrap();
        let error = answer.headers.as_ref().and_then(|h| h.get("Courier-Error"));
        assert_eq!(
            error.map(|e| e.as_str()),
            Some("access-denied"),
            "{subject} {payload:?}"
        );
        refused += 1;
    }
    assert_eq!(b.lattice().metrics().malformed, refused);
    assert_eq!(b.broker.metrics("pong").unwrap().delivered, 0);
}
