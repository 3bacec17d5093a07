//! The one error type of host-core.
//!
//! Every variant names the component it concerns, so a log line or an error returned to an
//! integrator says which component misbehaved and how, without further context.

use std::path::PathBuf;
use std::time::Duration;

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading, instantiating or calling a component.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine could not be built from its configuration.
    #[error("cannot build the wasmtime engine: {reason}")]
    Engine {
        /// wasmtime's description of the problem.
        reason: String,
    },

    /// A component file could not be read.
    #[error("component `{component}`: cannot read {}: {source}", path.display())]
    Read {
        /// The component being loaded.
        component: String,
        /// The file that could not be read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// The bytes are not a WebAssembly component wasmtime can compile.
    #[error("component `{component}` is not a valid WebAssembly component: {reason}")]
    InvalidComponent {
        /// The component being loaded.
        component: String,
        /// wasmtime's description of the problem.
        reason: String,
    },

    /// The component lacks an export that world `courier:actor/actor` requires.
    #[error(
        "component `{component}` lacks the export `{export}` that world courier:actor/actor requires"
    )]
    MissingExport {
        /// The component being loaded.
        component: String,
        /// The missing export.
        export: &'static str,
    },

    /// An export exists but has another type than the world requires.
    #[error(
        "component `{component}` exports `{export}` as `{found}`, but world courier:actor/actor requires `{expected}`"
    )]
    ExportType {
        /// The component being loaded.
        component: String,
        /// The mistyped export.
        export: &'static str,
        /// The type the world requires.
        expected: String,
        /// The type the component has.
        found: String,
    },

    /// The component imports something the host does not provide.
    #[error("component `{component}` imports `{import}`, which the Courier host does not provide")]
    UnknownImport {
        /// The component being loaded.
        component: String,
        /// The import the host lacks.
        import: String,
    },

    /// Linking the component's imports failed (an import with the right name but another type).
    #[error("component `{component}` cannot be linked against the host: {reason}")]
    Link {
        /// The component being loaded.
        component: String,
        /// wasmtime's description of the mismatch.
        reason: String,
    },

    /// Creating an instance failed (for example the pool has no free slot).
    #[error("component `{component}` cannot be instantiated: {reason}")]
    Instantiate {
        /// The component being instantiated.
        component: String,
        /// wasmtime's description of the problem.
        reason: String,
    },

    /// The call ran past its deadline and was interrupted.
    #[error("component `{component}` exceeded its deadline of {} ms{}", deadline.as_millis(), backtrace_suffix(.backtrace))]
    DeadlineExceeded {
        /// The component that was interrupted.
        component: String,
        /// The per-call deadline it was given.
        deadline: Duration,
        /// The wasm backtrace at the point of interruption, where wasmtime gives one.
        backtrace: Option<String>,
    },

    /// The guest tried to grow its memory past its cap.
    #[error("component `{component}` exceeded its memory limit of {}{}", format_bytes(*limit), backtrace_suffix(.backtrace))]
    MemoryLimitExceeded {
        /// The component that was stopped.
        component: String,
        /// The cap in bytes.
        limit: usize,
        /// The wasm backtrace at the failed growth, where wasmtime gives one.
        backtrace: Option<String>,
    },

    /// The guest used up the fuel it was given for one call.
    #[error("component `{component}` ran out of its fuel of {fuel} units{}", backtrace_suffix(.backtrace))]
    FuelExhausted {
        /// The component that was stopped.
        component: String,
        /// The per-call fuel budget.
        fuel: u64,
        /// The wasm backtrace, where wasmtime gives one.
        backtrace: Option<String>,
    },

    /// The guest panicked; the message is what its panic handler printed.
    #[error("component `{component}` panicked: {message:?}{}", backtrace_suffix(.backtrace))]
    Panicked {
        /// The component that panicked.
        component: String,
        /// The panic message the guest printed.
        message: String,
        /// The wasm backtrace, where wasmtime gives one.
        backtrace: Option<String>,
    },

    /// The guest trapped for another reason (`unreachable`, stack overflow, bad memory access...).
    #[error("component `{component}` trapped: {trap}{}", backtrace_suffix(.backtrace))]
    Trapped {
        /// The component that trapped.
        component: String,
        /// wasmtime's description of the trap.
        trap: String,
        /// The wasm backtrace, where wasmtime gives one.
        backtrace: Option<String>,
    },

    /// The guest called WASI `exit`. Code 0 is a normal end: a supervisor may treat it
    /// differently from a crash. Either way the instance cannot be called again.
    #[error("component `{component}` exited with code {code}")]
    Exited {
        /// The component that exited.
        component: String,
        /// The exit code it gave.
        code: i32,
    },

    /// The instance trapped earlier and must not be called again.
    #[error(
        "component `{component}` cannot be called: its instance was poisoned by an earlier failure ({cause}) and must be replaced"
    )]
    Poisoned {
        /// The component whose instance is poisoned.
        component: String,
        /// The failure that poisoned it.
        cause: String,
    },

    /// The instance was configured in a way the engine does not support.
    #[error("component `{component}`: {reason}")]
    Config {
        /// The component being configured.
        component: String,
        /// What is wrong with the configuration.
        reason: String,
    },
}

