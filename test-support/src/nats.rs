//! Real `nats-server` processes on loopback, for tests that need a NATS server or a cluster.
//!
//! Each [`NatsServer`] is its own process on free ports of 127.0.0.1, with its output and files
//! in a temporary folder of its own, and is killed when dropped, so tests can run in parallel
//! and clean up after a panic. [`NatsServer::start`] returns once the server greets a client
//! with its `INFO` line; [`start_cluster`] once every server of the cluster has its routes to
//! all the others up. [`NatsServer::kill`] and [`NatsServer::restart`] are for fault tests.
//!
//! The binary is `$NATS_SERVER_BIN`, else `nats-server` on `PATH` (or where the Debian package
//! puts it, `/usr/sbin/nats-server`), else the copy that `cargo xtask nats-server` installed
//! under `target/nats-server/`. `cargo xtask test-all` installs one if there is none and passes
//! it to the tests in `NATS_SERVER_BIN`.
//!
//! ```no_run
//! use courier_test_support::nats::{NatsServer, start_cluster};
//!
//! let server = NatsServer::start();
//! println!("connect to {}", server.url());
//!
//! let secured = NatsServer::builder().token("s3cret").max_payload(64 * 1024).start();
//!
//! let mut cluster = start_cluster(3);
//! cluster[0].kill();
//! cluster[0].restart();
//! cluster[0].wait_for_routes(2);
//! ```

use std::collections::HashSet;
use std::env;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The environment variable that names the nats-server binary to run; `cargo xtask test-all`
/// sets it.
pub const NATS_SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";

/// The cluster name of [`start_cluster`] when the builder names none.
pub const DEFAULT_CLUSTER_NAME: &str = "courier-test";

/// Where the Debian package puts the binary: not on every user's PATH, so looked at too.
const DEBIAN_BINARY: &str = "/usr/sbin/nats-server";

/// How long a server has to come up, or a cluster to connect its routes.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a start is tried on fresh ports when another process took a port between its
/// choice and the server binding it.
const START_ATTEMPTS: usize = 3;

/// The loopback address every server listens on.
const HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The nats-server binary the servers run.
///
/// # Panics
///
/// If there is none, saying how to get one (`cargo xtask test-all`, or `NATS_SERVER_BIN`).
#[track_caller]
pub fn nats_server_bin() -> PathBuf {
    match find_binary(
        env::var_os(NATS_SERVER_BIN_ENV),
        env::var_os("PATH"),
        Path::new(DEBIAN_BINARY),
        &install_dir(),
    ) {
        Ok(path) => path,
        Err(message) => panic!("{message}"),
    }
}

/// Starts a cluster of `n` servers with default options (see [`NatsServerBuilder`]), named
/// [`DEFAULT_CLUSTER_NAME`], each routed to all the others; returns once every server reports
/// routes to the `n - 1` others.
///
/// # Panics
///
/// If `n` is 0, or the cluster does not come up within 10 seconds (with the servers' output).
#[track_caller]
pub fn start_cluster(n: usize) -> Vec<NatsServer> {
    NatsServer::builder().start_cluster(n)
}

/// A nats-server process on 127.0.0.1, killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    /// What it was started with, kept for [`NatsServer::restart`].
    config: Config,
    /// The binary it runs.
    binary: PathBuf,
    /// Its temporary folder: its output and configuration file.
    dir: PathBuf,
    /// The running process, if any.
    child: Option<Child>,
}

/// Options for the servers that [`NatsServerBuilder::start`] and
/// [`NatsServerBuilder::start_cluster`] start; the defaults ask no authentication and keep
/// nats-server's own limits.
#[derive(Clone, Debug, Default)]
pub struct NatsServerBuilder {
    /// The token clients must present (`--auth`).
    token: Option<String>,
    /// The user and password clients must present (`--user`, `--pass`).
    user: Option<(String, String)>,
    /// The largest message payload in bytes (`max_payload`).
    max_payload: Option<usize>,
    /// The cluster name (`--cluster_name`).
    cluster_name: Option<String>,
    /// More configuration-file text (accounts, users and their permissions, say).
    config: Option<String>,
}

