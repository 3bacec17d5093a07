//! What a serving host remembers of each numbered stream (see `pending.rs`), so a message
//! sent again after a lost acknowledgement, a server failover or a "no responders" is
//! handled once, and in order.
//!
//! A stream is one run of one sending host (its reply prefix, which holds its incarnation)
//! to one component here. The host keeps the number below which it has handled every
//! message of the stream. A message at or below it, or handled out of turn, is a duplicate
//! (acknowledged again, not delivered, or refused again if it was refused); the next one
//! is delivered. One further on means something before it was lost on the way (a server
//! that died with it; after a failover the client's own buffer can reach the new server
//! before what its sender sends again): it is held, unacknowledged, until what is missing
//! comes and it can be delivered in turn, for at most [`HOLD_FOR`], and no longer than
//! three quarters of the time its sender had left for it when it came (the deadline in
//! its envelope), so its acknowledgement still comes in time. After that the host
//! delivers what it held (a hole its sender gave up on, or another host that takes part of
//! the stream: two hosts that claim one id), and whatever fills the hole later is
//! delivered out of turn, once.
//!
//! Each message also says the lowest number its sender still waits for, so what is below
//! it need not be kept, and a stream forgotten here (the table is bounded) starts again
//! where its sender stands.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_host_broker::{ComponentId, MessagingError, TraceContext};

/// The most streams remembered; past it the sixteenth heard from longest ago is forgotten
/// at once, so a flood of new streams costs one scan per 4,096 of them.
pub const MAX_STREAMS: usize = 65_536;

/// The longest a message that came out of turn is held for what is missing before it.
/// Longer than a sender takes to send a lost message again (a fifth of its ack timeout
/// after it went out, checked every tenth: 1.5 s at the default 5 s), so a message a
/// slow consumer dropped comes again before what followed it is given up on; a message
/// whose sender stops waiting sooner is held for less (see [`Held::new`]).
pub const HOLD_FOR: Duration = Duration::from_secs(4);

/// The most messages held per stream, and the most payload bytes held in all: past them
/// a message out of turn is dropped unanswered, for its sender to send again.
pub const MAX_HELD: usize = 4096;

/// See [`MAX_HELD`].
pub const MAX_HELD_BYTES: usize = 16 << 20;

/// The most numbers kept per stream that were handled out of turn.
const OUT_OF_TURN_KEPT: usize = 65_536;

/// The most refusals remembered per stream, to refuse a duplicate of one again. A duplicate
/// of an older refusal is acknowledged: the sender already had its refusal unless that
/// answer was lost too.
const REFUSALS_KEPT: usize = 64;

/// What to do with a numbered message.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Deliver it (given back).
    New(Held),
    /// Already handled: acknowledge it again.
    Duplicate,
    /// Already refused: refuse it again.
    Refused(MessagingError),
    /// Held until it is its turn: no answer now.
    Held,
    /// Out of turn with no room to hold it: dropped unanswered.
    Dropped,
}

/// A message held for its turn.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) seq: u64,
    pub(crate) sender: ComponentId,
    pub(crate) payload: Bytes,
    pub(crate) reply: async_nats::Subject,
    /// Its durable sender's number for it, if its sender is durable.
    pub(crate) durable_seq: Option<u64>,
    /// The context of its sender's span, if it was sent in a trace.
    pub(crate) trace: Option<TraceContext>,
    /// When it is delivered even if its turn has not come.
    until: Instant,
}

impl Held {
    /// Message `seq`, which came with `left` before its sender stops waiting for it: if
    /// held, it is held for [`HOLD_FOR`] at most, and for no more than three quarters of
    /// `left`, so its acknowledgement can still reach its sender in time.
    pub(crate) fn new(
        seq: u64,
        sender: ComponentId,
        payload: Bytes,
        reply: async_nats::Subject,
        left: Option<Duration>,
    ) -> Held {
        let hold = left.map_or(HOLD_FOR, |left| (left * 3 / 4).min(HOLD_FOR));
        Held {
            seq,
            sender,
            payload,
            reply,
            durable_seq: None,
            trace: None,
            until: Instant::now() + hold,
        }
    }

