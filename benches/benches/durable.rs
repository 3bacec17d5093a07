//! Durable components: the latency of one accepted message against one fsync on this disk,
//! durable ping to pong against the store's own floor, and recovery at start.
//!
//! - fsync floor: write 16 bytes in place (at the start of a file that already holds them,
//!   so its size never changes) and `sync_data` it, one after another: the least a durable
//!   write costs on this disk. Growing the file instead adds a metadata commit to each;
//! - store floor: `RedbStore::append` of one entry, one after another (one redb commit, one
//!   fsync each, with no Courier code above it). Its entries are never consumed, so its
//!   table grows through the run, where the counter's stays small;
//! - Courier: `Broker::send_durable` of one message to a durable `counter`, one after
//!   another: admitted, appended, queued, answered; meanwhile the counter's actor handles the
//!   messages and commits its batches, which share the store's writer with the appends.
//!
//! - over HTTP: one POST of `+1` at a time on one kept-alive connection to the ingress
//!   `courier run` serves, answered 202 once stored, to the durable `counter`; and the same
//!   to a `counter` in memory, which shows what HTTP itself costs;
//! - durable ping to pong: the host sends `1000` to a durable `ping`, whose handler sends
//!   1,000 numbered messages to a durable `pong` through its outbox (committed with ping's
//!   batch, then appended to pong's mailbox, then handled and committed by pong); one
//!   iteration is the batch, until the store holds no unconsumed message and no undelivered
//!   outbox entry. Against the store floor for it: as many `RedbStore::append` transactions
//!   as the Courier run committed, holding as many records between them as it wrote, with no
//!   Courier code;
//! - recovery: a host starting on a store that holds 10,000 durable counters' states and
//!   100,000 messages waiting for them (10 each): the store opened, the 10,000 spawned (each
//!   state loaded, each mailbox re-queued), then every message handled and committed.
//!   Against the same work with nothing stored: 10,000 counters spawned and 100,000
//!   messages sent to them in memory.
//!
//! The files live under `target/`, on the disk the repository is on: a temporary folder may
//! be a RAM disk, whose fsync costs nothing.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_benches::{Figure, Figures, Settings, Target, guest_built, measure, runtime, settle};
use courier_host_broker::{Broker, BrokerConfig, ComponentSpec};
use courier_host_core::{Engine, EngineConfig};
use courier_host_store::{Entry, Kind, RedbStore, Store};

fn main() {
    let settings = Settings::from_env();
    let mut criterion = settings.criterion();
    let mut figures = Figures::new("durable", &settings);
    if !guest_built("counter") {
        figures.note("counter is not built (run `cargo xtask build-guests`)");
        figures.write();
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/durable-bench")
        .join(std::process::id().to_string());
    std::fs::create_dir_all(&root).expect("making the bench folder");
    let rt = runtime();

    let mut group = criterion.benchmark_group("durable");
    let mut file = std::fs::File::create(root.join("floor")).expect("making the fsync file");
    file.write_all(&[0; 16]).unwrap();
    file.sync_all().unwrap();
    let fsync = measure(&mut group, "floor/fsync", &settings, |iters| {
        let started = Instant::now();
        for i in 0..iters {
            let mut record = [0; 16];
            record[..8].copy_from_slice(&i.to_le_bytes());
            file.write_all_at(&record, 0).unwrap();
            file.sync_data().unwrap();
        }
        started.elapsed()
    });

    let store = RedbStore::open_in_dir(root.join("store")).expect("opening the floor's store");
    let append = measure(&mut group, "floor/store_append", &settings, |iters| {
        rt.block_on(async {
            let started = Instant::now();
            for _ in 0..iters {
                let entry = Entry::new("counter", "host", Kind::Message, &b"+1"[..]);
                store.append(vec![entry]).await.expect("stored");
            }
            started.elapsed()
        })
    });
    drop(store);

    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open_in_dir(root.join("broker")).expect("opening the broker's store"));
    let engine = Engine::new(EngineConfig::default()).expect("building the engine");
    let broker = Broker::with_config(engine.clone(), BrokerConfig::default().store(store));
    let counter = courier_benches::load(&engine, "counter");
    rt.block_on(
        broker.spawn(
            ComponentSpec::new("counter", counter)
                .durable(true)
                .mailbox_capacity(1 << 16),
        ),
    )
    .expect("spawning the durable counter");
    let accepted = measure(&mut group, "broker/send_durable", &settings, |iters| {
        rt.block_on(async {
            let started = Instant::now();
            for _ in 0..iters {
                broker
                    .send_durable("counter", &b"+1"[..])
                    .await
                    .expect("accepted");
            }
            started.elapsed()
        })
    });
    // The same over HTTP: one POST at a time on a kept-alive connection to the ingress
    // `courier run` serves, to the durable counter and to one in memory beside it.
    rt.block_on(broker.spawn(ComponentSpec::new(
        "memory",
        courier_benches::load(&engine, "counter"),
    )))
    .expect("spawning the counter in memory");
    let address = serve_ingress(&rt, &broker);
    let mut http = Http::connect(address);
    let over_http = measure(&mut group, "http/durable", &settings, |iters| {
        let started = Instant::now();
        for _ in 0..iters {
            http.post_accepted("/components/counter/messages");
        }
        started.elapsed()
    });
    let over_http_memory = measure(&mut group, "http/memory", &settings, |iters| {
        let started = Instant::now();
        for _ in 0..iters {
            http.post_accepted("/components/memory/messages");
        }
        started.elapsed()
    });
    drop(http);
    group.finish();
    settle(&broker, Duration::from_secs(60));
    rt.block_on(broker.shutdown(Duration::from_secs(5)));
    drop(broker);

    figures.push(Figure::time(
        "fsync",
        "fsync floor: write 16 B in place and sync_data, one after another",
        fsync,
    ));
    figures.push(
        Figure::time(
            "store_append",
            "store floor: RedbStore::append of one entry, one after another",
            append,
        )
        .vs("fsync"),
    );
    figures.push(
        Figure::time(
            "send_durable",
            "Courier: Broker::send_durable of one message to a durable counter, one after another",
            accepted,
        )
        .vs("fsync"),
    );
    figures.push(Figure::time(
        "http_memory",
        "HTTP POST of one message to a counter in memory, one after another on one connection",
        over_http_memory,
    ));
    figures.push(
        Figure::time(
            "http_durable",
            "HTTP POST of one message to a durable counter, answered 202 once stored, one after \
             another on one connection",
            over_http,
        )
        .vs("fsync"),
    );
    if guest_built("ping") && guest_built("pong") {
        ping_pong(&mut criterion, &settings, &mut figures, &rt, &root);
    } else {
        figures.note("ping or pong is not built: durable ping to pong not measured");
    }
    recovery(&settings, &mut figures, &rt, &root);
    figures.write();
    criterion.final_summary();
    let _ = std::fs::remove_dir_all(&root);
}

