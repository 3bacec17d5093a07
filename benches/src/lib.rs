//! # courier-benches
//!
//! Courier's benchmarks and the pieces they share. Machines are shared and noisy, so every
//! benchmark measures its baselines in the same run and the figures that matter are ratios:
//!
//! - the native floor ([`native`]): tokio channels carrying the same payload between two
//!   tasks, the least a message between two Rust tasks costs;
//! - the wasm floor ([`bare`]): the guest components called through wasmtime alone, with an
//!   engine configured like host-core's and no Courier code on the call path;
//! - Courier: the same work through `courier-host-core` and through the broker.
//!
//! The benchmarks are in `benches/*.rs` and run under criterion. Each one also writes what it
//! measured to `target/bench-results/NAME.tsv` ([`results`]); `bench-report` turns those
//! files into one table with every figure's ratio to its floor ([`report`]). `cargo xtask
//! bench` does all of it; see `benches/README.md`.

pub mod bare;
pub mod memory;
pub mod native;
pub mod report;
pub mod results;
pub mod sampling;

use std::time::{Duration, Instant};

use courier_host_broker::Broker;
use courier_host_core::{Component, Engine};

pub use results::{Figure, Figures, Target};
pub use sampling::{Settings, measure};

/// The runtime every benchmark runs on: tokio's multi-threaded scheduler with a worker per
/// core, as a Courier host would run in production.
///
/// The benchmark's own code runs on the thread that calls `block_on`, not on a worker, so
/// waiting there (see [`settle`]) takes nothing from the actors.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

/// How often [`settle`] looks at the broker's books. Much finer than
/// [`Broker::quiesce`], which sleeps a tokio millisecond between looks: a millisecond is
/// a tenth of a batch of 10,000 messages, and would show up in the figures.
const SETTLE_POLL: Duration = Duration::from_micros(20);

/// Wait until the broker has nothing in flight: every message sent so far delivered,
/// refused or dead-lettered.
///
/// This blocks the calling thread, so call it from the thread that drives the benchmark
/// (inside `Runtime::block_on`), never from a task on a runtime worker.
///
/// # Panics
///
/// If the broker is still busy after `timeout`: a benchmark that never finishes its batch
/// has found a bug, not a slow figure.
pub fn settle(broker: &Broker, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let books = broker.accounting();
        if books.in_flight() == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the broker still had {} messages in flight after {timeout:?}: {books:?}",
            books.in_flight()
        );
        std::thread::sleep(SETTLE_POLL);
    }
}

/// The built guest component `name`, loaded on `engine` under its own name.
///
/// # Panics
///
/// If it is not built or does not load: a benchmark without its guest measures nothing.
pub fn load(engine: &Engine, name: &str) -> Component {
    engine
        .load_component_file(name, courier_test_support::guest_path(name))
        .unwrap_or_else(|err| panic!("loading {name}: {err}"))
}

/// Whether the built guest component `name` exists, so that a benchmark whose guest has not
/// been built yet can say so and go on with the rest.
pub fn guest_built(name: &str) -> bool {
    courier_test_support::guests_dir()
        .join(format!("{name}.wasm"))
        .is_file()
}

/// A payload of `len` bytes, not all zero, so no layer can take a shortcut for zeroed memory.
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A payload size as people write it: `0 B`, `64 B`, `4 KiB`, `64 KiB`.
pub fn size_label(len: usize) -> String {
    match len {
        len if len >= 1024 && len % 1024 == 0 => format!("{} KiB", len / 1024),
        len => format!("{len} B"),
    }
}
