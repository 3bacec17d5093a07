//! Messages a component schedules to itself: the `timers` import.
//!
//! A timer fires as an ordinary message to the component's own message handler, from the
//! sender `timer:<name>` (which no component can take as its id, so it cannot be forged),
//! with the payload given when it was scheduled. [`Message::timer`](crate::Message::timer)
//! tells a timer's message from a component's.
//!
//! The rules, which the host keeps:
//! - a timer never fires before its time; it fires as soon after as the component is free;
//! - scheduling a name that is pending replaces that timer;
//! - a periodic timer has at most one message waiting: ticks that come due while the
//!   component is busy are folded into the next message, and [`missed_ticks`] says how many;
//! - a component has at most 64 timers pending by default (its host may set another limit,
//!   or turn timers off), names are at most 255 bytes, payloads at most the host's largest
//!   message, and a period at least 10 ms; beyond these the call fails with a [`TimerError`];
//! - timers live in the host's memory: they survive a restart of the component's instance
//!   and a live upgrade, and end when the component stops, fails or is removed.
//!
//! Each function here calls the host; outside a Courier host it panics saying so. A
//! component that never calls them does not import `timers` at all.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::__private::bindings::courier::actor::timers::{self as wit, Start};

/// Why the host refused to schedule a timer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimerError {
    /// The component has as many timers pending as it may; the limit.
    LimitReached(u32),
    /// The period is shorter than the host allows; the minimum.
    PeriodTooShort(Duration),
    /// The name is longer than the host accepts; the limit in bytes.
    NameTooLong(u32),
    /// The payload is larger than the host accepts; the limit in bytes.
    PayloadTooLarge(u64),
    /// Timers are turned off for this component.
    Disabled,
}

impl fmt::Display for TimerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimerError::LimitReached(limit) => {
                write!(f, "timer limit reached: at most {limit} may be pending")
            }
            TimerError::PeriodTooShort(min) => {
                write!(f, "period too short: the shortest is {min:?}")
            }
            TimerError::NameTooLong(limit) => {
                write!(f, "timer name too long: at most {limit} bytes")
            }
            TimerError::PayloadTooLarge(limit) => {
                write!(f, "timer payload too large: at most {limit} bytes")
            }
            TimerError::Disabled => f.write_str("timers are turned off for this component"),
        }
    }
}

impl std::error::Error for TimerError {}

impl From<wit::TimerError> for TimerError {
    fn from(err: wit::TimerError) -> Self {
        match err {
            wit::TimerError::LimitReached(limit) => TimerError::LimitReached(limit),
            wit::TimerError::PeriodTooShort(nanos) => {
                TimerError::PeriodTooShort(Duration::from_nanos(nanos))
            }
            wit::TimerError::NameTooLong(limit) => TimerError::NameTooLong(limit),
            wit::TimerError::PayloadTooLarge(limit) => TimerError::PayloadTooLarge(limit),
            wit::TimerError::Disabled => TimerError::Disabled,
        }
    }
}

impl From<TimerError> for crate::HandlerError {
    fn from(err: TimerError) -> Self {
        crate::HandlerError::Internal(err.to_string())
    }
}

/// Sends `payload` to this component once, `delay` from now, from the sender
/// `timer:<name>`. A pending timer named `name` is replaced.
///
/// ```no_run
/// use std::time::Duration;
/// use courier_sdk::prelude::*;
///
/// #[handler]
/// fn on_message(msg: Message) -> Result<(), HandlerError> {
///     match msg.timer() {
///         Some("retry") => courier_sdk::info!("retrying {} bytes", msg.payload().len()),
///         Some(_) => {}
///         // Try again in 30 s, unless a newer message replaces the retry first.
///         None => courier_sdk::send_after("retry", Duration::from_secs(30), msg.payload())?,
///     }
///     Ok(())
/// }
/// # fn main() {}
/// ```
pub fn send_after(
    name: &str,
    delay: Duration,
    payload: impl AsRef<[u8]>,
) -> Result<(), TimerError> {
    schedule(
        name,
        Start::AfterNanos(nanos(delay)),
        None,
        payload.as_ref(),
    )
}

