//! A host's lattice counters: what it sent to other hosts and how each ended, and what
//! arrived from them.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) refused_here: AtomicU64,
    pub(crate) refused_there: AtomicU64,
    pub(crate) no_host: AtomicU64,
    pub(crate) unconfirmed: AtomicU64,
    pub(crate) unsent: AtomicU64,
    pub(crate) slow_consumer_drops: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) publications: AtomicU64,
    pub(crate) publications_dropped: AtomicU64,
    pub(crate) arrived_messages: AtomicU64,
    pub(crate) arrived_requests: AtomicU64,
    pub(crate) arrived_publications: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) forged: AtomicU64,
    pub(crate) resent: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) out_of_order: AtomicU64,
    pub(crate) dropped_out_of_order: AtomicU64,
    pub(crate) expired: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self, awaiting_ack: u64, outbound_bytes: u64) -> LatticeMetrics {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        LatticeMetrics {
            sent: read(&self.sent),
            acked: read(&self.acked),
            refused_here: read(&self.refused_here),
            refused_there: read(&self.refused_there),
            no_host: read(&self.no_host),
            unconfirmed: read(&self.unconfirmed),
            unsent: read(&self.unsent),
            slow_consumer_drops: read(&self.slow_consumer_drops),
            awaiting_ack,
            outbound_bytes,
            requests: read(&self.requests),
            publications: read(&self.publications),
            publications_dropped: read(&self.publications_dropped),
            arrived_messages: read(&self.arrived_messages),
            arrived_requests: read(&self.arrived_requests),
            arrived_publications: read(&self.arrived_publications),
            malformed: read(&self.malformed),
            forged: read(&self.forged),
            resent: read(&self.resent),
            duplicates: read(&self.duplicates),
            out_of_order: read(&self.out_of_order),
            dropped_out_of_order: read(&self.dropped_out_of_order),
            expired: read(&self.expired),
            conflicts: 0,
        }
    }
}

/// A host's lattice counters at one moment.
///
/// Messages this host sent to other hosts: `sent == acked + refused_there + no_host +
/// unconfirmed + unsent + awaiting_ack` (the ones refused before the wire are in `refused_here`,
/// not in `sent`). The broker's own [`Accounting`](courier_host_broker::Accounting)
/// counts the same messages among all the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatticeMetrics {
    /// Messages put on the way to another host.
    pub sent: u64,
    /// Acknowledged: the serving host queued them.
    pub acked: u64,
    /// Messages and requests refused before they left: no host serves the target, the
    /// payload is over the wire's limit, the outbound queue is full, or this host is
    /// leaving.
    pub refused_here: u64,
    /// Refused by the serving host (mailbox full, say): dead-lettered here with its reason.
    pub refused_there: u64,
    /// Nobody served the target when it arrived: dead-lettered as `no-host`.
    pub no_host: u64,
    /// No acknowledgement in time: dead-lettered as `unconfirmed` (it may have arrived).
    pub unconfirmed: u64,
    /// Never put on the wire: no server could be reached, or the client took no more,
    /// before its acknowledgement was due. Dead-lettered as `not sent` (it did not arrive).
    pub unsent: u64,
    /// Messages the NATS client dropped because a subscription of this host was full
    /// (a slow consumer): what other hosts sent and this host never read.
    pub slow_consumer_drops: u64,
    /// Sent and waiting for their acknowledgement.
    pub awaiting_ack: u64,
    /// Payload bytes queued for the wire.
    pub outbound_bytes: u64,
    /// Requests sent to other hosts.
    pub requests: u64,
    /// Publications offered to other hosts.
    pub publications: u64,
    /// Publications not offered to other hosts (too large, or the outbound queue full);
    /// this host's subscribers still had them.
    pub publications_dropped: u64,
    /// Messages that arrived from other hosts.
    pub arrived_messages: u64,
    /// Requests that arrived from other hosts.
    pub arrived_requests: u64,
    /// Publications that arrived from other hosts (each once, however many subscribers
    /// here heard it).
    pub arrived_publications: u64,
    /// Arrivals without a valid kind, sender or topic, refused.
    pub malformed: u64,
    /// What another host sent speaking for a third, refused: a message or publication
    /// whose sender id another host runs (or this one does), and acknowledgements for
    /// messages to ids the acknowledging host does not serve.
    pub forged: u64,
    /// Messages put on the wire again: unacknowledged after a new connection to a server,
    /// or `resend_after` (a fifth of the ack timeout) after they went out, or answered "no
    /// responders" while the directory still heard their target's host. Counted each time.
    pub resent: u64,
    /// Messages from other hosts that this host already had (sent again), acknowledged or
    /// refused again and not delivered twice.
    pub duplicates: u64,
    /// Messages from other hosts that came before their turn (something before them was
    /// lost on the way) and were held for it, up to 4 s.
    pub out_of_order: u64,
    /// Messages from other hosts that came before their turn with no room to hold them
    /// (4,096 per stream, 16 MiB in all), dropped for their sender to send again.
    pub dropped_out_of_order: u64,
    /// Messages and requests from other hosts that arrived after their sender had stopped
    /// waiting for them (by the deadline in their envelope and this host's clock), dropped
    /// unhandled: their sender dead-lettered the message or answered the request `timeout`.
    /// Messages the NATS client held through a reconnect end here.
    pub expired: u64,
    /// Ids that more than one host claims to serve alone, this host included
    /// ([`Lattice::conflicts`](crate::Lattice::conflicts)).
    pub conflicts: u64,
}
