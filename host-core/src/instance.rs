//! Instances: one store per actor, kept across calls, with its limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::any::Any;

use wasmtime::{CallHook, Store, Trap, UpdateDeadline, WasmBacktrace};

use crate::bindings::Actor;
use crate::component::Component;
use crate::error::{Error, ErrorKind, Result};
use crate::host::{Extensions, HostState, MemoryCapExceeded, Messaging, NoMessaging};
use crate::timers::{NoTimers, Timers};
use crate::trace::TraceContext;
use crate::units::format_bytes;
use crate::{ComponentError, ComponentId};

/// Per-call deadline when none is given: long enough for any reasonable handler, short
/// enough that a stuck one is noticed.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// Largest state `save-state` may return by default: as much as a mailbox holds by default,
/// far more than the state of a component that keeps its data elsewhere, and small enough
/// that a host keeping one checkpoint per component can count them.
pub const DEFAULT_MAX_STATE_BYTES: usize = 64 << 20;

/// How an instance is identified, limited and connected: a builder whose defaults are the
/// engine's memory maximum, [`DEFAULT_DEADLINE`], no fuel budget,
/// [`DEFAULT_MAX_STATE_BYTES`], [`NoMessaging`] and [`NoTimers`].
///
/// ```
/// use std::time::Duration;
/// use courier_host_core::InstanceOptions;
///
/// let options = InstanceOptions::new("orders/billing")
///     .memory_limit(16 << 20)
///     .deadline(Duration::from_millis(100));
/// assert_eq!(&**options.id(), "orders/billing");
/// assert_eq!(options.get_deadline(), Duration::from_millis(100));
/// ```
#[derive(Clone)]
pub struct InstanceOptions {
    pub(crate) id: ComponentId,
    pub(crate) memory_limit: Option<usize>,
    pub(crate) deadline: Duration,
    pub(crate) fuel: Option<u64>,
    pub(crate) max_state_bytes: usize,
    pub(crate) messaging: Arc<dyn Messaging>,
    pub(crate) timers: Arc<dyn Timers>,
    pub(crate) extensions: Extensions,
}

impl InstanceOptions {
    /// Options for an instance with the id `id`: the id it answers to and that its
    /// messages carry as their sender.
    pub fn new(id: impl Into<ComponentId>) -> Self {
        InstanceOptions {
            id: id.into(),
            memory_limit: None,
            deadline: DEFAULT_DEADLINE,
            fuel: None,
            max_state_bytes: DEFAULT_MAX_STATE_BYTES,
            messaging: Arc::new(NoMessaging),
            timers: Arc::new(NoTimers),
            extensions: Extensions::default(),
        }
    }

