//! The manifest, `courier.toml`: which components to run, what each may do, its limits and
//! its supervision, and the runtime's own settings.
//!
//! ```toml
//! [runtime]
//! listen = "127.0.0.1:8080"      # the HTTP ingress; loopback addresses only
//! max_payload = "4 MiB"          # largest message, request or reply
//! cache_dir = "/var/cache/courier"   # compiled code (default: the platform's cache folder)
//! drain = "5s"                   # how long shutdown waits for mailboxes to empty
//! request_timeout = "5s"         # default wait for a reply to an HTTP request
//! scheduler = "multi-thread"     # or "current-thread": every actor on one thread
//! data_dir = "/var/lib/courier"  # the store of durable components (default: `.courier-data`
//!                                # beside this file; opened only if a component is durable)
//! token = "..."                  # bearer token the ingress asks for (or COURIER_TOKEN;
//!                                # without one, restarts and upgrades ask for one made per run)
//!
//! [lattice]                      # optional: join other hosts over NATS
//! name = "shop"                  # the lattice (one subject prefix per lattice)
//! host = "eu-1"                  # this host's name in it
//! servers = ["nats://127.0.0.1:4222"]
//! token = "..."                  # or user + password, or credentials = "host.creds"
//!                                # (COURIER_LATTICE_TOKEN in the environment takes precedence)
//! durable_retention = "24h"      # how long a durable component's message to another host
//!                                # is tried before it is dead-lettered (default 24 hours)
//!
//! [telemetry]                    # optional: export a span per handler call over OTLP
//! endpoint = "http://127.0.0.1:4318"   # OTLP/HTTP base URL; spans go to <endpoint>/v1/traces
//! sampling = 0.1                 # share of the traces this host starts that are recorded
//!                                # (0.0 to 1.0, default 1.0); without the section, nothing
//!                                # is recorded or exported
//!
//! [[component]]
//! id = "ping"
//! path = "../target/guests/ping.wasm"   # relative to this file
//! capabilities = { send = ["pong"] }    # also request, publish, subscribe
//! limits = { memory = "16 MiB", deadline = "100ms", mailbox = 64, mailbox_bytes = "8 MiB" }
//!                                       # also `timers = 64`: timers pending at once; 0 turns them off
//! restart = { policy = "transient", max_restarts = 3, window = "10s" }
//! expose = true                         # reachable from other hosts of the lattice
//! durable = true                        # messages stored before they are accepted, state
//!                                       # committed per batch, both recovered at start
//!
//! [[component]]
//! id = "cart"                           # keyed: `cart/<key>` reaches that key's instance,
//! path = "../target/guests/counter.wasm"  # made on its first message
//! keyed = true
//! limits = { idle = "5m", max_active = 1000 }   # put away after 5 minutes without a
//!                                       # message, or least recently used beyond 1000
//! replicas = true                       # on a lattice: each key on one of the hosts that
//!                                       # serve `cart`, chosen by rendezvous hashing
//! ```
//!
//! [`Manifest::parse`] reads and checks it in two steps. The first is serde's: a TOML
//! syntax error, an unknown field (`deny_unknown_fields` everywhere), a value of the wrong
//! type, size or duration stops it with one problem. The second looks at what the values
//! mean and reports every problem it finds: an invalid or repeated id, a missing file, a
//! pattern that would not match what its author meant, a limit that makes no sense. Each
//! problem carries its line and names its field.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use courier_host_broker::Exposure;
use courier_host_broker::{
    BrokerConfig, Capabilities, ComponentSpec, DEFAULT_MAILBOX_BYTES, DEFAULT_MAILBOX_CAPACITY,
    DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_QUEUED_BYTES, DEFAULT_MAX_TIMERS, Keying,
    MAX_MAILBOX_CAPACITY, MIN_IDLE, Pattern, RestartPolicy, Supervision, check_id,
};
use courier_host_core::{Component, DEFAULT_DEADLINE, EngineConfig};
use courier_host_lattice::{Auth, LatticeConfig};
use serde::Deserialize;
use toml::Spanned;

use crate::diagnostics::{Diagnostics, Problem, from_toml_error, line_of};
use crate::telemetry::TelemetryConfig;
use crate::units::{ByteSize, Millis, format_bytes};

/// Where the ingress listens unless the manifest or `--listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Where compiled code is cached unless the manifest says otherwise: `courier` in the
/// platform's cache folder (`$XDG_CACHE_HOME` or `~/.cache` on Linux), or in the temporary
/// folder where there is none.
///
/// Never the manifest's own folder: wasmtime runs the native code it finds in the cache
/// unchecked, so a cache shipped beside a manifest (in a repository, say) would run code in
/// the host. The engine refuses a cache folder another user owns or everyone can write.
pub fn default_cache_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("courier")
}
/// How long shutdown waits for mailboxes to empty: long enough for ordinary backlogs, short
/// enough that a stop request is honoured promptly.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);
/// How long an HTTP request waits for its reply unless it says `?timeout_ms=`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The smallest memory cap that makes sense: one WebAssembly page.
const MIN_MEMORY: u64 = 64 << 10;

/// A checked manifest: every path resolved, every value within bounds.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest file, as it was named.
    pub file: PathBuf,
    /// Settings of the runtime as a whole.
    pub runtime: Runtime,
    /// The components, in the order declared.
    pub components: Vec<ComponentEntry>,
    /// The lattice this host joins, if the manifest has a `[lattice]` table.
    pub lattice: Option<LatticeConfig>,
    /// Where spans are exported, if the manifest has a `[telemetry]` table.
    pub telemetry: Option<TelemetryConfig>,
    /// How long a durable component's message to another host is tried before it is
    /// dead-lettered: `lattice.durable_retention`, else the broker's default (24 hours).
    pub remote_retention: Duration,
}

/// The `[runtime]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// Address of the HTTP ingress.
    pub listen: SocketAddr,
    /// Largest payload of a message, request or reply, in bytes.
    pub max_payload: usize,
    /// Most payload bytes queued in all mailboxes together.
    pub max_queued: u64,
    /// Where compiled components are cached (absolute).
    pub cache_dir: PathBuf,
    /// How long shutdown waits for mailboxes to empty.
    pub drain: Duration,
    /// How long an HTTP request waits for its reply by default.
    pub request_timeout: Duration,
    /// Which tokio scheduler runs the actors and the ingress.
    pub scheduler: Scheduler,
    /// The bearer token the ingress asks for on every route but `/metrics` and the
    /// dashboard's assets, if any (`COURIER_TOKEN` in the environment takes precedence).
    pub token: Option<Token>,
    /// Where the store of durable components is kept (absolute): `.courier-data` beside the
    /// manifest unless it says otherwise. Opened only when a component is durable.
    pub data_dir: PathBuf,
}

/// The folder beside the manifest where durable components are kept unless
/// `runtime.data_dir` or `--data-dir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = ".courier-data";

