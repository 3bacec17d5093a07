//! What comes back for what this host sent: acknowledgements, refusals, replies, and the
//! ending of messages whose acknowledgement is overdue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::Subscriber;
use courier_host_broker::MessagingError;
use futures_util::StreamExt;

use crate::lattice::{Inner, Unacked};
use crate::wire;

impl Inner {
    /// Take the message `seq` from those awaiting acknowledgement, counting its ending in
    /// `outcome` under the same lock, so a snapshot of the counters always balances.
    pub(crate) fn take_unacked(&self, seq: u64, outcome: &AtomicU64) -> Option<Unacked> {
        let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
        let taken = unacked.remove(&seq);
        if let Some(taken) = &taken {
            outcome.fetch_add(1, Ordering::Relaxed);
            self.release(taken.len);
        }
        taken
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

    /// Acknowledgements and replies: `<replies>.<seq>`, an empty message for a message
    /// queued, a refusal in the headers, NATS's "no responders" when nobody serves the
    /// target, or a request's reply.
    pub(crate) async fn hear_replies(self: Arc<Self>, mut replies: Subscriber) {
        while let Some(reply) = replies.next().await {
            let last = reply.subject.rsplit('.').next().unwrap_or_default();
            if last == wire::ACKS {
                self.acknowledged(&reply.payload);
                continue;
            }
            let Ok(seq) = last.parse::<u64>() else {
                continue;
            };
            let no_responders = reply.status == Some(async_nats::StatusCode::NO_RESPONDERS);
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
                        unacked.message.dead_letter(&format!(
                            "refused by host `{}`: {}",
                            wire::header_text(host),
                            wire::error_code(&error)
                        ));
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

    /// A batch of acknowledgements: each message it names was queued on the serving host.
    pub(crate) fn acknowledged(&self, payload: &[u8]) {
        let Some(seqs) = wire::decode_seqs(payload) else {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let acked: Vec<Unacked> = {
            let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
            let acked: Vec<Unacked> = seqs.iter().filter_map(|seq| unacked.remove(seq)).collect();
            self.release(acked.iter().map(|a| a.len).sum());
            self.counters
                .acked
                .fetch_add(acked.len() as u64, Ordering::Relaxed);
            acked
        };
        for unacked in acked {
            unacked.message.delivered();
        }
    }

    /// Dead-letter messages whose acknowledgement is overdue: the serving host may have
    /// queued them (and crashed, or its acknowledgement was lost) or not.
    pub(crate) async fn expire_unacked(self: Arc<Self>) {
        let timeout = self.config.ack_timeout;
        let mut ticks = tokio::time::interval((timeout / 4).max(Duration::from_millis(10)));
        loop {
            ticks.tick().await;
            let overdue: Vec<Unacked> = {
                let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
                let mut overdue = Vec::new();
                while let Some(entry) = unacked.first_entry() {
                    if entry.get().queued.elapsed() < timeout {
                        break;
                    }
                    let entry = entry.remove();
                    self.release(entry.len);
                    overdue.push(entry);
                }
                self.counters
                    .unconfirmed
                    .fetch_add(overdue.len() as u64, Ordering::Relaxed);
                overdue
            };
            for unacked in overdue {
                unacked.message.dead_letter(&format!(
                    "unconfirmed: no acknowledgement within {}; it may have arrived",
                    courier_host_core::units::format_duration(timeout)
                ));
            }
        }
    }
}
