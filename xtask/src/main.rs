//! Project tasks, run as `cargo xtask <task>` from anywhere in the repository.
//!
//! Written in Rust with std only so that cargo is the one prerequisite: no shell scripts, no
//! make, nothing that differs between machines. Every task runs its commands from the
//! repository root, so relative paths here mean the same thing wherever it is started.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod chromium;
mod nats;

/// The target every guest component is built for.
const GUEST_TARGET: &str = "wasm32-wasip2";

/// The guest workspace's manifest, relative to the repository root.
const GUEST_MANIFEST: &str = "guest-examples/Cargo.toml";

/// Where cargo builds the guests, relative to the repository root. Separate from the host's
/// `target/` layout so the two workspaces never invalidate each other's artifacts.
const GUEST_TARGET_DIR: &str = "target/guest-build";

/// Where the built components are copied, relative to the repository root: a stable path that
/// host tests, benchmarks and the demo load from.
const GUESTS_DIR: &str = "target/guests";

/// How the tasks are used, printed by `help` and after an unknown task.
const USAGE: &str = "\
Usage: cargo xtask <task>

Tasks:
  build-guests  build the guest components for wasm32-wasip2 into target/guests/
  test-all      build-guests, then fmt and clippy on both workspaces, compile the benchmarks,
                then cargo test (with nats-server and Chromium, found or installed as the
                `nats-server` and `chromium` tasks do; without Chromium, and outside CI,
                the browser test is skipped)
  run           build-guests, then serve examples/courier.toml with the `courier` runner
                (ping, pong and echo behind an HTTP ingress on 127.0.0.1:8080; Ctrl-C stops)
  demo          build-guests, then run the host-core and broker demos, which end by themselves
  bench         build-guests, then run the benchmarks and print their table of ratios
                (also written to target/bench-report.md); `bench --quick` is a short run,
                and arguments after `--` go to criterion (`bench -- ping` runs only the
                benchmarks whose names contain `ping`)
  fuzz          run each fuzz target in fuzz/ for 30 seconds from its seed corpus (cargo-fuzz on
                the nightly toolchain, both installed if missing); fails on a crash. `fuzz
                codec_decode` runs one target; arguments after `--` go to libFuzzer
  nats-server   find nats-server for the multi-host tests ($NATS_SERVER_BIN, PATH, or a copy
                installed earlier in target/nats-server/), installing it if there is none
                (apt-get as root or with sudo, else pip); prints its path
  chromium      find Chromium for the dashboard's browser test ($CHROMIUM_BIN or PATH),
                installing Debian's `chromium` package when there is none (apt-get as root
                or with sudo); prints its path
  help          print this message
";