/// A secret that is never printed: its `Debug` shows that it is there, not what it is.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// `runtime.scheduler`: how the actors are spread over threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    /// tokio's multi-threaded runtime, a worker per core: actors use every core. The default.
    #[default]
    MultiThread,
    /// One thread for everything: no message or reply crosses between cores, so a request
    /// between components is about a third quicker on two cores (`benches/README.md`), but
    /// only one core runs wasm.
    CurrentThread,
}

impl Scheduler {
    /// The name it is written with in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::MultiThread => "multi-thread",
            Scheduler::CurrentThread => "current-thread",
        }
    }
}

/// One `[[component]]` table.
#[derive(Debug, Clone)]
pub struct ComponentEntry {
    /// The id it is reached by and sends as.
    pub id: String,
    /// The `.wasm` file (absolute).
    pub path: PathBuf,
    /// The line of its `path` field, where problems with the file are reported.
    pub path_line: usize,
    /// Whom it may reach and what it hears, every pattern checked.
    pub capabilities: Capabilities,
    /// Its mailbox capacity.
    pub mailbox: usize,
    /// Most payload bytes its mailbox holds.
    pub mailbox_bytes: u64,
    /// How long one handler call may run.
    pub deadline: Duration,
    /// Cap on its linear memory, in bytes.
    pub memory: Option<usize>,
    /// Fuel per handler call.
    pub fuel: Option<u64>,
    /// Timers it may have pending at once; 0 turns its timers off.
    pub timers: u32,
    /// What happens when its instance traps or exits.
    pub supervision: Supervision,
    /// Whether other hosts of the lattice may reach it (`expose`, `replicas`).
    pub exposure: Exposure,
    /// Whether it is kept in the store under `runtime.data_dir` (`durable`).
    pub durable: bool,
    /// How its keys come and go, if it is keyed (`keyed`, `limits.idle`,
    /// `limits.max_active`).
    pub keyed: Option<Keying>,
}

impl ComponentEntry {
    /// The broker spec of this component, once it is loaded.
    pub fn spec(&self, component: Component) -> ComponentSpec {
        let mut spec = ComponentSpec::new(self.id.as_str(), component)
            .capabilities(self.capabilities.clone())
            .mailbox_capacity(self.mailbox)
            .mailbox_bytes(self.mailbox_bytes)
            .deadline(self.deadline)
            .supervision(self.supervision)
            .expose(self.exposure)
            .max_timers(self.timers)
            .durable(self.durable);
        if let Some(keying) = self.keyed {
            spec = spec.keyed(keying);
        }
        if let Some(memory) = self.memory {
            spec = spec.memory_limit(memory);
        }
        if let Some(fuel) = self.fuel {
            spec = spec.fuel(fuel);
        }
        spec
    }
}

impl Manifest {
    /// The order to start the components in, as indexes into `components`: each after the
    /// components it may send to or request from, otherwise in the manifest's order.
    ///
    /// A durable component handles the messages it recovers as soon as it starts, and a
    /// send to an id that has not started yet is refused at the call, so its targets must
    /// start first. Components that reach each other in a cycle start in the manifest's
    /// order: the first of them listed starts before the others.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let file = dir.path().join("courier.toml");
    /// # std::fs::write(dir.path().join("c.wasm"), b"").unwrap();
    /// use courier_cli::manifest::Manifest;
    ///
    /// let manifest = Manifest::parse(
    ///     r#"
    /// [[component]]
    /// id = "ping"
    /// path = "c.wasm"
    /// capabilities = { send = ["pong"] }
    ///
    /// [[component]]
    /// id = "pong"
    /// path = "c.wasm"
    /// "#,
    ///     &file,
    /// )
    /// .unwrap();
    /// assert_eq!(manifest.start_order(), [1, 0]);
    /// ```
    pub fn start_order(&self) -> Vec<usize> {
        let components = &self.components;
        // Whether `from` may reach `to`: its id, or one of its keys when it is keyed.
        let reaches = |from: &ComponentEntry, to: &ComponentEntry| {
            let caps = &from.capabilities;
            let key = format!("{}/key", to.id);
            let reach = |id: &str| caps.may_send(id) || caps.may_request(id);
            from.id != to.id && (reach(&to.id) || (to.keyed.is_some() && reach(&key)))
        };
        let mut started = vec![false; components.len()];
        let mut order = Vec::with_capacity(components.len());
        while order.len() < components.len() {
            let waiting = |i: usize| !started[i];
            let ready = (0..components.len()).filter(|&i| waiting(i)).find(|&i| {
                (0..components.len())
                    .filter(|&j| waiting(j))
                    .all(|j| !reaches(&components[i], &components[j]))
            });
            // In a cycle no one is ready: the first listed goes.
            let next =
                ready.unwrap_or_else(|| (0..components.len()).find(|&i| waiting(i)).unwrap());
            started[next] = true;
            order.push(next);
        }
        order
    }

    /// Read and check the manifest at `file`.
    pub fn load(file: &Path) -> Result<Manifest, Diagnostics> {
        match Manifest::load_lenient(file) {
            (Some(manifest), diagnostics) if diagnostics.is_empty() => Ok(manifest),
            (_, diagnostics) => Err(diagnostics),
        }
    }

    /// Check the manifest text `source`, read from `file` (relative paths in it are taken
    /// from `file`'s folder).
    pub fn parse(source: &str, file: &Path) -> Result<Manifest, Diagnostics> {
        match Manifest::parse_lenient(source, file) {
            (Some(manifest), diagnostics) if diagnostics.is_empty() => Ok(manifest),
            (_, diagnostics) => Err(diagnostics),
        }
    }

    /// Like [`Manifest::load`], but keeps what it can: unless the file cannot be read or
    /// deserialized at all, the manifest comes back with the components that have no
    /// problems, beside every problem found, so that `courier check` can go on to check
    /// those components too.
    pub fn load_lenient(file: &Path) -> (Option<Manifest>, Diagnostics) {
        Manifest::load_lenient_redirected(file, &HashMap::new())
    }

    /// Like [`Manifest::load`], but a component path that resolves to a key of `redirects`
    /// is read at its value instead: `courier dev` points the path `courier new` wrote
    /// (`target/wasm32-wasip2/release/NAME.wasm`) at wherever cargo put the artifact.
    pub fn load_redirected(
        file: &Path,
        redirects: &HashMap<PathBuf, PathBuf>,
    ) -> Result<Manifest, Diagnostics> {
        match Manifest::load_lenient_redirected(file, redirects) {
            (Some(manifest), diagnostics) if diagnostics.is_empty() => Ok(manifest),
            (_, diagnostics) => Err(diagnostics),
        }
    }

