//! The lattice's integration tests: real `nats-server` processes (started and killed by the
//! tests, see `courier_test_support::nats`), real brokers and real components from
//! `guest-examples`; nothing is mocked.

mod common;

mod crossing;
mod faults;
mod keyed;
mod refusals;
mod restarts;
mod speaking;
