//! The lattice: two hosts in one process on one NATS server, against bare async-nats
//! between two clients of that same server, measured in the same run.
//!
//! - NATS floors: client 1 publishes batches of 8-byte messages that client 2's subscriber
//!   receives, timed until it has received the whole batch (per message and messages per
//!   second); and request/reply round trips, client 1 calling `request` in a loop against a
//!   responder task on client 2 that publishes each request's payload back to its reply
//!   subject (median, and p99 timed one by one);
//! - a third floor, bare async-nats again, sending what the lattice puts on the wire for a
//!   message: the same envelope before the payload (kind and sender in a few bytes) and a
//!   reply subject per message, and from client 2
//!   acknowledgements gathered while messages are ready and sent as one message per batch,
//!   timed until client 1 has every acknowledgement. The gap between the first floor and this one is the lattice's wire
//!   protocol; the gap between this one and Courier is the hosts' own work;
//! - remote fire-and-forget: hosts A and B, each a broker joined to the lattice with
//!   `courier-host-lattice`. The host sends `10000` to `ping` on A, whose handler sends
//!   10,000 numbered 8-byte messages to `pong`, exposed on B; one iteration is the batch,
//!   timed until A's lattice counters show all of it acknowledged by B (acknowledgements are
//!   pipelined: ping does not wait for them). Compared with the pub/sub floor; target:
//!   throughput at least 0.35× the floor's. The same batch is also timed until pong on B has
//!   handled all of it;
//! - remote request: `Broker::request` from the host on A to `echo` on B, round trip, against
//!   the NATS round trip; target: median at most 1.3× the floor's;
//! - local: ping to pong on one broker (as in `fire_and_forget.rs`), on a broker without a
//!   lattice and on host A, joined to the lattice; the in-process path should not change;
//! - remote durable: a durable ping on host C sending to a durable pong on host D, each
//!   host with its store (redb, in `target/lattice-durable-bench/`): every message stored
//!   by the sender's commit, sent from its outbox once acknowledged the one before, and
//!   stored by the receiver before it acknowledges. Timed from the first message accepted
//!   until pong has handled all, per message, against the remote fire-and-forget figure.
//!
//! Without a nats-server (see `courier_test_support::nats`) or the guests, the benchmark
//! prints a note, records its figures as not measured and measures nothing.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_benches::native::Timing;
use courier_benches::sampling::percentile;
use courier_benches::{Figure, Figures, Settings, Target, guest_built, measure, runtime, settle};
use courier_host_broker::{Broker, BrokerConfig, ComponentSpec, Exposure};
use courier_host_core::{Engine, EngineConfig};
use courier_host_lattice::{Lattice, LatticeConfig, LatticeMetrics};
use courier_host_store::{RedbStore, Store};
use courier_test_support::nats::NatsServer;
use futures_util::{FutureExt, StreamExt};
use tokio::runtime::Runtime;

/// Messages per batch, as in `fire_and_forget.rs`.
const BATCH: u64 = 10_000;
/// The size of ping's messages (a u64 sequence number) and of the floor's.
const PAYLOAD: usize = 8;
/// What the round trips carry, as in `request_response.rs`.
const HI: &[u8] = b"hi";
/// The lattice both hosts join.
const LATTICE: &str = "bench";
/// Subjects of the NATS floors, outside the lattice's `courier.bench.>`.
const PUBSUB_SUBJECT: &str = "floor.pubsub";
const REQUEST_SUBJECT: &str = "floor.echo";
/// The wire-pattern floor's subjects, shaped like the lattice's: an actor subject with the
/// sending host's name, reply subjects `<prefix>.<seq>`, and acknowledgements in batches on
/// a subject of their own.
const WIRE_SUBJECT: &str = "floor.wire.a.host-a.pong";
const WIRE_REPLIES: &str = "floor.wire.h.host-a.r.0123456789abcdef";
const WIRE_ACKS: &str = "floor.wire.k.host-b.host-a.0123456789abcdef";
/// The id of the pong on host A and on the broker without a lattice, for the local figures:
/// `pong` itself is on host B.
const LOCAL_PONG: &str = "local-pong";
/// How long a request may take before the benchmark calls it a bug.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Long enough for any batch; a batch that takes longer has found a bug.
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a batch's end is looked for: the interval of `courier_benches::settle`.
const POLL: Duration = Duration::from_micros(20);
/// The target for the local figure with a lattice attached: the same code path, so the
/// same figure within the noise of two measurements.
const LOCAL_UNCHANGED: f64 = 1.1;

