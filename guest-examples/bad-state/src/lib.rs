//! A component whose `load-state` traps: any state handed to it on a live upgrade makes it
//! panic, so tests can see that such a version is refused and the running one stays.

use courier_sdk::prelude::*;
use courier_sdk::serde::{Deserialize, Deserializer, Serialize};

/// Counts messages, like `counter`, but cannot be restored.
#[derive(Default, Serialize)]
#[serde(crate = "courier_sdk::serde")]
struct BadState {
    seen: u64,
}

impl<'de> Deserialize<'de> for BadState {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("bad-state traps in load-state on purpose");
    }
}

#[handler]
impl BadState {
    fn handle_message(&mut self, _msg: Message) -> Result<(), HandlerError> {
        self.seen += 1;
        Ok(())
    }

    fn handle_request(&mut self, _req: Message) -> Result<Vec<u8>, HandlerError> {
        Ok(self.seen.to_le_bytes().to_vec())
    }
}
