//! A host in a lattice: the NATS connection, what goes out, what comes in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Subscriber};
use bytes::Bytes;
use courier_host_broker::{
    Broker, ComponentId, Exposure, HOST_SENDER, MAX_NAME_BYTES, MessagingError, Remote,
    RemoteMessage, RemoteRefusal, Served, WeakBroker, check_id,
};
use courier_host_core::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{Auth, LatticeConfig};
use crate::directory::{Directory, Heartbeat, HostInfo};
use crate::metrics::{Counters, LatticeMetrics};
use crate::subject::{self, Subjects, is_plain_token};
use crate::wire::{self, Kind};

/// Room kept for the headers within the server's largest message: the largest headers a
/// host writes (two names of at most 255 bytes, a host name, an id, a kind, a timeout)
/// take well under this.
pub const HEADER_ROOM: usize = 2048;

/// How long a host asks whether another host already serves an id before it serves it.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// How long a host tries to see its own new subscription answer before it reports a
/// component served.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

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
}

/// A host's place in a lattice: this broker's components reach components on other hosts,
/// and the exposed ones here are reached from them. Made by [`Lattice::join`].
///
/// Dropping it stops what it runs; [`Lattice::leave`] leaves in order first.
pub struct Lattice {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

/// Where a request's answer goes.
type Waiter = oneshot::Sender<Result<Vec<u8>, MessagingError>>;

/// A message waiting for its acknowledgement.
struct Unacked {
    queued: Instant,
    message: RemoteMessage,
}

/// What the outbound task puts on the wire, in the order it was queued.
enum Outbound {
    /// A message or request for one component, answered on the reply subject of `seq`.
    Addressed {
        seq: u64,
        request: bool,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    },
    Publication {
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    },
}

impl Outbound {
    fn len(&self) -> u64 {
        match self {
            Outbound::Addressed { payload, .. } | Outbound::Publication { payload, .. } => {
                payload.len() as u64
            }
        }
    }
}

/// A component this host serves to the others: the task that reads its subject.
struct Serving {
    exposure: Exposure,
    task: Option<JoinHandle<()>>,
    subscriptions: Vec<courier_host_broker::Pattern>,
}

pub(crate) struct Inner {
    config: LatticeConfig,
    subjects: Subjects,
    client: async_nats::Client,
    broker: WeakBroker,
    directory: Directory,
    pub(crate) counters: Counters,
    outbound: mpsc::Sender<Outbound>,
    outbound_bytes: AtomicU64,
    /// Numbers messages and requests in the order they are queued.
    seq: AtomicU64,
    unacked: Mutex<BTreeMap<u64, Unacked>>,
    waiting: Mutex<HashMap<u64, Waiter>>,
    serving: Mutex<HashMap<ComponentId, Serving>>,
    topic_tasks: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Tells the serving tasks to unsubscribe and finish what they have.
    stop: watch::Sender<bool>,
    leaving: AtomicBool,
}

/// The part of a host the broker holds: its way to other hosts.
struct Gateway(Arc<Inner>);

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
        let subjects = Subjects::new(&config.name, &config.host);
        let client = connect(&config, &subjects).await?;

