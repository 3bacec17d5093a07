//! The tables of a redb store and how their values are laid out.
//!
//! Every table is keyed by actor first, so one actor's records are one range of keys: loading
//! or forgetting an actor touches its own records and nobody else's. Values are a few
//! fixed-width fields, the ids (at most 255 bytes, so one length byte), and the payload as
//! the rest of the value, so a payload is never copied into a frame of its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redb::TableDefinition;

use crate::record::{DeadLetter, Kind, Outgoing, StoredEntry, StoredOutgoing, Timer};

/// The format this code reads and writes, recorded under [`FORMAT_KEY`] in [`META`]. A
/// change to any table or value layout below is a new version.
pub(crate) const FORMAT_VERSION: u64 = 1;

/// Store-wide numbers: the format version and the counters below.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const FORMAT_KEY: &str = "format";
/// Above every mailbox position and outbox sequence number given so far: one counter for the
/// whole store, so both only grow, per actor and across an actor forgotten and made again.
/// The writer reserves [`POSITION_BLOCK`] numbers at a time and records only the top of the
/// reservation, so most commits do not write it; after a restart numbering resumes from the
/// top, skipping what was reserved and not given.
pub(crate) const POSITION_CEILING_KEY: &str = "position-ceiling";
pub(crate) const POSITION_BLOCK: u64 = 1 << 16;
/// The id the next dead letter gets.
pub(crate) const NEXT_DEAD_LETTER_KEY: &str = "next-dead-letter";
/// How many dead letters were dropped to keep within the bound.
pub(crate) const DROPPED_DEAD_LETTERS_KEY: &str = "dropped-dead-letters";

/// (actor, position) to a mailbox entry: [`encode_entry`].
pub(crate) const MAILBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("mailbox");
/// (actor, sender) to the highest sequence number of the sender's entries the actor accepted.
pub(crate) const MARKS: TableDefinition<(&str, &str), u64> = TableDefinition::new("marks");
/// Actor to its last committed state.
pub(crate) const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// (actor, sequence number) to an outbox entry: [`encode_outgoing`].
pub(crate) const OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox");
/// Dead-letter id (in the order they came) to a dead letter: [`encode_dead_letter`].
pub(crate) const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead-letters");
/// (actor, name) to a timer: [`encode_timer`].
pub(crate) const TIMERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("timers");

/// The smallest string that sorts after every string starting with `id`: where the keys of
/// the next actor begin.
pub(crate) fn after(id: &str) -> String {
    let mut next = String::with_capacity(id.len() + 1);
    next.push_str(id);
    next.push('\0');
    next
}

// Mailbox entry: kind (1), has-seq (1), seq (8, little-endian), sender length (1), sender,
// payload.
pub(crate) fn encode_entry(
    out: &mut Vec<u8>,
    sender: &str,
    seq: Option<u64>,
    kind: Kind,
    payload: &[u8],
) {
    out.clear();
    out.reserve(11 + sender.len() + payload.len());
    out.push(kind.code());
    out.push(u8::from(seq.is_some()));
    out.extend_from_slice(&seq.unwrap_or(0).to_le_bytes());
    push_id(out, sender);
    out.extend_from_slice(payload);
}

pub(crate) fn decode_entry(position: u64, value: &[u8]) -> Option<StoredEntry> {
    let mut r = Reader(value);
    let kind = Kind::from_code(r.u8()?)?;
    let has_seq = r.u8()? != 0;
    let seq = r.u64()?;
    let sender = r.id()?;
    Some(StoredEntry {
        position,
        sender,
        seq: has_seq.then_some(seq),
        kind,
        payload: Bytes::copy_from_slice(r.0),
    })
}

// Outbox entry: kind (1), destination length (1), destination, payload.
pub(crate) fn encode_outgoing(out: &mut Vec<u8>, outgoing: &Outgoing) {
    out.clear();
    out.reserve(2 + outgoing.destination.len() + outgoing.payload.len());
    out.push(outgoing.kind.code());
    push_id(out, &outgoing.destination);
    out.extend_from_slice(&outgoing.payload);
}

