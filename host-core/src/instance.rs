//! Instances: one store per actor, kept across calls, with its limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Func, TypedFunc};
use wasmtime::{CallHook, Store, Trap, UpdateDeadline, WasmBacktrace};

use crate::component::Component;
use crate::error::{Error, Result, format_bytes};
use crate::host::{HostState, MemoryCapExceeded, Messaging, NoMessaging};
use crate::{ComponentError, ComponentId};

/// Per-call deadline when none is given: long enough for any reasonable handler, short
/// enough that a stuck one is noticed.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// How an instance is identified, limited and connected.
///
/// ```
/// use std::time::Duration;
/// use courier_host_core::InstanceOptions;
///
/// let options = InstanceOptions::new("orders/billing")
///     .memory_limit(16 << 20)
///     .deadline(Duration::from_millis(100));
/// assert_eq!(&*options.id, "orders/billing");
/// ```
#[derive(Clone)]
pub struct InstanceOptions {
    /// The id the instance answers to and that its messages carry as their sender.
    pub id: ComponentId,
    /// Largest linear memory, in bytes; `None` means the engine's maximum.
    pub memory_limit: Option<usize>,
    /// How long one call (and instantiation) may run before it is interrupted. It counts
    /// the time the guest runs and the time it is parked in a host call, not time spent
    /// waiting for a thread while other actors run, so a busy host does not fail handlers
    /// that did nothing wrong.
    pub deadline: Duration,
    /// Fuel for each call, if the engine meters fuel.
    pub fuel: Option<u64>,
    /// What the guest's `messaging` imports reach.
    pub messaging: Arc<dyn Messaging>,
}

impl InstanceOptions {
    /// Options with the given id, the engine's memory maximum, [`DEFAULT_DEADLINE`], no fuel
    /// budget and [`NoMessaging`].
    pub fn new(id: impl Into<ComponentId>) -> Self {
        InstanceOptions {
            id: id.into(),
            memory_limit: None,
            deadline: DEFAULT_DEADLINE,
            fuel: None,
            messaging: Arc::new(NoMessaging),
        }
    }

    /// Cap the instance's linear memory at `bytes`.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Interrupt any call that runs longer than `deadline`.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Give each call `fuel` units; requires an engine built with fuel metering.
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.fuel = Some(fuel);
        self
    }

    /// Route the guest's `messaging` imports to `messaging`.
    pub fn messaging(mut self, messaging: Arc<dyn Messaging>) -> Self {
        self.messaging = messaging;
        self
    }
}

/// A live instance of a component: its store, its exports and its limits.
///
/// Calls run one at a time (`&mut self`). After a trap the instance is poisoned: every
/// later call returns [`Error::Poisoned`] and the owner should instantiate a fresh one.
pub struct Instance {
    store: Store<HostState>,
    handle_message: Func,
    handle_request: Func,
    deadline: Duration,
    /// The deadline in epoch ticks of running time.
    ticks: u64,
    /// Transitions into and out of host calls: odd while the guest is in one.
    host_calls: Arc<AtomicU64>,
    fuel: Option<u64>,
    poisoned: Option<String>,
}

