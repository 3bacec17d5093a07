//! host-core's integration tests, against real components from `guest-examples`.
//!
//! One test binary rather than one per file: each binary links all of wasmtime, so a binary
//! per file multiplies link time and disk use for nothing.

mod calls;
mod common;
mod embedding;
mod hostile;
mod loading;
mod services;
