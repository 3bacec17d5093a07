//! Routing to durable components: a message for one is appended to its stored mailbox
//! before its sender hears `Ok`, then queued (`durable` says what the store keeps and when).

use std::sync::Arc;
use std::time::Duration;

use courier_host_core::MessagingError;
use courier_host_store::{Appended, Store};

use crate::durable::storage_error;
use crate::mailbox::Envelope;
use crate::registry::{Entry, release};
use crate::routing::{Refused, Router};

impl Router {
    /// Put `envelope` (a message) in the durable `entry`'s mailbox once the store holds it:
    /// room in the mailbox is taken first, so nothing is stored that would then be refused;
    /// the store's answer decides; and only a stored message goes in, naming its position.
    /// Whatever is refused is counted so and handed back. The message was already counted
    /// sent and admitted. `seq` is its durable sender's sequence number, if it has one: a
    /// message the store already holds from that sender is not queued again, and counted
    /// delivered (its first copy is, or was, handled).
    pub(crate) async fn store_then_enqueue(
        self: Arc<Router>,
        entry: Arc<Entry>,
        store: Arc<dyn Store>,
        envelope: Envelope,
        wait: Option<Duration>,
        seq: Option<u64>,
    ) -> Result<(), Refused> {
        let reserved = match wait {
            None => entry.try_reserve(),
            Some(wait) => match tokio::time::timeout(wait, entry.reserve()).await {
                Ok(Ok(permit)) => Ok(permit),
                Ok(Err(_)) => Err(false),
                Err(_) => Err(true),
            },
        };
        let permit = match reserved {
            Ok(permit) => permit,
            Err(full) => {
                self.refused(Some(&entry));
                let error = if full {
                    MessagingError::MailboxFull(entry.shared.id.to_string())
                } else {
                    crate::routing::closed_error(&entry)
                };
                return Err(Refused { error, envelope });
            }
        };
        let envelope = self
            .charge(&entry, envelope)
            .inspect_err(|_| self.refused(Some(&entry)))?;
        let len = envelope.payload().len() as u64;
        let Envelope::Message {
            sender,
            payload,
            trace,
            ..
        } = envelope
        else {
            unreachable!("only messages are stored")
        };
        let record = crate::outbox::stored_entry(&entry.shared.id, &sender, payload.clone(), seq);
        let stored = store.append(vec![record]).await;
        let position = match stored.as_deref() {
            Ok([appended]) => appended.position(),
            Ok(_) => None,
            Err(_) => None,
        };
        match (stored, position) {
            (Ok(appended), None) if seq.is_some() && appended == [Appended::Duplicate] => {
                drop(permit);
                release(&entry.shared, &self.counters, 1, len);
                crate::metrics::bump(&self.counters.delivered);
                Ok(())
            }
            (Ok(_), Some(position)) => {
                permit.send(Envelope::Message {
                    sender,
                    payload,
                    position: Some(position),
                    trace,
                    published: false,
                });
                Ok(())
            }
            (stored, _) => {
                drop(permit);
                release(&entry.shared, &self.counters, 1, len);
                self.refused(Some(&entry));
                let error = match stored {
                    Err(err) => storage_error(&entry.shared.id, &err),
                    // An entry without a sequence number is never a duplicate, and one
                    // entry in gives one answer out: a store that says otherwise is broken.
                    Ok(_) => MessagingError::TargetCrashed(format!(
                        "storage: component `{}`: the store did not say where it kept the message",
                        entry.shared.id
                    )),
                };
                Err(Refused {
                    error,
                    envelope: Envelope::traced(sender, payload, trace.map(|trace| *trace)),
                })
            }
        }
    }
}
