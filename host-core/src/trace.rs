//! W3C trace context: which trace a message belongs to and which span sent it.
//!
//! Every message, request and publication may carry a [`TraceContext`], the fixed-size
//! content of a W3C `traceparent` header (version `00`): a 16-byte trace id, the 8-byte id of
//! the span that sent it, and the flags (only "sampled" is kept). It is small and `Copy`, so
//! carrying it costs an envelope 26 bytes and never an allocation.
//!
//! A handler call that is traced gets a context of its own, [`TraceContext::child`] of the
//! one its message carried: the same trace id, a new span id. What the guest sends while
//! it handles the message carries that context, so the receiving handler's parent is the
//! sending handler's span, hop by hop and host to host.
//!
//! What comes from outside (an HTTP header, another host) is held to the exact shape:
//! [`TraceContext::parse`] takes `00-<32 hex>-<16 hex>-<2 hex>` in lowercase with neither id
//! all zeros, and nothing else; [`TraceContext::from_bytes`] the same in binary.
//!
//! ```
//! use courier_host_core::trace::TraceContext;
//!
//! let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
//! let context = TraceContext::parse(header).expect("a valid traceparent");
//! assert!(context.is_sampled());
//! assert_eq!(context.to_string(), header);
//!
//! let child = context.child();
//! assert_eq!(child.trace_id(), context.trace_id());
//! assert_ne!(child.span_id(), context.span_id());
//!
//! assert_eq!(TraceContext::parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"), None);
//! ```

use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

/// The id of a trace: 16 bytes, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

/// The id of a span: 8 bytes, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

impl TraceId {
    /// The id as bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// The id of `bytes`, unless they are all zeros (which W3C reserves for "none").
    pub fn from_bytes(bytes: [u8; 16]) -> Option<TraceId> {
        (bytes != [0; 16]).then_some(TraceId(bytes))
    }

    /// A new random id.
    pub fn random() -> TraceId {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&random_nonzero().to_be_bytes());
        bytes[8..].copy_from_slice(&random_nonzero().to_be_bytes());
        TraceId(bytes)
    }
}

impl SpanId {
    /// The id as bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }

    /// The id of `bytes`, unless they are all zeros.
    pub fn from_bytes(bytes: [u8; 8]) -> Option<SpanId> {
        (bytes != [0; 8]).then_some(SpanId(bytes))
    }

    /// A new random id.
    pub fn random() -> SpanId {
        SpanId(random_nonzero().to_be_bytes())
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for byte in bytes {
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

/// Which trace a message belongs to and which span sent it: a W3C `traceparent` of version
/// `00`. See the [module documentation](self).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
}

/// The length of a version-`00` `traceparent`: `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

/// The length of [`TraceContext::to_bytes`]: trace id, span id, flags.
pub const TRACE_CONTEXT_BYTES: usize = 25;

/// The `sampled` bit of the W3C flags.
const SAMPLED: u8 = 0x01;

impl TraceContext {
    /// The context of span `span_id` in trace `trace_id`.
    pub fn new(trace_id: TraceId, span_id: SpanId, sampled: bool) -> TraceContext {
        TraceContext {
            trace_id,
            span_id,
            sampled,
        }
    }

    /// The first span of a new trace, with random ids.
    pub fn root(sampled: bool) -> TraceContext {
        TraceContext::new(TraceId::random(), SpanId::random(), sampled)
    }

    /// A span whose parent is this one: the same trace and flags, a new random span id.
    pub fn child(&self) -> TraceContext {
        TraceContext::new(self.trace_id, SpanId::random(), self.sampled)
    }

    /// The trace it belongs to.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The span it names (the sender's span, for the context a message carries).
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// Whether the trace is recorded (the W3C `sampled` flag).
    pub fn is_sampled(&self) -> bool {
        self.sampled
    }

    /// The context in a `traceparent` header value, or `None` for anything but version `00`
    /// in its exact shape: 55 characters, lowercase hex, neither id all zeros. Flags other
    /// than `sampled` are dropped, as W3C asks of a version-`00` reader.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let bytes = header.as_bytes();
        if bytes.len() != TRACEPARENT_LEN
            || &bytes[..3] != b"00-"
            || bytes[35] != b'-'
            || bytes[52] != b'-'
        {
            return None;
        }
        let mut trace_id = [0; 16];
        hex_into(&bytes[3..35], &mut trace_id)?;
        let mut span_id = [0; 8];
        hex_into(&bytes[36..52], &mut span_id)?;
        let mut flags = [0; 1];
        hex_into(&bytes[53..55], &mut flags)?;
        Some(TraceContext::new(
            TraceId::from_bytes(trace_id)?,
            SpanId::from_bytes(span_id)?,
            flags[0] & SAMPLED != 0,
        ))
    }

    /// The context in a fixed-size binary form, for the wire between hosts: trace id, span
    /// id, flags.
    pub fn to_bytes(&self) -> [u8; TRACE_CONTEXT_BYTES] {
        let mut out = [0; TRACE_CONTEXT_BYTES];
        out[..16].copy_from_slice(&self.trace_id.0);
        out[16..24].copy_from_slice(&self.span_id.0);
        out[24] = if self.sampled { SAMPLED } else { 0 };
        out
    }

    /// The context [`to_bytes`](Self::to_bytes) wrote, or `None` for bytes it cannot have
    /// written (an id of zeros, flags other than `sampled`).
    pub fn from_bytes(bytes: &[u8; TRACE_CONTEXT_BYTES]) -> Option<TraceContext> {
        let trace_id = TraceId::from_bytes(bytes[..16].try_into().ok()?)?;
        let span_id = SpanId::from_bytes(bytes[16..24].try_into().ok()?)?;
        let sampled = match bytes[24] {
            0 => false,
            SAMPLED => true,
            _ => return None,
        };
        Some(TraceContext::new(trace_id, span_id, sampled))
    }
}

/// The `traceparent` header value of the context.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = if self.sampled { SAMPLED } else { 0 };
        write!(f, "00-{}-{}-{flags:02x}", self.trace_id, self.span_id)
    }
}

