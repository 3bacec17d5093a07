//! The HTTP ingress: messages and requests in from the outside world, and the broker's state
//! out, on axum.
//!
//! | route | does |
//! |---|---|
//! | `GET /` | the live dashboard ([`crate::dashboard`]), with `/dashboard.js` and `/dashboard.css` |
//! | `POST /components/{id}/messages` | the body is a fire-and-forget message from `host`: `202` |
//! | `POST /components/{id}/requests?timeout_ms=N` | the body is a request: `200` with the reply |
//! | `GET /components` | every component with its state, counters and handler latency (JSON) |
//! | `GET /metrics` | metrics in the Prometheus text format |
//! | `GET /dead-letters?target=ID&limit=N` | the recent dead letters, oldest first; only those for `target`, only the latest `limit` (JSON) |
//! | `POST /components/{id}/restart` | start a failed or stopped component again from its spec: `200`; `409 restart-in-progress` while another restart of it runs |
//! | `POST /components/{id}/upgrade` | the body is a new version of the component (`.wasm`, at most 64 MiB): it replaces the running one between two messages, `200 {"status":"upgraded","previous":"…","version":"…","took_ms":N}`; `400 invalid-component` if it does not load, `409 upgrade-refused` if it cannot run (the running version stays), `429 upgrade-busy` while another upgrade is read or compiled, `503 compile-timeout` past the compile's time bound |
//! | `GET /lattice` | this host's lattice, the other hosts heard from and what each serves, and the remote counters (JSON); `404` when the host joined none |
//!
//! A message or request for an id that runs on another host of the lattice takes the same
//! routes: the broker hands it to the lattice.
//!
//! A component id with a `/` in it (`orders/billing`) is written with the slash
//! percent-encoded: `/components/orders%2Fbilling/messages`, or, for messages and requests
//! to an id of two parts such as a key of a keyed component, plainly:
//! `/components/cart/8812/requests`. `GET /components` and `GET /metrics` show a keyed
//! component as one row with its keys summed (`keyed`: active, activations, passivations,
//! activation latency), never a row per key.
//!
//! A message or request may carry a W3C `traceparent` header: when it is exactly one valid
//! version-`00` value, the component's handler call is a child of the span it names, and
//! so is everything the call sends, on this host and others (`docs/observability.md`). An
//! invalid one is ignored.
//!
//! Errors are JSON, `{"error": "mailbox-full", "message": "..."}`, with the status that says
//! what kind of error it is: 404 unknown id, 403 denied, 429 mailbox full, 413 too large,
//! 503 shutting down (or, for a message, target crashed), 504 no reply in time, 502 the
//! component failed to answer (its handler returned an error, or it crashed).
//!
//! The ingress listens on loopback, where any web page a local browser shows can reach it.
//! So a request must name the listening address in its `Host` header (a page whose domain
//! was rebound to 127.0.0.1 names its own), a request that carries an `Origin` must come
//! from the ingress's own origin (a cross-site page's `fetch` or form post carries its own),
//! and when a token is set every route but `/metrics` and the dashboard's assets (which hold
//! no data) asks for `Authorization: Bearer <token>`: 421, 403 and 401 otherwise.
//!
//! The routes that change what runs (`restart`, `upgrade`) always ask for a token: with a
//! token made for the run ([`crate::token`]) they are the only ones that do, so that the
//! data routes stay as open as a loopback service without a configured token always was,
//! and with no token at all they are refused.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::HashMap;
use tokio::sync::Semaphore;

use courier_host_broker::{
    Broker, BrokerError, ComponentError, ComponentSpec, ComponentState, MessagingError,
    TraceContext,
};
use courier_host_lattice::Lattice;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::dashboard;
use crate::prometheus;
use crate::units::{format_bytes, format_duration};

/// The longest a request may ask to wait for its reply: long enough for any sensible
/// handler, short enough that a forgotten client cannot pin a request slot for days.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// The largest component `POST /components/{id}/upgrade` takes: far above any component
/// built with the SDK (tens of KiB), small enough that a client cannot make the host hold or
/// compile gigabytes.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// The longest an upgrade waits for its component to compile: minutes for the largest
/// component wasmtime would take, far past any real one (tens of milliseconds to a few
/// seconds), so that a component built to compile for ever cannot hold the route.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(120);

