//! The wasm floor: guest components called through wasmtime alone.
//!
//! [`BareEngine`] is a `wasmtime::Engine` configured as host-core configures its own
//! (component model, epoch interruption, the pooling allocator with the same limits, or
//! on-demand allocation), with a linker holding WASI preview 2 and the Courier imports.
//! The imports are stubs that do the least they can: `self-id` returns the instance's id,
//! `publish` reaches nobody, and `send-message` / `send-request` go nowhere, or, when the
//! instance has a peer ([`BareInstance::connect`]), call the peer's handler directly, inline,
//! with no queue, task or lookup in between. That last form is the floor of wasm-to-wasm
//! work: the same two guest calls Courier makes, and nothing else.
//!
//! Calls are typed async calls (`TypedFunc::call_async` with `&str` and `&[u8]` arguments),
//! the same call host-core makes, with the export's type checked once at instantiation.
//! Epoch interruption is
//! compiled in, as in host-core, but no ticker runs and the deadline is out of reach, so it
//! costs the checks and never fires.

use std::path::Path;
use std::time::{Duration, Instant};
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::component::{Func, HasSelf, InstancePre, Linker, ResourceTable, TypedFunc};
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

#[allow(missing_docs)] // generated from wit/
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "actor",
        imports: {
            // Async so that a stub can call its peer's handler inline.
            "courier:actor/messaging.send-message": async,
            "courier:actor/messaging.send-request": async,
        },
    });
}

use bindings::courier::actor::{host_services, messaging, timers, types};
use bindings::{Actor, ActorPre};

/// Both exports take `(sender, payload)` and return the guest's answer or its error.
type Handler<'a, T> = TypedFunc<(&'a str, &'a [u8]), (Result<T, ComponentError>,)>;

/// Why a guest refused a call: the WIT `component-error`, as these bindings generate it.
pub use bindings::courier::actor::types::ComponentError;
use bindings::courier::actor::types::{LogLevel, MessagingError};

/// The instance limit of the pool, host-core's default.
const MAX_INSTANCES: u32 = 1000;
/// The largest memory of an instance, host-core's default.
const MAX_MEMORY_BYTES: usize = 256 << 20;

/// A wasmtime engine and linker configured like host-core's, with stub imports.
pub struct BareEngine {
    engine: wasmtime::Engine,
    linker: Linker<BareState>,
}

impl BareEngine {
    /// An engine with the pooling allocator (host-core's default) or on-demand allocation.
    ///
    /// # Panics
    ///
    /// If wasmtime refuses the configuration, for example where the pool cannot reserve its
    /// address space; the benchmark cannot measure its floor then.
    pub fn new(pooling: bool) -> BareEngine {
        BareEngine::with_pool(pooling.then_some(MAX_INSTANCES))
    }

    /// An engine with a pool for `instances` instances laid out as host-core lays out its
    /// own, or on-demand allocation for `None`.
    ///
    /// # Panics
    ///
    /// As [`BareEngine::new`].
    pub fn with_pool(instances: Option<u32>) -> BareEngine {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        if let Some(instances) = instances {
            // Where host-core reserves less than 4 GiB per memory (an engine for more
            // instances than those fit), so does the floor, with the same bounds checks.
            let reservation = courier_host_core::EngineConfig::default()
                .max_instances(instances)
                .max_memory_bytes(MAX_MEMORY_BYTES)
                .get_memory_reservation();
            if reservation < 4 << 30 {
                config.memory_reservation(reservation);
                config.memory_may_move(false);
            }
            // The same pool as host-core's EngineConfig, for that many instances.
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(instances);
            pool.total_memories(instances);
            pool.total_tables(instances * 2);
            pool.total_core_instances(instances * 8);
            pool.max_core_instances_per_component(16);
            pool.max_memories_per_component(4);
            pool.max_tables_per_component(8);
            pool.total_stacks(instances);
            pool.max_memory_size(MAX_MEMORY_BYTES);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = wasmtime::Engine::new(&config).expect("wasmtime accepts host-core's config");
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("linking WASI");
        Actor::add_to_linker::<BareState, HasSelf<BareState>>(&mut linker, |state| state)
            .expect("linking the courier stubs");
        BareEngine { engine, linker }
    }

    /// Compile and link the component at `path`.
    ///
    /// # Panics
    ///
    /// If it cannot be read, compiled or linked.
    pub fn load(&self, path: &Path) -> BareComponent {
        let component = wasmtime::component::Component::from_file(&self.engine, path)
            .unwrap_or_else(|err| panic!("compiling {}: {err:#}", path.display()));
        let pre = self
            .linker
            .instantiate_pre(&component)
            .unwrap_or_else(|err| panic!("linking {}: {err:#}", path.display()));
        // bindgen's check that the component is an actor with the exports of the world.
        ActorPre::new(pre.clone())
            .unwrap_or_else(|err| panic!("{} is not an actor: {err:#}", path.display()));
        BareComponent { pre }
    }
}

/// A compiled and linked component, ready to instantiate.
pub struct BareComponent {
    pre: InstancePre<BareState>,
}

impl BareComponent {
    /// A fresh instance in a store of its own, whose `self-id` is `id`.
    ///
    /// # Panics
    ///
    /// If instantiation fails.
    pub async fn instantiate(&self, id: &str) -> BareInstance {
        let mut store = Store::new(self.pre.engine(), BareState::new(id));
        // No ticker advances this engine's epoch, so the deadline is never reached.
        store.set_epoch_deadline(u64::MAX);
        let instance = self
            .pre
            .instantiate_async(&mut store)
            .await
            .unwrap_or_else(|err| panic!("instantiating {id}: {err:#}"));
        let mut export = |name: &str| {
            instance
                .get_func(&mut store, name)
                .unwrap_or_else(|| panic!("{id} has no export {name}"))
        };
        let handle_message = export("handle-message");
        let handle_request = export("handle-request");
        handle_message
            .typed::<(&str, &[u8]), (Result<(), ComponentError>,)>(&store)
            .expect("handle-message has the world's type");
        handle_request
            .typed::<(&str, &[u8]), (Result<Vec<u8>, ComponentError>,)>(&store)
            .expect("handle-request has the world's type");
        BareInstance {
            store,
            handle_message,
            handle_request,
        }
    }
}

/// One instance and its store, called directly.
pub struct BareInstance {
    store: Store<BareState>,
    handle_message: Func,
    handle_request: Func,
}

impl BareInstance {
    /// Make `peer` the instance this one's `send-message` and `send-request` call, inline.
    pub fn connect(&mut self, peer: BareInstance) {
        self.store.data_mut().peer = Some(Box::new(peer));
    }