        let (outbound, queue) = mpsc::channel(config.outbound_capacity);
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            subjects,
            client,
            broker: broker.downgrade(),
            directory: Directory::default(),
            counters: Counters::default(),
            outbound,
            outbound_bytes: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            unacked: Mutex::new(BTreeMap::new()),
            waiting: Mutex::new(HashMap::new()),
            serving: Mutex::new(HashMap::new()),
            topic_tasks: Mutex::new(HashMap::new()),
            stop,
            leaving: AtomicBool::new(false),
            config,
        });

        let replies = inner
            .subscribe(format!("{}.*", inner.subjects.replies()))
            .await?;
        let heartbeats = inner.subscribe(inner.subjects.heartbeats()).await?;
        let hellos = inner.subscribe(inner.subjects.hellos()).await?;
        let mut tasks = vec![
            tokio::spawn(inner.clone().send_queued(queue)),
            tokio::spawn(inner.clone().hear_replies(replies)),
            tokio::spawn(inner.clone().hear_heartbeats(heartbeats)),
            tokio::spawn(inner.clone().hear_hellos(hellos)),
            tokio::spawn(inner.clone().beat()),
            tokio::spawn(inner.clone().expire_unacked()),
        ];

        let already = broker
            .attach_remote(Arc::new(Gateway(inner.clone())))
            .map_err(|_| LatticeError::AlreadyJoined)?;
        for served in already {
            let id = served.id.clone();
            if let Err(reason) = inner.serve(served).await {
                tracing::error!(component = %id, %reason, "not served to other hosts");
            }
        }
        // Ask the others for their heartbeats now rather than within a period.
        let _ = inner
            .client
            .publish(inner.subjects.hello(), Bytes::new())
            .await;
        inner.publish_heartbeat(false).await;
        tracing::info!(
            lattice = %inner.config.name,
            host = %inner.config.host,
            servers = ?inner.config.servers,
            "joined the lattice"
        );
        tasks.shrink_to_fit();
        Ok(Lattice { inner, tasks })
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
    /// `sent == acked + refused_there + no_host + unconfirmed + awaiting_ack`.
    pub fn metrics(&self) -> LatticeMetrics {
        let unacked = self.inner.unacked.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.counters.snapshot(
            unacked.len() as u64,
            self.inner.outbound_bytes.load(Ordering::Relaxed),
        )
    }

    /// The largest payload a message to another host may carry: the server's limit less
    /// the room kept for headers.
    pub fn max_payload(&self) -> usize {
        self.inner.max_payload()
    }

    /// Leave the lattice in order: tell the other hosts, stop taking messages from them
    /// (handling what already came), and wait up to `drain` for the acknowledgements of
    /// what this host sent; the ones still missing then are dead-lettered as
    /// `unconfirmed`. Sends to other hosts are refused with `shutting-down` from the start.
    pub async fn leave(&self, drain: Duration) {
        let inner = self.inner.clone();
        inner.leaving.store(true, Ordering::Release);
        inner.publish_heartbeat(true).await;
        let tasks = inner.stop_serving();
        let finish = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        let deadline = Instant::now() + drain;
        let _ = tokio::time::timeout_at(deadline.into(), finish).await;
        while inner.unacked_len() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let left: Vec<Unacked> = {
            let mut unacked = inner.unacked.lock().unwrap_or_else(|e| e.into_inner());
            inner
                .counters
                .unconfirmed
                .fetch_add(unacked.len() as u64, Ordering::Relaxed);
            std::mem::take(&mut *unacked).into_values().collect()
        };
        for unacked in left {
            let reason = format!(
                "unconfirmed: no acknowledgement before host `{}` left the lattice; it may have arrived",
                inner.config.host
            );
            unacked.message.dead_letter(&reason);
        }
        let _ = inner.client.flush().await;
        for task in &self.tasks {
            task.abort();
        }
        tracing::info!(lattice = %inner.config.name, host = %inner.config.host, "left the lattice");
    }
}