fn main() {
    let settings = Settings::from_env();
    let mut criterion = settings.criterion();
    let mut figures = Figures::new("lattice", &settings);

    let missing: Vec<&str> = ["ping", "pong", "echo"]
        .into_iter()
        .filter(|guest| !guest_built(guest))
        .collect();
    if !missing.is_empty() {
        skip(
            &mut figures,
            &format!(
                "{} not built (run `cargo xtask build-guests`)",
                missing.join(", ")
            ),
        );
        return;
    }
    let server = match start_nats_server() {
        Ok(server) => server,
        Err(why) => {
            skip(
                &mut figures,
                &format!("no nats-server could be started: {why}"),
            );
            return;
        }
    };
    println!("nats-server on {}", server.url());
    let url = server.url();
    let rt = runtime();

    // The floors: two plain clients of the same server.
    let (client_1, client_2) = rt.block_on(async {
        let connect = async || {
            async_nats::connect(url.as_str())
                .await
                .unwrap_or_else(|err| panic!("connecting to {url}: {err}"))
        };
        (connect().await, connect().await)
    });
    let received = Arc::new(AtomicU64::new(0));
    let wire_acked = Arc::new(AtomicU64::new(0));
    rt.block_on(start_floor_services(
        &client_1,
        &client_2,
        received.clone(),
        wire_acked.clone(),
    ));

    // The hosts. One engine, so each guest is compiled once; each host has its broker.
    let engine = Engine::new(EngineConfig::default()).expect("building the engine");
    let load = |name: &str| courier_benches::load(&engine, name);
    let (ping, pong, echo) = (load("ping"), load("pong"), load("echo"));
    let spawn = |broker: &Broker, spec: ComponentSpec| {
        let id = spec.id().clone();
        rt.block_on(broker.spawn(spec))
            .unwrap_or_else(|err| panic!("spawning {id}: {err}"));
    };
    let join = |broker: &Broker, host: &str| {
        let config = LatticeConfig::new(LATTICE, host).server(url.as_str());
        rt.block_on(Lattice::join(broker, config))
            .unwrap_or_else(|err| panic!("joining the lattice as {host}: {err}"))
    };
    let batch = BATCH as usize;

    let host_b = Broker::new(engine.clone());
    spawn(
        &host_b,
        ComponentSpec::new("pong", pong.clone())
            .expose(Exposure::Lattice)
            .mailbox_capacity(batch),
    );
    spawn(
        &host_b,
        ComponentSpec::new("echo", echo).expose(Exposure::Lattice),
    );
    let lattice_b = join(&host_b, "host-b");

    let host_a = Broker::new(engine.clone());
    let lattice_a = join(&host_a, "host-a");
    spawn(
        &host_a,
        ComponentSpec::new("ping", ping.clone())
            .may_send("pong")
            .may_send(LOCAL_PONG),
    );
    spawn(
        &host_a,
        ComponentSpec::new(LOCAL_PONG, pong.clone()).mailbox_capacity(batch),
    );
    for id in ["pong", "echo"] {
        assert!(
            rt.block_on(lattice_a.wait_for(id, TIMEOUT)),
            "host A never heard that host B serves {id}"
        );
    }
    let reply = rt.block_on(host_a.request("echo", HI.to_vec(), TIMEOUT));
    assert!(
        matches!(reply.as_deref(), Ok(HI)),
        "echo on host B should answer host A, got {reply:?}"
    );

    // The same local pair on a broker with no lattice.
    let alone = Broker::new(engine.clone());
    spawn(
        &alone,
        ComponentSpec::new("ping", ping).may_send(LOCAL_PONG),
    );
    spawn(
        &alone,
        ComponentSpec::new(LOCAL_PONG, pong).mailbox_capacity(batch),
    );

    let count = BATCH.to_string().into_bytes();
    let local_count = format!("{BATCH}@{LOCAL_PONG}").into_bytes();
    let mut group = criterion.benchmark_group("lattice");

    group.throughput(criterion::Throughput::Elements(BATCH));
    let nats_pubsub = measure(&mut group, "nats_floor/pubsub", &settings, |iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let expected = received.load(Ordering::Relaxed) + BATCH;
            let client = client_1.clone();
            let started = Instant::now();
            rt.spawn(async move {
                for seq in 0..BATCH {
                    let payload = Bytes::copy_from_slice(&seq.to_le_bytes());
                    client
                        .publish(PUBSUB_SUBJECT, payload)
                        .await
                        .expect("the client takes the publication");
                }
            });
            wait_until("the subscriber to receive the batch", || {
                received.load(Ordering::Relaxed) >= expected
            });
            total += started.elapsed();
        }
        total
    });

    let mut wire_seq = 0u64;
    let nats_wire = measure(&mut group, "nats_floor/wire_pattern", &settings, |iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let expected = wire_acked.load(Ordering::Relaxed) + BATCH;
            let client = client_1.clone();
            let first = wire_seq;
            wire_seq += BATCH;
            let started = Instant::now();
            rt.spawn(async move {
                for seq in first..first + BATCH {
                    // The envelope: tag, kind (a message), the sender's length and name,
                    // the deadline (milliseconds since the epoch: a six-byte varint) and
                    // the message's stream numbers (two varints, short ones here).
                    let mut payload = Vec::with_capacity(15 + 8);
                    payload.extend_from_slice(&[0xC2, 1, 4]);
                    payload.extend_from_slice(b"ping");
                    payload.extend_from_slice(&[0x80, 0xa0, 0xf1, 0xc2, 0xb1, 0x34]);
                    payload.extend_from_slice(&[0x01, 0x00]);
                    payload.extend_from_slice(&seq.to_le_bytes());
                    client
                        .publish_with_reply(
                            WIRE_SUBJECT,
                            format!("{WIRE_REPLIES}.{seq}"),
                            payload.into(),
                        )
                        .await
                        .expect("the client takes the publication");
                }
            });
            wait_until("client 1 to receive every acknowledgement", || {
                wire_acked.load(Ordering::Relaxed) >= expected
            });
            total += started.elapsed();
        }
        total
    });

    group.throughput(criterion::Throughput::Elements(1));
    let nats_request = measure(&mut group, "nats_floor/request", &settings, |iters| {
        nats_requests(&rt, &client_1, iters, Timing::Total)
            .into_iter()
            .sum()
    });

    group.throughput(criterion::Throughput::Elements(BATCH));
    let mut local_batches = 0u64;
    let local_alone = measure(&mut group, "local/ping_pong", &settings, |iters| {
        local_batches += iters;
        local_ping_pong(&alone, &local_count, iters)
    });
    let mut local_lattice_batches = 0u64;
    let local_joined = measure(&mut group, "local/ping_pong_joined", &settings, |iters| {
        local_lattice_batches += iters;
        local_ping_pong(&host_a, &local_count, iters)
    });

    let mut remote_batches = 0u64;
    let remote_acked = measure(&mut group, "remote/ping_pong_acked", &settings, |iters| {
        remote_batches += iters;
        remote_ping_pong(&host_a, &lattice_a, &host_b, &count, iters, End::Acked)
    });
    let remote_handled = measure(&mut group, "remote/ping_pong_handled", &settings, |iters| {
        remote_batches += iters;
        remote_ping_pong(&host_a, &lattice_a, &host_b, &count, iters, End::Handled)
    });

    group.throughput(criterion::Throughput::Elements(1));
    let remote_request = measure(&mut group, "remote/request", &settings, |iters| {
        lattice_requests(&rt, &host_a, iters, Timing::Total)
            .into_iter()
            .sum()
    });
    group.finish();

    let per_message = |batch: Option<f64>| batch.map(|ns| ns / BATCH as f64);
    let rate = |batch: Option<f64>| per_message(batch).map(|ns| 1e9 / ns);
    let batch_label = format!("{PAYLOAD} B, batches of {BATCH}");
    figures.push(Figure::time(
        "nats_pubsub",
        &format!("NATS floor: pub/sub between two clients, {batch_label}, per message"),
        per_message(nats_pubsub),
    ));
    figures.push(Figure::rate(
        "nats_pubsub_rate",
        &format!("NATS floor: pub/sub, {batch_label}, throughput (msg/s)"),
        rate(nats_pubsub),
    ));
    figures.push(
        Figure::time(
            "nats_wire",
            &format!(
                "NATS, the lattice's wire pattern (an envelope and a reply subject per message, \
                 acknowledgements back in batches), {batch_label}, until all acknowledged, per \
                 message"
            ),
            per_message(nats_wire),
        )
        .vs("nats_pubsub"),
    );
    figures.push(Figure::time(
        "nats_request",
        "NATS floor: request/reply round trip (responder task on a second client), median",
        nats_request,
    ));
    figures.push(Figure::time(
        "local",
        &format!("local ping to pong, broker in no lattice, {batch_label}, per message"),
        per_message(local_alone),
    ));
    figures.push(
        Figure::time(
            "local_joined",
            &format!(
                "local ping to pong, broker joined to the lattice, {batch_label}, per message"
            ),
            per_message(local_joined),
        )
        .vs("local")
        .target(Target::RatioAtMost(LOCAL_UNCHANGED)),
    );
    let remote_label = format!("remote ping (host A) → pong (host B), {batch_label}");
    figures.push(
        Figure::time(
            "remote",
            &format!("{remote_label}, until all acknowledged, per message"),
            per_message(remote_acked),
        )
        .vs("nats_pubsub"),
    );
    let remote_rate = Figure::rate(
        "remote_rate",
        &format!("{remote_label}, until all acknowledged, throughput (msg/s)"),
        rate(remote_acked),
    )
    .vs("nats_pubsub_rate");
    // The target is a share of the floor measured in this run: 0.35× its rate.
    figures.push(match rate(nats_pubsub) {
        Some(floor) => remote_rate.target(Target::AtLeast(0.35 * floor)),
        None => remote_rate,
    });
    figures.push(
        Figure::time(
            "remote_vs_wire",
            &format!(
                "{remote_label}, until all acknowledged, per message (against the wire pattern)"
            ),
            per_message(remote_acked),
        )
        .vs("nats_wire"),
    );
    figures.push(
        Figure::time(
            "remote_handled",
            &format!("{remote_label}, until pong on B has handled all, per message"),
            per_message(remote_handled),
        )
        .vs("nats_pubsub"),
    );
    figures.push(
        Figure::time(
            "remote_request",
            "Broker::request host A → echo on host B, round trip, median",
            remote_request,
        )
        .vs("nats_request")
        .target(Target::RatioAtMost(1.3)),
    );

    if settings.recording {
        // Every round trip timed on its own, for the tail criterion's means hide.
        let count = settings.pick(20_000, 5_000);
        let p99 = |times: Vec<Duration>| {
            percentile(
                times.into_iter().map(|t| t.as_nanos() as f64).collect(),
                0.99,
            )
        };
        let floor = p99(nats_requests(&rt, &client_1, count, Timing::Each));
        let courier = p99(lattice_requests(&rt, &host_a, count, Timing::Each));
        figures.push(Figure::time(
            "nats_request_p99",
            &format!("NATS floor: request/reply round trip, p99 of {count} timed one by one"),
            floor,
        ));
        figures.push(
            Figure::time(
                "remote_request_p99",
                &format!(
                    "Broker::request host A → echo on host B, p99 of {count} timed one by one"
                ),
                courier,
            )
            .vs("nats_request_p99"),
        );
    }

    if settings.recording {
        let count = settings.pick(2_000, 300);
        let durable = durable_remote(&rt, &engine, &url, count);
        figures.push(
            Figure::time(
                "remote_durable",
                &format!(
                    "durable ping (host C) → durable pong (host D), each stored before it is \
                     acknowledged, {count} messages, until pong has handled all, per message"
                ),
                durable,
            )
            .vs("remote_handled"),
        );
        figures.note(
            "remote_durable: a durable sender has one message on its way to another host at a \
             time (the next goes once this one is acknowledged), and the receiver stores each \
             on its own, so the figure is a round trip and a commit per message",
        );
    }

    check_books(
        &rt,
        &mut figures,
        [
            (&alone, "broker without a lattice", local_batches),
            (&host_a, "host A", local_lattice_batches),
            (&host_b, "host B", remote_batches),
        ],
        lattice_a.metrics(),
    );
    figures.write();
    criterion.final_summary();

    rt.block_on(async {
        lattice_a.leave(Duration::from_secs(1)).await;
        lattice_b.leave(Duration::from_secs(1)).await;
        for broker in [&host_a, &host_b, &alone] {
            broker.shutdown(Duration::from_secs(5)).await;
        }
    });
    drop(server);
}