pub(crate) fn decode_outgoing(seq: u64, value: &[u8]) -> Option<StoredOutgoing> {
    let mut r = Reader(value);
    let kind = Kind::from_code(r.u8()?)?;
    let destination = r.id()?;
    Some(StoredOutgoing {
        seq,
        destination,
        kind,
        payload: Bytes::copy_from_slice(r.0),
    })
}

// Dead letter: kind (1), sender, target (each a length byte and the id), full payload length
// (8), time in milliseconds since the epoch (8), reason length (2), reason, payload.
pub(crate) fn encode_dead_letter(letter: &DeadLetter) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        21 + letter.sender.len() + letter.target.len() + letter.reason.len() + letter.payload.len(),
    );
    out.push(letter.kind.code());
    push_id(&mut out, &letter.sender);
    push_id(&mut out, &letter.target);
    out.extend_from_slice(&letter.payload_len.to_le_bytes());
    out.extend_from_slice(&millis(letter.at).to_le_bytes());
    let reason = letter.reason.as_bytes();
    out.extend_from_slice(&(reason.len() as u16).to_le_bytes());
    out.extend_from_slice(reason);
    out.extend_from_slice(&letter.payload);
    out
}

pub(crate) fn decode_dead_letter(value: &[u8]) -> Option<DeadLetter> {
    let mut r = Reader(value);
    let kind = Kind::from_code(r.u8()?)?;
    let sender = r.id()?;
    let target = r.id()?;
    let payload_len = r.u64()?;
    let at = UNIX_EPOCH + Duration::from_millis(r.u64()?);
    let reason_len = usize::from(u16::from_le_bytes(r.take(2)?.try_into().ok()?));
    let reason = String::from_utf8(r.take(reason_len)?.to_vec()).ok()?;
    Some(DeadLetter {
        sender,
        target,
        kind,
        payload: Bytes::copy_from_slice(r.0),
        payload_len,
        reason,
        at,
    })
}

// Timer: due in milliseconds since the epoch (8), has-period (1), period in milliseconds (8),
// payload. The actor and name are the key.
pub(crate) fn encode_timer(timer: &Timer) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + timer.payload.len());
    out.extend_from_slice(&millis_up(timer.due).to_le_bytes());
    out.push(u8::from(timer.period.is_some()));
    let period = timer.period.map_or(0, saturating_millis);
    out.extend_from_slice(&period.to_le_bytes());
    out.extend_from_slice(&timer.payload);
    out
}

pub(crate) fn decode_timer(actor: &str, name: &str, value: &[u8]) -> Option<Timer> {
    let mut r = Reader(value);
    let due = UNIX_EPOCH + Duration::from_millis(r.u64()?);
    let has_period = r.u8()? != 0;
    let period = Duration::from_millis(r.u64()?);
    Some(Timer {
        actor: actor.to_string(),
        name: name.to_string(),
        due,
        period: has_period.then_some(period),
        payload: Bytes::copy_from_slice(r.0),
    })
}

/// Milliseconds since the epoch; a time before it is kept as the epoch.
fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, saturating_millis)
}

/// Milliseconds since the epoch, rounded up: a deadline read back is never earlier than the
/// one written. A time before the epoch is kept as the epoch.
fn millis_up(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| {
        let whole = saturating_millis(d);
        match d.subsec_nanos() % 1_000_000 {
            0 => whole,
            _ => whole.saturating_add(1),
        }
    })
}

fn saturating_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An id, checked against [`MAX_ID_BYTES`](crate::limits::MAX_ID_BYTES) before it gets here.
fn push_id(out: &mut Vec<u8>, id: &str) {
    let len = u8::try_from(id.len()).expect("ids are checked against the bound before a write");
    out.push(len);
    out.extend_from_slice(id.as_bytes());
}

/// Reads a value front to back; `None` when it ends early or holds what no writer wrote.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("eight bytes")))
    }

    fn id(&mut self) -> Option<String> {
        let len = usize::from(self.u8()?);
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}
