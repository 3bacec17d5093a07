//! The sending half of the throughput pair: told to send N messages, it sends `0..N` to the
//! component `pong` as fast as the host takes them. Benchmarks and tests drive it to measure
//! and check wasm-to-wasm delivery; `pong` checks that the numbers arrive in order.
//!
//! - Message: a decimal count N in UTF-8 (`10000`), optionally followed by `@` and a target
//!   id (`1000@pongs/7`; the target defaults to `pong`). Ping sends N messages to the target,
//!   each carrying its sequence number as an 8-byte little-endian `u64`. Numbers continue
//!   across messages and count per target: a second `10000` sends `10000..20000` to `pong`,
//!   so each target sees one ordered stream.
//! - Fault injection: `N@target~P` marks about P per mille of the messages, with a ninth
//!   byte set to one, as messages `pong` must trap on. Which numbers are marked follows from
//!   ping's id and the number alone, so a run is reproducible.
//! - Request: replies with how many messages it has sent in total, as 8 bytes little-endian.
//!
//! A handler cannot wait for room in a mailbox, since it runs to completion within one call
//! from the host. So a send that fails (a full mailbox, most often) is counted and skipped:
//! ping attempts all N, so the host's accounting sees exactly N sends, and if any failed it
//! fails the message with `internal`, saying how many of the N were refused and why. The
//! sequence numbers of refused messages are not reused, so the target sees a gap, never a
//! reordering; the total reported by a request counts only what reached a mailbox.

use std::collections::BTreeMap;

use courier_sdk::prelude::*;

/// Where the numbers go when the message names no target.
const DEFAULT_TARGET: &str = "pong";

/// What ping remembers across messages. Serde's, so a durable ping keeps its numbering
/// across a crash (and a live upgrade carries it to the new version).
#[derive(Default, courier_sdk::serde::Serialize, courier_sdk::serde::Deserialize)]
#[serde(crate = "courier_sdk::serde")]
struct Ping {
    /// Messages sent so far, to every target.
    sent: u64,
    /// The next sequence number for each target.
    next: BTreeMap<String, u64>,
}

#[handler]
impl Ping {
    fn handle_message(&mut self, msg: Message) -> Result<(), HandlerError> {
        let text = msg.text()?.trim();
        let (text, chaos) = match text.split_once('~') {
            Some((text, per_mille)) => (text, parse_count(per_mille)?),
            None => (text, 0),
        };
        let (count, target) = text.split_once('@').unwrap_or((text, DEFAULT_TARGET));
        let count: u64 = count.parse().map_err(|e| {
            HandlerError::invalid(format!(
                "expected a decimal count of messages, optionally `@target`, got {text:?}: {e}"
            ))
        })?;
        let seed = fnv1a(courier_sdk::self_id().as_bytes());
        let next = self.next.entry(target.to_owned()).or_default();
        let mut refused = 0u64;
        let mut first_error = None;
        let mut payload = [0u8; 9];
        for _ in 0..count {
            payload[..8].copy_from_slice(&next.to_le_bytes());
            let trap = chaos > 0 && splitmix64(seed ^ *next) % 1000 < chaos;
            payload[8] = u8::from(trap);
            let len = if chaos > 0 { 9 } else { 8 };
            match courier_sdk::send(target, &payload[..len]) {
                Ok(()) => self.sent += 1,
                Err(e) => {
                    refused += 1;
                    first_error.get_or_insert(e);
                }
            }
            *next += 1;
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(HandlerError::internal(format!(
                "{refused} of {count} messages to {target} were refused, the first with: {e}"
            ))),
        }
    }

    fn handle_request(&mut self, _req: Message) -> Result<Vec<u8>, HandlerError> {
        Ok(self.sent.to_le_bytes().to_vec())
    }
}

fn parse_count(text: &str) -> Result<u64, HandlerError> {
    text.parse()
        .map_err(|e| HandlerError::invalid(format!("expected a number, got {text:?}: {e}")))
}

/// A fixed hash of ping's id, so each ping marks its own reproducible set of numbers.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64: a well-mixed 64-bit value from any input, enough to pick faults evenly.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
