//! A stateful component: the count lives in the instance's linear memory, so it shows whether
//! the host keeps one instance across calls (the count grows) or replaces it (the count starts
//! again from zero, as it should after a trap).

use std::sync::atomic::{AtomicU64, Ordering};

wit_bindgen::generate!({ path: "../../wit", world: "actor" });

/// Messages seen by this instance. A `static` because the exports are free functions with no
/// `self`; wasm32-wasip2 is single-threaded, so `Relaxed` is all the ordering needed.
static MESSAGES_SEEN: AtomicU64 = AtomicU64::new(0);

/// Counts messages and reports the count when asked.
struct Counter;

impl Guest for Counter {
    fn handle_message(_sender: ComponentId, _message: Vec<u8>) -> Result<(), ComponentError> {
        MESSAGES_SEEN.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Replies with the count as a little-endian `u64`, a fixed width the host can decode
    /// without a codec.
    fn handle_request(_sender: ComponentId, _request: Vec<u8>) -> Result<Vec<u8>, ComponentError> {
        Ok(MESSAGES_SEEN.load(Ordering::Relaxed).to_le_bytes().to_vec())
    }
}

export!(Counter);
