//! A component that schedules, cancels and records timers on command, for the host's timer
//! tests. A command is UTF-8 text, sent as a message or a request (a request's reply says
//! what came of it):
//!
//! - `after:NAME:MS:PAYLOAD`, `every:NAME:MS:PAYLOAD`: a timer firing once after `MS`
//!   milliseconds, or every `MS` milliseconds; `at:NAME:EPOCH_MS:PAYLOAD` at a wall-clock
//!   time. Replies `ok`, or the SDK's `TimerError` as `{:?}` (`LimitReached(64)`).
//! - `big:NAME:BYTES`: a one-shot timer in an hour whose payload is `BYTES` zeros, to reach
//!   the payload limit without sending as much.
//! - `many:PREFIX:COUNT:MS`: `COUNT` one-shot timers `PREFIX0`, `PREFIX1`... after `MS`
//!   milliseconds, with empty payloads, for the benchmarks. Replies `ok` or the first error.
//! - `cancel:NAME`: replies `true` or `false`.
//! - `busy:MS`: runs for `MS` milliseconds without returning, so that ticks come due.
//! - `fired`: replies one line per timer message handled so far, `NAME PAYLOAD MISSED
//!   ELAPSED_NS`, where `ELAPSED_NS` is the time from the timer's scheduling to its message
//!   on the monotonic clock. A message with an empty payload is not recorded, so that a
//!   benchmark's hundred thousand firings cost no memory.
//!
//! A timer message whose payload is `panic` panics its handler, to see a trap on a timer's
//! message dealt with like any other.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use courier_sdk::prelude::*;

#[derive(Default)]
struct Timekeeper {
    /// When each timer was last scheduled.
    scheduled: HashMap<String, Instant>,
    /// One line per timer message handled.
    fired: String,
}

#[handler]
impl Timekeeper {
    fn handle_message(&mut self, msg: Message) -> Result<(), HandlerError> {
        if let Some(name) = msg.timer() {
            let elapsed = self
                .scheduled
                .get(name)
                .map_or(0, |at| at.elapsed().as_nanos());
            let payload = msg.text()?;
            if payload.is_empty() {
                return Ok(());
            }
            if payload == "panic" {
                panic!("the timer {name} asked for a panic");
            }
            let missed = courier_sdk::missed_ticks();
            let _ = writeln!(self.fired, "{name} {payload} {missed} {elapsed}");
            return Ok(());
        }
        self.run(msg.text()?).map(|_| ())
    }

    fn handle_request(&mut self, req: Message) -> Result<Vec<u8>, HandlerError> {
        self.run(req.text()?).map(String::into_bytes)
    }
}

impl Timekeeper {
    fn run(&mut self, command: &str) -> Result<String, HandlerError> {
        let mut parts = command.splitn(4, ':');
        let verb = parts.next().unwrap_or_default();
        let mut arg = || {
            parts
                .next()
                .ok_or_else(|| HandlerError::invalid(format!("`{command}` lacks an argument")))
        };
        let reply = match verb {
            "after" | "every" | "at" => {
                let name = arg()?.to_string();
                let number: u64 = arg()?
                    .parse()
                    .map_err(|e| HandlerError::invalid(format!("not a number: {e}")))?;
                let payload = arg()?.to_string();
                let scheduled = Instant::now();
                let millis = Duration::from_millis(number);
                let result = match verb {
                    "after" => courier_sdk::send_after(&name, millis, &payload),
                    "every" => courier_sdk::send_every(&name, millis, &payload),
                    _ => courier_sdk::send_at(&name, UNIX_EPOCH + millis, None, &payload),
                };
                match result {
                    Ok(()) => {
                        self.scheduled.insert(name, scheduled);
                        "ok".to_string()
                    }
                    Err(err) => format!("{err:?}"),
                }
            }
            "big" => {
                let name = arg()?.to_string();
                let bytes: usize = arg()?
                    .parse()
                    .map_err(|e| HandlerError::invalid(format!("not a number: {e}")))?;
                let payload = vec![0; bytes];
                match courier_sdk::send_after(&name, Duration::from_secs(3600), payload) {
                    Ok(()) => "ok".to_string(),
                    Err(err) => format!("{err:?}"),
                }
            }
            "many" => {
                let prefix = arg()?.to_string();
                let count: u64 = arg()?
                    .parse()
                    .map_err(|e| HandlerError::invalid(format!("not a number: {e}")))?;
                let millis: u64 = arg()?
                    .parse()
                    .map_err(|e| HandlerError::invalid(format!("not a number: {e}")))?;
                let delay = Duration::from_millis(millis);
                let mut name = String::new();
                let mut reply = "ok".to_string();
                for i in 0..count {
                    name.clear();
                    let _ = write!(name, "{prefix}{i}");
                    if let Err(err) = courier_sdk::send_after(&name, delay, b"") {
                        reply = format!("{err:?}");
                        break;
                    }
                }
                reply
            }
            "cancel" => courier_sdk::cancel_timer(arg()?).to_string(),
            "busy" => {
                let millis: u64 = arg()?
                    .parse()
                    .map_err(|e| HandlerError::invalid(format!("not a number: {e}")))?;
                let until = Instant::now() + Duration::from_millis(millis);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                "ok".to_string()
            }
            "fired" => self.fired.clone(),
            "now" => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
                .to_string(),
            _ => {
                return Err(HandlerError::invalid(format!(
                    "unknown command `{command}`"
                )));
            }
        };
        Ok(reply)
    }
}
