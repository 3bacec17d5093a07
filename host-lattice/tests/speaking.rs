//! A host speaks only for itself: the server pins what it publishes to its own name, and a
//! receiving host refuses a sender id or an acknowledgement that another host owns.

use bytes::Bytes;
use courier_host_broker::Exposure;
use courier_host_lattice::{Auth, LatticeConfig};
use courier_test_support::nats::NatsServer;
use futures_util::StreamExt;

use crate::common::{Host, LATTICE, SECOND, eventually};

/// What a host of this version writes before a payload: tag, kind, sender, and for a
/// message or a request no deadline (0) and an unnumbered stream or a 5 s timeout.
fn envelope(kind: u8, sender: &str, payload: &[u8]) -> Bytes {
    let mut bytes = vec![0xC2, kind, sender.len() as u8];
    bytes.extend_from_slice(sender.as_bytes());
    match kind {
        1 => bytes.extend_from_slice(&[0, 0]),
        2 => {
            bytes.push(0);
            bytes.extend_from_slice(&5_000u32.to_le_bytes());
        }
        _ => {}
    }
    bytes.extend_from_slice(payload);
    bytes.into()
}

/// The sequence number `seq` as a batch of acknowledgements (a one-number LEB128 varint
/// delta from zero).
fn ack_batch(seq: u64) -> Bytes {
    let mut out = Vec::new();
    let mut rest = seq;
    loop {
        let byte = (rest & 0x7f) as u8;
        rest >>= 7;
        if rest == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.into()
}

/// The documented permission set of one host, as nats-server configuration.
fn host_user(host: &str) -> String {
    format!(
        r#"{{ user: "{host}", password: "pw-{host}", permissions: {{
            publish: {{ allow: ["courier.{LATTICE}.*.{host}.>"] }}
            subscribe: {{ allow: ["courier.{LATTICE}.>"] }}
            allow_responses: true
        }} }}"#
    )
}