impl Error {
    /// The id or name of the component the error concerns, if it concerns one.
    pub fn component(&self) -> Option<&str> {
        match self {
            Error::Engine { .. } => None,
            Error::Read { component, .. }
            | Error::InvalidComponent { component, .. }
            | Error::MissingExport { component, .. }
            | Error::ExportType { component, .. }
            | Error::UnknownImport { component, .. }
            | Error::Link { component, .. }
            | Error::Instantiate { component, .. }
            | Error::DeadlineExceeded { component, .. }
            | Error::MemoryLimitExceeded { component, .. }
            | Error::FuelExhausted { component, .. }
            | Error::Panicked { component, .. }
            | Error::Trapped { component, .. }
            | Error::Exited { component, .. }
            | Error::Poisoned { component, .. }
            | Error::Config { component, .. } => Some(component),
        }
    }

    /// Whether the guest stopped part-way through a call (a trap, or WASI `exit`), which
    /// poisons the instance: its owner replaces it before sending it anything else.
    pub fn is_trap(&self) -> bool {
        matches!(
            self,
            Error::DeadlineExceeded { .. }
                | Error::MemoryLimitExceeded { .. }
                | Error::FuelExhausted { .. }
                | Error::Panicked { .. }
                | Error::Trapped { .. }
                | Error::Exited { .. }
        )
    }

    /// Whether the guest ended itself normally (WASI `exit(0)`), rather than crashing.
    pub fn is_normal_exit(&self) -> bool {
        matches!(self, Error::Exited { code: 0, .. })
    }
}

fn backtrace_suffix(backtrace: &Option<String>) -> String {
    match backtrace {
        Some(bt) if !bt.trim().is_empty() => format!("\n{}", bt.trim_end()),
        _ => String::new(),
    }
}

/// Formats a byte count the way limits are usually written: `16 MiB`, `64 KiB`, `100 bytes`.
pub(crate) fn format_bytes(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_written_in_the_largest_whole_unit() {
        assert_eq!(format_bytes(16 * 1024 * 1024), "16 MiB");
        assert_eq!(format_bytes(64 * 1024), "64 KiB");
        assert_eq!(format_bytes(1000), "1000 bytes");
    }

    #[test]
    fn a_deadline_error_names_the_component_and_the_deadline() {
        let err = Error::DeadlineExceeded {
            component: "looper".into(),
            deadline: Duration::from_millis(100),
            backtrace: None,
        };
        assert_eq!(
            err.to_string(),
            "component `looper` exceeded its deadline of 100 ms"
        );
        assert!(err.is_trap());
        assert_eq!(err.component(), Some("looper"));
    }
}
