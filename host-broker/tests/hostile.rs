//! A hostile component gets a clear, typed outcome, and its healthy neighbour keeps working.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::common::{SECOND, Setup};
use courier_host_broker::{ComponentState, MessagingError};

const MS: Duration = Duration::from_millis(1);

/// How long a misbehaviour lasts, which decides what its neighbour can be asked to do.
#[derive(Clone, Copy, PartialEq)]
enum Lasts {
    /// It runs until the 200 ms deadline cuts it: the neighbour must be served meanwhile.
    UntilTheDeadline,
    /// It traps at once (a panic, the stack running out): there is no "meanwhile", so the
    /// neighbour need only be served before and after.
    Moments,
}

/// Spawns `bad` (the hostile component, with a 200 ms deadline and a 32 MiB memory cap) and
/// a healthy `counter`, which the host keeps sending to and asking; once the counter is
/// answering, runs `command` on `bad` as a request, and returns its outcome after checking
/// that the counter was served while it ran (if it lasts) and goes on being served after.
async fn misbehave(setup: &Setup, command: &str, lasts: Lasts) -> Result<Vec<u8>, MessagingError> {
    let bad = setup
        .spec("bad", "hostile")
        .deadline(200 * MS)
        .memory_limit(32 << 20);
    setup.spawn(bad).await;
    setup.spawn(setup.spec("counter", "counter")).await;

    let done = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(AtomicU64::new(0));
    let neighbour = {
        let broker = setup.broker.clone();
        let done = done.clone();
        let handled = handled.clone();
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                broker.send("counter", b"tick".to_vec()).unwrap();
                let reply = broker
                    .request("counter", Vec::new(), 5 * SECOND)
                    .await
                    .unwrap();
                assert!(!reply.is_empty());
                handled.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(MS).await;
            }
        })
    };
    let served_since = |count: u64| {
        let handled = handled.clone();
        async move {
            let deadline = std::time::Instant::now() + 10 * SECOND;
            while handled.load(Ordering::SeqCst) <= count {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the neighbour was not served"
                );
                tokio::time::sleep(MS).await;
            }
        }
    };
    served_since(0).await;

    let before = handled.load(Ordering::SeqCst);
    let outcome = setup
        .broker
        .request("bad", command.as_bytes().to_vec(), 10 * SECOND)
        .await;
    let after = handled.load(Ordering::SeqCst);
    if lasts == Lasts::UntilTheDeadline {
        assert!(
            after > before,
            "the neighbour was starved while `{command}` ran"
        );
    }
    served_since(after).await;
    done.store(true, Ordering::SeqCst);
    neighbour.await.unwrap();
    setup.assert_accounted().await;
    // The hostile component was replaced and answers again.
    assert_eq!(setup.probe("bad", "self").await, "bad");
    outcome
}

fn crashed(outcome: Result<Vec<u8>, MessagingError>) -> String {
    match outcome {
        Err(MessagingError::TargetCrashed(reason)) => reason,
        other => panic!("expected target-crashed, got {other:?}"),
    }
}

