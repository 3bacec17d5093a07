//! `courier run` end to end: the built binary, real components from `target/guests/`, a real
//! HTTP client, and a real SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use courier_test_support::guest_path;

/// Loading a cold cache compiles every component; give it room on a busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Drain deadline plus the longest handler deadline below, with room to spare.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `courier`, killed if the test ends without stopping it.
pub(crate) struct Courier {
    child: Child,
    /// `XDG_RUNTIME_DIR` of the run, where it keeps the token it makes, unless the test
    /// gave one.
    runtime_dir: Option<tempfile::TempDir>,
    lines: Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Courier {
    pub(crate) fn start(args: &[&str]) -> Courier {
        Courier::start_with_env(args, &[])
    }

    /// [`start`](Self::start) with more environment variables.
    pub(crate) fn start_with_env(args: &[&str], env: &[(&str, &Path)]) -> Courier {
        Courier::start_wrapped(&[], args, env)
    }

    /// [`start_with_env`](Self::start_with_env), with the binary run by `wrapper` (a
    /// program and its arguments, the binary and `args` after them): `sh -c …` to set a
    /// limit, say.
    pub(crate) fn start_wrapped(wrapper: &[&str], args: &[&str], env: &[(&str, &Path)]) -> Courier {
        let runtime_dir = (!env.iter().any(|(name, _)| *name == "XDG_RUNTIME_DIR"))
            .then(|| tempfile::tempdir().unwrap());
        let binary = env!("CARGO_BIN_EXE_courier");
        let mut command = match wrapper {
            [] => Command::new(binary),
            [program, rest @ ..] => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary);
                command
            }
        };
        if let Some(dir) = &runtime_dir {
            command.env("XDG_RUNTIME_DIR", dir.path());
        }
        let mut child = command
            .args(args)
            .envs(env.iter().copied())
            .env_remove("COURIER_TOKEN")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the courier binary starts");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sender, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let collected = stdout.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                collected.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = sender.send(line);
            }
        });
        let mut err = child.stderr.take().unwrap();
        let collected = stderr.clone();
        thread::spawn(move || {
            let mut buffer = [0; 4096];
            while let Ok(n @ 1..) = err.read(&mut buffer) {
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Courier {
            child,
            runtime_dir,
            lines,
            stdout,
            stderr,
        }
    }

    /// The address from `courier: listening on http://ADDRESS`.
    pub(crate) fn address(&self) -> String {
        self.address_within(START_TIMEOUT)
    }

    /// [`address`](Self::address), waiting up to `timeout` (for a start that builds first).
    pub(crate) fn address_within(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(address) = line.strip_prefix("courier: listening on http://") {
                        return address.to_string();
                    }
                }
                Err(_) => panic!(
                    "courier did not say where it listens\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                ),
            }
        }
    }

    /// The `XDG_RUNTIME_DIR` it was started with, when the test gave none.
    pub(crate) fn runtime_dir(&self) -> &Path {
        self.runtime_dir
            .as_ref()
            .expect("a runtime folder of its own")
            .path()
    }

    pub(crate) fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub(crate) fn terminate(&self) {
        // The child is ours and not yet reaped, so its pid is still its own.
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM was sent");
    }

    /// SIGKILL: no drain, no shutdown, nothing flushed that was not already.
    pub(crate) fn kill(&mut self) {
        self.child.kill().expect("SIGKILL is sent");
        self.child.wait().expect("the killed run is reaped");
    }

    pub(crate) fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the readers take the last lines.
                thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "courier did not stop within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Courier {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A manifest in a temporary folder, naming components in `target/guests/`.
pub(crate) fn manifest(dir: &Path, body: &str) -> PathBuf {
    let guest = |name: &str| guest_path(name).display().to_string();
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/courier-cli-test-cache");
    let text = body
        .replace("{cache}", &cache.display().to_string())
        .replace("{ping}", &guest("ping"))
        .replace("{pong}", &guest("pong"))
        .replace("{counter}", &guest("counter"))
        .replace("{echo}", &guest("echo"))
        .replace("{panicker}", &guest("panicker"))
        .replace("{looper}", &guest("looper"))
        .replace("{hostile}", &guest("hostile"))
        .replace("{probe}", &guest("probe"))
        .replace("{no_handler}", &guest("no_handler"));
    let file = dir.join("courier.toml");
    std::fs::write(&file, text).unwrap();
    file
}

const MANIFEST: &str = r#"
[runtime]
listen = "127.0.0.1:1"   # replaced by --listen
max_payload = "1 KiB"
cache_dir = "{cache}"
drain = "1s"
request_timeout = "2s"

[[component]]
id = "ping"
path = "{ping}"
capabilities = { send = ["pong"] }

[[component]]
id = "pong"
path = "{pong}"
limits = { mailbox = 1000 }

[[component]]
id = "echo"
path = "{echo}"

[[component]]
id = "tools/echo"
path = "{echo}"

[[component]]
id = "panicker"
path = "{panicker}"
restart = { max_restarts = 100 }

[[component]]
id = "looper"
path = "{looper}"
limits = { deadline = "1s", mailbox = 1 }
restart = { max_restarts = 100 }

[[component]]
id = "hostile"
path = "{hostile}"
"#;

pub(crate) fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Status and body of a POST.
pub(crate) fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut response = agent.post(url).send(body).expect("the ingress answers");
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_vec().unwrap())
}

/// Status and body of a POST with `Authorization: Bearer TOKEN`.
pub(crate) fn post_with_token(
    agent: &ureq::Agent,
    url: &str,
    body: &[u8],
    token: &str,
) -> (u16, Vec<u8>) {
    let mut response = agent
        .post(url)
        .header("Authorization", &format!("Bearer {token}"))
        .send(body)
        .expect("the ingress answers");
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_vec().unwrap())
}

/// The token file a run without a configured token names in its startup lines.
fn made_token_file(courier: &Courier) -> PathBuf {
    let stdout = courier.stdout();
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("courier: restarts and upgrades ask for the token in "))
        .unwrap_or_else(|| panic!("no token file named in\n{stdout}"));
    PathBuf::from(line.split(" (").next().unwrap())
}

