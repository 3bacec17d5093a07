//! Building the engine and loading (compiling, checking, linking) the manifest's components,
//! with a progress line on a terminal and the time each component took.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use courier_host_core::{Allocation, Component, Engine};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::diagnostics::Problem;
use crate::manifest::Manifest;
use crate::units::format_duration;

/// Build the engine the manifest asks for (pooling allocator, code cache), saying which
/// allocator it got and where the cache is.
pub fn engine(manifest: &Manifest) -> Result<Engine, Problem> {
    let config = manifest.engine_config();
    let engine = Engine::new(config).map_err(|err| Problem::new(err.to_string()))?;
    let allocation = match engine.allocation() {
        Allocation::Pooling => "pooling",
        Allocation::OnDemand => "on-demand",
    };
    println!(
        "courier: engine ready ({allocation} allocation, code cache in {})",
        manifest.runtime.cache_dir.display()
    );
    Ok(engine)
}

/// Load every component of the manifest, in order. Compiled code found in the cache is
/// reused, so a second start skips compilation. Prints one line per component with the time
/// it took; a component that fails to load is a problem on the line of its `path`.
pub fn components(engine: &Engine, manifest: &Manifest) -> Result<Vec<Component>, Vec<Problem>> {
    let entries = &manifest.components;
    let progress = progress_bar(entries.len() as u64);
    let started = Instant::now();
    let mut loaded = Vec::with_capacity(entries.len());
    let mut problems = Vec::new();
    for entry in entries {
        progress.set_message(entry.id.clone());
        let start = Instant::now();
        let result = engine.load_component_file(&entry.id, &entry.path);
        let elapsed = start.elapsed();
        progress.inc(1);
        match result {
            Ok(component) => {
                progress.suspend(|| {
                    println!(
                        "courier: loaded {} in {} ({})",
                        entry.id,
                        format_duration(elapsed),
                        entry.path.display()
                    )
                });
                loaded.push(component);
            }
            Err(err) => problems.push(
                Problem::new(err.to_string())
                    .line(entry.path_line)
                    .field("path"),
            ),
        }
    }
    progress.finish_and_clear();
    if problems.is_empty() {
        println!(
            "courier: {} components ready in {}",
            loaded.len(),
            format_duration(started.elapsed())
        );
        Ok(loaded)
    } else {
        Err(problems)
    }
}

/// A progress line on stderr while components compile; drawn only when stderr is a terminal,
/// so logs and test output stay clean.
fn progress_bar(len: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let style = ProgressStyle::with_template("{spinner} loading {msg} [{pos}/{len}] {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let progress = ProgressBar::with_draw_target(Some(len), target).with_style(style);
    // Compiling one component is a single call, so the spinner moves on a timer.
    progress.enable_steady_tick(Duration::from_millis(100));
    progress
}