    fn load_lenient_redirected(
        file: &Path,
        redirects: &HashMap<PathBuf, PathBuf>,
    ) -> (Option<Manifest>, Diagnostics) {
        match std::fs::read_to_string(file) {
            Ok(text) => Manifest::parse_redirected(&text, file, redirects),
            Err(err) => {
                let mut diagnostics = Diagnostics::new(file);
                diagnostics.push(Problem::new(format!("cannot read the manifest: {err}")));
                (None, diagnostics)
            }
        }
    }

    /// Like [`Manifest::parse`], but keeps what it can, as [`Manifest::load_lenient`] does.
    pub fn parse_lenient(source: &str, file: &Path) -> (Option<Manifest>, Diagnostics) {
        Manifest::parse_redirected(source, file, &HashMap::new())
    }

    fn parse_redirected(
        source: &str,
        file: &Path,
        redirects: &HashMap<PathBuf, PathBuf>,
    ) -> (Option<Manifest>, Diagnostics) {
        let mut diagnostics = Diagnostics::new(file);
        let raw: RawManifest = match toml::from_str(source) {
            Ok(raw) => raw,
            Err(err) => {
                diagnostics.push(from_toml_error(source, &err));
                return (None, diagnostics);
            }
        };
        let dir = manifest_dir(file);
        let mut check = Checker {
            source,
            diagnostics,
            redirects,
        };
        let runtime = check.runtime(raw.runtime, &dir);
        let mut components: Vec<ComponentEntry> = Vec::new();
        let mut seen: Vec<(String, usize)> = Vec::new();
        for raw in &raw.component {
            let raw = raw.get_ref();
            let entry = check.component(raw, &dir);
            let id = raw.id.get_ref();
            let line = check.line(&raw.id);
            if let Some((_, first)) = seen.iter().find(|(seen, _)| seen == id) {
                let msg =
                    format!("id `{id}` is already used by the component declared at line {first}");
                check.problem(&raw.id, Some(id), "id", msg);
            } else {
                seen.push((id.clone(), line));
                components.extend(entry);
            }
        }
        if raw.component.is_empty() {
            check.diagnostics.push(Problem::new(
                "the manifest declares no components: add a `[[component]]` table with an `id` and a `path`",
            ));
        }
        let remote_retention = raw
            .lattice
            .as_ref()
            .and_then(|lattice| lattice.get_ref().durable_retention)
            .map_or(courier_host_broker::DEFAULT_REMOTE_RETENTION, |d| d.0);
        let lattice = raw.lattice.and_then(|raw| check.lattice(raw, &dir));
        let telemetry = raw.telemetry.and_then(|raw| check.telemetry(raw));
        let manifest = Manifest {
            file: file.to_path_buf(),
            runtime,
            components,
            lattice,
            telemetry,
            remote_retention,
        };
        (Some(manifest), check.diagnostics)
    }

    /// The engine configuration the components need: the pooling default, the code cache,
    /// fuel metering if any component has a fuel budget, and room for the largest memory cap.
    pub fn engine_config(&self) -> EngineConfig {
        let defaults = EngineConfig::default();
        let largest_memory = self
            .components
            .iter()
            .filter_map(|c| c.memory)
            .max()
            .unwrap_or(0);
        defaults
            .clone()
            .cache_dir(&self.runtime.cache_dir)
            .fuel(self.components.iter().any(|c| c.fuel.is_some()))
            .max_memory_bytes(defaults.get_max_memory_bytes().max(largest_memory))
    }

    /// The broker configuration: the payload limit.
    pub fn broker_config(&self) -> BrokerConfig {
        BrokerConfig::default()
            .max_payload_bytes(self.runtime.max_payload)
            .max_queued_bytes(self.runtime.max_queued)
            .remote_retention(self.remote_retention)
    }
}

/// The folder relative paths are taken from: the manifest's own.
fn manifest_dir(file: &Path) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new(""));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Joins `path` to `dir` unless it is absolute, and drops `.` and `..` where it can, so that
/// messages show the path a person would write.
fn resolve(dir: &Path, path: &Path) -> PathBuf {
    let joined = dir.join(path);
    let mut clean = PathBuf::new();
    for part in joined.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !clean.pop() {
                    clean.push("..");
                }
            }
            other => clean.push(other),
        }
    }
    clean
}

struct Checker<'a> {
    source: &'a str,
    diagnostics: Diagnostics,
    redirects: &'a HashMap<PathBuf, PathBuf>,
}

