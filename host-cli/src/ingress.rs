//! The HTTP ingress: messages and requests in from the outside world, and the broker's state
//! out, on axum.
//!
//! | route | does |
//! |---|---|
//! | `POST /components/{id}/messages` | the body is a fire-and-forget message from `host`: `202` |
//! | `POST /components/{id}/requests?timeout_ms=N` | the body is a request: `200` with the reply |
//! | `GET /components` | every component with its state and counters (JSON) |
//! | `GET /metrics` | metrics in the Prometheus text format |
//! | `GET /dead-letters` | the recent dead letters (JSON) |
//!
//! A component id with a `/` in it (`orders/billing`) is written with the slash
//! percent-encoded: `/components/orders%2Fbilling/messages`.
//!
//! Errors are JSON, `{"error": "mailbox-full", "message": "..."}`, with the status that says
//! what kind of error it is: 404 unknown id, 403 denied, 429 mailbox full, 413 too large,
//! 503 shutting down (or, for a message, target crashed), 504 no reply in time, 502 the
//! component failed to answer (its handler returned an error, or it crashed).

use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use courier_host_broker::{Broker, ComponentError, ComponentState, MessagingError};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::prometheus;
use crate::units::{format_bytes, format_duration};

/// The longest a request may ask to wait for its reply: long enough for any sensible
/// handler, short enough that a forgotten client cannot pin a request slot for days.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// What the ingress's handlers share.
#[derive(Clone)]
struct Ingress {
    broker: Broker,
    request_timeout: Duration,
    max_payload: usize,
}

/// The ingress's routes over `broker`. Requests wait `request_timeout` for their reply unless
/// they say otherwise; bodies larger than `max_payload` are refused before they are read in
/// full.
pub fn router(broker: Broker, request_timeout: Duration, max_payload: usize) -> Router {
    let state = Ingress {
        broker,
        request_timeout,
        max_payload,
    };
    Router::new()
        .route("/components", get(list_components))
        .route("/components/{id}/messages", post(post_message))
        .route("/components/{id}/requests", post(post_request))
        .route("/metrics", get(metrics))
        .route("/dead-letters", get(dead_letters))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(max_payload))
        .with_state(state)
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

/// The body, or the error that says why it could not be read.
fn body(body: Result<Bytes, BytesRejection>, max_payload: usize) -> Result<Vec<u8>, ApiError> {
    match body {
        Ok(bytes) => Ok(bytes.to_vec()),
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

async fn post_message(
    State(ingress): State<Ingress>,
    Path(id): Path<String>,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let payload = body(payload, ingress.max_payload)?;
    ingress
        .broker
        .send(&id, payload)
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
        .request(&id, payload, timeout)
        .await
        .map_err(|err| messaging_error(err, &id, Call::Request { timeout }))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        reply,
    )
        .into_response())
}

async fn unknown_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no-such-route",
        "the ingress serves POST /components/{id}/messages, POST /components/{id}/requests, \
         GET /components, GET /metrics and GET /dead-letters",
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
        })
        .collect();
    axum::Json(views)
}

async fn metrics(State(ingress): State<Ingress>) -> Response {
    let text = prometheus::render(&ingress.broker.all_metrics(), &ingress.broker.accounting());
    ([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], text).into_response()
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

async fn dead_letters(State(ingress): State<Ingress>) -> axum::Json<Vec<DeadLetterView>> {
    let letters = ingress
        .broker
        .dead_letters()
        .into_iter()
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
    axum::Json(letters)
}
