//! The dashboard at `GET /`: its assets and their headers over plain HTTP, and the page itself
//! in a real headless Chromium against a running `courier run`: read with `--dump-dom`, and
//! clicked through over the DevTools protocol.
//!
//! The browser is `$CHROMIUM_BIN`, else `chromium` (or another Chromium-based browser that
//! takes the same flags) on `PATH`; `cargo xtask test-all` finds or installs one and sets
//! `CHROMIUM_BIN` (`cargo xtask chromium` does only that). Without one, the browser test says
//! why and passes, except in CI (`CI` set), where it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::run::{
    Courier, LATTICE_A, LATTICE_B, STOP_TIMEOUT, client, get, json, made_token, manifest, post,
};

/// The environment variable naming the browser, as `cargo xtask test-all` sets it.
const CHROMIUM_BIN_ENV: &str = "CHROMIUM_BIN";

/// Far past what a page load takes (about 2 s here), short enough that a browser that hangs
/// fails the test rather than the whole run.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// The text a guest controls that must reach the page as text: a dead letter's payload, and
/// with it the panic's reason, which quotes the payload.
const HOSTILE: &str = "<img src=x onerror=document.title='owned'>";

const MANIFEST: &str = r#"
[runtime]
cache_dir = "{cache}"

[[component]]
id = "echo"
path = "{echo}"

[[component]]
id = "pong"
path = "{pong}"

[[component]]
id = "panicker"
path = "{panicker}"
restart = { policy = "temporary" }
"#;

#[test]
fn the_dashboard_is_served_compiled_in_with_a_strict_policy_and_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    // A configured token guards every data route; the page, which holds no data, stays open
    // so that it can ask for the token.
    let body = format!("{MANIFEST}\n").replace("[runtime]\n", "[runtime]\ntoken = \"s3cret\"\n");
    let file = manifest(dir.path(), &body);
    let courier = Courier::start(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let base = format!("http://{}", courier.address());
    assert!(
        courier
            .stdout()
            .contains(&format!("courier: dashboard at {base}/")),
        "{}",
        courier.stdout()
    );
    let agent = client();
    for (path, content_type, needle) in [
        (
            "/",
            "text/html; charset=utf-8",
            "<script src=\"/dashboard.js\"",
        ),
        (
            "/dashboard.js",
            "text/javascript; charset=utf-8",
            "textContent",
        ),
        ("/dashboard.css", "text/css; charset=utf-8", ".spark"),
    ] {
        let mut response = agent.get(&format!("{base}{path}")).call().unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(header("content-type"), content_type, "{path}");
        let policy = header("content-security-policy");
        assert!(
            policy.starts_with("default-src 'self';"),
            "{path}: {policy}"
        );
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{path}: {policy}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        let text = response.body_mut().read_to_string().unwrap();
        assert!(text.contains(needle), "{path} lacks `{needle}`");
    }
    let (status, _) = get(&agent, &format!("{base}/components"));
    assert_eq!(status, 401, "the data routes still ask for the token");
    let (status, _) = get(&agent, &format!("{base}/dashboard.js.map"));
    assert_eq!(
        status, 401,
        "only the assets are open, not their neighbours"
    );
}