/// What a failed task reports: which step failed and why.
type TaskResult = Result<(), String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let task = match args.as_slice() {
        [] => "help",
        [task] => task.as_str(),
        [task, rest @ ..] if task == "bench" => {
            return finish(task, bench(rest));
        }
        [task, rest @ ..] if task == "fuzz" => return finish(task, fuzz(rest)),
        [task, extra, ..] => {
            eprintln!("xtask: `{task}` takes no arguments, got `{extra}`\n\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let result = match task {
        "build-guests" => build_guests(),
        "test-all" => test_all(),
        "run" => run_example(),
        "demo" => demo(),
        "bench" => bench(&[]),
        "fuzz" => fuzz(&[]),
        "nats-server" => nats::ensure_nats_server().map(|path| println!("{}", path.display())),
        "chromium" => chromium::ensure_chromium().map(|path| println!("{}", path.display())),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        unknown => {
            eprintln!("xtask: unknown task `{unknown}`\n\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    finish(task, result)
}

/// The exit code of a task, after reporting its failure.
fn finish(task: &str, result: TaskResult) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask {task}: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Builds every guest component and copies it to `target/guests/<name>.wasm`.
fn build_guests() -> TaskResult {
    ensure_guest_target()?;

    // One package at a time: cargo unifies the features of the packages one build
    // selects, so a component that turns on the SDK's `cbor` (to keep its state across
    // upgrades) would give every other component the `state` exports too, and with them a
    // larger binary that is slower to instantiate. What a user's own crate gets, built alone.
    for package in guest_packages()? {
        let mut build = cargo(["build", "--release", "--target", GUEST_TARGET]);
        build.args([
            "--manifest-path",
            GUEST_MANIFEST,
            "--target-dir",
            GUEST_TARGET_DIR,
            "--package",
            &package,
        ]);
        run(
            &format!("cargo build (guest {package}, wasm32-wasip2)"),
            build,
        )?;
    }

    let root = repo_root();
    let built = root
        .join(GUEST_TARGET_DIR)
        .join(GUEST_TARGET)
        .join("release");
    let destination = root.join(GUESTS_DIR);
    fs::create_dir_all(&destination)
        .map_err(|e| format!("could not create {}: {e}", destination.display()))?;

    let components = wasm_files_in(&built)?;
    if components.is_empty() {
        return Err(format!(
            "cargo built no components: no .wasm files in {}",
            built.display()
        ));
    }
    println!("==> copy components to {GUESTS_DIR}/");
    for component in components {
        let name = component
            .file_name()
            .expect("read_dir entries have a file name");
        let target = destination.join(name);
        let bytes = fs::copy(&component, &target).map_err(|e| {
            format!(
                "could not copy {} to {}: {e}",
                component.display(),
                target.display()
            )
        })?;
        // Lossy conversion is fine: a KiB figure with one decimal needs no more precision.
        let kib = bytes as f64 / 1024.0;
        println!("    {:<24} {kib:>8.1} KiB", name.to_string_lossy());
    }
    Ok(())
}

/// Builds the guests, then checks formatting and lints on both workspaces, compiles the
/// benchmarks (without running them) and runs every test, stopping at the first step that fails.
/// The multi-host tests start real nats-server processes: the one that
/// [`nats::ensure_nats_server`] finds or installs first, passed on in `NATS_SERVER_BIN`; the
/// dashboard's browser test drives the Chromium that [`chromium::chromium_for_tests`] finds or
/// installs, passed on in `CHROMIUM_BIN`.
fn test_all() -> TaskResult {
    build_guests()?;
    let nats_server = nats::ensure_nats_server()?;
    let chromium = chromium::chromium_for_tests()?;

    let mut guest_fmt = cargo(["fmt", "--all", "--check"]);
    guest_fmt.args(["--manifest-path", GUEST_MANIFEST]);

    let mut guest_clippy = cargo(["clippy", "--release", "--target", GUEST_TARGET]);
    guest_clippy.args([
        "--manifest-path",
        GUEST_MANIFEST,
        "--target-dir",
        GUEST_TARGET_DIR,
    ]);
    guest_clippy.args(["--", "-D", "warnings"]);

    let checks = [
        (
            "cargo fmt --check (host)",
            cargo(["fmt", "--all", "--check"]),
        ),
        ("cargo fmt --check (guests)", guest_fmt),
        (
            "cargo clippy (host)",
            cargo([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        ),
        ("cargo clippy (guests, wasm32-wasip2)", guest_clippy),
        (
            "cargo bench --no-run (benchmarks compile)",
            // The dev profile reuses the test build's dependencies; the bench profile would
            // compile wasmtime a second time, optimised, for a check that only needs the
            // benchmarks to build.
            // `--workspace` with only the bench targets selected: cargo unifies features over
            // the packages it is given, so `-p courier-benches` alone would build wasmtime a
            // second time with another feature set.
            cargo([
                "bench",
                "--no-run",
                "--profile",
                "dev",
                "--workspace",
                "--bench",
                "*",
            ]),
        ),
        ("cargo test (host)", {
            let mut test = cargo(["test", "--workspace"]);
            test.env(nats::NATS_SERVER_BIN_ENV, &nats_server);
            if let Some(chromium) = &chromium {
                test.env(chromium::CHROMIUM_BIN_ENV, chromium);
            }
            test
        }),
    ];
    // Building the guests is the first step.
    let steps = checks.len() + 1;
    for (step, command) in checks {
        run(step, command)?;
    }
    println!("test-all: all {steps} steps passed");
    Ok(())
}

/// Builds the guests and serves the example manifest with the `courier` runner until Ctrl-C.
fn run_example() -> TaskResult {
    build_guests()?;
    run(
        "courier run examples/courier.toml",
        cargo([
            "run",
            "--release",
            "-p",
            "courier-cli",
            "--",
            "run",
            "examples/courier.toml",
        ]),
    )
}

/// Builds the guests and runs the two demos, which load them from `target/guests/`: host-core's
/// (echo and counter called through the instance API) and the broker's (ping sends 10,000
/// messages to pong, wasm to wasm). Release builds, so the figures they print are real ones.
fn demo() -> TaskResult {
    build_guests()?;
    run(
        "cargo run --example demo (host-core)",
        cargo([
            "run",
            "--release",
            "-p",
            "courier-host-core",
            "--example",
            "demo",
        ]),
    )?;
    run(
        "cargo run --example fire_and_forget_messaging (host-broker)",
        cargo([
            "run",
            "--release",
            "-p",
            "courier-host-broker",
            "--example",
            "fire_and_forget_messaging",
        ]),
    )
}

/// The package names of the guest workspace's members, from its manifest and theirs.
fn guest_packages() -> Result<Vec<String>, String> {
    let manifest = repo_root().join(GUEST_MANIFEST);
    let text = fs::read_to_string(&manifest)
        .map_err(|e| format!("could not read {}: {e}", manifest.display()))?;
    let members = text
        .split_once("members = [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .ok_or_else(|| format!("no `members = [...]` in {}", manifest.display()))?;
    let folder = manifest.parent().expect("a manifest is in a folder");
    let mut packages = Vec::new();
    for member in members.split(',').map(|m| m.trim().trim_matches('"')) {
        if member.is_empty() {
            continue;
        }
        let path = folder.join(member).join("Cargo.toml");
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("could not read {}: {e}", path.display()))?;
        let name = text
            .lines()
            .find_map(|line| {
                let value = line.trim().strip_prefix("name")?.trim().strip_prefix('=')?;
                Some(value.trim().trim_matches('"').to_string())
            })
            .ok_or_else(|| format!("no package name in {}", path.display()))?;
        packages.push(name);
    }
    Ok(packages)
}

/// Makes sure the active toolchain has the standard library for the guest target, installing
/// it with rustup if not. `rust-toolchain.toml` lists the target, but rustup only installs
/// listed targets along with the toolchain itself, so a machine that already had the toolchain
/// without the target still needs this.
fn ensure_guest_target() -> TaskResult {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .current_dir(repo_root())
        .output()
        .map_err(|e| format!("could not run `{} --print sysroot`: {e}", rustc.display()))?;
    if !output.status.success() {
        return Err(format!(
            "`{} --print sysroot` failed ({}): {}",
            rustc.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if sysroot.join("lib/rustlib").join(GUEST_TARGET).is_dir() {
        return Ok(());
    }

    println!("The {GUEST_TARGET} target is not installed for this toolchain; installing it.");
    let mut add = Command::new("rustup");
    add.args(["target", "add", GUEST_TARGET]);
    add.current_dir(repo_root());
    run("rustup target add wasm32-wasip2", add).map_err(|e| {
        format!("{e}; without rustup, install the {GUEST_TARGET} standard library by hand")
    })
}

/// Runs one step with the output going straight to the terminal, after a header line naming
/// it. A step fails if the command cannot start or exits unsuccessfully; the error names it.
fn run(step: &str, mut command: Command) -> TaskResult {
    println!("==> {step}");
    let started = std::time::Instant::now();
    let status = command.status().map_err(|e| {
        format!(
            "step `{step}` could not start `{}`: {e}",
            command.get_program().display()
        )
    })?;
    // Each step's time, so a slow run shows which step to look at.
    println!("<== {step}: {:.0} s", started.elapsed().as_secs_f64());
    if status.success() {
        Ok(())
    } else {
        Err(format!("step `{step}` failed ({status})"))
    }
}

/// A cargo command with these arguments, run from the repository root. Uses the cargo that
/// started xtask (`$CARGO`), so the whole run stays on one toolchain.
fn cargo<const N: usize>(args: [&str; N]) -> Command {
    let program = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(program);
    command.args(args).current_dir(repo_root());
    // A CI run builds once from clean and throws the build away: incremental state would only
    // cost time and about a GiB of disk.
    if env::var_os("CI").is_some() && env::var_os("CARGO_INCREMENTAL").is_none() {
        command.env("CARGO_INCREMENTAL", "0");
    }
    command
}

/// The repository root: the parent of the xtask crate.
fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the repository root")
}

/// The `.wasm` files directly in `dir`, sorted by name so the listing is stable.
fn wasm_files_in(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        fs::read_dir(dir).map_err(|e| format!("could not read {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("could not read {}: {e}", dir.display()))?
            .path();
        if path.is_file() && path.extension().is_some_and(|ext| ext == "wasm") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The environment variable that makes the benchmarks take their short run; read by
/// `courier-benches` and the store's benchmark.
const BENCH_QUICK_ENV: &str = "COURIER_BENCH_QUICK";

/// Where the benchmarks write their figures, relative to the repository root.
const BENCH_RESULTS_DIR: &str = "target/bench-results";

/// Builds the guests, runs every benchmark of `courier-benches` and the store's (each
/// measures its own baselines), then prints the table of figures and ratios that `bench-report` assembles from
/// what they wrote. `--quick` shortens every benchmark (see `benches/README.md`); arguments
/// after `--` go to criterion. A slow figure fails nothing; a benchmark that breaks does.
fn bench(args: &[String]) -> TaskResult {
    let mut quick = false;
    let mut criterion_args: &[String] = &[];
    for (index, arg) in args.iter().enumerate() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--" => {
                criterion_args = &args[index + 1..];
                break;
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`: bench takes `--quick`, then `--` and \
                     criterion's arguments"
                ));
            }
        }
    }
    build_guests()?;

    // Figures of an earlier run would mix into this run's table.
    let results = repo_root().join(BENCH_RESULTS_DIR);
    if results.is_dir() {
        fs::remove_dir_all(&results)
            .map_err(|e| format!("could not clear {}: {e}", results.display()))?;
    }

    let mut benches = cargo(["bench", "-p", "courier-benches", "--benches", "--"]);
    benches.args(criterion_args);
    if quick {
        benches.env(BENCH_QUICK_ENV, "1");
    }
    run(
        if quick {
            "cargo bench (courier-benches, quick)"
        } else {
            "cargo bench (courier-benches)"
        },
        benches,
    )?;
    // The store's benchmark lives in its crate, which needs nothing of wasmtime.
    let mut store = cargo([
        "bench",
        "-p",
        "courier-host-store",
        "--bench",
        "store",
        "--",
    ]);
    store.args(criterion_args);
    if quick {
        store.env(BENCH_QUICK_ENV, "1");
    }
    run("cargo bench (courier-host-store)", store)?;
    // The bench profile, so the report reuses what `cargo bench` just built.
    run(
        "bench-report",
        cargo([
            "run",
            "--quiet",
            "--profile",
            "bench",
            "-p",
            "courier-benches",
            "--bin",
            "bench-report",
        ]),
    )
}

/// Runs the fuzz targets of `fuzz/` (cargo-fuzz, libFuzzer): each for a short run with a fixed
/// seed from its committed seed corpus, or those named in `args`, and fails on the first crash.
/// Arguments after `--` go to libFuzzer after the short run's own, so they override them
/// (`fuzz -- -max_total_time=3600` fuzzes for an hour). New inputs are kept in
/// `target/fuzz-corpus/`, so the seed corpus changes only by hand.
///
/// cargo-fuzz builds with sanitizer flags that only nightly accepts; this installs the
/// nightly toolchain and cargo-fuzz when they are missing.
fn fuzz(args: &[String]) -> TaskResult {
    const TARGETS: [&str; 2] = ["codec_decode", "load_component"];
    const SHORT_RUN: [&str; 2] = ["-seed=1", "-max_total_time=30"];

    let (names, libfuzzer_args) = match args.iter().position(|arg| arg == "--") {
        Some(index) => (&args[..index], &args[index + 1..]),
        None => (args, &[][..]),
    };
    if let Some(unknown) = names.iter().find(|name| !TARGETS.contains(&name.as_str())) {
        return Err(format!(
            "unknown fuzz target `{unknown}`: the targets are {}",
            TARGETS.join(", ")
        ));
    }
    let targets: Vec<&str> = if names.is_empty() {
        TARGETS.to_vec()
    } else {
        names.iter().map(String::as_str).collect()
    };

    // `rustup run` rather than `cargo +nightly`, so that every cargo and rustc it starts is
    // nightly's, whatever `rust-toolchain.toml` and PATH say.
    let nightly = |args: &[&str]| {
        let mut command = Command::new("rustup");
        command
            .args(["run", "nightly", "cargo"])
            .args(args)
            .current_dir(repo_root());
        command
    };
    let succeeds = |mut command: Command| {
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if !succeeds(nightly(&["--version"])) {
        let mut install = Command::new("rustup");
        install.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
        run("rustup toolchain install nightly", install)?;
    }
    if !succeeds(nightly(&["fuzz", "--version"])) {
        run(
            "cargo install cargo-fuzz",
            cargo(["install", "cargo-fuzz", "--locked"]),
        )?;
    }

    let root = repo_root();
    for target in &targets {
        let corpus = root.join("target/fuzz-corpus").join(target);
        fs::create_dir_all(&corpus)
            .map_err(|e| format!("could not create {}: {e}", corpus.display()))?;
        let mut command = nightly(&["fuzz", "run", target]);
        command
            .arg(&corpus)
            .arg(root.join("fuzz/corpus").join(target))
            .arg("--")
            .args(SHORT_RUN)
            .args(libfuzzer_args);
        run(&format!("cargo fuzz run {target} (nightly)"), command)
            .map_err(|e| format!("{e}; a crashing input is kept in fuzz/artifacts/{target}/"))?;
    }
    println!("fuzz: {} targets ran without a crash", targets.len());
    Ok(())
}
