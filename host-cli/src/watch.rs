//! `courier run --watch`: a component whose `.wasm` file changes is upgraded in place
//! (`Broker::upgrade`), with no message lost, and each upgrade is logged with its duration.
//!
//! The folders that hold the files are watched, not the files: a build replaces a file
//! (cargo removes and links it anew), which a watch on the old file would miss. Events come
//! in bursts while a file is written, so a change is acted on once the file has been quiet
//! for [`QUIET`].

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use courier_host_broker::Broker;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long a changed file must stay unchanged before it is loaded.
pub const QUIET: Duration = Duration::from_millis(300);

/// What keeps the watch going; dropping it stops it.
pub struct Watch {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watch the files of `components` (id and `.wasm` path) and upgrade each component on
/// `broker` when its file changes. Must be called within a tokio runtime.
pub fn watch(broker: Broker, components: &[(String, PathBuf)]) -> notify::Result<Watch> {
    let files: HashMap<PathBuf, Vec<String>> =
        components
            .iter()
            .fold(HashMap::new(), |mut files, (id, path)| {
                files.entry(path.clone()).or_default().push(id.clone());
                files
            });
    // Bounded: a burst beyond it is the same change many times over, and the first ones
    // already say which files changed.
    let (changed, mut changes) = mpsc::channel::<PathBuf>(1024);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && (event.kind.is_create() || event.kind.is_modify())
        {
            for path in event.paths {
                let _ = changed.try_send(path);
            }
        }
    })?;
    let folders: BTreeSet<&Path> = files.keys().filter_map(|path| path.parent()).collect();
    for folder in folders {
        watcher.watch(folder, RecursiveMode::NonRecursive)?;
    }
    let task = tokio::spawn(async move {
        let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
        loop {
            let wait = pending
                .values()
                .map(|at| (*at + QUIET).saturating_duration_since(Instant::now()))
                .min();
            let next = match wait {
                Some(wait) => tokio::time::timeout(wait, changes.recv()).await.ok(),
                None => Some(changes.recv().await),
            };
            match next {
                Some(Some(path)) if files.contains_key(&path) => {
                    pending.insert(path, Instant::now());
                }
                Some(Some(_)) => {}
                Some(None) => return,
                None => {}
            }
            let quiet: Vec<PathBuf> = pending
                .iter()
                .filter(|(_, at)| at.elapsed() >= QUIET)
                .map(|(path, _)| path.clone())
                .collect();
            for path in quiet {
                pending.remove(&path);
                for id in &files[&path] {
                    upgrade_from(&broker, id, &path).await;
                }
            }
        }
    });
    Ok(Watch {
        _watcher: watcher,
        task,
    })
}

/// Load `path` and upgrade `id` to it, saying what happened; a file whose version already
/// runs (touched, not changed) is left alone.
async fn upgrade_from(broker: &Broker, id: &str, path: &Path) {
    let started = Instant::now();
    let engine = broker.engine().clone();
    let (name, file) = (id.to_string(), path.to_path_buf());
    let loaded = tokio::task::spawn_blocking(move || engine.load_component_file(&name, &file))
        .await
        .map_err(|err| err.to_string())
        .and_then(|loaded| loaded.map_err(|err| err.to_string()));
    let component = match loaded {
        Ok(component) => component,
        Err(err) => {
            eprintln!("courier: `{id}` not upgraded: {err}");
            return;
        }
    };
    if broker
        .metrics(id)
        .is_some_and(|m| m.version == component.version())
    {
        return;
    }
    match broker.upgrade(id, component).await {
        Ok(upgraded) => println!(
            "courier: upgraded `{id}` from {} to {} in {} ({} moved)",
            upgraded.previous,
            upgraded.version,
            crate::units::format_duration(started.elapsed()),
            match upgraded.state_bytes {
                Some(bytes) => crate::units::format_bytes(bytes as u64),
                None => "no state".into(),
            }
        ),
        Err(err) => eprintln!("courier: {err}; the running version stays"),
    }
}
