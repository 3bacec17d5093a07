//! The wasmtime engine, configured once for what a message runtime needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::error::{Error, ErrorKind, Result};
use crate::host::HostState;

/// How often the epoch advances. Every running guest checks the epoch, so this is the
/// granularity of deadlines and of yielding to other actors: a looping handler gives up its
/// thread at least this often and overruns its deadline by at most about this much.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(1);

/// What wasmtime reserves for each linear memory on a 64-bit host by default (4 GiB, with
/// a 32 MiB guard after it): enough that compiled code needs no bounds checks.
const FULL_RESERVATION: u64 = (4 << 30) + (32 << 20);

/// The address space the memories of one engine may reserve between them with full
/// reservations: half of the 128 TiB a 64-bit process has (47 bits), the rest left for the
/// heap, stacks, code and other engines. Room for about 16,000 instances.
const MEMORY_ADDRESS_SPACE: u64 = 64 << 40;

/// Settings of an [`Engine`]: a builder whose defaults suit a runtime of up to a thousand
/// live actors. Each setter says what it changes; every one has a matching `get_` reader.
///
/// ```
/// use courier_host_core::EngineConfig;
///
/// let config = EngineConfig::default()
///     .max_instances(200)
///     .max_memory_bytes(64 << 20);
/// assert_eq!(config.get_max_instances(), 200);
/// ```
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub(crate) pooling: bool,
    pub(crate) max_instances: u32,
    pub(crate) max_memory_bytes: usize,
    pub(crate) fuel: bool,
    pub(crate) epoch_tick: Duration,
    pub(crate) cache_dir: Option<PathBuf>,
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
    /// Use wasmtime's pooling allocator (the default), which makes instantiation cheap by
    /// reserving slots up front. The engine falls back to on-demand allocation if the pool
    /// cannot be reserved; `false` asks for on-demand allocation from the start.
    pub fn pooling(mut self, pooling: bool) -> Self {
        self.pooling = pooling;
        self
    }

    /// Most instances alive at once (the pool's size; 1,000 by default). Each component
    /// instance of a Rust guest needs one memory and a few core instances.
    ///
    /// Each memory normally reserves 4 GiB of address space, so that compiled code needs no
    /// bounds checks, and a 64-bit process has room for about 30,000 of those. An engine for
    /// more instances than fit in half of it (about 16,000) reserves only
    /// [`max_memory_bytes`](Self::max_memory_bytes) per memory instead, and its compiled
    /// code checks each memory access against that bound: a little slower, and room for
    /// hundreds of thousands; see [`get_memory_reservation`](Self::get_memory_reservation).
    pub fn max_instances(mut self, max_instances: u32) -> Self {
        self.max_instances = max_instances;
        self
    }

    /// Largest linear memory any one instance may grow to, in bytes (256 MiB by default).
    /// The per-instance cap of [`InstanceOptions`](crate::InstanceOptions) may be lower,
    /// never higher.
    pub fn max_memory_bytes(mut self, bytes: usize) -> Self {
        self.max_memory_bytes = bytes;
        self
    }

    /// Count fuel in compiled code, so that instances can be given a per-call fuel budget.
    /// Off by default: it costs a little on every wasm basic block.
    pub fn fuel(mut self, fuel: bool) -> Self {
        self.fuel = fuel;
        self
    }

    /// Period of the epoch ticker thread: the granularity of deadlines and of yielding to
    /// other actors; see [`DEFAULT_EPOCH_TICK`].
    pub fn epoch_tick(mut self, tick: Duration) -> Self {
        self.epoch_tick = tick;
        self
    }

    /// Keep compiled code in `dir` (created if missing, for its owner alone), so loading the
    /// same component again (in a later run of the process, say) skips compilation. Off by
    /// default.
    ///
    /// wasmtime loads native code from the cache without checking it, so the engine refuses
    /// a directory that belongs to another user or that every user can write.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Whether the pooling allocator is asked for.
    pub fn get_pooling(&self) -> bool {
        self.pooling
    }

    /// The most instances alive at once.
    pub fn get_max_instances(&self) -> u32 {
        self.max_instances
    }

    /// The largest memory any instance may have, in bytes.
    pub fn get_max_memory_bytes(&self) -> usize {
        self.max_memory_bytes
    }

    /// The address space each linear memory reserves, in bytes: 4 GiB and its guard, or
    /// [`get_max_memory_bytes`](Self::get_max_memory_bytes) rounded up to a wasm page (if
    /// that is less) where as many as [`get_max_instances`](Self::get_max_instances) of
    /// those would not fit.
    ///
    /// ```
    /// use courier_host_core::EngineConfig;
    ///
    /// assert!(EngineConfig::default().get_memory_reservation() >= 4 << 30);
    /// let dense = EngineConfig::default().max_instances(100_000);
    /// assert_eq!(dense.get_memory_reservation(), 256 << 20);
    /// // Memories allowed to reach 4 GiB gain nothing from a smaller reservation.
    /// let large = dense.max_memory_bytes(4 << 30);
    /// assert!(large.get_memory_reservation() >= 4 << 30);
    /// ```
    pub fn get_memory_reservation(&self) -> u64 {
        match self.reduced_reservation() {
            Some(bytes) => bytes,
            None => FULL_RESERVATION,
        }
    }

    /// The reservation per memory if full ones do not fit: the largest memory, in whole
    /// wasm pages. None where that would be no smaller than a full one.
    fn reduced_reservation(&self) -> Option<u64> {
        let instances = u64::from(self.max_instances.max(1));
        if instances.saturating_mul(FULL_RESERVATION) <= MEMORY_ADDRESS_SPACE {
            return None;
        }
        let page = 64 << 10;
        let largest = (self.max_memory_bytes as u64).div_ceil(page).max(1) * page;
        (largest < 4 << 30).then_some(largest)
    }

    /// Whether compiled code meters fuel.
    pub fn get_fuel(&self) -> bool {
        self.fuel
    }

    /// The epoch tick.
    pub fn get_epoch_tick(&self) -> Duration {
        self.epoch_tick
    }

    /// The code cache directory, if there is one.
    pub fn get_cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    fn wasmtime_config(&self, pooling: bool) -> Result<Config> {
        let mut config = Config::new();
        if let Some(dir) = &self.cache_dir {
            check_cache_dir(dir)
                .map_err(|err| Error::engine(ErrorKind::Cache { dir: dir.clone() }, err))?;
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            let cache = wasmtime::Cache::new(cache)
                .map_err(|err| Error::engine(ErrorKind::Cache { dir: dir.clone() }, err))?;
            config.cache(Some(cache));
        }
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(self.fuel);
        if let Some(bytes) = self.reduced_reservation() {
            // A memory never grows past `max_memory_bytes` (the pool's slots and the
            // per-instance limits hold it there), so it never needs to move: its base stays
            // put and code checks accesses against the fixed reservation.
            config.memory_reservation(bytes);
            config.memory_may_move(false);
        }
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

/// Creates the code cache directory if it is missing (readable by its owner alone) and
/// refuses one that someone else could write to.
///
/// wasmtime loads native code from its cache without checking where it came from: whoever
/// can write the directory can run code in the host. So the directory must belong to the
/// user running the host and must not be writable by every user.
#[cfg(unix)]
fn check_cache_dir(dir: &Path) -> wasmtime::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};

    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|err| wasmtime::Error::msg(format!("cannot create it: {err}")))?;
    }
    let meta = std::fs::metadata(dir)
        .map_err(|err| wasmtime::Error::msg(format!("cannot read it: {err}")))?;
    if !meta.is_dir() {
        return Err(wasmtime::Error::msg("it is not a directory"));
    }
    let user = rustix::process::geteuid().as_raw();
    if meta.uid() != user {
        return Err(wasmtime::Error::msg(format!(
            "it belongs to user {} rather than to user {user}, who runs this host, and compiled \
             code loaded from it would run in the host",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o002 != 0 {
        return Err(wasmtime::Error::msg(format!(
            "it is writable by every user (mode {mode:03o}), and compiled code loaded from it \
             would run in the host: `chmod o-w` it or choose another"
        )));
    }
    Ok(())
}

/// Elsewhere the host takes the directory as given.
#[cfg(not(unix))]
fn check_cache_dir(_dir: &Path) -> wasmtime::Result<()> {
    Ok(())
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
    /// Whether an embedder linked host interfaces of its own, so that an import outside
    /// WASI and `courier:actor` may be one of theirs.
    pub(crate) extended: bool,
    /// Epoch ticks since the engine was built, advanced with the epoch: a clock that costs
    /// one atomic load to read, for timing host calls on every guest-to-host transition.
    pub(crate) ticks: Arc<AtomicU64>,
}

impl Engine {
    /// Build the engine with WASI and the Courier interfaces, and start its epoch ticker.
    /// [`Engine::builder`] does the same with host interfaces of the embedder's own.
    pub fn new(config: EngineConfig) -> Result<Engine> {
        Ok(Engine::builder(config)?.build())
    }

    /// Start building an engine whose linker the embedder can extend with host interfaces
    /// of its own, beside WASI and `courier:actor`; see [`EngineBuilder`].
    pub fn builder(config: EngineConfig) -> Result<EngineBuilder> {
        let (wasmtime, allocation) = if config.pooling {
            match wasmtime::Engine::new(&config.wasmtime_config(true)?) {
                Ok(engine) => (engine, Allocation::Pooling),
                Err(err) => {
                    // Typically a sandbox or ulimit that refuses the pool's address-space
                    // reservation. On-demand allocation is slower to instantiate but works.
                    tracing::warn!(error = %err, "pooling allocator unavailable; falling back to on-demand allocation");
                    (
                        build_wasmtime(&config.wasmtime_config(false)?)?,
                        Allocation::OnDemand,
                    )
                }
            }
        } else {
            (
                build_wasmtime(&config.wasmtime_config(false)?)?,
                Allocation::OnDemand,
            )
        };

        let mut linker = Linker::new(&wasmtime);
        crate::host::add_to_linker(&mut linker)
            .map_err(|err| Error::engine(ErrorKind::HostInterfaces, err))?;
        Ok(EngineBuilder {
            wasmtime,
            linker,
            config,
            allocation,
            extended: false,
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

fn build_wasmtime(config: &Config) -> Result<wasmtime::Engine> {
    wasmtime::Engine::new(config).map_err(|err| Error::engine(ErrorKind::Engine, err))
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("allocation", &self.inner.allocation)
            .field("config", &self.inner.config)
            .finish()
    }
}

/// An [`Engine`] being built: the place where an embedder links host interfaces of its own
/// beside WASI and `courier:actor`, as Spin's `EngineBuilder` does.
///
/// Host functions get the instance's [`HostState`](crate::HostState): its component id,
/// and the extensions its [`InstanceOptions`](crate::InstanceOptions) carry. A component
/// that imports an interface linked here passes the load-time check; one that imports an
/// interface nobody linked is still refused with an error that names the import.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use courier_host_core::{Engine, EngineConfig, HostState};
/// use courier_host_core::wasmtime::StoreContextMut;
///
/// /// Shared by every instance that is given it; counts launches per engine.
/// #[derive(Clone, Default)]
/// struct Launches(Arc<AtomicU64>);
///
/// let engine = Engine::builder(EngineConfig::default().max_instances(4))?
///     .link(|linker| {
///         linker.instance("courier:alien/rocket@0.1.0")?.func_wrap(
///             "launch",
///             |store: StoreContextMut<'_, HostState>, (): ()| {
///                 if let Some(launches) = store.data().extension::<Launches>() {
///                     launches.0.fetch_add(1, Ordering::Relaxed);
///                 }
///                 tracing::info!(component = %store.data().id(), "launch");
///                 Ok(())
///             },
///         )
///     })?
///     .build();
/// # Ok::<(), courier_host_core::Error>(())
/// ```
pub struct EngineBuilder {
    wasmtime: wasmtime::Engine,
    linker: Linker<HostState>,
    config: EngineConfig,
    allocation: Allocation,
    extended: bool,
}

impl EngineBuilder {
    /// Add host interfaces to the engine's linker. WASI and `courier:actor` are there
    /// already; defining one of their functions again is an error.
    pub fn link(
        mut self,
        add: impl FnOnce(&mut Linker<HostState>) -> wasmtime::Result<()>,
    ) -> Result<EngineBuilder> {
        add(&mut self.linker).map_err(|err| Error::engine(ErrorKind::HostInterfaces, err))?;
        self.extended = true;
        Ok(self)
    }

    /// The wasmtime engine being built, for host interfaces that need it (to create a
    /// resource type or a module, say).
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.wasmtime
    }

    /// Finish the engine and start its epoch ticker.
    pub fn build(self) -> Engine {
        let ticks = Arc::new(AtomicU64::new(0));
        spawn_epoch_ticker(&self.wasmtime, self.config.epoch_tick, ticks.clone());
        Engine {
            inner: Arc::new(EngineInner {
                wasmtime: self.wasmtime,
                linker: self.linker,
                config: self.config,
                allocation: self.allocation,
                extended: self.extended,
                ticks,
            }),
        }
    }
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("allocation", &self.allocation)
            .field("config", &self.config)
            .field("extended", &self.extended)
            .finish()
    }
}

fn spawn_epoch_ticker(engine: &wasmtime::Engine, tick: Duration, ticks: Arc<AtomicU64>) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("courier-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => {
                        ticks.fetch_add(1, Ordering::Relaxed);
                        engine.increment_epoch();
                    }
                    None => break,
                }
            }
        })
        .expect("spawning the epoch ticker thread");
}