/// What the ingress's handlers share.
#[derive(Clone)]
struct Ingress {
    broker: Broker,
    request_timeout: Duration,
    max_payload: usize,
    /// What each component was started from, to start it again.
    specs: Arc<HashMap<String, ComponentSpec>>,
    lattice: Option<Arc<Lattice>>,
    /// The one compile an upgrade may run at a time (shared with `--watch`).
    compiles: Arc<Semaphore>,
    compile_timeout: Duration,
    /// Components being restarted, so that a second restart of one is told so.
    restarting: Arc<Mutex<HashSet<String>>>,
}

/// How the ingress answers and whom it answers: a builder over the address it listens on.
///
/// ```
/// use std::time::Duration;
/// use courier_cli::ingress::IngressConfig;
///
/// let config = IngressConfig::new("127.0.0.1:8080".parse().unwrap())
///     .request_timeout(Duration::from_secs(2))
///     .token(Some("s3cret".into()));
/// assert_eq!(config.get_request_timeout(), Duration::from_secs(2));
/// ```
#[derive(Clone)]
pub struct IngressConfig {
    address: SocketAddr,
    request_timeout: Duration,
    max_payload: usize,
    token: Option<String>,
    /// Where a token made for the run is kept; such a token guards only the routes that
    /// change what runs.
    made_token_file: Option<PathBuf>,
    specs: Arc<HashMap<String, ComponentSpec>>,
    lattice: Option<Arc<Lattice>>,
    compiles: Arc<Semaphore>,
    compile_timeout: Duration,
}

impl IngressConfig {
    /// The ingress listening on `address` (the bound one, with its real port), with the
    /// broker's default payload limit, a 5 s request timeout and no token (so no
    /// management: restarts and upgrades are refused).
    pub fn new(address: SocketAddr) -> Self {
        IngressConfig {
            address,
            request_timeout: crate::manifest::DEFAULT_REQUEST_TIMEOUT,
            max_payload: courier_host_broker::DEFAULT_MAX_PAYLOAD_BYTES,
            token: None,
            made_token_file: None,
            specs: Arc::default(),
            lattice: None,
            compiles: Arc::new(Semaphore::new(1)),
            compile_timeout: DEFAULT_COMPILE_TIMEOUT,
        }
    }

    /// The lattice this host joined, which `GET /lattice` and `/metrics` report on.
    pub fn lattice(mut self, lattice: Option<Arc<Lattice>>) -> Self {
        self.lattice = lattice;
        self
    }

    /// The specs the components were started from, which `POST /components/{id}/restart`
    /// starts them from again; a component without one cannot be restarted.
    pub fn specs(mut self, specs: impl IntoIterator<Item = ComponentSpec>) -> Self {
        let specs = specs
            .into_iter()
            .map(|spec| (spec.id().to_string(), spec))
            .collect();
        self.specs = Arc::new(specs);
        self
    }

    /// How long a request waits for its reply unless it says `?timeout_ms=`.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The largest body, in bytes; a larger one is refused before it is read in full.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// The bearer token every route but `/metrics` and the dashboard's assets asks for;
    /// `None` asks for none on the
    /// data routes, and refuses the management ones.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self.made_token_file = None;
        self
    }

    /// A token made for this run and kept in `file`: only the routes that change what runs
    /// (`restart`, `upgrade`) ask for it; messages, requests and reads stay open.
    pub fn made_token(mut self, token: String, file: PathBuf) -> Self {
        self.token = Some(token);
        self.made_token_file = Some(file);
        self
    }

    /// The permits for compiling a component; an upgrade holds one from before it reads its
    /// body until its compile ends, and one that finds none taken is refused with 429. One
    /// by default; share it with whatever else compiles in the runner.
    pub fn compile_slot(mut self, compiles: Arc<Semaphore>) -> Self {
        self.compiles = compiles;
        self
    }

    /// How long an upgrade waits for its compile before answering `503 compile-timeout`.
    pub fn compile_timeout(mut self, timeout: Duration) -> Self {
        self.compile_timeout = timeout;
        self
    }

    /// The request timeout.
    pub fn get_request_timeout(&self) -> Duration {
        self.request_timeout
    }
}

