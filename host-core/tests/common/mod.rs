//! What host-core's integration tests share: an engine and the built guests.

use courier_host_core::{Component, Engine, EngineConfig, Instance, InstanceOptions};
use courier_test_support::guest_path;

/// An engine with room for the few instances a test makes, and a loader for the guests.
pub struct Setup {
    pub engine: Engine,
}

impl Setup {
    /// An engine with the default configuration but a small pool.
    pub fn new() -> Setup {
        Setup::with(EngineConfig::default().max_instances(16))
    }

    /// An engine built from `config`.
    pub fn with(config: EngineConfig) -> Setup {
        let engine = Engine::new(config).unwrap_or_else(|err| panic!("engine: {err}"));
        Setup { engine }
    }

    /// The built guest `guest`, loaded under its own name.
    pub fn load(&self, guest: &str) -> Component {
        self.engine
            .load_component_file(guest, guest_path(guest))
            .unwrap_or_else(|err| panic!("loading {guest}: {err}"))
    }

    /// A fresh instance of the guest `guest` made with `options`.
    pub async fn instance(&self, guest: &str, options: InstanceOptions) -> Instance {
        self.load(guest)
            .instantiate(options)
            .await
            .unwrap_or_else(|err| panic!("instantiating {guest}: {err}"))
    }
}
