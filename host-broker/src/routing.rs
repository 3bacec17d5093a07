//! Routing: from a sender's call to a target's mailbox.
//!
//! Every way into a mailbox passes the same checks, in the same order, and the same
//! enqueue: [`Router::admit`] (shutting down, capability, size, then the registry) and
//! [`Router::enqueue`] (the mailbox's room). A message refused on the way is counted once,
//! as refused, and handed back to its sender with the reason.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use courier_host_core::{ComponentId, MessagingError, TraceContext};
use tokio::sync::mpsc;

use crate::config::BrokerConfig;
use crate::dead_letter::{DeadLetters, MessageKind};
use crate::error::SendError;
use crate::ids::MAX_NAME_BYTES;
use crate::mailbox::Envelope;
use crate::metrics::{BrokerCounters, bump};
use crate::registry::{ComponentState, Entry, Registry, release};
use crate::remote::{Remote, RemoteMessage, RemoteRefusal, RemoteSlot};
use crate::text::bounded;

/// Whether a sender may reach the id or topic it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// The host itself, which is trusted: capabilities do not apply.
    Host,
    /// A component whose capabilities allow it.
    Granted,
    /// A component whose capabilities do not allow it.
    Denied,
}

impl Access {
    /// A component's verdict from its capability check.
    pub(crate) fn of_component(allowed: bool) -> Access {
        if allowed {
            Access::Granted
        } else {
            Access::Denied
        }
    }
}

/// A message the router did not queue: why, and the message itself, which goes back to
/// whoever sent it.
pub(crate) struct Refused {
    pub(crate) error: MessagingError,
    pub(crate) envelope: Envelope,
}

impl From<Refused> for SendError {
    fn from(refused: Refused) -> SendError {
        SendError::new(refused.error, refused.envelope.into_payload())
    }
}

/// The mailbox a component last sent to.
///
/// A component that sends to the same target again and again (the common case) then skips
/// the registry's lock and hash lookup. Only its own actor uses it, so the lock is never
/// contended. An entry that was removed from the registry or closed is not used again.
///
/// The entry is held weakly: the registry alone keeps mailboxes open, so two components that
/// message each other (or one that messages itself) do not keep each other's actors alive
/// once the broker is dropped.
#[derive(Default)]
pub(crate) struct RouteCache {
    last: std::sync::Mutex<Weak<Entry>>,
}

impl RouteCache {
    fn get(&self, target: &str) -> Option<Arc<Entry>> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.upgrade()
            .filter(|entry| &*entry.shared.id == target && entry.shared.is_current())
    }

    fn put(&self, entry: &Arc<Entry>) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(entry);
    }
}

/// What [`Router::route_or_store`] did with a message it did not refuse.
pub(crate) enum Routed {
    /// It is in the target's mailbox (or on its way to another host).
    Queued,
    /// Its durable target takes it once it is stored: the answer comes with this future.
    Storing(Pin<Box<dyn Future<Output = Result<(), Refused>> + Send + 'static>>),
}

/// Where an admitted send goes.
pub(crate) enum Target {
    /// A component registered here.
    Local(Arc<Entry>),
    /// Not registered here: the attached remote carries it to another host.
    Remote(Arc<dyn Remote>),
}

/// Keyed components as the router sees them: the keys it makes on their first message, and
/// the keys other hosts run. Implemented by `keyed`, which sits above the router and holds
/// the components' templates; the broker gives it to the router when it makes both.
pub(crate) trait Keys: Send + Sync {
    /// The entry for `target`, made now if `target` is `<keyed component>/<key>`: `None` if
    /// it is no keyed component's, an error naming the component and key if the key is
    /// refused or the broker is shutting down.
    fn activate(&self, router: &Router, target: &str)
    -> Option<Result<Arc<Entry>, MessagingError>>;

