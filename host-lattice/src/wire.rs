//! What travels between hosts besides the payload: the envelope a host puts before each
//! message's payload, and the headers of answers.
//!
//! A message, request, publication or probe is its payload after a short envelope the
//! sending host writes ([`Envelope`]): a tag byte, the kind, the sender id and, for a
//! message or a request, the wall-clock moment its sender stops waiting for it (and for a
//! request, how long its sender waits), then, under its own tag, the trace context it was
//! sent in ([`put_trace`]: a fixed 25 bytes). Nothing else: the target is the subject, the
//! sending host is the subject's token after the kind letter (so NATS permissions can pin
//! it), and the sending host's run and the message's sequence number are the reply
//! subject (`courier.<lattice>.h.<host>.r.<incarnation>.<seq>`).
//!
//! A message queued on the serving host is acknowledged in batches: one NATS message on
//! `courier.<lattice>.k.<serving host>.<host>.<incarnation>` whose payload is the sequence
//! numbers it acknowledges ([`encode_seqs`]). Answers (a refusal, a request's reply, a
//! probe's answer) go to the message's own reply subject, with these headers:
//!
//! | header | meaning |
//! |---|---|
//! | `Courier-Host` | which host answered (a probe, a refusal) |
//! | `Courier-Error` | why it refused (an error code, below) |
//! | `Courier-Detail` | the error's text (a name, a limit, a handler's message) |
//! | `Courier-Incarnation` | a host answering for its name: the random token of its run |
//!
//! A message from a durable sender carries one header of its own, `Courier-Durable-Seq`:
//! the sender's sequence number for it ([`durable_headers`]), by which a durable target
//! drops a copy it already holds.
//!
//! Guests never see NATS and cannot set any of these: a guest chooses only a target and a
//! payload, and the host writes the rest.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};
use courier_host_broker::{ComponentError, MessagingError, TraceContext};
use courier_host_core::trace::TRACE_CONTEXT_BYTES;

pub(crate) const HOST: &str = "Courier-Host";
pub(crate) const ERROR: &str = "Courier-Error";
pub(crate) const DETAIL: &str = "Courier-Detail";
pub(crate) const INCARNATION: &str = "Courier-Incarnation";

/// The first byte of an envelope sent in no trace: anything else is not from a host of this
/// version. (0xC1 was the envelope without deadlines: a host of that version is refused,
/// not misread.)
const TAG: u8 = 0xC2;

/// The first byte of an envelope sent in a trace: the same fields, then the trace context
/// before the payload. A host that knows only [`TAG`] refuses it as malformed rather than
/// reading the context as payload; what is sent in no trace is written exactly as before,
/// so tracing costs the wire nothing while it is unused.
const TAG_TRACED: u8 = 0xC3;

/// The most bytes an envelope takes: tag, kind, sender length, a sender of at most 255
/// bytes, then a deadline (varint) and a request's timeout or a message's two stream
/// numbers (varints), then the trace context.
pub(crate) const MAX_ENVELOPE: usize = 3 + 255 + 3 * 10 + TRACE_CONTEXT_BYTES;

/// What a host writes before the payload of what it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    pub(crate) kind: Kind,
    /// The id of the component (or `host`) that sent it; at most 255 bytes.
    pub(crate) sender: &'a str,
    /// How long a request's sender waits, in milliseconds; 0 for the other kinds.
    pub(crate) timeout_ms: u32,
    /// For a message or a request, when its sender stops waiting for it, in milliseconds
    /// since the Unix epoch by the sending host's clock: a receiving host drops what
    /// arrives later (it was given up on: a message dead-lettered, a request answered
    /// `timeout`). 0 for the other kinds.
    pub(crate) deadline_ms: u64,
    /// A message's number in its stream (`pending.rs`); 0 for a message that is not
    /// numbered and for the other kinds.
    pub(crate) stream_seq: u64,
    /// The lowest number in that stream its sender still waits for (at most `stream_seq`).
    pub(crate) low: u64,
    /// The context of the sender's span, if it was sent in a trace; `None` for a probe.
    pub(crate) trace: Option<TraceContext>,
}