impl std::fmt::Debug for IngressConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressConfig")
            .field("address", &self.address)
            .field("request_timeout", &self.request_timeout)
            .field("max_payload", &self.max_payload)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("made_token_file", &self.made_token_file)
            .field("compile_timeout", &self.compile_timeout)
            .finish()
    }
}

/// The ingress's routes over `broker`, behind the checks of who is asking.
pub fn router(broker: Broker, config: IngressConfig) -> Router {
    let state = Ingress {
        broker,
        request_timeout: config.request_timeout,
        max_payload: config.max_payload,
        specs: config.specs,
        lattice: config.lattice,
        compiles: config.compiles,
        compile_timeout: config.compile_timeout,
        restarting: Arc::default(),
    };
    let guard = Arc::new(Guard::new(
        config.address,
        config.token,
        config.made_token_file,
    ));
    let management = || axum::middleware::from_fn_with_state(guard.clone(), check_manager);
    Router::new()
        .route("/components", get(list_components))
        .route("/components/{id}/messages", post(post_message))
        .route("/components/{id}/requests", post(post_request))
        .route("/components/{id}/{key}/messages", post(post_key_message))
        .route("/components/{id}/{key}/requests", post(post_key_request))
        .route(
            "/components/{id}/restart",
            post(restart).route_layer(management()),
        )
        .route(
            "/components/{id}/upgrade",
            post(upgrade).route_layer(management()),
        )
        .route("/metrics", get(metrics))
        .route("/dead-letters", get(dead_letters))
        .route("/lattice", get(lattice))
        .merge(dashboard::routes())
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(config.max_payload))
        .layer(axum::middleware::from_fn_with_state(guard, check_caller))
        .with_state(state)
}

/// Who may be answered.
struct Guard {
    /// `Host` values that name the listening address.
    hosts: Vec<String>,
    /// `Origin` values of pages served from the listening address.
    origins: Vec<String>,
    token: Option<String>,
    /// Set when the token was made for the run: it then guards management alone.
    made_token_file: Option<PathBuf>,
}

impl Guard {
    fn new(address: SocketAddr, token: Option<String>, made_token_file: Option<PathBuf>) -> Guard {
        let port = address.port();
        let mut hosts = vec![format!("{address}"), format!("localhost:{port}")];
        if port == 80 {
            hosts.push(address.ip().to_string());
            hosts.push("localhost".into());
        }
        let origins = hosts.iter().map(|host| format!("http://{host}")).collect();
        Guard {
            hosts,
            origins,
            token,
            made_token_file,
        }
    }

    /// Whether the request carries the token (false when there is none).
    fn carries_token(&self, headers: &axum::http::HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        given.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes()))
    }
}

/// Refuses a request whose `Host` is not the listening address (DNS rebinding), whose
/// `Origin` is another site's (a cross-site page), or that lacks the token when one is set.
async fn check_caller(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if !host.is_some_and(|host| guard.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))) {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "wrong-host",
            format!(
                "the Host header must name this ingress ({})",
                guard.hosts.join(" or ")
            ),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| guard.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)));
        if !allowed {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "foreign-origin",
                "requests from other sites' pages are refused",
            ));
        }
    }
    if guard.token.is_some()
        && guard.made_token_file.is_none()
        && request.uri().path() != "/metrics"
        && !dashboard::is_asset(request.uri().path())
        && !guard.carries_token(headers)
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this ingress asks for `Authorization: Bearer <token>`",
        ));
    }
    Ok(next.run(request).await)
}

/// Refuses a request to change what runs (restart, upgrade) that lacks the token, whether
/// it was configured or made for the run; with no token at all, every such request.
async fn check_manager(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if guard.carries_token(request.headers()) {
        return Ok(next.run(request).await);
    }
    let message = match (&guard.token, &guard.made_token_file) {
        (None, _) => "this ingress was given no token, so it takes no restarts or upgrades".into(),
        (Some(_), Some(file)) => format!(
            "restarts and upgrades ask for `Authorization: Bearer <token>`, with the token \
             `courier run` wrote to {}",
            file.display()
        ),
        (Some(_), None) => "this ingress asks for `Authorization: Bearer <token>`".into(),
    };
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        message,
    ))
}

