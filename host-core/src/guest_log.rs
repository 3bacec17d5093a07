//! What a guest writes to the host's log (its `log` calls and its stdout and stderr lines),
//! held to a rate and a shape it cannot get around.
//!
//! A guest that logs in a loop could otherwise write hundreds of megabytes a second to the
//! host's log, and one that writes a newline followed by text shaped like a log line could
//! pass that text off as another component's. So every line is cut to [`LINE_LIMIT`] bytes,
//! control characters and newlines are written escaped (`\n`, `\u{1b}`), and each instance
//! may write [`LINES_PER_SECOND`] lines a second, in bursts of up to [`BURST`]: past that,
//! lines are dropped and counted, and a line saying how many were dropped comes before the
//! next one that is written.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::{ComponentId, LogLevel};

/// The longest line of guest output the host logs; longer ones are cut, with their length.
pub(crate) const LINE_LIMIT: usize = 8 * 1024;
/// Lines a second one instance may write to the host's log, averaged.
pub const LINES_PER_SECOND: u32 = 100;
/// Lines one instance may write at once before the rate applies.
pub const BURST: u32 = 200;

/// Where one instance's lines go, shared by its `log` import and its stdout and stderr.
#[derive(Clone)]
pub(crate) struct GuestLog {
    id: ComponentId,
    budget: Arc<Mutex<Budget>>,
}

/// A token bucket of lines.
struct Budget {
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
}

impl GuestLog {
    pub(crate) fn new(id: ComponentId) -> GuestLog {
        GuestLog {
            id,
            budget: Arc::new(Mutex::new(Budget {
                tokens: f64::from(BURST),
                refilled: Instant::now(),
                suppressed: 0,
            })),
        }
    }

    /// Log one line at `level`, from `stream` (`stdout`, `stderr`) or from the `log` import.
    pub(crate) fn line(&self, level: LogLevel, stream: Option<&'static str>, text: &str) {
        let suppressed = {
            let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let elapsed = now.duration_since(budget.refilled).as_secs_f64();
            budget.tokens =
                (budget.tokens + elapsed * f64::from(LINES_PER_SECOND)).min(f64::from(BURST));
            budget.refilled = now;
            if budget.tokens < 1.0 {
                budget.suppressed += 1;
                return;
            }
            budget.tokens -= 1.0;
            std::mem::take(&mut budget.suppressed)
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
        match level {
            LogLevel::Trace => tracing::trace!(component, stream, "{text}"),
            LogLevel::Debug => tracing::debug!(component, stream, "{text}"),
            LogLevel::Info => tracing::info!(component, stream, "{text}"),
            LogLevel::Warn => tracing::warn!(component, stream, "{text}"),
            LogLevel::Error => tracing::error!(component, stream, "{text}"),
        }
    }
}

/// `text` with its control characters (newlines, carriage returns, terminal escapes)
/// written as escapes, so one call is one line of the host's log.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
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