/// Serve `broker`'s HTTP ingress, as `courier run` does, on a free loopback port.
fn serve_ingress(rt: &tokio::runtime::Runtime, broker: &Broker) -> std::net::SocketAddr {
    use courier_cli::ingress::{IngressConfig, router};
    use courier_cli::server::{ServerLimits, serve};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("binding the ingress");
    let address = listener.local_addr().expect("the ingress's address");
    let app = router(broker.clone(), IngressConfig::new(address));
    rt.spawn(serve(
        listener,
        app,
        ServerLimits::default(),
        std::future::pending(),
    ));
    address
}

/// A minimal HTTP/1.1 client on one kept-alive connection, so a figure holds the ingress's
/// work and not a client library's.
struct Http {
    stream: std::io::BufReader<std::net::TcpStream>,
    /// The `host` header: the ingress answers only requests addressed to itself.
    host: String,
}

impl Http {
    fn connect(address: std::net::SocketAddr) -> Http {
        let stream = std::net::TcpStream::connect(address).expect("connecting to the ingress");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Http {
            stream: std::io::BufReader::new(stream),
            host: address.to_string(),
        }
    }

    /// POST `+1` to `path` and read the answer, which must be 202.
    fn post_accepted(&mut self, path: &str) {
        use std::io::{BufRead, Read};
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: 2\r\n\r\n+1",
            self.host
        );
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .expect("sending the request");
        let mut line = String::new();
        self.stream
            .read_line(&mut line)
            .expect("reading the status");
        assert!(line.starts_with("HTTP/1.1 202"), "not accepted: {line}");
        let mut length = 0;
        loop {
            line.clear();
            self.stream.read_line(&mut line).expect("reading a header");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("a content length");
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).expect("reading the body");
    }
}

/// Messages durable ping sends per batch: under the outbox's bound of
/// `MAX_OUTBOX_MESSAGES` (1,024), so one handler call's sends all fit.
const PING_BATCH: u64 = 1000;

/// Wait until `store` holds no unconsumed message and no undelivered outbox entry, and the
/// broker has nothing in flight.
fn drained(store: &dyn Store, broker: &Broker, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let stats = store.stats();
        if stats.mailbox_entries == 0 && stats.outbox_entries == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store still held {} messages and {} outbox entries after {timeout:?}",
            stats.mailbox_entries,
            stats.outbox_entries
        );
        std::thread::sleep(Duration::from_micros(100));
    }
    settle(broker, timeout);
}