impl Drop for Lattice {
    fn drop(&mut self) {
        for task in self.tasks.iter().chain(&self.inner.stop_serving()) {
            task.abort();
        }
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

async fn connect(
    config: &LatticeConfig,
    subjects: &Subjects,
) -> Result<async_nats::Client, LatticeError> {
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
        // A host outlives its server: it keeps trying the others.
        .max_reconnects(None)
        .event_callback(move |event| {
            let host = host.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(%host, "connected to NATS")
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(%host, "disconnected from NATS; reconnecting")
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

impl Inner {
    fn max_payload(&self) -> usize {
        self.client.max_payload().saturating_sub(HEADER_ROOM)
    }

    /// Stop taking messages from other hosts: refuse new sends, tell the serving tasks to
    /// unsubscribe and finish what they have, and hand over their tasks (each component's
    /// and each topic's).
    fn stop_serving(&self) -> Vec<JoinHandle<()>> {
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

    fn unacked_len(&self) -> usize {
        self.unacked.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    async fn subscribe(&self, subject: String) -> Result<Subscriber, LatticeError> {
        self.client
            .subscribe(subject.clone())
            .await
            .map_err(|err| LatticeError::Subscribe {
                subject,
                reason: err.to_string(),
            })
    }

    /// The headers of what this host sends: what it is and who sent it. The target is the
    /// subject, the sending host and sequence number are the reply subject; a publication
    /// also names its host, so the host does not take its own back.
    fn headers(&self, kind: Kind, sender: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(wire::KIND, kind.as_str());
        headers.insert(wire::SENDER, sender);
        if kind == Kind::Publication {
            headers.insert(wire::HOST, self.config.host.as_str());
        }
        headers
    }

    /// The refusal of a send to `target` before anything goes on the wire, if it must be
    /// refused: this host is leaving, no host serves the target, or the payload is too
    /// large for the wire.
    fn refuse_early(&self, target: &str, len: usize) -> Option<MessagingError> {
        if self.leaving.load(Ordering::Acquire) {
            return Some(MessagingError::ShuttingDown);
        }
        if !self.directory.serves(target) {
            return Some(MessagingError::TargetNotFound(target.to_string()));
        }
        let limit = self.max_payload();
        if len > limit {
            return Some(MessagingError::PayloadTooLarge(limit as u64));
        }
        None
    }

    /// Queue `item` for the wire, within the outbound bounds.
    fn queue(&self, item: Outbound, target: &str) -> Result<(), MessagingError> {
        let len = item.len();
        let queued = self.outbound_bytes.fetch_add(len, Ordering::Relaxed) + len;
        if queued > self.config.outbound_bytes {
            self.outbound_bytes.fetch_sub(len, Ordering::Relaxed);
            return Err(MessagingError::MailboxFull(target.to_string()));
        }
        self.outbound.try_send(item).map_err(|err| {
            self.outbound_bytes.fetch_sub(len, Ordering::Relaxed);
            match err {
                mpsc::error::TrySendError::Full(_) => {
                    MessagingError::MailboxFull(target.to_string())
                }
                mpsc::error::TrySendError::Closed(_) => MessagingError::ShuttingDown,
            }
        })
    }

    /// Put what is queued on the wire, in order. A message is published with a reply
    /// subject of its own sequence number, where its acknowledgement comes back.
    async fn send_queued(self: Arc<Self>, mut queue: mpsc::Receiver<Outbound>) {
        let replies = self.subjects.replies();
        let mut batch = Vec::with_capacity(256);
        while queue.recv_many(&mut batch, 256).await > 0 {
            for item in batch.drain(..) {
                self.outbound_bytes.fetch_sub(item.len(), Ordering::Relaxed);
                match item {
                    Outbound::Addressed {
                        seq,
                        request,
                        subject,
                        headers,
                        payload,
                    } => {
                        let reply = format!("{replies}.{seq}");
                        let Err(err) = self
                            .client
                            .publish_with_reply_and_headers(subject, reply, headers, payload)
                            .await
                        else {
                            continue;
                        };
                        if request {
                            self.answer(
                                seq,
                                Err(MessagingError::TargetCrashed(format!(
                                    "the request could not be sent to another host: {err}"
                                ))),
                            );
                        } else if let Some(unacked) =
                            self.take_unacked(seq, &self.counters.unconfirmed)
                        {
                            unacked.message.dead_letter(&format!(
                                "unconfirmed: the NATS client did not take it: {err}"
                            ));
                        }
                    }
                    Outbound::Publication {
                        subject,
                        headers,
                        payload,
                    } => {
                        if let Err(err) = self
                            .client
                            .publish_with_headers(subject, headers, payload)
                            .await
                        {
                            self.counters
                                .publications_dropped
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %err, "publication not sent to other hosts");
                        }
                    }
                }
            }
        }
    }

    /// Take the message `seq` from those awaiting acknowledgement, counting its ending in
    /// `outcome` under the same lock, so a snapshot of the counters always balances.
    fn take_unacked(&self, seq: u64, outcome: &AtomicU64) -> Option<Unacked> {
        let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
        let taken = unacked.remove(&seq);
        if taken.is_some() {
            outcome.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Hand a request's answer to whoever waits for it, if anyone still does.
    fn answer(&self, seq: u64, answer: Result<Vec<u8>, MessagingError>) {
        let waiter = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq);
        if let Some(waiter) = waiter {
            let _ = waiter.send(answer);
        }
    }

    /// Acknowledgements and replies: `<replies>.<seq>`, an empty message for a message
    /// queued, a refusal in the headers, NATS's "no responders" when nobody serves the
    /// target, or a request's reply.
    async fn hear_replies(self: Arc<Self>, mut replies: Subscriber) {
        while let Some(reply) = replies.next().await {
            let last = reply.subject.rsplit('.').next().unwrap_or_default();
            if last == wire::ACKS {
                self.acknowledged(&reply.payload);
                continue;
            }
            let Ok(seq) = last.parse::<u64>() else {
                continue;
            };
            let no_responders = reply.status == Some(async_nats::StatusCode::NO_RESPONDERS);
            let error = wire::take_error(reply.headers.as_ref());
            let outcome = match (no_responders, &error) {
                (true, _) => &self.counters.no_host,
                (false, Some(_)) => &self.counters.refused_there,
                (false, None) => &self.counters.acked,
            };
            if let Some(unacked) = self.take_unacked(seq, outcome) {
                let target = unacked.message.target().clone();
                match error {
                    _ if no_responders => unacked
                        .message
                        .dead_letter(&format!("no-host: no host serves `{target}`")),
                    Some(error) => {
                        let host = wire::get(reply.headers.as_ref(), wire::HOST).unwrap_or("?");
                        unacked.message.dead_letter(&format!(
                            "refused by host `{}`: {}",
                            wire::header_text(host),
                            wire::error_code(&error)
                        ));
                    }
                    None => unacked.message.delivered(),
                }
                continue;
            }
            let answer = if no_responders {
                Err(MessagingError::TargetNotFound(
                    "no host serves the target".into(),
                ))
            } else if let Some(error) = error {
                Err(error)
            } else {
                Ok(reply.payload.to_vec())
            };
            self.answer(seq, answer);
        }
    }

    /// A batch of acknowledgements: each message it names was queued on the serving host.
    fn acknowledged(&self, payload: &[u8]) {
        let Some(seqs) = wire::decode_seqs(payload) else {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let acked: Vec<Unacked> = {
            let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
            let acked: Vec<Unacked> = seqs.iter().filter_map(|seq| unacked.remove(seq)).collect();
            self.counters
                .acked
                .fetch_add(acked.len() as u64, Ordering::Relaxed);
            acked
        };
        for unacked in acked {
            unacked.message.delivered();
        }
    }

    /// Dead-letter messages whose acknowledgement is overdue: the serving host may have
    /// queued them (and crashed, or its acknowledgement was lost) or not.
    async fn expire_unacked(self: Arc<Self>) {
        let timeout = self.config.ack_timeout;
        let mut ticks = tokio::time::interval((timeout / 4).max(Duration::from_millis(10)));
        loop {
            ticks.tick().await;
            let overdue: Vec<Unacked> = {
                let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
                let mut overdue = Vec::new();
                while let Some(entry) = unacked.first_entry() {
                    if entry.get().queued.elapsed() < timeout {
                        break;
                    }
                    overdue.push(entry.remove());
                }
                self.counters
                    .unconfirmed
                    .fetch_add(overdue.len() as u64, Ordering::Relaxed);
                overdue
            };
            for unacked in overdue {
                unacked.message.dead_letter(&format!(
                    "unconfirmed: no acknowledgement within {}; it may have arrived",
                    courier_host_core::units::format_duration(timeout)
                ));
            }
        }
    }

    /// Publish what this host serves; `leaving` says it serves nothing from now on.
    async fn publish_heartbeat(&self, leaving: bool) {
        let heartbeat = if leaving {
            Heartbeat {
                host: self.config.host.clone(),
                leaving: true,
                ..Heartbeat::default()
            }
        } else {
            self.heartbeat()
        };
        let body = serde_json::to_vec(&heartbeat).unwrap_or_default();
        if let Err(err) = self
            .client
            .publish(self.subjects.heartbeat(), body.into())
            .await
        {
            tracing::warn!(error = %err, "heartbeat not sent");
        }
    }

    fn heartbeat(&self) -> Heartbeat {
        let serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        let mut heartbeat = Heartbeat {
            host: self.config.host.clone(),
            ..Heartbeat::default()
        };
        let mut topics = BTreeSet::new();
        for (id, serving) in serving.iter() {
            match serving.exposure {
                Exposure::Lattice => heartbeat.served.push(id.to_string()),
                Exposure::Replicated => heartbeat.replicated.push(id.to_string()),
                Exposure::Local => {}
            }
            topics.extend(serving.subscriptions.iter().map(|p| p.to_string()));
        }
        heartbeat.served.sort();
        heartbeat.replicated.sort();
        heartbeat.topics = topics.into_iter().collect();
        heartbeat
    }

    async fn beat(self: Arc<Self>) {
        let period = self.config.heartbeat;
        let mut ticks = tokio::time::interval(period);
        loop {
            ticks.tick().await;
            if self.leaving.load(Ordering::Acquire) {
                return;
            }
            self.publish_heartbeat(false).await;
            self.directory.expire(period * 3);
        }
    }

    async fn hear_heartbeats(self: Arc<Self>, mut heartbeats: Subscriber) {
        while let Some(message) = heartbeats.next().await {
            // `courier.<lattice>.h.<host>.hb`
            let Some(from) = message.subject.split('.').nth(3) else {
                continue;
            };
            if from == self.config.host {
                continue;
            }
            match serde_json::from_slice::<Heartbeat>(&message.payload) {
                Ok(heartbeat) => self.directory.heard(from, heartbeat),
                Err(err) => {
                    tracing::warn!(host = %wire::header_text(from), error = %err, "unreadable heartbeat")
                }
            }
        }
    }

    async fn hear_hellos(self: Arc<Self>, mut hellos: Subscriber) {
        while let Some(message) = hellos.next().await {
            if message.subject.split('.').nth(3) != Some(self.config.host.as_str()) {
                self.publish_heartbeat(false).await;
            }
        }
    }

    /// Serve `served` to the other hosts: subscribe to its subject if it is exposed (once
    /// sure no other host serves it, unless it is replicated), and to its topics.
    async fn serve(self: &Arc<Self>, served: Served) -> Result<(), String> {
        let Served {
            id,
            exposure,
            subscriptions,
        } = served;
        let task = match exposure {
            Exposure::Local => None,
            Exposure::Lattice | Exposure::Replicated => {
                let subject = self.subjects.actor(&id);
                if exposure == Exposure::Lattice
                    && let Some(host) = self.probe(&subject, PROBE_TIMEOUT).await
                    && host != self.config.host
                {
                    return Err(format!(
                        "host `{}` already serves `{id}` in the lattice `{}`",
                        wire::header_text(&host),
                        self.config.name
                    ));
                }
                let subscriber = if exposure == Exposure::Replicated {
                    self.client
                        .queue_subscribe(subject.clone(), "courier".to_string())
                        .await
                } else {
                    self.client.subscribe(subject.clone()).await
                }
                .map_err(|err| format!("cannot subscribe to `{subject}`: {err}"))?;
                let task = tokio::spawn(self.clone().serve_actor(id.clone(), subscriber));
                // A flush does not prove the server has the subscription; an answer to a
                // probe on the subject does.
                let deadline = Instant::now() + CONFIRM_TIMEOUT;
                while self.probe(&subject, PROBE_TIMEOUT).await.is_none() {
                    if Instant::now() >= deadline {
                        task.abort();
                        return Err(format!(
                            "the subscription to `{subject}` was not confirmed within {}",
                            courier_host_core::units::format_duration(CONFIRM_TIMEOUT)
                        ));
                    }
                }
                Some(task)
            }
        };
        self.serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                Serving {
                    exposure,
                    task,
                    subscriptions,
                },
            );
        self.resubscribe_topics().await;
        self.publish_heartbeat(false).await;
        Ok(())
    }

    fn withdraw(self: &Arc<Self>, id: &ComponentId) {
        let removed = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(Serving {
            task: Some(task), ..
        }) = removed
        {
            task.abort();
        }
        let inner = self.clone();
        tokio::spawn(async move {
            inner.resubscribe_topics().await;
            inner.publish_heartbeat(false).await;
        });
    }

    /// Which host answers a probe on `subject`, if any does within `timeout`.
    async fn probe(&self, subject: &str, timeout: Duration) -> Option<String> {
        let mut headers = HeaderMap::new();
        headers.insert(wire::KIND, Kind::Probe.as_str());
        headers.insert(wire::HOST, self.config.host.as_str());
        let request = async_nats::Request::new()
            .headers(headers)
            .timeout(Some(timeout));
        match self.client.send_request(subject.to_string(), request).await {
            Ok(answer) => Some(
                wire::get(answer.headers.as_ref(), wire::HOST)
                    .unwrap_or("?")
                    .to_string(),
            ),
            Err(_) => None,
        }
    }

    /// Subscribe to the topics this host's components hear, once each: the fewest
    /// subjects that cover them, so a publication reaches this host once.
    async fn resubscribe_topics(self: &Arc<Self>) {
        let patterns: Vec<courier_host_broker::Pattern> = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|s| s.subscriptions.iter().cloned())
            .collect();
        let wanted = covering(&patterns);
        let wanted: BTreeSet<String> = wanted
            .iter()
            .map(|p| self.subjects.topic_pattern(p))
            .collect();
        let (to_add, to_drop): (Vec<String>, Vec<JoinHandle<()>>) = {
            let mut tasks = self.topic_tasks.lock().unwrap_or_else(|e| e.into_inner());
            let to_drop = tasks
                .extract_if(|subject, _| !wanted.contains(subject))
                .map(|(_, task)| task)
                .collect();
            let to_add = wanted
                .iter()
                .filter(|subject| !tasks.contains_key(*subject))
                .cloned()
                .collect();
            (to_add, to_drop)
        };
        for task in to_drop {
            task.abort();
        }
        for subject in to_add {
            match self.client.subscribe(subject.clone()).await {
                Ok(subscriber) => {
                    let task = tokio::spawn(self.clone().hear_topic(subscriber));
                    self.topic_tasks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(subject, task);
                }
                Err(err) => tracing::error!(%subject, error = %err, "cannot hear topic"),
            }
        }
        let _ = self.client.flush().await;
    }

    /// Read `id`'s subject until told to stop; then unsubscribe and handle what had already
    /// come, so nothing this host took from the server is left unanswered.
    async fn serve_actor(self: Arc<Self>, id: ComponentId, mut subscriber: Subscriber) {
        let mut stop = self.stop.subscribe();
        let mut acks = Acks::default();
        loop {
            // Acknowledgements wait while more messages are ready, and go out together,
            // one NATS message for a batch, when none is.
            let next = match subscriber.next().now_or_never() {
                Some(next) => next,
                None => {
                    self.send_acks(&mut acks).await;
                    tokio::select! {
                        biased;
                        next = subscriber.next() => next,
                        _ = stopped(&mut stop) => break,
                    }
                }
            };
            let Some(message) = next else {
                self.send_acks(&mut acks).await;
                return;
            };
            if let Some(reply) = self.arrival(&id, message).await
                && acks.add(reply)
            {
                self.send_acks(&mut acks).await;
            }
        }
        let _ = subscriber.unsubscribe().await;
        while let Some(message) = subscriber.next().await {
            if let Some(reply) = self.arrival(&id, message).await
                && acks.add(reply)
            {
                self.send_acks(&mut acks).await;
            }
        }
        self.send_acks(&mut acks).await;
    }

    /// Send the acknowledgements gathered in `acks`: one message per host that sent.
    async fn send_acks(&self, acks: &mut Acks) {
        for (replies, seqs) in acks.take() {
            let subject = format!("{replies}.{}", wire::ACKS);
            if let Err(err) = self
                .client
                .publish(subject, wire::encode_seqs(&seqs).into())
                .await
            {
                tracing::warn!(error = %err, "acknowledgements to another host not sent");
            }
        }
    }

    /// A message, request or probe for the local component `id`. Returns the reply
    /// subject of a message queued here, whose acknowledgement the caller sends in a batch;
    /// everything else is answered here.
    async fn arrival(
        self: &Arc<Self>,
        id: &ComponentId,
        message: async_nats::Message,
    ) -> Option<async_nats::Subject> {
        let headers = message.headers.as_ref();
        let reply = message.reply.clone();
        let kind = wire::get(headers, wire::KIND).and_then(Kind::parse);
        if kind == Some(Kind::Probe) {
            if let Some(reply) = reply {
                let mut answer = HeaderMap::new();
                answer.insert(wire::HOST, self.config.host.as_str());
                let _ = self
                    .client
                    .publish_with_headers(reply, answer, Bytes::new())
                    .await;
            }
            return None;
        }
        let broker = self.broker.upgrade()?;
        let sender = wire::get(headers, wire::SENDER).and_then(valid_sender);
        let outcome = match (kind, sender) {
            (Some(Kind::Message), Some(sender)) => {
                self.counters
                    .arrived_messages
                    .fetch_add(1, Ordering::Relaxed);
                broker.accept_message(sender, id, message.payload)
            }
            (Some(Kind::Request), Some(sender)) => {
                self.counters
                    .arrived_requests
                    .fetch_add(1, Ordering::Relaxed);
                let timeout = wire::get(headers, wire::TIMEOUT_MS)
                    .and_then(|ms| ms.parse::<u32>().ok())
                    .map(|ms| Duration::from_millis(ms.into()))
                    .unwrap_or(Duration::ZERO);
                match broker.accept_request(sender, id, message.payload, timeout) {
                    Ok(answer) => {
                        let inner = self.clone();
                        tokio::spawn(async move {
                            let answer = answer.await;
                            if let Some(reply) = reply {
                                inner.reply(reply, answer).await;
                            }
                        });
                        return None;
                    }
                    Err(error) => Err(error),
                }
            }
            _ => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                Err(MessagingError::AccessDenied(
                    "a message without a valid kind and sender".into(),
                ))
            }
        };
        match (outcome, reply) {
            (Ok(()), Some(reply)) if Acks::batchable(&reply) => Some(reply),
            (outcome, Some(reply)) => {
                self.reply(reply, outcome.map(|()| Vec::new())).await;
                None
            }
            (_, None) => None,
        }
    }

    /// Answer on `reply`: the reply's bytes (empty for an acknowledgement) or the error.
    async fn reply(&self, reply: async_nats::Subject, answer: Result<Vec<u8>, MessagingError>) {
        let mut headers = HeaderMap::new();
        let payload = match answer {
            Ok(bytes) if bytes.len() > self.max_payload() => {
                wire::put_error(
                    &mut headers,
                    &MessagingError::HandlerFailed(courier_host_broker::ComponentError::Internal(
                        format!(
                            "a reply of {} bytes is over the lattice's limit of {} bytes",
                            bytes.len(),
                            self.max_payload()
                        ),
                    )),
                );
                Bytes::new()
            }
            Ok(bytes) => Bytes::from(bytes),
            Err(error) => {
                wire::put_error(&mut headers, &error);
                headers.insert(wire::HOST, self.config.host.as_str());
                Bytes::new()
            }
        };
        if let Err(err) = self
            .client
            .publish_with_headers(reply, headers, payload)
            .await
        {
            tracing::warn!(error = %err, "answer to another host not sent");
        }
    }

    /// A publication from another host on a topic this host hears.
    async fn hear_topic(self: Arc<Self>, mut subscriber: Subscriber) {
        let prefix = format!("{}.", self.subjects.topic(""));
        let prefix = prefix.trim_end_matches("%.").to_string();
        let mut stop = self.stop.subscribe();
        loop {
            let message = tokio::select! {
                biased;
                message = subscriber.next() => match message {
                    Some(message) => message,
                    None => return,
                },
                _ = stopped(&mut stop) => return,
            };
            let headers = message.headers.as_ref();
            if wire::get(headers, wire::HOST) == Some(self.config.host.as_str()) {
                // Its own publication, already delivered here.
                continue;
            }
            let topic = message
                .subject
                .strip_prefix(prefix.as_str())
                .and_then(subject::decode);
            let sender = wire::get(headers, wire::SENDER).and_then(valid_sender);
            let (Some(topic), Some(sender)) = (topic, sender) else {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let Some(broker) = self.broker.upgrade() else {
                return;
            };
            self.counters
                .arrived_publications
                .fetch_add(1, Ordering::Relaxed);
            broker.accept_publication(&sender, &topic, message.payload);
        }
    }
}

/// Acknowledgements gathered for a batch: sequence numbers by the reply prefix of the host
/// that sent them.
#[derive(Default)]
struct Acks {
    pending: Vec<(String, Vec<u64>)>,
    count: usize,
}

impl Acks {
    /// Whether a message with this reply subject (`<prefix>.<seq>`, as hosts write it) can
    /// be acknowledged in a batch.
    fn batchable(reply: &str) -> bool {
        reply
            .rsplit_once('.')
            .is_some_and(|(_, seq)| seq.parse::<u64>().is_ok())
    }

    /// Gather the acknowledgement for `reply`; true once the batch is full.
    fn add(&mut self, reply: async_nats::Subject) -> bool {
        let Some((prefix, seq)) = reply
            .rsplit_once('.')
            .and_then(|(prefix, seq)| Some((prefix, seq.parse::<u64>().ok()?)))
        else {
            return false;
        };
        match self.pending.iter_mut().find(|(p, _)| p == prefix) {
            Some((_, seqs)) => seqs.push(seq),
            None => self.pending.push((prefix.to_string(), vec![seq])),
        }
        self.count += 1;
        self.count >= wire::MAX_ACKS
    }

    fn take(&mut self) -> Vec<(String, Vec<u64>)> {
        self.count = 0;
        std::mem::take(&mut self.pending)
    }
}

/// Completes once `stop` says so (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
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
fn valid_sender(sender: &str) -> Option<ComponentId> {
    (sender.len() <= MAX_NAME_BYTES && (sender == HOST_SENDER || check_id(sender).is_ok()))
        .then(|| ComponentId::from(sender))
}

/// The fewest patterns that match every topic `patterns` match, none covering another:
/// `*` covers all, `a/*` covers `a/b` and `a/b/*`.
fn covering(patterns: &[courier_host_broker::Pattern]) -> Vec<courier_host_broker::Pattern> {
    use courier_host_broker::Pattern;
    let covers = |outer: &Pattern, inner: &Pattern| match (outer, inner) {
        (Pattern::Any, _) => true,
        (Pattern::Prefix(outer), Pattern::Prefix(inner)) => {
            inner.starts_with(outer.as_str()) && inner.len() > outer.len()
        }
        (Pattern::Prefix(_), Pattern::Exact(name)) => outer.matches(name),
        _ => false,
    };
    let mut unique: Vec<Pattern> = Vec::new();
    for pattern in patterns {
        if !unique.contains(pattern) {
            unique.push(pattern.clone());
        }
    }
    unique
        .iter()
        .filter(|p| !unique.iter().any(|q| q != *p && covers(q, p)))
        .cloned()
        .collect()
}

impl Remote for Gateway {
    fn send(&self, message: RemoteMessage) -> Result<(), RemoteRefusal> {
        let inner = &self.0;
        if let Some(error) = inner.refuse_early(message.target(), message.payload().len()) {
            inner.counters.refused_here.fetch_add(1, Ordering::Relaxed);
            return Err(RemoteRefusal { error, message });
        }
        let seq = inner.next_seq();
        let target = message.target().clone();
        let headers = inner.headers(Kind::Message, message.sender());
        let item = Outbound::Addressed {
            seq,
            request: false,
            subject: inner.subjects.actor(message.target()),
            headers,
            payload: message.payload().clone(),
        };
        // On record, and counted sent, before it can be acknowledged.
        {
            let mut unacked = inner.unacked.lock().unwrap_or_else(|e| e.into_inner());
            unacked.insert(
                seq,
                Unacked {
                    queued: Instant::now(),
                    message,
                },
            );
            inner.counters.sent.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(error) = inner.queue(item, &target) {
            // Never queued, so never acknowledged: it comes back as it went in.
            let message = {
                let mut unacked = inner.unacked.lock().unwrap_or_else(|e| e.into_inner());
                inner.counters.sent.fetch_sub(1, Ordering::Relaxed);
                inner.counters.refused_here.fetch_add(1, Ordering::Relaxed);
                unacked
                    .remove(&seq)
                    .expect("only the queue takes a message it was given")
                    .message
            };
            return Err(RemoteRefusal { error, message });
        }
        Ok(())
    }

    fn request(
        &self,
        sender: &ComponentId,
        target: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, MessagingError>> {
        let inner = self.0.clone();
        if let Some(error) = inner.refuse_early(target, payload.len()) {
            inner.counters.refused_here.fetch_add(1, Ordering::Relaxed);
            return Box::pin(async move { Err(error) });
        }
        let seq = inner.next_seq();
        let mut headers = inner.headers(Kind::Request, sender);
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        headers.insert(wire::TIMEOUT_MS, timeout_ms.to_string());
        let (answer, answered) = oneshot::channel();
        inner
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq, answer);
        let item = Outbound::Addressed {
            seq,
            request: true,
            subject: inner.subjects.actor(target),
            headers,
            payload,
        };
        if let Err(error) = inner.queue(item, target) {
            inner.counters.refused_here.fetch_add(1, Ordering::Relaxed);
            inner
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&seq);
            return Box::pin(async move { Err(error) });
        }
        inner.counters.requests.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            // Whatever ends the wait (an answer, the caller's timeout, the caller giving
            // up), the entry goes.
            let forget = Forget { inner: &inner, seq };
            let answer = match tokio::time::timeout(timeout, answered).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(MessagingError::ShuttingDown),
                Err(_) => Err(MessagingError::Timeout),
            };
            drop(forget);
            answer
        })
    }

    fn publish(&self, sender: &ComponentId, topic: &str, payload: Bytes) {
        let inner = &self.0;
        if inner.leaving.load(Ordering::Acquire) {
            return;
        }
        if payload.len() > inner.max_payload() {
            inner
                .counters
                .publications_dropped
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %sender,
                topic = %wire::header_text(topic),
                len = payload.len(),
                limit = inner.max_payload(),
                "publication too large for other hosts; delivered on this host only"
            );
            return;
        }
        let headers = inner.headers(Kind::Publication, sender);
        let item = Outbound::Publication {
            subject: inner.subjects.topic(topic),
            headers,
            payload,
        };
        match inner.queue(item, topic) {
            Ok(()) => {
                inner.counters.publications.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                inner
                    .counters
                    .publications_dropped
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%sender, "publication not sent to other hosts: outbound queue full");
            }
        }
    }

    fn serve(&self, served: Served) -> BoxFuture<'static, Result<(), String>> {
        let inner = self.0.clone();
        Box::pin(async move { inner.serve(served).await })
    }

    fn withdraw(&self, id: &ComponentId) {
        self.0.withdraw(id);
    }
}

/// Removes a request's entry from the waiting list when its wait ends.
struct Forget<'a> {
    inner: &'a Inner,
    seq: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_host_broker::Pattern;

    #[test]
    fn topic_subscriptions_cover_each_topic_once() {
        let patterns = [
            Pattern::parse("news"),
            Pattern::parse("scores/*"),
            Pattern::parse("scores/eu"),
            Pattern::parse("scores/eu/*"),
            Pattern::parse("news"),
        ];
        assert_eq!(
            covering(&patterns),
            [Pattern::parse("news"), Pattern::parse("scores/*")]
        );
        let with_any = [Pattern::parse("news"), Pattern::Any];
        assert_eq!(covering(&with_any), [Pattern::Any]);
    }

    #[test]
    fn only_ids_a_host_could_stamp_are_taken_as_senders() {
        assert_eq!(valid_sender("ping").as_deref(), Some("ping"));
        assert_eq!(valid_sender("host").as_deref(), Some("host"));
        assert_eq!(valid_sender("bad id\r\n"), None);
        assert_eq!(valid_sender(&"a".repeat(300)), None);
    }
}