/// Compares two secrets in time that depends on their lengths only, so a caller cannot
/// learn a token a byte at a time from how quickly it is refused.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// An error answer: a status and a JSON body naming the error's kind and describing it.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.kind, "message": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

/// Whether the error answers a message or a request: a crashed target is the component's
/// failure to answer (502) for a request, but for a message, which expects no answer, the
/// target is simply unavailable (503).
#[derive(Clone, Copy)]
enum Call {
    Message,
    Request { timeout: Duration },
}

fn messaging_error(err: MessagingError, target: &str, call: Call) -> ApiError {
    use MessagingError as E;
    match err {
        E::TargetNotFound(id) => ApiError::new(
            StatusCode::NOT_FOUND,
            "target-not-found",
            format!("no component `{id}` is running"),
        ),
        E::AccessDenied(id) => ApiError::new(
            StatusCode::FORBIDDEN,
            "access-denied",
            format!("access to `{id}` is denied"),
        ),
        E::MailboxFull(id) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "mailbox-full",
            format!("the mailbox of `{id}` is full: try again later"),
        ),
        E::PayloadTooLarge(limit) => payload_too_large(limit),
        E::Timeout => {
            let waited = match call {
                Call::Request { timeout } => format!(" within {}", format_duration(timeout)),
                Call::Message => String::new(),
            };
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!("`{target}` did not answer{waited}"),
            )
        }
        E::HandlerFailed(error) => {
            let (kind, reason) = match error {
                ComponentError::InvalidMessage(reason) => ("invalid message", reason),
                ComponentError::Unsupported(reason) => ("unsupported", reason),
                ComponentError::Internal(reason) => ("internal error", reason),
            };
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "handler-failed",
                format!("the handler of `{target}` failed: {kind}: {reason}"),
            )
        }
        E::TargetCrashed(reason) => {
            let status = match call {
                Call::Request { .. } => StatusCode::BAD_GATEWAY,
                Call::Message => StatusCode::SERVICE_UNAVAILABLE,
            };
            ApiError::new(status, "target-crashed", reason)
        }
        E::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "courier is shutting down and takes no new messages",
        ),
    }
}

fn payload_too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        format!(
            "the payload is larger than the limit of {}",
            format_bytes(limit)
        ),
    )
}

/// The body, or the error that says why it could not be read. It is handed to the broker as
/// it is, without a copy.
fn body(body: Result<Bytes, BytesRejection>, max_payload: usize) -> Result<Bytes, ApiError> {
    match body {
        Ok(bytes) => Ok(bytes),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(payload_too_large(max_payload as u64))
        }
        Err(rejection) => Err(ApiError::new(
            rejection.status(),
            "bad-request",
            rejection.body_text(),
        )),
    }
}

/// `POST /components/cart/8812/messages`: a message to the key `8812` of the keyed
/// component `cart`, written without percent-encoding its `/`.
async fn post_key_message(
    state: State<Ingress>,
    Path((id, key)): Path<(String, String)>,
    headers: HeaderMap,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    post_message(state, Path(format!("{id}/{key}")), headers, payload).await
}

/// `POST /components/cart/8812/requests`: a request to a key, as for messages.
async fn post_key_request(
    state: State<Ingress>,
    Path((id, key)): Path<(String, String)>,
    headers: HeaderMap,
    params: Result<Query<RequestParams>, QueryRejection>,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    post_request(state, Path(format!("{id}/{key}")), headers, params, payload).await
}

/// The trace context of an HTTP request: its `traceparent` header, if it has exactly one
/// that is valid (`TraceContext::parse`: version `00`, lowercase hex, neither id zero).
/// Anything else is ignored, and the handler's call starts a trace of its own if telemetry
/// is on, as W3C asks of a receiver that cannot read the header.
fn traceparent(headers: &HeaderMap) -> Option<TraceContext> {
    let mut values = headers.get_all("traceparent").iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    TraceContext::parse(value.to_str().ok()?)
}

