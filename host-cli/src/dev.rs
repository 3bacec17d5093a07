//! `courier dev [PATH]`: the edit-build-run loop of a component crate (one `courier new`
//! made). It builds the crate for `wasm32-wasip2`, runs it with its `courier.toml` as
//! `courier run --watch` does, and rebuilds whenever a source changes; the rebuilt
//! component is then upgraded in place by the watch. A build that fails is printed, and the
//! running version keeps serving.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
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
    if !build(&dir) {
        anyhow::bail!("the first build failed: nothing to run");
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

/// `cargo build --release --target wasm32-wasip2` in `dir`, its output on the terminal;
/// whether it succeeded.
fn build(dir: &Path) -> bool {
    println!("courier dev: building {}", dir.display());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(dir)
        .status();
    match status {
        Ok(status) if status.success() => {
            println!("courier dev: built");
            true
        }
        Ok(status) => {
            println!("courier dev: the build failed ({status}); the running version keeps serving");
            false
        }
        Err(err) => {
            println!("courier dev: cannot run cargo: {err}");
            false
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