    /// Call the guest's `handle-message`.
    ///
    /// # Panics
    ///
    /// If the guest traps: a floor that traps has nothing to measure.
    pub async fn handle_message(
        &mut self,
        sender: &str,
        message: &[u8],
    ) -> Result<(), ComponentError> {
        // SAFETY: the export's type was checked against this signature at instantiation.
        let func: Handler<'_, ()> = unsafe { TypedFunc::new_unchecked(self.handle_message) };
        let (answer,) = func
            .call_async(&mut self.store, (sender, message))
            .await
            .unwrap_or_else(|err| panic!("handle-message trapped: {err:#}"));
        answer
    }

    /// Time `iters` calls of `handle-message` with `message`: the wasm floor every
    /// benchmark compares with. The guest must accept every message (echo does).
    pub async fn time_handle_messages(&mut self, message: &[u8], iters: u64) -> Duration {
        let started = Instant::now();
        for _ in 0..iters {
            let answer = self
                .handle_message("host", std::hint::black_box(message))
                .await;
            answer.expect("the floor's guest accepts every message");
        }
        started.elapsed()
    }

    /// Call the guest's `handle-request` and return its reply.
    ///
    /// # Panics
    ///
    /// If the guest traps.
    pub async fn handle_request(
        &mut self,
        sender: &str,
        request: &[u8],
    ) -> Result<Vec<u8>, ComponentError> {
        // SAFETY: the export's type was checked against this signature at instantiation.
        let func: Handler<'_, Vec<u8>> = unsafe { TypedFunc::new_unchecked(self.handle_request) };
        let (answer,) = func
            .call_async(&mut self.store, (sender, request))
            .await
            .unwrap_or_else(|err| panic!("handle-request trapped: {err:#}"));
        answer
    }
}

/// The store data of a bare instance: WASI with nothing granted, its id, and its peer.
pub struct BareState {
    id: String,
    wasi: WasiCtx,
    table: ResourceTable,
    peer: Option<Box<BareInstance>>,
}

impl BareState {
    fn new(id: &str) -> BareState {
        BareState {
            id: id.to_string(),
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            peer: None,
        }
    }
}

impl WasiView for BareState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for BareState {}

/// No guest on the bare path schedules timers; the stub refuses them as a host without
/// timers would.
impl timers::Host for BareState {
    fn schedule(
        &mut self,
        _name: String,
        _start: timers::Start,
        _period_nanos: Option<u64>,
        _payload: Vec<u8>,
    ) -> Result<(), timers::TimerError> {
        Err(timers::TimerError::Disabled)
    }

    fn cancel(&mut self, _name: String) -> bool {
        false
    }

    fn missed_ticks(&mut self) -> u64 {
        0
    }
}

impl messaging::Host for BareState {
    fn self_id(&mut self) -> String {
        self.id.clone()
    }

    async fn send_message(
        &mut self,
        _target: String,
        message: Vec<u8>,
    ) -> Result<(), MessagingError> {
        match &mut self.peer {
            Some(peer) => peer
                .handle_message(&self.id, &message)
                .await
                .map_err(MessagingError::HandlerFailed),
            None => Ok(()),
        }
    }

    async fn send_request(
        &mut self,
        target: String,
        request: Vec<u8>,
        _timeout_ms: u32,
    ) -> Result<Vec<u8>, MessagingError> {
        match &mut self.peer {
            Some(peer) => peer
                .handle_request(&self.id, &request)
                .await
                .map_err(MessagingError::HandlerFailed),
            None => Err(MessagingError::TargetNotFound(target)),
        }
    }

    fn publish(&mut self, _topic: String, _message: Vec<u8>) -> Result<u32, MessagingError> {
        Ok(0)
    }
}

impl host_services::Host for BareState {
    fn current_time_millis(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn log(&mut self, _level: LogLevel, _message: String) {}
}
