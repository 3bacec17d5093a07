//! Whatever a guest or the host's caller chooses, a string, a size, a time, is bounded before
//! the broker stores, copies or logs it.

use std::time::Duration;

use courier_host_broker::{
    Broker, BrokerConfig, BrokerError, ComponentSpec, MAX_MAILBOX_CAPACITY, MessagingError,
    Supervision,
};

use crate::common::{SECOND, Setup, engine, load};

/// Asks `bad` (a `hostile`) to run `command` and returns its reply as text.
async fn ask(broker: &Broker, command: &str) -> String {
    ask_as(broker, "bad", command).await
}

/// Asks the `hostile` named `id` to run `command` and returns its reply as text.
async fn ask_as(broker: &Broker, id: &str, command: &str) -> String {
    let reply = broker
        .request(id, command.as_bytes().to_vec(), 60 * SECOND)
        .await
        .unwrap_or_else(|err| panic!("`{command}`: {err:?}"));
    String::from_utf8(reply).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_or_topic_longer_than_any_id_is_refused_and_never_echoed_whole() {
    let setup = Setup::new();
    setup
        .spawn(setup.spec("bad", "hostile").may_send("*").may_publish("*"))
        .await;
    // 16 MiB names: the error the guest gets back names them cut short.
    for command in ["long-target:16777216", "long-topic:16777216"] {
        let answer = ask(&setup.broker, command).await;
        assert!(
            answer.starts_with("err: TargetNotFound(\"ttt"),
            "{command}: {}",
            &answer[..answer.len().min(200)]
        );
        assert!(answer.len() < 200, "{command}: {} bytes", answer.len());
        assert!(answer.contains("(16777216 bytes in all)"), "{answer}");
    }
    // One byte over the limit is refused as well; at the limit it is only not found.
    let over = ask(&setup.broker, "long-target:256").await;
    assert!(over.contains("(256 bytes in all)"), "{over}");
    let at = ask(&setup.broker, "long-target:255").await;
    assert_eq!(at, format!("err: TargetNotFound({:?})", "t".repeat(255)));
    setup.assert_accounted().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_text_over_the_payload_limit_is_the_targets_failure() {
    let engine = engine();
    let broker = Broker::with_config(
        engine.clone(),
        BrokerConfig::default().max_payload_bytes(1024),
    );
    broker
        .spawn(ComponentSpec::new("bad", load(&engine, "hostile")))
        .await
        .unwrap();
    let small = broker.request("bad", b"fail:10".to_vec(), SECOND).await;
    assert!(
        matches!(&small, Err(MessagingError::HandlerFailed(courier_host_broker::ComponentError::Internal(text))) if text == "xxxxxxxxxx"),
        "{small:?}"
    );
    let huge = broker.request("bad", b"fail:2000".to_vec(), SECOND).await;
    let Err(MessagingError::HandlerFailed(courier_host_broker::ComponentError::Internal(text))) =
        &huge
    else {
        panic!("expected the target's failure, got {huge:?}");
    };
    assert_eq!(
        text,
        "component `bad` answered with an error of 2000 bytes, over the limit of 1024 bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_larger_than_the_broker_allows_is_refused_naming_the_field() {
    let setup = Setup::new();
    for capacity in [MAX_MAILBOX_CAPACITY + 1, usize::MAX] {
        let spec = setup.spec("deep", "counter").mailbox_capacity(capacity);
        let err = setup.broker.spawn(spec).await.unwrap_err();
        assert!(
            matches!(
                &err,
                BrokerError::InvalidSpec {
                    field: "mailbox_capacity",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("component `deep`: `mailbox_capacity`"),
            "{err}"
        );
    }
    let spec = setup
        .spec("deep", "counter")
        .mailbox_capacity(MAX_MAILBOX_CAPACITY);
    setup.spawn(spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_no_time_left_is_refused_at_once_not_queued() {
    let setup = Setup::new();
    setup.spawn(setup.spec("echo", "echo")).await;
    let answer = setup
        .broker
        .request("echo", b"too late".to_vec(), Duration::ZERO)
        .await;
    assert!(matches!(answer, Err(MessagingError::Timeout)), "{answer:?}");
    setup.assert_accounted().await;
    let books = setup.broker.accounting();
    assert_eq!((books.sent, books.refused, books.dead_lettered), (1, 1, 0));
    assert_eq!(setup.broker.metrics("echo").unwrap().refused, 1);
    assert!(setup.broker.dead_letters().is_empty());
}

/// This process's resident memory, from `/proc/self/status`.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_messages_to_a_slow_component_stays_within_its_byte_budget() {
    const MIB: u64 = 1 << 20;
    let setup = Setup::new();
    // Room for a thousand messages by count, so only the byte budget can stop the flood;
    // and busy for all of it.
    // Room for sixteen messages of 4 MiB beside the command it is busy with (whose bytes
    // stay charged until it is handled).
    let slow = setup
        .spec("slow", "hostile")
        .mailbox_capacity(1000)
        .mailbox_bytes(16 * 4 * MIB + 1024)
        .deadline(60 * SECOND);
    setup.spawn(slow).await;
    let flooder = setup
        .spec("flooder", "hostile")
        .may_send("slow")
        .deadline(60 * SECOND);
    setup.spawn(flooder).await;
    setup.broker.send("slow", b"sleep:30000".to_vec()).unwrap();
    setup.mailbox_drains("slow").await;

    let before = resident_bytes();
    // 100 messages of 4 MiB: 400 MiB, were they all queued. (Each is copied out of the
    // guest by code built at the test profile's opt-level, so a larger flood is slow.)
    let reply = ask_as(&setup.broker, "flooder", "flood:slow:100:4194304").await;
    let grown = resident_bytes().saturating_sub(before);
    println!(
        "flood of 100 x 4 MiB: {reply}; resident memory grew by {} MiB",
        grown / MIB
    );
    assert!(
        reply.starts_with("sent=16 refused=84 first_error=MailboxFull"),
        "{reply}"
    );
    let depth = setup.broker.metrics("slow").unwrap().mailbox_depth;
    assert_eq!(depth, 16, "16 messages of 4 MiB fill 64 MiB");
    // The budget, the flooder's own 4 MiB and some room for the tests running beside it;
    // without the budget it grows by the whole 400 MiB.
    assert!(
        grown < 64 * MIB + 200 * MIB,
        "resident memory grew by {} MiB",
        grown / MIB
    );
    let report = setup.broker.shutdown(Duration::ZERO).await;
    assert_eq!(
        report.undelivered.len(),
        17,
        "the sleep and the sixteen queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_wide_byte_budget_holds_across_mailboxes() {
    let engine = engine();
    let broker = Broker::with_config(
        engine.clone(),
        // Three messages of 1000 bytes, and the two commands the components are busy with.
        BrokerConfig::default().max_queued_bytes(3100),
    );
    let hostile = load(&engine, "hostile");
    for id in ["a", "b"] {
        let spec = ComponentSpec::new(id, hostile.clone()).deadline(60 * SECOND);
        broker.spawn(spec).await.unwrap();
        // Busy, so that what is sent to it next stays queued.
        broker.send(id, b"sleep:30000".to_vec()).unwrap();
    }
    for id in ["a", "b"] {
        while broker.metrics(id).unwrap().mailbox_depth > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Each mailbox has room for 64 MiB; the broker for 3100 bytes in all of them.
    let outcomes: Vec<bool> = (0..6)
        .map(|i| {
            let target = if i % 2 == 0 { "a" } else { "b" };
            broker.send(target, vec![0; 1000]).is_ok()
        })
        .collect();
    assert_eq!(outcomes, [true, true, true, false, false, false]);
    let refused = broker.send("a", vec![0; 1000]).unwrap_err();
    assert!(matches!(refused.error(), MessagingError::MailboxFull(_)));
    broker.shutdown(Duration::ZERO).await;
}

/// Everything logged on this thread while the guard lives.
#[derive(Clone, Default)]
struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// On the current-thread runtime, so that the actors log on the thread that captures.
#[tokio::test]
async fn denied_sends_and_failing_handlers_are_logged_at_a_bounded_rate() {
    let log = CapturedLog::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let setup = Setup::new();
    setup.spawn(setup.spec("spammer", "hostile")).await;
    setup.spawn(setup.spec("victim", "counter")).await;

    let started = std::time::Instant::now();
    let reply = ask_as(&setup.broker, "spammer", "flood:victim:1000").await;
    assert!(reply.starts_with("sent=0 refused=1000"), "{reply}");
    for _ in 0..1000 {
        setup
            .broker
            .send("spammer", b"no-such-command".to_vec())
            .unwrap();
    }
    setup.assert_accounted().await;
    let refilled =
        started.elapsed().as_secs_f64() * f64::from(courier_host_core::guest_log::LINES_PER_SECOND);

    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let burst = courier_host_core::guest_log::BURST as usize;
    let most = burst + refilled.ceil() as usize + 1;
    let denials = text.matches("access denied: send to").count();
    let refusals = text.matches("handler refused a message").count();
    assert!(
        (burst..=most).contains(&denials),
        "{denials} denials logged, at most {most}"
    );
    assert!(
        (burst..=most).contains(&refusals),
        "{refusals} handler refusals logged, at most {most}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_over_the_limit_is_not_kept_and_the_running_version_stays() {
    let setup = Setup::new();
    setup
        .spawn(
            setup
                .spec("keeper", "keeper")
                .max_state_bytes(1 << 20)
                .supervision(Supervision::default().checkpoint(Duration::ZERO)),
        )
        .await;
    setup.broker.send("keeper", "kept").unwrap();
    // Answered; then each save-state returns 2 MB instead of its four bytes.
    let reply = setup
        .broker
        .request("keeper", b"save:huge:2000000".to_vec(), 10 * SECOND)
        .await
        .unwrap();
    assert_eq!(reply, 4u64.to_le_bytes());
    let refused = setup
        .broker
        .upgrade("keeper", load(&setup.engine, "keeper"))
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("bytes, over the limit of 1 MiB"),
        "{refused}"
    );
    // The same instance serves on, with its state and none of the 2 MB.
    setup.broker.send("keeper", "!").unwrap();
    let reply = setup
        .broker
        .request("keeper", Vec::new(), 10 * SECOND)
        .await
        .unwrap();
    assert_eq!(reply, 5u64.to_le_bytes());
    let metrics = setup.broker.metrics("keeper").unwrap();
    assert_eq!(
        (metrics.restarts, metrics.dead_lettered),
        (0, 0),
        "{metrics:?}"
    );
}
