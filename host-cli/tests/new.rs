//! `courier new` makes a crate that builds for `wasm32-wasip2` into a component the host
//! accepts.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host-cli lives in the repository")
        .to_path_buf()
}

#[test]
fn a_new_component_builds_for_wasm32_wasip2_and_passes_check() {
    // Inside the repository's target folder, so that rustup picks the repository's pinned
    // toolchain (with its wasm32-wasip2 target), and the build directory stays warm.
    let work = repo().join("target").join("new-component-test");
    std::fs::create_dir_all(&work).unwrap();
    let scratch = tempfile::tempdir_in(&work).unwrap();
    let crate_dir = scratch.path().join("hello-courier");

    let output = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["new", crate_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("created component `hello-courier`"),
        "{stdout}"
    );
    let cargo = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    let sdk = std::fs::canonicalize(repo().join("guest-sdk")).unwrap();
    assert!(
        cargo.contains(&format!("courier-sdk = {{ path = \"{}\" }}", sdk.display())),
        "{cargo}"
    );

    // A second time, the folder exists and is refused.
    let again = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["new", crate_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let target_dir = work.join("target");
    let build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "cargo build failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let wasm = target_dir.join("wasm32-wasip2/release/hello_courier.wasm");
    assert!(wasm.is_file(), "no component at {}", wasm.display());

    // The host loads it and finds both handlers the world asks for.
    let manifest = scratch.path().join("courier.toml");
    let cache = repo().join("target/courier-cli-test-cache");
    std::fs::write(
        &manifest,
        format!(
            "[runtime]\ncache_dir = {:?}\n[[component]]\nid = \"hello-courier\"\npath = {:?}\n",
            cache.display().to_string(),
            wasm.display().to_string()
        ),
    )
    .unwrap();
    crate::assert_check_passes(&manifest);
}

#[test]
fn an_invalid_crate_name_is_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["new", scratch.path().join("2fast").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("must start with an ASCII letter"));
    assert!(!scratch.path().join("2fast").exists());
}
