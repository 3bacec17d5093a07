//! `courier run`: start every component of a manifest, serve the ingress, and on Ctrl-C or
//! SIGTERM drain the mailboxes, stop, and say what was left.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use courier_host_broker::{Broker, ShutdownReport};
use courier_host_core::{Component, Engine};
use courier_host_lattice::Lattice;
use courier_host_store::RedbStore;
use std::sync::Arc;
use tokio::sync::oneshot;

use crate::diagnostics::Diagnostics;
use crate::manifest::{Manifest, Scheduler, check_listen};
use crate::server::{self, ServerLimits};
use crate::token::MadeToken;
use crate::units::format_duration;
use crate::{ingress, load};

/// How long the HTTP server may take to finish its last answers once the broker has
/// stopped. Every answer waits on the broker, which has ended by then, so this is ample.
const SERVER_GRACE: Duration = Duration::from_secs(2);

/// How long the last spans may take to reach the collector once the broker has stopped: one
/// export's timeout, so a collector that is gone delays the exit no longer.
const EXPORT_GRACE: Duration = Duration::from_secs(5);

/// What `courier run` was asked, beyond the manifest.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Listen here instead of at the manifest's `runtime.listen`.
    pub listen: Option<SocketAddr>,
    /// Drain for this long instead of the manifest's `runtime.drain`.
    pub drain: Option<Duration>,
    /// Upgrade a component in place when its `.wasm` file changes.
    pub watch: bool,
    /// Keep durable components here instead of at the manifest's `runtime.data_dir`.
    pub data_dir: Option<PathBuf>,
    /// Component paths read elsewhere: a path of the manifest that resolves to a key is
    /// read at its value (see [`Manifest::load_redirected`]).
    pub redirects: HashMap<PathBuf, PathBuf>,
}