#[test]
fn dead_letters_can_be_narrowed_to_a_component_and_the_latest_few() {
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(dir.path(), MANIFEST);
    let courier = Courier::start(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let base = format!("http://{}", courier.address());
    let agent = client();
    // It panics and fails the component (temporary: never restarted): one dead letter.
    let (status, _) = post(
        &agent,
        &format!("{base}/components/panicker/messages"),
        b"one",
    );
    assert_eq!(status, 202);
    wait_for_state(&agent, &base, "panicker", "failed");
    let letters = |query: &str| {
        let (status, body) = get(&agent, &format!("{base}/dead-letters{query}"));
        assert_eq!(status, 200, "{query}: {body}");
        json(body.as_bytes()).as_array().unwrap().clone()
    };
    assert_eq!(letters("").len(), 1);
    assert_eq!(letters("?target=panicker&limit=5").len(), 1);
    assert_eq!(letters("?target=panicker")[0]["payload_preview"], "one");
    assert!(letters("?target=echo").is_empty());
    assert!(letters("?limit=0").is_empty());
    for bad in ["?limit=-1", "?limit=many", "?since=0"] {
        let (status, body) = get(&agent, &format!("{base}/dead-letters{bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(json(body.as_bytes())["error"], "bad-request");
    }
    let (status, body) = get(&agent, &format!("{base}/components"));
    assert_eq!(status, 200);
    let echo = json(body.as_bytes())
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "echo")
        .cloned()
        .unwrap();
    assert_eq!(echo["latency"]["count"], 0, "{echo}");
    assert!(
        echo["latency"].get("p99_ms").is_none(),
        "none before a call"
    );
}

#[test]
fn the_page_in_chromium_shows_live_numbers_and_a_guests_markup_as_text() {
    let Some(chromium) = chromium_or_skip("the dashboard's browser test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(dir.path(), MANIFEST);
    let courier = Courier::start(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let base = format!("http://{}", courier.address());
    let agent = client();
    let page = format!("{base}/");

    let (status, _) = post(
        &agent,
        &format!("{base}/components/panicker/messages"),
        HOSTILE.as_bytes(),
    );
    assert_eq!(status, 202);
    wait_for_state(&agent, &base, "panicker", "failed");

    let before = dump_dom(&chromium, &page);
    assert!(
        polls(&before) >= 1,
        "the page never read the routes:\n{before}"
    );
    let delivered_before: u64 = field(&before, "echo", "delivered").parse().unwrap();
    assert_eq!(field(&before, "panicker", "state"), "failed");
    // The guest's text arrived, as text: escaped in the serialised DOM, and no element made
    // of it (the page has no <img> of its own).
    assert!(
        !before.contains("<img"),
        "a guest's text became markup:\n{before}"
    );
    assert!(
        before.contains("&lt;img src=x onerror=document.title='owned'&gt;"),
        "the dead letter's text is missing:\n{before}"
    );
    assert!(
        before.contains("<title>Courier</title>"),
        "no script ran the guest's text"
    );
    // The failed component offers a restart, which says it needs the token.
    assert!(before.contains("restart (token)"), "{before}");

    const SENT: u64 = 25;
    for i in 0..SENT {
        let (status, _) = post(
            &agent,
            &format!("{base}/components/echo/messages"),
            format!("{i}").as_bytes(),
        );
        assert_eq!(status, 202);
    }
    wait_for_delivered(&agent, &base, "echo", delivered_before + SENT);

    let after = dump_dom(&chromium, &page);
    let delivered_after: u64 = field(&after, "echo", "delivered").parse().unwrap();
    assert!(
        delivered_after >= delivered_before + SENT,
        "echo's delivered count went from {delivered_before} to {delivered_after} after \
         {SENT} messages"
    );
    assert!(
        !field(&after, "echo", "latency_p50").is_empty(),
        "echo's latency is shown once it handled messages:\n{after}"
    );

    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    browser(
        &chromium,
        &[
            "--window-size=1280,720",
            "--hide-scrollbars",
            &format!("--screenshot={}", screenshot.display()),
            &page,
        ],
    );
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    eprintln!("dashboard screenshot: {}", screenshot.display());
}

/// The browser to drive, or `None` (after saying why) where there is none and this is not
/// CI; in CI a missing browser fails the test.
fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let found = match std::env::var_os(CHROMIUM_BIN_ENV) {
        Some(path) => Some(PathBuf::from(path)),
        None => [
            "chromium",
            "chromium-browser",
            "google-chrome-stable",
            "google-chrome",
        ]
        .iter()
        .find_map(|name| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        }),
    };
    let in_ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "false" | "0"));
    match found {
        Some(path) => Some(path),
        None if in_ci => panic!(
            "{test} needs Chromium, and CI is set: run `cargo xtask test-all` (which installs \
             it) or set {CHROMIUM_BIN_ENV}"
        ),
        None => {
            eprintln!(
                "skipping {test}: no Chromium ({CHROMIUM_BIN_ENV} is unset and there is none on \
                 PATH); `cargo xtask chromium` installs one"
            );
            None
        }
    }
}

/// The page as Chromium has it after about three seconds of the page's own time (virtual
/// time, which waits for the page's fetches): at least two polls of the routes.
fn dump_dom(chromium: &Path, url: &str) -> String {
    browser(chromium, &["--dump-dom", url])
}

