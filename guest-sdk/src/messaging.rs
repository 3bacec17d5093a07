//! Reaching other components and the host: the `messaging` and `host-services` imports.
//!
//! Each function here calls the host. Outside a Courier host (a native unit test, say) there
//! is no host to call, so they panic saying so.

use std::time::Duration;

use crate::MessagingError;

use crate::__private::bindings::courier::actor::{host_services, messaging};

/// Queues `payload` for `target`'s message handler and returns without waiting for it.
///
/// Fails at once, with nothing queued, if `target` is not running
/// ([`MessagingError::TargetNotFound`]), this component may not reach it
/// ([`MessagingError::AccessDenied`]), its mailbox is full ([`MessagingError::MailboxFull`])
/// or the payload is too large ([`MessagingError::PayloadTooLarge`]). Messages from one
/// sender to one target arrive in the order they were sent.
pub fn send(target: &str, payload: impl AsRef<[u8]>) -> Result<(), MessagingError> {
    host_call("send", || messaging::send_message(target, payload.as_ref()))
        .map_err(MessagingError::from)
}

/// Calls `target`'s request handler with `payload` and waits, at most `timeout`, for its
/// reply.
///
/// Fails as [`send`] does, or with [`MessagingError::Timeout`],
/// [`MessagingError::HandlerFailed`] (the target's handler returned an error) or
/// [`MessagingError::TargetCrashed`]. The timeout is rounded up to whole milliseconds and cut
/// to `u32::MAX` of them (about 49 days); the host may cut it further to what this handler's
/// own deadline leaves.
pub fn request(
    target: &str,
    payload: impl AsRef<[u8]>,
    timeout: Duration,
) -> Result<Vec<u8>, MessagingError> {
    let timeout_ms = timeout_millis(timeout);
    host_call("request", || {
        messaging::send_request(target, payload.as_ref(), timeout_ms)
    })
    .map_err(MessagingError::from)
}

/// `timeout` in whole milliseconds for the WIT call: rounded up, so a sub-millisecond timeout
/// does not become "no time at all", and cut to `u32::MAX`.
fn timeout_millis(timeout: Duration) -> u32 {
    let millis = timeout.as_nanos().div_ceil(1_000_000);
    u32::try_from(millis).unwrap_or(u32::MAX)
}

/// Delivers `payload` to every component subscribed to `topic`; returns how many it reached.
pub fn publish(topic: &str, payload: impl AsRef<[u8]>) -> Result<u32, MessagingError> {
    host_call("publish", || messaging::publish(topic, payload.as_ref()))
        .map_err(MessagingError::from)
}

/// The id the host gave this instance, such as `pong` or `orders/billing`: what receivers
/// see as the sender of its messages.
pub fn self_id() -> String {
    host_call("self_id", messaging::self_id)
}

/// Wall-clock time in milliseconds since the Unix epoch, read by the host. Messages carry no
/// timestamp; a handler that needs one asks here.
pub fn now_millis() -> u64 {
    host_call("now_millis", host_services::current_time_millis)
}

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing, usually off.
    Trace,
    /// Detail for debugging.
    Debug,
    /// Normal operation worth recording.
    Info,
    /// Something unexpected that the component survived.
    Warn,
    /// Something failed.
    Error,
}

/// Writes `message` to the host's log at `level`, under this component's id. The macros
/// [`trace!`](crate::trace), [`debug!`](crate::debug), [`info!`](crate::info),
/// [`warn!`](crate::warn) and [`error!`](crate::error) format their arguments and call this.
pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => host_services::LogLevel::Trace,
        Level::Debug => host_services::LogLevel::Debug,
        Level::Info => host_services::LogLevel::Info,
        Level::Warn => host_services::LogLevel::Warn,
        Level::Error => host_services::LogLevel::Error,
    };
    host_call("log", || host_services::log(level, message))
}

/// Logs formatted arguments without allocating when they are a plain string literal.
#[doc(hidden)]
pub fn log_args(level: Level, args: std::fmt::Arguments<'_>) {
    match args.as_str() {
        Some(message) => log(level, message),
        None => log(level, &args.to_string()),
    }
}

/// Runs a call into the host.
#[cfg(target_arch = "wasm32")]
#[inline(always)]
fn host_call<T>(_name: &str, call: impl FnOnce() -> T) -> T {
    call()
}

/// Outside wasm there is no host: say so instead of wit-bindgen's bare `unreachable`.
#[cfg(not(target_arch = "wasm32"))]
fn host_call<T>(name: &str, _call: impl FnOnce() -> T) -> T {
    panic!(
        "courier_sdk::{name} calls the Courier host, which only exists inside a component \
         built for wasm32-wasip2; it cannot run in a native build"
    )
}

/// Logs at [`Level::Trace`](crate::Level::Trace), with `format!` arguments.
///
/// ```no_run
/// courier_sdk::trace!("entering state {}", 3);
/// ```
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => {
        $crate::__private::log_args($crate::Level::Trace, ::std::format_args!($($arg)+))
    };
}

/// Logs at [`Level::Debug`](crate::Level::Debug), with `format!` arguments.
///
/// ```no_run
/// let payload = [1, 2, 3];
/// courier_sdk::debug!("payload of {} bytes", payload.len());
/// ```
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => {
        $crate::__private::log_args($crate::Level::Debug, ::std::format_args!($($arg)+))
    };
}

/// Logs at [`Level::Info`](crate::Level::Info), with `format!` arguments.
///
/// ```no_run
/// let sender = "ping";
/// courier_sdk::info!("hello from {sender}");
/// ```
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => {
        $crate::__private::log_args($crate::Level::Info, ::std::format_args!($($arg)+))
    };
}

/// Logs at [`Level::Warn`](crate::Level::Warn), with `format!` arguments.
///
/// ```no_run
/// courier_sdk::warn!("retrying after {} ms", 10);
/// ```
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => {
        $crate::__private::log_args($crate::Level::Warn, ::std::format_args!($($arg)+))
    };
}

/// Logs at [`Level::Error`](crate::Level::Error), with `format!` arguments.
///
/// ```no_run
/// let err = courier_sdk::MessagingError::Timeout;
/// courier_sdk::error!("could not reach pong: {err}");
/// ```
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => {
        $crate::__private::log_args($crate::Level::Error, ::std::format_args!($($arg)+))
    };
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    #[test]
    #[should_panic(expected = "courier_sdk::send calls the Courier host, which only exists")]
    fn outside_a_host_a_messaging_call_says_why_it_cannot_run() {
        let _ = crate::send("pong", b"ping");
    }

    #[test]
    fn timeouts_are_rounded_up_to_whole_milliseconds_and_cut_to_the_wit_range() {
        use std::time::Duration;
        assert_eq!(super::timeout_millis(Duration::ZERO), 0);
        assert_eq!(super::timeout_millis(Duration::from_micros(1)), 1);
        assert_eq!(super::timeout_millis(Duration::from_millis(250)), 250);
        assert_eq!(super::timeout_millis(Duration::MAX), u32::MAX);
    }
}
