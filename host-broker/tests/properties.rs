//! Properties of routing and accounting under arbitrary message sequences.
//!
//! Each case spawns five real components on a fresh broker whose payload limit is 64 bytes:
//!
//! - `counter` and `tiny`: the counter guest, both subscribed to `news`; `tiny` has a
//!   mailbox of one message, so bursts to it meet `mailbox-full`;
//! - `echo`: mirrors requests;
//! - `pong`: checks that each sender's sequence numbers arrive in the order sent;
//! - `hostile`: runs the command it is sent, some of which trap (`panic`, `unreachable`, a
//!   loop cut at its 100 ms deadline), so it is restarted again and again.
//!
//! Then it plays a generated sequence of operations against them: host sends (as `host`,
//! `alice` or `bob`, in bursts), host requests and publications, to those ids and to ids
//! that do not exist, with payloads that fit and payloads over the limit. A model of the
//! sequence predicts every outcome the broker reports at once, every reply, and, once the
//! broker is quiet, the broker's books and each component's counters, exactly:
//!
//! - `delivered + refused + dead_lettered == sent`, and each of them is what the sequence
//!   implies;
//! - an oversized payload is always `payload-too-large`, whatever the target (size is checked
//!   first), and an unknown id always `target-not-found`;
//! - a counter's count is the messages it was sent less those refused, at every request
//!   (messages and requests from one sender arrive in the order sent), and `pong` sees no
//!   sender's messages out of order;
//! - every trap dead-letters exactly its own message, with the trap as the reason, and costs
//!   exactly one restart; a publication that finds `tiny` full is dead-lettered, not lost.
//!
//! The case count is kept small for CI (24, a few seconds); `PROPTEST_CASES=1000` runs more.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use courier_host_broker::{
    Accounting, Broker, BrokerConfig, ComponentError, ComponentId, ComponentSpec, ComponentState,
    MessageKind, MessagingError, SendError, Supervision,
};
use courier_host_core::Component;
use proptest::collection::vec;
use proptest::prelude::*;

use crate::common::SECOND;

/// The broker's payload limit in these tests: small, so generated payloads cross it often.
const MAX_PAYLOAD: usize = 64;

/// The hostile component's deadline, short so that a loop costs little time.
const HOSTILE_DEADLINE: Duration = Duration::from_millis(100);

/// Ids that are never registered, some of them close to ids that are.
const UNKNOWN_IDS: [&str; 5] = ["ghost", "Counter", "counter/", "echo ", ""];

/// Who the host says a message is from.
const SENDERS: [&str; 3] = ["host", "alice", "bob"];

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(24)
}

/// The guests, loaded once for every case.
struct Guests {
    counter: Component,
    echo: Component,
    pong: Component,
    hostile: Component,
}

fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Guests> = OnceLock::new();
    GUESTS.get_or_init(|| {
        // Each case's runtime, and with it every instance, is gone before the next starts.
        let engine = courier_host_core::Engine::new(
            courier_host_core::EngineConfig::default().max_instances(16),
        )
        .expect("engine");
        Guests {
            counter: crate::common::load(&engine, "counter"),
            echo: crate::common::load(&engine, "echo"),
            pong: crate::common::load(&engine, "pong"),
            hostile: crate::common::load(&engine, "hostile"),
        }
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Target {
    Counter,
    Tiny,
    Echo,
    Pong,
    Hostile,
    Unknown(&'static str),
}

impl Target {
    fn id(self) -> &'static str {
        match self {
            Target::Counter => "counter",
            Target::Tiny => "tiny",
            Target::Echo => "echo",
            Target::Pong => "pong",
            Target::Hostile => "hostile",
            Target::Unknown(id) => id,
        }
    }

    fn is_known(self) -> bool {
        !matches!(self, Target::Unknown(_))
    }
}

const KNOWN: [Target; 5] = [
    Target::Counter,
    Target::Tiny,
    Target::Echo,
    Target::Pong,
    Target::Hostile,
];

/// A command for the hostile guest (see `guest-examples/hostile`).
#[derive(Clone, Copy, Debug)]
enum Command {
    Count,
    LastSender,
    Unknown,
    Big(usize),
    Panic,
    Unreachable,
    Spin,
}

impl Command {
    fn text(self) -> String {
        match self {
            Command::Count => "count".into(),
            Command::LastSender => "last-sender".into(),
            Command::Unknown => "no-such-command".into(),
            Command::Big(bytes) => format!("big:{bytes}"),
            Command::Panic => "panic".into(),
            Command::Unreachable => "unreachable".into(),
            Command::Spin => "spin".into(),
        }
    }

    /// What the trap's reason says, for a command that traps.
    fn trap(self) -> Option<&'static str> {
        match self {
            Command::Panic => Some("panicked: \"hostile was told to panic\""),
            Command::Unreachable => Some("unreachable"),
            Command::Spin => Some("deadline of 100 ms"),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
enum Payload {
    /// Bytes within the limit.
    Bytes(Vec<u8>),
    /// The next sequence number of the sender, for `pong`.
    Sequence,
    /// A hostile command.
    Command(Command),
    /// This many bytes, over the limit.
    Oversized(usize),
}

#[derive(Clone, Debug)]
enum Op {
    Send {
        sender: &'static str,
        target: Target,
        payload: Payload,
        times: usize,
    },
    Request {
        target: Target,
        payload: Payload,
    },
    Publish {
        topic: &'static str,
        payload: Payload,
    },
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        3 => Just(Target::Counter),
        3 => Just(Target::Tiny),
        2 => Just(Target::Echo),
        2 => Just(Target::Pong),
        4 => Just(Target::Hostile),
        2 => proptest::sample::select(&UNKNOWN_IDS[..]).prop_map(Target::Unknown),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        4 => Just(Command::Count),
        2 => Just(Command::LastSender),
        2 => Just(Command::Unknown),
        2 => (0..=2 * MAX_PAYLOAD).prop_map(Command::Big),
        1 => Just(Command::Panic),
        1 => Just(Command::Unreachable),
        1 => Just(Command::Spin),
    ]
}

fn bytes() -> impl Strategy<Value = Payload> {
    vec(any::<u8>(), 0..=MAX_PAYLOAD).prop_map(Payload::Bytes)
}

fn oversized() -> impl Strategy<Value = Payload> {
    (MAX_PAYLOAD + 1..=4 * MAX_PAYLOAD).prop_map(Payload::Oversized)
}

/// A payload for `target`: what it understands, or now and then one over the limit.
fn payload_for(target: Target) -> BoxedStrategy<Payload> {
    let fits = match target {
        Target::Hostile => command().prop_map(Payload::Command).boxed(),
        Target::Pong => Just(Payload::Sequence).boxed(),
        _ => bytes().boxed(),
    };
    prop_oneof![6 => fits, 1 => oversized()].boxed()
}

fn op() -> impl Strategy<Value = Op> {
    let send = (proptest::sample::select(&SENDERS[..]), target(), 1..=8usize).prop_flat_map(
        |(sender, target, times)| {
            payload_for(target).prop_map(move |payload| Op::Send {
                sender,
                target,
                payload,
                times,
            })
        },
    );
    let request = target().prop_flat_map(|target| {
        payload_for(target).prop_map(move |payload| Op::Request { target, payload })
    });
    let publish = (
        proptest::sample::select(&["news", "weather"][..]),
        prop_oneof![6 => bytes(), 1 => oversized()],
    )
        .prop_map(|(topic, payload)| Op::Publish { topic, payload });
    prop_oneof![5 => send, 3 => request, 1 => publish]
}

/// A component's counters, as the model expects them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    delivered: u64,
    failed: u64,
    refused: u64,
    dead_lettered: u64,
}

/// What the sequence so far implies.
#[derive(Debug, Default)]
struct Model {
    books: Accounting,
    counters: HashMap<Target, Counters>,
    /// The counts of `counter` and `tiny`.
    counts: HashMap<Target, u64>,
    /// The next sequence number of each sender to `pong`.
    next_sequence: HashMap<&'static str, u64>,
    pong_received: u64,
    /// Commands the current hostile instance has run.
    hostile_commands: u64,
    /// The sender of the last message the current hostile instance received.
    hostile_last_sender: String,
    /// What each trap's dead letter must say, in order.
    traps: Vec<&'static str>,
    /// Publications that found `tiny` full.
    missed_publications: u64,
}

impl Model {
    fn counters(&mut self, target: Target) -> &mut Counters {
        self.counters.entry(target).or_default()
    }

    fn bytes(&mut self, sender: &'static str, payload: &Payload) -> Vec<u8> {
        match payload {
            Payload::Bytes(bytes) => bytes.clone(),
            Payload::Sequence => {
                let next = self.next_sequence.entry(sender).or_insert(1);
                *next += 1;
                (*next - 1).to_le_bytes().to_vec()
            }
            Payload::Command(command) => command.text().into_bytes(),
            Payload::Oversized(len) => vec![0xab; *len],
        }
    }

    fn refused(&mut self, target: Target) {
        self.books.refused += 1;
        if target.is_known() {
            self.counters(target).refused += 1;
        }
    }

    fn delivered(&mut self, target: Target) {
        self.books.delivered += 1;
        self.counters(target).delivered += 1;
    }

    fn handler_failed(&mut self, target: Target) {
        self.delivered(target);
        self.counters(target).failed += 1;
    }

    /// A hostile command trapped: its message is dead-lettered, the instance replaced.
    fn trapped(&mut self, reason: &'static str) {
        self.books.dead_lettered += 1;
        let counters = self.counters(Target::Hostile);
        counters.dead_lettered += 1;
        counters.failed += 1;
        self.traps.push(reason);
        self.hostile_commands = 0;
        self.hostile_last_sender.clear();
    }

    /// A message the target accepted into its mailbox.
    fn accepted(&mut self, sender: &'static str, target: Target, payload: &Payload) {
        match (target, payload) {
            (Target::Counter | Target::Tiny, _) => {
                *self.counts.entry(target).or_default() += 1;
                self.delivered(target);
            }
            (Target::Pong, _) => {
                self.pong_received += 1;
                self.delivered(target);
            }
            (Target::Hostile, Payload::Command(command)) => match command.trap() {
                Some(reason) => self.trapped(reason),
                None => {
                    self.hostile_commands += 1;
                    self.hostile_last_sender = sender.to_string();
                    if matches!(command, Command::Unknown) {
                        self.handler_failed(target);
                    } else {
                        self.delivered(target);
                    }
                }
            },
            _ => self.delivered(target),
        }
    }
}

fn too_large(result: &Result<impl Sized, MessagingError>) -> bool {
    matches!(result, Err(MessagingError::PayloadTooLarge(limit)) if *limit == MAX_PAYLOAD as u64)
}

fn not_found(result: &Result<impl Sized, MessagingError>, id: &str) -> bool {
    matches!(result, Err(MessagingError::TargetNotFound(target)) if target == id)
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

async fn send(
    broker: &Broker,
    model: &mut Model,
    sender: &'static str,
    target: Target,
    payload: &Payload,
) -> Result<(), TestCaseError> {
    let bytes = model.bytes(sender, payload);
    let result = broker
        .send_as(&ComponentId::from(sender), target.id(), bytes)
        .map_err(SendError::into_error);
    model.books.sent += 1;
    if let Payload::Oversized(_) = payload {
        prop_assert!(too_large(&result), "send to {target:?}: {result:?}");
        model.refused(target);
    } else if let Target::Unknown(id) = target {
        prop_assert!(not_found(&result, id), "send to {id:?}: {result:?}");
        model.refused(target);
    } else {
        match result {
            Ok(()) => model.accepted(sender, target, payload),
            // Only the one-message mailbox can be full: the others are deep enough for the
            // longest sequence.
            Err(MessagingError::MailboxFull(id)) if target == Target::Tiny && id == "tiny" => {
                model.refused(target)
            }
            Err(err) => {
                return Err(TestCaseError::fail(format!(
                    "send to {target:?} refused: {err:?}"
                )));
            }
        }
    }
    Ok(())
}

async fn request(
    broker: &Broker,
    model: &mut Model,
    target: Target,
    payload: &Payload,
) -> Result<(), TestCaseError> {
    let bytes = model.bytes("host", payload);
    let result = broker
        .request(target.id(), bytes.clone(), 10 * SECOND)
        .await;
    model.books.sent += 1;
    if let Payload::Oversized(_) = payload {
        prop_assert!(too_large(&result), "request to {target:?}: {result:?}");
        model.refused(target);
        return Ok(());
    }
    if let Target::Unknown(id) = target {
        prop_assert!(not_found(&result, id), "request to {id:?}: {result:?}");
        model.refused(target);
        return Ok(());
    }
    if target == Target::Tiny
        && matches!(&result, Err(MessagingError::MailboxFull(id)) if id == "tiny")
    {
        model.refused(target);
        return Ok(());
    }
    match (target, payload) {
        (Target::Counter | Target::Tiny, _) => {
            let reply = result.map_err(|e| TestCaseError::fail(format!("{target:?}: {e:?}")))?;
            let count = model.counts.get(&target).copied().unwrap_or(0);
            // Everything accepted before the request was handled before it.
            prop_assert_eq!(u64_at(&reply, 0), Some(count), "{:?}'s count", target);
            model.delivered(target);
        }
        (Target::Echo, _) => {
            prop_assert_eq!(result.ok(), Some(bytes), "echo's reply");
            model.delivered(target);
        }
        (Target::Pong, _) => {
            let reply = result.map_err(|e| TestCaseError::fail(format!("pong: {e:?}")))?;
            prop_assert_eq!(u64_at(&reply, 0), Some(model.pong_received), "pong's count");
            prop_assert_eq!(u64_at(&reply, 8), Some(0), "pong saw messages out of order");
            model.delivered(target);
        }
        (Target::Hostile, Payload::Command(command)) => {
            if let Some(reason) = command.trap() {
                prop_assert!(
                    matches!(&result, Err(MessagingError::TargetCrashed(why)) if why.contains(reason)),
                    "{command:?}: {result:?}"
                );
                model.trapped(reason);
                return Ok(());
            }
            model.hostile_commands += 1;
            match *command {
                Command::Count => {
                    let expected = model.hostile_commands.to_string().into_bytes();
                    prop_assert_eq!(result.ok(), Some(expected), "hostile's count");
                }
                Command::LastSender => {
                    let expected = model.hostile_last_sender.clone().into_bytes();
                    prop_assert_eq!(result.ok(), Some(expected), "hostile's last sender");
                }
                Command::Unknown => {
                    prop_assert!(
                        matches!(
                            &result,
                            Err(MessagingError::HandlerFailed(ComponentError::InvalidMessage(why)))
                                if why.contains("unknown command")
                        ),
                        "{result:?}"
                    );
                    model.handler_failed(target);
                    return Ok(());
                }
                // A reply over the limit is the target's failure, told to the requester; the
                // handler ran, so the request counts as delivered.
                Command::Big(len) if len > MAX_PAYLOAD => {
                    let expected = format!(
                        "component `{}` replied with {len} bytes, over the limit of \
                         {MAX_PAYLOAD} bytes",
                        target.id()
                    );
                    prop_assert!(
                        matches!(
                            &result,
                            Err(MessagingError::HandlerFailed(ComponentError::Internal(why)))
                                if *why == expected
                        ),
                        "big:{len}: {result:?}"
                    )
                }
                Command::Big(len) => prop_assert_eq!(result.ok(), Some(vec![b'x'; len])),
                _ => unreachable!("traps are handled above"),
            }
            model.delivered(target);
        }
        _ => unreachable!("hostile is only sent commands"),
    }
    Ok(())
}

fn publish(
    broker: &Broker,
    model: &mut Model,
    topic: &'static str,
    payload: &Payload,
) -> Result<(), TestCaseError> {
    let bytes = model.bytes("host", payload);
    let result = broker.publish(topic, bytes);
    if let Payload::Oversized(_) = payload {
        // Refused before any subscriber is looked at: nothing was sent.
        prop_assert!(too_large(&result), "publish on {topic}: {result:?}");
        return Ok(());
    }
    if topic != "news" {
        prop_assert_eq!(result.ok(), Some(0), "nobody listens to {}", topic);
        return Ok(());
    }
    // Both subscribers count as sent; `counter` always has room, `tiny` may not.
    model.books.sent += 2;
    let reached = result.map_err(|e| TestCaseError::fail(format!("publish: {e:?}")))?;
    prop_assert!(reached == 1 || reached == 2, "reached {reached}");
    model.accepted("host", Target::Counter, payload);
    if reached == 2 {
        model.accepted("host", Target::Tiny, payload);
    } else {
        model.books.dead_lettered += 1;
        model.counters(Target::Tiny).dead_lettered += 1;
        model.missed_publications += 1;
    }
    Ok(())
}

async fn spawn_all(broker: &Broker) {
    let guests = guests();
    let restart_always = Supervision::default()
        .intensity(u32::MAX, Duration::from_secs(1))
        .backoff(Duration::ZERO, Duration::ZERO);
    let specs = [
        ComponentSpec::new("counter", guests.counter.clone()).subscribe("news"),
        ComponentSpec::new("tiny", guests.counter.clone())
            .subscribe("news")
            .mailbox_capacity(1),
        ComponentSpec::new("echo", guests.echo.clone()),
        ComponentSpec::new("pong", guests.pong.clone()),
        ComponentSpec::new("hostile", guests.hostile.clone())
            .deadline(HOSTILE_DEADLINE)
            .supervision(restart_always),
    ];
    for spec in specs {
        let id = spec.id().clone();
        broker
            .spawn(spec)
            .await
            .unwrap_or_else(|err| panic!("spawning {id}: {err}"));
    }
}

async fn play(ops: &[Op]) -> Result<(), TestCaseError> {
    let broker = Broker::with_config(
        guests().counter.engine().clone(),
        BrokerConfig::default().max_payload_bytes(MAX_PAYLOAD),
    );
    spawn_all(&broker).await;
    let mut model = Model::default();

    for op in ops {
        match op {
            Op::Send {
                sender,
                target,
                payload,
                times,
            } => {
                for _ in 0..*times {
                    send(&broker, &mut model, sender, *target, payload).await?;
                }
            }
            Op::Request { target, payload } => {
                request(&broker, &mut model, *target, payload).await?
            }
            Op::Publish { topic, payload } => publish(&broker, &mut model, topic, payload)?,
        }
    }
    prop_assert!(broker.quiesce(30 * SECOND).await, "still in flight");
    let books = broker.accounting();
    prop_assert_eq!(
        books.delivered + books.refused + books.dead_lettered,
        books.sent,
        "{:?}",
        books
    );

    // One last look at every component, through its mailbox, so everything before it (a
    // restart included) is done; the model checks the answers as for any request.
    for (target, payload) in [
        (Target::Counter, Payload::Bytes(Vec::new())),
        (Target::Tiny, Payload::Bytes(Vec::new())),
        (Target::Pong, Payload::Sequence),
        (Target::Hostile, Payload::Command(Command::Count)),
    ] {
        request(&broker, &mut model, target, &payload).await?;
    }
    prop_assert!(broker.quiesce(30 * SECOND).await, "still in flight");

    prop_assert_eq!(broker.accounting(), model.books);
    for target in KNOWN {
        let metrics = broker.metrics(target.id()).expect("registered");
        prop_assert_eq!(&metrics.state, &ComponentState::Running, "{:?}", target);
        let found = Counters {
            delivered: metrics.delivered,
            failed: metrics.failed,
            refused: metrics.refused,
            dead_lettered: metrics.dead_lettered,
        };
        let expected = model.counters.get(&target).copied().unwrap_or_default();
        prop_assert_eq!(found, expected, "{:?}'s counters", target);
        let restarts = if target == Target::Hostile {
            model.traps.len() as u64
        } else {
            0
        };
        prop_assert_eq!(metrics.restarts, restarts, "{:?}'s restarts", target);
    }

    let letters = broker.dead_letters();
    prop_assert_eq!(letters.len() as u64, model.books.dead_lettered);
    let traps: Vec<_> = letters
        .iter()
        .filter(|letter| &*letter.target == "hostile")
        .collect();
    prop_assert_eq!(traps.len(), model.traps.len());
    for (letter, reason) in traps.iter().zip(&model.traps) {
        prop_assert!(
            letter.reason.contains(reason),
            "{letter:?}, expected {reason}"
        );
    }
    let missed = letters
        .iter()
        .filter(|letter| {
            &*letter.target == "tiny"
                && letter.kind == MessageKind::Message
                && letter.reason == "publication on `news`: mailbox full"
        })
        .count() as u64;
    prop_assert_eq!(missed, model.missed_publications);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn any_sequence_of_sends_requests_and_publications_is_accounted_for_exactly(
        ops in vec(op(), 1..40)
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(play(&ops))?;
    }
}