/// Both exports take `(sender, payload)` and return the guest's answer or its error.
type Handler<'a, T> = TypedFunc<(&'a str, &'a [u8]), (std::result::Result<T, ComponentError>,)>;

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
            return Err(Error::Config {
                component: id.to_string(),
                reason: format!(
                    "memory limit of {} exceeds the engine's maximum of {}",
                    format_bytes(memory_limit),
                    format_bytes(max_memory)
                ),
            });
        }
        if options.fuel.is_some() && !engine.config().fuel {
            return Err(Error::Config {
                component: id.to_string(),
                reason: "a fuel budget needs an engine built with EngineConfig::fuel(true)".into(),
            });
        }

        // With metering on, every store burns fuel: one without a budget gets all there is.
        let fuel = engine
            .config()
            .fuel
            .then(|| options.fuel.unwrap_or(u64::MAX));
        let state = HostState::new(id.clone(), memory_limit, options.messaging);
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
        store.call_hook(move |_, hook| {
            if matches!(hook, CallHook::CallingHost | CallHook::ReturningFromHost) {
                transitions.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        let ticks = ticks_in(options.deadline, engine.config().epoch_tick);

        // Instantiation runs guest code (constructors, WASI set-up), so it has a deadline too.
        arm(&mut store, options.deadline, ticks, fuel);
        let pre = &self.inner.pre;
        let instantiated = bounded(
            options.deadline,
            &host_calls,
            pre.instantiate_async(&mut store),
        )
        .await;
        store.data_mut().call_deadline = None;
        let instance = match instantiated {
            Some(Ok(instance)) => instance,
            Some(Err(err)) if is_guest_failure(&store, &err) => {
                return Err(classify(&store, err, options.deadline, fuel));
            }
            Some(Err(err)) => {
                return Err(Error::Instantiate {
                    component: id.to_string(),
                    reason: format!("{err:#}"),
                });
            }
            None => return Err(parked_past_deadline(&id, options.deadline)),
        };
        let func = |store: &mut Store<HostState>, index| {
            instance
                .get_func(store, index)
                .expect("the export was found when the component was loaded")
        };
        let handle_message = func(&mut store, &self.inner.handle_message);
        let handle_request = func(&mut store, &self.inner.handle_request);
        Ok(Instance {
            store,
            handle_message,
            handle_request,
            deadline: options.deadline,
            ticks,
            host_calls,
            fuel,
            poisoned: None,
        })
    }
}

impl Instance {
    /// The id this instance was given.
    pub fn id(&self) -> &ComponentId {
        &self.store.data().id
    }

    /// Whether an earlier trap has made this instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Deliver a fire-and-forget message to the guest's `handle-message`.
    ///
    /// `sender` is the id the guest sees; the host, not the guest, decides it.
    pub async fn call_handle_message(&mut self, sender: &str, message: &[u8]) -> CallResult<()> {
        self.check_usable()?;
        arm(&mut self.store, self.deadline, self.ticks, self.fuel);
        // SAFETY: the export's type was checked against exactly this signature at load time.
        let func: Handler<'_, ()> = unsafe { TypedFunc::new_unchecked(self.handle_message) };
        let call = func.call_async(&mut self.store, (sender, message));
        let outcome = bounded(self.deadline, &self.host_calls, call)
            .await
            .map(|r| r.map(|(answer,)| answer));
        self.finish(outcome)
    }

    /// Deliver a request to the guest's `handle-request` and return its reply.
    pub async fn call_handle_request(
        &mut self,
        sender: &str,
        request: &[u8],
    ) -> CallResult<Vec<u8>> {
        self.check_usable()?;
        arm(&mut self.store, self.deadline, self.ticks, self.fuel);
        // SAFETY: the export's type was checked against exactly this signature at load time.
        let func: Handler<'_, Vec<u8>> = unsafe { TypedFunc::new_unchecked(self.handle_request) };
        let call = func.call_async(&mut self.store, (sender, request));
        let outcome = bounded(self.deadline, &self.host_calls, call)
            .await
            .map(|r| r.map(|(answer,)| answer));
        self.finish(outcome)
    }

    fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            Some(cause) => Err(Error::Poisoned {
                component: self.id().to_string(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
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
fn arm(store: &mut Store<HostState>, deadline: Duration, ticks: u64, fuel: Option<u64>) {
    let state = store.data_mut();
    state.call_deadline = Some(Instant::now() + deadline);
    state.ticks_left = ticks;
    state.deadline_hit = false;
    state.stderr.begin_call();
    store.set_epoch_deadline(1);
    if let Some(fuel) = fuel {
        // Fuel metering was checked at instantiation; this cannot fail.
        let _ = store.set_fuel(fuel);
    }
}

/// Run `call`, giving up on it only if it stays parked in one host call past the deadline.
/// `None` means it was abandoned.
///
/// Running wasm is the epoch's business; this catches what the epoch cannot see, a guest
/// waiting in a host import (a WASI sleep, say). Once the deadline has passed in wall time,
/// the call is checked every [`PARKED_GRACE`]: if it sat in the same host call through a
/// whole grace period, it is abandoned. A guest that is merely waiting for a thread is left
/// alone, so a busy host does not fail it.
async fn bounded<F: std::future::Future>(
    deadline: Duration,
    host_calls: &AtomicU64,
    call: F,
) -> Option<F::Output> {
    tokio::pin!(call);
    let mut wait = deadline;
    let mut parked_in = None;
    loop {
        match tokio::time::timeout(wait, &mut call).await {
            Ok(output) => return Some(output),
            Err(_) => {
                let transitions = host_calls.load(Ordering::Relaxed);
                let in_host = transitions % 2 == 1;
                if in_host && parked_in == Some(transitions) {
                    return None;
                }
                parked_in = in_host.then_some(transitions);
                wait = PARKED_GRACE;
            }
        }
    }
}

fn parked_past_deadline(id: &ComponentId, deadline: Duration) -> Error {
    Error::DeadlineExceeded {
        component: id.to_string(),
        deadline,
        backtrace: None,
    }
}

fn is_guest_failure(store: &Store<HostState>, err: &wasmtime::Error) -> bool {
    store.data().deadline_hit
        || err.downcast_ref::<Trap>().is_some()
        || err.downcast_ref::<MemoryCapExceeded>().is_some()
        || err.downcast_ref::<wasmtime_wasi::I32Exit>().is_some()
}

/// Turn a wasmtime error from a call into the error that says what the guest did.
fn classify(
    store: &Store<HostState>,
    err: wasmtime::Error,
    deadline: Duration,
    fuel: Option<u64>,
) -> Error {
    let state = store.data();
    let component = state.id.to_string();
    let backtrace = err.downcast_ref::<WasmBacktrace>().map(|bt| bt.to_string());
    if state.deadline_hit {
        return Error::DeadlineExceeded {
            component,
            deadline,
            backtrace,
        };
    }
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Error::Exited {
            component,
            code: exit.0,
        };
    }
    if err.downcast_ref::<MemoryCapExceeded>().is_some() {
        return Error::MemoryLimitExceeded {
            component,
            limit: state.limiter.limit,
            backtrace,
        };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Error::FuelExhausted {
            component,
            fuel: fuel.unwrap_or_default(),
            backtrace,
        },
        Some(Trap::UnreachableCodeReached) => match panic_message(&state.stderr.call_text()) {
            Some(message) => Error::Panicked {
                component,
                message,
                backtrace,
            },
            None => Error::Trapped {
                component,
                trap: Trap::UnreachableCodeReached.to_string(),
                backtrace,
            },
        },
        Some(trap) => Error::Trapped {
            component,
            trap: trap.to_string(),
            backtrace,
        },
        None => Error::Trapped {
            component,
            trap: format!("{err:#}"),
            backtrace,
        },
    }
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