/// The token a run without a configured token made.
pub(crate) fn made_token(courier: &Courier) -> String {
    std::fs::read_to_string(made_token_file(courier)).unwrap()
}

/// Status and body of a GET, as text.
pub(crate) fn get(agent: &ureq::Agent, url: &str) -> (u16, String) {
    let mut response = agent.get(url).call().expect("the ingress answers");
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

pub(crate) fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(body)))
}

/// The value of the sample `name` in a Prometheus exposition.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in\n{metrics}"))
        .parse()
        .unwrap()
}

#[test]
fn the_runner_routes_http_to_components_reports_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(dir.path(), MANIFEST);
    let mut courier = Courier::start(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let base = format!("http://{}", courier.address());
    let agent = client();

    // A message from the host makes ping send 100 numbered messages to pong, wasm to wasm.
    let (status, body) = post(&agent, &format!("{base}/components/ping/messages"), b"100");
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["target"], "ping");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, figures) = post(&agent, &format!("{base}/components/pong/requests"), b"");
        assert_eq!(status, 200);
        let received = u64::from_le_bytes(figures[..8].try_into().unwrap());
        let out_of_order = u64::from_le_bytes(figures[8..16].try_into().unwrap());
        assert_eq!(out_of_order, 0);
        if received == 100 {
            break;
        }
        assert!(Instant::now() < deadline, "pong has {received} of 100");
        thread::sleep(Duration::from_millis(20));
    }

    // A request comes back with the reply as the body.
    let (status, reply) = post(
        &agent,
        &format!("{base}/components/echo/requests"),
        b"hello",
    );
    assert_eq!((status, reply.as_slice()), (200, &b"hello"[..]));

    // An id with a namespace is written with its slash percent-encoded.
    let (status, reply) = post(
        &agent,
        &format!("{base}/components/tools%2Fecho/requests"),
        b"ns",
    );
    assert_eq!((status, reply.as_slice()), (200, &b"ns"[..]));

    // Typed errors: unknown id, unknown route, too large, a timeout beyond reason.
    let (status, body) = get(&agent, &format!("{base}/nowhere"));
    assert_eq!(status, 404);
    assert_eq!(json(body.as_bytes())["error"], "no-such-route");
    let detail = json(body.as_bytes())["message"].to_string();
    for route in ["/restart", "/upgrade", "GET /lattice", "GET /"] {
        assert!(detail.contains(route), "{route} in {detail}");
    }
    let (status, body) = post(
        &agent,
        &format!("{base}/components/echo/requests?timeout_ms=99999999999"),
        b"x",
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, body) = post(&agent, &format!("{base}/components/nobody/messages"), b"x");
    assert_eq!(status, 404);
    assert_eq!(json(&body)["error"], "target-not-found");
    let (status, body) = post(
        &agent,
        &format!("{base}/components/echo/requests"),
        &[b'x'; 2048],
    );
    assert_eq!(status, 413);
    assert_eq!(json(&body)["error"], "payload-too-large");
    // A small request whose reply is over the limit is the component's failure, not the
    // caller's: 502, saying so.
    let (status, body) = post(
        &agent,
        &format!("{base}/components/hostile/requests"),
        b"big:2000",
    );
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    let body = json(&body);
    assert_eq!(body["error"], "handler-failed");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("replied with 2000 bytes, over the limit of 1024 bytes")),
        "{body}"
    );

    // A panicking handler: its message is dead-lettered, a request to it is a 502.
    let (status, _) = post(
        &agent,
        &format!("{base}/components/panicker/messages"),
        b"boom",
    );
    assert_eq!(status, 202);
    let (status, body) = post(
        &agent,
        &format!("{base}/components/panicker/requests"),
        b"bang",
    );
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    let error = json(&body);
    assert_eq!(error["error"], "target-crashed");
    assert!(
        error["message"].as_str().unwrap().contains("panicker"),
        "{error}"
    );

    // A handler that never returns: the request times out, and while it loops its
    // one-message mailbox fills up.
    let (status, body) = post(
        &agent,
        &format!("{base}/components/looper/requests?timeout_ms=100"),
        b"spin",
    );
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["error"], "timeout");
    let statuses: Vec<u16> = (0..4)
        .map(|_| {
            post(
                &agent,
                &format!("{base}/components/looper/messages"),
                b"spin",
            )
            .0
        })
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [202, 429].contains(s)),
        "{statuses:?}"
    );

    let (status, letters) = get(&agent, &format!("{base}/dead-letters"));
    assert_eq!(status, 200);
    let letters = json(letters.as_bytes());
    let boom = letters
        .as_array()
        .unwrap()
        .iter()
        .find(|letter| letter["payload_preview"] == "boom")
        .unwrap_or_else(|| panic!("no dead letter for `boom` in {letters}"));
    assert_eq!(boom["sender"], "host");
    assert_eq!(boom["target"], "panicker");
    assert_eq!(boom["kind"], "message");
    assert_eq!(boom["payload_len"], 4);
    assert!(
        boom["reason"].as_str().unwrap().contains("panicked"),
        "{boom}"
    );

    let (status, components) = get(&agent, &format!("{base}/components"));
    assert_eq!(status, 200);
    let components = json(components.as_bytes());
    let ids: Vec<&str> = components
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "echo",
            "hostile",
            "looper",
            "panicker",
            "ping",
            "pong",
            "tools/echo"
        ]
    );
    assert!(components[0]["state"] == "running", "{components}");

    let (status, metrics) = get(&agent, &format!("{base}/metrics"));
    assert_eq!(status, 200);
    assert!(
        sample(
            &metrics,
            "courier_messages_delivered_total{component=\"pong\"}"
        ) >= 100.0,
        "{metrics}"
    );
    assert!(sample(&metrics, "courier_restarts_total{component=\"panicker\"}") >= 1.0);
    assert!(
        sample(
            &metrics,
            "courier_messages_dead_lettered_total{component=\"panicker\"}"
        ) >= 1.0
    );
    assert!(
        sample(
            &metrics,
            "courier_messages_refused_total{component=\"looper\"}"
        ) >= 1.0
    );
    assert!(sample(&metrics, "courier_broker_messages_sent_total") >= 110.0);
    assert!(metrics.contains("# TYPE courier_mailbox_depth gauge\n"));
    assert!(
        metrics.contains("courier_handler_latency_seconds{component=\"echo\",quantile=\"0.5\"}")
    );
    let echo_calls = sample(
        &metrics,
        "courier_handler_latency_seconds_count{component=\"echo\"}",
    );
    assert!(echo_calls >= 1.0, "{metrics}");
    assert!(
        sample(
            &metrics,
            "courier_handler_latency_seconds_sum{component=\"echo\"}"
        ) > 0.0,
        "{metrics}"
    );

    courier.terminate();
    let status = courier.wait(STOP_TIMEOUT);
    let stdout = courier.stdout();
    assert!(
        status.success(),
        "{status}\nstdout:\n{stdout}\nstderr:\n{}",
        courier.stderr()
    );
    assert!(
        stdout.contains("courier: SIGTERM received; draining mailboxes for up to 1 s"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "courier: stopped 7 components (echo, hostile, looper, panicker, ping, pong, tools/echo)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains(" while draining\n"), "{stdout}");
    assert!(stdout.contains("courier: in all "), "{stdout}");
}

#[test]
fn while_draining_new_messages_are_refused_and_what_is_left_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(
        dir.path(),
        r#"
[runtime]
cache_dir = "{cache}"
drain = "100ms"

[[component]]
id = "looper"
path = "{looper}"
limits = { deadline = "1s", mailbox = 4 }
"#,
    );
    let mut courier = Courier::start(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let base = format!("http://{}", courier.address());
    let agent = client();
    // The first message keeps looper busy for its whole deadline; the second waits behind it
    // and is still queued when the 100 ms drain ends.
    for payload in [&b"first"[..], b"second"] {
        let (status, _) = post(
            &agent,
            &format!("{base}/components/looper/messages"),
            payload,
        );
        assert_eq!(status, 202);
    }
    courier.terminate();
    // Looper holds the drain open until the drain's end cuts its handler short; meanwhile the
    // ingress still answers, and refuses new work.
    let draining = Instant::now() + STOP_TIMEOUT;
    while !courier.stdout().contains("draining mailboxes") {
        assert!(Instant::now() < draining, "{}", courier.stdout());
        thread::sleep(Duration::from_millis(5));
    }
    let (status, body) = post(
        &agent,
        &format!("{base}/components/looper/messages"),
        b"late",
    );
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["error"], "shutting-down");

    let status = courier.wait(STOP_TIMEOUT);
    let stdout = courier.stdout();
    assert!(status.success(), "{status}\n{stdout}\n{}", courier.stderr());
    assert!(stdout.contains("left undelivered:"), "{stdout}");
    assert!(
        stdout.contains(
            "  message host -> looper (5 bytes): the shutdown deadline passed during delivery\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "  message host -> looper (6 bytes): the shutdown deadline passed before delivery\n"
        ),
        "{stdout}"
    );
}