    /// The entry of `target` for what another host sent it: as [`activate`](Self::activate),
    /// but only for a key of a component placed over the hosts that serve it and placed
    /// here (the refusal if it is placed on another host).
    fn activate_arrival(
        &self,
        router: &Router,
        target: &str,
    ) -> Option<Result<Arc<Entry>, MessagingError>>;

    /// The remote to send `target` to, if it is a key of a component placed over several
    /// hosts and the remote places it on another host.
    fn placed_elsewhere(&self, router: &Router, target: &str) -> Option<Arc<dyn Remote>>;
}

/// The broker's routing state: the registry and what every send is counted in.
pub(crate) struct Router {
    pub(crate) config: BrokerConfig,
    pub(crate) registry: Registry,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) counters: Arc<BrokerCounters>,
    pub(crate) dead_letters: Arc<DeadLetters>,
    /// Other hosts, once a lattice is attached.
    pub(crate) remote: RemoteSlot,
    /// Keyed components, whose keys are made on their first message.
    pub(crate) keys: Arc<dyn Keys>,
    /// This router, for the remote messages that end in its counters.
    pub(crate) me: Weak<Router>,
}

impl Router {
    pub(crate) fn new(config: BrokerConfig, keys: Arc<dyn Keys>) -> Arc<Router> {
        Arc::new_cyclic(|me| Router {
            dead_letters: Arc::new(DeadLetters::new(config.dead_letter_capacity)),
            config,
            registry: Registry::default(),
            shutting_down: AtomicBool::new(false),
            counters: Arc::default(),
            remote: RemoteSlot::new(),
            keys,
            me: me.clone(),
        })
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// The checks every send and publication passes, in this order: the broker is not
    /// shutting down, `name` is not longer than any id, the sender may reach `name`, the
    /// payload is within the limit.
    ///
    /// The capability comes before anything else about the target, so a denied sender
    /// learns nothing about which ids exist.
    pub(crate) fn check_sender(
        &self,
        name: &str,
        payload_len: usize,
        access: Access,
    ) -> Result<(), MessagingError> {
        if self.is_shutting_down() {
            return Err(MessagingError::ShuttingDown);
        }
        // No id is longer (spawn refuses one), so such a name reaches nothing; it is cut
        // before it is logged or handed back.
        if name.len() > MAX_NAME_BYTES {
            return Err(MessagingError::TargetNotFound(bounded(name, 64)));
        }
        // Logged by the sender's own messaging, which holds it to a rate.
        if access == Access::Denied {
            return Err(MessagingError::AccessDenied(name.to_string()));
        }
        if payload_len > self.config.max_payload_bytes {
            return Err(MessagingError::PayloadTooLarge(
                self.config.max_payload_bytes as u64,
            ));
        }
        Ok(())
    }

    /// [`check_sender`](Self::check_sender), then the target's entry: from `cache` if it
    /// holds it, else from the registry. A target that has stopped or failed is refused.
    /// One not registered here goes to the remote, if one is attached.
    fn admit(
        &self,
        target: &str,
        payload_len: usize,
        access: Access,
        cache: Option<&RouteCache>,
    ) -> Result<Target, (MessagingError, Option<Arc<Entry>>)> {
        self.check_sender(target, payload_len, access)
            .map_err(|err| (err, None))?;
        // A key another host of the lattice runs; only looked for while one is attached, so
        // a host without a lattice pays one load here, not a call.
        if self.remote.is_attached()
            && let Some(remote) = self.keys.placed_elsewhere(self, target)
        {
            return Ok(Target::Remote(remote));
        }
        if let Some(entry) = cache.and_then(|cache| cache.get(target)) {
            touch(&entry);
            return Ok(Target::Local(entry));
        }
        let entry = match self.local_entry(target) {
            Some(found) => found.map_err(|err| (err, None))?,
            None => {
                return match self.remote.get() {
                    Some(remote) => Ok(Target::Remote(remote)),
                    None => Err((MessagingError::TargetNotFound(target.to_string()), None)),
                };
            }
        };
        touch(&entry);
        if let Some(cache) = cache {
            cache.put(&entry);
        }
        if entry.shared.is_closed() {
            return Err((closed_error(&entry), Some(entry)));
        }
        Ok(Target::Local(entry))
    }

    /// Count `envelope` as queued for `entry` and charge its payload to the mailbox's byte
    /// budget and the broker's: a mailbox is full when either its message count or its
    /// bytes would pass the bound.
    pub(crate) fn charge(&self, entry: &Entry, envelope: Envelope) -> Result<Envelope, Refused> {
        let shared = &entry.shared;
        // Counted before it is in the mailbox, so a request its sender makes next sees it
        // and is not handed off ahead of it. Sequentially consistent with the look at
        // `retired` below and a passivation's retire-then-read of the count, so a key's
        // passivation sees either the message counted or its sender sees the key retired.
        shared.queued.messages.fetch_add(1, Ordering::SeqCst);
        if shared.keyed.is_some() && shared.is_retired() {
            release(shared, &self.counters, 1, 0);
            return Err(Refused {
                error: MessagingError::MailboxFull(shared.id.to_string()),
                envelope,
            });
        }
        let len = envelope.payload().len() as u64;
        if len == 0 {
            return Ok(envelope);
        }
        let in_mailbox = shared.queued.bytes.fetch_add(len, Ordering::Relaxed) + len;
        let in_broker = self.counters.queued_bytes.fetch_add(len, Ordering::Relaxed) + len;
        if in_mailbox > shared.mailbox_bytes || in_broker > self.config.max_queued_bytes {
            release(shared, &self.counters, 1, len);
            return Err(Refused {
                error: MessagingError::MailboxFull(shared.id.to_string()),
                envelope,
            });
        }
        Ok(envelope)
    }

    /// Put `envelope` in `entry`'s mailbox if there is room now, in messages and in bytes.
    ///
    /// A key that is being put away takes nothing more: its message goes to the key's
    /// successor, which handles it once the old instance has ended.
    pub(crate) fn enqueue(&self, entry: &Entry, envelope: Envelope) -> Result<(), Refused> {
        let envelope = match self.charge(entry, envelope) {
            Err(Refused { envelope, .. })
                if entry.shared.keyed.is_some() && entry.shared.is_retired() =>
            {
                return match self.successor(&entry.shared.id) {
                    Ok(successor) => self.enqueue(&successor, envelope),
                    Err(error) => Err(Refused { error, envelope }),
                };
            }
            charged => charged?,
        };
        entry.try_send(envelope).map_err(|err| {
            let (error, envelope) = match err {
                mpsc::error::TrySendError::Full(envelope) => (
                    MessagingError::MailboxFull(entry.shared.id.to_string()),
                    envelope,
                ),
                mpsc::error::TrySendError::Closed(envelope) => (closed_error(entry), envelope),
            };
            release(
                &entry.shared,
                &self.counters,
                1,
                envelope.payload().len() as u64,
            );
            Refused { error, envelope }
        })
    }

    /// Put `envelope` in `entry`'s mailbox, waiting up to `wait` for room.
    pub(crate) async fn enqueue_waiting(
        &self,
        entry: &Entry,
        envelope: Envelope,
        wait: Duration,
    ) -> Result<(), Refused> {
        // Reserving first keeps the envelope here if the wait runs out, so it can go back.
        match tokio::time::timeout(wait, entry.reserve()).await {
            Ok(Ok(permit)) => {
                permit.send(self.charge(entry, envelope)?);
                Ok(())
            }
            Ok(Err(_)) => Err(Refused {
                error: closed_error(entry),
                envelope,
            }),
            Err(_) => Err(Refused {
                error: MessagingError::MailboxFull(entry.shared.id.to_string()),
                envelope,
            }),
        }
    }

    /// Count a refusal, against the target too when it is known.
    pub(crate) fn refused(&self, entry: Option<&Entry>) {
        bump(&self.counters.refused);
        if let Some(entry) = entry {
            bump(&entry.shared.metrics.refused);
        }
    }

    /// Count a send of `len` bytes to `target` and run the checks; a refusal is counted,
    /// against the target too when it is known.
    pub(crate) fn admit_counted(
        &self,
        target: &str,
        len: usize,
        access: Access,
        cache: Option<&RouteCache>,
    ) -> Result<Target, MessagingError> {
        bump(&self.counters.sent);
        self.admit(target, len, access, cache)
            .map_err(|(error, entry)| {
                // A target refused before the registry was consulted (a denial, a payload
                // too large) still counts it against the target, if there is one.
                let entry = entry.or_else(|| self.registry.get(target));
                self.refused(entry.as_deref());
                error
            })
    }

    /// Count a send of `envelope` to `target` and run the checks; a refused envelope goes
    /// back with the reason.
    pub(crate) fn admit_envelope(
        &self,
        target: &str,
        envelope: Envelope,
        access: Access,
        cache: Option<&RouteCache>,
    ) -> Result<(Target, Envelope), Refused> {
        match self.admit_counted(target, envelope.payload().len(), access, cache) {
            Ok(admitted) => Ok((admitted, envelope)),
            Err(error) => Err(Refused { error, envelope }),
        }
    }

    /// Hand a message for `target` to the remote, which carries it to the host that serves
    /// it: already counted sent, it ends through the [`RemoteMessage`].
    pub(crate) fn route_remote(
        &self,
        remote: &dyn Remote,
        target: &str,
        envelope: Envelope,
    ) -> Result<(), Refused> {
        let Envelope::Message {
            sender,
            payload,
            trace,
            ..
        } = envelope
        else {
            unreachable!("requests go to the remote through `Router::request`")
        };
        let message = RemoteMessage::new(self.me.clone(), sender, target.into(), payload)
            .with_trace(trace.map(|trace| *trace));
        remote
            .send(message)
            .map_err(|RemoteRefusal { error, message }| {
                let envelope = Envelope::traced(
                    message.sender().clone(),
                    message.payload().clone(),
                    message.trace(),
                );
                message.refused();
                Refused { error, envelope }
            })
    }

    /// Route `envelope` (a message or a request) to `target` if its mailbox has room now:
    /// counted as sent, then queued, or counted refused and handed back.
    ///
    /// A durable target takes a message only once it is stored, which this cannot wait for:
    /// it is refused, pointing the caller to the waiting way in
    /// ([`route_or_store`](Self::route_or_store)).
    pub(crate) fn route(
        &self,
        target: &str,
        envelope: Envelope,
        access: Access,
        cache: Option<&RouteCache>,
    ) -> Result<(), Refused> {
        match self.admit_envelope(target, envelope, access, cache)? {
            (Target::Local(entry), envelope) if entry.shared.durable.is_some() => {
                self.refused(Some(&entry));
                Err(Refused {
                    error: crate::durable::needs_waiting(&entry.shared.id),
                    envelope,
                })
            }
            (Target::Local(entry), envelope) => self
                .enqueue(&entry, envelope)
                .inspect_err(|_| self.refused(Some(&entry))),
            (Target::Remote(remote), envelope) => self.route_remote(&*remote, target, envelope),
        }
    }

    /// [`route`](Self::route) a message, except that one for a durable target is queued once
    /// the store holds it: the answer is then the future to await. `wait` is how long to
    /// wait for room in a full mailbox (none: refused at once).
    pub(crate) fn route_or_store(
        self: &Arc<Router>,
        target: &str,
        envelope: Envelope,
        access: Access,
        cache: Option<&RouteCache>,
        wait: Option<Duration>,
    ) -> Result<Routed, Refused> {
        match self.admit_envelope(target, envelope, access, cache)? {
            (Target::Local(entry), envelope) => match entry.shared.durable.as_ref() {
                Some(_) if entry.shared.keyed.is_some() => Ok(Routed::Storing(Box::pin(
                    self.clone().store_for_key(entry, envelope, wait, None),
                ))),
                Some(durable) => {
                    let store = durable.store.clone();
                    let storing = self
                        .clone()
                        .store_then_enqueue(entry, store, envelope, wait, None);
                    Ok(Routed::Storing(Box::pin(storing)))
                }
                None => self
                    .enqueue(&entry, envelope)
                    .inspect_err(|_| self.refused(Some(&entry)))
                    .map(|()| Routed::Queued),
            },
            (Target::Remote(remote), envelope) => self
                .route_remote(&*remote, target, envelope)
                .map(|()| Routed::Queued),
        }
    }

    /// Store a message for a durable key, then queue it, as for any durable component; if
    /// the key was put away meanwhile (its entry retired before the message was counted in),
    /// that was no refusal: the key's successor takes the message.
    pub(crate) async fn store_for_key(
        self: Arc<Router>,
        mut entry: Arc<Entry>,
        mut envelope: Envelope,
        wait: Option<Duration>,
        seq: Option<u64>,
    ) -> Result<(), Refused> {
        loop {
            let store = match entry.shared.durable.as_ref() {
                Some(durable) => durable.store.clone(),
                None => unreachable!("a durable key's successor is durable"),
            };
            let stored = self
                .clone()
                .store_then_enqueue(entry.clone(), store, envelope, wait, seq)
                .await;
            match stored {
                Err(refused) if entry.shared.is_retired() => {
                    // Counted refused on the way out; it is not.
                    self.counters.refused.fetch_sub(1, Ordering::Relaxed);
                    entry.shared.metrics.refused.fetch_sub(1, Ordering::Relaxed);
                    envelope = refused.envelope;
                    entry = match self.successor(&entry.shared.id) {
                        Ok(successor) => successor,
                        Err(error) => {
                            self.refused(None);
                            return Err(Refused { error, envelope });
                        }
                    };
                }
                stored => return stored,
            }
        }
    }

    /// The entry that serves `target` on this host: the registered one, or the instance of
    /// a key made now for it; `None` if nothing here serves it.
    ///
    /// A key's entry can be put away, all the way to its end, between the registry's answer
    /// and a sender's next look at it (a sender held up by a busy machine for as long as an
    /// idle key's passivation takes): a key's entry that is retired and closed is never the
    /// answer, its successor is. One retired but still open is, since counting a message
    /// into it sends it on to the successor in order ([`enqueue`](Self::enqueue)).
    pub(crate) fn local_entry(&self, target: &str) -> Option<Result<Arc<Entry>, MessagingError>> {
        let entry = match self.registry.get(target) {
            Some(entry) => entry,
            None => match self.keys.activate(self, target)? {
                Ok(entry) => entry,
                Err(error) => return Some(Err(error)),
            },
        };
        Some(self.past_put_away(target, entry))
    }

    /// `entry`, read for `target` a moment ago, or the successor of the key it was if that
    /// one has been put away to its end since.
    pub(crate) fn past_put_away(
        &self,
        target: &str,
        mut entry: Arc<Entry>,
    ) -> Result<Arc<Entry>, MessagingError> {
        while entry.shared.keyed.is_some() && entry.shared.is_retired() && entry.shared.is_closed()
        {
            entry = self.successor(target)?;
        }
        Ok(entry)
    }

    /// The entry that serves the key `id` now that its last one was retired: registered
    /// since, or made now.
    fn successor(&self, id: &str) -> Result<Arc<Entry>, MessagingError> {
        match self.registry.get(id) {
            Some(entry) => Ok(entry),
            None => self
                .keys
                .activate(self, id)
                .unwrap_or_else(|| Err(MessagingError::TargetNotFound(id.to_string()))),
        }
    }

    /// [`route`](Self::route) for the host, waiting up to `wait` for room in a full
    /// mailbox instead of refusing at once. A message for another host goes at once: the
    /// wait is for room here.
    pub(crate) async fn route_waiting(
        &self,
        target: &str,
        envelope: Envelope,
        wait: Duration,
    ) -> Result<(), Refused> {
        match self.admit_envelope(target, envelope, Access::Host, None)? {
            (Target::Local(entry), envelope) => self
                .enqueue_waiting(&entry, envelope, wait)
                .await
                .inspect_err(|_| self.refused(Some(&entry))),
            (Target::Remote(remote), envelope) => self.route_remote(&*remote, target, envelope),
        }
    }

    /// Deliver `payload` to every subscriber of `topic`; returns how many it reached.
    ///
    /// A subscriber whose mailbox is full, or that has stopped or failed but is still
    /// registered, has its copy dead-lettered: the publisher learns only a count, so a
    /// subscriber it missed is kept on record rather than skipped. `trace` is the context
    /// of the publisher's span.
    pub(crate) fn publish(
        &self,
        sender: &ComponentId,
        topic: &str,
        payload: Bytes,
        access: Access,
        trace: Option<TraceContext>,
    ) -> Result<u32, MessagingError> {
        self.check_sender(topic, payload.len(), access)?;
        if let Some(remote) = self.remote.get() {
            remote.publish(sender, topic, payload.clone(), trace);
        }
        Ok(self.fan_out(sender, topic, payload, None, trace))
    }

    /// Deliver `payload` to every subscriber of `topic` here; returns how many it reached.
    /// `arrived` counts each copy that came from another host.
    pub(crate) fn fan_out(
        &self,
        sender: &ComponentId,
        topic: &str,
        payload: Bytes,
        arrived: Option<&crate::metrics::PaddedCounter>,
        trace: Option<TraceContext>,
    ) -> u32 {
        let subscribers = self.registry.subscribers(topic);
        let mut reached = 0;
        // One payload for every subscriber: a publication to a hundred components holds its
        // bytes once, not a hundred times.
        for entry in &subscribers {
            bump(arrived.unwrap_or(&self.counters.sent));
            let envelope = Envelope::publication(sender.clone(), payload.clone(), trace);
            match self.enqueue(entry, envelope) {
                Ok(()) => reached += 1,
                // The publisher learns only a count, so a subscriber it missed is kept on
                // record rather than skipped: a full mailbox, or a subscriber that has
                // stopped or failed but is still registered.
                Err(Refused { error, envelope }) => {
                    let why = match error {
                        MessagingError::MailboxFull(_) => "mailbox full".to_string(),
                        MessagingError::TargetCrashed(reason) => reason,
                        _ => format!("component `{}` has stopped", entry.shared.id),
                    };
                    bump(&self.counters.dead_lettered);
                    bump(&entry.shared.metrics.dead_lettered);
                    self.dead_letters.record(
                        sender.clone(),
                        entry.shared.id.clone(),
                        MessageKind::Message,
                        envelope.payload(),
                        &format!("publication on `{topic}`: {why}"),
                    );
                }
            }
        }
        reached
    }
}

/// Mark a key used now, for its component's LRU and idle sweep.
fn touch(entry: &Entry) {
    if let Some(key) = &entry.shared.keyed {
        key.touch();
    }
}

/// The error a sender gets from a component that no longer takes messages.
pub(crate) fn closed_error(entry: &Entry) -> MessagingError {
    match entry.shared.state() {
        ComponentState::Failed(reason) => MessagingError::TargetCrashed(format!(
            "component `{}` failed: {reason}",
            entry.shared.id
        )),
        _ => MessagingError::TargetNotFound(entry.shared.id.to_string()),
    }
}