fn ping_pong(
    criterion: &mut criterion::Criterion,
    settings: &Settings,
    figures: &mut Figures,
    rt: &tokio::runtime::Runtime,
    root: &std::path::Path,
) {
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open_in_dir(root.join("ping_pong")).expect("opening the store"));
    let engine = Engine::new(EngineConfig::default()).expect("building the engine");
    let broker = Broker::with_config(engine.clone(), BrokerConfig::default().store(store.clone()));
    let pong = courier_benches::load(&engine, "pong");
    let ping = courier_benches::load(&engine, "ping");
    rt.block_on(async {
        let spec = ComponentSpec::new("pong", pong).durable(true);
        broker.spawn(spec.mailbox_capacity(1 << 16)).await?;
        let spec = ComponentSpec::new("ping", ping).durable(true);
        broker.spawn(spec.may_send("pong")).await
    })
    .expect("spawning durable ping and pong");

    let count = bytes::Bytes::from(PING_BATCH.to_string());
    let mut group = criterion.benchmark_group("durable");
    let before = store.stats();
    let mut batches = 0;
    let courier = measure(&mut group, "broker/ping_pong", settings, |iters| {
        batches += iters;
        rt.block_on(async {
            let started = Instant::now();
            for _ in 0..iters {
                broker
                    .send_durable("ping", count.clone())
                    .await
                    .expect("ping accepts its count");
                drained(&*store, &broker, Duration::from_secs(60));
            }
            started.elapsed()
        })
    });
    let after = store.stats();
    let answer = rt.block_on(broker.request("pong", &b""[..], Duration::from_secs(10)));
    let answer = answer.expect("pong answers");
    let counted = u64::from_le_bytes(answer[..8].try_into().expect("pong's count"));
    let out_of_order = u64::from_le_bytes(answer[8..16].try_into().expect("pong's order"));
    assert_eq!(
        (counted, out_of_order),
        (batches * PING_BATCH, 0),
        "pong must count every message ping was asked to send, in order"
    );
    rt.block_on(broker.shutdown(Duration::from_secs(5)));
    drop(broker);

    // The floor does what the Courier run's commits did per batch, with no Courier code:
    // as many transactions, holding the batch's messages twice (once in ping's outbox, once
    // in pong's mailbox). The consumption marks, states and delivered marks Courier also
    // writes are left out, so the floor is a floor.
    let commits_per_batch = (after.commits - before.commits) as f64 / batches.max(1) as f64;
    let transactions = (commits_per_batch.round() as u64).max(1);
    let records = 2 * PING_BATCH;
    let floor_store = RedbStore::open_in_dir(root.join("ping_pong_floor")).expect("floor store");
    let floor = measure(&mut group, "floor/ping_pong", settings, |iters| {
        rt.block_on(async {
            let started = Instant::now();
            for _ in 0..iters {
                for t in 0..transactions {
                    let share = records * (t + 1) / transactions - records * t / transactions;
                    let entries = (0..share)
                        .map(|i| {
                            Entry::new("pong", "ping", Kind::Message, i.to_le_bytes().to_vec())
                        })
                        .collect();
                    floor_store.append(entries).await.expect("stored");
                }
            }
            started.elapsed()
        })
    });
    group.finish();
    drop(floor_store);

    let per_message = |nanos: Option<f64>| nanos.map(|n| n / PING_BATCH as f64);
    figures.note(format!(
        "durable ping to pong: {commits_per_batch:.1} commits per batch of {PING_BATCH} \
         messages; the floor makes {transactions} transactions of {records} records in all"
    ));
    figures.push(Figure::time(
        "ping_pong_floor",
        &format!(
            "store floor for durable ping to pong: {transactions} appends holding {records} \
             records, per message"
        ),
        per_message(floor),
    ));
    figures.push(
        Figure::time(
            "ping_pong",
            &format!("durable ping to pong, batches of {PING_BATCH}, per message"),
            per_message(courier),
        )
        .vs("ping_pong_floor")
        // At least half the floor's rate: at most twice its time.
        .target(Target::RatioAtMost(2.0)),
    );
    figures.push(Figure::rate(
        "ping_pong_rate",
        &format!("durable ping to pong, batches of {PING_BATCH}, throughput (msg/s)"),
        per_message(courier).map(|n| 1e9 / n),
    ));
}

/// Durable counters a recovering host holds, and the messages waiting for each.
const RECOVERED_ACTORS: usize = 10_000;
const WAITING_EACH: usize = 10;