    /// The same message, sent in the trace `trace` names.
    pub(crate) fn with_trace(mut self, trace: Option<TraceContext>) -> Held {
        self.trace = trace;
        self
    }
}

/// A stream's key: the sending run's reply prefix and the target.
pub(crate) type StreamKey = (String, ComponentId);

struct Stream {
    /// Every number up to this one was handled.
    below: u64,
    /// Numbers above `below` handled out of turn.
    seen: BTreeSet<u64>,
    held: BTreeMap<u64, Held>,
    heard: Instant,
    refused: VecDeque<(u64, MessagingError)>,
}

impl Stream {
    /// Move `below` up to `to`, and on over what was handled out of turn just after it.
    fn advance(&mut self, to: u64) {
        if to > self.below {
            self.below = to;
            self.seen = self.seen.split_off(&(to + 1));
        }
        while self.seen.first() == Some(&(self.below + 1)) {
            self.seen.pop_first();
            self.below += 1;
        }
    }
}

/// The streams by [`StreamKey`].
#[derive(Default)]
pub(crate) struct Streams {
    streams: HashMap<StreamKey, Stream>,
    held_bytes: usize,
}

impl Streams {
    /// The verdict on message `held.seq` of the stream `key`, whose sender still waits for
    /// nothing below `low`; it is kept when the verdict is [`Verdict::Held`].
    pub(crate) fn check(&mut self, key: &StreamKey, low: u64, held: Held) -> Verdict {
        if !self.streams.contains_key(key) {
            if self.streams.len() >= MAX_STREAMS {
                self.forget_oldest();
            }
            // The key is copied once per stream, not once per message.
            self.streams.insert(
                key.clone(),
                Stream {
                    below: 0,
                    seen: BTreeSet::new(),
                    held: BTreeMap::new(),
                    heard: Instant::now(),
                    refused: VecDeque::new(),
                },
            );
        }
        let Some(stream) = self.streams.get_mut(key) else {
            return Verdict::Dropped;
        };
        stream.heard = Instant::now();
        stream.advance(low.saturating_sub(1));
        let seq = held.seq;
        if seq <= stream.below || stream.seen.contains(&seq) {
            return match stream.refused.iter().find(|(s, _)| *s == seq) {
                Some((_, error)) => Verdict::Refused(error.clone()),
                None => Verdict::Duplicate,
            };
        }
        if stream.held.contains_key(&seq) {
            // Sent again while held: it is answered when it is delivered.
            return Verdict::Held;
        }
        if seq == stream.below + 1 {
            return Verdict::New(held);
        }
        if stream.held.len() >= MAX_HELD
            || stream.seen.len() >= OUT_OF_TURN_KEPT
            || self.held_bytes + held.payload.len() > MAX_HELD_BYTES
        {
            return Verdict::Dropped;
        }
        self.held_bytes += held.payload.len();
        stream.held.insert(seq, held);
        Verdict::Held
    }

    /// Note that message `seq` of `key` was delivered or refused.
    pub(crate) fn settled(
        &mut self,
        key: &StreamKey,
        seq: u64,
        outcome: &Result<(), MessagingError>,
    ) {
        if let Some(stream) = self.streams.get_mut(key) {
            if seq == stream.below + 1 {
                stream.advance(seq);
            } else if seq > stream.below {
                stream.seen.insert(seq);
            }
            if let Err(error) = outcome {
                if stream.refused.len() == REFUSALS_KEPT {
                    stream.refused.pop_front();
                }
                stream.refused.push_back((seq, error.clone()));
            }
        }
    }

    /// The held message of `key` whose turn it is now, if there is one.
    pub(crate) fn next_in_turn(&mut self, key: &StreamKey) -> Option<Held> {
        let stream = self.streams.get_mut(key)?;
        // What was held and is now at or below `below` (its sender gave up on what came
        // before, and said so in `low`) is in turn too.
        let (&seq, _) = stream.held.first_key_value()?;
        if seq > stream.below + 1 {
            return None;
        }
        let held = stream.held.remove(&seq)?;
        self.held_bytes -= held.payload.len();
        Some(held)
    }

