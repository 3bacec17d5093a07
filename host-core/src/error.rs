//! The one error type of host-core.
//!
//! An [`Error`] says which component it concerns (once, not in every variant), what went
//! wrong ([`ErrorKind`]), and keeps the error of the library that reported it (wasmtime's,
//! or the operating system's) reachable through [`std::error::Error::source`], so an
//! integrator can still downcast to a [`wasmtime::Trap`] or an [`std::io::Error`].

use std::path::PathBuf;
use std::time::Duration;

use crate::units::format_bytes;

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Something went wrong while building the engine, or loading, instantiating or calling a
/// component.
///
/// Its message names the component and the cause, and reads whole when printed alone:
/// where another library reported the cause, its text is part of the message, and the
/// cause itself is [`source`](std::error::Error::source).
///
/// ```
/// use courier_host_core::{Engine, EngineConfig, ErrorKind};
///
/// let engine = Engine::new(EngineConfig::default().max_instances(1)).unwrap();
/// let err = engine.load_component("broken", b"not wasm").unwrap_err();
/// assert_eq!(err.component(), Some("broken"));
/// assert!(matches!(err.kind(), ErrorKind::InvalidComponent));
/// assert!(err.to_string().starts_with("component `broken` is not a valid WebAssembly component: "));
/// assert!(std::error::Error::source(&err).is_some(), "wasmtime's error is kept");
/// ```
pub struct Error {
    component: Option<String>,
    kind: ErrorKind,
    cause: Option<Cause>,
}

/// The error another library reported, kept as it was.
enum Cause {
    Wasmtime(wasmtime::Error),
    Io(std::io::Error),
}

/// What went wrong, without the component it concerns (see [`Error::component`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The engine could not be built from its configuration.
    Engine,

    /// The directory given for the code cache cannot be used.
    Cache {
        /// The directory.
        dir: PathBuf,
    },

    /// The host interfaces an embedder added to the linker could not be linked.
    HostInterfaces,

    /// A component file could not be read.
    Read {
        /// The file that could not be read.
        path: PathBuf,
    },

    /// The bytes are not a WebAssembly component wasmtime can compile.
    InvalidComponent,

    /// The component lacks an export that world `courier:actor/actor` requires.
    MissingExport {
        /// The missing export.
        export: &'static str,
    },

    /// An export exists but has another type than the world requires.
    ExportType {
        /// The mistyped export.
        export: &'static str,
        /// The type the world requires.
        expected: String,
        /// The type the component has.
        found: String,
    },

    /// The component imports something the host does not provide.
    UnknownImport {
        /// The import the host lacks.
        import: String,
    },

    /// Linking the component's imports failed (an import with the right name but another
    /// type).
    Link,

    /// Creating an instance failed (for example the pool has no free slot).
    Instantiate,

    /// The call ran past its deadline and was interrupted.
    DeadlineExceeded {
        /// The per-call deadline it was given.
        deadline: Duration,
        /// The wasm backtrace at the point of interruption, where wasmtime gives one.
        backtrace: Option<String>,
    },

    /// The guest tried to grow its memory past its cap.
    MemoryLimitExceeded {
        /// The cap in bytes.
        limit: usize,
        /// The wasm backtrace at the failed growth, where wasmtime gives one.
        backtrace: Option<String>,
    },

    /// The guest used up the fuel it was given for one call.
    FuelExhausted {
        /// The per-call fuel budget.
        fuel: u64,
        /// The wasm backtrace, where wasmtime gives one.
        backtrace: Option<String>,
    },

    /// The guest panicked; the message is what its panic handler printed.
    Panicked {
        /// The panic message the guest printed.
        message: String,
        /// The wasm backtrace, where wasmtime gives one.
        backtrace: Option<String>,
    },

    /// The guest trapped for another reason (`unreachable`, stack overflow, bad memory
    /// access...).
    Trapped {
        /// wasmtime's description of the trap.
        trap: String,
        /// The wasm backtrace, where wasmtime gives one.
        backtrace: Option<String>,
    },

    /// The guest called WASI `exit`. Code 0 is a normal end: a supervisor may treat it
    /// differently from a crash. Either way the instance cannot be called again.
    Exited {
        /// The exit code it gave.
        code: i32,
    },

    /// The instance trapped earlier and must not be called again.
    Poisoned {
        /// The failure that poisoned it.
        cause: String,
    },

    /// The guest's `save-state` returned more bytes than its instance may save
    /// ([`InstanceOptions::max_state_bytes`](crate::InstanceOptions::max_state_bytes)).
    /// The call itself ended well, so the instance is not poisoned; the bytes are not kept.
    StateTooLarge {
        /// The length of the state it returned.
        len: usize,
        /// The most it may save.
        limit: usize,
    },

    /// The instance was configured in a way the engine does not support.
    Config {
        /// What is wrong with the configuration.
        reason: String,
    },
}

