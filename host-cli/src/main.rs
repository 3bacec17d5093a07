//! `courier`: run Courier components from a manifest. See `courier --help` and the crate's
//! README.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use courier_cli::units::Millis;
use courier_cli::{check, dev, run, scaffold, upgrade};

/// Run Courier components: WebAssembly actors that handle messages.
#[derive(Debug, Parser)]
#[command(name = "courier", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a manifest and load every component it names against world courier:actor/actor.
    ///
    /// Prints each problem as FILE:LINE: and exits with status 1 if there is any.
    Check {
        /// The manifest.
        #[arg(default_value = "courier.toml")]
        manifest: PathBuf,
    },
    /// Start the components of a manifest and serve the HTTP ingress until Ctrl-C or SIGTERM,
    /// which drains the mailboxes and stops.
    Run {
        /// The manifest.
        #[arg(default_value = "courier.toml")]
        manifest: PathBuf,
        /// Serve the ingress here instead of at the manifest's `runtime.listen` (port 0 picks
        /// a free port; the address is printed).
        #[arg(long, value_name = "ADDRESS")]
        listen: Option<SocketAddr>,
        /// On a stop signal, wait this long for mailboxes to empty (`500ms`, `10s`) instead of
        /// the manifest's `runtime.drain`.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        drain: Option<Duration>,
        /// Upgrade a component in place, losing no message, whenever its `.wasm` file
        /// changes (a rebuild, say).
        #[arg(long)]
        watch: bool,
        /// Keep durable components here instead of at the manifest's `runtime.data_dir`
        /// (default: `.courier-data` beside the manifest).
        #[arg(long, value_name = "FOLDER")]
        data_dir: Option<PathBuf>,
    },
    /// In a component crate (as `courier new` makes): build it for wasm32-wasip2, run it
    /// with its courier.toml, and rebuild and upgrade it in place whenever a source changes.
    /// A failed build is printed and the running version keeps serving.
    Dev {
        /// The crate.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Where the ingress listens (default: the manifest's `runtime.listen`).
        #[arg(long, value_name = "ADDRESS")]
        listen: Option<SocketAddr>,
    },
    /// Replace a component of a running `courier run` with a new version of it, between two
    /// messages, through the runner's ingress: none of its messages is lost or reordered.
    Upgrade {
        /// The component's id.
        id: String,
        /// The new version's `.wasm` file.
        path: PathBuf,
        /// The runner's ingress.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The ingress's bearer token (default: `COURIER_TOKEN`, or else the token the runner
        /// made for its run, which it keeps in `$XDG_RUNTIME_DIR/courier/`).
        #[arg(long, env = "COURIER_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Create a component crate in the new folder NAME, ready to build for wasm32-wasip2.
    New {
        /// The folder to create; its last part is the crate's name and the component's id.
        name: PathBuf,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<Millis>().map(|millis| millis.0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = init_logging();
    let code = match cli.command {
        Command::Check { manifest } => check::check(&manifest),
        Command::Run {
            manifest,
            listen,
            drain,
            watch,
            data_dir,
        } => match run::run(
            &manifest,
            run::RunOptions {
                listen,
                drain,
                watch,
                data_dir,
                ..run::RunOptions::default()
            },
        ) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("courier: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Dev { path, listen } => match dev::dev(
            &path,
            run::RunOptions {
                listen,
                ..run::RunOptions::default()
            },
        ) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("courier dev: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Upgrade {
            id,
            path,
            url,
            token,
        } => match upgrade::upgrade(&id, &path, &url, token.as_deref()) {
            Ok(answer) => {
                println!("courier: upgraded `{id}`: {answer}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("courier: {err}");
                ExitCode::FAILURE
            }
        },
        Command::New { name } => match scaffold::new_component(&name) {
            Ok(created) => {
                println!(
                    "courier: created component `{}` in {}",
                    created.name,
                    created.dir.display()
                );
                for file in &created.files {
                    println!("  {}", file.display());
                }
                println!("courier-sdk = {}", created.sdk);
                println!("next:");
                println!("  cd {}", created.dir.display());
                println!("  cargo build --release --target wasm32-wasip2");
                println!("  courier run courier.toml");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("courier: {err}");
                ExitCode::FAILURE
            }
        },
    };
    let dropped = log.dropped.dropped_lines();
    // Flush what the writer still holds before saying what it could not hold.
    drop(log.flush_on_drop);
    if dropped > 0 {
        eprintln!("courier: {dropped} log lines were dropped because stderr could not keep up");
    }
    code
}

/// The log writer's handles: dropping `flush_on_drop` writes out what is buffered, and
/// `dropped` counts the lines it had no room for.
struct Log {
    flush_on_drop: tracing_appender::non_blocking::WorkerGuard,
    dropped: tracing_appender::non_blocking::ErrorCounter,
}

/// Logs (the broker's, and the components' own through `log` and stdout/stderr) go to
/// stderr, at `info` unless `RUST_LOG` says otherwise.
///
/// A thread of its own writes them, from a buffer of [`LOG_BUFFER_LINES`] lines: when stderr
/// is slow (a full pipe, a paused terminal) lines are dropped and counted rather than left
/// to block the runtime's workers, which run the actors.
fn init_logging() -> Log {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, flush_on_drop) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Log {
        flush_on_drop,
        dropped,
    }
}

/// Lines the log writer holds while stderr catches up.
const LOG_BUFFER_LINES: usize = 16 * 1024;