    /// Cap the instance's linear memory at `bytes`; without it the engine's maximum
    /// ([`EngineConfig::max_memory_bytes`](crate::EngineConfig::max_memory_bytes)) applies.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Interrupt any call (and the instantiation) that runs longer than `deadline`. It
    /// counts the time the guest runs and the time it is parked in a host call, not time
    /// spent waiting for a thread while other actors run, so a busy host does not fail
    /// handlers that did nothing wrong.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Give each call `fuel` units; requires an engine built with fuel metering.
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.fuel = Some(fuel);
        self
    }

    /// Refuse a state of more than `bytes` from the guest's `save-state`
    /// ([`DEFAULT_MAX_STATE_BYTES`] by default): [`Instance::save_state`] fails with
    /// [`ErrorKind::StateTooLarge`] and the bytes are dropped, not kept. wasmtime copies a
    /// returned list out of the guest's memory before the host sees its length, so that one
    /// copy is bounded by the memory cap, not by this.
    pub fn max_state_bytes(mut self, bytes: usize) -> Self {
        self.max_state_bytes = bytes;
        self
    }

    /// Route the guest's `messaging` imports to `messaging`.
    pub fn messaging(mut self, messaging: Arc<dyn Messaging>) -> Self {
        self.messaging = messaging;
        self
    }

    /// Serve the guest's `timers` imports with `timers` ([`NoTimers`], which refuses every
    /// timer, by default). Instances made with these options share it, so a component's
    /// timers outlive any one of its instances.
    pub fn timers(mut self, timers: Arc<dyn Timers>) -> Self {
        self.timers = timers;
        self
    }

    /// Give the embedder's host interfaces `value`, which they read through
    /// [`HostState::extension`](crate::HostState::extension). Every instance made with
    /// these options shares the one value (an instance that needs state of its own can key
    /// it by its id); a second value of the same type replaces the first.
    pub fn extension<T: Any + Send + Sync>(mut self, value: Arc<T>) -> Self {
        self.extensions.insert(value);
        self
    }

    /// The id the instance answers to.
    pub fn id(&self) -> &ComponentId {
        &self.id
    }

    /// The memory cap, if one was set.
    pub fn get_memory_limit(&self) -> Option<usize> {
        self.memory_limit
    }

    /// The per-call deadline.
    pub fn get_deadline(&self) -> Duration {
        self.deadline
    }

    /// The per-call fuel budget, if one was set.
    pub fn get_fuel(&self) -> Option<u64> {
        self.fuel
    }

    /// The largest state `save-state` may return.
    pub fn get_max_state_bytes(&self) -> usize {
        self.max_state_bytes
    }
}

impl std::fmt::Debug for InstanceOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceOptions")
            .field("id", &self.id)
            .field("memory_limit", &self.memory_limit)
            .field("deadline", &self.deadline)
            .field("fuel", &self.fuel)
            .field("max_state_bytes", &self.max_state_bytes)
            .finish_non_exhaustive()
    }
}

/// A live instance of a component: its store, its exports and its limits.
///
/// Calls run one at a time (`&mut self`). After a trap the instance is poisoned: every
/// later call returns an error of kind [`ErrorKind::Poisoned`] and the owner should
/// instantiate a fresh one.
pub struct Instance {
    store: Store<HostState>,
    /// The typed exports, looked up once at instantiation.
    exports: Actor,
    /// The instance itself, for the exports outside world `actor` (`state`).
    wasm: wasmtime::component::Instance,
    /// The component it was made from.
    component: Component,
    /// The sender of the current call. The generated exports take the WIT's
    /// `component-id` as `&String`; refilling one buffer instead of allocating a `String`
    /// per call keeps a call free of allocation.
    sender: String,
    deadline: Duration,
    /// The deadline in epoch ticks of running time.
    ticks: u64,
    /// Transitions into and out of host calls: odd while the guest is in one.
    host_calls: Arc<AtomicU64>,
    fuel: Option<u64>,
    max_state_bytes: usize,
    poisoned: Option<String>,
}

/// The result of a call: the guest's own answer, or a host-side failure.
pub type CallResult<T> = Result<std::result::Result<T, ComponentError>>;

/// How much longer than the deadline a call may stay parked in a host call before the host
/// abandons it. Running wasm is stopped by the epoch at the deadline itself; this only
/// catches a guest waiting in a host import (a WASI sleep, say), where no epoch check runs.
const PARKED_GRACE: Duration = Duration::from_millis(50);

/// The number of epoch ticks in `deadline`, at least one.
fn ticks_in(deadline: Duration, tick: Duration) -> u64 {
    let ticks = deadline.as_nanos() / tick.as_nanos().max(1);
    u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
}

