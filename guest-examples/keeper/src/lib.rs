//! A component that keeps what it is sent: each message's payload (as text) is added to its
//! state, and a request answers with the state's length as a little-endian `u64`. Its state
//! is serde's, so a live upgrade moves all of it: the benchmark of upgrades with a large
//! state fills it to 1 MiB.

use courier_sdk::prelude::*;

/// Everything received, as one string (CBOR writes a string's bytes as they are, where a
/// `Vec<u8>` would be an array of numbers).
#[derive(Default, courier_sdk::serde::Serialize, courier_sdk::serde::Deserialize)]
#[serde(crate = "courier_sdk::serde")]
struct Keeper {
    kept: String,
}

#[handler]
impl Keeper {
    fn handle_message(&mut self, msg: Message) -> Result<(), HandlerError> {
        self.kept.push_str(&String::from_utf8_lossy(msg.payload()));
        Ok(())
    }

    fn handle_request(&mut self, _req: Message) -> Result<Vec<u8>, HandlerError> {
        Ok((self.kept.len() as u64).to_le_bytes().to_vec())
    }
}
