//! The messages this run sent to other hosts that are not yet acknowledged, and the
//! numbered streams that let a serving host tell a message sent again from a new one.
//!
//! Every message to a component that one host serves alone is numbered in the stream from
//! this run to that component: 1, 2, 3, … with no gaps. It goes on the wire with its number
//! and the lowest number in its stream still open here ([`Pending::low`]): everything
//! below that ended (acknowledged, refused, or given up on), so the serving host need not
//! remember it. Numbered messages can be sent again without being handled twice (see
//! `inbound.rs`). A message to a replicated id is not numbered: its replicas each see part
//! of the stream, so it is sent once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_host_broker::{ComponentId, RemoteMessage, TraceContext};

/// A message waiting for its acknowledgement.
pub(crate) struct Unacked {
    pub(crate) queued: Instant,
    /// Its payload's bytes, counted in the outbound window until it ends.
    pub(crate) len: u64,
    pub(crate) message: RemoteMessage,
    /// Its number in the stream from this run to its target; 0 when it is not numbered.
    pub(crate) stream_seq: u64,
    /// When it last went on the wire; `None` while it is still queued.
    pub(crate) published: Option<Instant>,
    /// The connection it last went out on (the count of connections made so far).
    pub(crate) connection: u64,
    /// Whether it is to go on the wire again, before anything newer.
    pub(crate) resend: bool,
    /// Whether NATS answered the last time it went out that nobody listened.
    pub(crate) no_responders: bool,
    /// Whether it went on the wire again and is counted in the resend window.
    pub(crate) again: bool,
}

/// A message to put on the wire again.
pub(crate) struct Resend {
    pub(crate) seq: u64,
    /// When it was first queued: its acknowledgement is due an ack timeout later.
    pub(crate) queued: Instant,
    pub(crate) target: ComponentId,
    pub(crate) sender: ComponentId,
    pub(crate) payload: Bytes,
    pub(crate) stream_seq: u64,
    pub(crate) low: u64,
    /// A durable sender's number for it.
    pub(crate) durable_seq: Option<u64>,
    pub(crate) trace: Option<TraceContext>,
}

#[derive(Default)]
struct Stream {
    /// The last number given.
    last: u64,
    /// The numbers of its messages still waiting.
    open: BTreeSet<u64>,
}

/// The unacknowledged messages by their sequence number (the order they were queued), and
/// the stream of each target.
pub(crate) struct Pending {
    entries: BTreeMap<u64, Unacked>,
    /// One per target ever numbered: a stream's numbers go on for the whole run, so a
    /// message is never given a number the serving host saw before. Bounded by the ids the
    /// directory lists, which every send is checked against first.
    streams: HashMap<ComponentId, Stream>,
    /// How many entries are marked to go again, so the outbound task need not look when
    /// none is.
    marked: usize,
    /// How many entries went on the wire again and have not ended: at most `window` go
    /// again before acknowledgements (or their endings) make room.
    again: usize,
    /// The most messages on the wire again at once, unacknowledged. After an outage every
    /// message that went out on the old connection goes again; all at once, tens of
    /// thousands can overflow the serving host's subscription (a slow consumer drops
    /// them), and each drop goes again in turn, a storm. A window paces them at the rate
    /// their acknowledgements come back. It is half this host's own subscription buffer
    /// (`LatticeConfig::subscription_capacity`): hosts of one lattice are usually
    /// configured alike, so a window fits the serving host's buffer beside other traffic.
    window: usize,
}

impl Pending {
    /// Nothing pending, with a resend window of `window` messages (at least one).
    pub(crate) fn new(window: usize) -> Pending {
        Pending {
            entries: BTreeMap::new(),
            streams: HashMap::new(),
            marked: 0,
            again: 0,
            window: window.max(1),
        }
    }

