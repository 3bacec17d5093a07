//! # courier-host-broker
//!
//! Courier's actor runtime on tokio. Every component instance is an actor: a task that owns
//! its instance and a bounded mailbox and handles one message at a time. Components reach
//! each other through their `messaging` imports, which this crate implements:
//!
//! - `send-message` routes by id to the target's mailbox; the target's `handle-message` runs
//!   with the sender's id stamped by the host. A full mailbox, an unknown or denied target,
//!   or an oversized payload is an immediate error to the sender.
//! - `send-request` suspends the calling guest until the target's `handle-request` answers,
//!   fails, or the timeout passes; a request cycle ends in a timeout, never a hang.
//! - `publish` delivers to every component subscribed to the topic.
//!
//! Capabilities are deny-by-default ([`Capabilities`]); supervision ([`Supervision`])
//! replaces an instance that traps, dead-letters the message that caused it and carries on
//! with the mailbox. Nothing is dropped silently: every message ends delivered, refused to
//! its sender with an error, or in the dead-letter record ([`Broker::dead_letters`]) with a
//! reason, and [`Broker::accounting`] keeps the totals.
//!
//! Actors are spawned on the tokio runtime that calls [`Broker::spawn`]: on the
//! multi-threaded runtime they use every core. An actor's mailbox and task are made
//! with the first message put in, so a spawn wakes no worker and an idle actor that was
//! never sent anything holds neither. A request to a component that is idle, with
//! nothing sent to it still unhandled, does not wake the component's task: the requester
//! borrows the instance and runs the handler on its own task (the direct hand-off), so a
//! chain of requests to idle components runs like a chain of calls, on one core, without
//! tying the other cores up (`benches/README.md`). A busy component gets the request in its
//! mailbox, behind what was queued before it.
//!
//! The map: `broker` is the public API ([`Broker`], and [`ComponentHandle`] in `handle`);
//! `ids` holds what an id may be and how long a name may be, `report` what the broker
//! reports of its components, `stop` what every way of stopping components shares;
//! `routing` takes a send from its checks to a mailbox, `request` waits for replies and
//! `handoff` runs a request on its requester's task when it can,
//! `messaging` is what a guest's `messaging` imports call; `mailbox` is what travels,
//! `registry` finds components, `actor` runs them, `supervisor` decides restarts,
//! `capabilities` decides access and `exposure` whether other hosts may reach a component,
//! `dead_letter` and `metrics` keep the record; `durable` keeps durable components in the
//! store, `storing` routes to them (stored, then queued), `outbox` holds what their
//! handlers send until it is committed and `dispatch` sends it after; `keying` is what a
//! keyed component's keys may be, `keyed` makes and puts away its keys; `remote` is the way
//! to and from other hosts, for a lattice to implement ([`Remote`]).
//!
//! ## Layers
//!
//! The modules stack, each using only the ones beside or below it, so that a module's place
//! says what it may use. From the bottom:
//!
//! 1. Ids, limits, errors and what travels: `ids`, `text`, `metrics`, `mailbox`,
//!    `capabilities`, `exposure`, `keying`, `error`, `dead_letter` (which also keeps a
//!    durable component's dead letters in the store), `supervisor`, `telemetry`.
//! 2. What faces the store, and timers: `outbox`, `durable`, `timers`.
//! 3. The registry and the actors: `registry`, `actor`, `handoff`, `upgrade` (an upgrade is
//!    taken inside the actor, between two messages), `report`. An actor whose key has no
//!    instance yet makes it here (`actor::activate_core`), from what its entry records.
//! 4. Routing and messaging: `config` (the broker's settings), `routing`, `storing`,
//!    `dispatch`, `messaging`, `request`, `remote`, `stop`, `spec`.
//! 5. Keyed components: `keyed`. The router reaches them only through the `Keys` trait it
//!    defines, which `keyed` implements: a key is made on its first message by a layer above
//!    the one that routes the message.
//! 6. The API face: `broker` (with `broker::keyed`, the face of keyed components), and
//!    `handle`, which reaches the router, not the broker's insides.
//!
//! A unit test of this crate reads its sources and fails on a `crate::` path that climbs a
//! layer, or a module with no layer.

mod actor;
mod broker;
mod capabilities;
mod config;
mod dead_letter;
mod dispatch;
mod durable;
mod error;
mod exposure;
mod handle;
mod handoff;
mod ids;
mod keyed;
mod keying;
mod mailbox;
mod messaging;
mod metrics;
mod outbox;
mod registry;
mod remote;
mod report;
mod request;
mod routing;
mod spec;
mod stop;
mod storing;
mod supervisor;
mod telemetry;
mod text;
mod timers;
mod upgrade;

