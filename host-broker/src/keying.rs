//! What a keyed component's keys may be and how they come and go: plain values and checks
//! that a spec holds and the broker's keyed components read.

use std::time::Duration;

/// The longest key, in bytes. With the component id and the `/`, a key's id stays within
/// [`MAX_NAME_BYTES`](crate::MAX_NAME_BYTES); 128 holds a UUID, a hash in hex or a composite
/// key with room to spare.
pub const MAX_KEY_BYTES: usize = 128;

/// How long a key may go without a message before it is put away, by default: five minutes.
///
/// Orleans keeps a grain 15 minutes, Dapr an actor 60, Akka's sharding 2. A Courier instance
/// is cheap to make again (microseconds from the pooled, pre-instantiated component) but holds
/// a pool slot and its linear memory while active, so a shorter window than Orleans' or Dapr's
/// costs little and frees slots sooner; five minutes still covers the think time of a person
/// between two clicks, the case a keyed cart or session is for, which Akka's two cut short.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(5 * 60);

/// How many keys of one component may be active at once, by default. Each holds an instance
/// (a pool slot and its memory); the engine's pool is the hard bound, this the soft one that
/// puts the least recently used away first.
pub const DEFAULT_MAX_ACTIVE: usize = 10_000;

/// The shortest idle timeout [`Broker::spawn_keyed`](crate::Broker::spawn_keyed) accepts: shorter would make the sweep
/// that looks for idle keys run more often than it is worth.
pub const MIN_IDLE: Duration = Duration::from_millis(10);

/// How a keyed component's instances come and go ([`ComponentSpec::keyed`](crate::ComponentSpec::keyed)).
///
/// ```
/// use std::time::Duration;
/// use courier_host_broker::Keying;
///
/// let keying = Keying::default().idle(Duration::from_secs(60)).max_active(1_000);
/// assert_eq!(keying.get_max_active(), Some(1_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keying {
    idle: Duration,
    max_active: Option<usize>,
}

impl Default for Keying {
    fn default() -> Self {
        Keying {
            idle: DEFAULT_IDLE,
            max_active: None,
        }
    }
}

impl Keying {
    /// Put a key away once it has had no message for `idle` ([`DEFAULT_IDLE`] by default; at
    /// least [`MIN_IDLE`]).
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// Keep at most `max_active` keys active (at least 1, at most the engine's pool of
    /// instances, since each active key holds one): beyond it the least recently used are
    /// put away first. By default [`DEFAULT_MAX_ACTIVE`] or seven eighths of the pool,
    /// whichever is smaller, which leaves slots for keys being put away and other
    /// components.
    pub fn max_active(mut self, max_active: usize) -> Self {
        self.max_active = Some(max_active);
        self
    }

    /// The idle timeout.
    pub fn get_idle(&self) -> Duration {
        self.idle
    }

    /// The most keys active at once, if it was set.
    pub fn get_max_active(&self) -> Option<usize> {
        self.max_active
    }
}

/// Why a key is refused, if it is: empty, longer than [`MAX_KEY_BYTES`], or holding a
/// character other than an ASCII letter, a digit, `-`, `_` or `.` (a key is one segment of
/// an id, and these are the characters ids and URLs carry without escaping).
pub fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("it is empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return Err("it is longer than 128 bytes");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("only letters, digits, `-`, `_` and `.` are allowed");
    }
    Ok(())
}