/// Runs headless Chromium with a profile of its own and `args`, and returns what it printed.
fn browser(chromium: &Path, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(chromium)
        .args([
            "--headless=new",
            // The tests run as root in containers, where Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{} does not start: {e}", chromium.display()));
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within {BROWSER_TIMEOUT:?}:\n{}",
                std::fs::read_to_string(err.path()).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "chromium failed ({status}):\n{}",
        std::fs::read_to_string(err.path()).unwrap_or_default()
    );
    std::fs::read_to_string(out.path()).unwrap()
}

/// How many times the page read the routes (`<body data-polls="N">`).
fn polls(dom: &str) -> u64 {
    attribute(dom, 0, "data-polls").parse().unwrap_or(0)
}

/// A component's figure as the page shows it: the `data-value` of the cell
/// `data-field="FIELD"` in the row `data-component="ID"`, or its `data-p50` for
/// `latency_p50`.
fn field(dom: &str, id: &str, field: &str) -> String {
    let row = dom
        .find(&format!("<tr data-component=\"{id}\""))
        .unwrap_or_else(|| panic!("no row for `{id}` in\n{dom}"));
    let end = row + dom[row..].find("</tr>").unwrap();
    let (name, attr) = match field {
        "latency_p50" => ("latency", "data-p50"),
        other => (other, "data-value"),
    };
    let cell = row
        + dom[row..end]
            .find(&format!("data-field=\"{name}\""))
            .unwrap_or_else(|| panic!("no `{name}` cell for `{id}` in\n{}", &dom[row..end]));
    let tag_start = dom[..cell].rfind('<').unwrap();
    attribute(dom, tag_start, attr)
}

/// The value of `name` in the first tag at or after `from` that has it.
fn attribute(dom: &str, from: usize, name: &str) -> String {
    let key = format!("{name}=\"");
    let at = from
        + dom[from..]
            .find(&key)
            .unwrap_or_else(|| panic!("no {name} in the page"));
    let value = &dom[at + key.len()..];
    value[..value.find('"').unwrap()].to_string()
}

fn wait_for_state(agent: &ureq::Agent, base: &str, id: &str, state: &str) {
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        let (_, body) = get(agent, &format!("{base}/components"));
        let components = json(body.as_bytes());
        let now = components
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .map(|c| c["state"].clone());
        if now.as_ref().and_then(|s| s.as_str()) == Some(state) {
            return;
        }
        assert!(Instant::now() < deadline, "{id} is not {state}: {body}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_delivered(agent: &ureq::Agent, base: &str, id: &str, at_least: u64) {
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        let (_, body) = get(agent, &format!("{base}/components"));
        let delivered = json(body.as_bytes())
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .and_then(|c| c["delivered"].as_u64())
            .unwrap_or(0);
        if delivered >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} delivered {delivered} of {at_least}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn in_chromium_the_token_enables_restart_and_a_components_letters_open_as_text() {
    let Some(chromium) = chromium_or_skip("the dashboard's restart test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(dir.path(), MANIFEST);
    let courier = Courier::start(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let base = format!("http://{}", courier.address());
    let agent = client();
    let (status, _) = post(
        &agent,
        &format!("{base}/components/panicker/messages"),
        HOSTILE.as_bytes(),
    );
    assert_eq!(status, 202);
    wait_for_state(&agent, &base, "panicker", "failed");

    let browser = DevTools::open(&chromium, &format!("{base}/"));
    browser.wait_for_first_poll();
    let token = serde_json::to_string(&made_token(&courier)).unwrap();
    // Through the page as a user would: its buttons and its token field, with the page's
    // own fetches (its Origin, its Authorization header) under its own policy.
    let script = format!(
        r#"(async () => {{
            const until = async (what, test) => {{
                for (let i = 0; i < 300; i++) {{
                    const value = test();
                    if (value) return value;
                    await new Promise((resolve) => setTimeout(resolve, 50));
                }}
                throw new Error("timed out waiting for " + what);
            }};
            const row = () => document.querySelector('tr[data-component="panicker"]');
            const restart = () => row().querySelector("button.restart");
            await until("a poll", () => Number(document.body.dataset.polls) >= 1);
            const withoutToken = {{ disabled: restart().disabled, label: restart().textContent }};

            row().querySelector("button.letters").click();
            const letters = document.querySelector('tr[data-letters-of="panicker"]');
            const reason = await until("its letters", () =>
                letters.querySelector('[data-field="reason"]'));

            document.getElementById("token").value = {token};
            document.getElementById("token-form").requestSubmit();
            await until("the button to be enabled", () => !restart().disabled);
            restart().click();
            const result = await until("the restart", () =>
                /^restart/.test(document.getElementById("action-result").textContent) &&
                !/…$/.test(document.getElementById("action-result").textContent) &&
                document.getElementById("action-result").textContent);
            // A refusal is reported by the assertions below, with the page's own words.
            if (result.startsWith("restarted ")) await until("running", () =>
                row().querySelector('[data-field="state"]').dataset.value === "running");
            return JSON.stringify({{
                withoutToken,
                letterReason: reason.textContent,
                imagesInLetters: letters.querySelectorAll("img").length,
                result,
                restartHidden: restart().hidden,
                tokenState: document.getElementById("token-state").dataset.token,
            }});
        }})()"#
    );
    let outcome: serde_json::Value =
        serde_json::from_str(browser.evaluate(&script).as_str().unwrap()).unwrap();
    assert_eq!(outcome["withoutToken"]["disabled"], true, "{outcome}");
    assert_eq!(
        outcome["withoutToken"]["label"], "restart (token)",
        "{outcome}"
    );
    let reason = outcome["letterReason"].as_str().unwrap();
    assert!(
        reason.contains(HOSTILE),
        "the reason shows the guest's text as text: {reason}"
    );
    assert_eq!(outcome["imagesInLetters"], 0, "{outcome}");
    assert_eq!(outcome["result"], "restarted panicker", "{outcome}");
    assert_eq!(
        outcome["restartHidden"], true,
        "a running one offers none: {outcome}"
    );
    assert_eq!(outcome["tokenState"], "set", "{outcome}");
    wait_for_state(&agent, &base, "panicker", "running");
}

/// A headless Chromium showing one page, driven over the DevTools protocol: a WebSocket to the
/// page's target, spoken with std alone (text frames, masked from the client as the protocol
/// asks). Killed when dropped.
struct DevTools {
    _chromium: KillOnDrop,
    _profile: tempfile::TempDir,
    socket: std::cell::RefCell<std::net::TcpStream>,
    next_id: std::cell::Cell<u64>,
}

impl DevTools {
    fn open(chromium: &Path, url: &str) -> DevTools {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--window-size=1280,720",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", chromium.display()));
        let mut chromium = KillOnDrop(child);
        // Chromium writes the port it chose, then the browser's path, to this file.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + BROWSER_TIMEOUT;
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse::<u16>().ok())
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port"
            );
            assert!(
                chromium.0.try_wait().unwrap().is_none(),
                "chromium exited before opening its DevTools port"
            );
            thread::sleep(Duration::from_millis(50));
        };
        let agent = client();
        let page_socket = loop {
            let (_, list) = get(&agent, &format!("http://127.0.0.1:{port}/json/list"));
            let target = json(list.as_bytes())
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["type"] == "page" && t["url"].as_str() == Some(url))
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string));
            if let Some(target) = target {
                break target;
            }
            assert!(Instant::now() < deadline, "no page for {url}: {list}");
            thread::sleep(Duration::from_millis(50));
        };
        DevTools {
            _chromium: chromium,
            _profile: profile,
            socket: std::cell::RefCell::new(websocket(&page_socket)),
            next_id: std::cell::Cell::new(1),
        }
    }

    /// Waits for the page to have loaded and read the routes once: until then its document
    /// may still be replaced, which ends any script run in it.
    fn wait_for_first_poll(&self) {
        let deadline = Instant::now() + BROWSER_TIMEOUT;
        let probe =
            "document.readyState === 'complete' && Number(document.body.dataset.polls) >= 1";
        while self.try_evaluate(probe) != Ok(serde_json::Value::Bool(true)) {
            assert!(Instant::now() < deadline, "the page never read the routes");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of `expression` in the page, a promise awaited.
    fn evaluate(&self, expression: &str) -> serde_json::Value {
        self.try_evaluate(expression)
            .unwrap_or_else(|error| panic!("Runtime.evaluate failed: {error}"))
    }

    fn try_evaluate(&self, expression: &str) -> Result<serde_json::Value, String> {
        let answer = self.call(
            "Runtime.evaluate",
            serde_json::json!({
                "expression": expression,
                "awaitPromise": true,
                "returnByValue": true,
            }),
        )?;
        if let Some(exception) = answer.get("exceptionDetails") {
            return Err(format!("the page's script failed: {exception}"));
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Sends one command and waits for its answer: its `result`, or its `error` as text.
    fn call(&self, method: &str, params: serde_json::Value) -> Result<serde_json::Value, String> {
        use std::io::{Read, Write};
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let message = serde_json::json!({ "id": id, "method": method, "params": params });
        let mut socket = self.socket.borrow_mut();
        let payload = message.to_string().into_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x5a, 0xa5, 0x3c, 0xc3];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        socket.write_all(&frame).unwrap();
        // Events come between answers; this waits for its own.
        loop {
            let mut text = Vec::new();
            loop {
                let mut head = [0u8; 2];
                socket
                    .read_exact(&mut head)
                    .expect("an answer from chromium");
                let mut len = u64::from(head[1] & 0x7f);
                if len == 126 {
                    let mut n = [0u8; 2];
                    socket.read_exact(&mut n).unwrap();
                    len = u64::from(u16::from_be_bytes(n));
                } else if len == 127 {
                    let mut n = [0u8; 8];
                    socket.read_exact(&mut n).unwrap();
                    len = u64::from_be_bytes(n);
                }
                let mut body = vec![0u8; usize::try_from(len).unwrap()];
                socket.read_exact(&mut body).unwrap();
                text.extend_from_slice(&body);
                if head[0] & 0x80 != 0 {
                    break;
                }
            }
            let answer = json(&text);
            if answer["id"] == id {
                if let Some(error) = answer.get("error") {
                    return Err(format!("{method} failed: {error}"));
                }
                return Ok(answer["result"].clone());
            }
        }
    }
}

/// A child process, killed and reaped when dropped (a test that fails leaves no browser).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A WebSocket to `url` (`ws://HOST:PORT/PATH`), after the HTTP upgrade.
fn websocket(url: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("ws://").expect("a ws:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut socket = std::net::TcpStream::connect(authority).unwrap();
    socket.set_read_timeout(Some(BROWSER_TIMEOUT)).unwrap();
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    // The answer's head, a byte at a time so that nothing of the first frame is read.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        socket.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "no WebSocket from chromium: {head}"
    );
    socket
}

#[test]
fn in_a_lattice_the_page_lists_the_other_hosts_and_what_each_serves() {
    let Some(chromium) = chromium_or_skip("the dashboard's lattice test") else {
        return;
    };
    let nats = courier_test_support::nats::NatsServer::start();
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let file_a = manifest(dir_a.path(), &LATTICE_A.replace("{nats}", &nats.url()));
    let file_b = manifest(dir_b.path(), &LATTICE_B.replace("{nats}", &nats.url()));
    let listen = ["--listen", "127.0.0.1:0"];
    let b = Courier::start(&[&["run", file_b.to_str().unwrap()][..], &listen[..]].concat());
    b.address();
    let a = Courier::start(&[&["run", file_a.to_str().unwrap()][..], &listen[..]].concat());
    let base = format!("http://{}", a.address());
    let agent = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = get(&agent, &format!("{base}/lattice"));
        if json(body.as_bytes())["hosts"][0]["host"] == "b" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "host A never heard of host B: {body}"
        );
        thread::sleep(Duration::from_millis(50));
    }

    let dom = dump_dom(&chromium, &format!("{base}/"));
    let row = dom
        .find("<tr data-host=\"b\">")
        .unwrap_or_else(|| panic!("no row for host b:\n{dom}"));
    let served = attribute_text(&dom[row..], "data-field=\"served\"");
    assert_eq!(served, "echo, pong", "{dom}");
    assert!(dom.contains("(e2e, this host a, 1 other host)"), "{dom}");
}

/// The text of the first element whose start tag holds `marker`.
fn attribute_text(dom: &str, marker: &str) -> String {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in\n{dom}"));
    let text = &dom[at + dom[at..].find('>').unwrap() + 1..];
    text[..text.find('<').unwrap()].to_string()
}
