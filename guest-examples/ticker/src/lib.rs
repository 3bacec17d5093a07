//! A component that keeps time: its first message starts a periodic timer of one second,
//! and a request answers how many ticks have come due since, as a little-endian `u64` (as
//! `counter` answers its count). A tick that came due while it was busy is counted too: the
//! message that stands for it says how many it missed.

use std::time::Duration;

use courier_sdk::prelude::*;

/// The timer's name: its messages come from `timer:tick`.
const TICK: &str = "tick";

/// How often it ticks.
const PERIOD: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Ticker {
    started: bool,
    ticks: u64,
}

#[handler]
impl Ticker {
    fn handle_message(&mut self, msg: Message) -> Result<(), HandlerError> {
        if msg.timer() == Some(TICK) {
            self.ticks += 1 + courier_sdk::missed_ticks();
        } else if !self.started {
            courier_sdk::send_every(TICK, PERIOD, b"")?;
            self.started = true;
        }
        Ok(())
    }

    /// Replies with the ticks so far as a little-endian `u64`.
    fn handle_request(&mut self, _req: Message) -> Result<Vec<u8>, HandlerError> {
        Ok(self.ticks.to_le_bytes().to_vec())
    }
}