/// Record why nothing was measured: a note (printed) and the main figures as not measured.
fn skip(figures: &mut Figures, why: &str) {
    figures.note(format!("lattice benchmarks skipped: {why}"));
    for (key, label) in [
        (
            "nats_pubsub",
            "NATS floor: publish → subscriber, per message",
        ),
        (
            "nats_request",
            "NATS floor: request/reply round trip, median",
        ),
        (
            "remote",
            "remote ping (host A) to pong (host B), per message",
        ),
        (
            "remote_request",
            "Broker::request host A → echo on host B, round trip, median",
        ),
    ] {
        figures.push(Figure::time(key, &format!("{label} (skipped)"), None));
    }
    figures.write();
}

/// A nats-server on a free loopback port, or why there is none. The harness panics with
/// its reason (no binary, and how to get one; or the server's output); that panic is
/// caught and its message returned, so the benchmark can say so and end.
fn start_nats_server() -> Result<NatsServer, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = std::panic::catch_unwind(NatsServer::start);
    std::panic::set_hook(hook);
    started.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the harness gave no reason".to_string())
    })
}

/// The floors' far side on `client`: a subscriber that counts what it receives into
/// `received`, a responder that answers each request with its payload, and the wire
/// pattern's receiver, which reads a message's kind and sender and acknowledges it; and on
/// `near`, the subscriber that counts those acknowledgements into `acked`. Returns once the
/// server has every subscription.
async fn start_floor_services(
    near: &async_nats::Client,
    client: &async_nats::Client,
    received: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
) {
    let subscribe = async |client: &async_nats::Client, subject: String| {
        client
            .subscribe(subject.clone())
            .await
            .unwrap_or_else(|err| panic!("subscribing to {subject}: {err}"))
    };
    let mut messages = subscribe(client, PUBSUB_SUBJECT.into()).await;
    let mut requests = subscribe(client, REQUEST_SUBJECT.into()).await;
    let mut wire = subscribe(client, WIRE_SUBJECT.into()).await;
    let mut acks = subscribe(near, WIRE_ACKS.to_string()).await;
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            black_box(message.payload.len());
            received.fetch_add(1, Ordering::Relaxed);
        }
    });
    let acknowledger = client.clone();
    tokio::spawn(async move {
        // As the lattice does: acknowledgements gathered while messages are ready, then
        // sent as one message carrying the sequence numbers.
        let mut seqs: Vec<u8> = Vec::new();
        loop {
            let next = match wire.next().now_or_never() {
                Some(next) => next,
                None => {
                    if !seqs.is_empty() {
                        acknowledger
                            .publish(WIRE_ACKS, std::mem::take(&mut seqs).into())
                            .await
                            .expect("the client takes the acknowledgements");
                    }
                    wire.next().await
                }
            };
            let Some(message) = next else { return };
            // Read the envelope as a host does: kind, then the sender.
            let payload = &message.payload;
            let sender_len = usize::from(payload[2]);
            black_box((payload[1], &payload[3..3 + sender_len]));
            black_box(payload.len());
            if let Some(reply) = message.reply {
                let seq: u64 = reply
                    .rsplit('.')
                    .next()
                    .and_then(|seq| seq.parse().ok())
                    .expect("a reply subject ends in its sequence number");
                seqs.extend_from_slice(&seq.to_le_bytes());
            }
        }
    });
    tokio::spawn(async move {
        while let Some(ack) = acks.next().await {
            let seqs = ack.payload.len() as u64 / 8;
            acked.fetch_add(black_box(seqs), Ordering::Relaxed);
        }
    });
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                responder
                    .publish(reply, request.payload)
                    .await
                    .expect("the client takes the reply");
            }
        }
    });
    // The server handles a connection's commands in order: once it answers a flush's ping,
    // it has that connection's subscriptions.
    for client in [near, client] {
        client.flush().await.expect("flushing the subscriptions");
    }
}

