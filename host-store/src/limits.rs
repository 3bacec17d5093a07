//! The bounds the store keeps, each with the reason for its number.
//!
//! A request over a bound is refused with [`StoreError::TooLarge`](crate::StoreError::TooLarge)
//! naming the bound, before anything is queued; dead letters over their bound push the oldest
//! out instead.

/// The longest id kept, in bytes: actor ids, sender ids, destinations and timer names.
///
/// Ids are keys, repeated in every record of an actor; 255 bytes is more than any id the
/// broker accepts and keeps a key within one small slice of a B-tree page.
pub const MAX_ID_BYTES: usize = 255;

/// The largest payload kept, in bytes: a mailbox entry's, an outbox entry's or a timer's.
///
/// The broker's default message limit is far below it; a payload this large already takes
/// most of a commit's time to write.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;

/// The largest state an actor can commit, in bytes.
///
/// A guest's memory is bounded (host-core's default cap is 64 MiB), so its `save-state`
/// cannot sensibly return more.
pub const MAX_STATE_BYTES: usize = 64 * 1024 * 1024;

/// How many dead letters the store keeps; past it the oldest is dropped and counted.
///
/// Dead letters are kept for people to read, not for the runtime to act on: the most recent
/// ten thousand say what went wrong, and their payloads are cut to
/// [`MAX_DEAD_LETTER_PAYLOAD_BYTES`], so the record stays under about 12 MiB.
pub const MAX_DEAD_LETTERS: usize = 10_000;

/// How much of a dead letter's payload is kept, in bytes (its full length is kept too).
pub const MAX_DEAD_LETTER_PAYLOAD_BYTES: usize = 1024;

/// How much of a dead letter's reason is kept, in bytes (cut at a character boundary).
pub const MAX_DEAD_LETTER_REASON_BYTES: usize = 1024;

/// How many timers one actor can hold; re-scheduling a name replaces it and does not count.
///
/// Timers are named by the guest, so without a bound one actor could fill the store.
pub const MAX_TIMERS_PER_ACTOR: usize = 1024;

/// How many writes can wait for the writer before callers wait to queue theirs.
///
/// Enough to fill several group commits of the largest batches the broker makes; a bound so
/// that a disk slower than its senders slows the senders rather than growing memory.
pub const MAX_QUEUED_WRITES: usize = 4096;

/// How many payload and state bytes can wait for the writer before callers wait.
pub const MAX_QUEUED_BYTES: usize = 256 * 1024 * 1024;