#[test]
fn the_current_thread_scheduler_serves_requests_between_components() {
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(
        dir.path(),
        r#"
[runtime]
cache_dir = "{cache}"
scheduler = "current-thread"

[[component]]
id = "echo"
path = "{echo}"

[[component]]
id = "asker"
path = "{probe}"
capabilities = { request = ["echo"] }

[[component]]
id = "looper"
path = "{looper}"
limits = { deadline = "300ms" }
"#,
    );
    let mut courier = Courier::start(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let base = format!("http://{}", courier.address());
    assert!(
        courier
            .stdout()
            .contains("courier: scheduler current-thread\n"),
        "{}",
        courier.stdout()
    );
    let agent = client();
    // A loop on the one thread is cut at its deadline, yielding at every epoch tick meanwhile,
    // so the ingress and the other actors go on being served.
    let (status, _) = post(&agent, &format!("{base}/components/looper/messages"), b"x");
    assert_eq!(status, 202);
    // asker asks echo with send-request, wasm to wasm, and relays the reply.
    for _ in 0..3 {
        let (status, reply) = post(
            &agent,
            &format!("{base}/components/asker/requests"),
            b"request:echo",
        );
        assert_eq!(
            (status, String::from_utf8_lossy(&reply).as_ref()),
            (200, "hi")
        );
    }
    courier.terminate();
    let status = courier.wait(STOP_TIMEOUT);
    assert!(
        status.success(),
        "{status}\n{}\n{}",
        courier.stdout(),
        courier.stderr()
    );
}

#[test]
fn the_example_manifest_checks() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/courier.toml");
    for guest in ["ping", "pong", "echo"] {
        guest_path(guest);
    }
    crate::assert_check_passes(&example);
}