impl Checker<'_> {
    fn line<T>(&self, spanned: &Spanned<T>) -> usize {
        line_of(self.source, spanned.span().start)
    }

    fn problem<T>(&mut self, at: &Spanned<T>, component: Option<&str>, field: &str, msg: String) {
        let mut problem = Problem::new(msg).line(self.line(at)).field(field);
        if let Some(id) = component {
            problem = problem.component(id);
        }
        self.diagnostics.push(problem);
    }

    fn runtime(&mut self, raw: RawRuntime, dir: &Path) -> Runtime {
        let listen = match raw.listen {
            Some(listen) => {
                if let Err(reason) = check_listen(*listen.get_ref()) {
                    self.problem(&listen, None, "runtime.listen", reason);
                }
                listen.into_inner()
            }
            None => DEFAULT_LISTEN.parse().expect("the default address parses"),
        };
        let max_payload = match raw.max_payload {
            Some(size) => match usize::try_from(size.get_ref().0) {
                Ok(0) | Err(_) => {
                    let msg = format!(
                        "the payload limit must be between 1 byte and {}",
                        format_bytes(usize::MAX as u64)
                    );
                    self.problem(&size, None, "runtime.max_payload", msg);
                    DEFAULT_MAX_PAYLOAD_BYTES
                }
                Ok(bytes) => bytes,
            },
            None => DEFAULT_MAX_PAYLOAD_BYTES,
        };
        let cache_dir = match raw.cache_dir.as_deref() {
            Some(cache_dir) => resolve(dir, cache_dir),
            None => default_cache_dir(),
        };
        let request_timeout = match raw.request_timeout {
            Some(timeout) if timeout.get_ref().0.is_zero() => {
                let msg = "a request timeout of zero would fail every request".to_string();
                self.problem(&timeout, None, "runtime.request_timeout", msg);
                DEFAULT_REQUEST_TIMEOUT
            }
            Some(timeout) => timeout.into_inner().0,
            None => DEFAULT_REQUEST_TIMEOUT,
        };
        let scheduler = raw.scheduler.unwrap_or_default();
        Runtime {
            listen,
            max_payload,
            max_queued: raw
                .max_queued
                .map_or(DEFAULT_MAX_QUEUED_BYTES, |bytes| bytes.0),
            cache_dir,
            drain: raw.drain.map_or(DEFAULT_DRAIN, |d| d.0),
            request_timeout,
            scheduler,
            token: raw.token.filter(|token| !token.is_empty()).map(Token),
            data_dir: resolve(
                dir,
                raw.data_dir
                    .as_deref()
                    .unwrap_or(Path::new(DEFAULT_DATA_DIR)),
            ),
        }
    }

    fn component(&mut self, raw: &RawComponent, dir: &Path) -> Option<ComponentEntry> {
        let before = self.diagnostics.problems.len();
        let id = raw.id.get_ref().as_str();
        if let Err(reason) = check_id(id) {
            let msg = format!("`{id}` is not a valid component id: {reason}");
            self.problem(&raw.id, Some(id), "id", msg);
        }

        let path = resolve(dir, raw.path.get_ref());
        let path = self.redirects.get(&path).cloned().unwrap_or(path);
        if !path.is_file() {
            let mut msg = if path.exists() {
                format!("{} is not a file", path.display())
            } else {
                format!("no file at {}", path.display())
            };
            if path.to_string_lossy().contains("target/guests") {
                msg.push_str(" (run `cargo xtask build-guests` to build the example components)");
            }
            self.problem(&raw.path, Some(id), "path", msg);
        }

        let caps = &raw.capabilities;
        let mut capabilities = Capabilities::none();
        type Allow = fn(Capabilities, Pattern) -> Capabilities;
        let lists: [(&str, &[Spanned<String>], Allow); 4] = [
            ("capabilities.send", &caps.send, Capabilities::allow_send),
            (
                "capabilities.request",
                &caps.request,
                Capabilities::allow_request,
            ),
            (
                "capabilities.publish",
                &caps.publish,
                Capabilities::allow_publish,
            ),
            (
                "capabilities.subscribe",
                &caps.subscribe,
                Capabilities::subscribe,
            ),
        ];
        for (field, patterns, allow) in lists {
            for pattern in patterns {
                match Pattern::try_parse(pattern.get_ref()) {
                    Ok(parsed) => capabilities = allow(capabilities, parsed),
                    Err(err) => self.problem(pattern, Some(id), field, err.to_string()),
                }
            }
        }

        let limits = &raw.limits;
        let mailbox = match &limits.mailbox {
            Some(mailbox) if *mailbox.get_ref() == 0 => {
                let msg = "a mailbox must hold at least one message".to_string();
                self.problem(mailbox, Some(id), "limits.mailbox", msg);
                0
            }
            Some(mailbox) if *mailbox.get_ref() > MAX_MAILBOX_CAPACITY as u64 => {
                let msg = format!(
                    "a mailbox of {} messages is over the most a mailbox may hold, {MAX_MAILBOX_CAPACITY}",
                    mailbox.get_ref()
                );
                self.problem(mailbox, Some(id), "limits.mailbox", msg);
                0
            }
            Some(mailbox) => usize::try_from(*mailbox.get_ref()).unwrap_or(MAX_MAILBOX_CAPACITY),
            None => DEFAULT_MAILBOX_CAPACITY,
        };
        let deadline = match &limits.deadline {
            Some(deadline) if deadline.get_ref().0.is_zero() => {
                let msg = "a deadline of zero would interrupt every handler".to_string();
                self.problem(deadline, Some(id), "limits.deadline", msg);
                DEFAULT_DEADLINE
            }
            Some(deadline) => deadline.get_ref().0,
            None => DEFAULT_DEADLINE,
        };
        let memory = match &limits.memory {
            Some(memory) => {
                let bytes = memory.get_ref().0;
                match usize::try_from(bytes) {
                    Ok(bytes) if bytes as u64 >= MIN_MEMORY => Some(bytes),
                    _ => {
                        let msg = format!(
                            "a memory cap of {} is below one WebAssembly page (64 KiB)",
                            format_bytes(bytes)
                        );
                        self.problem(memory, Some(id), "limits.memory", msg);
                        None
                    }
                }
            }
            None => None,
        };
        let fuel = match &limits.fuel {
            Some(fuel) if *fuel.get_ref() == 0 => {
                let msg = "a fuel budget of zero would stop every handler at once".to_string();
                self.problem(fuel, Some(id), "limits.fuel", msg);
                None
            }
            Some(fuel) => Some(*fuel.get_ref()),
            None => None,
        };

        let restart = &raw.restart;
        let defaults = Supervision::default();
        let (default_min, default_max) = defaults.get_backoff();
        let mut supervision =
            Supervision::new(restart.policy.map_or(defaults.get_policy(), Into::into)).intensity(
                restart.max_restarts.unwrap_or(defaults.get_max_restarts()),
                restart
                    .window
                    .as_ref()
                    .map_or(defaults.get_window(), |w| w.get_ref().0),
            );
        if let Some(window) = &restart.window
            && window.get_ref().0.is_zero()
        {
            let msg = "a restart window of zero would never count a restart".to_string();
            self.problem(window, Some(id), "restart.window", msg);
        }
        supervision = supervision.backoff(
            restart
                .backoff_min
                .as_ref()
                .map_or(default_min, |b| b.get_ref().0),
            restart
                .backoff_max
                .as_ref()
                .map_or(default_max, |b| b.get_ref().0),
        );
        if let Some(every) = restart.checkpoint {
            supervision = supervision.checkpoint(every.0);
        }
        let (backoff_min, backoff_max) = supervision.get_backoff();
        if backoff_min > backoff_max {
            let msg = format!(
                "the backoff starts at {backoff_min:?}, above its maximum of {backoff_max:?}"
            );
            // The defaults are in order, so at least one of the two was written.
            match (&restart.backoff_min, &restart.backoff_max) {
                (Some(at), _) => self.problem(at, Some(id), "restart.backoff_min", msg),
                (None, Some(at)) => self.problem(at, Some(id), "restart.backoff_max", msg),
                (None, None) => self.diagnostics.push(Problem::new(msg).component(id)),
            }
        }

        let exposure = match (raw.expose, raw.replicas) {
            (_, Some(true)) => Exposure::Replicated,
            (Some(true), _) => Exposure::Lattice,
            _ => Exposure::Local,
        };
        let keyed = self.keying(raw, id, &exposure, &capabilities);
        (self.diagnostics.problems.len() == before).then(|| ComponentEntry {
            id: id.to_string(),
            path,
            path_line: self.line(&raw.path),
            capabilities,
            mailbox,
            mailbox_bytes: limits
                .mailbox_bytes
                .map_or(DEFAULT_MAILBOX_BYTES, |bytes| bytes.0),
            deadline,
            memory,
            fuel,
            timers: limits.timers.unwrap_or(DEFAULT_MAX_TIMERS),
            supervision,
            exposure,
            durable: raw.durable.unwrap_or(false),
            keyed,
        })
    }

    /// How the keys of a keyed component come and go, and the problems of one that cannot
    /// be keyed as written.
    fn keying(
        &mut self,
        raw: &RawComponent,
        id: &str,
        exposure: &Exposure,
        capabilities: &Capabilities,
    ) -> Option<Keying> {
        let limits = &raw.limits;
        let keyed = raw.keyed.unwrap_or(false);
        if !keyed {
            for (field, at) in [
                ("limits.idle", limits.idle.as_ref().map(|at| self.line(at))),
                (
                    "limits.max_active",
                    limits.max_active.as_ref().map(|at| self.line(at)),
                ),
            ] {
                if let Some(line) = at {
                    let msg = "applies to keyed components only: add `keyed = true`".to_string();
                    self.diagnostics
                        .push(Problem::new(msg).line(line).field(field).component(id));
                }
            }
            return None;
        }
        let mut problem = |field: &str, msg: &str| {
            self.diagnostics
                .push(Problem::new(msg.to_string()).field(field).component(id));
        };
        if id.contains('/') {
            problem(
                "keyed",
                "a keyed component's id is one part, without `/`: its keys are the part after it",
            );
        }
        if *exposure == Exposure::Lattice {
            problem(
                "keyed",
                "a keyed component reached from other hosts is `replicas = true`: its keys are placed over the hosts that serve it",
            );
        }
        if !capabilities.subscribe_patterns().is_empty() {
            problem(
                "keyed",
                "a publication would have to reach every key ever made: a keyed component subscribes to no topic",
            );
        }
        let mut keying = Keying::default();
        if let Some(idle) = &limits.idle {
            if idle.get_ref().0 < MIN_IDLE {
                let msg = format!(
                    "an idle timeout of {:?} is under the least, {MIN_IDLE:?}",
                    idle.get_ref().0
                );
                self.problem(idle, Some(id), "limits.idle", msg);
            }
            keying = keying.idle(idle.get_ref().0);
        }
        if let Some(max_active) = &limits.max_active {
            if *max_active.get_ref() == 0 {
                let msg = "at least one key must be active at a time".to_string();
                self.problem(max_active, Some(id), "limits.max_active", msg);
            }
            keying = keying.max_active(*max_active.get_ref() as usize);
        }
        Some(keying)
    }

    fn lattice(&mut self, raw: Spanned<RawLattice>, dir: &Path) -> Option<LatticeConfig> {
        let line = self.line(&raw);
        let raw = raw.into_inner();
        let before = self.diagnostics.problems.len();
        let mut problem = |field: &str, msg: String| {
            self.diagnostics
                .push(Problem::new(msg).line(line).field(field));
        };
        for (field, value) in [("lattice.name", &raw.name), ("lattice.host", &raw.host)] {
            let plain = !value.is_empty()
                && value.len() <= 64
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !plain {
                problem(
                    field,
                    format!("`{value}` must be 1 to 64 ASCII letters, digits, `-` or `_`"),
                );
            }
        }
        if raw.servers.is_empty() {
            problem(
                "lattice.servers",
                "name at least one NATS server, as `servers = [\"nats://127.0.0.1:4222\"]`".into(),
            );
        }
        for server in &raw.servers {
            let scheme = server.split_once("://").map(|(scheme, _)| scheme);
            if !matches!(scheme, Some("nats" | "tls")) {
                problem(
                    "lattice.servers",
                    format!("`{server}` is not a `nats://host:port` or `tls://host:port` URL"),
                );
            }
        }
        let auth = match (raw.token, raw.user, raw.password, raw.credentials) {
            (None, None, None, None) => Auth::None,
            (Some(token), None, None, None) => Auth::Token(token),
            (None, Some(user), Some(password), None) => Auth::UserPassword { user, password },
            (None, None, None, Some(path)) => Auth::CredentialsFile(resolve(dir, &path)),
            _ => {
                problem(
                    "lattice",
                    "give one way to authenticate: `token`, `user` with `password`, or `credentials`"
                        .into(),
                );
                Auth::None
            }
        };
        if self.diagnostics.problems.len() != before {
            return None;
        }
        let mut config = LatticeConfig::new(raw.name, raw.host).auth(auth);
        for server in raw.servers {
            config = config.server(server);
        }
        if let Some(timeout) = raw.ack_timeout {
            config = config.ack_timeout(timeout.0);
        }
        Some(config)
    }

    fn telemetry(&mut self, raw: Spanned<RawTelemetry>) -> Option<TelemetryConfig> {
        let line = self.line(&raw);
        let raw = raw.into_inner();
        let before = self.diagnostics.problems.len();
        let mut problem = |field: &str, msg: String| {
            self.diagnostics
                .push(Problem::new(msg).line(line).field(field));
        };
        let endpoint = raw.endpoint.unwrap_or_default();
        match check_endpoint(&endpoint) {
            Ok(()) => {}
            Err(why) => problem("telemetry.endpoint", why),
        }
        let sampling = raw.sampling.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sampling) {
            problem(
                "telemetry.sampling",
                format!(
                    "{sampling} is not a share of traces: give a number from 0.0 (none) to 1.0 (all)"
                ),
            );
        }
        if self.diagnostics.problems.len() != before {
            return None;
        }
        Some(TelemetryConfig { endpoint, sampling })
    }
}