impl Component {
    /// Create a fresh instance with its own store.
    pub async fn instantiate(&self, options: InstanceOptions) -> Result<Instance> {
        let engine = &self.inner.engine;
        let max_memory = engine.config().max_memory_bytes;
        let memory_limit = options.memory_limit.unwrap_or(max_memory);
        let id = options.id.clone();
        if memory_limit > max_memory {
            let reason = format!(
                "memory limit of {} exceeds the engine's maximum of {}",
                format_bytes(memory_limit as u64),
                format_bytes(max_memory as u64)
            );
            return Err(Error::new(&*id, ErrorKind::Config { reason }));
        }
        if options.fuel.is_some() && !engine.config().fuel {
            let reason = "a fuel budget needs an engine built with EngineConfig::fuel(true)".into();
            return Err(Error::new(&*id, ErrorKind::Config { reason }));
        }

        // With metering on, every store burns fuel: one without a budget gets all there is.
        let fuel = engine
            .config()
            .fuel
            .then(|| options.fuel.unwrap_or(u64::MAX));
        let state = HostState::new(
            id.clone(),
            memory_limit,
            options.messaging,
            options.timers,
            options.extensions,
        );
        let mut store = Store::new(engine.wasmtime(), state);
        store.limiter(|state| &mut state.limiter);
        // The callback runs once per tick of running wasm (a guest that was waiting for a
        // thread finds the epoch moved on and is called once, not once per missed tick), so
        // counting calls measures running time.
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            if state.ticks_left <= 1 {
                state.deadline_hit = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            state.ticks_left -= 1;
            // Give the thread back to the scheduler at every tick so a long handler cannot
            // starve the other actors sharing it.
            Ok(UpdateDeadline::Yield(1))
        });
        let host_calls = Arc::new(AtomicU64::new(0));
        let transitions = host_calls.clone();
        let clock = engine.inner.ticks.clone();
        // Time parked in a host call (a WASI sleep, a request waiting for its reply) runs no
        // epoch checks, so it is counted here, in ticks of the engine's clock, against the
        // same budget: a guest that splits its waiting into many short sleeps still meets
        // its deadline once the time adds up.
        store.call_hook(move |mut ctx, hook| {
            match hook {
                CallHook::CallingHost => {
                    transitions.fetch_add(1, Ordering::Relaxed);
                    ctx.data_mut().entered_host_at = clock.load(Ordering::Relaxed);
                }
                CallHook::ReturningFromHost => {
                    transitions.fetch_add(1, Ordering::Relaxed);
                    let state = ctx.data_mut();
                    let parked = clock.load(Ordering::Relaxed) - state.entered_host_at;
                    state.ticks_left = state.ticks_left.saturating_sub(parked);
                }
                _ => {}
            }
            Ok(())
        });
        let ticks = ticks_in(options.deadline, engine.config().epoch_tick);

        // Instantiation runs guest code (constructors, WASI set-up), so it has a deadline too.
        let ends = arm(&mut store, options.deadline, ticks, fuel);
        let (pre, indices) = (&self.inner.pre, &self.inner.indices);
        let instantiated = {
            let instantiating = std::pin::pin!(async {
                let wasm = pre.instance_pre().instantiate_async(&mut store).await?;
                let exports = indices.load(&mut store, &wasm)?;
                Ok::<_, wasmtime::Error>((wasm, exports))
            });
            bounded(ends, &host_calls, instantiating).await
        };
        store.data_mut().call_deadline = None;
        let (wasm, exports) = match instantiated {
            Some(Ok(instantiated)) => instantiated,
            Some(Err(err)) if is_guest_failure(&store, &err) => {
                return Err(classify(&store, err, options.deadline, fuel));
            }
            Some(Err(err)) => return Err(Error::new(&*id, ErrorKind::Instantiate).caused_by(err)),
            None => return Err(parked_past_deadline(&id, options.deadline)),
        };
        Ok(Instance {
            store,
            exports,
            wasm,
            component: self.clone(),
            sender: String::new(),
            deadline: options.deadline,
            ticks,
            host_calls,
            fuel,
            max_state_bytes: options.max_state_bytes,
            poisoned: None,
        })
    }
}

impl Instance {
    /// The id this instance was given.
    pub fn id(&self) -> &ComponentId {
        &self.store.data().id
    }

