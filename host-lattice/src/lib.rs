//! # courier-host-lattice
//!
//! Joins a Courier broker to a *lattice*: several hosts, each running a broker, whose
//! components reach each other over [NATS](https://nats.io) with the same WIT and the same
//! guest code as in one process. In-process delivery stays the default and the fast path:
//! the broker hands the lattice only a target that is not registered on its own host.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use courier_host_broker::{Broker, ComponentSpec, Exposure};
//! use courier_host_core::{Engine, EngineConfig};
//! use courier_host_lattice::{Lattice, LatticeConfig};
//!
//! let engine = Engine::new(EngineConfig::default())?;
//! let broker = Broker::new(engine.clone());
//! let pong = engine.load_component_file("pong", "target/guests/pong.wasm")?;
//! // Reachable from the other hosts only because the spec says so.
//! broker.spawn(ComponentSpec::new("pong", pong).expose(Exposure::Lattice)).await?;
//! let lattice = Lattice::join(
//!     &broker,
//!     LatticeConfig::new("shop", "eu-1").server("nats://127.0.0.1:4222"),
//! )
//! .await?;
//! # Ok(()) }
//! ```
//!
//! ## What each operation promises across hosts
//!
//! - **send-message**: the sending host checks the capability and the size, refuses at once
//!   a target no host serves (from the other hosts' heartbeats, so nothing goes on the
//!   wire), and otherwise returns once the message is queued for the wire. Messages from
//!   one host go out in the order they were sent, on one connection, so each sender's
//!   messages to each target arrive in order. The serving host queues the message in the
//!   real mailbox and acknowledges it (in batches), or answers a typed refusal. The sender has moved on
//!   by then, so a refusal (`mailbox-full`, say) ends the message as a dead letter on the
//!   sending host with the serving host's reason. A message to an id one host serves
//!   alone is numbered in its stream and, while the directory still hears that host, sent
//!   again when it is not acknowledged: after the client reconnects (a server died with
//!   it), a fifth of the ack timeout after it went out, or when NATS said nobody listened
//!   (a failover under way). The serving host handles each number once and in order,
//!   holding one that comes before its turn for up to 4 s (less when its sender stops
//!   waiting sooner); what goes again goes in a window paced by the acknowledgements, so a
//!   server failover loses and repeats nothing while both hosts live. What is still unacknowledged at the
//!   ack timeout ends as `unconfirmed` (it may have arrived), or `no-host` when the last
//!   answer was that nobody listened. A message still queued when it could no longer be
//!   acknowledged in time (NATS unreachable, say) is never sent: it ends as a dead letter
//!   `not sent`. Messages to a replicated id are not numbered and go out once. Each
//!   message carries its deadline (the wall-clock moment its sender gives up on it): a
//!   serving host drops one that arrives later (one the NATS client kept through a
//!   reconnect, say), so nothing its sender dead-lettered is handled after all. Hosts'
//!   clocks must agree to well within the ack timeout.
//! - **send-request**: carries the time the requester has left when it goes on the wire,
//!   and its deadline by the wall clock (a request whose requester stopped waiting is not
//!   sent, and one that arrives after its deadline is dropped); the serving host
//!   dead-letters a request still queued when that time has passed instead of handling
//!   it; the reply goes to the requesting host's own reply subject, and only the requester
//!   gets it. A request takes the same ordered path as messages, so it does not overtake
//!   them.
//! - **publish**: delivered to this host's subscribers at once (the count returned to the
//!   publisher is theirs), and offered once to the other hosts, each of which subscribes
//!   once per topic its components hear and delivers to its own subscribers. At most
//!   once, and not counted back to the publisher.
//! - **Accounting**: each host's [`Accounting`](courier_host_broker::Accounting) balances
//!   on its own: a message sent to another host ends delivered (acknowledged), refused
//!   (before the wire, to its sender), or dead-lettered with a reason; what arrives is
//!   counted `arrived` and ends like any local message. [`LatticeMetrics`] breaks the
//!   remote part down.
//! - **Payload size**: a payload larger than the server's `max_payload` less
//!   [`HEADER_ROOM`] is refused with `payload-too-large` and that limit; payloads are
//!   not split into chunks.
//! - **Ids**: every exposed id is a NATS queue group, so even two hosts that start serving
//!   one id at the same moment never both get a message: each message goes to one of
//!   them. A host refuses to serve an exposed id that another host already answers for,
//!   and when two hosts claim one exclusive id anyway, every host's directory reports it
//!   ([`Lattice::conflicts`], a log line, [`LatticeMetrics::conflicts`]). An id spawned
//!   with [`Exposure::Replicated`](courier_host_broker::Exposure::Replicated) is meant to
//!   be served by several hosts; per-sender order is not kept across them.
//! - **Keys**: a keyed component spawned with
//!   [`Exposure::Replicated`](courier_host_broker::Exposure::Replicated) on several hosts
//!   places each key on one of them, by rendezvous hashing over the hosts that serve it
//!   (`keys.rs`); a message or request to `cart/<key>` from any host goes to that one, in
//!   order per sender while the key stays there. A joining or leaving host moves only the
//!   keys it wins or held; a host that no longer owns a key puts it away, and refuses, naming
//!   the owner, what another host sent it by an older view.
//! - **Restarts**: every join has a random incarnation, in the subject replies and
//!   acknowledgements come back on, so a host started again under its name never takes
//!   its previous run's replies for its own. A host refuses to join while another live
//!   host answers for its name ([`LatticeError::HostNameTaken`]).
//! - **Outages**: every wait on NATS is bounded (a second, or the drain given to
//!   [`Lattice::leave`]), so leaving with every server down still ends in time; what the
//!   lattice still owed then, and what a dropped [`Lattice`] owed, ends as dead letters
//!   with the reason, and the broker can join again.

//! ## Trust
//!
//! Guests never touch NATS: a guest chooses a target and a payload, and its host writes
//! the rest: the envelope before the payload (kind, sender id, a request's time left) and
//! the headers of its answers (the wire format is described in [`subject`]'s table and in
//! ARCHITECTURE.md). Between hosts, the NATS credentials ([`Auth`]) make a host a host,
//! and every subject a host publishes on carries its own name, so per-host permissions
//! (`publish: courier.<lattice>.*.<host>.>`, `subscribe: courier.<lattice>.>`,
//! `allow_responses: true`; see [`subject`]) pin it to speaking for itself. A receiving
//! host also refuses a sender id that another host serves alone and acknowledgements for
//! ids the acknowledging host does not serve ([`LatticeMetrics::forged`]). Any member can
//! read everything under `courier.<lattice>.>`: give those permissions to hosts only.
//! [`LatticeConfig::trust_warnings`] names what in a configuration leaves that open (a server on
//! another machine with no credentials, or credentials sent to it in plaintext).

mod config;
mod directory;
mod heartbeat;
mod inbound;
mod keys;
mod lattice;
mod metrics;
mod outbound;
mod pending;
mod replies;
mod serving;
pub mod subject;
mod topics;
mod wire;

pub use config::{
    Auth, DEFAULT_ACK_TIMEOUT, DEFAULT_HEARTBEAT, DEFAULT_INBOUND_BYTES, DEFAULT_OUTBOUND_BYTES,
    DEFAULT_OUTBOUND_CAPACITY, LatticeConfig, SUBSCRIPTION_CAPACITY,
};
pub use directory::{Conflict, HostInfo, MAX_DIRECTORY_BYTES, MAX_ENTRIES_PER_HOST, MAX_HOSTS};
pub use lattice::{HEADER_ROOM, Lattice, LatticeError};
pub use metrics::LatticeMetrics;