/// Whether `endpoint` is an OTLP/HTTP base URL the exporter can post to: `http://`, a host,
/// perhaps a port and a path, nothing else.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let example = "as `endpoint = \"http://127.0.0.1:4318\"` (the collector's OTLP/HTTP port)";
    if endpoint.is_empty() {
        return Err(format!("name where spans go, {example}"));
    }
    let uri: axum::http::Uri = endpoint
        .parse()
        .map_err(|err| format!("`{endpoint}` is not a URL ({err}): give one {example}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "`{endpoint}`: the exporter speaks plain HTTP only; run a collector on this \
                 host (or a local proxy) and give its `http://` address"
            ));
        }
        _ => {
            return Err(format!(
                "`{endpoint}` is not an `http://` URL: give one {example}"
            ));
        }
    }
    if uri
        .authority()
        .is_none_or(|authority| authority.host().is_empty())
    {
        return Err(format!("`{endpoint}` names no host: give one {example}"));
    }
    if uri.query().is_some() {
        return Err(format!(
            "`{endpoint}` has a query; give the base URL alone (spans go to its `/v1/traces`)"
        ));
    }
    Ok(())
}

/// Only the ingress's management routes need a token: whoever reaches it can send to,
/// ask and read every exposed component, so it listens on loopback addresses only.
pub fn check_listen(address: SocketAddr) -> Result<(), String> {
    if address.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "{address} is not a loopback address: only the ingress's management routes need a \
             token (anyone who reaches it can send to every exposed component), so it listens \
             only on 127.0.0.1, ::1 or another loopback address"
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    runtime: RawRuntime,
    lattice: Option<Spanned<RawLattice>>,
    telemetry: Option<Spanned<RawTelemetry>>,
    #[serde(default)]
    component: Vec<Spanned<RawComponent>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    endpoint: Option<String>,
    sampling: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    listen: Option<Spanned<SocketAddr>>,
    max_payload: Option<Spanned<ByteSize>>,
    max_queued: Option<ByteSize>,
    cache_dir: Option<PathBuf>,
    drain: Option<Millis>,
    request_timeout: Option<Spanned<Millis>>,
    scheduler: Option<Scheduler>,
    token: Option<String>,
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    id: Spanned<String>,
    path: Spanned<PathBuf>,
    #[serde(default)]
    capabilities: RawCapabilities,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    restart: RawRestart,
    expose: Option<bool>,
    replicas: Option<bool>,
    durable: Option<bool>,
    keyed: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLattice {
    name: String,
    host: String,
    #[serde(default)]
    servers: Vec<String>,
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
    credentials: Option<PathBuf>,
    ack_timeout: Option<Millis>,
    durable_retention: Option<Millis>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapabilities {
    #[serde(default)]
    send: Vec<Spanned<String>>,
    #[serde(default)]
    request: Vec<Spanned<String>>,
    #[serde(default)]
    publish: Vec<Spanned<String>>,
    #[serde(default)]
    subscribe: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<Spanned<ByteSize>>,
    deadline: Option<Spanned<Millis>>,
    mailbox: Option<Spanned<u64>>,
    mailbox_bytes: Option<ByteSize>,
    fuel: Option<Spanned<u64>>,
    timers: Option<u32>,
    idle: Option<Spanned<Millis>>,
    max_active: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestart {
    policy: Option<Policy>,
    max_restarts: Option<u32>,
    window: Option<Spanned<Millis>>,
    backoff_min: Option<Spanned<Millis>>,
    backoff_max: Option<Spanned<Millis>>,
    checkpoint: Option<Millis>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Policy {
    Permanent,
    Transient,
    Temporary,
}

impl From<Policy> for RestartPolicy {
    fn from(policy: Policy) -> Self {
        match policy {
            Policy::Permanent => RestartPolicy::Permanent,
            Policy::Transient => RestartPolicy::Transient,
            Policy::Temporary => RestartPolicy::Temporary,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder with `ping.wasm` and `pong.wasm` in it (empty: only their existence is
    /// checked here), and the manifest path inside it.
    fn folder() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ping.wasm", "pong.wasm"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let file = dir.path().join("courier.toml");
        (dir, file)
    }

    const GOOD: &str = r#"
[runtime]
listen = "127.0.0.1:9090"
max_payload = "1 MiB"
drain = "2s"

[[component]]
id = "ping"
path = "ping.wasm"
capabilities = { send = ["pong"], publish = ["scores/*"] }
limits = { memory = "16 MiB", deadline = "100ms", mailbox = 64, fuel = 1000000, timers = 0 }
restart = { policy = "transient", max_restarts = 3, window = "10s", backoff_min = "10ms", backoff_max = "1s" }

[[component]]
id = "pong"
path = "pong.wasm"

[component.capabilities]
subscribe = ["scores/*"]

[component.limits]
mailbox = 10000
"#;

    /// The one problem `source` has, as printed.
    fn problem(source: &str) -> String {
        let (_dir, file) = folder();
        let diagnostics = Manifest::parse(source, &file).unwrap_err();
        assert_eq!(diagnostics.problems.len(), 1, "{diagnostics}");
        let problem = &diagnostics.problems[0];
        format!("{}: {problem}", problem.line.unwrap_or(0))
    }

    /// `GOOD` with `from` replaced by `to`.
    fn good_but(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "{from}");
        GOOD.replacen(from, to, 1)
    }

    /// The start order of components given as `(id, extra fields)`, all on `ping.wasm`, as
    /// their ids.
    fn start_order(components: &[(&str, &str)]) -> Vec<String> {
        let (_dir, file) = folder();
        let source: String = components
            .iter()
            .map(|(id, extra)| {
                format!("[[component]]\nid = \"{id}\"\npath = \"ping.wasm\"\n{extra}\n")
            })
            .collect();
        let manifest = Manifest::parse(&source, &file).unwrap();
        let order = manifest.start_order();
        order
            .iter()
            .map(|&i| manifest.components[i].id.clone())
            .collect()
    }

    #[test]
    fn components_start_after_what_they_send_to_and_request_from() {
        let order = start_order(&[
            ("a", "capabilities = { send = [\"b\"] }"),
            ("b", "capabilities = { request = [\"c\"] }"),
            ("c", ""),
            ("d", ""),
        ]);
        assert_eq!(order, ["c", "b", "a", "d"]);
        // A keyed target is reached through its keys' pattern.
        let order = start_order(&[
            ("shop", "capabilities = { send = [\"cart/*\"] }"),
            ("cart", "keyed = true"),
        ]);
        assert_eq!(order, ["cart", "shop"]);
    }

    #[test]
    fn components_in_a_cycle_start_in_the_manifests_order() {
        let order = start_order(&[
            ("x", ""),
            ("ping", "capabilities = { send = [\"pong\"] }"),
            ("pong", "capabilities = { send = [\"ping\"] }"),
            ("feeder", "capabilities = { send = [\"ping\"] }"),
        ]);
        assert_eq!(order, ["x", "ping", "pong", "feeder"]);
        // One that may send to itself is not waiting for itself.
        assert_eq!(
            start_order(&[("me", "capabilities = { send = [\"*\"] }"), ("you", "")]),
            ["you", "me"]
        );
    }

    #[test]
    fn a_keyed_component_takes_its_idle_timeout_and_bound_from_its_limits() {
        let (_dir, file) = folder();
        let source = good_but(
            "timers = 0 }",
            "timers = 0, idle = \"90s\", max_active = 500 }",
        )
        .replacen("id = \"ping\"", "id = \"ping\"\nkeyed = true", 1);
        let manifest = Manifest::parse(&source, &file).unwrap();
        let keying = manifest.components[0].keyed.expect("keyed");
        assert_eq!(keying.get_idle(), Duration::from_secs(90));
        assert_eq!(keying.get_max_active(), Some(500));
        assert!(manifest.components[1].keyed.is_none());
    }

    #[test]
    fn keyed_limits_on_a_component_that_is_not_keyed_are_refused() {
        let refused = problem(&good_but("timers = 0 }", "timers = 0, max_active = 5 }"));
        assert!(refused.contains("`limits.max_active`"), "{refused}");
        assert!(refused.contains("keyed = true"), "{refused}");
        let refused = problem(&good_but("id = \"pong\"", "id = \"pong\"\nkeyed = true"));
        assert!(refused.contains("subscribes to no topic"), "{refused}");
    }

    #[test]
    fn a_keyed_component_is_replicated_over_hosts_never_exposed_alone() {
        let (_dir, file) = folder();
        let keyed = |extra: &str| {
            good_but(
                "id = \"ping\"",
                &format!("id = \"ping\"\nkeyed = true\n{extra}"),
            )
        };
        let manifest = Manifest::parse(&keyed("replicas = true"), &file).unwrap();
        assert_eq!(manifest.components[0].exposure, Exposure::Replicated);
        assert!(manifest.components[0].keyed.is_some());
        let refused = problem(&keyed("expose = true"));
        assert!(refused.contains("replicas = true"), "{refused}");
    }

    #[test]
    fn a_durable_senders_remote_retention_comes_from_the_lattice_table() {
        let (_dir, file) = folder();
        let manifest = Manifest::parse(GOOD, &file).unwrap();
        assert_eq!(
            manifest.broker_config().get_remote_retention(),
            courier_host_broker::DEFAULT_REMOTE_RETENTION
        );
        let source = format!(
            "{GOOD}\n[lattice]\nname = \"shop\"\nhost = \"a\"\nservers = [\"nats://127.0.0.1:4222\"]\ndurable_retention = \"2h\"\n"
        );
        let manifest = Manifest::parse(&source, &file).unwrap();
        assert_eq!(
            manifest.broker_config().get_remote_retention(),
            Duration::from_secs(2 * 3600)
        );
    }

    #[test]
    fn a_complete_manifest_is_read_with_its_defaults_filled_in() {
        let (dir, file) = folder();
        let manifest = Manifest::parse(GOOD, &file).unwrap();
        assert_eq!(manifest.runtime.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(manifest.runtime.max_payload, 1 << 20);
        assert_eq!(manifest.runtime.drain, Duration::from_secs(2));
        assert_eq!(manifest.runtime.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(manifest.runtime.scheduler, Scheduler::MultiThread);
        assert_eq!(manifest.runtime.cache_dir, default_cache_dir());
        assert!(!manifest.runtime.cache_dir.starts_with(dir.path()));

        let [ping, pong] = &manifest.components[..] else {
            panic!("two components")
        };
        assert_eq!(ping.id, "ping");
        assert!(ping.path.ends_with("ping.wasm") && ping.path.is_absolute());
        assert_eq!(ping.path_line, 9);
        let patterns = |list: &[Pattern]| list.iter().map(Pattern::to_string).collect::<Vec<_>>();
        assert_eq!(patterns(ping.capabilities.send_patterns()), ["pong"]);
        assert_eq!(patterns(ping.capabilities.publish_patterns()), ["scores/*"]);
        assert_eq!(ping.memory, Some(16 << 20));
        assert_eq!(ping.deadline, Duration::from_millis(100));
        assert_eq!(ping.mailbox, 64);
        assert_eq!(ping.fuel, Some(1_000_000));
        assert_eq!(ping.timers, 0, "timers turned off");
        assert_eq!(ping.supervision.get_policy(), RestartPolicy::Transient);
        assert_eq!(ping.supervision.get_max_restarts(), 3);
        assert_eq!(ping.supervision.get_backoff().0, Duration::from_millis(10));

        assert_eq!(
            patterns(pong.capabilities.subscribe_patterns()),
            ["scores/*"]
        );
        assert_eq!(pong.mailbox, 10_000);
        assert_eq!(pong.deadline, DEFAULT_DEADLINE);
        assert_eq!(pong.timers, DEFAULT_MAX_TIMERS);
        assert_eq!(pong.supervision, Supervision::default());

        let engine = manifest.engine_config();
        assert!(engine.get_fuel(), "a fuel budget turns metering on");
        assert!(engine.get_pooling());
        assert_eq!(manifest.broker_config().get_max_payload_bytes(), 1 << 20);
    }

    #[test]
    fn durable_components_are_kept_beside_the_manifest_unless_data_dir_says_otherwise() {
        let (dir, file) = folder();
        let manifest = Manifest::parse(GOOD, &file).unwrap();
        assert_eq!(manifest.runtime.data_dir, dir.path().join(DEFAULT_DATA_DIR));
        assert!(
            manifest.components.iter().all(|c| !c.durable),
            "off by default"
        );

        let source = good_but("drain = \"2s\"", "drain = \"2s\"\ndata_dir = \"state\"");
        let source = source.replacen("id = \"ping\"", "id = \"ping\"\ndurable = true", 1);
        let manifest = Manifest::parse(&source, &file).unwrap();
        assert_eq!(manifest.runtime.data_dir, dir.path().join("state"));
        assert!(manifest.components[0].durable);
        assert!(!manifest.components[1].durable);
    }

    #[test]
    fn an_unknown_field_is_named_with_its_line() {
        let source = good_but("mailbox = 10000", "mailbox = 10000\nmailbox_size = 3");
        assert_eq!(
            problem(&source),
            "23: component `pong`: `limits.mailbox_size`: unknown field `mailbox_size`, \
             expected one of `memory`, `deadline`, `mailbox`, `mailbox_bytes`, `fuel`, `timers`, \
             `idle`, `max_active`"
        );
        let source = format!("verbose = true\n{GOOD}");
        assert!(problem(&source).starts_with("1: `verbose`: unknown field `verbose`"));
    }

    #[test]
    fn a_bad_duration_is_named_with_its_line() {
        let source = good_but("deadline = \"100ms\"", "deadline = \"100 parsecs\"");
        let problem = problem(&source);
        assert!(
            problem.starts_with(
                "11: component `ping`: `limits.deadline`: \"100 parsecs\" is not a duration"
            ),
            "{problem}"
        );
        let source = good_but("drain = \"2s\"", "drain = -5");
        assert!(problem_starts(
            &source,
            "5: `runtime.drain`: -5 is negative"
        ));
    }

    fn problem_starts(source: &str, start: &str) -> bool {
        let problem = problem(source);
        assert!(problem.starts_with(start), "{problem}");
        true
    }

    #[test]
    fn a_bad_size_is_named_with_its_line() {
        let source = good_but("memory = \"16 MiB\"", "memory = \"16 MiBs\"");
        assert!(problem_starts(
            &source,
            "11: component `ping`: `limits.memory`: unknown unit \"MiBs\""
        ));
        let source = good_but("max_payload = \"1 MiB\"", "max_payload = \"lots\"");
        assert!(problem_starts(
            &source,
            "4: `runtime.max_payload`: unknown unit"
        ));
        let source = good_but("memory = \"16 MiB\"", "memory = 100");
        assert!(problem_starts(
            &source,
            "11: component `ping`: `limits.memory`: a memory cap of 100 bytes is below one WebAssembly page"
        ));
    }

    #[test]
    fn a_bad_policy_is_named_with_its_line() {
        let source = good_but("\"transient\"", "\"sometimes\"");
        assert_eq!(
            problem(&source),
            "12: component `ping`: `restart.policy`: unknown variant `sometimes`, \
             expected one of `permanent`, `transient`, `temporary`"
        );
    }

    #[test]
    fn the_scheduler_is_one_of_two_names() {
        let (_dir, file) = folder();
        let source = good_but(
            "drain = \"2s\"",
            "drain = \"2s\"\nscheduler = \"current-thread\"",
        );
        let manifest = Manifest::parse(&source, &file).unwrap();
        assert_eq!(manifest.runtime.scheduler, Scheduler::CurrentThread);

        let source = good_but("drain = \"2s\"", "drain = \"2s\"\nscheduler = \"single\"");
        assert_eq!(
            problem(&source),
            "6: `runtime.scheduler`: unknown variant `single`, expected `multi-thread` or \
             `current-thread`"
        );
    }

    #[test]
    fn a_missing_path_is_named_with_its_line() {
        let source = good_but("path = \"pong.wasm\"\n", "");
        assert_eq!(
            problem(&source),
            "14: component `pong`: `path`: missing field `path`"
        );
        let source = good_but("path = \"pong.wasm\"", "path = \"gone.wasm\"");
        let problem = problem(&source);
        assert!(
            problem.starts_with("16: component `pong`: `path`: no file at /")
                && problem.ends_with("gone.wasm"),
            "{problem}"
        );
    }

    #[test]
    fn a_bad_pattern_is_named_with_its_line() {
        let source = good_but("send = [\"pong\"]", "send = [\"pong\", \"po*\"]");
        assert_eq!(
            problem(&source),
            "10: component `ping`: `capabilities.send`: `po*` is not a valid pattern: \
             `*` may stand alone or end one as `prefix/*`"
        );
        let source = good_but("subscribe = [\"scores/*\"]", "subscribe = [\"scores//*\"]");
        assert!(problem_starts(
            &source,
            "19: component `pong`: `capabilities.subscribe`: `scores//*` is not a valid pattern"
        ));
    }

    #[test]
    fn a_duplicate_id_is_named_with_both_lines() {
        let source = good_but("id = \"pong\"", "id = \"ping\"");
        assert_eq!(
            problem(&source),
            "15: component `ping`: `id`: id `ping` is already used by the component declared at line 8"
        );
    }

    #[test]
    fn a_bad_id_listen_address_or_limit_is_named_with_its_line() {
        let source = good_but("id = \"pong\"", "id = \"host\"");
        assert!(problem_starts(
            &source,
            "15: component `host`: `id`: `host` is not a valid"
        ));
        let source = good_but("127.0.0.1:9090", "0.0.0.0:9090");
        assert!(problem_starts(
            &source,
            "3: `runtime.listen`: 0.0.0.0:9090 is not a loopback"
        ));
        let source = good_but("127.0.0.1:9090", "localhost");
        assert!(problem_starts(
            &source,
            "3: `runtime.listen`: invalid socket address"
        ));
        let source = good_but("mailbox = 10000", "mailbox = 0");
        assert!(problem_starts(
            &source,
            "22: component `pong`: `limits.mailbox`: a mailbox"
        ));
        let source = good_but("mailbox = 10000", "mailbox = 1000000000000");
        assert!(problem_starts(
            &source,
            "22: component `pong`: `limits.mailbox`: a mailbox of 1000000000000 messages is over \
             the most a mailbox may hold, 1048576"
        ));
        let source = good_but("backoff_min = \"10ms\"", "backoff_min = \"2s\"");
        assert!(problem_starts(
            &source,
            "12: component `ping`: `restart.backoff_min`"
        ));
    }

    #[test]
    fn a_syntax_error_is_reported_at_its_line() {
        let source = good_but("drain = \"2s\"", "drain = \"2s");
        assert!(problem_starts(&source, "5: "));
    }

    #[test]
    fn every_meaning_problem_is_reported_at_once() {
        let (_dir, file) = folder();
        let source = good_but("path = \"pong.wasm\"", "path = \"gone.wasm\"").replacen(
            "send = [\"pong\"]",
            "send = [\"a**\"]",
            1,
        );
        let diagnostics = Manifest::parse(&source, &file).unwrap_err();
        let lines: Vec<_> = diagnostics.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [Some(10), Some(16)]);
        let text = diagnostics.to_string();
        assert!(
            text.starts_with(&format!("{}:10: component `ping`", file.display())),
            "{text}"
        );
    }

    #[test]
    fn telemetry_is_off_without_its_section_and_takes_an_endpoint_and_a_ratio() {
        let (_dir, file) = folder();
        assert_eq!(Manifest::parse(GOOD, &file).unwrap().telemetry, None);
        let source = format!(
            "{GOOD}\n[telemetry]\nendpoint = \"http://127.0.0.1:4318/\"\nsampling = 0.25\n"
        );
        let telemetry = Manifest::parse(&source, &file).unwrap().telemetry.unwrap();
        assert_eq!(telemetry.sampling, 0.25);
        assert_eq!(telemetry.traces_url(), "http://127.0.0.1:4318/v1/traces");
        let source = format!("{GOOD}\n[telemetry]\nendpoint = \"http://collector:4318\"\n");
        let telemetry = Manifest::parse(&source, &file).unwrap().telemetry.unwrap();
        assert_eq!(
            telemetry.sampling, 1.0,
            "every trace unless it says otherwise"
        );
    }

    #[test]
    fn a_telemetry_section_that_cannot_work_is_refused_with_its_field() {
        for (table, field, says) in [
            (
                "sampling = 0.5",
                "telemetry.endpoint",
                "name where spans go",
            ),
            (
                "endpoint = \"localhost:4318\"",
                "telemetry.endpoint",
                "not an `http://` URL",
            ),
            (
                "endpoint = \"https://otel.example:4318\"",
                "telemetry.endpoint",
                "plain HTTP only",
            ),
            (
                "endpoint = \"http://127.0.0.1:4318/?x=1\"",
                "telemetry.endpoint",
                "has a query",
            ),
            (
                "endpoint = \"http://127.0.0.1:4318\"\nsampling = 1.5",
                "telemetry.sampling",
                "from 0.0 (none) to 1.0",
            ),
            (
                "endpoint = \"http://127.0.0.1:4318\"\nsampling = -0.1",
                "telemetry.sampling",
                "from 0.0 (none) to 1.0",
            ),
            (
                "endpoint = \"http://127.0.0.1:4318\"\nsampling = nan",
                "telemetry.sampling",
                "not a share",
            ),
        ] {
            let refused = problem(&format!("{GOOD}\n[telemetry]\n{table}\n"));
            assert!(
                refused.contains(&format!("`{field}`")),
                "{table}: {refused}"
            );
            assert!(refused.contains(says), "{table}: {refused}");
        }
        let refused = problem(&format!("{GOOD}\n[telemetry]\nendpont = \"http://x\"\n"));
        assert!(refused.contains("endpont"), "{refused}");
    }

    #[test]
    fn an_empty_manifest_asks_for_a_component() {
        let (_dir, file) = folder();
        let diagnostics = Manifest::parse("", &file).unwrap_err();
        assert!(diagnostics.problems[0].message.contains("no components"));
    }
}
