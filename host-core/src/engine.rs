//! The wasmtime engine, configured once for what a message runtime needs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::error::{Error, Result};
use crate::host::HostState;

/// How often the epoch advances. Every running guest checks the epoch, so this is the
/// granularity of deadlines and of yielding to other actors: a looping handler gives up its
/// thread at least this often and overruns its deadline by at most about this much.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(1);

/// Settings of an [`Engine`]. The defaults suit a runtime of up to a thousand live actors.
///
/// ```
/// use courier_host_core::EngineConfig;
///
/// let config = EngineConfig::default()
///     .max_instances(200)
///     .max_memory_bytes(64 << 20);
/// assert_eq!(config.max_instances, 200);
/// ```
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Use wasmtime's pooling allocator, which makes instantiation cheap by reserving slots
    /// up front. Falls back to on-demand allocation if the pool cannot be reserved.
    pub pooling: bool,
    /// Most instances alive at once (the pool's size). Each component instance of a Rust
    /// guest needs one memory and a few core instances.
    pub max_instances: u32,
    /// Largest linear memory any one instance may grow to, in bytes. The per-instance cap
    /// of [`InstanceOptions`](crate::InstanceOptions) may be lower, never higher.
    pub max_memory_bytes: usize,
    /// Count fuel in compiled code, so that instances can be given a per-call fuel budget.
    /// Off by default: it costs a little on every wasm basic block.
    pub fuel: bool,
    /// Period of the epoch ticker thread; see [`DEFAULT_EPOCH_TICK`].
    pub epoch_tick: Duration,
    /// Keep compiled code in this directory, so loading the same component again (in a
    /// later run of the process, say) skips compilation. Off by default.
    pub cache_dir: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pooling: true,
            max_instances: 1000,
            // Large enough for ordinary guests; small enough that a memory bomb is caught
            // long before it hurts the host.
            max_memory_bytes: 256 << 20,
            fuel: false,
            epoch_tick: DEFAULT_EPOCH_TICK,
            cache_dir: None,
        }
    }
}

impl EngineConfig {
    /// Turn the pooling allocator on or off.
    pub fn pooling(mut self, pooling: bool) -> Self {
        self.pooling = pooling;
        self
    }

    /// Set the most instances alive at once.
    pub fn max_instances(mut self, max_instances: u32) -> Self {
        self.max_instances = max_instances;
        self
    }

    /// Set the largest memory any instance may have, in bytes.
    pub fn max_memory_bytes(mut self, bytes: usize) -> Self {
        self.max_memory_bytes = bytes;
        self
    }

    /// Enable fuel metering so instances can have a per-call fuel budget.
    pub fn fuel(mut self, fuel: bool) -> Self {
        self.fuel = fuel;
        self
    }

    /// Set the epoch tick (deadline granularity).
    pub fn epoch_tick(mut self, tick: Duration) -> Self {
        self.epoch_tick = tick;
        self
    }

    /// Cache compiled code in `dir` (created if missing).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    fn wasmtime_config(&self, pooling: bool) -> Result<Config> {
        let mut config = Config::new();
        if let Some(dir) = &self.cache_dir {
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            let cache = wasmtime::Cache::new(cache).map_err(|err| Error::Engine {
                reason: format!("cannot use {} as the code cache: {err:#}", dir.display()),
            })?;
            config.cache(Some(cache));
        }
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(self.fuel);
        if pooling {
            let instances = self.max_instances.max(1);
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(instances);
            pool.total_memories(instances);
            pool.total_tables(instances.saturating_mul(2));
            // A Rust guest linked by wasm-component-ld has its main module plus a few
            // adapter and shim modules: several core instances per component instance.
            pool.total_core_instances(instances.saturating_mul(8));
            pool.max_core_instances_per_component(16);
            pool.max_memories_per_component(4);
            pool.max_tables_per_component(8);
            pool.total_stacks(instances);
            pool.max_memory_size(self.max_memory_bytes);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        Ok(config)
    }
}

/// Which allocator an [`Engine`] ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// wasmtime's pooling allocator: instance slots reserved up front.
    Pooling,
    /// Memory allocated per instance on demand.
    OnDemand,
}

/// One wasmtime engine for the whole runtime, with its linker and its epoch ticker.
///
/// Cloning is cheap and shares the engine. The ticker thread holds only a weak reference,
/// so it ends once the last clone is dropped.
///
/// ```no_run
/// # async fn run() -> courier_host_core::Result<()> {
/// use courier_host_core::{Engine, EngineConfig, InstanceOptions};
///
/// let engine = Engine::new(EngineConfig::default())?;
/// let echo = engine.load_component_file("echo", "target/guests/echo.wasm")?;
/// let mut instance = echo.instantiate(InstanceOptions::new("echo")).await?;
/// let reply = instance.call_handle_request("host", b"hello").await?;
/// assert_eq!(reply.unwrap(), b"hello");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub(crate) wasmtime: wasmtime::Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) config: EngineConfig,
    pub(crate) allocation: Allocation,
}

impl Engine {
    /// Build the engine and start its epoch ticker.
    pub fn new(config: EngineConfig) -> Result<Engine> {
        let (wasmtime, allocation) = if config.pooling {
            match wasmtime::Engine::new(&config.wasmtime_config(true)?) {
                Ok(engine) => (engine, Allocation::Pooling),
                Err(err) => {
                    // Typically a sandbox or ulimit that refuses the pool's address-space
                    // reservation. On-demand allocation is slower to instantiate but works.
                    tracing::warn!(error = %err, "pooling allocator unavailable; falling back to on-demand allocation");
                    (
                        Self::build(&config.wasmtime_config(false)?)?,
                        Allocation::OnDemand,
                    )
                }
            }
        } else {
            (
                Self::build(&config.wasmtime_config(false)?)?,
                Allocation::OnDemand,
            )
        };

        let mut linker = Linker::new(&wasmtime);
        crate::host::add_to_linker(&mut linker).map_err(|err| Error::Engine {
            reason: format!("cannot link the host interfaces: {err}"),
        })?;

        spawn_epoch_ticker(&wasmtime, config.epoch_tick);
        Ok(Engine {
            inner: Arc::new(EngineInner {
                wasmtime,
                linker,
                config,
                allocation,
            }),
        })
    }

    fn build(config: &Config) -> Result<wasmtime::Engine> {
        wasmtime::Engine::new(config).map_err(|err| Error::Engine {
            reason: format!("{err:#}"),
        })
    }

    /// The allocator in use: pooling unless the pool could not be reserved.
    pub fn allocation(&self) -> Allocation {
        self.inner.allocation
    }

    /// The configuration the engine was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The underlying wasmtime engine, for integrators who need more than Courier offers.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.wasmtime
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("allocation", &self.inner.allocation)
            .field("config", &self.inner.config)
            .finish()
    }
}

fn spawn_epoch_ticker(engine: &wasmtime::Engine, tick: Duration) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("courier-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("spawning the epoch ticker thread");
}
