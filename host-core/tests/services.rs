//! The host services a guest sees, and the WASI it does not.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use courier_host_core::{Instance, InstanceOptions};

use crate::common::Setup;

async fn probe(id: &str) -> Instance {
    Setup::new()
        .instance("probe", InstanceOptions::new(id))
        .await
}

async fn ask(instance: &mut Instance, command: &str) -> Vec<u8> {
    instance
        .call_handle_request("host", command.as_bytes())
        .await
        .unwrap()
        .unwrap_or_else(|err| panic!("probe refused `{command}`: {err:?}"))
}

async fn ask_text(instance: &mut Instance, command: &str) -> String {
    String::from_utf8(ask(instance, command).await).unwrap()
}

/// Everything the host logs while the guard lives, as text.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl CapturedLog {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn current_time_millis_is_within_a_second_of_the_host_clock() {
    let mut instance = probe("probe").await;
    let guest = u64::from_le_bytes(ask(&mut instance, "time").await.try_into().unwrap());
    let host = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        host.abs_diff(guest) < 1000,
        "guest {guest} ms, host {host} ms"
    );
}

#[tokio::test]
async fn guest_log_lines_and_output_reach_tracing_under_the_component_id() {
    let log = CapturedLog::default();
    let _guard = log.install();
    let mut instance = probe("audit/probe-7").await;

    assert_eq!(ask_text(&mut instance, "log:order 42 accepted").await, "ok");
    assert_eq!(
        ask_text(&mut instance, "print:written to stdio").await,
        "ok"
    );

    let text = log.text();
    let logged = text
        .lines()
        .find(|line| line.contains("order 42 accepted"))
        .unwrap_or_else(|| panic!("log line missing from:\n{text}"));
    assert!(
        logged.contains("INFO") && logged.contains("component=\"audit/probe-7\""),
        "{logged}"
    );
    let stdout = text
        .lines()
        .find(|line| line.contains("written to stdio") && line.contains("stdout"))
        .unwrap_or_else(|| panic!("stdout line missing from:\n{text}"));
    assert!(stdout.contains("audit/probe-7"), "{stdout}");
    assert!(
        text.lines()
            .any(|l| l.contains("written to stdio") && l.contains("stderr")),
        "stderr line missing from:\n{text}"
    );
}

#[tokio::test]
async fn a_log_line_is_cut_to_eight_kibibytes_with_its_length() {
    let log = CapturedLog::default();
    let _guard = log.install();
    let mut instance = probe("chatty").await;
    let command = format!("log:{}", "z".repeat(100_000));
    assert_eq!(ask_text(&mut instance, &command).await, "ok");

    let text = log.text();
    let logged = text
        .lines()
        .find(|line| line.contains("zzzz"))
        .unwrap_or_else(|| panic!("log line missing"));
    assert!(logged.len() < 9 * 1024, "{} bytes logged", logged.len());
    assert!(logged.contains("(100000 bytes in all)"), "the cut is said");
}

#[tokio::test]
async fn a_guest_cannot_flood_the_log_or_forge_a_line() {
    let log = CapturedLog::default();
    let _guard = log.install();
    let mut instance = probe("chatty").await;

    // A thousand lines at once: the burst is written, and what the rate refills meanwhile;
    // the rest is dropped and counted.
    let started = std::time::Instant::now();
    for i in 0..1000 {
        assert_eq!(
            ask_text(&mut instance, &format!("log:flood {i}")).await,
            "ok"
        );
    }
    let refilled =
        started.elapsed().as_secs_f64() * f64::from(courier_host_core::guest_log::LINES_PER_SECOND);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(ask_text(&mut instance, "log:after the flood").await, "ok");
    // A newline cannot start a line that looks like another component's.
    let forged = "log:innocent\n2026-11-26T00:00:00Z  INFO component=\"bank\": transfer done";
    assert_eq!(ask_text(&mut instance, forged).await, "ok");

    let text = log.text();
    let written = text.lines().filter(|line| line.contains("flood ")).count();
    let burst = courier_host_core::guest_log::BURST as usize;
    assert!(
        written >= burst && written <= burst + refilled.ceil() as usize + 1,
        "{written} flood lines written, {refilled:.0} refilled"
    );
    let dropped = text
        .lines()
        .find(|line| line.contains("lines of this component's log"))
        .unwrap_or_else(|| panic!("no line says what was dropped:\n{text}"));
    assert!(dropped.contains("chatty"), "{dropped}");
    assert!(text.contains("after the flood"));
    assert!(
        !text
            .lines()
            .any(|line| line.starts_with("2026-11-26T00:00:00Z")),
        "a forged line was written:\n{text}"
    );
    assert!(text.contains("innocent\\n2026-11-26T00:00:00Z"), "{text}");
}

#[tokio::test]
async fn wasi_grants_no_environment_filesystem_or_network() {
    let mut instance = probe("probe").await;
    assert_eq!(ask_text(&mut instance, "env").await, "0,0");

    let fs = ask_text(&mut instance, "fs").await;
    assert!(
        fs.contains("read_dir: err") && fs.contains("create: err"),
        "{fs}"
    );

    let net = ask_text(&mut instance, "net").await;
    assert!(net.starts_with("err"), "{net}");
}

#[tokio::test]
async fn without_a_broker_every_messaging_call_fails_and_none_succeeds_silently() {
    let mut instance = probe("lonely").await;
    assert_eq!(ask_text(&mut instance, "self").await, "lonely");
    for command in ["send:pong", "request:pong", "publish:news"] {
        let answer = ask_text(&mut instance, command).await;
        assert!(
            answer.starts_with("err: MessagingError::TargetNotFound"),
            "{command}: {answer}"
        );
    }
}

#[tokio::test]
async fn a_handler_error_reaches_the_host_as_the_guests_own_result() {
    let mut instance = probe("probe").await;
    let answer = instance
        .call_handle_request("host", b"no such command")
        .await
        .unwrap();
    let err = answer.unwrap_err();
    assert_eq!(
        format!("{err:?}"),
        "ComponentError::InvalidMessage(\"unknown probe command: no such command\")"
    );
    // A handler's own error is an answer, not a trap: the instance stays usable.
    assert_eq!(ask_text(&mut instance, "self").await, "probe");
}
