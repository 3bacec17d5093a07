//! # courier-host-core
//!
//! The narrow wrapper over wasmtime on which Courier's runtime stands. It fixes the choices
//! a message runtime needs, so an integrator does not have to:
//!
//! - one [`Engine`] with the component model, async calls, epoch interruption (a ticker
//!   thread advances the epoch) and the pooling allocator, falling back to on-demand
//!   allocation where the pool cannot be reserved;
//! - [`Component`]s loaded from bytes or files, checked against world `courier:actor/actor`
//!   and linked once, so that instantiation does no linking work;
//! - [`Instance`]s with a store kept across calls (actors are stateful), a memory cap, a
//!   per-call deadline enforced by epoch interruption, and optional fuel;
//! - host services: `current-time-millis`, `log` into `tracing`, guest stdout/stderr into
//!   `tracing`, and WASI with no directories, network or environment;
//! - the [`Messaging`] trait behind a guest's `messaging` imports, which the broker
//!   implements; alone, host-core answers those calls with `target-not-found`;
//! - W3C trace context ([`TraceContext`]): what a guest sends while it handles a message
//!   carries the context of that message's handler call ([`Instance::set_trace`]), and its
//!   log lines carry the trace id;
//! - the [`Timers`] trait behind a guest's `timers` imports, which the broker implements;
//!   alone, host-core refuses every timer with `disabled`.
//!
//! ```no_run
//! # async fn run() -> courier_host_core::Result<()> {
//! use std::time::Duration;
//! use courier_host_core::{Engine, EngineConfig, InstanceOptions};
//!
//! let engine = Engine::new(EngineConfig::default())?;
//! let counter = engine.load_component_file("counter", "target/guests/counter.wasm")?;
//! let mut instance = counter
//!     .instantiate(InstanceOptions::new("counter").deadline(Duration::from_millis(100)))
//!     .await?;
//! instance.call_handle_message("host", b"tick").await?.expect("counter accepts messages");
//! let count = instance.call_handle_request("host", b"").await?.expect("counter answers");
//! assert_eq!(u64::from_le_bytes(count.try_into().unwrap()), 1);
//! # Ok(()) }
//! ```
//!
//! After a trap (deadline, memory cap, fuel, panic, `unreachable`) an instance is poisoned;
//! every later call fails with [`ErrorKind::Poisoned`] and its owner instantiates a new one.
//!
//! An embedder adds host interfaces of its own through [`Engine::builder`] and
//! [`EngineBuilder::link`]; their functions see the calling instance's [`HostState`].

#[allow(missing_docs)] // generated from wit/, whose doc comments it carries where it can
mod bindings;
mod component;
mod engine;
mod error;
pub mod guest_log;
mod host;
mod instance;
pub mod text;
mod timers;
pub mod trace;
pub mod units;

use std::sync::Arc;

pub use component::Component;
pub use engine::{Allocation, DEFAULT_EPOCH_TICK, Engine, EngineBuilder, EngineConfig};
pub use error::{Error, ErrorKind, Result};
pub use host::{BoxFuture, HostState, Messaging, NoMessaging, Sending};
pub use instance::{
    CallResult, DEFAULT_DEADLINE, DEFAULT_MAX_STATE_BYTES, Instance, InstanceOptions,
};
pub use timers::{NoTimers, TimerStart, Timers};
pub use trace::TraceContext;

/// Why the host refused to schedule a guest's timer: the WIT `timer-error`.
pub use bindings::courier::actor::timers::TimerError;
/// Why a handler refused or failed a message: the WIT `component-error`.
pub use bindings::courier::actor::types::ComponentError;
/// Severity of a guest log line: the WIT `log-level`.
pub use bindings::courier::actor::types::LogLevel;
/// Why the host could not deliver a guest's message: the WIT `messaging-error`.
pub use bindings::courier::actor::types::MessagingError;

/// The wasmtime this crate is built on, for embedders that link host interfaces of their
/// own ([`EngineBuilder::link`]) and must name its types in the same version.
pub use wasmtime;

/// Host-assigned identity of a component instance: `name` or `namespace/name`.
///
/// Shared and cheap to clone, since every message carries its sender's id.
pub type ComponentId = Arc<str>;
