//! What the broker's integration tests share: an engine, loaded guests, small helpers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use courier_host_broker::{Broker, BrokerConfig, ComponentSpec, ComponentState};
use courier_host_core::{Component, Engine, EngineConfig};
use courier_host_store::{RedbStore, Store};
use courier_test_support::guest_path;

pub const SECOND: Duration = Duration::from_secs(1);

pub fn engine() -> Engine {
    Engine::new(EngineConfig::default().max_instances(300)).expect("engine")
}

pub fn load(engine: &Engine, name: &str) -> Component {
    engine
        .load_component_file(name, guest_path(name))
        .unwrap_or_else(|err| panic!("{err}"))
}

/// A store on real files in `dir`.
pub fn store_in(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(RedbStore::open_in_dir(dir.path()).expect("the store opens"))
}

/// A broker on a fresh engine that keeps durable components in `store`.
pub fn durable_setup(store: Arc<dyn Store>) -> Setup {
    let engine = engine();
    let broker = Broker::with_config(engine.clone(), BrokerConfig::default().store(store));
    Setup { engine, broker }
}

/// Run `run` as a host of its own on `store`, then kill that host: its runtime is dropped
/// with every task still on it, so no actor ends, drains or commits after `run` returns.
/// What survives is what the store held at that moment, as after a crash of the process.
pub async fn crashed_host<T, F>(
    store: &Arc<dyn Store>,
    run: impl FnOnce(Arc<Setup>) -> F + Send + 'static,
) -> T
where
    T: Send + 'static,
    F: Future<Output = T>,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let setup = Arc::new(durable_setup(store));
        let out = runtime.block_on(run(setup.clone()));
        drop(runtime);
        drop(setup);
        out
    })
    .await
    .unwrap()
}

/// A broker on a fresh engine, with a loader for the guests.
pub struct Setup {
    pub engine: Engine,
    pub broker: Broker,
}

impl Setup {
    pub fn new() -> Setup {
        let engine = engine();
        let broker = Broker::new(engine.clone());
        Setup { engine, broker }
    }

    pub fn spec(&self, id: &str, guest: &str) -> ComponentSpec {
        ComponentSpec::new(id, load(&self.engine, guest))
    }

    pub async fn spawn(&self, spec: ComponentSpec) {
        let id = spec.id().clone();
        self.broker
            .spawn(spec)
            .await
            .unwrap_or_else(|err| panic!("spawning {id}: {err}"));
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

    /// The count a counter reports.
    pub async fn count(&self, id: &str) -> u64 {
        let reply = self
            .broker
            .request(id, Vec::new(), 10 * SECOND)
            .await
            .unwrap();
        u64::from_le_bytes(reply.try_into().unwrap())
    }

    /// Wait until `id`'s actor has taken everything out of its mailbox.
    pub async fn mailbox_drains(&self, id: &str) {
        self.wait_until(|broker| broker.metrics(id).is_some_and(|m| m.mailbox_depth == 0))
            .await;
    }

    /// Wait until `id` is in a state that `is` accepts, and return it.
    pub async fn state_becomes(&self, id: &str, is: fn(&ComponentState) -> bool) -> ComponentState {
        self.wait_until(|broker| broker.state(id).is_some_and(|state| is(&state)))
            .await;
        self.broker.state(id).unwrap()
    }

    /// Poll `done` every millisecond for up to ten seconds.
    pub async fn wait_until(&self, done: impl Fn(&Broker) -> bool) {
        let deadline = std::time::Instant::now() + 10 * SECOND;
        while !done(&self.broker) {
            assert!(
                std::time::Instant::now() < deadline,
                "the broker did not get there within ten seconds"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Wait for every message to be handled or dead-lettered, then check that the books
    /// balance: delivered + refused + dead-lettered = sent.
    pub async fn assert_accounted(&self) {
        assert!(
            self.broker.quiesce(30 * SECOND).await,
            "messages still in flight"
        );
        let books = self.broker.accounting();
        assert_eq!(
            books.delivered + books.refused + books.dead_lettered,
            books.sent,
            "{books:?}"
        );
    }
}
