//! A host in a lattice: the NATS connection, what goes out, what comes in.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Subscriber;
use bytes::Bytes;
use courier_host_broker::{
    Broker, ComponentId, Exposure, HOST_SENDER, MAX_NAME_BYTES, MessagingError, Remote,
    TraceContext, WeakBroker, check_id,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{Auth, LatticeConfig};
use crate::directory::{Conflict, Directory, HostInfo};
use crate::inbound::Streams;
use crate::metrics::{Counters, LatticeMetrics};
use crate::pending::{Pending, Unacked};
use crate::subject::{Subjects, is_plain_token};
use crate::wire;

/// Room kept within the server's largest message for what a host adds to a payload: the
/// envelope (at most `wire::MAX_ENVELOPE` bytes) and the headers of an answer (a host
/// name and an error's text of at most 1 KiB) take less than this.
pub const HEADER_ROOM: usize = 2048;

/// How long a host asks whether another host already serves an id before it serves it.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// How long a host tries to see its own new subscription answer before it reports a
/// component served.
pub(crate) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a host waits for the NATS client to take something (a heartbeat, an
/// acknowledgement, a reply) before it gives up on it: the client's queue is bounded and
/// stops moving while no server can be reached, and nothing a host does may hang on that.
pub(crate) const NATS_WAIT: Duration = Duration::from_secs(1);

/// Why a host could not join a lattice.
#[derive(Debug, thiserror::Error)]
pub enum LatticeError {
    /// A setting is not acceptable.
    #[error("lattice configuration: {0}")]
    Config(String),
    /// The NATS servers could not be reached or refused the host.
    #[error("cannot connect to the lattice's NATS servers {servers:?}: {source}")]
    Connect {
        /// The servers tried.
        servers: Vec<String>,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A credentials file could not be read.
    #[error("cannot read the NATS credentials file {path}: {source}")]
    Credentials {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A subscription the host needs was refused.
    #[error("cannot subscribe to `{subject}`: {reason}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// The broker already has a remote.
    #[error("the broker is already joined to a lattice")]
    AlreadyJoined,
    /// Another live host of the lattice already answers for this host name.
    #[error(
        "host `{host}` already runs in the lattice `{lattice}` (incarnation {incarnation}); \
         stop it or choose another host name"
    )]
    HostNameTaken {
        /// The host name asked for.
        host: String,
        /// The lattice.
        lattice: String,
        /// The other host's incarnation, as it answered.
        incarnation: String,
    },
}

/// A host's place in a lattice: this broker's components reach components on other hosts,
/// and the exposed ones here are reached from them. Made by [`Lattice::join`].
///
/// Dropping it stops what it runs; [`Lattice::leave`] leaves in order first.
pub struct Lattice {
    inner: Arc<Inner>,
    /// What the broker holds; detached again when this host leaves or is dropped.
    gateway: Arc<dyn Remote>,
    broker: WeakBroker,
    tasks: Vec<JoinHandle<()>>,
}

/// Where a request's answer goes.
pub(crate) type Waiter = oneshot::Sender<Result<Vec<u8>, MessagingError>>;

/// What the outbound task puts on the wire, in the order it was queued.
pub(crate) enum Outbound {
    /// A message or request for one component, answered on the reply subject of `seq`;
    /// not put on the wire once `expires` (its acknowledgement's or its requester's
    /// deadline) has passed.
    Addressed {
        seq: u64,
        request: bool,
        /// A message's number in its stream to the target (0: not numbered).
        stream_seq: u64,
        /// A durable sender's number for the message, sent as a header.
        durable_seq: Option<u64>,
        subject: String,
        sender: ComponentId,
        payload: Bytes,
        expires: Instant,
        trace: Option<TraceContext>,
    },
    Publication {
        subject: String,
        sender: ComponentId,
        payload: Bytes,
        trace: Option<TraceContext>,
    },
}

/// A component this host serves to the others: the task that reads its subject.
pub(crate) struct Serving {
    pub(crate) exposure: Exposure,
    /// A keyed component: its keys are placed over the hosts that serve it (`keys.rs`).
    pub(crate) keyed: bool,
    pub(crate) task: Option<JoinHandle<()>>,
    /// Tells the task to stop reading and finish what it took.
    pub(crate) stop: Option<watch::Sender<bool>>,
    pub(crate) subscriptions: Vec<courier_host_broker::Pattern>,
}

pub(crate) struct Inner {
    pub(crate) config: LatticeConfig,
    pub(crate) subjects: Subjects,
    /// This join's own random token: replies and acknowledgements are addressed to it, so
    /// a host restarted under the same name never takes its previous run's answers.
    pub(crate) incarnation: String,
    pub(crate) client: async_nats::Client,
    pub(crate) broker: WeakBroker,
    pub(crate) directory: Directory,
    pub(crate) counters: Arc<Counters>,
    pub(crate) outbound: mpsc::Sender<Outbound>,
    pub(crate) outbound_bytes: AtomicU64,
    /// Numbers messages and requests in the order they are queued.
    pub(crate) seq: AtomicU64,
    pub(crate) unacked: Mutex<Pending>,
    /// The numbered streams other hosts send to this host's components.
    pub(crate) inbound: Mutex<Streams>,
    /// Wakes the outbound task to send again what is marked for it.
    pub(crate) resend_wake: Arc<tokio::sync::Notify>,
    /// How long after going on the wire an unacknowledged numbered message is sent again.
    pub(crate) resend_after: Duration,
    /// How many messages each subscription buffers (`LatticeConfig::subscription_capacity`).
    pub(crate) subscription_capacity: usize,
    /// The client's counters, of which the outbound task reads the connections made.
    pub(crate) statistics: Arc<async_nats::Statistics>,
    /// Whether some message is marked to go on the wire again: read without the lock on
    /// every message put on the wire.
    pub(crate) resend_marked: AtomicBool,
    /// Acknowledgements, by the host that sent them, for messages to ids that host is not
    /// yet known to serve.
    pub(crate) doubtful: Mutex<HashMap<String, Vec<u64>>>,
    pub(crate) waiting: Mutex<HashMap<u64, Waiter>>,
    pub(crate) serving: Mutex<HashMap<ComponentId, Serving>>,
    /// Ids being made ready to serve, so two calls for one id (a spawn racing the join
    /// that lists what already runs) claim it once.
    pub(crate) claiming: Mutex<HashSet<ComponentId>>,
    pub(crate) topic_tasks: Mutex<HashMap<String, JoinHandle<()>>>,
    /// The conflicts already logged.
    pub(crate) reported_conflicts: Mutex<HashSet<String>>,
    /// Held while the topic subscriptions change.
    pub(crate) topics_changing: tokio::sync::Mutex<()>,
    /// Tells the serving tasks to unsubscribe and finish what they have.
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) leaving: AtomicBool,
}

/// The part of a host the broker holds: its way to other hosts.
pub(crate) struct Gateway(pub(crate) Arc<Inner>);

impl Lattice {
    /// Join `broker` to the lattice `config` names: connect to its NATS servers, serve
    /// the broker's exposed components (and hear its subscribers' topics), and route
    /// what the broker cannot deliver here to the hosts that serve it.
    ///
    /// ```no_run
    /// # async fn run(broker: courier_host_broker::Broker) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use courier_host_lattice::{Lattice, LatticeConfig};
    ///
    /// let config = LatticeConfig::new("shop", "eu-1").server("nats://127.0.0.1:4222");
    /// let lattice = Lattice::join(&broker, config).await?;
    /// // `pong` runs on another host of the lattice `shop`.
    /// lattice.wait_for("pong", Duration::from_secs(5)).await;
    /// broker.send("pong", b"across hosts".to_vec())?;
    /// lattice.leave(Duration::from_secs(1)).await;
    /// # Ok(()) }
    /// ```
    pub async fn join(broker: &Broker, config: LatticeConfig) -> Result<Lattice, LatticeError> {
        if !is_plain_token(&config.name) {
            return Err(LatticeError::Config(format!(
                "the lattice name `{}` must be 1 to 64 ASCII letters, digits, `-` or `_`",
                courier_host_core::text::bounded(&config.name, 64)
            )));
        }
        if !is_plain_token(&config.host) {
            return Err(LatticeError::Config(format!(
                "the host name `{}` must be 1 to 64 ASCII letters, digits, `-` or `_`",
                courier_host_core::text::bounded(&config.host, 64)
            )));
        }
        if config.servers.is_empty() {
            return Err(LatticeError::Config(
                "no NATS server URL given (`servers`)".into(),
            ));
        }
        if config.ack_timeout.is_zero() {
            return Err(LatticeError::Config(
                "the acknowledgement timeout (`ack_timeout`) must be more than zero: every \
                 message to another host would be dead-lettered unconfirmed at once"
                    .into(),
            ));
        }
        if config.heartbeat.is_zero() {
            return Err(LatticeError::Config(
                "the heartbeat period (`heartbeat`) must be more than zero".into(),
            ));
        }
        for warning in config.trust_warnings() {
            tracing::warn!(lattice = %config.name, host = %config.host, "{warning}");
        }
        let incarnation = new_incarnation();
        let subjects = Subjects::new(&config.name, &config.host, &incarnation);
        let counters = Arc::new(Counters::default());
        let resend_wake = Arc::new(tokio::sync::Notify::new());
        let (client, subscription_capacity) =
            connect(&config, &subjects, counters.clone(), resend_wake.clone()).await?;
        if let Some(other) = answers_for(&client, &subjects).await {
            return Err(LatticeError::HostNameTaken {
                host: config.host.clone(),
                lattice: config.name.clone(),
                incarnation: other,
            });
        }

        let (outbound, queue) = mpsc::channel(config.outbound_capacity);
        let (stop, _) = watch::channel(false);
        let statistics = client.statistics();
        let inner = Arc::new(Inner {
            subjects,
            incarnation,
            client,
            broker: broker.downgrade(),
            directory: Directory::default(),
            counters,
            outbound,
            outbound_bytes: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            unacked: Mutex::new(Pending::new(subscription_capacity / 2)),
            inbound: Mutex::new(Streams::default()),
            resend_wake,
            resend_after: config.ack_timeout / 5,
            subscription_capacity,
            statistics,
            resend_marked: AtomicBool::new(false),
            doubtful: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            serving: Mutex::new(HashMap::new()),
            claiming: Mutex::new(HashSet::new()),
            topic_tasks: Mutex::new(HashMap::new()),
            topics_changing: tokio::sync::Mutex::new(()),
            reported_conflicts: Mutex::new(HashSet::new()),
            stop,
            leaving: AtomicBool::new(false),
            config,
        });

        // The name is claimed first, so a second host started under it is refused from
        // here on.
        let who = inner.subscribe(inner.subjects.who()).await?;
        let replies = inner
            .subscribe(format!("{}.*", inner.subjects.replies()))
            .await?;
        let acks = inner.subscribe(inner.subjects.acks()).await?;
        let heartbeats = inner.subscribe(inner.subjects.heartbeats()).await?;
        let hellos = inner.subscribe(inner.subjects.hellos()).await?;
        let mut tasks = vec![
            tokio::spawn(inner.clone().answer_who(who)),
            tokio::spawn(inner.clone().send_queued(queue)),
            tokio::spawn(inner.clone().hear_replies(replies)),
            tokio::spawn(inner.clone().hear_acks(acks)),
            tokio::spawn(inner.clone().hear_heartbeats(heartbeats)),
            tokio::spawn(inner.clone().hear_hellos(hellos)),
            tokio::spawn(inner.clone().beat()),
            tokio::spawn(inner.clone().expire_unacked()),
        ];

        let gateway: Arc<dyn Remote> = Arc::new(Gateway(inner.clone()));
        let already = match broker.attach_remote(gateway.clone()) {
            Ok(already) => already,
            Err(_) => {
                for task in &tasks {
                    task.abort();
                }
                return Err(LatticeError::AlreadyJoined);
            }
        };
        for served in already {
            let id = served.id.clone();
            if let Err(reason) = inner.serve(served).await {
                tracing::error!(component = %id, %reason, "not served to other hosts");
            }
        }
        // Ask the others for their heartbeats now rather than within a period.
        let _ = bounded(
            NATS_WAIT,
            inner.client.publish(inner.subjects.hello(), Bytes::new()),
        )
        .await;
        inner.publish_heartbeat(false).await;
        tracing::info!(
            lattice = %inner.config.name,
            host = %inner.config.host,
            incarnation = %inner.incarnation,
            servers = ?inner.config.servers,
            "joined the lattice"
        );
        tasks.shrink_to_fit();
        Ok(Lattice {
            inner,
            gateway,
            broker: broker.downgrade(),
            tasks,
        })
    }

    /// The lattice's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// This host's name.
    pub fn host(&self) -> &str {
        &self.inner.config.host
    }

    /// The other hosts heard from, and what each serves.
    pub fn hosts(&self) -> Vec<HostInfo> {
        self.inner.directory.hosts()
    }

    /// The ids that more than one host (this one among them, or others) says it serves
    /// alone. Each is logged as an error when it appears; none should last: it means two
    /// hosts were started with the same exclusive component at the same moment.
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.inner.conflicts()
    }

    /// Whether some other host is known to serve `id`.
    pub fn serves(&self, id: &str) -> bool {
        self.inner.directory.serves(id)
    }

    /// Wait until some other host is known to serve `id`, at most `timeout`; returns
    /// whether one is.
    pub async fn wait_for(&self, id: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.serves(id) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// This host's lattice counters.
    ///
    /// The message counters are read under the same lock that every change to the
    /// messages awaiting acknowledgement takes, so a snapshot always balances:
    /// `sent == acked + refused_there + no_host + unconfirmed + unsent + awaiting_ack`.
    pub fn metrics(&self) -> LatticeMetrics {
        let conflicts = self.inner.conflicts().len() as u64;
        let unacked = self.inner.unacked.lock().unwrap_or_else(|e| e.into_inner());
        let mut metrics = self.inner.counters.snapshot(
            unacked.len() as u64,
            self.inner.outbound_bytes.load(Ordering::Relaxed),
        );
        metrics.conflicts = conflicts;
        metrics
    }

    /// How many messages each of this host's subscriptions buffers before the client drops
    /// them as a slow consumer: the inbound byte budget over the server's largest message
    /// ([`LatticeConfig::subscription_capacity`]).
    pub fn subscription_capacity(&self) -> usize {
        self.inner.subscription_capacity
    }

    /// The largest payload a message to another host may carry: the server's limit less
    /// the room kept for headers.
    pub fn max_payload(&self) -> usize {
        self.inner.max_payload()
    }

    /// Leave the lattice in order: tell the other hosts, stop taking messages from them
    /// (handling what already came), put away the keys of the keyed components it serves
    /// with others (the other hosts place them from now on), and wait up to `drain` for the acknowledgements of
    /// what this host sent; the ones still missing then are dead-lettered as
    /// `unconfirmed`. Sends to other hosts are refused with `shutting-down` from the start.
    /// Returns within `drain` (and a few milliseconds) even when no NATS server can be
    /// reached. The broker is then detached and may join a lattice again.
    pub async fn leave(&self, drain: Duration) {
        let deadline = Instant::now() + drain;
        let inner = self.inner.clone();
        inner.leaving.store(true, Ordering::Release);
        let _ = tokio::time::timeout_at(deadline.into(), inner.publish_heartbeat(true)).await;
        let tasks = inner.stop_serving();
        let finish = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        let _ = tokio::time::timeout_at(deadline.into(), finish).await;
        inner.put_keys_away(deadline).await;
        while inner.unacked_len() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = tokio::time::timeout_at(deadline.into(), inner.client.flush()).await;
        self.end(&format!(
            "unconfirmed: no acknowledgement before host `{}` left the lattice; it may have arrived",
            inner.config.host
        ));
        tracing::info!(lattice = %inner.config.name, host = %inner.config.host, "left the lattice");
    }

    /// Stop every task, detach from the broker and end what is still owed: messages
    /// awaiting acknowledgement are dead-lettered with `reason`, requests still waiting
    /// are answered `shutting-down`.
    fn end(&self, reason: &str) {
        for task in self.tasks.iter().chain(&self.inner.stop_serving()) {
            task.abort();
        }
        if let Some(broker) = self.broker.upgrade() {
            broker.detach_remote(&self.gateway);
        }
        self.inner.end_owed(reason);
    }
}

impl Drop for Lattice {
    /// A lattice dropped without [`leave`](Lattice::leave) (a task cancelled, an error
    /// path) still ends every message it carried, and the broker can join again.
    fn drop(&mut self) {
        self.end(&format!(
            "unconfirmed: the lattice of host `{}` was dropped before an acknowledgement came; it may have arrived",
            self.inner.config.host
        ));
    }
}

impl std::fmt::Debug for Lattice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lattice")
            .field("name", &self.inner.config.name)
            .field("host", &self.inner.config.host)
            .finish()
    }
}

