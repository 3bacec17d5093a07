//! Durable components across hosts: a durable ping on host A sends numbered messages to a
//! durable pong on host B over a two-server NATS cluster, while host A, host B and a NATS
//! server are killed with SIGKILL at random moments under load and started again. Every
//! message ping was told `Ok` for is counted by pong once and in order, and a durable counter
//! on B fed over HTTP counts every 202.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use courier_test_support::nats::NatsServer;

use crate::durable::{Moments, Tally, ask, count, torture_seed};
use crate::run::{Courier, STOP_TIMEOUT, client, manifest};

/// Host B: the durable pong, exposed to the lattice, and a durable counter fed over HTTP.
const HOST_B: &str = r#"
[runtime]
cache_dir = "{cache}"
drain = "1s"

[lattice]
name = "durable"
host = "b"
servers = [{servers}]

[[component]]
id = "pong"
path = "{pong}"
durable = true
expose = true

[[component]]
id = "counter"
path = "{counter}"
durable = true
"#;

/// Host A: the durable ping, whose mailbox is kept short so that what it has to send after
/// the last kill stays a few seconds' work.
const HOST_A: &str = r#"
[runtime]
cache_dir = "{cache}"
drain = "1s"

[lattice]
name = "durable"
host = "a"
servers = [{servers}]

[[component]]
id = "ping"
path = "{ping}"
durable = true
capabilities = { send = ["pong"] }
limits = { mailbox = 64 }
"#;

/// One `courier run` of a manifest, started again after each kill on the same store.
struct Host {
    manifest: PathBuf,
    courier: Courier,
    base: String,
}

impl Host {
    fn start(manifest: PathBuf) -> Host {
        let courier =
            Courier::start(&["run", manifest.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
        let base = format!("http://{}", courier.address());
        Host {
            manifest,
            courier,
            base,
        }
    }

    fn kill_and_restart(&mut self, down: Duration) {
        self.courier.kill();
        thread::sleep(down);
        *self = Host::start(self.manifest.clone());
    }
}

/// Posts `body` to `url` until told to stop or the host stops answering; counts the 202s.
/// A post that got no answer may or may not have been stored: it ends the loader, and is
/// counted apart.
struct Loader {
    accepted: Arc<AtomicU64>,
    unanswered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Loader {
    fn start(url: String, body: &'static [u8]) -> Loader {
        let accepted = Arc::new(AtomicU64::new(0));
        let unanswered = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, unanswered, stop) = (accepted.clone(), unanswered.clone(), stop.clone());
            thread::spawn(move || {
                let agent = client();
                while !stop.load(Ordering::Relaxed) {
                    match agent.post(&url).send(body) {
                        Ok(response) if response.status().as_u16() == 202 => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        // A full mailbox (ping held up by its outbox while pong is away:
                        // 429) accepted nothing: wait a little and post again.
                        Ok(response) if matches!(response.status().as_u16(), 429 | 503) => {
                            thread::sleep(Duration::from_millis(20));
                        }
                        Ok(response) => panic!("{url} refused: {}", response.status()),
                        Err(_) => {
                            unanswered.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            })
        };
        Loader {
            accepted,
            unanswered,
            stop,
            thread,
        }
    }

    /// Stop it; its 202s and its unanswered posts.
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        (
            self.accepted.load(Ordering::Relaxed),
            self.unanswered.load(Ordering::Relaxed),
        )
    }
}

fn lattice_manifest(dir: &Path, body: &str, servers: &[NatsServer]) -> PathBuf {
    let servers = servers
        .iter()
        .map(|server| format!("\"{}\"", server.url()))
        .collect::<Vec<_>>()
        .join(", ");
    manifest(dir, &body.replace("{servers}", &servers))
}

#[test]
fn a_durable_ping_and_pong_on_two_hosts_count_every_sent_message_once_in_order_through_twenty_kills()
 {
    // What each post to ping asks it to send, as the loader posts it (`10`).
    const BATCH: u64 = 10;
    const KILLS: usize = 20;
    let seed = torture_seed();
    let mut moments = Moments(seed);
    let mut servers = courier_test_support::nats::start_cluster(2);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = Host::start(lattice_manifest(dir_b.path(), HOST_B, &servers));
    let mut a = Host::start(lattice_manifest(dir_a.path(), HOST_A, &servers));

    let (mut pings, mut pings_unanswered) = (0u64, 0u64);
    let (mut counts, mut counts_unanswered) = (0u64, 0u64);
    for kill in 0..KILLS {
        let ping = Loader::start(format!("{}/components/ping/messages", a.base), b"10");
        let counter = Loader::start(format!("{}/components/counter/messages", b.base), b"+1");
        // Each victim at least once, then at random.
        let victim = if kill < 3 {
            kill as u64
        } else {
            moments.next(3)
        };
        let moment = Duration::from_millis(200 + moments.next(1300));
        let down = Duration::from_millis(moments.next(1000));
        thread::sleep(moment);
        let what = match victim {
            0 => {
                a.courier.kill();
                "host A"
            }
            1 => {
                b.courier.kill();
                "host B"
            }
            _ => {
                let server = moments.next(2) as usize;
                servers[server].kill();
                thread::sleep(down);
                servers[server].restart();
                servers[server].wait_for_routes(1);
                "a NATS server"
            }
        };
        let (accepted, unanswered) = ping.finish();
        pings += accepted;
        pings_unanswered += unanswered;
        let (accepted, unanswered) = counter.finish();
        counts += accepted;
        counts_unanswered += unanswered;
        match victim {
            0 => a.kill_and_restart(down),
            1 => b.kill_and_restart(down),
            _ => {}
        }
        println!(
            "kill {kill}: {what} after {moment:?}, down {down:?}; ping 202s {pings}, counter 202s {counts}"
        );
    }

    // Ping's recovered messages are handled before this request; what they sent follows.
    let sent = ask(&a.base, "ping")[0];
    let deadline = Instant::now() + Duration::from_secs(90);
    let counted = loop {
        let counted = ask(&b.base, "pong");
        if counted[0] >= sent || Instant::now() > deadline {
            break counted;
        }
        thread::sleep(Duration::from_millis(50));
    };
    thread::sleep(Duration::from_millis(500));
    let settled = ask(&b.base, "pong");
    let counter = count(&client(), &b.base);
    println!(
        "seed {seed}: ping 202s {pings} (unanswered {pings_unanswered}), sent {sent}; pong counted {}, out of order {}; counter 202s {counts} (unanswered {counts_unanswered}), counted {counter}",
        counted[0], counted[1]
    );
    Tally {
        counted,
        settled,
        sent,
        pings,
        pings_unanswered,
        counter,
        counts,
        counts_unanswered,
    }
    .assert_each_once_in_order(BATCH);
    for host in [&a, &b] {
        host.courier.terminate();
    }
    for host in [&mut a, &mut b] {
        assert!(host.courier.wait(STOP_TIMEOUT).success());
    }
}
