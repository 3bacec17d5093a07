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

/// Waits until `courier` has printed `line`, failing with what it printed.
fn printed(courier: &crate::run::Courier, line: &str, timeout: std::time::Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while !courier.stdout().contains(line) {
        assert!(
            std::time::Instant::now() < deadline,
            "no `{line}`\nstdout:\n{}\nstderr:\n{}",
            courier.stdout(),
            courier.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn courier_dev_rebuilds_and_upgrades_after_an_edit_and_keeps_serving_through_a_broken_one() {
    use crate::run::{Courier, STOP_TIMEOUT, client, post};
    use std::time::Duration;

    let work = repo().join("target").join("new-component-test");
    let shared_target = work.join("target");
    std::fs::create_dir_all(&shared_target).unwrap();
    let scratch = tempfile::tempdir_in(&work).unwrap();
    let crate_dir = scratch.path().join("hello-dev");
    let made = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["new", crate_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success());
    // The crate's own target folder is the shared one, so the SDK is built once.
    std::os::unix::fs::symlink(&shared_target, crate_dir.join("target")).unwrap();

    let mut courier = Courier::start(&[
        "dev",
        crate_dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    // The first build compiles the SDK for wasm32-wasip2, cold on a fresh clone.
    let address = courier.address_within(Duration::from_secs(600));
    let agent = client();
    let url = format!("http://{address}/components/hello-dev/requests");
    assert_eq!(
        post(&agent, &url, b"world"),
        (200, b"hello, world".to_vec())
    );

    let source = crate_dir.join("src/lib.rs");
    let text = std::fs::read_to_string(&source).unwrap();
    std::fs::write(&source, text.replace("\"hello, ", "\"howdy, ")).unwrap();
    printed(
        &courier,
        "courier: upgraded `hello-dev`",
        Duration::from_secs(300),
    );
    assert_eq!(
        post(&agent, &url, b"world"),
        (200, b"howdy, world".to_vec())
    );

    // A broken edit: the build fails, and the running version keeps serving.
    let text = std::fs::read_to_string(&source).unwrap();
    std::fs::write(&source, format!("{text}\nfn broken( {{\n")).unwrap();
    printed(&courier, "the build failed", Duration::from_secs(300));
    assert_eq!(
        post(&agent, &url, b"world"),
        (200, b"howdy, world".to_vec())
    );

    courier.terminate();
    assert!(courier.wait(STOP_TIMEOUT).success(), "{}", courier.stderr());
}

#[test]
fn courier_dev_finds_the_component_where_cargo_put_it() {
    use crate::run::{Courier, STOP_TIMEOUT, client, post};
    use std::time::Duration;

    let work = repo().join("target").join("new-component-test");
    let shared_target = work.join("target");
    std::fs::create_dir_all(&shared_target).unwrap();
    let scratch = tempfile::tempdir_in(&work).unwrap();
    let crate_dir = scratch.path().join("elsewhere-dev");
    let made = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["new", crate_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success());

    // Cargo builds into CARGO_TARGET_DIR, not the crate's `target/` that courier.toml names.
    let mut courier = Courier::start_with_env(
        &[
            "dev",
            crate_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[("CARGO_TARGET_DIR", &shared_target)],
    );
    let address = courier.address_within(Duration::from_secs(600));
    let artifact = shared_target.join("wasm32-wasip2/release/elsewhere_dev.wasm");
    assert!(
        courier.stdout().contains(&format!(
            "cargo put elsewhere_dev.wasm at {}",
            artifact.display()
        )),
        "{}",
        courier.stdout()
    );
    assert!(!crate_dir.join("target").exists());
    let url = format!("http://{address}/components/elsewhere-dev/requests");
    assert_eq!(
        post(&client(), &url, b"world"),
        (200, b"hello, world".to_vec())
    );

    courier.terminate();
    assert!(courier.wait(STOP_TIMEOUT).success(), "{}", courier.stderr());
}

#[test]
fn the_help_text_describes_each_command_under_its_own_name() {
    let output = Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let line = |command: &str| {
        help.lines()
            .find(|line| line.trim_start().starts_with(&format!("{command} ")))
            .unwrap_or_else(|| panic!("no line for `{command}` in:\n{help}"))
            .to_string()
    };
    assert!(line("new").contains("Create a component crate"), "{help}");
    assert!(line("dev").contains("In a component crate"), "{help}");
    assert!(!line("dev").contains("Create a component crate"), "{help}");
    for command in ["check", "run", "upgrade"] {
        assert!(line(command).split_whitespace().count() > 2, "{help}");
    }
}