fn recovery(
    settings: &Settings,
    figures: &mut Figures,
    rt: &tokio::runtime::Runtime,
    root: &std::path::Path,
) {
    if !settings.recording {
        return;
    }
    // 10,000 instances hold about 61,000 memory mappings (see spawn.rs), under Linux's
    // default limit of 65,530; the pool has room for them and a few more.
    let engine = Engine::new(EngineConfig::default().max_instances(RECOVERED_ACTORS as u32 + 500))
        .expect("building the engine");
    let counter = courier_benches::load(&engine, "counter");
    let ids: Vec<String> = (0..RECOVERED_ACTORS)
        .map(|i| format!("counter-{i}"))
        .collect();
    let durable = |id: &String| ComponentSpec::new(id.as_str(), counter.clone()).durable(true);

    // What a crash leaves: every counter with a committed state, and ten stored messages
    // each that no counter has handled yet.
    let source = root.join("recovery_source");
    rt.block_on(async {
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open_in_dir(&source).expect("opening the store"));
        let broker =
            Broker::with_config(engine.clone(), BrokerConfig::default().store(store.clone()));
        for id in &ids {
            broker.spawn(durable(id)).await.expect("spawning a counter");
            broker.send_durable(id, &b"+1"[..]).await.expect("accepted");
        }
        drained(&*store, &broker, Duration::from_secs(120));
        broker.shutdown(Duration::from_secs(10)).await;
        drop(broker);
        drop(store);
        let store = RedbStore::open_in_dir(&source).expect("reopening the store");
        for chunk in ids.chunks(1000) {
            let entries = chunk
                .iter()
                .flat_map(|id| (0..WAITING_EACH).map(move |_| id))
                .map(|id| Entry::new(id.as_str(), "host", Kind::Message, &b"+1"[..]))
                .collect();
            store.append(entries).await.expect("stored");
        }
    });
    let waiting = RECOVERED_ACTORS * WAITING_EACH;

    let rounds = settings.pick(5, 2);
    let (mut ready, mut done, mut memory) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let dir = root.join(format!("recovery_{round}"));
        std::fs::create_dir_all(&dir).expect("making the round's folder");
        for file in std::fs::read_dir(&source).expect("listing the store") {
            let file = file.expect("listing the store");
            std::fs::copy(file.path(), dir.join(file.file_name())).expect("copying the store");
        }
        rt.block_on(async {
            let started = Instant::now();
            let store: Arc<dyn Store> =
                Arc::new(RedbStore::open_in_dir(&dir).expect("opening the store"));
            let broker =
                Broker::with_config(engine.clone(), BrokerConfig::default().store(store.clone()));
            for id in &ids {
                broker
                    .spawn(durable(id))
                    .await
                    .expect("recovering a counter");
            }
            ready.push(started.elapsed().as_nanos() as f64);
            drained(&*store, &broker, Duration::from_secs(300));
            done.push(started.elapsed().as_nanos() as f64);
            let last = broker.request(&ids[ids.len() - 1], &b""[..], Duration::from_secs(10));
            let seen = u64::from_le_bytes(last.await.expect("answers")[..8].try_into().unwrap());
            assert_eq!(
                seen,
                1 + WAITING_EACH as u64,
                "a counter recovered its state and mailbox"
            );
            broker.shutdown(Duration::from_secs(10)).await;
        });
        // The same work with nothing stored: spawn as many counters and send as many
        // messages in memory.
        rt.block_on(async {
            let started = Instant::now();
            let broker = Broker::new(engine.clone());
            for id in &ids {
                let spec = ComponentSpec::new(id.as_str(), counter.clone());
                broker.spawn(spec).await.expect("spawning a counter");
            }
            for id in &ids {
                for _ in 0..WAITING_EACH {
                    broker.send(id, &b"+1"[..]).expect("room in the mailbox");
                }
            }
            settle(&broker, Duration::from_secs(300));
            memory.push(started.elapsed().as_nanos() as f64);
            broker.shutdown(Duration::from_secs(10)).await;
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
    let median = courier_benches::sampling::median;
    figures.push(Figure::time(
        "recovery_memory",
        &format!(
            "nothing stored: spawn {RECOVERED_ACTORS} counters and handle {waiting} messages \
             sent in memory (median of {rounds})"
        ),
        median(memory),
    ));
    figures.push(
        Figure::time(
            "recovery_ready",
            &format!(
                "recovery: open a store of {RECOVERED_ACTORS} durable counters' states and \
                 {waiting} waiting messages, spawn every counter (states loaded, mailboxes \
                 re-queued) (median of {rounds})"
            ),
            median(ready),
        )
        .vs("recovery_memory"),
    );
    figures.push(
        Figure::time(
            "recovery_done",
            &format!(
                "recovery as above, until every waiting message is handled and committed \
                 (median of {rounds})"
            ),
            median(done),
        )
        .vs("recovery_memory"),
    );
}