/// The largest message a NATS server takes unless configured otherwise: what the first
/// connection's subscription capacity is sized for.
const USUAL_MAX_PAYLOAD: usize = 1 << 20;

/// Connect to the lattice's servers with each subscription's buffer sized from the inbound
/// byte budget and the server's largest message. The client takes the capacity before it
/// connects, so a server with another limit than the usual one is connected to twice.
async fn connect(
    config: &LatticeConfig,
    subjects: &Subjects,
    counters: Arc<Counters>,
    resend_wake: Arc<tokio::sync::Notify>,
) -> Result<(async_nats::Client, usize), LatticeError> {
    let capacity = config.subscription_capacity(USUAL_MAX_PAYLOAD);
    let client = connect_with(config, subjects, &counters, &resend_wake, capacity).await?;
    let sized = config.subscription_capacity(client.server_info().max_payload);
    if sized == capacity {
        return Ok((client, capacity));
    }
    // No subscription exists yet: nothing is lost by starting over.
    drop(client);
    let client = connect_with(config, subjects, &counters, &resend_wake, sized).await?;
    Ok((client, sized))
}

async fn connect_with(
    config: &LatticeConfig,
    subjects: &Subjects,
    counters: &Arc<Counters>,
    resend_wake: &Arc<tokio::sync::Notify>,
    capacity: usize,
) -> Result<async_nats::Client, LatticeError> {
    let (counters, resend_wake) = (counters.clone(), resend_wake.clone());
    let mut options = match &config.auth {
        Auth::None => async_nats::ConnectOptions::new(),
        Auth::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
        Auth::UserPassword { user, password } => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        Auth::CredentialsFile(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| LatticeError::Credentials {
                path: path.clone(),
                source,
            })?,
    };
    if config.servers.iter().any(|url| url.starts_with("tls://")) {
        options = options.require_tls(true);
    }
    let host = config.host.clone();
    options = options
        .name(format!("courier host {}", config.host))
        // Replies come under the lattice's prefix too, so a host's permissions can be
        // limited to `courier.<lattice>.>`.
        .custom_inbox_prefix(subjects.inbox())
        .connection_timeout(Duration::from_secs(5))
        .subscription_capacity(capacity)
        // A host outlives its server: it keeps trying the others.
        .max_reconnects(None)
        // Quick to try again: each attempt picks a server at random, the dead one among
        // them, and what this host sent waits (and its deadlines run) until it is back.
        // The client's own default doubles up to seconds, longer than the ack timeout.
        // What the client buffered before it noticed the outage goes out on the new
        // connection however soon it comes; its deadline has the receiver drop it if its
        // sender gave up on it meanwhile.
        .reconnect_delay_callback(|attempts| Duration::from_millis(50 * attempts.min(20) as u64))
        .event_callback(move |event| {
            let host = host.clone();
            let counters = counters.clone();
            let resend_wake = resend_wake.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        // The outbound task sends again, on the new connection, what went
                        // out on the old one and was not acknowledged.
                        resend_wake.notify_one();
                        tracing::info!(%host, "connected to NATS")
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(%host, "disconnected from NATS; reconnecting")
                    }
                    async_nats::Event::SlowConsumer(_) => {
                        // The client dropped a message for a full subscription: what
                        // another host sent never reaches this one (its sender ends it
                        // as unconfirmed).
                        counters.slow_consumer_drops.fetch_add(1, Ordering::Relaxed);
                    }
                    other => tracing::debug!(%host, event = %other, "NATS event"),
                }
            }
        });
    options
        .connect(config.servers.clone())
        .await
        .map_err(|source| LatticeError::Connect {
            servers: config.servers.clone(),
            source,
        })
}

