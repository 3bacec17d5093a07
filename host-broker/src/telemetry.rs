//! Spans of handler calls: what a broker records of a traced message's handling, and where
//! it hands the record.
//!
//! The broker knows nothing of OpenTelemetry: it builds a [`HandlerSpan`] per handler call
//! of a sampled trace and hands it to the [`SpanSink`] of its [`Telemetry`]
//! ([`BrokerConfig::telemetry`](crate::BrokerConfig::telemetry)), which exports it (the
//! `courier` runner's sink speaks OTLP). Without telemetry nothing is built, no clock is read
//! for it and nothing is allocated: a message that carries no trace context is handled
//! exactly as before, and one that does only hands its context on.
//!
//! Which calls are traced: every call whose message carries a context (from the HTTP
//! ingress's `traceparent`, a traced handler that sent it, or another host) gets a span of
//! its own in that trace, a child of the sender's span. With telemetry on, a call whose
//! message carries none (a timer's firing, a host send without a header) starts a trace.
//! Which traces are recorded: those whose context says `sampled`; a trace this host starts
//! is sampled at [`Telemetry`]'s ratio, decided from the trace id, so every host that
//! starts a trace decides alike for the same id.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use courier_host_core::ComponentId;
use courier_host_core::trace::{SpanId, TraceContext, TraceId};

/// What a handler was called for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerKind {
    /// A fire-and-forget message.
    Message,
    /// A request, answered with a reply.
    Request,
    /// A subscriber's copy of a publication.
    Publication,
    /// A timer's firing.
    Timer,
}

impl HandlerKind {
    /// Its name in a span: `message`, `request`, `publication`, `timer`.
    pub fn as_str(self) -> &'static str {
        match self {
            HandlerKind::Message => "message",
            HandlerKind::Request => "request",
            HandlerKind::Publication => "publication",
            HandlerKind::Timer => "timer",
        }
    }
}

/// How a handler call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It returned `Ok`.
    Ok,
    /// It returned an error (the guest's refusal or failure).
    Error,
    /// It trapped: a panic, the memory cap, fuel, `unreachable`.
    Trap,
    /// It ran past its deadline.
    Timeout,
    /// The shutdown's drain deadline cut it.
    Abandoned,
}

impl Outcome {
    /// Its name in a span: `ok`, `error`, `trap`, `timeout`, `abandoned`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Trap => "trap",
            Outcome::Timeout => "timeout",
            Outcome::Abandoned => "abandoned",
        }
    }
}

/// One handler call of a sampled trace.
#[derive(Debug, Clone)]
pub struct HandlerSpan {
    /// The call's own context: its trace and its span id.
    pub context: TraceContext,
    /// The span of whoever sent the message (a handler, an HTTP client), if the message
    /// carried a context; `None` for the first span of a trace this host started.
    pub parent: Option<SpanId>,
    /// The component whose handler ran.
    pub component: ComponentId,
    /// Who sent the message, as the host stamped it.
    pub sender: ComponentId,
    /// What the handler was called for.
    pub kind: HandlerKind,
    /// How the call ended.
    pub outcome: Outcome,
    /// When the call started, by the wall clock.
    pub start: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// The message's payload, in bytes.
    pub payload_bytes: usize,
    /// The reply's length in bytes (a request answered `Ok`); 0 otherwise.
    pub reply_bytes: usize,
}

/// Where a broker hands the spans it records: an exporter. `record` is called on the
/// actor's own task right after the handler returns, so it must not block: queue the span
/// and export it elsewhere.
pub trait SpanSink: Send + Sync + 'static {
    /// Take one finished span.
    fn record(&self, span: HandlerSpan);
}

/// A broker's tracing: where its spans go and what share of the traces it starts are
/// recorded.
///
/// ```
/// use std::sync::Arc;
/// use courier_host_broker::{BrokerConfig, HandlerSpan, SpanSink, Telemetry};
///
/// struct Printer;
/// impl SpanSink for Printer {
///     fn record(&self, span: HandlerSpan) {
///         println!("{} {} {}", span.context, span.component, span.outcome.as_str());
///     }
/// }
/// let config = BrokerConfig::default().telemetry(Telemetry::new(Arc::new(Printer), 0.25));
/// assert_eq!(config.get_telemetry().unwrap().sampling(), 0.25);
/// ```
#[derive(Clone)]
pub struct Telemetry {
    sink: Arc<dyn SpanSink>,
    sampling: f64,
    /// `sampling` as a bound on the upper 63 bits of a trace id's low half.
    threshold: u64,
}

