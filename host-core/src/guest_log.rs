//! What a guest writes to the host's log (its `log` calls and its stdout and stderr lines),
//! held to a rate and a shape it cannot get around.
//!
//! A guest that logs in a loop could otherwise write hundreds of megabytes a second to the
//! host's log, and one that writes a newline followed by text shaped like a log line could
//! pass that text off as another component's. So every line is cut to 8 KiB,
//! control characters and newlines are written escaped (`\n`, `\u{1b}`), and each instance
//! may write [`LINES_PER_SECOND`] lines a second, in bursts of up to [`BURST`]: past that,
//! lines are dropped and counted, and a line saying how many were dropped comes before the
//! next one that is written.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::trace::TraceId;
use crate::{ComponentId, LogLevel};

/// The longest line of guest output the host logs; longer ones are cut, with their length.
pub(crate) const LINE_LIMIT: usize = 8 * 1024;
/// Lines a second one instance may write to the host's log, averaged.
pub const LINES_PER_SECOND: u32 = 100;
/// Lines one instance may write at once before the rate applies.
pub const BURST: u32 = 200;

/// A budget of log lines: [`LINES_PER_SECOND`] a second on average, [`BURST`] at once. The
/// host holds the log lines a guest's doing causes (its own output, its handler errors, its
/// denied sends) to one of these per component.
///
/// ```
/// use courier_host_core::guest_log::{BURST, LineBudget};
///
/// let budget = LineBudget::default();
/// for _ in 0..BURST {
///     assert!(budget.admit().is_some());
/// }
/// assert_eq!(budget.admit(), None, "past the burst, lines are dropped");
/// ```
#[derive(Clone)]
pub struct LineBudget {
    bucket: Arc<Mutex<Bucket>>,
}

/// A token bucket of lines.
struct Bucket {
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
}

impl Default for LineBudget {
    fn default() -> Self {
        LineBudget {
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: f64::from(BURST),
                refilled: Instant::now(),
                suppressed: 0,
            })),
        }
    }
}

impl LineBudget {
    /// Whether one more line may be written now: `Some(n)` if so, where `n` lines were
    /// dropped since the last one written (say so first), `None` if this one is dropped.
    pub fn admit(&self) -> Option<u64> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens =
            (bucket.tokens + elapsed * f64::from(LINES_PER_SECOND)).min(f64::from(BURST));
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            bucket.suppressed += 1;
            return None;
        }
        bucket.tokens -= 1.0;
        Some(std::mem::take(&mut bucket.suppressed))
    }
}

/// Where one instance's lines go, shared by its `log` import and its stdout and stderr.
#[derive(Clone)]
pub(crate) struct GuestLog {
    id: ComponentId,
    budget: LineBudget,
    /// The trace of the message being handled, written into each line. Set only when a
    /// call is traced or follows one that was, so an untraced host never touches it.
    trace: Arc<Mutex<Option<TraceId>>>,
}

impl GuestLog {
    pub(crate) fn new(id: ComponentId) -> GuestLog {
        GuestLog {
            id,
            budget: LineBudget::default(),
            trace: Arc::default(),
        }
    }

    /// Write `trace` into the lines from now on.
    pub(crate) fn set_trace(&self, trace: Option<TraceId>) {
        *self.trace.lock().unwrap_or_else(|e| e.into_inner()) = trace;
    }

    /// Log one line at `level`, from `stream` (`stdout`, `stderr`) or from the `log` import.
    pub(crate) fn line(&self, level: LogLevel, stream: Option<&'static str>, text: &str) {
        let Some(suppressed) = self.budget.admit() else {
            return;
        };
        let component = &*self.id;
        if suppressed > 0 {
            tracing::warn!(
                component,
                suppressed,
                "dropped {suppressed} lines of this component's log: more than {LINES_PER_SECOND} a second"
            );
        }
        let text = crate::text::bounded(text, LINE_LIMIT);
        let text = escape(&text);
        let stream = stream.unwrap_or("log");
        let trace = *self.trace.lock().unwrap_or_else(|e| e.into_inner());
        match trace {
            Some(trace_id) => match level {
                LogLevel::Trace => tracing::trace!(component, stream, %trace_id, "{text}"),
                LogLevel::Debug => tracing::debug!(component, stream, %trace_id, "{text}"),
                LogLevel::Info => tracing::info!(component, stream, %trace_id, "{text}"),
                LogLevel::Warn => tracing::warn!(component, stream, %trace_id, "{text}"),
                LogLevel::Error => tracing::error!(component, stream, %trace_id, "{text}"),
            },
            None => match level {
                LogLevel::Trace => tracing::trace!(component, stream, "{text}"),
                LogLevel::Debug => tracing::debug!(component, stream, "{text}"),
                LogLevel::Info => tracing::info!(component, stream, "{text}"),
                LogLevel::Warn => tracing::warn!(component, stream, "{text}"),
                LogLevel::Error => tracing::error!(component, stream, "{text}"),
            },
        }
    }
}

/// `text` with its control characters (newlines, carriage returns, terminal escapes)
/// written as escapes, so one call is one line of the host's log.
///
/// ```
/// use courier_host_core::guest_log::escape;
///
/// assert_eq!(escape("one\ntwo"), "one\\ntwo");
/// ```
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_characters_are_written_as_escapes() {
        assert_eq!(escape("plain text"), "plain text");
        assert_eq!(
            escape("forged\n2026 INFO other: hi\u{1b}[31m"),
            "forged\\n2026 INFO other: hi\\u{1b}[31m"
        );
    }
}