    /// Make the calls from now on part of the trace `trace` names (`None`: of no trace).
    /// `trace` is the context of the handler call itself (its own span id): what the guest
    /// sends during the call carries it, through [`Messaging`]'s `trace`, and its log lines
    /// carry its trace id. A host that never traces never pays for it: setting `None` over
    /// `None` touches nothing else.
    pub fn set_trace(&mut self, trace: Option<TraceContext>) {
        let state = self.store.data_mut();
        if state.trace.is_none() && trace.is_none() {
            return;
        }
        state.trace = trace;
        state.log.set_trace(trace.map(|trace| trace.trace_id()));
    }

    /// The trace of the calls, as [`set_trace`](Self::set_trace) last set it.
    pub fn trace(&self) -> Option<TraceContext> {
        self.store.data().trace
    }

    /// Whether an earlier trap has made this instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Deliver a fire-and-forget message to the guest's `handle-message`.
    ///
    /// `sender` is the id the guest sees; the host, not the guest, decides it.
    pub async fn call_handle_message(&mut self, sender: &str, message: &[u8]) -> CallResult<()> {
        let ends = self.begin_call(sender)?;
        let outcome = {
            let call = std::pin::pin!(self.exports.call_handle_message(
                &mut self.store,
                &self.sender,
                message
            ));
            bounded(ends, &self.host_calls, call).await
        };
        self.finish(outcome)
    }

    /// Deliver a request to the guest's `handle-request` and return its reply.
    pub async fn call_handle_request(
        &mut self,
        sender: &str,
        request: &[u8],
    ) -> CallResult<Vec<u8>> {
        let ends = self.begin_call(sender)?;
        let outcome = {
            let call = std::pin::pin!(self.exports.call_handle_request(
                &mut self.store,
                &self.sender,
                request
            ));
            bounded(ends, &self.host_calls, call).await
        };
        self.finish(outcome)
    }

    /// Whether this instance's component exports `state` (world `stateful-actor`).
    pub fn keeps_state(&self) -> bool {
        self.component.keeps_state()
    }

    /// The instance's state as bytes, from the guest's `save-state`, for another instance
    /// (a new version, say) to [`load_state`](Self::load_state). Held to the call deadline
    /// like a handler; a trap poisons the instance. A state over
    /// [`InstanceOptions::max_state_bytes`] is an error of kind
    /// [`ErrorKind::StateTooLarge`] that leaves the instance as it was. A component without
    /// `state` has none to give: an error of kind [`ErrorKind::Config`].
    pub async fn save_state(&mut self) -> Result<Vec<u8>> {
        let func = self.state_func::<(), (Vec<u8>,)>(|state| &state.save, "save-state")?;
        let ends = self.begin_call("")?;
        let outcome = {
            let call = std::pin::pin!(func.call_async(&mut self.store, ()));
            bounded(ends, &self.host_calls, call).await
        };
        // `save-state` cannot refuse: its only failure is a trap.
        let outcome = outcome.map(|result| result.map(|(state,)| Ok::<_, ComponentError>(state)));
        let state = self
            .finish(outcome)
            .map(|saved| saved.unwrap_or_default())?;
        if state.len() > self.max_state_bytes {
            let kind = ErrorKind::StateTooLarge {
                len: state.len(),
                limit: self.max_state_bytes,
            };
            return Err(Error::new(&**self.id(), kind));
        }
        Ok(state)
    }

    /// Take over `state`, which [`save_state`](Self::save_state) of this component or
    /// another version of it wrote, through the guest's `load-state`: its refusal (a state
    /// it cannot read) is the guest's answer; a trap poisons the instance.
    pub async fn load_state(&mut self, state: &[u8]) -> CallResult<()> {
        let func = self.state_func::<(&[u8],), (std::result::Result<(), ComponentError>,)>(
            |exports| &exports.load,
            "load-state",
        )?;
        let ends = self.begin_call("")?;
        let outcome = {
            let call = std::pin::pin!(func.call_async(&mut self.store, (state,)));
            bounded(ends, &self.host_calls, call).await
        };
        self.finish(outcome.map(|result| result.map(|(answer,)| answer)))
    }