#[test]
fn check_reports_every_problem_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(
        dir.path(),
        r#"[runtime]
cache_dir = "{cache}"

[[component]]
id = "echo"
path = "{echo}"

[[component]]
id = "broken"
path = "{no_handler}"

[[component]]
id = "gone"
path = "gone.wasm"
"#,
    );
    let output = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["check", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let name = file.display();
    assert!(
        stderr.contains(&format!(
            "{name}:10: `path`: component `broken` lacks the export `handle-message`"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{name}:14: component `gone`: `path`: no file at ")),
        "{stderr}"
    );
    assert!(stderr.contains("courier: 2 problems in"), "{stderr}");

    let fine = manifest(
        dir.path(),
        "[runtime]\ncache_dir = \"{cache}\"\n[[component]]\nid = \"echo\"\npath = \"{echo}\"\n",
    );
    crate::assert_check_passes(&fine);
}

/// The status of a request written by hand, so that its `Host` and `Origin` headers are
/// exactly what a hostile page's browser would send.
fn raw_status(address: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(address).expect("the ingress accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("POST {path} HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\nhello");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.split(' ').nth(1).unwrap_or_default();
    status
        .parse()
        .unwrap_or_else(|_| panic!("no status in {response:?}"))
}

#[test]
fn the_ingress_answers_its_own_host_and_origin_and_asks_for_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(
        dir.path(),
        r#"
[runtime]
cache_dir = "{cache}"
token = "s3cret"

[[component]]
id = "echo"
path = "{echo}"
"#,
    );
    let courier = Courier::start(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let address = courier.address();
    let port = address.rsplit(':').next().unwrap().to_string();
    let path = "/components/echo/requests";
    let own = address.as_str();
    let localhost = format!("localhost:{port}");
    let bearer = ("Authorization", "Bearer s3cret");
    let text = ("Content-Type", "text/plain");

    // The right host, with the token: answered, also as `localhost` and from its own page.
    assert_eq!(raw_status(&address, path, &[("Host", own), bearer]), 200);
    assert_eq!(
        raw_status(&address, path, &[("Host", &localhost), bearer]),
        200
    );
    let own_origin = format!("http://{address}");
    let from_own_page = [("Host", own), ("Origin", own_origin.as_str()), bearer, text];
    assert_eq!(raw_status(&address, path, &from_own_page), 200);

    // Without the token, or with another: 401. Metrics need none.
    assert_eq!(raw_status(&address, path, &[("Host", own)]), 401);
    let wrong = ("Authorization", "Bearer s3creT");
    assert_eq!(raw_status(&address, path, &[("Host", own), wrong]), 401);
    let (status, _) = get(&client(), &format!("http://{address}/metrics"));
    assert_eq!(status, 200);

    // DNS rebinding: a page on another name that resolves to loopback names itself.
    let rebound = format!("evil.example:{port}");
    assert_eq!(
        raw_status(&address, path, &[("Host", &rebound), bearer]),
        421
    );
    assert_eq!(raw_status(&address, path, &[bearer]), 421, "no Host at all");
    // A cross-site page's simple POST carries its own origin.
    let foreign = [
        ("Host", own),
        ("Origin", "http://evil.example"),
        bearer,
        text,
    ];
    assert_eq!(raw_status(&address, path, &foreign), 403);
    let null_origin = [("Host", own), ("Origin", "null"), bearer, text];
    assert_eq!(raw_status(&address, path, &null_origin), 403);
}

#[test]
fn a_failed_component_is_restarted_through_the_ingress_and_its_failure_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(
        dir.path(),
        r#"
[runtime]
cache_dir = "{cache}"

[[component]]
id = "panicker"
path = "{panicker}"
restart = { policy = "temporary" }
"#,
    );
    let courier = Courier::start(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let base = format!("http://{}", courier.address());
    let agent = client();
    let state = |agent: &ureq::Agent| {
        let (_, body) = get(agent, &format!("{base}/components"));
        json(body.as_bytes())[0]["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let restart = format!("{base}/components/panicker/restart");
    let token = made_token(&courier);
    let manage = |url: &str| post_with_token(&agent, url, b"", &token);

    assert_eq!(manage(&restart).0, 409, "a running one is left alone");
    let (status, _) = post(
        &agent,
        &format!("{base}/components/panicker/messages"),
        b"boom",
    );
    assert_eq!(status, 202);
    let failed_by = Instant::now() + STOP_TIMEOUT;
    while state(&agent) != "failed" {
        assert!(Instant::now() < failed_by, "panicker did not fail");
        thread::sleep(Duration::from_millis(10));
    }
    let logged_by = Instant::now() + STOP_TIMEOUT;
    while !courier.stderr().contains("component failed") {
        assert!(Instant::now() < logged_by, "{}", courier.stderr());
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        courier.stderr().contains("panicker refuses: boom"),
        "{}",
        courier.stderr()
    );

    let (status, body) = manage(&restart);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["status"], "restarted");
    assert_eq!(state(&agent), "running");
    // Taken again: a failed component's messages were refused with 503.
    let (status, _) = post(
        &agent,
        &format!("{base}/components/panicker/messages"),
        b"again",
    );
    assert_eq!(status, 202);
    let unknown = format!("{base}/components/nobody/restart");
    assert_eq!(manage(&unknown).0, 404);
}

#[test]
fn the_example_lattice_manifests_check() {
    for host in ["host-a", "host-b"] {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/lattice/{host}.toml"));
        crate::assert_check_passes(&example);
    }
}

pub(crate) const LATTICE_B: &str = r#"
[runtime]
listen = "127.0.0.1:1"
cache_dir = "{cache}"
drain = "1s"

[lattice]
name = "e2e"
host = "b"
servers = ["{nats}"]

[[component]]
id = "pong"
path = "{pong}"
limits = { mailbox = 16384 }
expose = true

[[component]]
id = "echo"
path = "{echo}"
expose = true

[[component]]
id = "hidden"
path = "{echo}"
"#;

pub(crate) const LATTICE_A: &str = r#"
[runtime]
listen = "127.0.0.1:1"
cache_dir = "{cache}"
drain = "1s"

[lattice]
name = "e2e"
host = "a"
servers = ["{nats}"]

[[component]]
id = "ping"
path = "{ping}"
capabilities = { send = ["pong"] }
limits = { deadline = "2s" }
"#;

#[test]
fn two_runners_in_a_lattice_reach_each_others_components_through_the_same_routes() {
    let nats = courier_test_support::nats::NatsServer::start();
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let file_a = manifest(dir_a.path(), &LATTICE_A.replace("{nats}", &nats.url()));
    let file_b = manifest(dir_b.path(), &LATTICE_B.replace("{nats}", &nats.url()));
    let listen = ["--listen", "127.0.0.1:0"];
    let mut b = Courier::start(&[&["run", file_b.to_str().unwrap()][..], &listen[..]].concat());
    let address_b = b.address();
    let mut a = Courier::start(&[&["run", file_a.to_str().unwrap()][..], &listen[..]].concat());
    let address_a = a.address();
    assert!(
        a.stdout().contains("joined lattice `e2e` as host `a`"),
        "{}",
        a.stdout()
    );
    let agent = client();

    // Host A hears what host B serves; the unexposed `hidden` is not among it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let lattice = loop {
        let (status, body) = get(&agent, &format!("http://{address_a}/lattice"));
        assert_eq!(status, 200, "{body}");
        let lattice = json(body.as_bytes());
        if lattice["hosts"][0]["served"] == serde_json::json!(["echo", "pong"]) {
            break lattice;
        }
        assert!(
            Instant::now() < deadline,
            "host A never heard of host B: {lattice}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lattice["host"], "a");
    assert_eq!(lattice["hosts"][0]["host"], "b");

    // A request through host A's ingress, answered by echo on host B.
    let (status, reply) = post(
        &agent,
        &format!("http://{address_a}/components/echo/requests"),
        b"across hosts",
    );
    assert_eq!((status, reply.as_slice()), (200, &b"across hosts"[..]));
    let (status, refused) = post(
        &agent,
        &format!("http://{address_a}/components/hidden/requests"),
        b"x",
    );
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&refused));
    assert_eq!(json(&refused)["error"], "target-not-found");

    // Ping on host A sends to pong on host B; pong's count, asked through host A, is all.
    let (status, _) = post(
        &agent,
        &format!("http://{address_a}/components/ping/messages"),
        b"1000",
    );
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, count) = post(
            &agent,
            &format!("http://{address_a}/components/pong/requests"),
            b"",
        );
        assert_eq!(status, 200);
        if count[..8] == 1000u64.to_le_bytes() {
            assert_eq!(count[8..], 0u64.to_le_bytes(), "none out of order");
            break;
        }
        assert!(Instant::now() < deadline, "pong's count never reached 1000");
        thread::sleep(Duration::from_millis(50));
    }
    let (_, metrics) = get(&agent, &format!("http://{address_a}/metrics"));
    assert_eq!(
        sample(&metrics, "courier_lattice_messages_sent_total"),
        1000.0
    );
    assert!(
        metrics.contains("courier_lattice_messages_ended_total{outcome=\"acked\"} 1000\n"),
        "{metrics}"
    );
    let (_, metrics) = get(&agent, &format!("http://{address_b}/metrics"));
    assert!(
        sample(&metrics, "courier_broker_messages_arrived_total") >= 1000.0,
        "{metrics}"
    );

    a.terminate();
    assert!(a.wait(STOP_TIMEOUT).success(), "{}", a.stderr());
    assert!(
        a.stdout()
            .contains("courier: to other hosts 1000 sent, 1000 acknowledged, 0 refused there, 0 with no host, 0 unconfirmed"),
        "{}",
        a.stdout()
    );
    b.terminate();
    assert!(b.wait(STOP_TIMEOUT).success(), "{}", b.stderr());
}

#[test]
fn courier_upgrade_swaps_a_running_component_through_the_ingress() {
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(
        dir.path(),
        r#"
[runtime]
listen = "127.0.0.1:1"
max_payload = "1 KiB"      # far below a component: the upgrade route has its own limit
cache_dir = "{cache}"
token = "s3cret"

[[component]]
id = "svc"
path = "{echo}"
"#,
    );
    let mut courier = Courier::start(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let address = courier.address();
    let url = format!("http://{address}");
    let upgrade = |id: &str, path: &Path, token: &str| {
        Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(["upgrade", id])
            .arg(path)
            .args(["--url", &url, "--token", token])
            .env_remove("COURIER_TOKEN")
            .output()
            .expect("the courier binary starts")
    };
    let counter = guest_path("counter");

    let refused = upgrade("svc", &counter, "wrong");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("(401)"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not a component").unwrap();
    let invalid = upgrade("svc", &garbage, "s3cret");
    assert!(
        String::from_utf8_lossy(&invalid.stderr).contains("invalid-component"),
        "{}",
        String::from_utf8_lossy(&invalid.stderr)
    );

    let done = upgrade("svc", &counter, "s3cret");
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        said.contains("upgraded `svc`") && said.contains("\"status\":\"upgraded\""),
        "{said}"
    );

    // The counter answers now, under the same id, and the listing shows its version.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let call = |method: &str, path: &str| {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{url}{path}"))
            .header("Authorization", "Bearer s3cret")
            .body(Vec::new())
            .unwrap();
        let mut response = agent.run(request).expect("the ingress answers");
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_vec().unwrap())
    };
    let (status, count) = call("POST", "/components/svc/requests");
    assert_eq!((status, count.as_slice()), (200, &0u64.to_le_bytes()[..]));
    let (_, listing) = call("GET", "/components");
    let listing = json(&listing);
    let version = listing[0]["version"].as_str().unwrap().to_string();
    assert!(said.contains(&version), "{said} names {version}");
    let (status, _) = call("POST", "/components/nobody/upgrade");
    assert_eq!(status, 404);

    courier.terminate();
    assert!(courier.wait(STOP_TIMEOUT).success());
}

