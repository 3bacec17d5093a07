//! `courier dev [PATH]`: the edit-build-run loop of a component crate (one `courier new`
//! made). It builds the crate for `wasm32-wasip2`, runs it with its `courier.toml` as
//! `courier run --watch` does, and rebuilds whenever a source changes; the rebuilt
//! component is then upgraded in place by the watch. A build that fails is printed, and the
//! running version keeps serving.
//!
//! The component is taken from where cargo says it put it (its `compiler-artifact` messages),
//! not from where `courier.toml` expects it: with `CARGO_TARGET_DIR` set, in a workspace, or
//! with `build.target-dir` in a cargo config, that is not the crate's own `target/` folder.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;

use anyhow::Context;
use notify::{RecursiveMode, Watcher};

use crate::run::{self, RunOptions};
use crate::watch::QUIET;

/// Run the crate in `dir` and rebuild it on every change to its sources; `options` are
/// `courier run`'s (with the watch always on).
pub fn dev(dir: &Path, mut options: RunOptions) -> anyhow::Result<ExitCode> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no crate at {}", dir.display()))?;
    let manifest = dir.join("courier.toml");
    anyhow::ensure!(
        dir.join("Cargo.toml").is_file() && manifest.is_file(),
        "{} is not a component crate with a courier.toml (as `courier new` makes)",
        dir.display()
    );
    let Some(artifacts) = build(&dir) else {
        anyhow::bail!("the first build failed: nothing to run");
    };
    // `courier new` names the component by where a plain `cargo build` in the crate would
    // put it; cargo may have put it elsewhere.
    let expected = dir.join("target").join("wasm32-wasip2").join("release");
    for artifact in artifacts {
        if let Some(name) = artifact.file_name() {
            let written = expected.join(name);
            if written != artifact {
                println!(
                    "courier dev: cargo put {} at {}",
                    name.to_string_lossy(),
                    artifact.display()
                );
                options.redirects.insert(written, artifact);
            }
        }
    }
    let sources = [dir.join("src"), dir.join("Cargo.toml")];
    let (changed, changes) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| {
            event.kind.is_create() || event.kind.is_modify() || event.kind.is_remove()
        }) {
            let _ = changed.send(());
        }
    })
    .context("cannot watch the sources")?;
    for source in &sources {
        watcher
            .watch(source, RecursiveMode::Recursive)
            .with_context(|| format!("cannot watch {}", source.display()))?;
    }
    let rebuilding = dir.clone();
    std::thread::spawn(move || rebuild_on_change(&rebuilding, &changes));
    println!("courier dev: watching {} for changes", display(&sources));
    options.watch = true;
    let code = run::run(&manifest, options);
    drop(watcher);
    code
}

/// Build after every burst of changes, once the sources have been quiet for [`QUIET`].
fn rebuild_on_change(dir: &Path, changes: &mpsc::Receiver<()>) {
    while changes.recv().is_ok() {
        while changes.recv_timeout(QUIET).is_ok() {}
        build(dir);
    }
}

/// The components among cargo's JSON messages: the `.wasm` files of `cdylib` artifacts.
fn wasm_artifacts(message: &serde_json::Value) -> Vec<PathBuf> {
    let is_cdylib = message["target"]["kind"]
        .as_array()
        .is_some_and(|kinds| kinds.iter().any(|kind| kind == "cdylib"));
    if message["reason"] != "compiler-artifact" || !is_cdylib {
        return Vec::new();
    }
    message["filenames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|file| file.as_str())
        .filter(|file| file.ends_with(".wasm"))
        .map(PathBuf::from)
        .collect()
}

/// `cargo build --release --target wasm32-wasip2` in `dir`, its diagnostics and progress on
/// the terminal; the components it built, where cargo put them, if it succeeded.
fn build(dir: &Path) -> Option<Vec<PathBuf>> {
    println!("courier dev: building {}", dir.display());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let child = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => {
            println!("courier dev: cannot run cargo: {err}");
            return None;
        }
    };
    let mut artifacts = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            // A build script may print what it likes: what is not cargo's JSON is passed on.
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(message) => artifacts.extend(wasm_artifacts(&message)),
                Err(_) => println!("{line}"),
            }
        }
    }
    match child.wait() {
        Ok(status) if status.success() => {
            println!("courier dev: built");
            Some(artifacts)
        }
        Ok(status) => {
            println!("courier dev: the build failed ({status}); the running version keeps serving");
            None
        }
        Err(err) => {
            println!("courier dev: cannot run cargo: {err}");
            None
        }
    }
}

fn display(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(" and ")
}