    /// The typed `state` function `which` names, or an error naming `name` if the
    /// component has no `state` interface or its function has another type.
    fn state_func<P, R>(
        &mut self,
        which: fn(&crate::component::StateExports) -> &wasmtime::component::ComponentExportIndex,
        name: &str,
    ) -> Result<wasmtime::component::TypedFunc<P, R>>
    where
        P: wasmtime::component::ComponentNamedList + wasmtime::component::Lower + Send + Sync,
        R: wasmtime::component::ComponentNamedList + wasmtime::component::Lift + Send + Sync,
    {
        let id = self.id().clone();
        let no_state = |reason: String| Error::new(&*id, ErrorKind::Config { reason });
        let Some(exports) = &self.component.inner.state else {
            return Err(no_state(format!(
                "it does not export `{name}`: its component is not of world `stateful-actor`"
            )));
        };
        let index = *which(exports);
        self.wasm
            .get_typed_func::<P, R>(&mut self.store, index)
            .map_err(|err| no_state(format!("its `{name}` has the wrong type: {err}")))
    }

    /// Refuse a call to a poisoned instance; otherwise arm the limits of a fresh call and
    /// take `sender` as the id the guest will see.
    fn begin_call(&mut self, sender: &str) -> Result<Instant> {
        if let Some(cause) = &self.poisoned {
            let cause = cause.clone();
            return Err(Error::new(&**self.id(), ErrorKind::Poisoned { cause }));
        }
        let ends = arm(&mut self.store, self.deadline, self.ticks, self.fuel);
        self.sender.clear();
        self.sender.push_str(sender);
        Ok(ends)
    }

    fn finish<T>(
        &mut self,
        outcome: Option<wasmtime::Result<std::result::Result<T, ComponentError>>>,
    ) -> CallResult<T> {
        self.store.data_mut().call_deadline = None;
        let err = match outcome {
            Some(Ok(answer)) => return Ok(answer),
            Some(Err(err)) => classify(&self.store, err, self.deadline, self.fuel),
            None => parked_past_deadline(self.id(), self.deadline),
        };
        // Whatever the failure, the guest stopped part-way through: its memory may hold
        // half-updated state, so it must not run again.
        self.poisoned = Some(
            err.to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        );
        Err(err)
    }
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("id", self.id())
            .field("deadline", &self.deadline)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// Prepare the store for a call: a fresh deadline, fresh fuel, no leftover stderr.
fn arm(store: &mut Store<HostState>, deadline: Duration, ticks: u64, fuel: Option<u64>) -> Instant {
    let state = store.data_mut();
    let ends = Instant::now() + deadline;
    state.call_deadline = Some(ends);
    state.ticks_left = ticks;
    state.deadline_hit = false;
    state.stderr.begin_call();
    store.set_epoch_deadline(1);
    if let Some(fuel) = fuel {
        // Fuel metering was checked at instantiation; this cannot fail.
        let _ = store.set_fuel(fuel);
    }
    ends
}

/// Run `call`, giving up on it only if it stays parked in one host call past the deadline.
/// `None` means it was abandoned.
///
/// Running wasm is the epoch's business; this catches what the epoch cannot see, a guest
/// waiting in a host import (a WASI sleep, say). Once the deadline has passed in wall time,
/// the call is checked every [`PARKED_GRACE`]: if it sat in the same host call through a
/// whole grace period, it is abandoned. A guest that is merely waiting for a thread is left
/// alone, so a busy host does not fail it.
///
/// The call is polled once per wake-up, and before any timer exists: one that returns
/// without waiting (the common case) costs no timer, and no clone of the runtime's handle,
/// which every timer takes and every worker would contend on. One that yields (at an epoch
/// tick, say) is not polled again until it is woken, so its yield lets others run.
async fn bounded<F: std::future::Future>(
    ends: Instant,
    host_calls: &AtomicU64,
    mut call: std::pin::Pin<&mut F>,
) -> Option<F::Output> {
    let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut parked_in = None;
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(output) = call.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(output));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(ends.into())));
        while timer.as_mut().poll(cx).is_ready() {
            let transitions = host_calls.load(Ordering::Relaxed);
            let in_host = transitions % 2 == 1;
            if in_host && parked_in == Some(transitions) {
                return std::task::Poll::Ready(None);
            }
            parked_in = in_host.then_some(transitions);
            timer.as_mut().reset((Instant::now() + PARKED_GRACE).into());
        }
        std::task::Poll::Pending
    })
    .await
}

