//! Serving the ingress over HTTP/1.1 with bounds that a slow, idle or numerous client cannot
//! get around: hyper's header-read timeout, tower-http's body-read timeout, and a cap on
//! open connections.
//!
//! At the cap, a new connection takes the place of the one that has been idle longest (no
//! request in flight: still waiting for its first request's headers, or between two
//! requests), which is closed. So a flood of connections that send nothing, or half a
//! request line, cannot lock real clients out until the header timeout: each newcomer sheds
//! one of them. Only when every connection has a request in flight is the newcomer closed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceBuilder;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// How long a client has to send a request's headers: generous for any real client on
/// loopback, short enough that connections opened and left silent are closed soon.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has between two pieces of a request's body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections open at once; one more sheds the connection idle longest, or is closed
/// as soon as it is accepted if every one has a request in flight.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// How long requests in flight are given to finish once the server is told to stop.
const GRACE: Duration = Duration::from_secs(10);

/// The bounds of the HTTP server: a builder with the defaults above.
///
/// ```
/// use std::time::Duration;
/// use courier_cli::server::ServerLimits;
///
/// let limits = ServerLimits::default().max_connections(16);
/// assert_eq!(limits.get_max_connections(), 16);
/// ```
#[derive(Debug, Clone)]
pub struct ServerLimits {
    header_timeout: Duration,
    body_timeout: Duration,
    max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl ServerLimits {
    /// How long a client has to send a request's headers before its connection is closed.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// How long a client may pause while sending a body before the request fails.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Most connections open at once (at least one).
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// The most connections open at once.
    pub fn get_max_connections(&self) -> usize {
        self.max_connections
    }
}

/// Serve `app` on `listener` until `stop` completes, then give requests in flight a few
/// seconds to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    stop: impl Future<Output = ()>,
) {
    let service = ServiceBuilder::new()
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .service(app);
    let connections = Connections::new(limits.max_connections);
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, say: the next accept may work.
                tracing::warn!(error = %err, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // At the cap, the connection idle longest makes room; if none is idle the new one
        // is closed at once rather than left waiting.
        let Some((key, slot)) = connections.admit() else {
            drop(stream);
            continue;
        };
        let service = Tracked {
            inner: TowerToHyperService::new(service.clone()),
            slot: slot.clone(),
            epoch: connections.epoch,
        };
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        let connections = connections.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = connection => {}
                // Shed: dropping the connection closes its socket.
                () = slot.shed.notified() => {}
            }
            connections.forget(key);
        });
    }
    let _ = tokio::time::timeout(GRACE, graceful.shutdown()).await;
}

/// A connection is waiting for a request (its first, or the next one).
const IDLE: u8 = 0;
/// A connection has a request in flight, from its complete headers to its response.
const BUSY: u8 = 1;
/// A connection was chosen to make room and is being closed.
const SHED: u8 = 2;

/// One open connection, as the accept loop sees it.
struct Slot {
    state: AtomicU8,
    /// Microseconds since [`Connections::epoch`] at which it last became idle.
    idle_since: AtomicU64,
    shed: Notify,
}

/// The open connections, at most `max` of them.
#[derive(Clone)]
struct Connections {
    open: Arc<Mutex<OpenConnections>>,
    max: usize,
    epoch: Instant,
}

struct OpenConnections {
    slots: HashMap<u64, Arc<Slot>>,
    next_key: u64,
}

impl Connections {
    fn new(max: usize) -> Connections {
        Connections {
            open: Arc::new(Mutex::new(OpenConnections {
                slots: HashMap::new(),
                next_key: 0,
            })),
            max,
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OpenConnections> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for a new connection: free, or made by shedding the connection idle longest;
    /// `None` when every open connection has a request in flight.
    fn admit(&self) -> Option<(u64, Arc<Slot>)> {
        let now = micros_since(self.epoch);
        let mut open = self.lock();
        if open.slots.len() >= self.max {
            // A scan of at most `max` entries, on the accept path only while at the cap.
            let mut idle: Vec<(u64, u64)> = open
                .slots
                .iter()
                .filter(|(_, slot)| slot.state.load(Ordering::Acquire) == IDLE)
                .map(|(key, slot)| (slot.idle_since.load(Ordering::Acquire), *key))
                .collect();
            idle.sort_unstable();
            // One that became busy since the scan keeps its place: try the next.
            let victim = idle.into_iter().find_map(|(_, key)| {
                let slot = &open.slots[&key];
                slot.state
                    .compare_exchange(IDLE, SHED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                    .then_some(key)
            })?;
            if let Some(slot) = open.slots.remove(&victim) {
                slot.shed.notify_one();
            }
        }
        let key = open.next_key;
        open.next_key += 1;
        let slot = Arc::new(Slot {
            state: AtomicU8::new(IDLE),
            idle_since: AtomicU64::new(now),
            shed: Notify::new(),
        });
        open.slots.insert(key, slot.clone());
        Some((key, slot))
    }

    /// A connection that ended gives its place back.
    fn forget(&self, key: u64) {
        self.lock().slots.remove(&key);
    }
}

fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros().try_into().unwrap_or(u64::MAX)
}

/// The connection's service, marking its slot busy from a request's complete headers (when
/// hyper calls the service) until its response is ready.
struct Tracked<S> {
    inner: S,
    slot: Arc<Slot>,
    epoch: Instant,
}

impl<S> hyper::service::Service<axum::http::Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<axum::http::Request<Incoming>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, request: axum::http::Request<Incoming>) -> Self::Future {
        let _ = self
            .slot
            .state
            .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Acquire);
        let busy = Busy {
            slot: self.slot.clone(),
            epoch: self.epoch,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            drop(busy);
            answer
        })
    }
}

/// A request in flight; dropped (answered, or given up) it leaves its slot idle from now.
struct Busy {
    slot: Arc<Slot>,
    epoch: Instant,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.slot
            .idle_since
            .store(micros_since(self.epoch), Ordering::Release);
        let _ = self
            .slot
            .state
            .compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }
}