impl Error {
    /// An error about the component `component`.
    pub(crate) fn new(component: impl Into<String>, kind: ErrorKind) -> Error {
        Error {
            component: Some(component.into()),
            kind,
            cause: None,
        }
    }

    /// An error of the engine as a whole, which concerns no one component.
    pub(crate) fn engine(kind: ErrorKind, cause: wasmtime::Error) -> Error {
        Error {
            component: None,
            kind,
            cause: Some(Cause::Wasmtime(cause)),
        }
    }

    /// Keep wasmtime's error as the cause.
    pub(crate) fn caused_by(mut self, cause: wasmtime::Error) -> Error {
        self.cause = Some(Cause::Wasmtime(cause));
        self
    }

    /// Keep an I/O error as the cause.
    pub(crate) fn caused_by_io(mut self, cause: std::io::Error) -> Error {
        self.cause = Some(Cause::Io(cause));
        self
    }

    /// The id or name of the component the error concerns, if it concerns one.
    pub fn component(&self) -> Option<&str> {
        self.component.as_deref()
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// wasmtime's own error, where wasmtime reported the cause: for a trap it holds the
    /// [`wasmtime::Trap`] and the [`wasmtime::WasmBacktrace`].
    pub fn wasmtime_error(&self) -> Option<&wasmtime::Error> {
        match &self.cause {
            Some(Cause::Wasmtime(err)) => Some(err),
            _ => None,
        }
    }

    /// Whether the guest stopped part-way through a call (a trap, or WASI `exit`), which
    /// poisons the instance: its owner replaces it before sending it anything else.
    pub fn is_trap(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::DeadlineExceeded { .. }
                | ErrorKind::MemoryLimitExceeded { .. }
                | ErrorKind::FuelExhausted { .. }
                | ErrorKind::Panicked { .. }
                | ErrorKind::Trapped { .. }
                | ErrorKind::Exited { .. }
        )
    }

    /// Whether the guest ended itself normally (WASI `exit(0)`), rather than crashing.
    pub fn is_normal_exit(&self) -> bool {
        matches!(self.kind, ErrorKind::Exited { code: 0 })
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let component = self.component.as_deref().unwrap_or("?");
        let cause = CauseText(self.cause.as_ref());
        match &self.kind {
            ErrorKind::Engine => write!(f, "cannot build the wasmtime engine: {cause}"),
            ErrorKind::Cache { dir } => write!(
                f,
                "cannot build the wasmtime engine: cannot use {} as the code cache: {cause}",
                dir.display()
            ),
            ErrorKind::HostInterfaces => write!(f, "cannot link the host interfaces: {cause}"),
            ErrorKind::Read { path } => write!(
                f,
                "component `{component}`: cannot read {}: {cause}",
                path.display()
            ),
            ErrorKind::InvalidComponent => write!(
                f,
                "component `{component}` is not a valid WebAssembly component: {cause}"
            ),
            ErrorKind::MissingExport { export } => write!(
                f,
                "component `{component}` lacks the export `{export}` that world {} requires",
                world_of(export)
            ),
            ErrorKind::ExportType {
                export,
                expected,
                found,
            } => write!(
                f,
                "component `{component}` exports `{export}` as `{found}`, but world {} requires `{expected}`",
                world_of(export)
            ),
            ErrorKind::UnknownImport { import } => write!(
                f,
                "component `{component}` imports `{import}`, which the Courier host does not provide"
            ),
            ErrorKind::Link => write!(
                f,
                "component `{component}` cannot be linked against the host: {cause}"
            ),
            ErrorKind::Instantiate => {
                write!(f, "component `{component}` cannot be instantiated: {cause}")
            }
            ErrorKind::DeadlineExceeded {
                deadline,
                backtrace,
            } => write!(
                f,
                "component `{component}` exceeded its deadline of {} ms{}",
                deadline.as_millis(),
                BacktraceText(backtrace)
            ),
            ErrorKind::MemoryLimitExceeded { limit, backtrace } => write!(
                f,
                "component `{component}` exceeded its memory limit of {}{}",
                format_bytes(*limit as u64),
                BacktraceText(backtrace)
            ),
            ErrorKind::FuelExhausted { fuel, backtrace } => write!(
                f,
                "component `{component}` ran out of its fuel of {fuel} units{}",
                BacktraceText(backtrace)
            ),
            ErrorKind::Panicked { message, backtrace } => write!(
                f,
                "component `{component}` panicked: {message:?}{}",
                BacktraceText(backtrace)
            ),
            ErrorKind::Trapped { trap, backtrace } => write!(
                f,
                "component `{component}` trapped: {trap}{}",
                BacktraceText(backtrace)
            ),
            ErrorKind::Exited { code } => {
                write!(f, "component `{component}` exited with code {code}")
            }
            ErrorKind::Poisoned { cause } => write!(
                f,
                "component `{component}` cannot be called: its instance was poisoned by an earlier failure ({cause}) and must be replaced"
            ),
            ErrorKind::StateTooLarge { len, limit } => write!(
                f,
                "component `{component}` saved a state of {}, over the limit of {}",
                format_bytes(*len as u64),
                format_bytes(*limit as u64)
            ),
            ErrorKind::Config { reason } => write!(f, "component `{component}`: {reason}"),
        }
    }
}