/// Lowercase hex `text` into `out` (two characters a byte), or `None` for anything else.
fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

/// A random, non-zero u64 from a per-thread generator (SplitMix64), seeded from the
/// standard library's random hash keys: ids need to be unlikely to collide, not secret, and
/// this costs no lock and no system call per id.
fn random_nonzero() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(std::process::id().into());
            hasher.finish()
        });
    }
    STATE.with(|state| {
        loop {
            let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            state.set(next);
            let mut z = next;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            if z != 0 {
                return z;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_survives_the_trip_and_keeps_only_the_sampled_flag() {
        let context = TraceContext::parse(VALID).expect("valid");
        assert_eq!(context.to_string(), VALID);
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        let unsampled = TraceContext::parse(&VALID.replace("-01", "-00")).unwrap();
        assert!(!unsampled.is_sampled());
        // Unknown flags are dropped, not refused: W3C asks a version-00 reader to ignore them.
        let other_flags = TraceContext::parse(&VALID.replace("-01", "-ff")).unwrap();
        assert!(other_flags.is_sampled());
        assert_eq!(other_flags.to_string(), VALID);
    }

    #[test]
    fn a_traceparent_of_any_other_shape_is_refused() {
        let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zero_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        for bad in [
            "",
            "garbage",
            zero_trace,
            zero_span,
            &VALID.to_uppercase(),
            &VALID.replace("00-4b", "01-4b"),
            &VALID.replace("00-4b", "ff-4b"),
            &VALID[..54],
            &format!("{VALID}-"),
            &format!("{VALID}0"),
            &format!(" {}", &VALID[1..]),
            &VALID.replace('-', "_"),
            &VALID.replace("4bf9", "4bg9"),
            &VALID.replace("00f0", "+0f0"),
            &VALID.replace("-01", "-1 "),
            "00-4bf92f3577b34da6a3ce929d0e0e47-3600f067aa0ba902b7-01",
            // Multi-byte characters that make up the right length in bytes.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902é-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_binary_form_survives_the_trip_and_refuses_what_it_cannot_have_written() {
        let context = TraceContext::parse(VALID).unwrap();
        let bytes = context.to_bytes();
        assert_eq!(TraceContext::from_bytes(&bytes), Some(context));
        let mut zero_trace = bytes;
        zero_trace[..16].fill(0);
        assert_eq!(TraceContext::from_bytes(&zero_trace), None);
        let mut zero_span = bytes;
        zero_span[16..24].fill(0);
        assert_eq!(TraceContext::from_bytes(&zero_span), None);
        let mut flags = bytes;
        flags[24] = 2;
        assert_eq!(TraceContext::from_bytes(&flags), None);
    }

    #[test]
    fn new_ids_are_never_zero_and_do_not_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let root = TraceContext::root(true);
            assert!(seen.insert(root.span_id()));
            assert!(TraceContext::parse(&root.to_string()).is_some());
        }
    }
}