fn as_user(host: &str) -> LatticeConfig {
    LatticeConfig::new(LATTICE, host).auth(Auth::UserPassword {
        user: host.to_string(),
        password: format!("pw-{host}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_per_host_permissions_the_lattice_works_and_a_host_cannot_publish_as_another() {
    let users = ["a", "b", "mallory"].map(host_user).join("\n");
    let server = NatsServer::builder()
        .config(format!("authorization {{ users = [\n{users}\n] }}"))
        .start();
    let a = Host::join_with(as_user("a"), &[server.url()]).await;
    let b = Host::join_with(as_user("b"), &[server.url()]).await;
    b.spawn(b.spec("pong", "pong").expose(Exposure::Lattice))
        .await;
    b.spawn(b.spec("echo", "echo").expose(Exposure::Lattice))
        .await;
    a.spawn(a.spec("insider", "probe").may_send("*")).await;
    a.sees("pong").await;
    a.sees("echo").await;

    // Everything the lattice does works within the permissions: probes and their answers,
    // heartbeats, messages and their batched acknowledgements, requests and replies.
    for _ in 0..3 {
        assert_eq!(a.probe("insider", "send:pong").await, "ok");
    }
    let reply = a
        .broker
        .request("echo", b"within the rules".to_vec(), 10 * SECOND)
        .await
        .expect("a request and its reply pass the permissions");
    assert_eq!(reply, b"within the rules");
    a.settles().await;
    // Acknowledged once in pong's mailbox, which may not have handled the last yet.
    assert!(b.broker.quiesce(10 * SECOND).await);
    let metrics = a.lattice().metrics();
    assert_eq!((metrics.sent, metrics.acked), (3, 3), "{metrics:?}");
    let delivered = || b.broker.metrics("pong").unwrap().delivered;
    assert_eq!(delivered(), 3);

    // Mallory, a member of the lattice, publishes as host `a`: the server refuses it.
    let mallory =
        async_nats::ConnectOptions::with_user_and_password("mallory".into(), "pw-mallory".into())
            // Its answers come under its own name, as a host's do.
            .custom_inbox_prefix(format!("courier.{LATTICE}.h.mallory.inbox"))
            .connect(server.url())
            .await
            .unwrap();
    mallory
        .publish(
            format!("courier.{LATTICE}.a.a.pong"),
            envelope(1, "insider", b"forged"),
        )
        .await
        .unwrap();
    // Then, on its own subject, a request as `host` (any host's own sender id): the server
    // keeps one connection's messages in order, so once its answer is back the forged one
    // was either delivered before it or never.
    let answer = mallory
        .request(
            format!("courier.{LATTICE}.a.mallory.pong"),
            envelope(2, "host", b""),
        )
        .await
        .expect("mallory may publish as itself");
    assert!(
        answer.headers.is_none(),
        "pong answered mallory's own request: {:?}",
        answer.headers
    );
    assert_eq!(
        delivered(),
        4,
        "mallory's own request reached pong, the message published as host `a` never did"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_id_that_another_host_runs_is_refused() {
    let server = NatsServer::start();
    let a = Host::join("a", &[server.url()]).await;
    let b = Host::join("b", &[server.url()]).await;
    a.spawn(
        a.spec("ping", "probe")
            .may_send("pong")
            .expose(Exposure::Lattice),
    )
    .await;
    b.spawn(b.spec("pong", "pong").expose(Exposure::Lattice))
        .await;
    b.sees("ping").await;
    a.sees("pong").await;

    // Mallory has no permissions to stop it, so the receiving host checks the sender.
    let mallory = async_nats::connect(server.url()).await.unwrap();
    let subject = format!("courier.{LATTICE}.a.mallory.pong");
    for (sender, owner) in [("ping", "host a runs it"), ("pong", "host b runs it")] {
        let answer = mallory
            .request(subject.clone(), envelope(2, sender, b""))
            .await
            .unwrap();
        let error = answer.headers.as_ref().and_then(|h| h.get("Courier-Error"));
        assert_eq!(
            error.map(|e| e.as_str()),
            Some("access-denied"),
            "mallory sending as `{sender}` ({owner})"
        );
    }
    // A publication as `ping` is dropped the same way.
    mallory
        .publish(
            format!("courier.{LATTICE}.t.mallory.news"),
            envelope(3, "ping", b"forged news"),
        )
        .await
        .unwrap();
    // Sending as itself, or as an id nobody serves to the lattice, is allowed.
    for sender in ["host", "mallorys-own"] {
        let answer = mallory
            .request(subject.clone(), envelope(2, sender, b""))
            .await
            .unwrap();
        assert!(answer.headers.is_none(), "{sender}: {:?}", answer.headers);
    }
    let delivered = || b.broker.metrics("pong").unwrap().delivered;
    assert_eq!(
        delivered(),
        2,
        "mallory's two allowed requests, nothing forged"
    );
    let forged = b.lattice().metrics().forged;
    assert_eq!(forged, 2, "the two forged requests");
    // Host a refuses the forged publication only if it hears the topic; host b's `pong`
    // does not subscribe to `news`, so nothing hears it. Host a's own message as `ping`
    // still goes through.
    assert_eq!(a.probe("ping", "send:pong").await, "ok");
    a.settles().await;
    assert!(b.broker.quiesce(10 * SECOND).await);
    assert_eq!(delivered(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_serving_hosts_acknowledgements_count() {
    let server = NatsServer::start();
    let a = Host::join_with(
        LatticeConfig::new(LATTICE, "a").ack_timeout(30 * SECOND),
        &[server.url()],
    )
    .await;
    a.spawn(a.spec("ping", "probe").may_send("*")).await;

    // Host `z` says it serves `pong` and takes what is sent to it without a word.
    let z = async_nats::connect(server.url()).await.unwrap();
    let mut to_pong = z
        .subscribe(format!("courier.{LATTICE}.a.*.pong"))
        .await
        .unwrap();
    z.publish(
        format!("courier.{LATTICE}.h.z.hb"),
        Bytes::from_static(br#"{"host":"z","served":["pong"]}"#),
    )
    .await
    .unwrap();
    z.flush().await.unwrap();
    a.sees("pong").await;

    assert_eq!(a.probe("ping", "send:pong").await, "ok");
    let message = tokio::time::timeout(5 * SECOND, to_pong.next())
        .await
        .expect("the message reaches z")
        .unwrap();
    // `courier.<lattice>.h.a.r.<incarnation>.<seq>`
    let reply = message.reply.expect("a reply subject").to_string();
    let tokens: Vec<&str> = reply.split('.').collect();
    let (incarnation, seq) = (tokens[5], tokens[6].parse::<u64>().unwrap());

    // Mallory, who serves nothing, acknowledges it on its own subject: not believed.
    let mallory = async_nats::connect(server.url()).await.unwrap();
    mallory
        .publish(
            format!("courier.{LATTICE}.k.mallory.a.{incarnation}"),
            ack_batch(seq),
        )
        .await
        .unwrap();
    mallory.flush().await.unwrap();
    tokio::time::sleep(SECOND / 2).await;
    let metrics = a.lattice().metrics();
    assert_eq!(
        (metrics.acked, metrics.awaiting_ack),
        (0, 1),
        "mallory's acknowledgement did not count: {metrics:?}"
    );

    // Host `y` acknowledges it before any heartbeat says it serves `pong` (a new replica's
    // first acknowledgements can overtake its heartbeat): held, and believed once the
    // heartbeat comes.
    let y = async_nats::connect(server.url()).await.unwrap();
    y.publish(
        format!("courier.{LATTICE}.k.y.a.{incarnation}"),
        ack_batch(seq),
    )
    .await
    .unwrap();
    y.flush().await.unwrap();
    tokio::time::sleep(SECOND / 2).await;
    assert_eq!(
        a.lattice().metrics().acked,
        0,
        "y is not known to serve pong"
    );
    y.publish(
        format!("courier.{LATTICE}.h.y.hb"),
        Bytes::from_static(br#"{"host":"y","replicated":["pong"]}"#),
    )
    .await
    .unwrap();
    y.flush().await.unwrap();
    eventually(
        "y's acknowledgement to count once its heartbeat came",
        || a.lattice().metrics().acked == 1,
    )
    .await;
    let metrics = a.lattice().metrics();
    assert_eq!(metrics.awaiting_ack, 0, "{metrics:?}");
    assert!(a.broker.quiesce(10 * SECOND).await);
    let books = a.broker.accounting();
    assert_eq!(books.dead_lettered, 0, "{books:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cannot_feed_another_hosts_stream() {
    let server = NatsServer::start();
    let a = Host::join("a", &[server.url()]).await;
    let b = Host::join("b", &[server.url()]).await;
    a.spawn(a.spec("ping", "probe").may_send("pong")).await;
    b.spawn(b.spec("pong", "pong").expose(Exposure::Lattice))
        .await;
    a.sees("pong").await;

    assert_eq!(a.probe("ping", "send:pong").await, "ok");
    a.settles().await;
    // Mallory learns host a's reply prefix, as any member can: from the wire, or by asking
    // whether a host answers for `a`.
    let mallory = async_nats::connect(server.url()).await.unwrap();
    let answer = mallory
        .request(format!("courier.{LATTICE}.h.a.who"), Bytes::new())
        .await
        .unwrap();
    let incarnation = answer
        .headers
        .as_ref()
        .and_then(|h| h.get("Courier-Incarnation"))
        .expect("a answers with its incarnation")
        .to_string();
    let prefix = format!("courier.{LATTICE}.h.a.r.{incarnation}");

    // Numbers 2 to 10 of a's stream to pong, sent by mallory with a's reply prefix: were
    // they taken, a's own number 2 would be dropped as a duplicate.
    for seq in 2u8..=10 {
        let mut payload = vec![0xC2, 1, 4];
        payload.extend_from_slice(b"ping");
        payload.extend_from_slice(&[0, seq, seq - 1]);
        payload.extend_from_slice(&u64::from(seq).to_le_bytes());
        mallory
            .publish_with_reply(
                format!("courier.{LATTICE}.a.mallory.pong"),
                format!("{prefix}.{}", 1000 + u64::from(seq)),
                payload.into(),
            )
            .await
            .unwrap();
    }
    mallory.flush().await.unwrap();
    eventually("b to refuse mallory's nine", || {
        b.lattice().metrics().malformed == 9
    })
    .await;
    assert_eq!(a.probe("ping", "send:pong").await, "ok");
    a.settles().await;
    assert!(b.broker.quiesce(10 * SECOND).await);
    assert_eq!(
        b.broker.metrics("pong").unwrap().delivered,
        2,
        "a's two messages, none of mallory's"
    );
    assert_eq!(b.lattice().metrics().duplicates, 0);
}