impl Telemetry {
    /// Record spans into `sink`, sampling the traces this host starts at `sampling` (0.0 to
    /// 1.0; outside that range it is clamped, and NaN is 0).
    pub fn new(sink: Arc<dyn SpanSink>, sampling: f64) -> Telemetry {
        let sampling = if sampling.is_nan() {
            0.0
        } else {
            sampling.clamp(0.0, 1.0)
        };
        // As OpenTelemetry's trace-id ratio sampler: the low 8 bytes of the id, less their
        // lowest bit, against the ratio of 2^63.
        let threshold = (sampling * (1u64 << 63) as f64) as u64;
        Telemetry {
            sink,
            sampling,
            threshold,
        }
    }

    /// The share of the traces this host starts that are recorded.
    pub fn sampling(&self) -> f64 {
        self.sampling
    }

    /// Whether a trace this host starts with id `trace_id` is recorded.
    pub fn samples(&self, trace_id: TraceId) -> bool {
        if self.sampling >= 1.0 {
            return true;
        }
        let bytes = trace_id.to_bytes();
        let low = u64::from_be_bytes(bytes[8..].try_into().expect("eight bytes"));
        (low >> 1) < self.threshold
    }

    pub(crate) fn record(&self, span: HandlerSpan) {
        self.sink.record(span);
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("sampling", &self.sampling)
            .finish_non_exhaustive()
    }
}

/// The trace of one handler call, decided before the call: its own context, its parent,
/// and whether it is recorded (then with its wall-clock start).
pub(crate) struct CallTrace {
    pub(crate) context: TraceContext,
    pub(crate) parent: Option<SpanId>,
    pub(crate) recording: Option<SystemTime>,
}

impl CallTrace {
    /// The trace of a call for a message that carried `carried`: `None` when it carried
    /// none and telemetry is off, so an untraced host decides nothing and reads no clock.
    pub(crate) fn begin(
        carried: Option<TraceContext>,
        telemetry: Option<&Telemetry>,
    ) -> Option<CallTrace> {
        let (context, parent) = match (carried, telemetry) {
            (None, None) => return None,
            (Some(carried), _) => (carried.child(), Some(carried.span_id())),
            (None, Some(telemetry)) => {
                let trace_id = TraceId::random();
                let sampled = telemetry.samples(trace_id);
                (TraceContext::new(trace_id, SpanId::random(), sampled), None)
            }
        };
        let recording = (telemetry.is_some() && context.is_sampled()).then(SystemTime::now);
        Some(CallTrace {
            context,
            parent,
            recording,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nowhere;
    impl SpanSink for Nowhere {
        fn record(&self, _: HandlerSpan) {}
    }

    #[test]
    fn the_sampling_ratio_decides_by_trace_id() {
        let ids: Vec<TraceId> = (0..10_000).map(|_| TraceId::random()).collect();
        let share = |ratio: f64| {
            let telemetry = Telemetry::new(Arc::new(Nowhere), ratio);
            ids.iter().filter(|id| telemetry.samples(**id)).count()
        };
        assert_eq!(share(0.0), 0);
        assert_eq!(share(1.0), ids.len());
        let quarter = share(0.25);
        assert!((2_000..3_000).contains(&quarter), "{quarter}");
        assert_eq!(share(f64::NAN), 0);
        assert_eq!(share(7.0), ids.len());
    }

    #[test]
    fn a_call_is_traced_only_when_its_message_was_or_telemetry_is_on() {
        assert!(CallTrace::begin(None, None).is_none());
        let carried = TraceContext::root(true);
        let call = CallTrace::begin(Some(carried), None).expect("the context is handed on");
        assert_eq!(call.context.trace_id(), carried.trace_id());
        assert_eq!(call.parent, Some(carried.span_id()));
        assert_ne!(call.context.span_id(), carried.span_id());
        assert!(
            call.recording.is_none(),
            "nothing is recorded without telemetry"
        );

        let telemetry = Telemetry::new(Arc::new(Nowhere), 1.0);
        let root = CallTrace::begin(None, Some(&telemetry)).expect("a trace starts");
        assert!(root.parent.is_none() && root.recording.is_some());
        let unsampled = TraceContext::root(false);
        let call = CallTrace::begin(Some(unsampled), Some(&telemetry)).unwrap();
        assert!(
            call.recording.is_none(),
            "the sender's decision not to sample holds"
        );
    }
}