#[test]
fn courier_run_watch_upgrades_a_component_when_its_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("svc.wasm");
    std::fs::copy(guest_path("echo"), &wasm).unwrap();
    let file = manifest(
        dir.path(),
        &format!(
            "[runtime]\nlisten = \"127.0.0.1:1\"\ncache_dir = \"{{cache}}\"\n\n[[component]]\nid = \"svc\"\npath = {:?}\n",
            wasm.display().to_string()
        ),
    );
    let mut courier = Courier::start(&[
        "run",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--watch",
    ]);
    let address = courier.address();
    assert!(
        courier
            .stdout()
            .contains("watching 1 component file for changes"),
        "{}",
        courier.stdout()
    );
    let agent = client();
    let url = format!("http://{address}/components/svc/requests");
    assert_eq!(post(&agent, &url, b"hi"), (200, b"hi".to_vec()));

    // A build replaces the file: write the new version beside it and rename it over.
    let next = dir.path().join("svc.wasm.new");
    std::fs::copy(guest_path("counter"), &next).unwrap();
    std::fs::rename(&next, &wasm).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !courier.stdout().contains("courier: upgraded `svc` from ") {
        assert!(
            Instant::now() < deadline,
            "no upgrade logged\nstdout:\n{}\nstderr:\n{}",
            courier.stdout(),
            courier.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    }
    // The counter answers now: no message counted yet.
    assert_eq!(post(&agent, &url, b""), (200, 0u64.to_le_bytes().to_vec()));

    courier.terminate();
    assert!(courier.wait(STOP_TIMEOUT).success());
}

