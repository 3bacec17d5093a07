//! The receiving half of the throughput pair: it counts the numbered messages `ping` sends
//! and checks that they arrive in the order sent, which the host promises for messages from
//! one sender to one target.
//!
//! - Message: an 8-byte little-endian `u64` sequence number. Anything else is refused with
//!   `invalid-message` and not counted. Order is checked per sender: each sender's numbers
//!   must rise. A gap (a send that was refused) is not a reordering.
//! - A ninth byte of 1 (ping's fault injection) makes pong panic on that message, so tests
//!   can show a trapping handler costs only its own message.
//! - Request: replies with 16 bytes, the number of messages counted then the number that
//!   arrived out of order, each a little-endian `u64`.

use std::collections::BTreeMap;

use courier_sdk::prelude::*;

/// What pong remembers across messages.
/// Serde's, so a live upgrade to a new version of pong carries the count and the order
/// check across.
#[derive(Default, courier_sdk::serde::Serialize, courier_sdk::serde::Deserialize)]
#[serde(crate = "courier_sdk::serde")]
struct Pong {
    /// Messages counted.
    count: u64,
    /// The last sequence number seen from each sender.
    last: BTreeMap<String, u64>,
    /// Messages whose number was not above the last one from the same sender.
    out_of_order: u64,
}

#[handler]
impl Pong {
    fn handle_message(&mut self, msg: Message) -> Result<(), HandlerError> {
        let (number, flags) = msg.payload().split_at(msg.payload().len().min(8));
        let bytes: [u8; 8] = number.try_into().map_err(|_| {
            HandlerError::invalid(format!(
                "expected an 8-byte little-endian sequence number, got {} bytes",
                msg.payload().len()
            ))
        })?;
        let number = u64::from_le_bytes(bytes);
        if flags == [1] {
            panic!("chaos: pong was told to trap at message {number}");
        }
        match self.last.get_mut(msg.sender()) {
            Some(last) => {
                if number <= *last {
                    self.out_of_order += 1;
                }
                *last = number;
            }
            None => {
                self.last.insert(msg.sender().to_owned(), number);
            }
        }
        self.count += 1;
        Ok(())
    }

    fn handle_request(&mut self, _req: Message) -> Result<Vec<u8>, HandlerError> {
        let mut reply = Vec::with_capacity(16);
        reply.extend_from_slice(&self.count.to_le_bytes());
        reply.extend_from_slice(&self.out_of_order.to_le_bytes());
        Ok(reply)
    }
}
