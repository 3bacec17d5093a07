//! The guests' `timers` imports: the [`Timers`] trait, which the broker implements, and what
//! an instance outside a broker answers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::TimerError;
use crate::bindings::courier::actor::timers;
use crate::host::HostState;

/// When a timer first fires, as the guest asked: the WIT `start`, in host types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerStart {
    /// This long from the moment it is scheduled.
    After(Duration),
    /// At this wall-clock time (at once if it has passed).
    At(SystemTime),
}

impl TimerStart {
    /// How long from now the timer is due: the delay itself, or the time from the host's
    /// wall clock now to the time asked for (zero if it has passed).
    pub fn delay(self) -> Duration {
        match self {
            TimerStart::After(delay) => delay,
            TimerStart::At(at) => at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        }
    }
}

/// The scheduling behind a guest's `timers` imports.
///
/// host-core defines it and the broker implements it, one value per component, shared by
/// every instance the component has (restarts and upgrades keep its timers). host-core's own
/// default, [`NoTimers`], refuses every timer with [`TimerError::Disabled`].
pub trait Timers: Send + Sync + 'static {
    /// Schedule the timer `name`, replacing a pending one of that name.
    fn schedule(
        &self,
        name: &str,
        start: TimerStart,
        period: Option<Duration>,
        payload: Vec<u8>,
    ) -> Result<(), TimerError>;

    /// Cancel the timer `name`; whether one was pending.
    fn cancel(&self, name: &str) -> bool;

    /// The ticks the message being handled stands for beyond itself, if a periodic timer
    /// sent it; 0 otherwise.
    fn missed_ticks(&self) -> u64;
}

/// The timers of an instance that runs outside a broker: nothing would deliver them, so
/// every schedule is refused with [`TimerError::Disabled`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTimers;

impl Timers for NoTimers {
    fn schedule(
        &self,
        _: &str,
        _: TimerStart,
        _: Option<Duration>,
        _: Vec<u8>,
    ) -> Result<(), TimerError> {
        Err(TimerError::Disabled)
    }

    fn cancel(&self, _: &str) -> bool {
        false
    }

    fn missed_ticks(&self) -> u64 {
        0
    }
}

impl timers::Host for HostState {
    fn schedule(
        &mut self,
        name: String,
        start: timers::Start,
        period_nanos: Option<u64>,
        payload: Vec<u8>,
    ) -> Result<(), TimerError> {
        let start = match start {
            timers::Start::AfterNanos(nanos) => TimerStart::After(Duration::from_nanos(nanos)),
            timers::Start::AtMillis(millis) => {
                // Past what SystemTime holds is as good as never.
                let at = UNIX_EPOCH
                    .checked_add(Duration::from_millis(millis))
                    .unwrap_or(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) << 8));
                TimerStart::At(at)
            }
        };
        let period = period_nanos.map(Duration::from_nanos);
        self.timers.schedule(&name, start, period, payload)
    }

    fn cancel(&mut self, name: String) -> bool {
        self.timers.cancel(&name)
    }

    fn missed_ticks(&mut self) -> u64 {
        self.timers.missed_ticks()
    }
}
