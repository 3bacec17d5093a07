//! The broker's integration tests, against real components from `guest-examples`.
//!
//! One test binary rather than one per file: each binary links all of wasmtime, so a binary
//! per file multiplies link time and disk use for nothing.

mod bounds;
mod common;
mod durable;

mod handoff;
mod hostile;
mod keyed;
mod lifecycle;
mod messaging;
mod outbox;
mod properties;
mod remote;
mod soak;
mod supervision;
mod timers;
mod upgrade;
mod wasm_to_wasm;
