//! Messages, requests and publications between real components.

use std::time::Duration;

use crate::common::Setup;
use courier_host_broker::{BrokerError, ComponentState, MessagingError, SendError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_sends_and_requests_to_a_component() {
    let setup = Setup::new();
    setup.spawn(setup.spec("counter", "counter")).await;
    for _ in 0..10 {
        setup.broker.send("counter", b"tick".to_vec()).unwrap();
    }
    assert_eq!(
        setup.count("counter").await,
        10,
        "messages and the request keep their order"
    );
    setup.assert_accounted().await;
    assert_eq!(setup.broker.accounting().delivered, 11);
}

/// `echo`, and `asker`, a probe allowed to request from it: `request:echo` makes asker call
/// `send-request` to echo and answer with echo's reply.
async fn asker_and_echo() -> Setup {
    let setup = Setup::new();
    setup.spawn(setup.spec("echo", "echo")).await;
    setup
        .spawn(setup.spec("asker", "probe").may_request("echo"))
        .await;
    setup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_from_one_component_is_answered_by_another() {
    let setup = asker_and_echo().await;

    // probe sends `hi` to echo with send-request and returns what came back.
    assert_eq!(setup.probe("asker", "request:echo").await, "hi");
    setup.assert_accounted().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_targets_handler_error_comes_back_to_the_requester() {
    let setup = Setup::new();
    setup
        .spawn(setup.spec("asker", "probe").may_request("*"))
        .await;
    setup.spawn(setup.spec("answerer", "probe")).await;

    // `hi` is no probe command, so the answering probe returns invalid-message.
    let answer = setup.probe("asker", "request:answerer").await;
    assert_eq!(
        answer,
        "err: MessagingError::HandlerFailed(ComponentError::InvalidMessage(\"unknown probe command: hi\"))"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_itself_ends_in_a_timeout_not_a_hang() {
    let setup = Setup::new();
    setup
        .spawn(setup.spec("narcissus", "probe").may_request("narcissus"))
        .await;
    // The probe asks itself with a timeout of one second; its mailbox holds the request
    // until the current call ends, which is only after the timeout.
    let answer = setup.probe("narcissus", "request:narcissus").await;
    assert_eq!(answer, "err: MessagingError::Timeout");
    setup.assert_accounted().await;
    let letters = setup.broker.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].reason.contains("stopped waiting"),
        "{}",
        letters[0].reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_denied_targets_are_refused_at_once() {
    let setup = Setup::new();
    setup.spawn(setup.spec("echo", "echo")).await;
    setup
        .spawn(
            setup
                .spec("allowed", "probe")
                .may_send("echo")
                .may_send("ghosts/*"),
        )
        .await;
    setup.spawn(setup.spec("walled", "probe")).await;

    assert_eq!(setup.probe("allowed", "send:echo").await, "ok");
    assert_eq!(
        setup.probe("allowed", "send:ghosts/casper").await,
        "err: MessagingError::TargetNotFound(\"ghosts/casper\")"
    );
    // Denied before the registry is consulted: a walled-in component cannot even learn
    // whether an id exists.
    for command in ["send:echo", "send:nobody", "request:echo", "publish:news"] {
        let answer = setup.probe("walled", command).await;
        assert!(
            answer.starts_with("err: MessagingError::AccessDenied"),
            "{command}: {answer}"
        );
    }
    assert!(matches!(
        setup.broker.send("nobody", vec![]).map_err(SendError::into_error),
        Err(MessagingError::TargetNotFound(id)) if id == "nobody"
    ));
    setup.assert_accounted().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_refuses_the_sender_at_once_and_gives_the_payload_back() {
    let setup = Setup::new();
    let spec = setup
        .spec("looper", "looper")
        .mailbox_capacity(2)
        .deadline(Duration::from_millis(500));
    setup.spawn(spec).await;

    // Once the looper has taken its first message out of the mailbox it spins in its
    // handler, and the next two messages fill the mailbox.
    setup.broker.send("looper", b"spin".to_vec()).unwrap();
    setup.mailbox_drains("looper").await;
    setup.broker.send("looper", vec![1; 3]).unwrap();
    setup.broker.send("looper", vec![2; 3]).unwrap();
    let refused = setup
        .broker
        .send("looper", vec![3; 3])
        .expect_err("the mailbox holds two");
    assert!(
        matches!(refused.error(), MessagingError::MailboxFull(id) if id == "looper"),
        "{refused:?}"
    );
    assert_eq!(refused.into_payload(), &[3u8; 3][..]);

    // The waiting send gives its payload back too when the wait runs out.
    let refused = setup
        .broker
        .send_waiting("looper", b"patient".to_vec(), Duration::from_millis(20))
        .await
        .expect_err("the looper's mailbox stays full");
    assert!(matches!(refused.error(), MessagingError::MailboxFull(_)));
    assert_eq!(refused.payload(), b"patient");
    setup.assert_accounted().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_over_the_limit_are_refused() {
    let engine = crate::common::engine();
    let broker = courier_host_broker::Broker::with_config(
        engine.clone(),
        courier_host_broker::BrokerConfig::default().max_payload_bytes(1024),
    );
    let echo = crate::common::load(&engine, "echo");
    broker
        .spawn(courier_host_broker::ComponentSpec::new("echo", echo))
        .await
        .unwrap();
    let refused = broker.send("echo", vec![7; 1025]).unwrap_err();
    assert!(matches!(
        refused.error(),
        MessagingError::PayloadTooLarge(1024)
    ));
    assert_eq!(refused.into_payload(), vec![7; 1025]);
    broker.send("echo", vec![0; 1024]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_reaches_every_subscriber() {
    let setup = Setup::new();
    for id in ["news/a", "news/b", "news/c"] {
        setup
            .spawn(setup.spec(id, "counter").subscribe("headlines"))
            .await;
    }
    setup
        .spawn(setup.spec("bystander", "counter").subscribe("weather"))
        .await;
    setup
        .spawn(setup.spec("publisher", "probe").may_publish("headlines"))
        .await;

    assert_eq!(setup.probe("publisher", "publish:headlines").await, "3");
    assert_eq!(
        setup
            .broker
            .publish("headlines", b"from host".to_vec())
            .unwrap(),
        3
    );
    assert_eq!(setup.broker.publish("sports", vec![]).unwrap(), 0);
    for id in ["news/a", "news/b", "news/c"] {
        assert_eq!(setup.count(id).await, 2, "{id}");
    }
    assert_eq!(setup.count("bystander").await, 0);
    setup.assert_accounted().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_a_component_sees_is_stamped_by_the_host() {
    let setup = Setup::new();
    setup.spawn(setup.spec("mirror", "probe")).await;
    setup
        .spawn(setup.spec("orders/asker", "probe").may_request("mirror"))
        .await;
    // A request to `mirror` with `hi` fails as an unknown command; what matters is who
    // the host says is asking, which the probe reports through self-id on its side.
    assert_eq!(setup.probe("orders/asker", "self").await, "orders/asker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_unique_and_components_can_be_stopped_at_run_time() {
    let setup = Setup::new();
    setup.spawn(setup.spec("counter", "counter")).await;
    let err = setup
        .broker
        .spawn(setup.spec("counter", "counter"))
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::DuplicateId(_)), "{err}");

    for _ in 0..5 {
        setup.broker.send("counter", vec![]).unwrap();
    }
    let report = setup.broker.stop("counter").await.unwrap();
    assert!(report.undelivered.is_empty(), "{:?}", report.undelivered);
    assert_eq!(
        setup.broker.accounting().delivered,
        5,
        "queued messages are handled before stopping"
    );
    assert!(matches!(
        setup
            .broker
            .send("counter", vec![])
            .map_err(SendError::into_error),
        Err(MessagingError::TargetNotFound(_))
    ));
    // The id is free again.
    setup.spawn(setup.spec("counter", "counter")).await;
    assert_eq!(setup.count("counter").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_with_a_bad_id_or_pattern_is_refused_naming_it() {
    let setup = Setup::new();
    let err = setup
        .broker
        .spawn(setup.spec("two words", "counter"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "`two words` is not a valid component id: only letters, digits, `-`, `_`, `.` and `/` \
         are allowed"
    );

    // A `*` inside a name would be matched literally, never what its author meant.
    let err = setup
        .broker
        .spawn(setup.spec("ping", "ping").may_send("po*"))
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::InvalidPattern { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "component `ping`: `capabilities.send`: `po*` is not a valid pattern: `*` may stand \
         alone or end one as `prefix/*`"
    );
    assert!(setup.broker.components().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_broker_leaves_no_task_behind() {
    let setup = asker_and_echo().await;
    let runtime = tokio::runtime::Handle::current().metrics();
    let before = runtime.num_alive_tasks();
    // Requests to idle actors run on the requester's task: neither actor needed its own.
    assert_eq!(setup.probe("asker", "request:echo").await, "hi");
    assert_eq!(
        runtime.num_alive_tasks(),
        before,
        "an actor nothing was put in the mailbox of holds no task"
    );
    // The first message in a mailbox starts its actor's task.
    setup.broker.send("echo", "hi").unwrap();
    setup.broker.send("asker", "request:echo").unwrap();
    assert_eq!(
        runtime.num_alive_tasks(),
        before + 2,
        "the actors run as tasks"
    );
    assert_eq!(setup.probe("asker", "request:echo").await, "hi");

    // The actors end when their mailboxes close, and the broker's own timer task when it
    // next finds the broker gone.
    drop(setup);
    every_task_ends(&runtime).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_broker_ends_actors_that_messaged_each_other_and_themselves() {
    let setup = Setup::new();
    setup
        .spawn(
            setup
                .spec("narcissus", "probe")
                .may_send("narcissus")
                .may_send("echo"),
        )
        .await;
    setup
        .spawn(setup.spec("echo", "probe").may_send("narcissus"))
        .await;
    assert_eq!(setup.probe("narcissus", "send:narcissus").await, "ok");
    assert_eq!(setup.probe("narcissus", "send:echo").await, "ok");
    assert_eq!(setup.probe("echo", "send:narcissus").await, "ok");
    setup.assert_accounted().await;
    let runtime = tokio::runtime::Handle::current().metrics();
    assert!(runtime.num_alive_tasks() >= 2, "the actors run as tasks");

    // Each actor has routed to the other's mailbox and to its own: neither may keep a
    // mailbox (and so an actor and its instance) alive once the broker is gone.
    drop(setup);
    every_task_ends(&runtime).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_publish_check_the_capability_before_the_payload_size() {
    let engine = crate::common::engine();
    let broker = courier_host_broker::Broker::with_config(
        engine.clone(),
        courier_host_broker::BrokerConfig::default().max_payload_bytes(1024),
    );
    let spawn = |spec| {
        let broker = broker.clone();
        async move { broker.spawn(spec).await.unwrap() }
    };
    let probe = crate::common::load(&engine, "probe");
    let spec = courier_host_broker::ComponentSpec::new;
    spawn(spec("echo", crate::common::load(&engine, "echo"))).await;
    spawn(spec("walled", probe.clone())).await;
    spawn(spec("allowed", probe).may_send("echo").may_publish("news")).await;
    let ask = |id: &'static str, command: &'static str| {
        let broker = broker.clone();
        async move {
            let reply = broker
                .request(id, command.as_bytes().to_vec(), 10 * crate::common::SECOND)
                .await
                .unwrap();
            String::from_utf8(reply).unwrap()
        }
    };

    // A sender that may not reach the target hears so, whatever it sends.
    for command in ["send-big:echo", "publish-big:news"] {
        let answer = ask("walled", command).await;
        assert!(
            answer.starts_with("err: MessagingError::AccessDenied"),
            "{command}: {answer}"
        );
    }
    // One that may hears that its payload is too large, from either call.
    for command in ["send-big:echo", "publish-big:news"] {
        let answer = ask("allowed", command).await;
        assert_eq!(
            answer, "err: MessagingError::PayloadTooLarge(1024)",
            "{command}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_returns_a_handle_that_follows_its_one_component() {
    let setup = Setup::new();
    let counter = setup
        .broker
        .spawn(setup.spec("counter", "counter"))
        .await
        .unwrap();
    assert_eq!(&**counter.id(), "counter");
    assert_eq!(counter.state(), ComponentState::Running);
    for _ in 0..3 {
        setup.broker.send("counter", b"tick".to_vec()).unwrap();
    }
    assert_eq!(setup.count("counter").await, 3);
    let metrics = counter.metrics();
    assert_eq!(metrics.delivered, 4, "three messages and the request");
    assert_eq!(metrics, setup.broker.metrics("counter").unwrap());

    let report = counter.stop().await.unwrap();
    assert_eq!(report.stopped, ["counter".into()]);
    assert!(matches!(counter.state(), ComponentState::Stopped(_)));
    assert_eq!(setup.broker.state("counter"), None);
    assert_eq!(counter.metrics().delivered, 4, "its counters outlive it");

    // A component spawned later under the same id is not the handle's to stop.
    let again = setup
        .broker
        .spawn(setup.spec("counter", "counter"))
        .await
        .unwrap();
    assert!(matches!(
        counter.stop().await,
        Err(BrokerError::NotFound(id)) if &*id == "counter"
    ));
    assert_eq!(again.state(), ComponentState::Running);
    assert_eq!(setup.broker.state("counter"), Some(ComponentState::Running));
}

/// Waits until no task is left on the runtime, or fails after ten seconds.
async fn every_task_ends(runtime: &tokio::runtime::RuntimeMetrics) {
    let deadline = std::time::Instant::now() + 10 * crate::common::SECOND;
    while runtime.num_alive_tasks() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} tasks still alive",
            runtime.num_alive_tasks()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// An actor whose mailbox never runs dry gives its worker up every hundred or so messages,
/// so a neighbour on the same worker (and the timers and I/O tokio serves between tasks) is
/// not held up for the thousands a poll would otherwise run: tokio's own budget counts only
/// the mailbox reads, one per batch of 64, and a handler call never touches it.
///
/// Counted in messages, not timed: the flooded actor's mailbox is filled and the
/// neighbour's message queued behind it while the runtime's only worker is held, so what
/// runs first once it is let go is tokio's scheduling alone, whatever the machine's speed.
#[test]
fn a_flooded_actor_lets_its_neighbour_on_the_same_worker_run() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let queued = 20_000;
    let setup = runtime.block_on(async {
        let setup = Setup::new();
        setup
            .spawn(setup.spec("flooded", "counter").mailbox_capacity(queued))
            .await;
        setup.spawn(setup.spec("neighbour", "counter")).await;
        setup
    });
    let delivered = |id: &str| setup.broker.metrics(id).unwrap().delivered;
    // The worker, held until everything is queued.
    let (let_go, held) = std::sync::mpsc::channel::<()>();
    runtime.spawn(async move { held.recv() });
    for _ in 0..queued {
        setup.broker.send("flooded", b"add".to_vec()).unwrap();
    }
    setup.broker.send("neighbour", b"add".to_vec()).unwrap();
    let_go.send(()).unwrap();
    while delivered("neighbour") == 0 {
        std::hint::spin_loop();
    }
    let before = delivered("flooded");
    // A budget of 128 messages and the batch in hand; one unyielding poll is up to 128
    // batches, 8,192 messages.
    assert!(
        before <= 1_000,
        "the flooded actor handled {before} messages before its neighbour's one"
    );
    runtime.block_on(async {
        setup
            .wait_until(|broker| broker.accounting().delivered == queued as u64 + 1)
            .await;
        setup.broker.shutdown(Duration::from_secs(5)).await
    });
}

/// Keeps every span it is handed.
#[derive(Default)]
struct Spans(std::sync::Mutex<Vec<courier_host_broker::HandlerSpan>>);

impl courier_host_broker::SpanSink for Spans {
    fn record(&self, span: courier_host_broker::HandlerSpan) {
        self.0.lock().unwrap().push(span);
    }
}

/// A guest's fire-and-forget message and its publication carry the trace of the call that
/// sent them, as a request does: the receiver's span is the sender's span's child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_and_a_publication_carry_their_senders_trace() {
    use courier_host_broker::{Broker, BrokerConfig, HandlerKind, Telemetry, TraceContext};
    let spans = std::sync::Arc::new(Spans::default());
    let engine = crate::common::engine();
    let broker = Broker::with_config(
        engine.clone(),
        BrokerConfig::default().telemetry(Telemetry::new(spans.clone(), 1.0)),
    );
    let load = |guest| crate::common::load(&engine, guest);
    for spec in [
        courier_host_broker::ComponentSpec::new("front", load("probe"))
            .may_send("counter")
            .may_publish("news"),
        courier_host_broker::ComponentSpec::new("counter", load("counter")),
        courier_host_broker::ComponentSpec::new("listener", load("counter")).subscribe("news"),
    ] {
        broker.spawn(spec).await.unwrap();
    }
    let incoming =
        TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    for command in ["send:counter", "publish:news"] {
        broker
            .request_traced(
                "front",
                command.as_bytes().to_vec(),
                10 * crate::common::SECOND,
                Some(incoming),
            )
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + 10 * crate::common::SECOND;
    while spans.0.lock().unwrap().len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "four spans never came"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let spans = spans.0.lock().unwrap().clone();
    let of = |id: &str, kind: HandlerKind| {
        let found: Vec<_> = spans
            .iter()
            .filter(|span| &*span.component == id && span.kind == kind)
            .collect();
        found
    };
    let asked = of("front", HandlerKind::Request);
    assert_eq!(asked.len(), 2, "{spans:#?}");
    let (sent, published) = (asked[0], asked[1]);
    let message = of("counter", HandlerKind::Message);
    let publication = of("listener", HandlerKind::Publication);
    assert_eq!((message.len(), publication.len()), (1, 1), "{spans:#?}");
    for span in spans.iter() {
        assert_eq!(span.context.trace_id(), incoming.trace_id(), "{span:#?}");
    }
    assert_eq!(sent.parent, Some(incoming.span_id()));
    assert_eq!(message[0].parent, Some(sent.context.span_id()));
    assert_eq!(&*message[0].sender, "front");
    assert_eq!(publication[0].parent, Some(published.context.span_id()));
    broker.shutdown(Duration::from_secs(5)).await;
}