impl<'a> Envelope<'a> {
    /// `payload` after this envelope, as one buffer for the wire. A sender longer than 255
    /// bytes (never a valid id) is cut, and refused by the receiver as invalid.
    pub(crate) fn wrap(&self, payload: &[u8]) -> Bytes {
        let sender = &self.sender.as_bytes()[..self.sender.len().min(255)];
        let mut out = BytesMut::with_capacity(MAX_ENVELOPE + payload.len());
        out.put_u8(if self.trace.is_some() {
            TAG_TRACED
        } else {
            TAG
        });
        out.put_u8(self.kind.code());
        out.put_u8(sender.len() as u8);
        out.put_slice(sender);
        match self.kind {
            Kind::Request => {
                put_varint(&mut out, self.deadline_ms);
                out.put_u32_le(self.timeout_ms);
            }
            Kind::Message => {
                put_varint(&mut out, self.deadline_ms);
                put_varint(&mut out, self.stream_seq);
                if self.stream_seq > 0 {
                    put_varint(&mut out, self.stream_seq - self.low.min(self.stream_seq));
                }
            }
            Kind::Publication | Kind::Probe => {}
        }
        if let Some(trace) = &self.trace {
            put_trace(&mut out, trace);
        }
        out.put_slice(payload);
        out.freeze()
    }

    /// The envelope at the start of `bytes` and where the payload starts, or `None` for
    /// bytes a host of this version did not write.
    pub(crate) fn open(bytes: &'a [u8]) -> Option<(Envelope<'a>, usize)> {
        let (&tag, rest) = bytes.split_first()?;
        let (&kind, rest) = rest.split_first()?;
        let (&len, rest) = rest.split_first()?;
        if tag != TAG && tag != TAG_TRACED {
            return None;
        }
        let kind = Kind::from_code(kind)?;
        let sender = std::str::from_utf8(rest.get(..usize::from(len))?).ok()?;
        let mut at = 3 + usize::from(len);
        let (mut timeout_ms, mut deadline_ms, mut stream_seq, mut low) = (0, 0, 0, 0);
        match kind {
            Kind::Request => {
                deadline_ms = take_varint(bytes, &mut at)?;
                let raw = bytes.get(at..at + 4)?;
                timeout_ms = u32::from_le_bytes(raw.try_into().ok()?);
                at += 4;
            }
            Kind::Message => {
                deadline_ms = take_varint(bytes, &mut at)?;
                stream_seq = take_varint(bytes, &mut at)?;
                if stream_seq > 0 {
                    let behind = take_varint(bytes, &mut at)?;
                    if behind >= stream_seq {
                        return None;
                    }
                    low = stream_seq - behind;
                }
            }
            Kind::Publication | Kind::Probe => {}
        }
        let trace = match tag {
            TAG_TRACED => Some(take_trace(bytes, &mut at)?),
            _ => None,
        };
        Some((
            Envelope {
                kind,
                sender,
                timeout_ms,
                deadline_ms,
                stream_seq,
                low,
                trace,
            },
            at,
        ))
    }

    /// Whether its sender has stopped waiting for it, by this host's clock.
    pub(crate) fn expired(&self) -> bool {
        self.deadline_ms != 0 && unix_ms(SystemTime::now()) > self.deadline_ms
    }
}

/// `time` in milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// The wall-clock moment of `deadline`, in milliseconds since the Unix epoch, rounded up
/// so a receiving host never drops what is still owed.
pub(crate) fn deadline_ms(deadline: Instant) -> u64 {
    let left = deadline.saturating_duration_since(Instant::now());
    unix_ms(SystemTime::now() + left) + 1
}

