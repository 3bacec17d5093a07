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
//! `capabilities` decides access, `dead_letter` and `metrics` keep the record; `durable`
//! keeps durable components in the store and `outbox` holds what their handlers send until
//! it is committed; `remote` is the way to and from other hosts, for a lattice to
//! implement ([`Remote`]).
//!
//! ## Layers
//!
//! The modules are meant to stack, each using only the ones beside or below it, so that a
//! module's place says what it may use. From the bottom:
//!
//! 1. Ids, limits, errors and what travels: `ids`, `text`, `metrics`, `mailbox`,
//!    `capabilities`, `error`, `dead_letter`, `supervisor`, `telemetry`. These use nothing
//!    above this layer.
//! 2. What faces the store, and timers: `durable`, `timers`.
//! 3. The registry and the actors: `registry`, `actor`, `handoff`, `upgrade` (an upgrade is
//!    taken inside the actor, between two messages), `report`.
//! 4. Routing and messaging: `config` (the broker's settings), `routing`, `messaging`,
//!    `request`, `remote`, `outbox`, `stop`, `spec`.
//! 5. Keyed components: `keyed`.
//! 6. The API face: `broker`, and `handle`, which reaches the router, not the broker's
//!    insides.
//!
//! Not every import runs downward yet. These still point up (in code outside tests), each
//! with its reason; the first and the one to `remote` are plain moves away, the ones to
//! `keyed` need keyed components turned inside out:
//!
//! - `keyed` is written as `impl Broker` blocks (spawning, stopping, upgrading and placing
//!   keyed components) and takes `durable_store` from `broker`.
//! - `registry`, `routing`, `spec`, `actor` and `upgrade` reach `keyed`: an entry records the
//!   keyed component its key belongs to, the router holds the keyed components' templates,
//!   a spec holds its [`Keying`], and an actor (or an upgrade) whose key has no instance yet
//!   makes it through `keyed` first. Keyed components are built from entries and actors, so
//!   each of these is a cycle.
//! - `registry` takes [`Exposure`] from `remote`, a plain value that could live lower.
//! - `durable` is in part routing: it adds the router's stored sends, so it uses `routing`,
//!   `registry`'s entries and `outbox` (where a durable handler's sends wait until its batch
//!   commits). `actor` uses `routing`'s `release` of a mailbox's byte budget and `outbox` to
//!   dead-letter what a durable component sent.

mod actor;
mod broker;
mod capabilities;
mod config;
mod dead_letter;
mod durable;
mod error;
mod handle;
mod handoff;
mod ids;
mod keyed;
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
pub use handle::ComponentHandle;
pub use ids::{HOST_SENDER, MAX_NAME_BYTES, check_id};
pub use keyed::{
    DEFAULT_IDLE, DEFAULT_MAX_ACTIVE, KeyedMetrics, Keying, MAX_KEY_BYTES, MIN_IDLE, Placement,
    check_key,
};
pub use metrics::{Accounting, LatencySummary};
pub use outbox::{DEFAULT_REMOTE_RETENTION, MAX_OUTBOX_BYTES, MAX_OUTBOX_MESSAGES};
pub use registry::ComponentState;
pub use remote::{Exposure, Remote, RemoteAnswer, RemoteMessage, RemoteRefusal, Served};
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
