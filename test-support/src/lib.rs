//! Where host-side tests, examples and benchmarks find the guest components.
//!
//! `cargo xtask build-guests` builds `guest-examples/` for `wasm32-wasip2` and puts each
//! component at `target/guests/NAME.wasm`. A test that runs before that happens fails here
//! with a message that says what to run, rather than with a bare file-not-found.
//!
//! [`nats`] starts real nats-server processes on loopback for the multi-host tests.

use std::path::PathBuf;

pub mod nats;

/// The folder `cargo xtask build-guests` fills.
pub fn guests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives inside the repository")
        .join("target")
        .join("guests")
}

/// The path of the built guest `name` (for example `echo`, `no_handler`).
///
/// # Panics
///
/// If the component has not been built, naming the command that builds it.
pub fn guest_path(name: &str) -> PathBuf {
    let path = guests_dir().join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "guest component `{name}` not found at {}: run `cargo xtask build-guests` first",
        path.display()
    );
    path
}

/// The bytes of the built guest `name`; panics like [`guest_path`] if it is not built.
pub fn guest_bytes(name: &str) -> Vec<u8> {
    let path = guest_path(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "run `cargo xtask build-guests` first")]
    fn a_missing_guest_names_the_command_that_builds_it() {
        guest_path("no-such-guest");
    }
}