async fn post_message(
    State(ingress): State<Ingress>,
    Path(id): Path<String>,
    headers: HeaderMap,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let payload = body(payload, ingress.max_payload)?;
    // 202 only once a durable component's message is stored; for the others this is `send`.
    ingress
        .broker
        .send_durable_traced(&id, payload, traceparent(&headers))
        .await
        .map_err(|err| messaging_error(err.into_error(), &id, Call::Message))?;
    let answer = json!({ "status": "accepted", "target": id });
    Ok((StatusCode::ACCEPTED, axum::Json(answer)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestParams {
    timeout_ms: Option<u64>,
}

async fn post_request(
    State(ingress): State<Ingress>,
    Path(id): Path<String>,
    headers: HeaderMap,
    params: Result<Query<RequestParams>, QueryRejection>,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            rejection.body_text(),
        )
    })?;
    let payload = body(payload, ingress.max_payload)?;
    let timeout = match params.timeout_ms {
        Some(ms) if ms > MAX_TIMEOUT.as_millis() as u64 => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!(
                    "timeout_ms={ms} is above the longest wait of {} ms",
                    MAX_TIMEOUT.as_millis()
                ),
            ));
        }
        Some(ms) => Duration::from_millis(ms),
        None => ingress.request_timeout,
    };
    let reply = ingress
        .broker
        .request_traced(&id, payload, timeout, traceparent(&headers))
        .await
        .map_err(|err| messaging_error(err, &id, Call::Request { timeout }))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        reply,
    )
        .into_response())
}

/// Starts a failed or stopped component again from the spec it was first started from, so
/// that it can be recovered without restarting `courier`.
async fn restart(
    State(ingress): State<Ingress>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(spec) = ingress.specs.get(&id) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "target-not-found",
            format!("no component `{id}` is declared"),
        ));
    };
    // One restart of a component at a time: two that both saw it failed would each remove
    // and spawn it: the second spawn fails, or its removal ends the instance the first started.
    let Some(claim) = RestartClaim::take(&ingress.restarting, &id) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "restart-in-progress",
            format!("component `{id}` is being restarted by another request"),
        ));
    };
    let previous = match ingress.broker.is_keyed(&id) {
        // A keyed component runs for as long as it is registered, whatever its keys do.
        true => Some(ComponentState::Running),
        false => ingress.broker.state(&id),
    };
    if previous == Some(ComponentState::Running) || previous == Some(ComponentState::Restarting) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "running",
            format!("component `{id}` is running: only a failed or stopped one is restarted"),
        ));
    }
    // From the version it ran last: an upgrade since the start replaced the manifest's.
    let spec = match ingress.broker.running_component(&id) {
        Some(component) => spec.clone().replace_component(component),
        None => spec.clone(),
    };
    // On a task of its own, so that a client that leaves half-way cannot leave the
    // component removed and not started again.
    let broker = ingress.broker.clone();
    let restarted = tokio::spawn(async move {
        // Its record goes, with whatever it still held dead-lettered, and a fresh one starts.
        // A stop, not a removal: a durable component keeps its stored timers across it.
        let id = spec.id().to_string();
        let _ = broker.stop(&id).await;
        let started = match spec.get_keyed() {
            Some(_) => broker.spawn_keyed(spec).await,
            None => broker.spawn(spec).await.map(drop),
        };
        drop(claim);
        started
    })
    .await
    .map_err(|err| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "restart-failed",
            err.to_string(),
        )
    })?;
    restarted.map_err(|err| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "restart-failed",
            err.to_string(),
        )
    })?;
    tracing::warn!(component = %id, previous = previous.as_ref().map_or("absent", ComponentState::name), "restarted through the ingress");
    let body = json!({ "status": "restarted", "target": id });
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

