//! Exporting the broker's spans over OTLP/HTTP (protobuf): the `[telemetry]` section of the
//! manifest.
//!
//! The broker hands each span of a sampled handler call to [`OtlpSink::record`], which only
//! queues it (at most [`QUEUE_SPANS`]; past that spans are dropped and counted, so a
//! collector that is slow or gone never holds up a handler or grows the host's memory). One
//! task takes them off the queue in batches (up to [`BATCH_SPANS`], or what came within
//! [`BATCH_WINDOW`]) and posts each batch to `<endpoint>/v1/traces` with
//! `opentelemetry-otlp`'s exporter on the hyper client the ingress already uses. A failed
//! export is logged (at most one line per [`BATCH_WINDOW`] of failures) and its spans are
//! dropped: traces are for looking, not for keeping.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_host_broker::{HandlerKind, HandlerSpan, Outcome, SpanSink, Telemetry};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use tokio::sync::{mpsc, oneshot};

/// Spans waiting for export at most: about 2 MiB of spans, several seconds of a busy host's
/// traced calls.
pub const QUEUE_SPANS: usize = 8192;
/// Spans in one export at most: OTLP collectors take far more, but a smaller request fails
/// less of what it carries.
pub const BATCH_SPANS: usize = 512;
/// How long the exporter gathers spans after the first of a batch.
pub const BATCH_WINDOW: Duration = Duration::from_millis(200);
/// How long one export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `[telemetry]` section: where spans go and what share of the traces this host starts
/// are recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP base URL (`http://127.0.0.1:4318`); spans go to `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// The share of the traces this host starts that are recorded, 0.0 to 1.0.
    pub sampling: f64,
}

impl TelemetryConfig {
    /// Where traces are posted: the endpoint's `/v1/traces`.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.endpoint.trim_end_matches('/'))
    }
}

/// The broker's [`SpanSink`]: queues each span for the export task.
pub struct OtlpSink {
    queue: mpsc::Sender<HandlerSpan>,
    dropped: AtomicU64,
}

impl SpanSink for OtlpSink {
    fn record(&self, span: HandlerSpan) {
        if self.queue.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl OtlpSink {
    /// Spans dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The running export: finish it at shutdown so what was queued goes out.
pub struct Exporting {
    sink: Arc<OtlpSink>,
    finish: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Exporting {
    /// Export what is queued and stop, waiting at most `within`.
    pub async fn finish(mut self, within: Duration) {
        if let Some(finish) = self.finish.take() {
            let _ = finish.send(());
        }
        let _ = tokio::time::timeout(within, &mut self.task).await;
        self.task.abort();
        let dropped = self.sink.dropped();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "spans dropped: the export queue of {QUEUE_SPANS} was full"
            );
        }
    }
}

/// Start exporting to `config`'s endpoint, as host `host` (the resource's
/// `service.instance.id`): the broker's [`Telemetry`] and the running export. Runs on the
/// current tokio runtime.
pub fn start(config: &TelemetryConfig, host: &str) -> anyhow::Result<(Telemetry, Exporting)> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.traces_url())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|err| {
            anyhow::anyhow!("telemetry: cannot export to {}: {err}", config.traces_url())
        })?;
    let resource = Resource::builder()
        .with_service_name("courier")
        .with_attribute(KeyValue::new("service.instance.id", host.to_string()))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    exporter.set_resource(&resource);
    let (queue, spans) = mpsc::channel(QUEUE_SPANS);
    let sink = Arc::new(OtlpSink {
        queue,
        dropped: AtomicU64::new(0),
    });
    let (finish, finishing) = oneshot::channel();
    let task = tokio::spawn(export(spans, exporter, finishing));
    let telemetry = Telemetry::new(sink.clone(), config.sampling);
    Ok((
        telemetry,
        Exporting {
            sink,
            finish: Some(finish),
            task,
        },
    ))
}

/// Take spans off the queue in batches and export each, until told to finish: then export
/// what is left and return.
async fn export(
    mut spans: mpsc::Receiver<HandlerSpan>,
    exporter: opentelemetry_otlp::SpanExporter,
    mut finishing: oneshot::Receiver<()>,
) {
    let scope = InstrumentationScope::builder("courier")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut batch = Vec::with_capacity(BATCH_SPANS);
    let mut last_warning: Option<Instant> = None;
    let mut finished = false;
    while !finished {
        tokio::select! {
            received = spans.recv_many(&mut batch, BATCH_SPANS) => {
                if received == 0 {
                    finished = true;
                } else {
                    // Gather what comes within the window, so a busy host posts batches,
                    // not a request per span.
                    let window = tokio::time::sleep(BATCH_WINDOW);
                    tokio::pin!(window);
                    while batch.len() < BATCH_SPANS {
                        let room = BATCH_SPANS - batch.len();
                        tokio::select! {
                            () = &mut window => break,
                            received = spans.recv_many(&mut batch, room) => {
                                if received == 0 {
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            _ = &mut finishing => {
                finished = true;
                while let Ok(span) = spans.try_recv() {
                    batch.push(span);
                }
            }
        }
        for chunk in std::mem::take(&mut batch).chunks(BATCH_SPANS) {
            let data = chunk.iter().map(|span| span_data(span, &scope)).collect();
            if let Err(err) = exporter.export(data).await
                && last_warning.is_none_or(|at| at.elapsed() >= BATCH_WINDOW)
            {
                last_warning = Some(Instant::now());
                tracing::warn!(error = %err, spans = chunk.len(), "telemetry: spans not exported");
            }
        }
    }
    let _ = exporter.shutdown();
}

/// A broker's span as OpenTelemetry's.
fn span_data(span: &HandlerSpan, scope: &InstrumentationScope) -> SpanData {
    let context = SpanContext::new(
        TraceId::from_bytes(span.context.trace_id().to_bytes()),
        SpanId::from_bytes(span.context.span_id().to_bytes()),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    let parent = span.parent.map_or(SpanId::INVALID, |parent| {
        SpanId::from_bytes(parent.to_bytes())
    });
    let name = match span.kind {
        HandlerKind::Message => "handle message",
        HandlerKind::Request => "handle request",
        HandlerKind::Publication => "handle publication",
        HandlerKind::Timer => "handle timer",
    };
    let status = match span.outcome {
        Outcome::Ok => Status::Ok,
        Outcome::Error => Status::error("the handler returned an error"),
        Outcome::Trap => Status::error("the handler trapped"),
        Outcome::Timeout => Status::error("the handler ran past its deadline"),
        Outcome::Abandoned => Status::error("the shutdown cut the handler"),
    };
    SpanData {
        span_context: context,
        parent_span_id: parent,
        parent_span_is_remote: false,
        span_kind: match span.kind {
            HandlerKind::Request => SpanKind::Server,
            _ => SpanKind::Consumer,
        },
        name: Cow::Borrowed(name),
        start_time: span.start,
        end_time: span.start + span.duration,
        attributes: vec![
            KeyValue::new("courier.component", span.component.to_string()),
            KeyValue::new("courier.sender", span.sender.to_string()),
            KeyValue::new("courier.kind", span.kind.as_str()),
            KeyValue::new("courier.outcome", span.outcome.as_str()),
            KeyValue::new("courier.payload_bytes", span.payload_bytes as i64),
            KeyValue::new("courier.reply_bytes", span.reply_bytes as i64),
        ],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}