/// Run the manifest at `file` until a signal stops it. Problems with the manifest or its
/// components are printed with their lines and end the run with a failure status; a run
/// stopped by a signal ends with success once it has drained (or status 130 if a second
/// signal cut the drain short).
pub fn run(file: &Path, options: RunOptions) -> anyhow::Result<ExitCode> {
    let mut manifest = match Manifest::load_redirected(file, &options.redirects) {
        Ok(manifest) => manifest,
        Err(diagnostics) => return Ok(report_problems(&diagnostics)),
    };
    if let Some(listen) = options.listen {
        check_listen(listen).map_err(|reason| anyhow::anyhow!("--listen: {reason}"))?;
        manifest.runtime.listen = listen;
    }
    if let Some(drain) = options.drain {
        manifest.runtime.drain = drain;
    }
    if let Some(data_dir) = &options.data_dir {
        manifest.runtime.data_dir = std::path::absolute(data_dir).unwrap_or(data_dir.clone());
    }
    println!(
        "courier: {} declares {} components",
        file.display(),
        manifest.components.len()
    );

    let engine = match load::engine(&manifest) {
        Ok(engine) => engine,
        Err(problem) => anyhow::bail!("{problem}"),
    };
    let components = match load::components(&engine, &manifest) {
        Ok(components) => components,
        Err(problems) => {
            let diagnostics = Diagnostics {
                file: file.to_path_buf(),
                problems,
            };
            return Ok(report_problems(&diagnostics));
        }
    };

    let mut builder = match manifest.runtime.scheduler {
        Scheduler::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        Scheduler::CurrentThread => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    println!("courier: scheduler {}", manifest.runtime.scheduler.name());
    runtime.block_on(serve(manifest, engine, components, options.watch))
}

/// Print the problems and say how many there were; the failure status to exit with.
pub fn report_problems(diagnostics: &Diagnostics) -> ExitCode {
    eprintln!("{diagnostics}");
    let count = diagnostics.problems.len();
    eprintln!(
        "courier: {count} problem{} in {}",
        if count == 1 { "" } else { "s" },
        diagnostics.file.display()
    );
    ExitCode::FAILURE
}

async fn serve(
    manifest: Manifest,
    engine: Engine,
    components: Vec<Component>,
    watch: bool,
) -> anyhow::Result<ExitCode> {
    let runtime = &manifest.runtime;
    // Installed before the address is announced, so that whoever reads it can stop us with
    // a signal straight away and still get a drain.
    let mut signals = Signals::new().context("cannot listen for signals")?;
    // Bound before any component starts, so that a port in use fails the run at once.
    let listener = tokio::net::TcpListener::bind(runtime.listen)
        .await
        .with_context(|| format!("cannot listen on {}", runtime.listen))?;
    let address = listener.local_addr()?;

    let mut config = manifest.broker_config();
    // Only a manifest with a durable component opens (and locks) a store: the others touch
    // no disk.
    if manifest.components.iter().any(|c| c.durable) {
        let store = RedbStore::open_in_dir(&runtime.data_dir).with_context(|| {
            format!(
                "cannot open the store of durable components in {}",
                runtime.data_dir.display()
            )
        })?;
        println!(
            "courier: durable components kept in {}",
            store.path().display()
        );
        config = config.store(Arc::new(store));
    }
    // Without a `[telemetry]` section the broker gets none: no span is built and no trace
    // started, so a run that does not trace pays nothing for it.
    let exporting = match &manifest.telemetry {
        Some(telemetry) => {
            let host = manifest
                .lattice
                .as_ref()
                .map_or_else(|| address.to_string(), |l| l.get_host().to_string());
            let (tracing, exporting) = crate::telemetry::start(telemetry, &host)?;
            println!(
                "courier: exporting spans to {} (sampling {} of new traces)",
                telemetry.traces_url(),
                telemetry.sampling
            );
            config = config.telemetry(tracing);
            Some(exporting)
        }
        None => None,
    };
    let broker = Broker::with_config(engine, config);
    // Joined before the components start, so each exposed one is served as it starts and
    // an id another host already serves stops the start with that reason.
    let lattice = match manifest.lattice.clone() {
        Some(mut config) => {
            if let Ok(token) = std::env::var("COURIER_LATTICE_TOKEN")
                && !token.is_empty()
            {
                config = config.auth(courier_host_lattice::Auth::Token(token));
            }
            let lattice = Lattice::join(&broker, config.clone())
                .await
                .context("cannot join the lattice")?;
            println!(
                "courier: joined lattice `{}` as host `{}` through {}",
                config.get_name(),
                config.get_host(),
                config.get_servers().join(", ")
            );
            for warning in config.trust_warnings() {
                println!("courier: warning: {warning}");
            }
            Some(Arc::new(lattice))
        }
        None => None,
    };
    let specs: Vec<_> = manifest
        .components
        .iter()
        .zip(components)
        .map(|(entry, component)| entry.spec(component))
        .collect();
    // Targets before their senders, so a durable component's recovered messages find
    // every component they are sent on to already started.
    for index in manifest.start_order() {
        let (entry, spec) = (&manifest.components[index], specs[index].clone());
        let started = match spec.get_keyed() {
            Some(_) => broker.spawn_keyed(spec).await,
            None => broker.spawn(spec).await.map(|_| ()),
        };
        if let Err(err) = started {
            broker.shutdown(Duration::ZERO).await;
            return Err(err).with_context(|| format!("cannot start component `{}`", entry.id));
        }
    }
    println!(
        "courier: started {}",
        manifest
            .components
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    // One compile at a time in the runner, whether an upgrade through the ingress or the
    // watch asked for it.
    let compiles = Arc::new(tokio::sync::Semaphore::new(1));
    let _watch = if watch {
        let files: Vec<(String, std::path::PathBuf)> = manifest
            .components
            .iter()
            .map(|c| (c.id.clone(), c.path.clone()))
            .collect();
        let watching = crate::watch::watch(broker.clone(), &files, compiles.clone())
            .context("cannot watch the component files")?;
        println!(
            "courier: watching {} for changes",
            plural(files.len() as u64, "component file")
        );
        Some(watching)
    } else {
        None
    };

    let token = std::env::var("COURIER_TOKEN")
        .ok()
        .filter(|token| !token.is_empty())
        .or_else(|| runtime.token.as_ref().map(|token| token.0.clone()));
    let config = ingress::IngressConfig::new(address)
        .request_timeout(runtime.request_timeout)
        .max_payload(runtime.max_payload)
        .lattice(lattice.clone())
        .specs(specs)
        .compile_slot(compiles);
    // Kept until the run ends, when its file is removed.
    let mut _made_token = None;
    let config = match token {
        Some(token) => config.token(Some(token)),
        None => {
            match MadeToken::make(address) {
                Ok(made) => {
                    println!(
                        "courier: restarts and upgrades ask for the token in {} (made for \
                         this run; `courier upgrade` reads it from there)",
                        made.file().display()
                    );
                    let config =
                        config.made_token(made.token().to_string(), made.file().to_path_buf());
                    _made_token = Some(made);
                    config
                }
                // Messages and requests are served all the same; without a token nobody
                // may restart or upgrade.
                Err(reason) => {
                    println!(
                        "courier: cannot keep a token for restarts and upgrades, so they are \
                         refused: {reason}"
                    );
                    config
                }
            }
        }
    };
    let app = ingress::router(broker.clone(), config);
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let mut server = tokio::spawn(server::serve(
        listener,
        app,
        ServerLimits::default(),
        async {
            let _ = server_stopped.await;
        },
    ));
    println!("courier: dashboard at http://{address}/");
    println!("courier: listening on http://{address}");

    let signal = tokio::select! {
        signal = signals.next() => signal,
        ended = &mut server => {
            broker.shutdown(Duration::ZERO).await;
            return match ended {
                Ok(()) => Err(anyhow::anyhow!("the HTTP server stopped unexpectedly")),
                Err(err) => Err(err).context("the HTTP server panicked"),
            };
        }
    };
    println!(
        "courier: {signal} received; draining mailboxes for up to {}",
        format_duration(runtime.drain)
    );
    let drained = async {
        // One deadline for both. Other hosts stop sending here first; what they already
        // sent is handled in the drain that follows, in whatever time the leave left.
        let deadline = std::time::Instant::now() + runtime.drain;
        if let Some(lattice) = &lattice {
            lattice.leave(runtime.drain).await;
        }
        broker
            .shutdown(deadline.saturating_duration_since(std::time::Instant::now()))
            .await
    };
    let report = tokio::select! {
        report = drained => report,
        signal = signals.next() => {
            println!("courier: {signal} received again; stopping without waiting for the drain");
            return Ok(ExitCode::from(130));
        }
    };
    let _ = stop_server.send(());
    if tokio::time::timeout(SERVER_GRACE, &mut server)
        .await
        .is_err()
    {
        server.abort();
    }
    print_report(&report, &broker);
    if let Some(exporting) = exporting {
        exporting.finish(EXPORT_GRACE).await;
    }
    if let Some(lattice) = &lattice {
        let remote = lattice.metrics();
        println!(
            "courier: to other hosts {} sent, {} acknowledged, {} refused there, {} with no host, {} unconfirmed, {} not sent; {} arrived from them",
            remote.sent,
            remote.acked,
            remote.refused_there,
            remote.no_host,
            remote.unconfirmed,
            remote.unsent,
            remote.arrived_messages + remote.arrived_requests
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Say what the drain did and what it left.
fn print_report(report: &ShutdownReport, broker: &Broker) {
    let stopped: Vec<&str> = report.stopped.iter().map(|id| id.as_ref()).collect();
    println!(
        "courier: stopped {} ({})",
        plural(stopped.len() as u64, "component"),
        stopped.join(", ")
    );
    println!(
        "courier: delivered {} while draining",
        plural(report.delivered_while_draining, "message")
    );
    if report.undelivered.is_empty() {
        println!("courier: nothing left undelivered");
    } else {
        println!(
            "courier: {} left undelivered:",
            plural(report.undelivered.len() as u64, "message")
        );
        for letter in &report.undelivered {
            // A trap's reason carries its wasm backtrace on further lines.
            println!(
                "  {} {} -> {} ({} bytes): {}",
                letter.kind.as_str(),
                letter.sender,
                letter.target,
                letter.payload_len,
                letter.reason.trim_end().replace('\n', "\n    ")
            );
        }
    }
    let books = broker.accounting();
    // What came from other hosts ends here too, so it is named when there is any.
    let arrived = match books.arrived {
        0 => String::new(),
        n => format!(", {n} arrived from other hosts"),
    };
    println!(
        "courier: in all {} sent{arrived}, {} delivered, {} refused, {} dead-lettered",
        books.sent, books.delivered, books.refused, books.dead_lettered
    );
}

/// `1 message`, `2 messages`.
fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// Ctrl-C and, on Unix, SIGTERM.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// Wait for the next signal and name it.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