/// Sends `payload` to this component every `period`, first one `period` from now, from the
/// sender `timer:<name>`, until it is cancelled or the component ends. A pending timer named
/// `name` is replaced. The period must be at least 10 ms.
///
/// Ticks that come due while the component is busy are not queued: the next message stands
/// for them, and [`missed_ticks`] in its handler says how many it stands for.
///
/// ```no_run
/// use std::time::Duration;
/// use courier_sdk::prelude::*;
///
/// #[derive(Default)]
/// struct Poller {
///     started: bool,
///     polls: u64,
/// }
///
/// #[handler]
/// impl Poller {
///     fn handle_message(&mut self, msg: Message) -> Result<(), HandlerError> {
///         if msg.timer() == Some("poll") {
///             // A tick late by three periods arrives once, saying it stands for three more.
///             self.polls += 1 + courier_sdk::missed_ticks();
///         } else if !self.started {
///             courier_sdk::send_every("poll", Duration::from_secs(1), b"")?;
///             self.started = true;
///         }
///         Ok(())
///     }
/// }
/// # fn main() {}
/// ```
pub fn send_every(
    name: &str,
    period: Duration,
    payload: impl AsRef<[u8]>,
) -> Result<(), TimerError> {
    let period = nanos(period);
    schedule(
        name,
        Start::AfterNanos(period),
        Some(period),
        payload.as_ref(),
    )
}

/// Sends `payload` to this component at the wall-clock time `at` (at once if it has
/// passed), then every `period` if one is given. The host converts `at` to a delay when it
/// is called: a later jump of the wall clock does not move the timer.
///
/// ```no_run
/// use std::time::{Duration, SystemTime};
///
/// let tomorrow = SystemTime::now() + Duration::from_secs(24 * 3600);
/// courier_sdk::send_at("report", tomorrow, None, b"daily")?;
/// # Ok::<(), courier_sdk::TimerError>(())
/// ```
pub fn send_at(
    name: &str,
    at: SystemTime,
    period: Option<Duration>,
    payload: impl AsRef<[u8]>,
) -> Result<(), TimerError> {
    let millis = at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    });
    schedule(
        name,
        Start::AtMillis(millis),
        period.map(nanos),
        payload.as_ref(),
    )
}

/// Cancels the timer `name`; whether one was pending. After `true` it never fires again,
/// not even a message of it already on its way; after `false` there was nothing to cancel
/// (a one-shot timer whose message this component already handled, or no timer of that
/// name).
///
/// ```no_run
/// if courier_sdk::cancel_timer("retry") {
///     courier_sdk::info!("the retry was not needed");
/// }
/// ```
pub fn cancel_timer(name: &str) -> bool {
    host_call("cancel_timer", || wit::cancel(name))
}

/// In the handler of a periodic timer's message: how many ticks of it came due, after the
/// one being handled, while the component could not take them. 0 in any other handler.
pub fn missed_ticks() -> u64 {
    host_call("missed_ticks", wit::missed_ticks)
}

fn schedule(
    name: &str,
    start: Start,
    period: Option<u64>,
    payload: &[u8],
) -> Result<(), TimerError> {
    host_call("send_after", || wit::schedule(name, start, period, payload)).map_err(Into::into)
}

/// `duration` in nanoseconds, cut to `u64::MAX` of them (about 584 years).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

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

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn durations_are_cut_to_what_the_wit_holds() {
        assert_eq!(nanos(Duration::from_millis(10)), 10_000_000);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
    }

    #[test]
    fn a_timer_error_says_what_the_limit_is() {
        let err = TimerError::from(wit::TimerError::PeriodTooShort(10_000_000));
        assert_eq!(err.to_string(), "period too short: the shortest is 10ms");
        assert_eq!(
            TimerError::LimitReached(64).to_string(),
            "timer limit reached: at most 64 may be pending"
        );
    }
}
