//! Supervision: what happens to a component whose instance traps.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// When a trapped or exited instance is replaced, in the manner of Erlang/OTP.
///
/// A Courier instance ends either by trapping (deadline, memory cap, panic...) or by calling
/// WASI `exit`; `exit(0)` is a normal end, anything else abnormal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Always replaced, even after a normal exit.
    #[default]
    Permanent,
    /// Replaced after an abnormal end only; a normal exit stops the component.
    Transient,
    /// Never replaced: the first end stops the component.
    Temporary,
}

impl RestartPolicy {
    /// Whether an instance that ended this way is replaced.
    pub fn restarts_after(self, normal_exit: bool) -> bool {
        match self {
            RestartPolicy::Permanent => true,
            RestartPolicy::Transient => !normal_exit,
            RestartPolicy::Temporary => false,
        }
    }
}

/// A component's supervision: its policy, its restart intensity and its backoff.
///
/// ```
/// use std::time::Duration;
/// use courier_host_broker::{RestartPolicy, Supervision};
///
/// // At most 3 restarts in 10 seconds, then the component is marked failed.
/// let supervision = Supervision::new(RestartPolicy::Transient)
///     .intensity(3, Duration::from_secs(10))
///     .backoff(Duration::from_millis(10), Duration::from_secs(1));
/// assert_eq!(supervision.get_max_restarts(), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supervision {
    /// When to replace an instance.
    pub(crate) policy: RestartPolicy,
    /// Most restarts allowed within `window`; one more and the component is failed.
    pub(crate) max_restarts: u32,
    /// The sliding window of `max_restarts`.
    pub(crate) window: Duration,
    /// Wait before the first restart in a window; doubles with each further one.
    pub(crate) backoff_min: Duration,
    /// Longest wait between restarts.
    pub(crate) backoff_max: Duration,
    /// How often the state is saved, if a restart is to start from it.
    pub(crate) checkpoint: Option<Duration>,
}

impl Default for Supervision {
    /// Permanent, at most 5 restarts in 10 seconds (OTP's default is 1 in 5; components
    /// here run other people's code and a few faults should not end them), with a backoff of
    /// 1 ms doubling to 1 s.
    fn default() -> Self {
        Supervision {
            policy: RestartPolicy::Permanent,
            max_restarts: 5,
            window: Duration::from_secs(10),
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_secs(1),
            checkpoint: None,
        }
    }
}

impl Supervision {
    /// The default supervision with another policy.
    pub fn new(policy: RestartPolicy) -> Self {
        Supervision {
            policy,
            ..Supervision::default()
        }
    }

    /// At most `max_restarts` within `window`.
    pub fn intensity(mut self, max_restarts: u32, window: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.window = window;
        self
    }

    /// Wait `min` before a restart, doubling up to `max` for restarts close together.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Let a restart after a trap start from the component's last saved state instead of a
    /// fresh one. After a message or request is handled, the actor saves the instance's
    /// state (its `save-state`, world `stateful-actor`) if the last save is `every` old or
    /// older (`Duration::ZERO`: after every one); a replacement instance loads the last
    /// state saved. "Last" is therefore the state after the most recent handled message at
    /// the time of a save: whatever messages changed since then is lost with the trapped
    /// instance, and the message that trapped is dead-lettered as always. A component
    /// that does not export `state` restarts fresh. Saving costs a call and a copy of the
    /// state each time, so a large state wants a longer period.
    ///
    /// ```
    /// use std::time::Duration;
    /// use courier_host_broker::Supervision;
    ///
    /// let supervision = Supervision::default().checkpoint(Duration::from_secs(1));
    /// assert_eq!(supervision.get_checkpoint(), Some(Duration::from_secs(1)));
    /// ```
    pub fn checkpoint(mut self, every: Duration) -> Self {
        self.checkpoint = Some(every);
        self
    }

    /// How often the state is saved for restarts, if it is.
    pub fn get_checkpoint(&self) -> Option<Duration> {
        self.checkpoint
    }

    /// When an instance is replaced.
    pub fn get_policy(&self) -> RestartPolicy {
        self.policy
    }

    /// Most restarts allowed within [`get_window`](Self::get_window).
    pub fn get_max_restarts(&self) -> u32 {
        self.max_restarts
    }

    /// The sliding window of the restart intensity.
    pub fn get_window(&self) -> Duration {
        self.window
    }

    /// The shortest and the longest wait before a restart.
    pub fn get_backoff(&self) -> (Duration, Duration) {
        (self.backoff_min, self.backoff_max)
    }
}

/// The restart history of one component.
#[derive(Debug)]
pub(crate) struct RestartHistory {
    recent: VecDeque<Instant>,
}

/// What to do after an instance ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Replace it after this wait.
    Restart(Duration),
    /// Stop the component: the policy does not restart after such an end.
    Stop,
    /// Fail the component: it restarted too often.
    Fail(String),
}

impl RestartHistory {
    pub(crate) fn new() -> Self {
        RestartHistory {
            recent: VecDeque::new(),
        }
    }

    pub(crate) fn decide(
        &mut self,
        supervision: &Supervision,
        normal_exit: bool,
        now: Instant,
    ) -> Verdict {
        if !supervision.policy.restarts_after(normal_exit) {
            return Verdict::Stop;
        }
        while let Some(&oldest) = self.recent.front() {
            if now.duration_since(oldest) > supervision.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= supervision.max_restarts as usize {
            return Verdict::Fail(format!(
                "restart intensity exceeded: {} restarts within {:?}",
                self.recent.len(),
                supervision.window
            ));
        }
        self.recent.push_back(now);
        let doublings = (self.recent.len() - 1).min(30) as u32;
        let backoff = supervision
            .backoff_min
            .saturating_mul(1 << doublings)
            .min(supervision.backoff_max);
        Verdict::Restart(backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_follow_otp() {
        assert!(RestartPolicy::Permanent.restarts_after(true));
        assert!(RestartPolicy::Permanent.restarts_after(false));
        assert!(!RestartPolicy::Transient.restarts_after(true));
        assert!(RestartPolicy::Transient.restarts_after(false));
        assert!(!RestartPolicy::Temporary.restarts_after(false));
    }

    #[test]
    fn intensity_fails_the_component_and_backoff_doubles() {
        let supervision = Supervision::default()
            .intensity(3, Duration::from_secs(10))
            .backoff(Duration::from_millis(10), Duration::from_millis(25));
        let mut history = RestartHistory::new();
        let t0 = Instant::now();
        assert_eq!(
            history.decide(&supervision, false, t0),
            Verdict::Restart(Duration::from_millis(10))
        );
        assert_eq!(
            history.decide(&supervision, false, t0),
            Verdict::Restart(Duration::from_millis(20))
        );
        assert_eq!(
            history.decide(&supervision, false, t0),
            Verdict::Restart(Duration::from_millis(25))
        );
        assert!(matches!(
            history.decide(&supervision, false, t0),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn restarts_outside_the_window_are_forgotten() {
        let supervision = Supervision::default().intensity(1, Duration::from_secs(1));
        let mut history = RestartHistory::new();
        let t0 = Instant::now();
        assert!(matches!(
            history.decide(&supervision, false, t0),
            Verdict::Restart(_)
        ));
        let later = t0 + Duration::from_secs(2);
        assert!(matches!(
            history.decide(&supervision, false, later),
            Verdict::Restart(_)
        ));
        assert!(matches!(
            history.decide(&supervision, false, later),
            Verdict::Fail(_)
        ));
    }
}