fn parked_past_deadline(id: &ComponentId, deadline: Duration) -> Error {
    let kind = ErrorKind::DeadlineExceeded {
        deadline,
        backtrace: None,
    };
    Error::new(&**id, kind)
}

fn is_guest_failure(store: &Store<HostState>, err: &wasmtime::Error) -> bool {
    store.data().deadline_hit
        || err.downcast_ref::<Trap>().is_some()
        || err.downcast_ref::<MemoryCapExceeded>().is_some()
        || err.downcast_ref::<wasmtime_wasi::I32Exit>().is_some()
}

/// Turn a wasmtime error from a call into the error that says what the guest did, keeping
/// wasmtime's error (the trap and its backtrace) as the cause.
fn classify(
    store: &Store<HostState>,
    err: wasmtime::Error,
    deadline: Duration,
    fuel: Option<u64>,
) -> Error {
    let state = store.data();
    let backtrace = err.downcast_ref::<WasmBacktrace>().map(|bt| bt.to_string());
    let kind = if state.deadline_hit {
        ErrorKind::DeadlineExceeded {
            deadline,
            backtrace,
        }
    } else if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        ErrorKind::Exited { code: exit.0 }
    } else if err.downcast_ref::<MemoryCapExceeded>().is_some() {
        ErrorKind::MemoryLimitExceeded {
            limit: state.limiter.limit,
            backtrace,
        }
    } else {
        match err.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => ErrorKind::FuelExhausted {
                fuel: fuel.unwrap_or_default(),
                backtrace,
            },
            Some(Trap::UnreachableCodeReached) => match panic_message(&state.stderr.call_text()) {
                Some(message) => ErrorKind::Panicked { message, backtrace },
                None => ErrorKind::Trapped {
                    trap: Trap::UnreachableCodeReached.to_string(),
                    backtrace,
                },
            },
            Some(trap) => ErrorKind::Trapped {
                trap: trap.to_string(),
                backtrace,
            },
            None => ErrorKind::Trapped {
                trap: format!("{err:#}"),
                backtrace,
            },
        }
    };
    Error::new(&*state.id, kind).caused_by(err)
}

/// The message of a Rust panic as the standard panic hook prints it:
/// `thread '<unnamed>' panicked at src/lib.rs:3:5:` then the message, then a `note:` line.
fn panic_message(stderr: &str) -> Option<String> {
    let after = &stderr[stderr.find("panicked at ")?..];
    let message = after.split_once('\n').map_or("", |(_, rest)| rest);
    let message = message
        .split("\nnote: run with `RUST_BACKTRACE")
        .next()
        .unwrap_or(message);
    Some(message.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::panic_message;

    #[test]
    fn the_panic_message_is_taken_from_the_standard_hook_output() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:12:9:\npanicker refuses: boom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("panicker refuses: boom")
        );
    }

    #[test]
    fn stderr_without_a_panic_has_no_panic_message() {
        assert_eq!(panic_message("just a warning\n"), None);
    }
}
