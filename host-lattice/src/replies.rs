//! What comes back for what this host sent: acknowledgements, refusals, replies, and the
//! ending of messages whose acknowledgement is overdue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::Subscriber;
use courier_host_broker::MessagingError;
use futures_util::StreamExt;

use crate::lattice::Inner;
use crate::pending::Unacked;

/// The most acknowledgements kept while their host is not yet known to serve their
/// target: a host's first acknowledgements can arrive before its heartbeat does.
const MAX_DOUBTFUL: usize = 65_536;
use crate::wire;

impl Inner {
    /// Take the message `seq` from those awaiting acknowledgement, counting its ending in
    /// `outcome` under the same lock, so a snapshot of the counters always balances.
    pub(crate) fn take_unacked(&self, seq: u64, outcome: &AtomicU64) -> Option<Unacked> {
        let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
        let taken = unacked.remove(seq);
        if let Some(taken) = &taken {
            outcome.fetch_add(1, Ordering::Relaxed);
            self.release(taken.len);
            if taken.again {
                self.room_to_resend(&unacked);
            }
        }
        taken
    }

    /// Wake the outbound task if messages wait for room in the resend window, which an
    /// ending has just made.
    pub(crate) fn room_to_resend(&self, pending: &crate::pending::Pending) {
        if pending.marked() > 0 {
            self.resend_marked.store(true, Ordering::Release);
            self.resend_wake.notify_one();
        }
    }

