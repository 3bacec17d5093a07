//! Whatever a guest or the host's caller chooses, a string, a size, a time, is bounded before
//! the broker stores, copies or logs it.

use std::time::Duration;

use courier_host_broker::{
    Broker, BrokerConfig, BrokerError, ComponentSpec, MAX_MAILBOX_CAPACITY, MessagingError,
};

use crate::common::{SECOND, Setup, engine, load};

/// Asks `bad` (a `hostile`) to run `command` and returns its reply as text.
async fn ask(broker: &Broker, command: &str) -> String {
    let reply = broker
        .request("bad", command.as_bytes().to_vec(), 10 * SECOND)
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