/// The world that requires `export`: the `state` interface's functions are world
/// `stateful-actor`'s, the handlers world `actor`'s.
fn world_of(export: &str) -> &'static str {
    if export.starts_with("courier:actor/state@") {
        "courier:actor/stateful-actor"
    } else {
        "courier:actor/actor"
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Error");
        debug
            .field("component", &self.component)
            .field("kind", &self.kind);
        match &self.cause {
            Some(Cause::Wasmtime(err)) => debug.field("cause", &format_args!("{err:#}")),
            Some(Cause::Io(err)) => debug.field("cause", err),
            None => &mut debug,
        };
        debug.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Some(Cause::Wasmtime(err)) => Some(err.as_ref()),
            Some(Cause::Io(err)) => Some(err),
            None => None,
        }
    }
}

/// The cause's text with its own chain, as wasmtime's `{:#}` writes it.
struct CauseText<'a>(Option<&'a Cause>);

impl std::fmt::Display for CauseText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(Cause::Wasmtime(err)) => write!(f, "{err:#}"),
            Some(Cause::Io(err)) => write!(f, "{err}"),
            None => f.write_str("unknown cause"),
        }
    }
}

/// A wasm backtrace on the lines after the message, where there is one.
struct BacktraceText<'a>(&'a Option<String>);

impl std::fmt::Display for BacktraceText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(bt) if !bt.trim().is_empty() => write!(f, "\n{}", bt.trim_end()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_error_names_the_component_and_the_deadline() {
        let err = Error::new(
            "looper",
            ErrorKind::DeadlineExceeded {
                deadline: Duration::from_millis(100),
                backtrace: None,
            },
        );
        assert_eq!(
            err.to_string(),
            "component `looper` exceeded its deadline of 100 ms"
        );
        assert!(err.is_trap());
        assert_eq!(err.component(), Some("looper"));
    }

    #[test]
    fn the_cause_is_in_the_message_and_reachable_as_the_source() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = Error::new(
            "echo",
            ErrorKind::Read {
                path: "echo.wasm".into(),
            },
        )
        .caused_by_io(io);
        assert_eq!(
            err.to_string(),
            "component `echo`: cannot read echo.wasm: no such file"
        );
        let source = std::error::Error::source(&err).expect("a source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("the io error");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn a_wasmtime_cause_keeps_its_type() {
        let err = Error::new("t", ErrorKind::Instantiate)
            .caused_by(wasmtime::Error::new(wasmtime::Trap::StackOverflow));
        let source = std::error::Error::source(&err).expect("a source");
        assert_eq!(
            source.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::StackOverflow)
        );
        assert!(err.wasmtime_error().is_some());
    }
}