/// Poll `done` every [`POLL`] from the thread that drives the benchmark.
///
/// # Panics
///
/// If it is not done within [`BATCH_TIMEOUT`]: a batch that never ends has found a bug.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BATCH_TIMEOUT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "waited {BATCH_TIMEOUT:?} for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// `iters` batches of ping to its local pong on `broker`, each until nothing is in flight.
fn local_ping_pong(broker: &Broker, count: &[u8], iters: u64) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        broker
            .send("ping", count.to_vec())
            .expect("ping's mailbox has room");
        settle(broker, BATCH_TIMEOUT);
    }
    started.elapsed()
}

/// Where a remote batch's time ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Host A's lattice counters show every message acknowledged by host B.
    Acked,
    /// Host B's broker has handled every message (pong's handler ran for each).
    Handled,
}

/// `iters` batches of ping on host A to pong on host B, timed until `end`. Between
/// batches, untimed, both hosts settle: every message acknowledged and handled.
fn remote_ping_pong(
    host_a: &Broker,
    lattice_a: &Lattice,
    host_b: &Broker,
    count: &[u8],
    iters: u64,
    end: End,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let acked = lattice_a.metrics().acked + BATCH;
        let handled = host_b.accounting().delivered + BATCH;
        let started = Instant::now();
        host_a
            .send("ping", count.to_vec())
            .expect("ping's mailbox has room");
        match end {
            End::Acked => wait_until("host B's acknowledgements", || {
                lattice_a.metrics().acked >= acked
            }),
            End::Handled => wait_until("pong on host B to handle the batch", || {
                host_b.accounting().delivered >= handled
            }),
        }
        total += started.elapsed();
        wait_until("the batch to end on both hosts", || {
            lattice_a.metrics().awaiting_ack == 0 && host_b.accounting().delivered >= handled
        });
        let metrics = lattice_a.metrics();
        assert!(
            metrics.acked >= acked && metrics.sent == metrics.acked,
            "every remote message acknowledged, none refused or lost: {metrics:?}"
        );
        settle(host_a, BATCH_TIMEOUT);
        settle(host_b, BATCH_TIMEOUT);
    }
    total
}

