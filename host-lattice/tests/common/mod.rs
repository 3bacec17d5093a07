//! What the lattice tests share: hosts (a broker joined to a lattice) and waiting.

use std::time::{Duration, Instant};

use courier_host_broker::{Broker, ComponentSpec};
use courier_host_core::{Component, Engine, EngineConfig};
use courier_host_lattice::{Lattice, LatticeConfig};
use courier_test_support::guest_path;

pub const SECOND: Duration = Duration::from_secs(1);

/// The lattice every test uses; each test has servers of its own.
pub const LATTICE: &str = "test";

/// One host: a broker on an engine of its own, joined to the lattice.
pub struct Host {
    pub engine: Engine,
    pub broker: Broker,
    pub lattice: Option<Lattice>,
}

impl Host {
    /// A host named `name` with no components yet, joined through `servers` (the first is
    /// the one it connects to; the others are its fail-over).
    pub async fn join(name: &str, servers: &[String]) -> Host {
        Host::join_with(LatticeConfig::new(LATTICE, name), servers).await
    }

    pub async fn join_with(mut config: LatticeConfig, servers: &[String]) -> Host {
        let engine = Engine::new(EngineConfig::default().max_instances(50)).expect("engine");
        let broker = Broker::new(engine.clone());
        for server in servers {
            config = config.server(server);
        }
        let lattice = Lattice::join(&broker, config)
            .await
            .unwrap_or_else(|err| panic!("joining the lattice: {err}"));
        Host {
            engine,
            broker,
            lattice: Some(lattice),
        }
    }

    pub fn lattice(&self) -> &Lattice {
        self.lattice.as_ref().expect("joined")
    }

    pub fn load(&self, guest: &str) -> Component {
        self.engine
            .load_component_file(guest, guest_path(guest))
            .unwrap_or_else(|err| panic!("{err}"))
    }

    pub fn spec(&self, id: &str, guest: &str) -> ComponentSpec {
        ComponentSpec::new(id, self.load(guest))
    }

    pub async fn spawn(&self, spec: ComponentSpec) {
        let id = spec.id().clone();
        self.broker
            .spawn(spec)
            .await
            .unwrap_or_else(|err| panic!("spawning {id}: {err}"));
    }

    /// Wait until this host knows another host serves `id`.
    pub async fn sees(&self, id: &str) {
        assert!(
            self.lattice().wait_for(id, 10 * SECOND).await,
            "host `{}` never heard of `{id}` on another host",
            self.lattice().host()
        );
    }

    /// Ask a probe to run `command` and return its answer as text.
    pub async fn probe(&self, id: &str, command: &str) -> String {
        let reply = self
            .broker
            .request(id, command.as_bytes().to_vec(), 10 * SECOND)
            .await
            .unwrap_or_else(|err| panic!("probe {id} `{command}`: {err:?}"));
        String::from_utf8(reply).unwrap()
    }

    /// A counter's count, or pong's count and out-of-order count.
    pub async fn counts(&self, id: &str) -> Vec<u64> {
        let reply = self
            .broker
            .request(id, Vec::new(), 10 * SECOND)
            .await
            .unwrap_or_else(|err| panic!("asking {id} for its count: {err:?}"));
        reply
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Wait until every message this host sent to other hosts has ended (acknowledged,
    /// refused or dead-lettered) and its broker is quiet.
    pub async fn settles(&self) {
        let lattice = self.lattice();
        eventually("remote sends to end", || {
            lattice.metrics().awaiting_ack == 0
        })
        .await;
        assert!(self.broker.quiesce(10 * SECOND).await, "broker quiet");
    }
}

/// Poll `done` every few milliseconds for up to twenty seconds.
pub async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + 20 * SECOND;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The URLs of `servers`, the `first` one first.
pub fn urls(servers: &[courier_test_support::nats::NatsServer], first: usize) -> Vec<String> {
    let mut urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    urls.rotate_left(first);
    urls
}
