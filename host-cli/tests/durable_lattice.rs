//! Durable components across hosts: a durable ping on host A sends numbered messages to a
//! durable pong on host B over a two-server NATS cluster, while host A, host B and a NATS
//! server are killed with SIGKILL at random moments under load and started again. Every
//! message ping was told `Ok` for is counted by pong once and in order, and a durable counter
//! on B fed over HTTP counts every 202.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use courier_test_support::nats::NatsServer;

use crate::durable::{Loader, Moments, Tally, ask, count, torture_seed};
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