/// Make `count` NATS requests from a task on the runtime and return their times.
fn nats_requests(
    rt: &Runtime,
    client: &async_nats::Client,
    count: u64,
    timing: Timing,
) -> Vec<Duration> {
    let client = client.clone();
    let task = rt.spawn(async move {
        // Written out rather than through `Timing::run`, whose future is not `Send`.
        let mut times = Vec::new();
        let started = Instant::now();
        for _ in 0..count {
            let call_started = Instant::now();
            let reply = client
                .request(REQUEST_SUBJECT, Bytes::from_static(HI))
                .await;
            if timing == Timing::Each {
                times.push(call_started.elapsed());
            }
            black_box(reply.expect("the responder answers"));
        }
        if timing == Timing::Total {
            times.push(started.elapsed());
        }
        times
    });
    rt.block_on(task).expect("the client task finishes")
}

/// Make `count` requests from the host on `host_a` to `echo` on host B, from a task on the
/// runtime as `request_response.rs` does, and return their times.
fn lattice_requests(rt: &Runtime, host_a: &Broker, count: u64, timing: Timing) -> Vec<Duration> {
    let broker = host_a.clone();
    let task = rt.spawn(async move {
        let mut times = Vec::new();
        let started = Instant::now();
        for _ in 0..count {
            let call_started = Instant::now();
            let reply = broker
                .request("echo", Bytes::from_static(HI), TIMEOUT)
                .await;
            if timing == Timing::Each {
                times.push(call_started.elapsed());
            }
            black_box(reply.expect("echo on host B answers"));
        }
        if timing == Timing::Total {
            times.push(started.elapsed());
        }
        times
    });
    rt.block_on(task).expect("the client task finishes")
}

