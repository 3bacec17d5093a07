//! `courier run --watch`: a component whose `.wasm` file changes is upgraded in place
//! (`Broker::upgrade`), with no message lost, and each upgrade is logged with its duration.
//!
//! The folders that hold the files are watched, not the files: a build replaces a file
//! (cargo removes and links it anew), which a watch on the old file would miss. A path that
//! is a symbolic link is followed: the folder of the file it leads to is watched too, since
//! that is where a rebuild writes. Events come in bursts while a file is written, so a change
//! is acted on once the file has been quiet for [`QUIET`].
//!
//! A watch on a folder ends when the folder is removed (`cargo clean`), and a symbolic link
//! may be pointed elsewhere, so every [`REFRESH`] the watch looks again: it watches the
//! folders as they now are, and takes a file whose size, time or inode changed as changed,
//! which also catches what no event reported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use courier_host_broker::Broker;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{Semaphore, mpsc};

/// How long a changed file must stay unchanged before it is loaded.
pub const QUIET: Duration = Duration::from_millis(300);

/// How often the watched folders and files are looked at again.
pub const REFRESH: Duration = Duration::from_secs(1);

/// What keeps the watch going; dropping it stops it.
pub struct Watch {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watch the files of `components` (id and `.wasm` path) and upgrade each component on
/// `broker` when its file changes, compiling with one of the `compiles` permits. Must be
/// called within a tokio runtime.
pub fn watch(
    broker: Broker,
    components: &[(String, PathBuf)],
    compiles: Arc<Semaphore>,
) -> notify::Result<Watch> {
    let files: HashMap<PathBuf, Vec<String>> =
        components
            .iter()
            .fold(HashMap::new(), |mut files, (id, path)| {
                files.entry(path.clone()).or_default().push(id.clone());
                files
            });
    // Bounded: a burst beyond it is the same change many times over, and the first ones
    // already say which files changed (and the next refresh sees the rest).
    let (changed, mut changes) = mpsc::channel::<PathBuf>(1024);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && (event.kind.is_create() || event.kind.is_modify())
        {
            for path in event.paths {
                let _ = changed.try_send(path);
            }
        }
    })?;
    let mut folders = Folders {
        watcher,
        watched: HashMap::new(),
        aliases: HashMap::new(),
        seen: HashMap::new(),
    };
    let paths: Vec<PathBuf> = files.keys().cloned().collect();
    folders.refresh(&paths)?;
    let task = tokio::spawn(async move {
        let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wait = pending
                .values()
                .map(|at| (*at + QUIET).saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or(REFRESH);
            tokio::select! {
                change = changes.recv() => match change {
                    Some(path) => {
                        if let Some(file) = folders.aliases.get(&path) {
                            pending.insert(file.clone(), Instant::now());
                        }
                    }
                    None => return,
                },
                _ = refresh.tick() => {
                    // A folder that cannot be watched now may be made again later.
                    let _ = folders.refresh(&paths);
                    for file in folders.changed(&paths) {
                        pending.insert(file, Instant::now());
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
            let quiet: Vec<PathBuf> = pending
                .iter()
                .filter(|(_, at)| at.elapsed() >= QUIET)
                .map(|(path, _)| path.clone())
                .collect();
            for path in quiet {
                pending.remove(&path);
                for id in &files[&path] {
                    upgrade_from(&broker, id, &path, &compiles).await;
                }
            }
        }
    });
    Ok(Watch { task })
}

/// The folders watched, as they were when last looked at.
struct Folders {
    watcher: notify::RecommendedWatcher,
    /// Each watched folder and the identity (device, inode) it had when its watch began:
    /// a folder removed and made again is another one, which needs a watch of its own.
    watched: HashMap<PathBuf, (u64, u64)>,
    /// The paths an event may name for a component file (its own, and the file a symbolic
    /// link leads to), each to the file as the manifest names it.
    aliases: HashMap<PathBuf, PathBuf>,
    /// Each file's size, time and identity when last looked at.
    seen: HashMap<PathBuf, Option<Fingerprint>>,
}

impl Folders {
    /// Watch the folders of `files` and of the files their links lead to, as they are now.
    fn refresh(&mut self, files: &[PathBuf]) -> notify::Result<()> {
        let mut wanted: Vec<PathBuf> = Vec::new();
        self.aliases.clear();
        for file in files {
            self.aliases.insert(file.clone(), file.clone());
            wanted.extend(file.parent().map(Path::to_path_buf));
            if let Ok(real) = file.canonicalize() {
                wanted.extend(real.parent().map(Path::to_path_buf));
                self.aliases.insert(real, file.clone());
            }
            self.seen
                .entry(file.clone())
                .or_insert_with(|| fingerprint(file));
        }
        let mut result = Ok(());
        for folder in wanted {
            let identity = std::fs::metadata(&folder).ok().map(|meta| identity(&meta));
            let current = self.watched.get(&folder).copied();
            if identity == current {
                continue;
            }
            if current.is_some() {
                let _ = self.watcher.unwatch(&folder);
                self.watched.remove(&folder);
            }
            if let Some(identity) = identity {
                match self.watcher.watch(&folder, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        self.watched.insert(folder, identity);
                    }
                    Err(err) => result = Err(err),
                }
            }
        }
        result
    }

    /// The files whose fingerprint changed since they were last looked at, and that exist.
    fn changed(&mut self, files: &[PathBuf]) -> Vec<PathBuf> {
        files
            .iter()
            .filter(|file| {
                let now = fingerprint(file);
                let before = self.seen.insert((*file).clone(), now);
                now.is_some() && before != Some(now)
            })
            .cloned()
            .collect()
    }
}

/// What tells one version of a file from another without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    identity: (u64, u64),
}

/// The file's fingerprint, following links; `None` if there is no file.
fn fingerprint(file: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(file).ok()?;
    Some(Fingerprint {
        len: meta.len(),
        modified: meta.modified().ok(),
        identity: identity(&meta),
    })
}

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn identity(_meta: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// Load `path` and upgrade `id` to it, saying what happened; a file whose version already
/// runs (touched, not changed) is left alone.
async fn upgrade_from(broker: &Broker, id: &str, path: &Path, compiles: &Arc<Semaphore>) {
    let Ok(slot) = compiles.clone().acquire_owned().await else {
        return;
    };
    let started = Instant::now();
    let engine = broker.engine().clone();
    let (name, file) = (id.to_string(), path.to_path_buf());
    let loaded = tokio::task::spawn_blocking(move || {
        let loaded = engine.load_component_file(&name, &file);
        drop(slot);
        loaded
    })
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
