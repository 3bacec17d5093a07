//! # courier-cli
//!
//! The `courier` runner: it reads a manifest (`courier.toml`) that declares components, their
//! capabilities, limits and supervision, starts them on a [`Broker`] and opens an HTTP
//! ingress through which the outside world sends them messages and requests and reads their
//! metrics. The binary's commands are `check`, `run`, `upgrade` and `new`; this library holds their
//! parts so that they can be tested and reused.
//!
//! The map: [`manifest`] reads and checks `courier.toml`, reporting [`diagnostics`] with
//! their lines; [`units`] reads sizes and durations; [`load`] builds the engine and
//! compiles the components; [`check`] and [`run`] are the commands of those names;
//! [`ingress`] is the HTTP side, [`prometheus`] its metrics format and [`dashboard`] the live
//! page it serves at `/`; [`upgrade`] is
//! `courier upgrade`, a client of the ingress; [`watch`] is `courier run --watch`; [`dev`] is
//! `courier dev`; [`scaffold`] is `courier new`; [`token`] is the management token a run
//! makes when none is set, and where `courier upgrade` finds it.
//!
//! [`Broker`]: courier_host_broker::Broker

pub mod check;
pub mod dashboard;
pub mod dev;
pub mod diagnostics;
pub mod ingress;
pub mod load;
pub mod manifest;
pub mod prometheus;
pub mod run;
pub mod scaffold;
pub mod server;
pub mod telemetry;
pub mod token;
pub mod units;
pub mod upgrade;
pub mod watch;

pub use diagnostics::{Diagnostics, Problem};
pub use manifest::Manifest;