/// The most of an error's text that goes into a header: header values share the server's
/// payload limit, and a handler's error text is the guest's choice.
pub(crate) const DETAIL_LIMIT: usize = 1024;

/// The most acknowledgements in one batch: a batch is sent when no message is ready, or
/// when it holds this many.
pub(crate) const MAX_ACKS: usize = 1024;

/// `value` as an LEB128 varint: seven bits a byte, low bits first.
fn put_varint(out: &mut impl BufMut, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.put_u8(byte);
            return;
        }
        out.put_u8(byte | 0x80);
    }
}

/// The varint at `bytes[*at..]`, moving `at` past it; `None` if it is cut short or longer
/// than a u64.
fn take_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let byte = *bytes.get(*at)?;
        *at += 1;
        if shift > 63 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
}

/// `trace` on the wire, in an envelope tagged [`TAG_TRACED`]: its fixed
/// [`TRACE_CONTEXT_BYTES`] (trace id, span id, flags), so a peer can put nothing else
/// there.
pub(crate) fn put_trace(out: &mut impl BufMut, trace: &TraceContext) {
    out.put_slice(&trace.to_bytes());
}

/// The trace context [`put_trace`] wrote at `bytes[*at..]`, moving `at` past it, or `None`
/// for bytes it cannot have written (a context cut short, an id of zeros, unknown flags),
/// which make the whole envelope malformed.
pub(crate) fn take_trace(bytes: &[u8], at: &mut usize) -> Option<TraceContext> {
    let raw = bytes.get(*at..*at + TRACE_CONTEXT_BYTES)?;
    let context = TraceContext::from_bytes(raw.try_into().ok()?)?;
    *at += TRACE_CONTEXT_BYTES;
    Some(context)
}

/// Sequence numbers as a batch of acknowledgements: each as the LEB128 varint of its
/// difference from the one before (zigzag-free: a batch is written in arrival order, which
/// for one sending host is increasing, but any order decodes).
pub(crate) fn encode_seqs(seqs: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(seqs.len() * 2);
    let mut previous = 0u64;
    for &seq in seqs {
        put_varint(&mut out, seq.wrapping_sub(previous));
        previous = seq;
    }
    out
}

/// The sequence numbers [`encode_seqs`] wrote, or `None` for bytes it cannot have written
/// (or more than [`MAX_ACKS`] of them).
pub(crate) fn decode_seqs(bytes: &[u8]) -> Option<Vec<u64>> {
    let mut seqs = Vec::new();
    let mut previous = 0u64;
    let mut at = 0;
    while at < bytes.len() {
        let delta = take_varint(bytes, &mut at)?;
        previous = previous.wrapping_add(delta);
        seqs.push(previous);
        if seqs.len() > MAX_ACKS {
            return None;
        }
    }
    Some(seqs)
}

/// What a message on an actor subject is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Message,
    Request,
    Publication,
    /// A question to whichever host serves an id: are you there? Answered with the host's
    /// name; used to keep one host per id and to confirm a new subscription.
    Probe,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Message => 1,
            Kind::Request => 2,
            Kind::Publication => 3,
            Kind::Probe => 4,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            1 => Kind::Message,
            2 => Kind::Request,
            3 => Kind::Publication,
            4 => Kind::Probe,
            _ => return None,
        })
    }
}

/// The header of a durable sender's message: its sequence number, in decimal.
pub(crate) const DURABLE_SEQ: &str = "Courier-Durable-Seq";

/// The headers of a durable sender's message numbered `seq` by its sender.
pub(crate) fn durable_headers(seq: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(DURABLE_SEQ, seq.to_string().as_str());
    headers
}

/// The durable sender's sequence number in `headers`, if the message has one. A value that
/// is not a number is `Err`: the message is malformed, and refused rather than taken for
/// one without a number (which its target would not tell from a copy).
pub(crate) fn durable_seq(headers: Option<&HeaderMap>) -> Result<Option<u64>, ()> {
    match get(headers, DURABLE_SEQ) {
        None => Ok(None),
        Some(value) => value.parse().map(Some).map_err(|_| ()),
    }
}

