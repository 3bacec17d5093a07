//! The `courier` binary's integration tests: the runner end to end and `courier new`.
//!
//! One test binary rather than one per file: each binary links all of wasmtime, so a binary
//! per file multiplies link time and disk use for nothing.

mod new;
mod run;
mod server;

use std::path::Path;
use std::process::Command;

/// Runs `courier check` on a manifest and fails the test, with what it printed, unless the
/// manifest and every component in it pass.
fn assert_check_passes(manifest: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("check")
        .arg(manifest)
        .output()
        .expect("the courier binary starts");
    assert!(
        output.status.success(),
        "courier check {} failed:\n{}",
        manifest.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}