/// The id of a component being restarted, in the set of those, until dropped.
struct RestartClaim {
    restarting: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl RestartClaim {
    fn take(restarting: &Arc<Mutex<HashSet<String>>>, id: &str) -> Option<RestartClaim> {
        let mut set = restarting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        set.insert(id.to_string()).then(|| RestartClaim {
            restarting: restarting.clone(),
            id: id.to_string(),
        })
    }
}

impl Drop for RestartClaim {
    fn drop(&mut self) {
        let mut set = self
            .restarting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        set.remove(&self.id);
    }
}

/// Loads the body as a new version of the component and swaps it in (`Broker::upgrade`).
///
/// Compiling is the expensive part, so everything that can refuse the upgrade is checked
/// before the body is read: the token (by [`check_manager`]), the declared length, that the
/// component exists and runs, and that no other upgrade is being read or compiled (one at a
/// time per runner, the rest refused with 429 rather than queued, so that waiting clients
/// hold nothing). The compile runs on a blocking thread, which wasmtime cannot interrupt:
/// a client that leaves, or a compile past the time bound, stops the handler's wait and the
/// compile runs to its end, keeping the slot until then, and is dropped without a swap.
async fn upgrade(
    State(ingress): State<Ingress>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!(
                "a component may be at most {}",
                format_bytes(MAX_COMPONENT_BYTES as u64)
            ),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_COMPONENT_BYTES as u64) {
        return Err(too_large());
    }
    match ingress.broker.state(&id) {
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "target-not-found",
                format!("no component `{id}` is running"),
            ));
        }
        Some(ComponentState::Running | ComponentState::Restarting) => {}
        Some(state) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "upgrade-refused",
                format!(
                    "component `{id}` is {}: only a running component is upgraded",
                    state.name()
                ),
            ));
        }
    }
    let Ok(slot) = ingress.compiles.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "upgrade-busy",
            "another upgrade is being received or compiled: try again once it is done",
        ));
    };
    let bytes = axum::body::to_bytes(request.into_body(), MAX_COMPONENT_BYTES)
        .await
        .map_err(|err| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!(
                    "the body is not a component of at most {}: {err}",
                    format_bytes(MAX_COMPONENT_BYTES as u64)
                ),
            )
        })?;
    let mut waiting = CompileWait::new(&id);
    let engine = ingress.broker.engine().clone();
    let name = id.clone();
    let compile = tokio::task::spawn_blocking(move || {
        let loaded = engine.load_component(&name, &bytes);
        drop(slot);
        loaded
    });
    let loaded = match tokio::time::timeout(ingress.compile_timeout, compile).await {
        Ok(joined) => joined.map_err(|err| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("loading the component failed: {err}"),
            )
        }),
        Err(_) => {
            tracing::warn!(component = %id, timeout = ?ingress.compile_timeout, "upgrade abandoned: its compile took too long, and is dropped when it ends");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "compile-timeout",
                format!(
                    "the component did not compile within {}; the running version stays",
                    format_duration(ingress.compile_timeout)
                ),
            ))
        }
    };
    waiting.done();
    let component = loaded?.map_err(|err| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-component",
            err.to_string(),
        )
    })?;
    // Once ordered, the swap is the actor's to finish, whether or not the client stays.
    let upgraded = ingress
        .broker
        .upgrade(&id, component)
        .await
        .map_err(|err| match err {
            BrokerError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "target-not-found", err.to_string())
            }
            err => ApiError::new(StatusCode::CONFLICT, "upgrade-refused", err.to_string()),
        })?;
    let body = json!({
        "status": "upgraded",
        "target": id,
        "previous": upgraded.previous,
        "version": upgraded.version,
        "took_ms": upgraded.took.as_secs_f64() * 1000.0,
    });
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

/// An upgrade's wait for its compile. hyper drops the handler when its client goes away
/// (it reads the connection while the answer is pending), which drops this: that is logged,
/// since the compile it leaves behind still holds the compile slot until it ends.
struct CompileWait {
    id: Option<String>,
}

impl CompileWait {
    fn new(id: &str) -> CompileWait {
        CompileWait {
            id: Some(id.to_string()),
        }
    }

    fn done(&mut self) {
        self.id = None;
    }
}

impl Drop for CompileWait {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            tracing::warn!(component = %id, "upgrade abandoned: the client left during the compile, which runs to its end and is dropped");
        }
    }
}

async fn unknown_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no-such-route",
        "the ingress serves GET / (the dashboard), POST /components/{id}/messages, \
         POST /components/{id}/requests (an id of two parts, such as a key `cart/8812`, \
         plainly or with its slash as %2F), GET /components, GET /metrics, GET /dead-letters, \
         GET /lattice, and with the management token POST /components/{id}/restart and \
         POST /components/{id}/upgrade",
    )
}