/// A header value, if present.
pub(crate) fn get<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|value| value.as_str())
}

/// `text` fit for a header value: at most [`DETAIL_LIMIT`] bytes, with line breaks and
/// other control characters (which would end the header) escaped.
pub(crate) fn header_text(text: &str) -> String {
    let text = courier_host_core::text::bounded(text, DETAIL_LIMIT);
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Put `error` into `headers`.
pub(crate) fn put_error(headers: &mut HeaderMap, error: &MessagingError) {
    let (code, detail) = match error {
        MessagingError::TargetNotFound(id) => ("target-not-found", id.clone()),
        MessagingError::AccessDenied(id) => ("access-denied", id.clone()),
        MessagingError::MailboxFull(id) => ("mailbox-full", id.clone()),
        MessagingError::PayloadTooLarge(limit) => ("payload-too-large", limit.to_string()),
        MessagingError::Timeout => ("timeout", String::new()),
        MessagingError::HandlerFailed(ComponentError::InvalidMessage(text)) => {
            ("handler-failed/invalid-message", text.clone())
        }
        MessagingError::HandlerFailed(ComponentError::Unsupported(text)) => {
            ("handler-failed/unsupported", text.clone())
        }
        MessagingError::HandlerFailed(ComponentError::Internal(text)) => {
            ("handler-failed/internal", text.clone())
        }
        MessagingError::TargetCrashed(text) => ("target-crashed", text.clone()),
        MessagingError::ShuttingDown => ("shutting-down", String::new()),
    };
    headers.insert(ERROR, code);
    if !detail.is_empty() {
        headers.insert(DETAIL, header_text(&detail));
    }
}

/// The error in `headers`, if there is one. An error code this host does not know (from a
/// newer host, say) is the serving host's failure, described as it was given.
pub(crate) fn take_error(headers: Option<&HeaderMap>) -> Option<MessagingError> {
    let code = get(headers, ERROR)?;
    let detail = get(headers, DETAIL).unwrap_or_default().to_string();
    Some(match code {
        "target-not-found" => MessagingError::TargetNotFound(detail),
        "access-denied" => MessagingError::AccessDenied(detail),
        "mailbox-full" => MessagingError::MailboxFull(detail),
        "payload-too-large" => MessagingError::PayloadTooLarge(detail.parse().unwrap_or(0)),
        "timeout" => MessagingError::Timeout,
        "handler-failed/invalid-message" => {
            MessagingError::HandlerFailed(ComponentError::InvalidMessage(detail))
        }
        "handler-failed/unsupported" => {
            MessagingError::HandlerFailed(ComponentError::Unsupported(detail))
        }
        "handler-failed/internal" => {
            MessagingError::HandlerFailed(ComponentError::Internal(detail))
        }
        "target-crashed" => MessagingError::TargetCrashed(detail),
        "shutting-down" => MessagingError::ShuttingDown,
        other => MessagingError::TargetCrashed(format!(
            "the serving host answered `{}`: {detail}",
            header_text(other)
        )),
    })
}

/// A short name of `error`, for dead-letter reasons and logs.
pub(crate) fn error_code(error: &MessagingError) -> String {
    let mut headers = HeaderMap::new();
    put_error(&mut headers, error);
    let code = get(Some(&headers), ERROR).unwrap_or_default();
    match get(Some(&headers), DETAIL) {
        Some(detail) => format!("{code} ({detail})"),
        None => code.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_survives_the_trip() {
        let errors = [
            MessagingError::TargetNotFound("pong".into()),
            MessagingError::AccessDenied("pong".into()),
            MessagingError::MailboxFull("pong".into()),
            MessagingError::PayloadTooLarge(1024),
            MessagingError::Timeout,
            MessagingError::HandlerFailed(ComponentError::InvalidMessage("bad".into())),
            MessagingError::HandlerFailed(ComponentError::Unsupported("no".into())),
            MessagingError::HandlerFailed(ComponentError::Internal("oops".into())),
            MessagingError::TargetCrashed("trapped".into()),
            MessagingError::ShuttingDown,
        ];
        for error in errors {
            let mut headers = HeaderMap::new();
            put_error(&mut headers, &error);
            // The WIT's error has no `PartialEq`; its `Debug` shows every field.
            assert_eq!(
                format!("{:?}", take_error(Some(&headers))),
                format!("{:?}", Some(error))
            );
        }
        assert!(take_error(Some(&HeaderMap::new())).is_none());
    }

    #[test]
    fn a_durable_senders_number_survives_the_trip_and_garbage_is_refused() {
        for seq in [0, 1, 300, u64::MAX] {
            assert_eq!(durable_seq(Some(&durable_headers(seq))), Ok(Some(seq)));
        }
        assert_eq!(durable_seq(None), Ok(None));
        assert_eq!(durable_seq(Some(&HeaderMap::new())), Ok(None));
        let mut garbage = HeaderMap::new();
        garbage.insert(DURABLE_SEQ, "-1");
        assert_eq!(durable_seq(Some(&garbage)), Err(()));
    }

    #[test]
    fn acknowledged_sequence_numbers_survive_the_trip() {
        for seqs in [
            vec![],
            vec![0],
            vec![1, 2, 3, 300, 301, 1 << 40, u64::MAX],
            vec![9, 4, 7],
        ] {
            assert_eq!(decode_seqs(&encode_seqs(&seqs)), Some(seqs));
        }
        assert_eq!(decode_seqs(&[0x80]), None, "a varint cut short");
        assert_eq!(decode_seqs(&[0xff; 11]), None, "a varint too long");
        assert_eq!(decode_seqs(&vec![1; MAX_ACKS + 1]), None, "too many");
    }

    fn traced() -> TraceContext {
        TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap()
    }

    #[test]
    fn envelopes_survive_the_trip_and_garbage_is_refused() {
        let now = unix_ms(SystemTime::now());
        let trace = Some(traced());
        for (kind, sender, timeout_ms, deadline_ms, stream_seq, low, trace) in [
            (Kind::Message, "ping", 0, now, 0, 0, None),
            (Kind::Message, "ping", 0, now, 1, 1, trace),
            (Kind::Message, "ping", 0, 0, 300_000, 299_000, None),
            (Kind::Message, "ping", 0, u64::MAX, u64::MAX, 1, trace),
            (Kind::Request, "orders/billing", 2500, now, 0, 0, trace),
            (Kind::Request, "orders/billing", 2500, now, 0, 0, None),
            (Kind::Publication, "host", 0, 0, 0, 0, trace),
            (Kind::Probe, "", 0, 0, 0, 0, None),
        ] {
            let envelope = Envelope {
                kind,
                sender,
                timeout_ms,
                deadline_ms,
                stream_seq,
                low,
                trace,
            };
            let bytes = envelope.wrap(b"payload");
            assert!(bytes.len() <= MAX_ENVELOPE + b"payload".len());
            let (opened, at) = Envelope::open(&bytes).expect("it opens");
            assert_eq!(opened, envelope);
            assert_eq!(&bytes[at..], b"payload");
        }
        let message = Envelope {
            kind: Kind::Message,
            sender: "ping",
            timeout_ms: 0,
            deadline_ms: now,
            stream_seq: 7,
            low: 5,
            trace: None,
        }
        .wrap(b"");
        assert_eq!(
            Envelope::open(&message).map(|(_, at)| at),
            Some(message.len())
        );
        for garbage in [
            &b""[..],
            &[TAG],
            &[TAG, 1],
            &[0x00, 1, 0],
            &[TAG, 9, 0],
            &[TAG, 1, 5, b'p'],
            &[TAG, 1, 2, 0xff, 0xfe],
            &[TAG, 2, 1, b'p', 1, 2],
            &[TAG, 2, 1, b'p', 0x80],
            &[TAG, 1, 1, b'p'],
            &[TAG, 1, 1, b'p', 0x80],
            &[TAG, 1, 1, b'p', 1],
            &[TAG, 1, 1, b'p', 1, 0x80],
            &[TAG, 1, 1, b'p', 1, 3, 3],
            &[0xC1, 1, 1, b'p', 0],
            // Traced, with no context (or a short one) where it goes.
            &[TAG_TRACED, 3, 1, b'p'],
            &[TAG_TRACED, 1, 1, b'p', 1, 0, 0, 0x4b, 0xf9],
        ] {
            assert_eq!(Envelope::open(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn a_corrupt_or_foreign_trace_context_makes_the_envelope_malformed() {
        let envelope = Envelope {
            kind: Kind::Request,
            sender: "front",
            timeout_ms: 1000,
            deadline_ms: 0,
            stream_seq: 0,
            low: 0,
            trace: Some(traced()),
        };
        let bytes = envelope.wrap(b"payload").to_vec();
        assert_eq!(bytes[0], TAG_TRACED);
        // The context sits right before the payload: ids, flags.
        let context_at = bytes.len() - b"payload".len() - TRACE_CONTEXT_BYTES;
        let corrupt = |change: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = bytes.clone();
            change(&mut bytes);
            Envelope::open(&bytes).map(|(opened, _)| opened.trace)
        };
        // A trace id of zeros, a span id of zeros, flags other than `sampled`.
        assert_eq!(corrupt(&|b| b[context_at..context_at + 16].fill(0)), None);
        assert_eq!(
            corrupt(&|b| b[context_at + 16..context_at + 24].fill(0)),
            None
        );
        assert_eq!(corrupt(&|b| b[context_at + 24] = 0x80), None);
        // Cut short: nothing else is read as the rest of the context.
        assert_eq!(corrupt(&|b| b.truncate(context_at + 10)), None);
        assert_eq!(corrupt(&|b| b.truncate(context_at)), None);
        // What it wrote reads back as it was, and the same envelope sent in no trace is
        // the untraced tag with not a byte more.
        assert_eq!(corrupt(&|_| {}), Some(Some(traced())));
        let untraced = Envelope {
            trace: None,
            ..envelope
        }
        .wrap(b"payload");
        assert_eq!(untraced[0], TAG);
        assert_eq!(untraced.len(), bytes.len() - TRACE_CONTEXT_BYTES);
        assert_eq!(
            &untraced[1..],
            &[&bytes[1..context_at], &b"payload"[..]].concat()[..]
        );
    }

    #[test]
    fn a_deadline_passes_by_the_wall_clock_and_zero_means_none() {
        let envelope = |deadline_ms| Envelope {
            kind: Kind::Message,
            sender: "ping",
            timeout_ms: 0,
            deadline_ms,
            stream_seq: 0,
            low: 0,
            trace: None,
        };
        let now = unix_ms(SystemTime::now());
        assert!(envelope(now - 1).expired());
        assert!(!envelope(now + 60_000).expired());
        assert!(!envelope(0).expired());
        // A deadline one second ahead, by the clock, is not yet and never before it.
        let ahead = deadline_ms(Instant::now() + std::time::Duration::from_secs(1));
        assert!(
            (now + 1000..=now + 1100).contains(&ahead),
            "{ahead} vs {now}"
        );
        assert!(!envelope(ahead).expired());
    }

    #[test]
    fn a_guests_error_text_cannot_break_a_header() {
        let text = format!("line\r\nCourier-Sender: forged\n{}", "x".repeat(10_000));
        let value = header_text(&text);
        assert!(!value.contains(['\r', '\n']));
        assert!(value.len() < DETAIL_LIMIT + 64);
    }
}
