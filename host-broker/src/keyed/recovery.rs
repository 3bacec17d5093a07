//! What a crash left of a durable keyed component's keys: messages stored (accepted) and
//! not yet handled, and outbox entries committed and not yet delivered.
//!
//! A key's entry is made on its first message, and at that moment new messages are being
//! stored for it and queued in its mailbox, so it cannot tell a message a crash left from
//! one just sent. So the keys are recovered once, when the component is registered, before
//! any sender can reach a key: every key the store holds unconsumed messages or undelivered
//! outbox entries for is activated then, its stored messages queued as its first batch
//! (ahead of anything sent after) and its outbox sent again by its dispatcher, as for a
//! durable component at its spawn. A key with only a state is not activated: its state
//! loads when its next message makes it; one with timers is woken when the earliest is due
//! (`wakeups`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use courier_host_core::MessagingError;
use courier_host_store::{Kind, Store};

use super::{Stored, Template};
use crate::error::BrokerError;
use crate::keying::check_key;
use crate::routing::Router;

impl Template {
    /// Activate every key of this durable component that a crash left stored messages or
    /// outbox entries for; returns how many keys. Called at registration, before the
    /// template can be reached.
    pub(crate) async fn recover_keys(
        self: &Arc<Self>,
        router: &Arc<Router>,
        store: &Arc<dyn Store>,
    ) -> Result<usize, BrokerError> {
        let failed = |source| BrokerError::Store {
            component: self.id.clone(),
            source,
        };
        let prefix = format!("{}/", self.id);
        let keys: Vec<String> = store
            .actors()
            .await
            .map_err(failed)?
            .into_iter()
            .filter(|id| {
                id.strip_prefix(&prefix)
                    .is_some_and(|key| check_key(key).is_ok())
            })
            .collect();
        let mut recovered = 0;
        for key in keys {
            let entry = loop {
                let (_state, messages, outbox) =
                    crate::durable::recover(&**store, &key.as_str().into())
                        .await
                        .map_err(failed)?;
                if messages.is_empty() && outbox.is_empty() {
                    break None;
                }
                let charge = Charge {
                    messages: messages.len() as u64,
                    bytes: messages.iter().map(|m| m.payload().len() as u64).sum(),
                    // A publication is counted once per subscriber when it is fanned out.
                    resent: outbox.iter().filter(|e| e.kind == Kind::Message).count() as u64,
                };
                match self.activate(router, &key, Stored { messages, outbox }) {
                    Ok(entry) => break Some((entry, charge)),
                    // More keys are being put away than the bound lets in: wait for them,
                    // then load again what the store still holds.
                    Err(MessagingError::MailboxFull(_)) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(MessagingError::ShuttingDown) => return Err(BrokerError::ShuttingDown),
                    Err(other) => {
                        return Err(BrokerError::Recovery {
                            component: self.id.clone(),
                            reason: format!("key `{key}` could not be activated: {other}"),
                        });
                    }
                }
            };
            let Some((entry, charge)) = entry else {
                // Nothing to handle: its timers, if it has any, wake it when due.
                self.wake_for_timers(&**store, &key.as_str().into()).await;
                continue;
            };
            // Accepted in an earlier run and counted there: sent anew here, and charged to
            // the budgets like any queued message, as a durable component's at its spawn.
            let shared = &entry.shared;
            router
                .counters
                .sent
                .fetch_add(charge.messages + charge.resent, Ordering::Relaxed);
            shared
                .queued
                .messages
                .fetch_add(charge.messages, Ordering::Relaxed);
            shared
                .queued
                .bytes
                .fetch_add(charge.bytes, Ordering::Relaxed);
            router
                .counters
                .queued_bytes
                .fetch_add(charge.bytes, Ordering::Relaxed);
            entry.start();
            recovered += 1;
        }
        if recovered > 0 {
            tracing::info!(component = %self.id, keys = recovered, "activated the keys a crash left stored messages or outbox entries for");
        }
        Ok(recovered)
    }
}

/// What a recovered key's stored messages and outbox count for.
struct Charge {
    messages: u64,
    bytes: u64,
    resent: u64,
}