    /// Hand a request's answer to whoever waits for it, if anyone still does.
    pub(crate) fn answer(&self, seq: u64, answer: Result<Vec<u8>, MessagingError>) {
        let waiter = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq);
        if let Some(waiter) = waiter {
            let _ = waiter.send(answer);
        }
    }

    /// Answers on `<replies>.<seq>`: an empty message for a message queued, a refusal in
    /// the headers, NATS's "no responders" when nobody serves the target, or a request's
    /// reply.
    pub(crate) async fn hear_replies(self: Arc<Self>, mut replies: Subscriber) {
        while let Some(reply) = replies.next().await {
            let last = reply.subject.rsplit('.').next().unwrap_or_default();
            let Ok(seq) = last.parse::<u64>() else {
                continue;
            };
            let no_responders = reply.status == Some(async_nats::StatusCode::NO_RESPONDERS);
            if no_responders && self.may_go_again(seq) {
                // Nobody listened, but the directory still hears the target's host: a
                // server failing over, or the host reconnecting. It goes again after
                // `resend_after`, and ends as `no-host` if it is still unheard by its
                // deadline.
                continue;
            }
            let error = wire::take_error(reply.headers.as_ref());
            let outcome = match (no_responders, &error) {
                (true, _) => &self.counters.no_host,
                (false, Some(_)) => &self.counters.refused_there,
                (false, None) => &self.counters.acked,
            };
            if let Some(unacked) = self.take_unacked(seq, outcome) {
                let target = unacked.message.target().clone();
                match error {
                    _ if no_responders => unacked
                        .message
                        .dead_letter(&format!("no-host: no host serves `{target}`")),
                    Some(error) => {
                        let host = wire::get(reply.headers.as_ref(), wire::HOST).unwrap_or("?");
                        let reason = format!(
                            "refused by host `{}`: {}",
                            wire::header_text(host),
                            wire::error_code(&error)
                        );
                        unacked.message.refused_there(&reason, error);
                    }
                    None => unacked.message.delivered(),
                }
                continue;
            }
            let answer = if no_responders {
                Err(MessagingError::TargetNotFound(
                    "no host serves the target".into(),
                ))
            } else if let Some(error) = error {
                Err(error)
            } else {
                Ok(reply.payload.to_vec())
            };
            self.answer(seq, answer);
        }
    }

    /// Batches of acknowledgements from the hosts this run sent to, on
    /// `k.<serving host>.<this host>.<incarnation>`.
    pub(crate) async fn hear_acks(self: Arc<Self>, mut acks: Subscriber) {
        while let Some(batch) = acks.next().await {
            match self.subjects.sending_host(&batch.subject) {
                Some(host) => self.acknowledged(host, &batch.payload),
                None => {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// A batch of acknowledgements from `host`: each message it names was queued there. A
    /// host speaks only for the ids it serves: a sequence number whose message went to an
    /// id the directory does not (yet) list for `host` waits in `doubtful` until a
    /// heartbeat says it does; an acknowledgement that never becomes true leaves its
    /// message to end as `unconfirmed`.
    pub(crate) fn acknowledged(&self, host: &str, payload: &[u8]) {
        let Some(seqs) = wire::decode_seqs(payload) else {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut doubtful = Vec::new();
        let acked: Vec<Unacked> = {
            let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
            let mut acked = Vec::with_capacity(seqs.len());
            for seq in seqs {
                let Some(entry) = unacked.get(seq) else {
                    continue;
                };
                if self.directory.may_answer_for(host, entry.message.target()) {
                    acked.extend(unacked.remove(seq));
                } else {
                    doubtful.push(seq);
                }
            }
            if acked.iter().any(|a| a.again) {
                self.room_to_resend(&unacked);
            }
            self.release(acked.iter().map(|a| a.len).sum());
            self.counters
                .acked
                .fetch_add(acked.len() as u64, Ordering::Relaxed);
            acked
        };
        for unacked in acked {
            unacked.message.delivered();
        }
        if !doubtful.is_empty() {
            let mut waiting = self.doubtful.lock().unwrap_or_else(|e| e.into_inner());
            let room = MAX_DOUBTFUL.saturating_sub(waiting.values().map(Vec::len).sum());
            if doubtful.len() > room {
                self.counters
                    .forged
                    .fetch_add((doubtful.len() - room) as u64, Ordering::Relaxed);
                doubtful.truncate(room);
            }
            waiting
                .entry(host.to_string())
                .or_default()
                .extend(doubtful);
        }
    }

    /// Look again at what `host` acknowledged before the directory listed what it serves:
    /// called when its heartbeat changed. What is still doubtful stays, unless its message
    /// ended meanwhile; what it acknowledged falsely is counted as forged once its message
    /// ends.
    pub(crate) fn recheck_doubtful(&self, host: &str) {
        let Some(seqs) = self
            .doubtful
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(host)
        else {
            return;
        };
        let payload = wire::encode_seqs(&seqs[..seqs.len().min(wire::MAX_ACKS)]);
        let rest = seqs.get(wire::MAX_ACKS..).unwrap_or_default().to_vec();
        self.acknowledged(host, &payload);
        if !rest.is_empty() {
            self.doubtful
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(host.to_string())
                .or_default()
                .extend(rest);
        }
    }

    /// Drop doubtful acknowledgements whose messages already ended, counting them as
    /// forged: no heartbeat of their host ever made them true.
    pub(crate) fn prune_doubtful(&self) {
        let unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
        let mut doubtful = self.doubtful.lock().unwrap_or_else(|e| e.into_inner());
        let mut dropped = 0u64;
        doubtful.retain(|_, seqs| {
            let before = seqs.len();
            seqs.retain(|seq| unacked.contains(*seq));
            dropped += (before - seqs.len()) as u64;
            !seqs.is_empty()
        });
        self.counters.forged.fetch_add(dropped, Ordering::Relaxed);
    }

    /// Whether message `seq`, just answered "no responders", is numbered and may go
    /// again: the directory still hears a host that serves its target alone. Marks it so.
    fn may_go_again(&self, seq: u64) -> bool {
        let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = unacked.get_mut(seq) else {
            return false;
        };
        if entry.stream_seq == 0 || !self.directory.serves_alone(entry.message.target()) {
            return false;
        }
        entry.no_responders = true;
        true
    }

    /// Send again the numbered messages unacknowledged `resend_after` after they went
    /// out, while the directory still hears their target's host; dead-letter messages whose
    /// acknowledgement is overdue: `unconfirmed` (the serving host may have queued them
    /// and crashed, or its acknowledgement was lost, or not), or `no-host` when the last
    /// answer was that nobody listened.
    pub(crate) async fn expire_unacked(self: Arc<Self>) {
        let timeout = self.config.ack_timeout;
        let resend_after = self.resend_after;
        let mut ticks = tokio::time::interval((resend_after / 2).max(Duration::from_millis(10)));
        loop {
            ticks.tick().await;
            let (overdue, marked) = {
                let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
                let overdue = unacked.pop_overdue(timeout);
                for entry in &overdue {
                    self.release(entry.len);
                    let outcome = if entry.no_responders {
                        &self.counters.no_host
                    } else {
                        &self.counters.unconfirmed
                    };
                    outcome.fetch_add(1, Ordering::Relaxed);
                }
                let marked = unacked.mark(|entry| {
                    entry
                        .published
                        .is_some_and(|at| at.elapsed() >= resend_after)
                        && self.directory.serves_alone(entry.message.target())
                });
                // Marked now, or still waiting for room in the resend window that the
                // overdue just left.
                let marked = marked + unacked.marked();
                if marked > 0 {
                    self.resend_marked.store(true, Ordering::Release);
                }
                (overdue, marked)
            };
            if marked > 0 {
                self.resend_wake.notify_one();
            }
            self.prune_doubtful();
            for unacked in overdue {
                let reason = if unacked.no_responders {
                    format!(
                        "no-host: no host took it for `{}` within {}, though one was heard from",
                        unacked.message.target(),
                        courier_host_core::units::format_duration(timeout)
                    )
                } else {
                    format!(
                        "unconfirmed: no acknowledgement within {}; it may have arrived",
                        courier_host_core::units::format_duration(timeout)
                    )
                };
                unacked.message.dead_letter(&reason);
            }
        }
    }
}