    pub(crate) fn marked(&self) -> usize {
        self.marked
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn get(&self, seq: u64) -> Option<&Unacked> {
        self.entries.get(&seq)
    }

    pub(crate) fn get_mut(&mut self, seq: u64) -> Option<&mut Unacked> {
        self.entries.get_mut(&seq)
    }

    pub(crate) fn contains(&self, seq: u64) -> bool {
        self.entries.contains_key(&seq)
    }

    /// The next number in the stream to `target`.
    pub(crate) fn number(&mut self, target: &ComponentId) -> u64 {
        let stream = self.streams.entry(target.clone()).or_default();
        stream.last += 1;
        stream.last
    }

    /// Take back `stream_seq`, given to a message that was never queued, if no later one
    /// was given since; otherwise it stays a gap, which the next message's `low` covers.
    pub(crate) fn unnumber(&mut self, target: &ComponentId, stream_seq: u64) {
        if let Some(stream) = self.streams.get_mut(target)
            && stream.last == stream_seq
        {
            stream.last -= 1;
        }
    }

    pub(crate) fn insert(&mut self, seq: u64, unacked: Unacked) {
        if unacked.stream_seq > 0 {
            self.streams
                .entry(unacked.message.target().clone())
                .or_default()
                .open
                .insert(unacked.stream_seq);
        }
        self.entries.insert(seq, unacked);
    }

    pub(crate) fn remove(&mut self, seq: u64) -> Option<Unacked> {
        let removed = self.entries.remove(&seq)?;
        self.close(&removed);
        Some(removed)
    }

    fn close(&mut self, unacked: &Unacked) {
        if unacked.resend {
            self.marked -= 1;
        }
        if unacked.again {
            self.again -= 1;
        }
        if unacked.stream_seq > 0
            && let Some(stream) = self.streams.get_mut(unacked.message.target())
        {
            stream.open.remove(&unacked.stream_seq);
        }
    }

    /// The lowest number still open in the stream to `target` (`stream_seq` if none is).
    pub(crate) fn low(&self, target: &ComponentId, stream_seq: u64) -> u64 {
        self.streams
            .get(target)
            .and_then(|s| s.open.first().copied())
            .unwrap_or(stream_seq)
            .min(stream_seq)
    }

    /// Take the messages queued more than `timeout` ago.
    pub(crate) fn pop_overdue(&mut self, timeout: Duration) -> Vec<Unacked> {
        let mut overdue = Vec::new();
        while let Some(entry) = self.entries.first_entry() {
            if entry.get().queued.elapsed() < timeout {
                break;
            }
            let entry = entry.remove();
            self.close(&entry);
            overdue.push(entry);
        }
        overdue
    }

    /// Take every message.
    pub(crate) fn take_all(&mut self) -> Vec<Unacked> {
        let all = std::mem::take(&mut self.entries);
        for stream in self.streams.values_mut() {
            stream.open.clear();
        }
        self.marked = 0;
        self.again = 0;
        all.into_values().collect()
    }

    /// Mark for sending again the numbered messages that went out and match `due`; returns
    /// how many were marked.
    pub(crate) fn mark(&mut self, mut due: impl FnMut(&Unacked) -> bool) -> usize {
        let mut marked = 0;
        for entry in self.entries.values_mut() {
            if entry.stream_seq > 0 && entry.published.is_some() && !entry.resend && due(entry) {
                entry.resend = true;
                marked += 1;
            }
        }
        self.marked += marked;
        marked
    }

    /// The marked messages, in the order they were queued, unmarked and noted as sent now
    /// on `connection`, as many as the resend window has room for (the rest stay marked);
    /// those for which `cutoff` says their acknowledgement could no longer come in time
    /// are unmarked, to end as they will.
    pub(crate) fn take_marked(
        &mut self,
        connection: u64,
        cutoff: impl Fn(&Unacked) -> bool,
    ) -> Vec<Resend> {
        let now = Instant::now();
        let mut out = Vec::new();
        let marked: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.resend)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in marked {
            let Some(entry) = self.entries.get_mut(&seq) else {
                continue;
            };
            if cutoff(entry) && !entry.again && self.again >= self.window {
                // No room: it goes when acknowledgements make some.
                continue;
            }
            entry.resend = false;
            self.marked -= 1;
            if !cutoff(entry) {
                continue;
            }
            if !entry.again {
                entry.again = true;
                self.again += 1;
            }
            entry.published = Some(now);
            entry.connection = connection;
            entry.no_responders = false;
            let (target, stream_seq, queued) = (
                entry.message.target().clone(),
                entry.stream_seq,
                entry.queued,
            );
            let (sender, payload, trace) = (
                entry.message.sender().clone(),
                entry.message.payload().clone(),
                entry.message.trace(),
            );
            let durable_seq = entry.message.durable_seq();
            let low = self.low(&target, stream_seq);
            out.push(Resend {
                durable_seq,
                seq,
                queued,
                target,
                sender,
                payload,
                stream_seq,
                low,
                trace,
            });
        }
        out
    }
}
