//! What the store keeps: mailbox entries, outbox entries, commits, dead letters, timers.
//!
//! Every record belongs to one actor and is keyed by its id first, so an actor's records sit
//! together and nothing grows with the number of actors but the actors' own records.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// What kind of message a record holds. The store keeps it and gives it back; it means
/// nothing to the store itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A fire-and-forget message.
    Message,
    /// A request awaiting a reply.
    Request,
    /// A publication to a topic.
    Publication,
}

impl Kind {
    pub(crate) fn code(self) -> u8 {
        match self {
            Kind::Message => 0,
            Kind::Request => 1,
            Kind::Publication => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Kind> {
        match code {
            0 => Some(Kind::Message),
            1 => Some(Kind::Request),
            2 => Some(Kind::Publication),
            _ => None,
        }
    }
}

/// A message accepted for an actor, to be stored in its mailbox by
/// [`Store::append`](crate::Store::append).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The actor it is for.
    pub actor: String,
    /// Who sent it.
    pub sender: String,
    /// The sender's sequence number for it, if the sender keeps one (a durable actor's
    /// outbox does; the host's own sends need not). An entry whose actor already holds a
    /// number at least this high from the same sender is a duplicate and is not stored again.
    pub seq: Option<u64>,
    /// Message, request or publication.
    pub kind: Kind,
    /// The payload.
    pub payload: Bytes,
}

impl Entry {
    /// A message from `sender` to `actor` with no sequence number: never taken for a
    /// duplicate.
    pub fn new(
        actor: impl Into<String>,
        sender: impl Into<String>,
        kind: Kind,
        payload: impl Into<Bytes>,
    ) -> Entry {
        Entry {
            actor: actor.into(),
            sender: sender.into(),
            seq: None,
            kind,
            payload: payload.into(),
        }
    }

    /// The same entry, carrying the sender's sequence number `seq`.
    pub fn with_seq(mut self, seq: u64) -> Entry {
        self.seq = Some(seq);
        self
    }
}

/// What became of one appended [`Entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored at this position of its actor's mailbox. Positions only grow, so an actor's
    /// entries come back from [`Store::load`](crate::Store::load) in the order they were
    /// appended.
    Stored {
        /// Its position, to name it in [`Batch::consumed`].
        position: u64,
    },
    /// The actor already holds this sender's entry with this sequence number (or a later
    /// one): nothing was stored.
    Duplicate,
}

impl Appended {
    /// The position it was stored at, or `None` for a duplicate.
    pub fn position(self) -> Option<u64> {
        match self {
            Appended::Stored { position } => Some(position),
            Appended::Duplicate => None,
        }
    }
}

/// A mailbox entry as the store gives it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// Its position in the actor's mailbox.
    pub position: u64,
    /// Who sent it.
    pub sender: String,
    /// The sender's sequence number, if it had one.
    pub seq: Option<u64>,
    /// Message, request or publication.
    pub kind: Kind,
    /// The payload.
    pub payload: Bytes,
}

/// A message an actor's handler sent, to leave its outbox only after the commit that
/// records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Where it goes: a component id, or a topic for a publication.
    pub destination: String,
    /// Message, request or publication.
    pub kind: Kind,
    /// The payload.
    pub payload: Bytes,
}

impl Outgoing {
    /// A message to `destination`.
    pub fn new(destination: impl Into<String>, kind: Kind, payload: impl Into<Bytes>) -> Outgoing {
        Outgoing {
            destination: destination.into(),
            kind,
            payload: payload.into(),
        }
    }
}

/// An outbox entry as the store gives it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOutgoing {
    /// The sequence number the store gave it: the sender's number that receivers
    /// deduplicate by, and the entry's name in [`Batch::delivered`].
    pub seq: u64,
    /// Where it goes.
    pub destination: String,
    /// Message, request or publication.
    pub kind: Kind,
    /// The payload.
    pub payload: Bytes,
}