    /// The held messages of streams to `id` one of which has been held as long as it may
    /// be (or all of them, when `id` stops being served here), in their order: what was
    /// missing before them is not coming in time.
    pub(crate) fn overdue(&mut self, id: &ComponentId, all: bool) -> Vec<(StreamKey, Held)> {
        let mut out = Vec::new();
        let now = Instant::now();
        for (key, stream) in &mut self.streams {
            let due = |h: &Held| all || now >= h.until;
            if &key.1 != id || !stream.held.values().any(due) {
                continue;
            }
            for (_, held) in std::mem::take(&mut stream.held) {
                self.held_bytes -= held.payload.len();
                out.push((key.clone(), held));
            }
        }
        out
    }

    /// When the first message held for `id` will have been held as long as it may be.
    pub(crate) fn next_overdue(&self, id: &ComponentId) -> Option<Instant> {
        self.streams
            .iter()
            .filter(|(key, _)| &key.1 == id)
            .filter_map(|(_, s)| s.held.values().map(|h| h.until).min())
            .min()
    }

    fn forget_oldest(&mut self) {
        let mut heard: Vec<(Instant, &StreamKey)> = self
            .streams
            .iter()
            .filter(|(_, s)| s.held.is_empty())
            .map(|(key, s)| (s.heard, key))
            .collect();
        if heard.is_empty() {
            return;
        }
        let cut = (heard.len() / 16).max(1);
        heard.select_nth_unstable_by_key(cut - 1, |(at, _)| *at);
        let oldest: Vec<StreamKey> = heard[..cut].iter().map(|(_, key)| (*key).clone()).collect();
        for key in oldest {
            self.streams.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64) -> Held {
        Held::new(
            seq,
            ComponentId::from("ping"),
            Bytes::from_static(b"12345678"),
            async_nats::Subject::from(format!("courier.l.h.a.r.1.{seq}")),
            None,
        )
    }

    fn deliver(streams: &mut Streams, key: &StreamKey, seq: u64) {
        streams.settled(key, seq, &Ok(()));
    }

    #[test]
    fn each_number_is_delivered_once_and_in_turn() {
        let mut streams = Streams::default();
        let key = ("courier.l.h.a.r.1".to_string(), ComponentId::from("pong"));
        assert!(matches!(
            streams.check(&key, 1, message(1)),
            Verdict::New(_)
        ));
        deliver(&mut streams, &key, 1);
        assert!(matches!(
            streams.check(&key, 1, message(1)),
            Verdict::Duplicate
        ));
        // 2 is lost on the way: 3 and 4 are held until it comes.
        assert!(matches!(streams.check(&key, 1, message(3)), Verdict::Held));
        assert!(matches!(streams.check(&key, 1, message(4)), Verdict::Held));
        assert!(
            matches!(streams.check(&key, 1, message(3)), Verdict::Held),
            "sent again"
        );
        assert!(streams.next_in_turn(&key).is_none());
        assert!(matches!(
            streams.check(&key, 1, message(2)),
            Verdict::New(_)
        ));
        streams.settled(&key, 2, &Err(MessagingError::MailboxFull("pong".into())));
        let mut order = Vec::new();
        while let Some(held) = streams.next_in_turn(&key) {
            order.push(held.seq);
            deliver(&mut streams, &key, held.seq);
        }
        assert_eq!(order, [3, 4]);
        assert_eq!(streams.held_bytes, 0);
        assert!(matches!(
            streams.check(&key, 1, message(2)),
            Verdict::Refused(MessagingError::MailboxFull(_))
        ));
        assert!(matches!(
            streams.check(&key, 1, message(4)),
            Verdict::Duplicate
        ));
        // The sender settled everything below 10 (the rest were given up on): 10 is new.
        assert!(matches!(
            streams.check(&key, 10, message(10)),
            Verdict::New(_)
        ));
        // Another run of the same host is another stream.
        let other = ("courier.l.h.a.r.2".to_string(), ComponentId::from("pong"));
        assert!(matches!(
            streams.check(&other, 1, message(1)),
            Verdict::New(_)
        ));
    }

    #[test]
    fn a_message_is_held_no_longer_than_its_sender_waits_for_it() {
        let mut streams = Streams::default();
        let key = ("run".to_string(), ComponentId::from("pong"));
        let soon = Held::new(
            2,
            ComponentId::from("ping"),
            Bytes::from_static(b"12345678"),
            async_nats::Subject::from("courier.l.h.a.r.1.2"),
            Some(Duration::from_millis(400)),
        );
        let held_at = Instant::now();
        assert!(matches!(streams.check(&key, 1, soon), Verdict::Held));
        let due = streams.next_overdue(&key.1).expect("something is held");
        assert!(due <= held_at + Duration::from_millis(300), "{due:?}");
        // Without a deadline, as long as a sender's resend takes.
        let key = ("other run".to_string(), ComponentId::from("echo"));
        let held_at = Instant::now();
        assert!(matches!(streams.check(&key, 1, message(2)), Verdict::Held));
        let due = streams.next_overdue(&key.1).expect("something is held");
        assert!(due >= held_at + HOLD_FOR, "{due:?}");
    }

    #[test]
    fn what_waits_too_long_for_its_turn_is_delivered_and_the_hole_filled_later() {
        let mut streams = Streams::default();
        let key = ("run".to_string(), ComponentId::from("pong"));
        assert!(matches!(streams.check(&key, 1, message(2)), Verdict::Held));
        assert!(streams.overdue(&key.1, false).is_empty(), "not yet");
        let due = streams.next_overdue(&key.1).expect("something is held");
        assert!(due > Instant::now());
        for stream in streams.streams.values_mut() {
            for held in stream.held.values_mut() {
                held.until -= HOLD_FOR;
            }
        }
        let overdue = streams.overdue(&key.1, false);
        assert_eq!(overdue.iter().map(|(_, h)| h.seq).collect::<Vec<_>>(), [2]);
        deliver(&mut streams, &key, 2);
        // 1 comes at last: new, once.
        assert!(matches!(
            streams.check(&key, 1, message(1)),
            Verdict::New(_)
        ));
        deliver(&mut streams, &key, 1);
        assert!(matches!(
            streams.check(&key, 1, message(1)),
            Verdict::Duplicate
        ));
        assert!(matches!(
            streams.check(&key, 1, message(2)),
            Verdict::Duplicate
        ));
        assert!(matches!(
            streams.check(&key, 1, message(3)),
            Verdict::New(_)
        ));
    }

    #[test]
    fn what_is_held_is_bounded() {
        let mut streams = Streams::default();
        let key = ("run".to_string(), ComponentId::from("pong"));
        for seq in 2..2 + MAX_HELD as u64 {
            assert!(matches!(
                streams.check(&key, 1, message(seq)),
                Verdict::Held
            ));
        }
        let next = 2 + MAX_HELD as u64;
        assert!(matches!(
            streams.check(&key, 1, message(next)),
            Verdict::Dropped
        ));
        assert_eq!(streams.held_bytes, MAX_HELD * 8);
    }

    #[test]
    fn a_forgotten_stream_starts_again_where_its_sender_stands() {
        let mut streams = Streams::default();
        for i in 0..=MAX_STREAMS {
            let key = (format!("run-{i}"), ComponentId::from("pong"));
            assert!(matches!(
                streams.check(&key, 1, message(1)),
                Verdict::New(_)
            ));
            deliver(&mut streams, &key, 1);
        }
        assert!(streams.streams.len() <= MAX_STREAMS);
        let first = ("run-0".to_string(), ComponentId::from("pong"));
        assert!(!streams.streams.contains_key(&first), "the oldest went");
        // Its sender waits for nothing below 5: 5 is taken, not held.
        assert!(matches!(
            streams.check(&first, 5, message(5)),
            Verdict::New(_)
        ));
    }
}
