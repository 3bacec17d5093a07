//! Serving the ingress over HTTP/1.1 with bounds that a slow, idle or numerous client cannot
//! get around: hyper's header-read timeout, tower-http's body-read timeout, and a cap on
//! open connections.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// How long a client has to send a request's headers: generous for any real client on
/// loopback, short enough that connections opened and left silent are closed soon.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has between two pieces of a request's body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections open at once; one more is closed as soon as it is accepted.
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
    let connections = Arc::new(Semaphore::new(limits.max_connections));
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
        // At the cap, a new connection is closed at once rather than left waiting, so
        // idle or slow clients cannot hold the server.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(service.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    let _ = tokio::time::timeout(GRACE, graceful.shutdown()).await;
}
