//! The dead-letter record: messages that were accepted but could not be delivered.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use courier_host_core::ComponentId;
use courier_host_store::{Kind, Store, StoreError};

use crate::text::bounded_text;

/// What kind of message a dead letter was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A fire-and-forget message.
    Message,
    /// A request awaiting a reply.
    Request,
}

impl MessageKind {
    /// `message` or `request`, as written in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Message => "message",
            MessageKind::Request => "request",
        }
    }
}

/// One message that will never be delivered, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Who sent it.
    pub sender: ComponentId,
    /// Whom it was for.
    pub target: ComponentId,
    /// Message or request.
    pub kind: MessageKind,
    /// The first [`DEAD_LETTER_PAYLOAD_LIMIT`] bytes of the payload.
    pub payload: Vec<u8>,
    /// The payload's full length.
    pub payload_len: usize,
    /// Why it was not delivered (the trap, the stop, the expired deadline...), cut to 1 KiB.
    pub reason: String,
    /// When it was dead-lettered.
    pub at: SystemTime,
}

/// How much of each payload the record keeps: enough to recognise a message, bounded so a
/// flood of large dead letters cannot exhaust the host's memory.
pub const DEAD_LETTER_PAYLOAD_LIMIT: usize = 1024;

/// Default number of dead letters kept; older ones are dropped from the record (they stay
/// counted in [`Accounting::dead_lettered`](crate::Accounting::dead_lettered)).
pub const DEFAULT_DEAD_LETTER_CAPACITY: usize = 1000;

/// A bounded record of the most recent dead letters, and a count of all of them.
#[derive(Debug)]
pub(crate) struct DeadLetters {
    capacity: usize,
    inner: Mutex<Record>,
}

#[derive(Debug, Default)]
struct Record {
    recent: VecDeque<DeadLetter>,
    total: u64,
}

impl DeadLetters {
    pub(crate) fn new(capacity: usize) -> Self {
        DeadLetters {
            capacity,
            inner: Mutex::new(Record::default()),
        }
    }

    pub(crate) fn record(
        &self,
        sender: ComponentId,
        target: ComponentId,
        kind: MessageKind,
        payload: &[u8],
        reason: &str,
    ) -> DeadLetter {
        let reason = bounded_text(reason);
        tracing::warn!(%sender, %target, kind = kind.as_str(), %reason, "dead letter");
        let letter = DeadLetter {
            sender,
            target,
            kind,
            payload: payload[..payload.len().min(DEAD_LETTER_PAYLOAD_LIMIT)].to_vec(),
            payload_len: payload.len(),
            reason,
            at: SystemTime::now(),
        };
        let mut record = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        record.total += 1;
        if self.capacity == 0 {
            return letter;
        }
        if record.recent.len() == self.capacity {
            record.recent.pop_front();
        }
        record.recent.push_back(letter.clone());
        letter
    }

    /// Put `kept`, dead letters an earlier run of the host kept in its store (oldest
    /// first), ahead of those recorded since, within the capacity: the most recent stay.
    /// They are not counted in the total, which counts what this run dead-lettered.
    pub(crate) fn restore(&self, kept: Vec<DeadLetter>) {
        let mut record = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.capacity.saturating_sub(record.recent.len());
        let skip = kept.len().saturating_sub(room);
        for letter in kept.into_iter().skip(skip).rev() {
            record.recent.push_front(letter);
        }
    }

    pub(crate) fn recent(&self) -> Vec<DeadLetter> {
        let record = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        record.recent.iter().cloned().collect()
    }

    pub(crate) fn total(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// Keep `letter`, a dead letter of a durable component, in `store`, so it is still listed
/// after a restart. Written on its own task: whoever dead-letters does not wait on the
/// disk, and a store that refuses it loses only the record, which is logged.
pub(crate) fn keep(store: &Arc<dyn Store>, letter: &DeadLetter) {
    let kept = courier_host_store::DeadLetter {
        sender: letter.sender.to_string(),
        target: letter.target.to_string(),
        kind: match letter.kind {
            MessageKind::Message => Kind::Message,
            MessageKind::Request => Kind::Request,
        },
        payload: Bytes::copy_from_slice(&letter.payload),
        payload_len: letter.payload_len as u64,
        reason: letter.reason.clone(),
        at: letter.at,
    };
    let written = store.dead_letter(kept);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        if let Err(err) = written.await {
            tracing::warn!(error = %err, "a dead letter of a durable component was not kept in the store");
        }
    });
}

/// The dead letters `store` keeps, oldest first, as the broker lists them.
pub(crate) async fn kept(store: &dyn Store) -> Result<Vec<DeadLetter>, StoreError> {
    let kept = store.dead_letters().await?;
    Ok(kept
        .letters
        .into_iter()
        .map(|letter| DeadLetter {
            sender: letter.sender.into(),
            target: letter.target.into(),
            kind: match letter.kind {
                Kind::Request => MessageKind::Request,
                Kind::Message | Kind::Publication => MessageKind::Message,
            },
            payload: letter.payload.to_vec(),
            payload_len: letter.payload_len as usize,
            reason: letter.reason,
            at: letter.at,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_keeps_the_most_recent_and_counts_all() {
        let letters = DeadLetters::new(2);
        for i in 0..5u8 {
            letters.record(
                "a".into(),
                "b".into(),
                MessageKind::Message,
                &[i],
                &format!("n{i}"),
            );
        }
        let recent = letters.recent();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].reason, "n3");
        assert_eq!(recent[1].reason, "n4");
        assert_eq!(letters.total(), 5);
    }

    #[test]
    fn restored_letters_go_ahead_of_this_runs_within_the_capacity_and_uncounted() {
        let letters = DeadLetters::new(3);
        letters.record("a".into(), "b".into(), MessageKind::Message, b"now", "now");
        let kept = letters.recent()[0].clone();
        let earlier = |reason: &str| DeadLetter {
            reason: reason.into(),
            ..kept.clone()
        };
        letters.restore(vec![earlier("old"), earlier("older"), earlier("newer")]);
        let reasons: Vec<String> = letters.recent().into_iter().map(|l| l.reason).collect();
        assert_eq!(reasons, ["older", "newer", "now"], "the most recent kept");
        assert_eq!(
            letters.total(),
            1,
            "counted in the run that dead-lettered them"
        );
    }

    #[test]
    fn large_payloads_are_kept_truncated_with_their_length() {
        let letters = DeadLetters::new(1);
        letters.record(
            "a".into(),
            "b".into(),
            MessageKind::Request,
            &[7; 5000],
            &"a reason a guest made long ".repeat(1000),
        );
        let letter = &letters.recent()[0];
        assert_eq!(letter.payload.len(), DEAD_LETTER_PAYLOAD_LIMIT);
        assert_eq!(letter.payload_len, 5000);
        assert!(letter.reason.len() < 1100, "the reason is kept bounded");
        assert!(letter.reason.ends_with("(27000 bytes in all)"));
    }
}
