//! A stateful component: the count lives in the instance's linear memory, so it shows whether
//! the host keeps one instance across calls (the count grows) or replaces it (the count starts
//! again from zero, as it should after a trap). Its state is serde's, so a live upgrade
//! carries the count to the new version.

use courier_sdk::prelude::*;

/// Counts messages and reports the count when asked. `#[handler]` keeps one `Counter`, made
/// with `Default`, for the life of the instance.
#[derive(Default, courier_sdk::serde::Serialize, courier_sdk::serde::Deserialize)]
#[serde(crate = "courier_sdk::serde")]
struct Counter {
    /// Messages seen by this instance.
    seen: u64,
}

#[handler]
impl Counter {
    fn handle_message(&mut self, _msg: Message) -> Result<(), HandlerError> {
        self.seen += 1;
        Ok(())
    }

    /// Replies with the count as a little-endian `u64`, a fixed width the host can decode
    /// without a codec.
    fn handle_request(&mut self, _req: Message) -> Result<Vec<u8>, HandlerError> {
        Ok(self.seen.to_le_bytes().to_vec())
    }
}
