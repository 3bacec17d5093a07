//! What travels through an actor's bounded mailbox.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use courier_host_core::{ComponentId, MessagingError, TraceContext};
use tokio::sync::oneshot;

/// The trace context an envelope carries. Boxed: every mailbox slot is an envelope, and an
/// untraced one (`None`, no allocation) stays as small as it was; a traced one pays one
/// small allocation per hop.
pub(crate) type Traced = Option<Box<TraceContext>>;

/// The reply channel of a request.
pub(crate) type Reply = oneshot::Sender<Result<Vec<u8>, MessagingError>>;

/// One item in a mailbox. The payload is moved in by the sender and moved out by the actor:
/// it is never copied between the sender's memory and the target's, and a publication's
/// subscribers share one payload.
pub(crate) enum Envelope {
    /// A fire-and-forget message; `position` is where the store keeps it, for a message
    /// to a durable component (its actor names it as consumed once it is handled).
    /// `published` marks a subscriber's copy of a publication.
    Message {
        sender: ComponentId,
        payload: Bytes,
        position: Option<u64>,
        trace: Traced,
        published: bool,
    },
    /// A request; `expires` is when its sender stops waiting.
    Request {
        sender: ComponentId,
        payload: Bytes,
        reply: Reply,
        expires: Instant,
        trace: Traced,
    },
    /// Handle what is queued ahead of this, then stop.
    Stop,
    /// Nothing to handle: wakes an idle actor to look for an upgrade.
    Wake,
    /// The timer `name` came due: the actor takes the firing `firing` from the component's
    /// timers, unless it was cancelled or replaced since, and delivers it as a message.
    Timer { name: Arc<str>, firing: u64 },
}

impl Envelope {
    /// A message that is not stored, of no trace.
    pub(crate) fn message(sender: ComponentId, payload: Bytes) -> Envelope {
        Envelope::traced(sender, payload, None)
    }

    /// A message that is not stored, sent in the trace `trace` names (its context is the
    /// sender's span).
    pub(crate) fn traced(
        sender: ComponentId,
        payload: Bytes,
        trace: Option<TraceContext>,
    ) -> Envelope {
        Envelope::Message {
            sender,
            payload,
            position: None,
            trace: trace.map(Box::new),
            published: false,
        }
    }

    /// A subscriber's copy of a publication.
    pub(crate) fn publication(
        sender: ComponentId,
        payload: Bytes,
        trace: Option<TraceContext>,
    ) -> Envelope {
        Envelope::Message {
            sender,
            payload,
            position: None,
            trace: trace.map(Box::new),
            published: true,
        }
    }

    /// The trace it was sent in, if any: the context of its sender's span.
    pub(crate) fn trace(&self) -> Option<TraceContext> {
        match self {
            Envelope::Message { trace, .. } | Envelope::Request { trace, .. } => {
                trace.as_deref().copied()
            }
            Envelope::Stop | Envelope::Wake | Envelope::Timer { .. } => None,
        }
    }

    /// Where the store keeps it, if it is a stored message.
    pub(crate) fn position(&self) -> Option<u64> {
        match self {
            Envelope::Message { position, .. } => *position,
            _ => None,
        }
    }

    /// Who sent it; empty for [`Envelope::Stop`], [`Envelope::Wake`] and
    /// [`Envelope::Timer`], which only the broker sends.
    pub(crate) fn sender(&self) -> &str {
        match self {
            Envelope::Message { sender, .. } | Envelope::Request { sender, .. } => sender,
            Envelope::Stop | Envelope::Wake | Envelope::Timer { .. } => "",
        }
    }

    /// What it carries; empty for [`Envelope::Stop`].
    pub(crate) fn payload(&self) -> &[u8] {
        match self {
            Envelope::Message { payload, .. } | Envelope::Request { payload, .. } => payload,
            Envelope::Stop | Envelope::Wake | Envelope::Timer { .. } => &[],
        }
    }

    /// Whether it was routed, and so counted in its mailbox's queued messages and bytes:
    /// [`Envelope::Stop`], [`Envelope::Wake`] and [`Envelope::Timer`] come from the broker
    /// itself (a timer's message is counted when the actor takes it).
    pub(crate) fn is_counted(&self) -> bool {
        matches!(self, Envelope::Message { .. } | Envelope::Request { .. })
    }

    /// The payload itself, given back to a sender whose message was refused.
    pub(crate) fn into_payload(self) -> Bytes {
        match self {
            Envelope::Message { payload, .. } | Envelope::Request { payload, .. } => payload,
            Envelope::Stop | Envelope::Wake | Envelope::Timer { .. } => Bytes::new(),
        }
    }
}