/// What a request written by hand got back: its status and the rest of the answer, within
/// five seconds of sending its head (and `body`, if any).
fn raw_answer(address: &str, head: &str, body: &[u8]) -> (Option<u16>, String) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(address).expect("the ingress accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split(' ').nth(1).and_then(|code| code.parse().ok());
    (status, answer)
}

/// `courier upgrade ID PATH --url URL`, with `XDG_RUNTIME_DIR` set to `runtime_dir` and no
/// `COURIER_TOKEN`, and `token` as `--token` if given.
fn courier_upgrade(
    id: &str,
    path: &Path,
    url: &str,
    runtime_dir: &Path,
    token: Option<&str>,
) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_courier"));
    command
        .args(["upgrade", id])
        .arg(path)
        .args(["--url", url])
        .env("XDG_RUNTIME_DIR", runtime_dir)
        .env_remove("COURIER_TOKEN");
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    command.output().expect("the courier binary starts")
}

#[test]
fn without_a_configured_token_management_asks_for_the_one_the_run_made() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let file = manifest(
        dir.path(),
        r#"
[runtime]
cache_dir = "{cache}"

[[component]]
id = "svc"
path = "{echo}"

[[component]]
id = "panicker"
path = "{panicker}"
restart = { policy = "temporary" }
"#,
    );
    let mut courier = Courier::start(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let address = courier.address();
    let base = format!("http://{address}");
    let agent = client();

    // Made for the run, in a file of the user's alone, at the place the address names.
    let token_file = made_token_file(&courier);
    let port = address.rsplit(':').next().unwrap();
    assert_eq!(
        token_file,
        courier
            .runtime_dir()
            .join(format!("courier/ingress-127.0.0.1-{port}.token"))
    );
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(mode(token_file.parent().unwrap()), 0o700);
    let token = made_token(&courier);
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");

    // Messages, requests and reads stay open, as in the quick start.
    let (status, reply) = post(&agent, &format!("{base}/components/svc/requests"), b"hi");
    assert_eq!((status, reply.as_slice()), (200, &b"hi"[..]));
    let (status, _) = post(&agent, &format!("{base}/components/svc/messages"), b"hi");
    assert_eq!(status, 202);
    assert_eq!(get(&agent, &format!("{base}/components")).0, 200);

    // Restarts and upgrades ask for it, and the refusal says where it is.
    // (A body the runner does not read is kept short: one it refuses before reading is
    // left unread, and a long one would meet a reset connection.)
    let counter = guest_path("counter");
    let component = b"\0asm, never read";
    let upgrade_url = format!("{base}/components/svc/upgrade");
    let (status, body) = post(&agent, &upgrade_url, component);
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains(&token_file.display().to_string()),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _) = post_with_token(&agent, &upgrade_url, component, "not-the-token");
    assert_eq!(status, 401);
    let restart_url = format!("{base}/components/panicker/restart");
    assert_eq!(post(&agent, &restart_url, b"").0, 401);
    assert_eq!(post_with_token(&agent, &restart_url, b"", &token).0, 409);
    let (status, reply) = post(&agent, &format!("{base}/components/svc/requests"), b"still");
    assert_eq!(
        (status, reply.as_slice()),
        (200, &b"still"[..]),
        "not upgraded"
    );

    // `courier upgrade` finds it by itself.
    let done = courier_upgrade("svc", &counter, &base, courier.runtime_dir(), None);
    assert!(
        done.status.success(),
        "{}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    let (status, count) = post(&agent, &format!("{base}/components/svc/requests"), b"");
    assert_eq!((status, count), (200, 0u64.to_le_bytes().to_vec()));

    // Gone with the run.
    courier.terminate();
    assert!(courier.wait(STOP_TIMEOUT).success(), "{}", courier.stderr());
    assert!(!token_file.exists(), "{} left behind", token_file.display());
}