/// Note anything that makes the figures suspect: a refusal or dead letter on any broker,
/// a remote message not acknowledged, or a pong that did not receive every message in
/// order.
fn check_books(
    rt: &Runtime,
    figures: &mut Figures,
    brokers: [(&Broker, &str, u64); 3],
    remote: LatticeMetrics,
) {
    if remote.sent != remote.acked || remote.refused_here > 0 {
        figures.note(format!(
            "host A's lattice did not get every message acknowledged: {remote:?}"
        ));
    }
    for (broker, name, batches) in brokers {
        let books = broker.accounting();
        if books.refused + books.dead_lettered > 0 {
            figures.note(format!(
                "{name} refused {} and dead-lettered {} messages: the figures are suspect",
                books.refused, books.dead_lettered
            ));
        }
        let pong = if name == "host B" { "pong" } else { LOCAL_PONG };
        let reply = rt.block_on(broker.request(pong, Vec::new(), TIMEOUT));
        let field = |reply: &[u8], at: usize| {
            reply
                .get(at..at + 8)
                .and_then(|bytes| bytes.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let counts = reply
            .ok()
            .and_then(|reply| Some((field(&reply, 0)?, field(&reply, 8)?)));
        let expected = batches * BATCH;
        match counts {
            Some((received, 0)) if received == expected => {}
            Some((received, out_of_order)) => figures.note(format!(
                "{pong} on {name} received {received} messages ({out_of_order} out of order) \
                 where ping was asked to send {expected}"
            )),
            None => figures.note(format!("{pong} on {name} did not report its count")),
        }
    }
}

/// A durable ping on host C sends `count` messages to a durable pong on host D, over the
/// same NATS server; the time per message from the first accepted until pong has handled
/// all. Hosts of their own, each with a store, so the other figures' hosts keep no disk.
fn durable_remote(rt: &Runtime, engine: &Engine, url: &str, count: u64) -> Option<f64> {
    // Sends per handler call: a durable handler's outbox holds at most 1,024.
    const PER_CALL: u64 = 100;
    let root = courier_benches::results::target_dir().join("lattice-durable-bench");
    let _ = std::fs::remove_dir_all(&root);
    let host = |name: &str| {
        let store: Arc<dyn Store> = Arc::new(
            RedbStore::open_in_dir(root.join(name)).expect("opening a durable host's store"),
        );
        Broker::with_config(engine.clone(), BrokerConfig::default().store(store))
    };
    let (host_c, host_d) = (host("c"), host("d"));
    let load = |name: &str| courier_benches::load(engine, name);
    let (lattice_c, lattice_d) = rt.block_on(async {
        host_d
            .spawn(
                ComponentSpec::new("dpong", load("pong"))
                    .durable(true)
                    .expose(Exposure::Lattice),
            )
            .await
            .expect("spawning dpong");
        let join = async |broker: &Broker, name: &str| {
            let config = LatticeConfig::new(LATTICE, name).server(url);
            Lattice::join(broker, config)
                .await
                .unwrap_or_else(|err| panic!("joining the lattice as {name}: {err}"))
        };
        let lattice_d = join(&host_d, "host-d").await;
        let lattice_c = join(&host_c, "host-c").await;
        host_c
            .spawn(
                ComponentSpec::new("dping", load("ping"))
                    .durable(true)
                    .may_send("dpong"),
            )
            .await
            .expect("spawning dping");
        assert!(
            lattice_c.wait_for("dpong", TIMEOUT).await,
            "host C never heard that host D serves dpong"
        );
        (lattice_c, lattice_d)
    });
    let handled = host_d.accounting().delivered + count;
    let started = Instant::now();
    rt.block_on(async {
        for _ in 0..count / PER_CALL {
            host_c
                .send_durable("dping", format!("{PER_CALL}@dpong"))
                .await
                .expect("dping takes its message");
        }
    });
    wait_until("dpong on host D to handle every message", || {
        host_d.accounting().delivered >= handled
    });
    let took = started.elapsed();
    let counts = rt
        .block_on(host_d.request("dpong", Vec::new(), TIMEOUT))
        .expect("dpong answers");
    assert_eq!(
        counts[..8],
        (count / PER_CALL * PER_CALL).to_le_bytes(),
        "each message handled once"
    );
    rt.block_on(async {
        lattice_c.leave(Duration::from_secs(1)).await;
        lattice_d.leave(Duration::from_secs(1)).await;
        host_c.shutdown(Duration::from_secs(5)).await;
        host_d.shutdown(Duration::from_secs(5)).await;
    });
    Some(took.as_nanos() as f64 / (count / PER_CALL * PER_CALL) as f64)
}