/// One component as `GET /components` lists it.
#[derive(Debug, Serialize)]
struct ComponentView {
    id: String,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    mailbox_depth: usize,
    delivered: u64,
    failed: u64,
    dead_lettered: u64,
    refused: u64,
    restarts: u64,
    version: String,
    timers_pending: usize,
    timers_fired: u64,
    /// Its handler calls' latency since it started.
    latency: LatencyView,
    /// A durable component's commits: how many, how many failed, their mean time.
    #[serde(skip_serializing_if = "Option::is_none")]
    durable: Option<DurableView>,
    /// A keyed component's keys, summed: one row per component, never one per key.
    #[serde(skip_serializing_if = "Option::is_none")]
    keyed: Option<KeyedView>,
}

/// A keyed component's keys as `GET /components` shows them.
#[derive(Debug, Serialize)]
struct KeyedView {
    active: usize,
    passivating: usize,
    activations: u64,
    passivations: u64,
    idle_ms: u64,
    max_active: Option<usize>,
    /// From a key's first message to its instance being ready.
    activation: LatencyView,
}

/// A component's handler latency as `GET /components` shows it, in milliseconds; the
/// percentiles are approximate (within about 19%) and absent before the first call.
#[derive(Debug, Serialize)]
struct LatencyView {
    count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p90_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_ms: Option<f64>,
}

impl From<courier_host_broker::LatencySummary> for LatencyView {
    fn from(summary: courier_host_broker::LatencySummary) -> Self {
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        LatencyView {
            count: summary.count,
            p50_ms: ms(summary.p50),
            p90_ms: ms(summary.p90),
            p99_ms: ms(summary.p99),
            max_ms: ms(summary.max),
        }
    }
}

/// A durable component's commits as `GET /components` shows them.
#[derive(Debug, Serialize)]
struct DurableView {
    commits: u64,
    failed_commits: u64,
    mean_commit_ms: f64,
}

async fn list_components(State(ingress): State<Ingress>) -> axum::Json<Vec<ComponentView>> {
    let views = ingress
        .broker
        .all_metrics()
        .into_iter()
        .map(|m| ComponentView {
            id: m.id.to_string(),
            state: m.state.name(),
            reason: match &m.state {
                ComponentState::Stopped(reason) | ComponentState::Failed(reason) => {
                    Some(reason.clone())
                }
                _ => None,
            },
            mailbox_depth: m.mailbox_depth,
            delivered: m.delivered,
            failed: m.failed,
            dead_lettered: m.dead_lettered,
            refused: m.refused,
            restarts: m.restarts,
            version: m.version,
            timers_pending: m.timers.pending,
            timers_fired: m.timers.fired,
            latency: m.latency.into(),
            durable: m.durable.map(|d| DurableView {
                commits: d.commits,
                failed_commits: d.failed_commits,
                mean_commit_ms: d.mean_commit.as_secs_f64() * 1000.0,
            }),
            keyed: None,
        })
        .collect();
    let mut views: Vec<ComponentView> = views;
    views.extend(
        ingress
            .broker
            .keyed_metrics()
            .into_iter()
            .map(|k| ComponentView {
                id: k.id.to_string(),
                state: "keyed",
                reason: None,
                mailbox_depth: 0,
                delivered: k.delivered,
                failed: k.failed,
                dead_lettered: 0,
                refused: 0,
                restarts: 0,
                version: k.version,
                timers_pending: 0,
                timers_fired: 0,
                latency: courier_host_broker::LatencySummary::default().into(),
                durable: None,
                keyed: Some(KeyedView {
                    active: k.active,
                    passivating: k.passivating,
                    activations: k.activations,
                    passivations: k.passivations,
                    idle_ms: k.keying.get_idle().as_millis() as u64,
                    max_active: k.keying.get_max_active(),
                    activation: k.activation_latency.into(),
                }),
            }),
    );
    views.sort_by(|a, b| a.id.cmp(&b.id));
    axum::Json(views)
}

async fn metrics(State(ingress): State<Ingress>) -> Response {
    let components = ingress.broker.all_metrics();
    let mut text = prometheus::render(&components, &ingress.broker.accounting());
    if let Some(stats) = ingress.broker.store_stats() {
        prometheus::render_store(&mut text, &stats, &components);
    }
    prometheus::render_keyed(&mut text, &ingress.broker.keyed_metrics());
    if let Some(lattice) = &ingress.lattice {
        prometheus::render_lattice(&mut text, &lattice.metrics());
    }
    ([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], text).into_response()
}