#[test]
fn an_upgrade_is_refused_before_its_body_is_read_and_one_compiles_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(
        dir.path(),
        r#"
[runtime]
cache_dir = "{cache}"
token = "s3cret"

[[component]]
id = "svc"
path = "{echo}"

[[component]]
id = "panicker"
path = "{panicker}"
restart = { policy = "temporary" }
"#,
    );
    let courier = Courier::start(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let address = courier.address();
    let url = format!("http://{address}");
    // A head announcing 10 MB of component, without the body: every refusal below comes
    // at once, before any of it is read (the body timeout would be 30 s).
    let head = |id: &str, token: &str, length: u64| {
        format!(
            "POST /components/{id}/upgrade HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
        )
    };
    let refused = |id: &str, token: &str, length: u64| {
        let (status, answer) = raw_answer(&address, &head(id, token, length), b"");
        (
            status.unwrap_or_else(|| panic!("no answer: {answer:?}")),
            answer,
        )
    };
    assert_eq!(refused("svc", "wrong", 10_000_000).0, 401);
    let (status, answer) = refused("nobody", "s3cret", 10_000_000);
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = refused("svc", "s3cret", 100 << 20);
    assert_eq!(status, 413, "{answer}");
    let agent = client();
    let (status, _) = post_with_token(
        &agent,
        &format!("{url}/components/panicker/messages"),
        b"boom",
        "s3cret",
    );
    assert_eq!(status, 202);
    let failed_by = Instant::now() + STOP_TIMEOUT;
    loop {
        let mut response = agent
            .get(&format!("{url}/components"))
            .header("Authorization", "Bearer s3cret")
            .call()
            .unwrap();
        let listing = json(&response.body_mut().read_to_vec().unwrap());
        let panicker = listing
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "panicker")
            .cloned()
            .unwrap();
        if panicker["state"] == "failed" {
            break;
        }
        assert!(
            Instant::now() < failed_by,
            "panicker did not fail: {listing}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let (status, answer) = refused("panicker", "s3cret", 10_000_000);
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer.contains("upgrade-refused") && answer.contains("failed"),
        "{answer}"
    );

    // An upgrade whose body is on its way holds the one compile slot: another is refused
    // with 429 until it is gone.
    let mut uploading = std::net::TcpStream::connect(&address).unwrap();
    {
        use std::io::Write;
        uploading
            .write_all(head("svc", "s3cret", 10_000).as_bytes())
            .unwrap();
        uploading.write_all(b"\0asm").unwrap();
    }
    let counter = guest_path("counter");
    let busy_by = Instant::now() + Duration::from_secs(10);
    loop {
        let busy = courier_upgrade("svc", &counter, &url, dir.path(), Some("s3cret"));
        let said = String::from_utf8_lossy(&busy.stderr);
        assert!(
            !busy.status.success(),
            "upgraded while another was received"
        );
        if said.contains("(429)") {
            assert!(said.contains("upgrade-busy"), "{said}");
            break;
        }
        // The server may not have read the other's head yet.
        assert!(Instant::now() < busy_by, "{said}");
        thread::sleep(Duration::from_millis(50));
    }
    drop(uploading);
    let done_by = Instant::now() + Duration::from_secs(10);
    loop {
        let done = courier_upgrade("svc", &counter, &url, dir.path(), Some("s3cret"));
        if done.status.success() {
            break;
        }
        let said = String::from_utf8_lossy(&done.stderr);
        assert!(said.contains("(429)"), "{said}");
        assert!(
            Instant::now() < done_by,
            "the slot was not given back: {said}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_upgrade_whose_client_leaves_stops_waiting_for_its_compile() {
    let dir = tempfile::tempdir().unwrap();
    // A cache of its own, so that the component below is compiled, not found.
    let cache = tempfile::tempdir().unwrap();
    let file = manifest(
        dir.path(),
        &format!(
            r#"
[runtime]
cache_dir = {:?}
token = "s3cret"

[[component]]
id = "svc"
path = "{{echo}}"
"#,
            cache.path().display().to_string()
        ),
    );
    let courier = Courier::start(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let address = courier.address();
    let url = format!("http://{address}");
    let slow = crate::slow_to_compile_component();
    let head = format!(
        "POST /components/svc/upgrade HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer s3cret\r\nContent-Length: {}\r\n\r\n",
        slow.len()
    );
    {
        use std::io::Write;
        let mut leaving = std::net::TcpStream::connect(&address).unwrap();
        leaving.write_all(head.as_bytes()).unwrap();
        leaving.write_all(&slow).unwrap();
        thread::sleep(Duration::from_millis(300));
        // Gone while it compiles.
    }
    let noticed_by = Instant::now() + Duration::from_secs(10);
    while !courier
        .stderr()
        .contains("upgrade abandoned: the client left")
    {
        assert!(
            Instant::now() < noticed_by,
            "the handler did not notice\nstdout:\n{}\nstderr:\n{}",
            courier.stdout(),
            courier.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
    // The compile runs to its end and is dropped; then the next upgrade has the slot.
    let counter = guest_path("counter");
    let done_by = Instant::now() + Duration::from_secs(300);
    loop {
        let done = courier_upgrade("svc", &counter, &url, dir.path(), Some("s3cret"));
        if done.status.success() {
            break;
        }
        let said = String::from_utf8_lossy(&done.stderr);
        assert!(said.contains("(429)"), "{said}");
        assert!(Instant::now() < done_by, "the compile never ended: {said}");
        thread::sleep(Duration::from_millis(200));
    }
    let (status, count) = post_with_token(
        &client(),
        &format!("{url}/components/svc/requests"),
        b"",
        "s3cret",
    );
    assert_eq!((status, count), (200, 0u64.to_le_bytes().to_vec()));
}

#[test]
fn concurrent_restarts_of_one_component_start_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(
        dir.path(),
        r#"
[runtime]
cache_dir = "{cache}"
token = "s3cret"

[[component]]
id = "panicker"
path = "{panicker}"
restart = { policy = "temporary" }
"#,
    );
    let courier = Courier::start(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let base = format!("http://{}", courier.address());
    let agent = client();
    let state = || {
        let mut response = agent
            .get(&format!("{base}/components"))
            .header("Authorization", "Bearer s3cret")
            .call()
            .unwrap();
        json(&response.body_mut().read_to_vec().unwrap())
    };
    // The race needs two restarts between the state check and the spawn: rare in one round.
    for round in 0..20 {
        let (status, _) = post_with_token(
            &agent,
            &format!("{base}/components/panicker/messages"),
            b"boom",
            "s3cret",
        );
        assert_eq!(status, 202);
        let failed_by = Instant::now() + STOP_TIMEOUT;
        while state()[0]["state"] != "failed" {
            assert!(Instant::now() < failed_by, "panicker did not fail");
            thread::sleep(Duration::from_millis(10));
        }
        let start = Arc::new(std::sync::Barrier::new(8));
        let restarts: Vec<_> = (0..8)
            .map(|_| {
                let start = start.clone();
                let url = format!("{base}/components/panicker/restart");
                thread::spawn(move || {
                    let agent = client();
                    start.wait();
                    let (status, body) = post_with_token(&agent, &url, b"", "s3cret");
                    (status, String::from_utf8_lossy(&body).into_owned())
                })
            })
            .collect();
        let answers: Vec<(u16, String)> = restarts.into_iter().map(|t| t.join().unwrap()).collect();
        let won = answers.iter().filter(|(status, _)| *status == 200).count();
        assert_eq!(won, 1, "round {round}: {answers:?}");
        for (status, body) in &answers {
            assert!(
                *status == 200
                    || (*status == 409
                        && (body.contains("restart-in-progress") || body.contains("\"running\""))),
                "round {round}: {answers:?}"
            );
        }
        let listing = state();
        assert_eq!(listing.as_array().unwrap().len(), 1, "{listing}");
        assert_eq!(listing[0]["state"], "running", "{listing}");
    }
}

/// Waits until `courier` has printed `line`, failing with what it printed.
fn wait_for_line(courier: &Courier, line: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !courier.stdout().contains(line) {
        assert!(
            Instant::now() < deadline,
            "no `{line}`\nstdout:\n{}\nstderr:\n{}",
            courier.stdout(),
            courier.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Replaces `file` as a build does: the new version written beside it and renamed over it.
fn replace_with(file: &Path, new: &Path) {
    let next = file.with_extension("wasm.new");
    std::fs::copy(new, &next).unwrap();
    std::fs::rename(&next, file).unwrap();
}

#[test]
fn courier_run_watch_follows_links_and_folders_made_again() {
    let dir = tempfile::tempdir().unwrap();
    // `svc` is a link to a file in another folder, where the rebuild writes.
    let build = dir.path().join("build");
    std::fs::create_dir(&build).unwrap();
    std::fs::copy(guest_path("echo"), build.join("svc.wasm")).unwrap();
    let link = dir.path().join("svc.wasm");
    std::os::unix::fs::symlink(build.join("svc.wasm"), &link).unwrap();
    // `other` is in a folder that is removed and made again, as by `cargo clean`.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::copy(guest_path("echo"), out.join("other.wasm")).unwrap();
    let file = manifest(
        dir.path(),
        &format!(
            "[runtime]\ncache_dir = \"{{cache}}\"\n\n[[component]]\nid = \"svc\"\npath = {:?}\n\n[[component]]\nid = \"other\"\npath = {:?}\n",
            link.display().to_string(),
            out.join("other.wasm").display().to_string()
        ),
    );
    let mut courier = Courier::start(&[
        "run",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--watch",
    ]);
    let address = courier.address();
    let agent = client();
    let svc = format!("http://{address}/components/svc/requests");
    let other = format!("http://{address}/components/other/requests");
    assert_eq!(post(&agent, &svc, b"hi"), (200, b"hi".to_vec()));
    assert_eq!(post(&agent, &other, b"hi"), (200, b"hi".to_vec()));

    replace_with(&build.join("svc.wasm"), &guest_path("counter"));
    wait_for_line(
        &courier,
        "courier: upgraded `svc` from ",
        Duration::from_secs(30),
    );
    assert_eq!(post(&agent, &svc, b""), (200, 0u64.to_le_bytes().to_vec()));

    std::fs::remove_dir_all(&out).unwrap();
    // Long enough for the watch to find the folder gone.
    thread::sleep(Duration::from_millis(1500));
    std::fs::create_dir(&out).unwrap();
    std::fs::copy(guest_path("counter"), out.join("other.wasm")).unwrap();
    wait_for_line(
        &courier,
        "courier: upgraded `other` from ",
        Duration::from_secs(30),
    );
    assert_eq!(
        post(&agent, &other, b""),
        (200, 0u64.to_le_bytes().to_vec())
    );

    courier.terminate();
    assert!(courier.wait(STOP_TIMEOUT).success());
}

#[test]
fn a_runner_whose_nats_servers_are_all_gone_still_drains_and_reports_in_time() {
    let mut nats = courier_test_support::nats::NatsServer::start();
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let file_a = manifest(dir_a.path(), &LATTICE_A.replace("{nats}", &nats.url()));
    let file_b = manifest(dir_b.path(), &LATTICE_B.replace("{nats}", &nats.url()));
    let listen = ["--listen", "127.0.0.1:0"];
    let mut b = Courier::start(&[&["run", file_b.to_str().unwrap()][..], &listen[..]].concat());
    let _ = b.address();
    let mut a = Courier::start(&[&["run", file_a.to_str().unwrap()][..], &listen[..]].concat());
    let address_a = a.address();
    let agent = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = get(&agent, &format!("http://{address_a}/lattice"));
        if json(body.as_bytes())["hosts"][0]["served"] == serde_json::json!(["echo", "pong"]) {
            break;
        }
        assert!(Instant::now() < deadline, "host A never heard of host B");
        thread::sleep(Duration::from_millis(50));
    }
    // Traffic on its way, then every server gone, then SIGTERM: the drain (1 s in the
    // manifest) bounds every wait on NATS, so the runner ends and reports in time.
    let (status, _) = post(
        &agent,
        &format!("http://{address_a}/components/ping/messages"),
        b"1000",
    );
    assert_eq!(status, 202);
    nats.kill();
    let began = Instant::now();
    a.terminate();
    let status = a.wait(STOP_TIMEOUT);
    let took = began.elapsed();
    assert!(status.success(), "{status}\n{}", a.stderr());
    assert!(
        took < Duration::from_secs(4),
        "a 1 s drain with no server took {took:?}\n{}",
        a.stdout()
    );
    assert!(
        a.stdout().contains("courier: to other hosts "),
        "the report, with what was sent to other hosts:\n{}",
        a.stdout()
    );
    b.terminate();
    assert!(b.wait(STOP_TIMEOUT).success(), "{}", b.stderr());
}

/// Wait until the host at `address` hears another host serve `id`.
pub(crate) fn wait_until_served(address: &str, id: &str) {
    let agent = client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = get(&agent, &format!("http://{address}/lattice"));
        let lattice = json(body.as_bytes());
        let served = lattice["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|host| {
                // Alone (`expose`) or beside other hosts (`replicas`, keyed or not).
                ["served", "replicated", "keyed"].iter().any(|list| {
                    host[*list]
                        .as_array()
                        .is_some_and(|ids| ids.iter().any(|s| s == id))
                })
            });
        if served {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{address} never heard of `{id}`: {lattice}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}