/// Everything one server was started with: enough to start it again the same way.
#[derive(Clone, Debug)]
struct Config {
    /// The builder's options.
    options: NatsServerBuilder,
    /// The client port.
    port: u16,
    /// The HTTP monitoring port, for `/routez`.
    monitor_port: u16,
    /// Its part in a cluster, if it is in one.
    cluster: Option<ClusterConfig>,
}

/// A server's cluster settings.
#[derive(Clone, Debug)]
struct ClusterConfig {
    /// The port it takes routes on.
    port: u16,
    /// The route ports of the other servers.
    routes: Vec<u16>,
    /// The cluster's name.
    name: String,
}

/// Why a server did not come up.
#[derive(Debug)]
struct StartError {
    /// What went wrong.
    message: String,
    /// Whether a port it was given was taken, so that other ports may work.
    port_in_use: bool,
}

impl NatsServer {
    /// Starts a server with default options on a free port; returns once it greets clients.
    ///
    /// # Panics
    ///
    /// If there is no nats-server binary (see [`nats_server_bin`]), or the server does not
    /// come up within 10 seconds (with its output).
    #[track_caller]
    pub fn start() -> NatsServer {
        Self::builder().start()
    }

    /// A builder for a server or cluster with options.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// The URL clients connect to, `nats://127.0.0.1:<port>` (without credentials).
    pub fn url(&self) -> String {
        format!("nats://{HOST}:{}", self.config.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.config.port
    }

    /// Kills the server (SIGKILL, no goodbye to its clients or routes) and waits until it has
    /// exited, so its ports refuse connections. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error means it already exited, which is what this wants.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): its connections stay open, so neither its clients nor its
    /// routes notice, but nothing sent to it is read, forwarded or answered until it is
    /// [killed](NatsServer::kill) (SIGKILL ends a stopped process too) or
    /// [thawed](NatsServer::thaw). A test that needs messages caught on a server when it dies
    /// freezes it first, so that they are. Does nothing if it is not running.
    pub fn freeze(&mut self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a [frozen](NatsServer::freeze) server go on (SIGCONT).
    pub fn thaw(&mut self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&mut self, signal: libc::c_int) {
        if let Some(child) = &self.child
            && let Ok(pid) = libc::pid_t::try_from(child.id())
        {
            // SAFETY: `kill` takes any pid and signal and touches no memory of ours; the pid
            // is our own child's, not yet waited for, so it names no other process.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Starts the server again, killing it first if it runs, on the same client, monitoring
    /// and cluster ports with the same options and routes; returns once it greets clients. In
    /// a cluster, [`NatsServer::wait_for_routes`] waits for its routes to come back.
    ///
    /// # Panics
    ///
    /// If it does not come up within 10 seconds (with its output), for example because
    /// another process took its port meanwhile.
    #[track_caller]
    pub fn restart(&mut self) {
        self.kill();
        if let Err(error) = self.spawn() {
            panic!("{}", self.failure(&error));
        }
    }

    /// Waits until the server has routes to `remote_servers` other servers (counting servers,
    /// not connections: nats-server 2.10 and later open several per server).
    ///
    /// # Panics
    ///
    /// If it does not get there within 10 seconds, or the server is not running.
    #[track_caller]
    pub fn wait_for_routes(&mut self, remote_servers: usize) {
        if let Err(error) = self.try_wait_for_routes(remote_servers) {
            panic!("{}", self.failure(&error));
        }
    }

    /// A server not yet started, with its own temporary folder.
    #[track_caller]
    fn new(config: Config) -> NatsServer {
        static SEQUENCE: AtomicUsize = AtomicUsize::new(0);
        let binary = nats_server_bin();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        let dir = env::temp_dir().join(format!(
            "courier-nats-{}-{nanos}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        NatsServer {
            config,
            binary,
            dir,
            child: None,
        }
    }

    /// The file that takes the server's output.
    fn log_path(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }

    /// The command-line arguments for the server's configuration, writing a configuration
    /// file for what has no flag.
    fn args(&self) -> Vec<String> {
        let config = &self.config;
        let options = &config.options;
        let mut args: Vec<String> = vec![
            "-a".into(),
            HOST.to_string(),
            "-p".into(),
            config.port.to_string(),
            "-m".into(),
            config.monitor_port.to_string(),
        ];
        // `max_payload` and what `config` holds have no command-line flags.
        let mut text = String::new();
        if let Some(bytes) = options.max_payload {
            text.push_str(&format!("max_payload: {bytes}\n"));
        }
        if let Some(extra) = &options.config {
            text.push_str(extra);
            text.push('\n');
        }
        if !text.is_empty() {
            let file = self.dir.join("nats-server.conf");
            fs::write(&file, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
            args.extend(["-c".into(), file.display().to_string()]);
        }
        if let Some(token) = &options.token {
            args.extend(["--auth".into(), token.clone()]);
        }
        if let Some((user, password)) = &options.user {
            args.extend([
                "--user".into(),
                user.clone(),
                "--pass".into(),
                password.clone(),
            ]);
        }
        match &config.cluster {
            Some(cluster) => {
                args.extend([
                    "--cluster".into(),
                    format!("nats://{HOST}:{}", cluster.port),
                    "--cluster_name".into(),
                    cluster.name.clone(),
                ]);
                if !cluster.routes.is_empty() {
                    let routes: Vec<String> = cluster
                        .routes
                        .iter()
                        .map(|port| format!("nats://{HOST}:{port}"))
                        .collect();
                    args.extend(["--routes".into(), routes.join(",")]);
                }
            }
            None => {
                if let Some(name) = &options.cluster_name {
                    args.extend(["--cluster_name".into(), name.clone()]);
                }
            }
        }
        args
    }

    /// Starts the process and waits until it greets clients; on failure it is killed.
    fn spawn(&mut self) -> Result<(), StartError> {
        let args = self.args();
        let log_path = self.log_path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let log_copy = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let child = Command::new(&self.binary)
            .args(&args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log_copy)
            .stderr(log)
            .spawn()
            .map_err(|e| StartError {
                message: format!("could not start {}: {e}", self.binary.display()),
                port_in_use: false,
            })?;
        self.child = Some(child);
        let ready = self.wait_until_greeting();
        if ready.is_err() {
            self.kill();
        }
        ready
    }

    /// Waits until the client port accepts a connection that gets the server's `INFO` line.
    fn wait_until_greeting(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_running()?;
            if read_info(self.config.port).is_ok_and(|line| line.starts_with("INFO ")) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartError {
                    message: format!(
                        "no INFO from {HOST}:{} within {START_TIMEOUT:?}",
                        self.config.port
                    ),
                    port_in_use: false,
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// An error if the process is not running (any more), saying whether a port was taken.
    fn check_running(&mut self) -> Result<(), StartError> {
        let status = match self.child.as_mut().map(Child::try_wait) {
            None => "it is not running (killed)".to_owned(),
            Some(Ok(None)) => return Ok(()),
            Some(Ok(Some(status))) => format!("it exited ({status})"),
            Some(Err(e)) => format!("its state is unknown ({e})"),
        };
        Err(StartError {
            port_in_use: self.output().contains("address already in use"),
            message: status,
        })
    }

    /// Like [`NatsServer::wait_for_routes`], with the error instead of a panic.
    fn try_wait_for_routes(&mut self, remote_servers: usize) -> Result<(), StartError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_running()?;
            let last = routed_servers(self.config.monitor_port);
            if last.as_ref().is_ok_and(|&routed| routed == remote_servers) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let seen = match last {
                    Ok(routed) => format!("routes to {routed}"),
                    Err(e) => e,
                };
                return Err(StartError {
                    message: format!(
                        "no routes to {remote_servers} other servers within {START_TIMEOUT:?} \
                         (last seen: {seen})"
                    ),
                    port_in_use: false,
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the server printed so far.
    fn output(&self) -> String {
        fs::read(self.log_path())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The panic message for a server that did not come up: why, how it was started, and
    /// what it printed.
    fn failure(&self, error: &StartError) -> String {
        format!(
            "nats-server on {HOST}:{} did not come up: {}\ncommand: {} {}\n--- its output ---\n{}",
            self.config.port,
            error.message,
            self.binary.display(),
            self.args().join(" "),
            self.output()
        )
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        // `COURIER_KEEP_NATS_LOGS=1` keeps the server's folder (its log and configuration)
        // for a look after a failed test.
        if env::var_os("COURIER_KEEP_NATS_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl NatsServerBuilder {
    /// Clients must connect with this token (`auth_token` in CONNECT).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Clients must connect with this user and password.
    pub fn user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }

    /// The largest message payload the server accepts, in bytes (nats-server's default is
    /// 1 MiB); the server announces it in its `INFO`.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// More text for the server's configuration file, for what has no command-line flag:
    /// `authorization { users = [...] }` with per-user permissions, say. The flags the
    /// harness passes (address, ports, cluster) take precedence over the file.
    ///
    /// ```no_run
    /// use courier_test_support::nats::NatsServer;
    ///
    /// let server = NatsServer::builder()
    ///     .config(r#"authorization { users = [ { user: "a", password: "pw" } ] }"#)
    ///     .start();
    /// # drop(server);
    /// ```
    pub fn config(mut self, text: impl Into<String>) -> Self {
        self.config = Some(text.into());
        self
    }

    /// The cluster name, for [`NatsServerBuilder::start_cluster`] ([`DEFAULT_CLUSTER_NAME`]
    /// if not set); a single server is given it too.
    pub fn cluster_name(mut self, name: impl Into<String>) -> Self {
        self.cluster_name = Some(name.into());
        self
    }

    /// Starts a server with these options on a free port; returns once it greets clients.
    ///
    /// # Panics
    ///
    /// If there is no nats-server binary (see [`nats_server_bin`]), or the server does not
    /// come up within 10 seconds (with its output).
    #[track_caller]
    pub fn start(&self) -> NatsServer {
        for attempt in 1..=START_ATTEMPTS {
            let [port, monitor_port] = free_ports();
            let mut server = NatsServer::new(Config {
                options: self.clone(),
                port,
                monitor_port,
                cluster: None,
            });
            match server.spawn() {
                Ok(()) => return server,
                Err(error) if error.port_in_use && attempt < START_ATTEMPTS => {}
                Err(error) => panic!("{}", server.failure(&error)),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts a cluster of `n` servers with these options, each on free client, monitoring and
    /// route ports and routed to all the others; returns once every server reports routes to
    /// the `n - 1` others.
    ///
    /// # Panics
    ///
    /// If `n` is 0, or the cluster does not come up within 10 seconds (with the output of the
    /// server that failed).
    #[track_caller]
    pub fn start_cluster(&self, n: usize) -> Vec<NatsServer> {
        assert!(n > 0, "a cluster needs at least one server");
        let name = self
            .cluster_name
            .clone()
            .unwrap_or_else(|| DEFAULT_CLUSTER_NAME.to_owned());
        'attempt: for attempt in 1..=START_ATTEMPTS {
            let ports: Vec<[u16; 3]> = (0..n).map(|_| free_ports()).collect();
            let mut servers = Vec::with_capacity(n);
            for (index, &[port, monitor_port, route_port]) in ports.iter().enumerate() {
                let routes = ports
                    .iter()
                    .enumerate()
                    .filter(|&(other, _)| other != index)
                    .map(|(_, ports)| ports[2])
                    .collect();
                let mut server = NatsServer::new(Config {
                    options: self.clone(),
                    port,
                    monitor_port,
                    cluster: Some(ClusterConfig {
                        port: route_port,
                        routes,
                        name: name.clone(),
                    }),
                });
                match server.spawn() {
                    Ok(()) => servers.push(server),
                    Err(error) if error.port_in_use && attempt < START_ATTEMPTS => {
                        continue 'attempt;
                    }
                    Err(error) => panic!("{}", server.failure(&error)),
                }
            }
            for server in &mut servers {
                match server.try_wait_for_routes(n - 1) {
                    Ok(()) => {}
                    Err(error) if error.port_in_use && attempt < START_ATTEMPTS => {
                        continue 'attempt;
                    }
                    Err(error) => panic!("{}", server.failure(&error)),
                }
            }
            return servers;
        }
        unreachable!("the last attempt returns or panics")
    }
}

/// `N` distinct ports that were free on 127.0.0.1 a moment ago: each bound with port 0, all
/// held until the last is chosen so none repeats.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| {
            TcpListener::bind((HOST, 0)).unwrap_or_else(|e| panic!("cannot bind {HOST}:0: {e}"))
        })
        .collect();
    std::array::from_fn(|index| {
        listeners[index]
            .local_addr()
            .expect("a bound listener has an address")
            .port()
    })
}

/// The first line a server sends to a client that connects to `port`.
fn read_info(port: u16) -> std::io::Result<String> {
    let stream =
        TcpStream::connect_timeout(&SocketAddr::from((HOST, port)), Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

/// How many other servers the server with monitoring port `monitor_port` has routes to: the
/// distinct `remote_id`s of its `/routez`.
fn routed_servers(monitor_port: u16) -> Result<usize, String> {
    let body = http_get(monitor_port, "/routez")?;
    Ok(json_strings(&body, "remote_id").len())
}

/// The body of a plain HTTP/1.0 GET of `path` on 127.0.0.1:`port`, if it answered 200.
fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&SocketAddr::from((HOST, port)), Duration::from_millis(500))
            .map_err(|e| format!("monitoring port {port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| format!("monitoring port {port}: {e}"))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {HOST}:{port}\r\n\r\n")
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("GET {path}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: not an HTTP response: {response:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("GET {path}: {status}"));
    }
    Ok(body.to_owned())
}

/// The distinct string values of `"key": "..."` anywhere in a JSON text (whose values have no
/// escaped quotes, as nats-server's identifiers do not).
fn json_strings(json: &str, key: &str) -> HashSet<String> {
    let pattern = format!("\"{key}\"");
    let mut values = HashSet::new();
    let mut rest = json;
    while let Some(at) = rest.find(&pattern) {
        rest = &rest[at + pattern.len()..];
        let Some(value) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        let Some(value) = value.trim_start().strip_prefix('"') else {
            continue;
        };
        if let Some(end) = value.find('"') {
            values.insert(value[..end].to_owned());
        }
    }
    values
}

/// Where `cargo xtask nats-server` installs the binary when apt-get cannot.
fn install_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives inside the repository")
        .join("target")
        .join("nats-server")
}

/// The binary: `env_value` (`$NATS_SERVER_BIN`) if set, else `nats-server` in a folder of
/// `path_var`, else `well_known` (the Debian package's), else one under `install_dir`; or the
/// message saying how to get one.
fn find_binary(
    env_value: Option<OsString>,
    path_var: Option<OsString>,
    well_known: &Path,
    install_dir: &Path,
) -> Result<PathBuf, String> {
    if let Some(value) = env_value {
        let path = PathBuf::from(value);
        if path.is_file() {
            return Ok(path);
        }
        let relative = if path.is_relative() {
            " (a relative path is taken from the test's crate folder: give an absolute one)"
        } else {
            ""
        };
        return Err(format!(
            "{NATS_SERVER_BIN_ENV} is set to `{}`, which is not a file{relative}: point it at a \
             nats-server binary, or unset it and run `cargo xtask test-all` (or just `cargo \
             xtask nats-server`), which finds or installs one",
            path.display()
        ));
    }
    let file = format!("nats-server{}", env::consts::EXE_SUFFIX);
    let on_path = path_var.and_then(|path_var| {
        env::split_paths(&path_var)
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(|dir| dir.join(&file))
            .find(|candidate| is_executable(candidate))
    });
    if let Some(path) = on_path {
        return Ok(path);
    }
    if is_executable(well_known) {
        return Ok(well_known.to_path_buf());
    }
    if let Some(path) = find_in(install_dir, &file) {
        return Ok(path);
    }
    Err(format!(
        "no nats-server binary: {NATS_SERVER_BIN_ENV} is not set, and there is none on PATH, at \
         {} or under {}. Run `cargo xtask test-all`, which installs one (`cargo xtask \
         nats-server` does only that), or set {NATS_SERVER_BIN_ENV}=/path/to/nats-server",
        well_known.display(),
        install_dir.display()
    ))
}

/// The executable `file` somewhere under `dir`, at most four folders deep (pip puts it in
/// `py/bin/`).
fn find_in(dir: &Path, file: &str) -> Option<PathBuf> {
    let mut folders = vec![(dir.to_path_buf(), 0)];
    while let Some((folder, depth)) = folders.pop() {
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && depth < 4 {
                folders.push((path, depth + 1));
            } else if entry.file_name() == file && is_executable(&path) {
                return Some(path);
            }
        }
    }
    None
}

/// Whether `path` is a file this user may execute.
fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    /// A raw NATS protocol client: enough to check what a server says.
    struct Client {
        /// What the server sends.
        reader: BufReader<TcpStream>,
        /// What we send.
        writer: TcpStream,
        /// The server's `INFO` line.
        info: String,
    }

    impl Client {
        fn connect(port: u16) -> Client {
            let stream = TcpStream::connect((HOST, port)).expect("connect to the server");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let writer = stream.try_clone().unwrap();
            let mut client = Client {
                reader: BufReader::new(stream),
                writer,
                info: String::new(),
            };
            client.info = client.line();
            assert!(client.info.starts_with("INFO {"), "{:?}", client.info);
            client
        }

        fn send(&mut self, text: &str) {
            self.writer.write_all(text.as_bytes()).unwrap();
        }

        /// The next line from the server, without its CRLF.
        fn line(&mut self) -> String {
            let mut line = String::new();
            self.reader
                .read_line(&mut line)
                .expect("a line from the server");
            line.trim_end().to_owned()
        }

        /// Sends CONNECT with these fields, then PING; the server's answer.
        fn handshake(&mut self, fields: &str) -> String {
            self.send(&format!(
                "CONNECT {{\"verbose\":false{fields}}}\r\nPING\r\n"
            ));
            self.line()
        }
    }

    #[test]
    fn a_server_greets_clients_and_answers_ping() {
        let server = NatsServer::start();
        assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
        let mut client = Client::connect(server.port());
        assert!(
            client.info.contains(&format!("\"port\":{}", server.port())),
            "{}",
            client.info
        );
        assert_eq!(client.handshake(""), "PONG");
    }

    #[test]
    fn kill_makes_the_port_refuse_connections() {
        let mut server = NatsServer::start();
        Client::connect(server.port());
        server.kill();
        let error = TcpStream::connect((HOST, server.port())).expect_err("the server is dead");
        assert_eq!(error.kind(), ErrorKind::ConnectionRefused);
        server.kill(); // Killing it again does nothing.
    }

    #[test]
    fn restart_keeps_the_port() {
        let mut server = NatsServer::start();
        let port = server.port();
        server.kill();
        server.restart();
        assert_eq!(server.port(), port);
        assert_eq!(Client::connect(port).handshake(""), "PONG");
        // Restarting a running server kills it first.
        server.restart();
        assert_eq!(Client::connect(port).handshake(""), "PONG");
    }

    #[test]
    fn a_two_server_cluster_routes_messages_between_its_servers() {
        let cluster = start_cluster(2);
        assert_eq!(cluster.len(), 2);
        assert_ne!(cluster[0].port(), cluster[1].port());

        let mut subscriber = Client::connect(cluster[0].port());
        assert!(
            subscriber.info.contains("\"cluster\":\"courier-test\""),
            "{}",
            subscriber.info
        );
        subscriber.send("CONNECT {\"verbose\":false}\r\nSUB greetings 1\r\nPING\r\n");
        assert_eq!(subscriber.line(), "PONG");
        subscriber
            .reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();

        let mut publisher = Client::connect(cluster[1].port());
        assert_eq!(publisher.handshake(""), "PONG");
        // The subscription reaches the other server over the route a moment later; until
        // then what is published there goes nowhere.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut received = String::new();
        while !received.contains("MSG greetings 1 5\r\nhello\r\n") {
            assert!(
                Instant::now() < deadline,
                "no message over the route; got {received:?}"
            );
            publisher.send("PUB greetings 5\r\nhello\r\nPING\r\n");
            assert_eq!(publisher.line(), "PONG");
            let _ = subscriber.reader.read_line(&mut received);
        }
    }

    #[test]
    fn a_restarted_cluster_server_gets_its_routes_back() {
        let mut cluster = start_cluster(3);
        let port = cluster[2].port();
        cluster[2].kill();
        cluster[0].wait_for_routes(1);
        cluster[2].restart();
        assert_eq!(cluster[2].port(), port);
        for server in &mut cluster {
            server.wait_for_routes(2);
        }
    }

    #[test]
    fn a_token_is_required_when_set() {
        let server = NatsServer::builder().token("s3cret").start();
        let mut client = Client::connect(server.port());
        assert!(
            client.info.contains("\"auth_required\":true"),
            "{}",
            client.info
        );
        assert_eq!(client.handshake(",\"auth_token\":\"s3cret\""), "PONG");

        let mut intruder = Client::connect(server.port());
        let answer = intruder.handshake(",\"auth_token\":\"guess\"");
        assert!(answer.starts_with("-ERR"), "{answer}");
    }

    #[test]
    fn a_user_and_password_are_required_when_set() {
        let server = NatsServer::builder().user("u", "p").start();
        let mut client = Client::connect(server.port());
        assert!(
            client.info.contains("\"auth_required\":true"),
            "{}",
            client.info
        );
        assert_eq!(client.handshake(",\"user\":\"u\",\"pass\":\"p\""), "PONG");

        let answer = Client::connect(server.port()).handshake(",\"user\":\"u\",\"pass\":\"x\"");
        assert!(answer.starts_with("-ERR"), "{answer}");
    }

    #[test]
    fn max_payload_and_cluster_name_reach_the_server() {
        let server = NatsServer::builder()
            .max_payload(4096)
            .cluster_name("single")
            .start();
        let client = Client::connect(server.port());
        assert!(
            client.info.contains("\"max_payload\":4096"),
            "{}",
            client.info
        );
    }

    #[test]
    fn options_apply_to_every_server_of_a_cluster() {
        let cluster = NatsServer::builder()
            .token("s3cret")
            .cluster_name("named")
            .start_cluster(2);
        for server in &cluster {
            let mut client = Client::connect(server.port());
            assert!(
                client.info.contains("\"cluster\":\"named\""),
                "{}",
                client.info
            );
            assert_eq!(client.handshake(",\"auth_token\":\"s3cret\""), "PONG");
        }
    }

    #[test]
    fn without_a_binary_the_message_says_how_to_get_one() {
        let nowhere = Path::new("/nonexistent/courier-test");
        let message = find_binary(None, Some(OsString::new()), nowhere, nowhere).unwrap_err();
        assert!(message.contains("Run `cargo xtask test-all`"), "{message}");
        assert!(
            message.contains("NATS_SERVER_BIN=/path/to/nats-server"),
            "{message}"
        );

        let message = find_binary(Some("not/here".into()), None, nowhere, nowhere).unwrap_err();
        assert!(
            message.contains("`not/here`, which is not a file"),
            "{message}"
        );
    }

    #[test]
    fn route_counts_are_of_servers_not_connections() {
        let routez = r#"{"num_routes": 3, "routes": [
            {"rid": 1, "remote_id": "A"}, {"rid": 2, "remote_id" : "A"},
            {"rid": 3, "remote_id":"B"}]}"#;
        assert_eq!(json_strings(routez, "remote_id").len(), 2);
    }
}
