//! Durable components under `courier run`: messages a run answered 202 for survive a
//! SIGKILL, so do their timers, and a store another run holds is refused naming its file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use courier_test_support::guest_path;

use crate::run::{Courier, STOP_TIMEOUT, client};

/// A manifest in `dir` running the counter, durable or not, with the store where the
/// manifest does not say (`.courier-data` beside it).
fn counter_manifest(dir: &Path, durable: bool) -> PathBuf {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/courier-cli-test-cache");
    let text = format!(
        r#"
[runtime]
cache_dir = "{cache}"
drain = "1s"

[[component]]
id = "counter"
path = "{counter}"
durable = {durable}
"#,
        cache = cache.display(),
        counter = guest_path("counter").display(),
    );
    let file = dir.join("courier.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn start(manifest: &Path) -> Courier {
    Courier::start(&["run", manifest.to_str().unwrap(), "--listen", "127.0.0.1:0"])
}

/// The counter's count, asked over HTTP.
pub(crate) fn count(agent: &ureq::Agent, base: &str) -> u64 {
    let (status, body) =
        crate::run::post(agent, &format!("{base}/components/counter/requests"), b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    u64::from_le_bytes(body.try_into().unwrap())
}

#[test]
fn a_durable_counter_counts_every_202_across_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = counter_manifest(dir.path(), true);
    let mut courier = start(&manifest);
    let base = format!("http://{}", courier.address());
    let data = dir.path().join(".courier-data").join("courier.redb");
    assert!(
        courier
            .stdout()
            .contains(&format!("durable components kept in {}", data.display())),
        "{}",
        courier.stdout()
    );

    // Four senders post until the run is killed under them; a post that got no answer may
    // or may not have been stored, and is counted apart.
    let accepted = Arc::new(AtomicU64::new(0));
    let unanswered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (accepted, unanswered, stop) = (accepted.clone(), unanswered.clone(), stop.clone());
            let url = format!("{base}/components/counter/messages");
            thread::spawn(move || {
                let agent = client();
                while !stop.load(Ordering::Relaxed) {
                    match agent.post(&url).send(&b"+1"[..]) {
                        Ok(response) if response.status().as_u16() == 202 => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(response) => panic!("refused: {}", response.status()),
                        Err(_) => {
                            unanswered.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    while accepted.load(Ordering::Relaxed) < 200 && started.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_millis(10));
    }
    courier.kill();
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.join().unwrap();
    }
    let accepted = accepted.load(Ordering::Relaxed);
    let unanswered = unanswered.load(Ordering::Relaxed);
    assert!(accepted >= 200, "only {accepted} accepted in 30 s");

    let mut courier = start(&manifest);
    let base = format!("http://{}", courier.address());
    // The recovered messages are handled before anything sent after the start, this
    // request included.
    let counted = count(&client(), &base);
    println!("accepted {accepted}, unanswered {unanswered}, counted {counted}");
    assert!(
        counted >= accepted && counted <= accepted + unanswered,
        "counted {counted}: every one of the {accepted} 202s once, and at most the \
         {unanswered} posts the kill left unanswered besides"
    );
    // The store's figures and the component's commits are reported.
    let agent = client();
    let metrics = agent
        .get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    for name in [
        "courier_store_messages ",
        "courier_store_commits_total ",
        "courier_store_file_bytes ",
        "courier_store_commit_seconds{stat=\"mean\"} ",
        "courier_durable_commits_total{component=\"counter\"} ",
    ] {
        assert!(metrics.contains(name), "no {name} in\n{metrics}");
    }
    let components = agent
        .get(&format!("{base}/components"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        components.contains("\"durable\":{\"commits\":"),
        "{components}"
    );
    courier.terminate();
    assert!(courier.wait(STOP_TIMEOUT).success());
}

#[test]
fn a_durable_tickers_timer_ticks_on_after_a_sigkill_counting_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/courier-cli-test-cache");
    let manifest = dir.path().join("courier.toml");
    let text = format!(
        r#"
[runtime]
cache_dir = "{cache}"
drain = "1s"

[[component]]
id = "ticker"
path = "{ticker}"
durable = true
"#,
        cache = cache.display(),
        ticker = guest_path("ticker").display(),
    );
    std::fs::write(&manifest, text).unwrap();
    // `ticker` answers a request with its ticks so far; its count is not part of a saved
    // state, so a fresh instance counts from zero.
    let ticks = |base: &str| {
        let (status, body) = crate::run::post(
            &client(),
            &format!("{base}/components/ticker/requests"),
            b"",
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        u64::from_le_bytes(body.try_into().unwrap())
    };
    let wait_for_a_tick = |base: &str| {
        let started = Instant::now();
        loop {
            let ticks = ticks(base);
            if ticks > 0 {
                return ticks;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no tick in 20 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
    };

    let mut courier = start(&manifest);
    let base = format!("http://{}", courier.address());
    // Its first message starts a timer of one second; the message is stored before the
    // 202, and the timer with the batch that handles it.
    let (status, _) = crate::run::post(
        &client(),
        &format!("{base}/components/ticker/messages"),
        b"start",
    );
    assert_eq!(status, 202);
    wait_for_a_tick(&base);
    courier.kill();
    // Down for more than two periods past any deadline the store can hold.
    thread::sleep(Duration::from_millis(2500));

    let mut courier = start(&manifest);
    let base = format!("http://{}", courier.address());
    // No message starts it this time: the stored timer does, at once, and its first message
    // stands for the ticks that came due while the host was down.
    let first = wait_for_a_tick(&base);
    assert!(
        first >= 2,
        "the first tick after the restart counts the missed ones: {first}"
    );
    let started = Instant::now();
    while ticks(&base) <= first {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "it stopped ticking after the catch-up"
        );
        thread::sleep(Duration::from_millis(50));
    }
    courier.terminate();
    assert!(courier.wait(STOP_TIMEOUT).success());
}

/// `courier run` under a limit on the size of the files it writes, with SIGXFSZ ignored, so
/// a write past it fails with EFBIG as on a full disk.
fn start_with_file_limit(manifest: &Path, bytes: u64) -> Courier {
    let limit = format!("--fsize={bytes}");
    Courier::start_wrapped(
        &[
            "sh",
            "-c",
            "trap '' XFSZ; exec prlimit \"$0\" \"$@\"",
            &limit,
        ],
        &["run", manifest.to_str().unwrap(), "--listen", "127.0.0.1:0"],
        &[],
    )
}

#[test]
fn a_full_disk_refuses_messages_with_a_storage_error_and_loses_no_202() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = counter_manifest(dir.path(), true);
    // A first run makes the store, so the limit can be set at its size.
    let mut courier = start(&manifest);
    courier.address();
    courier.terminate();
    assert!(courier.wait(STOP_TIMEOUT).success());
    let file = dir.path().join(".courier-data").join("courier.redb");
    let size = std::fs::metadata(&file).unwrap().len();

    // Handled messages are consumed and their pages reused, so the file grows only with
    // what is in flight; with little room to grow, large payloads soon find none.
    let mut courier = start_with_file_limit(&manifest, size + 1024 * 1024);
    let base = format!("http://{}", courier.address());
    let agent = client();
    let payload = vec![b'x'; 256 * 1024];
    let mut accepted = 0u64;
    let (status, refusal) = loop {
        let (status, body) = crate::run::post(
            &agent,
            &format!("{base}/components/counter/messages"),
            &payload,
        );
        match status {
            202 => accepted += 1,
            _ => break (status, String::from_utf8_lossy(&body).into_owned()),
        }
        assert!(accepted < 2_000, "the store never filled");
    };
    println!("accepted {accepted}, then {status} {refusal}");
    assert_eq!(status, 503, "{refusal}");
    for part in [
        "target-crashed",
        "storage:",
        "is full",
        &file.display().to_string(),
    ] {
        assert!(refusal.contains(part), "no {part:?} in {refusal}");
    }
    courier.kill();

    let mut courier = start(&manifest);
    let base = format!("http://{}", courier.address());
    assert_eq!(count(&client(), &base), accepted, "every 202, once");
    courier.terminate();
    assert!(courier.wait(STOP_TIMEOUT).success());
}

#[test]
fn a_store_held_by_another_run_is_refused_naming_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = counter_manifest(dir.path(), true);
    let mut first = start(&manifest);
    first.address();
    let mut second = start(&manifest);
    let status = second.wait(Duration::from_secs(60));
    assert!(!status.success());
    let file = dir.path().join(".courier-data").join("courier.redb");
    let stderr = second.stderr();
    assert!(
        stderr.contains(&file.display().to_string()) && stderr.contains("locked"),
        "{stderr}"
    );
    first.terminate();
    assert!(first.wait(STOP_TIMEOUT).success());
}

#[test]
fn a_run_without_durable_components_opens_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = counter_manifest(dir.path(), false);
    let mut courier = start(&manifest);
    courier.address();
    courier.terminate();
    assert!(courier.wait(STOP_TIMEOUT).success());
    assert!(!dir.path().join(".courier-data").exists());
    assert!(!courier.stdout().contains("durable components kept in"));
}

/// A manifest in `dir` running a durable ping that may send to a durable pong, and a
/// durable counter.
fn ping_pong_manifest(dir: &Path) -> PathBuf {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/courier-cli-test-cache");
    // Ping listed first: a durable component handles its recovered messages as soon as it
    // is spawned, and a send to an id not spawned yet is refused at the call, so this
    // holds only because the runner starts pong, ping's target, first.
    let text = format!(
        r#"
[runtime]
cache_dir = "{cache}"
drain = "1s"

[[component]]
id = "ping"
path = "{ping}"
durable = true
capabilities = {{ send = ["pong"] }}

[[component]]
id = "pong"
path = "{pong}"
durable = true

[[component]]
id = "counter"
path = "{counter}"
durable = true
"#,
        cache = cache.display(),
        ping = guest_path("ping").display(),
        pong = guest_path("pong").display(),
        counter = guest_path("counter").display(),
    );
    let file = dir.join("courier.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// The reply of a request to `id`, as little-endian `u64`s.
pub(crate) fn ask(base: &str, id: &str) -> Vec<u64> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(70)))
        .build()
        .into();
    // Long: after the kills, ping's recovered messages and pong's share of what they send
    // are handled before this request.
    let url = format!("{base}/components/{id}/requests?timeout_ms=60000");
    // A durable sender held up by its outbox (its target on a host that was away) has a
    // full mailbox for a while: 429 until it drains.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, body) = loop {
        let (status, body) = crate::run::post(&agent, &url, b"");
        if status != 429 || Instant::now() > deadline {
            break (status, body);
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    body.chunks(8)
        .map(|word| u64::from_le_bytes(word.try_into().unwrap()))
        .collect()
}

/// The seed of a torture test's kill moments: `COURIER_TORTURE_SEED`, or the clock's; printed.
pub(crate) fn torture_seed() -> u64 {
    let seed = std::env::var("COURIER_TORTURE_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("seed {seed} (COURIER_TORTURE_SEED)");
    seed
}

/// A small generator of kill moments (xorshift), seeded from the clock and printed, so a
/// failing run can be told apart and its seed tried again.
pub(crate) struct Moments(pub(crate) u64);

impl Moments {
    pub(crate) fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Posts `body` to `url` until told to stop or the host stops answering; counts the 202s.
/// A post that got no answer may or may not have been stored: it ends the loader, and is
/// counted apart.
pub(crate) struct Loader {
    accepted: Arc<AtomicU64>,
    unanswered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl Loader {
    pub(crate) fn start(url: String, body: &'static [u8]) -> Loader {
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
    pub(crate) fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        (
            self.accepted.load(Ordering::Relaxed),
            self.unanswered.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn durable_components_killed_twenty_times_count_every_accepted_message_once_in_order() {
    const BATCH: u64 = 10;
    const KILLS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let manifest = ping_pong_manifest(dir.path());
    let seed = torture_seed();
    let mut moments = Moments(seed);
    let (mut accepted, mut unanswered) = (0u64, 0u64);
    let (mut counted_202s, mut counter_unanswered) = (0u64, 0u64);
    for round in 0..KILLS {
        let mut courier = start(&manifest);
        let base = format!("http://{}", courier.address());
        // One client posts "send ten to pong" to ping, another "+1" to the counter, until
        // the kill cuts them off.
        let to_ping = Loader::start(format!("{base}/components/ping/messages"), b"10");
        let to_counter = Loader::start(format!("{base}/components/counter/messages"), b"+1");
        let moment = Duration::from_millis(moments.next(800));
        thread::sleep(moment);
        courier.kill();
        let (posted, lost) = to_ping.finish();
        let (counted, counter_lost) = to_counter.finish();
        println!("round {round}: killed after {moment:?}, {posted} + {counted} accepted");
        accepted += posted;
        unanswered += lost;
        counted_202s += counted;
        counter_unanswered += counter_lost;
    }

    let mut courier = start(&manifest);
    let base = format!("http://{}", courier.address());
    // Ping's recovered messages are handled before this request; what they sent follows.
    let sent = ask(&base, "ping")[0];
    let deadline = Instant::now() + Duration::from_secs(30);
    let counted = loop {
        let counted = ask(&base, "pong");
        if counted[0] >= sent || Instant::now() > deadline {
            break counted;
        }
        thread::sleep(Duration::from_millis(20));
    };
    thread::sleep(Duration::from_millis(300));
    let settled = ask(&base, "pong");
    let counter = ask(&base, "counter")[0];
    println!(
        "accepted {accepted}, unanswered {unanswered}, ping sent {sent}, pong counted {}, \
         out of order {}; counter {counter} for {counted_202s} 202s and {counter_unanswered} \
         unanswered",
        counted[0], counted[1]
    );
    Tally {
        counted,
        settled,
        sent,
        pings: accepted,
        pings_unanswered: unanswered,
        counter,
        counts: counted_202s,
        counts_unanswered: counter_unanswered,
    }
    .assert_each_once_in_order(BATCH);
    courier.terminate();
    assert!(courier.wait(STOP_TIMEOUT).success());
}

/// What a torture ends with: pong's count and order (twice, the second after a pause), what
/// ping sent in all, and the counter's count, beside what the HTTP clients were told.
pub(crate) struct Tally {
    pub(crate) counted: Vec<u64>,
    pub(crate) settled: Vec<u64>,
    pub(crate) sent: u64,
    /// Posts to ping answered 202, and those a kill left unanswered.
    pub(crate) pings: u64,
    pub(crate) pings_unanswered: u64,
    pub(crate) counter: u64,
    /// Posts to the counter answered 202, and those a kill left unanswered.
    pub(crate) counts: u64,
    pub(crate) counts_unanswered: u64,
}

impl Tally {
    /// Every message whose sender was told `Ok` counted once, in order; each post to ping
    /// (`batch` sends) handled once with all its sends or none; each 202 of the counter
    /// counted once. A post a kill left unanswered may or may not have been taken.
    pub(crate) fn assert_each_once_in_order(&self, batch: u64) {
        let Tally {
            counted,
            settled,
            sent,
            pings,
            pings_unanswered,
            counter,
            counts,
            counts_unanswered,
        } = self;
        assert_eq!(
            settled, counted,
            "nothing more arrived: pong counted each once"
        );
        assert_eq!(
            counted[0], *sent,
            "every message whose send returned Ok was counted by pong once"
        );
        assert_eq!(counted[1], 0, "in order, with no copy");
        assert_eq!(
            sent % batch,
            0,
            "a handled message's sends are all kept or none"
        );
        let handled = sent / batch;
        assert!(
            handled >= *pings && handled <= pings + pings_unanswered,
            "ping handled {handled}: each of the {pings} 202s once, and at most the \
             {pings_unanswered} posts the kills left unanswered besides"
        );
        assert!(
            counter >= counts && *counter <= counts + counts_unanswered,
            "the counter counted {counter}: each of the {counts} 202s once, and at most the \
             {counts_unanswered} posts the kills left unanswered besides"
        );
    }
}