/// Everything one handled batch of one actor changed, committed in one transaction by
/// [`Store::commit`](crate::Store::commit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The actor.
    pub actor: String,
    /// Positions of the mailbox entries it handled, now removed.
    pub consumed: Vec<u64>,
    /// Its new state, or `None` to keep the state it has.
    pub state: Option<Bytes>,
    /// What its handlers sent, added to its outbox in this order.
    pub produced: Vec<Outgoing>,
    /// Sequence numbers of its outbox entries now delivered, removed from the outbox.
    pub delivered: Vec<u64>,
    /// Changes to its timers, applied in this order. A timer's firing and the state its
    /// handler left are kept or lost together with them, as are the timers a handler
    /// scheduled and the message it handled.
    pub timers: Vec<TimerChange>,
}

impl Batch {
    /// An empty batch for `actor`: commits nothing until fields are filled in.
    pub fn new(actor: impl Into<String>) -> Batch {
        Batch {
            actor: actor.into(),
            ..Batch::default()
        }
    }
}

/// A change to one of an actor's timers, committed with a [`Batch`] of that actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerChange {
    /// Keep this timer, replacing the actor's timer of the same name. It is kept as the
    /// batch's actor's: its [`Timer::actor`] is not read.
    Put(Timer),
    /// Remove the actor's timer of this name, if it has one.
    Cancel(String),
}

/// What a commit assigned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// The sequence numbers given to [`Batch::produced`], in its order. They only grow for
    /// as long as the store's file lives, across every actor of the store.
    pub produced: Vec<u64>,
}

/// An actor as it was last committed: what a host needs to bring it back after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Its last committed state.
    pub state: Option<Bytes>,
    /// Its mailbox entries not yet consumed, in the order they were appended.
    pub mailbox: Vec<StoredEntry>,
    /// Its outbox entries not yet delivered, in the order they were produced.
    pub outbox: Vec<StoredOutgoing>,
    /// Its timers, by name.
    pub timers: Vec<Timer>,
}

/// A message that will never be delivered, kept for people to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Who sent it.
    pub sender: String,
    /// Whom it was for.
    pub target: String,
    /// Message, request or publication.
    pub kind: Kind,
    /// The start of its payload: the store keeps the first
    /// [`MAX_DEAD_LETTER_PAYLOAD_BYTES`](crate::limits::MAX_DEAD_LETTER_PAYLOAD_BYTES).
    pub payload: Bytes,
    /// The payload's full length.
    pub payload_len: u64,
    /// Why it was not delivered; the store keeps the first
    /// [`MAX_DEAD_LETTER_REASON_BYTES`](crate::limits::MAX_DEAD_LETTER_REASON_BYTES).
    pub reason: String,
    /// When it was dead-lettered (kept to the millisecond).
    pub at: SystemTime,
}

/// The dead letters a store keeps, oldest first, and how many older ones it dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetters {
    /// The most recent dead letters, at most
    /// [`MAX_DEAD_LETTERS`](crate::limits::MAX_DEAD_LETTERS), oldest first.
    pub letters: Vec<DeadLetter>,
    /// How many were dropped to keep within the bound, since the store was made.
    pub dropped: u64,
}

/// A timer of one actor, keyed by its name: putting a timer with a name the actor already
/// has replaces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// The actor it wakes.
    pub actor: String,
    /// Its name, unique per actor.
    pub name: String,
    /// When it is next due: kept to the millisecond, rounded up, so a timer read back is
    /// never due earlier than the one put.
    pub due: SystemTime,
    /// For a periodic timer, the time between ticks.
    pub period: Option<Duration>,
    /// The payload each tick carries.
    pub payload: Bytes,
}

/// What a store holds and how its commits are going.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Mailbox entries stored and not yet consumed.
    pub mailbox_entries: u64,
    /// Outbox entries stored and not yet delivered.
    pub outbox_entries: u64,
    /// Transactions committed since the store was opened; each holds every write that
    /// arrived while the one before it was committing.
    pub commits: u64,
    /// Writes (appends, commits, dead letters, timers, forgets) in those transactions.
    pub writes: u64,
    /// How long the last commit took, fsync included.
    pub last_commit: Duration,
    /// The mean time of a commit since the store was opened.
    pub mean_commit: Duration,
    /// The size of the store's file, in bytes.
    pub file_bytes: u64,
}