/// A random token for one join of one host, so answers meant for an earlier run of the same
/// host name go nowhere. Not a secret: it only has to differ between runs.
fn new_incarnation() -> String {
    use std::hash::{BuildHasher, Hasher};
    // `RandomState` is seeded from the operating system's randomness once per thread, and
    // the time and process id make two runs differ even if it were not.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(now);
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// The incarnation of a live host that answers for this host's name, if one does. NATS
/// answers "no responders" at once when none does, so joining under a free name costs one
/// round trip.
async fn answers_for(client: &async_nats::Client, subjects: &Subjects) -> Option<String> {
    let request = async_nats::Request::new().timeout(Some(PROBE_TIMEOUT));
    let asked = client.send_request(subjects.who(), request);
    match tokio::time::timeout(PROBE_TIMEOUT * 2, asked).await {
        Ok(Ok(answer)) => Some(wire::header_text(
            wire::get(answer.headers.as_ref(), wire::INCARNATION).unwrap_or("?"),
        )),
        _ => None,
    }
}

/// `future`'s output, unless it takes longer than `limit`.
pub(crate) async fn bounded<F: std::future::Future>(
    limit: Duration,
    future: F,
) -> Option<F::Output> {
    tokio::time::timeout(limit, future).await.ok()
}

impl Inner {
    /// Connections the client made to a server so far (it counts them before it says it is
    /// connected).
    pub(crate) fn connections(&self) -> u64 {
        self.statistics.connects.load(Ordering::Relaxed)
    }

    pub(crate) fn max_payload(&self) -> usize {
        self.client.max_payload().saturating_sub(HEADER_ROOM)
    }

    /// Stop taking messages from other hosts: refuse new sends, tell the serving tasks to
    /// unsubscribe and finish what they have, and hand over their tasks (each component's
    /// and each topic's).
    pub(crate) fn stop_serving(&self) -> Vec<JoinHandle<()>> {
        self.leaving.store(true, Ordering::Release);
        let _ = self.stop.send(true);
        let mut tasks: Vec<JoinHandle<()>> = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values_mut()
            .filter_map(|s| s.task.take())
            .collect();
        tasks.extend(
            self.topic_tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
                .map(|(_, task)| task),
        );
        tasks
    }

    /// End everything this host still owes an ending: messages awaiting acknowledgement
    /// are dead-lettered with `reason` (counted unconfirmed), requests still waiting are
    /// answered `shutting-down`.
    pub(crate) fn end_owed(&self, reason: &str) {
        self.leaving.store(true, Ordering::Release);
        let left: Vec<Unacked> = {
            let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
            self.counters
                .unconfirmed
                .fetch_add(unacked.len() as u64, Ordering::Relaxed);
            let left: Vec<Unacked> = unacked.take_all();
            for unacked in &left {
                self.outbound_bytes
                    .fetch_sub(unacked.len, Ordering::Relaxed);
            }
            left
        };
        for unacked in left {
            unacked.message.dead_letter(reason);
        }
        let waiting: Vec<Waiter> =
            std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()))
                .into_values()
                .collect();
        for waiter in waiting {
            let _ = waiter.send(Err(MessagingError::ShuttingDown));
        }
    }

    pub(crate) fn unacked_len(&self) -> usize {
        self.unacked.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) async fn subscribe(&self, subject: String) -> Result<Subscriber, LatticeError> {
        self.client
            .subscribe(subject.clone())
            .await
            .map_err(|err| LatticeError::Subscribe {
                subject,
                reason: err.to_string(),
            })
    }
}

/// Completes once `stop` says so (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// The sender id in a header, if it is one a host could have stamped: the host's own
/// sender id or a valid component id.
pub(crate) fn valid_sender(sender: &str) -> Option<ComponentId> {
    (sender.len() <= MAX_NAME_BYTES && (sender == HOST_SENDER || check_id(sender).is_ok()))
        .then(|| ComponentId::from(sender))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ids_a_host_could_stamp_are_taken_as_senders() {
        assert_eq!(valid_sender("ping").as_deref(), Some("ping"));
        assert_eq!(valid_sender("host").as_deref(), Some("host"));
        assert_eq!(valid_sender("bad id\r\n"), None);
        assert_eq!(valid_sender(&"a".repeat(300)), None);
    }
}