pub use broker::{Broker, WeakBroker};
pub use capabilities::{Capabilities, Pattern, PatternError};
pub use config::{BrokerConfig, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_QUEUED_BYTES};
pub use dead_letter::{
    DEAD_LETTER_PAYLOAD_LIMIT, DEFAULT_DEAD_LETTER_CAPACITY, DeadLetter, MessageKind,
};
pub use error::{BrokerError, SendError};
pub use exposure::Exposure;
pub use handle::ComponentHandle;
pub use ids::{HOST_SENDER, MAX_NAME_BYTES, check_id};
pub use keyed::KeyedMetrics;
pub use keying::{DEFAULT_IDLE, DEFAULT_MAX_ACTIVE, Keying, MAX_KEY_BYTES, MIN_IDLE, check_key};
pub use metrics::{Accounting, LatencySummary};
pub use outbox::{DEFAULT_REMOTE_RETENTION, MAX_OUTBOX_BYTES, MAX_OUTBOX_MESSAGES};
pub use registry::ComponentState;
pub use remote::{Placement, Remote, RemoteAnswer, RemoteMessage, RemoteRefusal, Served};
pub use report::{DurableMetrics, MetricsSnapshot, ShutdownReport};
pub use spec::{
    ComponentSpec, DEFAULT_MAILBOX_BYTES, DEFAULT_MAILBOX_CAPACITY, MAX_MAILBOX_CAPACITY,
};
pub use supervisor::{RestartPolicy, Supervision};
pub use telemetry::{HandlerKind, HandlerSpan, Outcome, SpanSink, Telemetry};
pub use timers::{DEFAULT_MAX_TIMERS, MIN_TIMER_PERIOD, TIMER_SENDER_PREFIX, TimerMetrics};
pub use upgrade::Upgraded;

pub use courier_host_core::{
    ComponentError, ComponentId, MessagingError, TimerError, TraceContext,
};

/// The payload type of the host's sends: cheap to clone and to share, so a payload is
/// copied once, into the target.
pub use bytes::Bytes;

/// What a typical integrator imports.
pub mod prelude {
    pub use crate::{
        Broker, BrokerConfig, Capabilities, ComponentHandle, ComponentSpec, ComponentState,
        RestartPolicy, SendError, Supervision,
    };
    pub use courier_host_core::{Component, Engine, EngineConfig, MessagingError};
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Each module's layer, as the crate doc lists them, from the bottom: a module may use
    /// the ones in its own layer or below, never one above.
    const LAYERS: &[&[&str]] = &[
        &[
            "ids",
            "text",
            "metrics",
            "mailbox",
            "capabilities",
            "exposure",
            "keying",
            "error",
            "dead_letter",
            "supervisor",
            "telemetry",
        ],
        &["outbox", "durable", "timers"],
        &["registry", "actor", "handoff", "upgrade", "report"],
        &[
            "config",
            "routing",
            "storing",
            "dispatch",
            "messaging",
            "request",
            "remote",
            "stop",
            "spec",
        ],
        &["keyed"],
        &["broker", "handle"],
    ];

    fn layer(module: &str) -> Option<usize> {
        LAYERS.iter().position(|layer| layer.contains(&module))
    }

    fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src is readable") {
            let path = entry.expect("src is readable").path();
            if path.is_dir() {
                sources(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }

    /// Where `source` (the text of a module of layer `own`) uses a module of a higher layer,
    /// or names an item by the crate root, which hides the module, and so the layer, it is
    /// from. Comments and the tests at a file's end are not looked at.
    fn climbs(source: &str, own: usize) -> Vec<String> {
        let mut found = Vec::new();
        for (number, line) in source.lines().enumerate() {
            if line == "#[cfg(test)]" {
                break;
            }
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for (at, _) in code.match_indices("crate::") {
                let rest = &code[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let line = number + 1;
                match layer(&name) {
                    Some(theirs) if theirs > own => {
                        found.push(format!("line {line}: `{name}` is in layer {}", theirs + 1))
                    }
                    Some(_) => {}
                    None => found.push(format!(
                        "line {line}: `crate::{name}` does not name a module of a layer"
                    )),
                }
            }
        }
        found
    }

    #[test]
    fn no_module_uses_one_in_a_layer_above_its_own() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        files.sort();
        let mut wrong = Vec::new();
        for file in &files {
            let relative = file.strip_prefix(&src).expect("under src");
            let module = relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .expect("a file name")
                .trim_end_matches(".rs");
            if module == "lib" {
                continue;
            }
            let Some(own) = layer(module) else {
                wrong.push(format!(
                    "{}: module `{module}` has no layer",
                    relative.display()
                ));
                continue;
            };
            let source = std::fs::read_to_string(file).expect("a source file is readable");
            for climb in climbs(&source, own) {
                wrong.push(format!(
                    "{} (`{module}`, layer {}): {climb}",
                    relative.display(),
                    own + 1
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "imports that climb a layer:\n{}",
            wrong.join("\n")
        );
        assert!(
            files.len() > LAYERS.concat().len(),
            "the sources were found"
        );
    }

    #[test]
    fn the_check_sees_a_climb_and_a_path_by_the_crate_root() {
        let routing = layer("routing").unwrap();
        assert_eq!(
            climbs(
                "use crate::keyed::Keyed;\nuse crate::registry::Entry;\n",
                routing
            ),
            vec!["line 1: `keyed` is in layer 5".to_string()]
        );
        assert_eq!(climbs("let x = crate::Exposure::Local;", routing).len(), 1);
        assert!(climbs("/// [`Broker`](crate::Broker)\n", routing).is_empty());
        assert!(climbs("#[cfg(test)]\nuse crate::broker::Broker;\n", routing).is_empty());
    }
}