fn assert_dead_letter(setup: &Setup, needle: &str) {
    let letters = setup.broker.dead_letters();
    assert!(
        letters
            .iter()
            .any(|l| &*l.target == "bad" && l.reason.contains(needle)),
        "no dead letter for `bad` mentioning {needle:?}: {letters:?}"
    );
    assert!(setup.broker.metrics("bad").unwrap().failed >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_cut_at_the_deadline() {
    let setup = Setup::new();
    let reason = crashed(misbehave(&setup, "spin", Lasts::UntilTheDeadline).await);
    assert!(reason.contains("deadline of 200 ms"), "{reason}");
    assert_dead_letter(&setup, "deadline of 200 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_that_calls_host_imports_is_cut_at_the_deadline() {
    let setup = Setup::new();
    let reason = crashed(misbehave(&setup, "spin-calls", Lasts::UntilTheDeadline).await);
    assert!(reason.contains("deadline of 200 ms"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_stops_at_the_cap() {
    let setup = Setup::new();
    let reason = crashed(misbehave(&setup, "alloc", Lasts::Moments).await);
    assert!(reason.contains("memory limit of 32 MiB"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_is_a_stack_overflow_not_a_host_crash() {
    let setup = Setup::new();
    let reason = crashed(misbehave(&setup, "recurse", Lasts::Moments).await);
    assert!(reason.contains("call stack exhausted"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_and_an_unreachable_are_reported_as_such() {
    let setup = Setup::new();
    let reason = crashed(misbehave(&setup, "panic", Lasts::Moments).await);
    assert!(
        reason.contains("panicked: \"hostile was told to panic\""),
        "{reason}"
    );
    let reason = crashed(
        setup
            .broker
            .request("bad", b"unreachable".to_vec(), 10 * SECOND)
            .await,
    );
    assert!(reason.contains("unreachable"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_through_the_deadline_in_a_host_call_is_cut_too() {
    let setup = Setup::new();
    let reason = crashed(misbehave(&setup, "sleep:60000", Lasts::UntilTheDeadline).await);
    assert!(reason.contains("deadline of 200 ms"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_fills_only_the_targets_mailbox_and_every_message_is_accounted() {
    let setup = Setup::new();
    setup
        .spawn(setup.spec("victim", "counter").mailbox_capacity(64))
        .await;
    setup
        .spawn(setup.spec("flooder", "hostile").may_send("*"))
        .await;

    let report = setup.probe("flooder", "flood:victim:20000").await;
    assert!(
        report.contains("first_error=MailboxFull(\"victim\")"),
        "{report}"
    );
    // And at itself: its own mailbox fills while it is busy flooding.
    // Its mailbox holds 1,024 and it is busy flooding, so most of 5,000 must be refused.
    let report = setup.probe("flooder", "flood:flooder:5000").await;
    assert!(
        report.contains("first_error=MailboxFull(\"flooder\")") && !report.contains("refused=0 "),
        "{report}"
    );
    setup.assert_accounted().await;
    let books = setup.broker.accounting();
    assert!(books.refused > 0, "{books:?}");
    assert_eq!(setup.broker.state("victim"), Some(ComponentState::Running));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_the_size_limit_is_the_targets_failure() {
    let setup = Setup::new();
    setup.spawn(setup.spec("bad", "hostile")).await;
    setup
        .spawn(setup.spec("asker", "hostile").may_request("bad"))
        .await;
    let limit = courier_host_broker::DEFAULT_MAX_PAYLOAD_BYTES;
    let command = format!("request:bad:big:{}", limit + 1);
    let answer = setup.probe("asker", &command).await;
    let size = limit + 1;
    assert_eq!(
        answer,
        format!(
            "err: HandlerFailed(Internal(\"component `bad` replied with {size} bytes, over the \
             limit of {limit} bytes\"))"
        )
    );
    let bad = setup.broker.metrics("bad").expect("bad is running");
    assert_eq!(bad.delivered, 1, "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_cannot_reach_what_it_was_not_granted() {
    let setup = Setup::new();
    setup.spawn(setup.spec("counter", "counter")).await;
    setup
        .spawn(setup.spec("bad", "hostile").may_send("allowed/*"))
        .await;
    for command in [
        "send:counter",
        "request:counter",
        "publish:secrets",
        "send:allowed",
    ] {
        let answer = setup.probe("bad", command).await;
        assert!(
            answer.starts_with("err: AccessDenied"),
            "{command}: {answer}"
        );
    }
    assert_eq!(setup.count("counter").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_a_component_sees_is_always_the_real_sender() {
    let setup = Setup::new();
    setup
        .spawn(setup.spec("alice", "hostile").may_send("bob"))
        .await;
    setup.spawn(setup.spec("bob", "hostile")).await;
    // alice sends bob the command `count`; bob records who sent it.
    assert_eq!(setup.probe("alice", "send:bob:count").await, "ok");
    assert!(setup.broker.quiesce(10 * SECOND).await);
    assert_eq!(setup.probe("bob", "last-sender").await, "alice");
    setup.broker.send("bob", b"count".to_vec()).unwrap();
    assert!(setup.broker.quiesce(10 * SECOND).await);
    assert_eq!(setup.probe("bob", "last-sender").await, "host");
}