/// Another host as `GET /lattice` lists it.
#[derive(Debug, Serialize)]
struct HostView {
    host: String,
    served: Vec<String>,
    replicated: Vec<String>,
    keyed: Vec<String>,
    topics: Vec<String>,
    last_heard_ms: u64,
}

async fn lattice(State(ingress): State<Ingress>) -> Result<Response, ApiError> {
    let Some(lattice) = &ingress.lattice else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no-lattice",
            "this host has joined no lattice (its manifest has no `[lattice]` table)",
        ));
    };
    let hosts: Vec<HostView> = lattice
        .hosts()
        .into_iter()
        .map(|h| HostView {
            host: h.host,
            served: h.served,
            replicated: h.replicated,
            keyed: h.keyed,
            topics: h.topics,
            last_heard_ms: h.last_heard.as_millis().try_into().unwrap_or(u64::MAX),
        })
        .collect();
    let m = lattice.metrics();
    let conflicts: Vec<serde_json::Value> = lattice
        .conflicts()
        .into_iter()
        .map(|c| json!({ "id": c.id, "hosts": c.hosts }))
        .collect();
    Ok(axum::Json(json!({
        "lattice": lattice.name(),
        "host": lattice.host(),
        "max_payload": lattice.max_payload(),
        "subscription_capacity": lattice.subscription_capacity(),
        "hosts": hosts,
        "conflicts": conflicts,
        "sent": {
            "sent": m.sent,
            "acked": m.acked,
            "refused_here": m.refused_here,
            "refused_there": m.refused_there,
            "no_host": m.no_host,
            "unconfirmed": m.unconfirmed,
            "unsent": m.unsent,
            "awaiting_ack": m.awaiting_ack,
            "resent": m.resent,
            "requests": m.requests,
            "publications": m.publications,
            "publications_dropped": m.publications_dropped,
        },
        "arrived": {
            "messages": m.arrived_messages,
            "requests": m.arrived_requests,
            "publications": m.arrived_publications,
            "malformed": m.malformed,
            "forged": m.forged,
            "duplicates": m.duplicates,
            "out_of_order": m.out_of_order,
            "dropped_out_of_order": m.dropped_out_of_order,
            "expired": m.expired,
            "slow_consumer_drops": m.slow_consumer_drops,
        },
    }))
    .into_response())
}

/// One dead letter as `GET /dead-letters` lists it.
#[derive(Debug, Serialize)]
struct DeadLetterView {
    sender: String,
    target: String,
    kind: &'static str,
    reason: String,
    payload_len: usize,
    /// The kept start of the payload as text, invalid UTF-8 replaced.
    payload_preview: String,
    /// When it was dead-lettered, in milliseconds since the Unix epoch.
    at_ms: u64,
}

/// What `GET /dead-letters` may be asked to narrow its list to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterParams {
    /// Only the dead letters for this component.
    target: Option<String>,
    /// Only the latest this many (of those kept, at most the broker's dead-letter capacity).
    limit: Option<usize>,
}

async fn dead_letters(
    State(ingress): State<Ingress>,
    params: Result<Query<DeadLetterParams>, QueryRejection>,
) -> Result<axum::Json<Vec<DeadLetterView>>, ApiError> {
    let Query(params) = params.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            rejection.body_text(),
        )
    })?;
    let mut kept = ingress.broker.dead_letters();
    if let Some(target) = &params.target {
        kept.retain(|letter| &*letter.target == target.as_str());
    }
    // The record is oldest first: the latest are at its end.
    let skip = params
        .limit
        .map_or(0, |limit| kept.len().saturating_sub(limit));
    let letters = kept
        .into_iter()
        .skip(skip)
        .map(|letter| DeadLetterView {
            sender: letter.sender.to_string(),
            target: letter.target.to_string(),
            kind: letter.kind.as_str(),
            reason: letter.reason,
            payload_len: letter.payload_len,
            payload_preview: String::from_utf8_lossy(&letter.payload).into_owned(),
            at_ms: letter
                .at
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
        })
        .collect();
    Ok(axum::Json(letters))
}
