//! Other hosts: what a broker does with a target that is not registered here, and how
//! messages from other hosts reach its mailboxes.
//!
//! The broker knows nothing of how hosts reach each other. A lattice (such as
//! `courier-host-lattice`, over NATS) implements [`Remote`] and attaches itself with
//! [`Broker::attach_remote`](crate::Broker::attach_remote); it hands what arrives from other
//! hosts to [`Broker::accept_message`](crate::Broker::accept_message),
//! [`Broker::accept_request`](crate::Broker::accept_request) and
//! [`Broker::accept_publication`](crate::Broker::accept_publication). Without a remote, a
//! target that is not registered here is `target-not-found`, as it always was.
//!
//! A send to another host passes every check a local one does (shutting down, capability,
//! payload size) on the sending host, before the remote sees it. The accounting stays
//! exact on each host: a remote send is counted `sent` here and ends, through its
//! [`RemoteMessage`], delivered (the serving host queued it), refused (before it left), or
//! dead-lettered with a reason; what arrives from other hosts is counted `arrived` on the
//! host that receives it, and ends there like any local message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_host_core::{BoxFuture, ComponentId, MessagingError, TraceContext};
use tokio::sync::oneshot;

use crate::capabilities::Pattern;
use crate::dead_letter::MessageKind;
use crate::exposure::Exposure;
use crate::ids::MAX_NAME_BYTES;
use crate::mailbox::Envelope;
use crate::metrics::bump;
use crate::registry::{ActorShared, Entry};
use crate::routing::{Router, closed_error};
use crate::text::bounded;

/// A component as a lattice needs to know it: whether other hosts may reach it, and the
/// topics it hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// Its id.
    pub id: ComponentId,
    /// Whether other hosts may reach it.
    pub exposure: Exposure,
    /// The topics it subscribes to.
    pub subscriptions: Vec<Pattern>,
}

/// What carries messages to components on other hosts: the broker calls it for a target
/// that is not registered here. Implemented by a lattice.
///
/// Every method is called after the sender passed this host's checks (capability, size,
/// shutting down), so an implementation never sees what the sender may not send.
pub trait Remote: Send + Sync + 'static {
    /// Carry `message` to the host that serves its target, keeping the order of the
    /// messages each sender sends to each target. Returns once the message is on its way;
    /// it ends later through [`RemoteMessage::delivered`] or
    /// [`RemoteMessage::dead_letter`]. A message refused before it leaves (too large for
    /// the wire, nothing to carry it) comes back with the reason, and its sender hears it.
    fn send(&self, message: RemoteMessage) -> Result<(), RemoteRefusal>;

    /// Ask the host that serves `target` and wait at most `timeout` for the reply. `trace`
    /// is the context of the requester's span, for the serving host's handler to continue.
    fn request(
        &self,
        sender: &ComponentId,
        target: &str,
        payload: Bytes,
        timeout: Duration,
        trace: Option<TraceContext>,
    ) -> BoxFuture<'static, Result<Vec<u8>, MessagingError>>;

    /// Offer a publication to the subscribers on other hosts. The publisher's count covers
    /// this host's subscribers only; what other hosts do with it is theirs to count.
    /// `trace` is the context of the publisher's span.
    fn publish(
        &self,
        sender: &ComponentId,
        topic: &str,
        payload: Bytes,
        trace: Option<TraceContext>,
    );

    /// A component was spawned here. The spawn waits for the answer; an error fails the
    /// spawn with that reason (say, another host already serves the id).
    fn serve(&self, served: Served) -> BoxFuture<'static, Result<(), String>>;

    /// A component stopped here and no longer takes messages.
    fn withdraw(&self, id: &ComponentId);

    /// Where the key `key` of the keyed component `component` runs, when `component` is
    /// served by several hosts ([`Exposure::Replicated`]): asked before every send to such
    /// a key, so it must be quick. A remote that does not place keys keeps them here.
    fn place(&self, component: &str, key: &str) -> Placement {
        let _ = (component, key);
        Placement::Here
    }
}

/// Where a key runs, as the attached [`Remote`] places it ([`Remote::place`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On this host.
    Here,
    /// On another host, named.
    Elsewhere(String),
}

/// A remote send the [`Remote`] did not take, with the message, whose sender hears `error`.
pub struct RemoteRefusal {
    /// Why.
    pub error: MessagingError,
    /// The message, given back.
    pub message: RemoteMessage,
}

/// A message on its way to another host, counted `sent` on this one until it ends: its
/// carrier ends it with [`delivered`](Self::delivered) or
/// [`dead_letter`](Self::dead_letter). One dropped without an ending is dead-lettered, so
/// no path loses it without a record.
pub struct RemoteMessage {
    sender: ComponentId,
    target: ComponentId,
    payload: Bytes,
    router: Weak<Router>,
    /// Set once it has ended, so the drop does not end it again.
    ended: AtomicBool,
    /// Its trace context and durable try, when it has either. One box for both: most
    /// messages have neither, and a refusal hands the message back by value, so it stays
    /// small.
    extra: Option<Box<Extra>>,
}

/// What only some remote messages carry.
#[derive(Default)]
struct Extra {
    /// The context of its sender's span, if it was sent in a trace.
    trace: Option<TraceContext>,
    /// For a durable sender's outbox entry: its sequence number, and where its ending goes
    /// (to the outbox, which counts it and decides whether to try again).
    durable: Option<DurableTry>,
}

/// One try of a durable sender's outbox entry on another host.
struct DurableTry {
    seq: u64,
    outcome: Mutex<Option<oneshot::Sender<RemoteOutcome>>>,
}

/// How one try of a durable sender's message to another host ended, as its outbox hears it.
#[derive(Debug)]
pub(crate) enum RemoteOutcome {
    /// The serving host acknowledged it: it holds it (in its store, for a durable target).
    Delivered,
    /// The serving host refused it with this error.
    Refused(MessagingError),
    /// No acknowledgement came (unconfirmed, no host, not sent, the lattice left): why.
    Failed(String),
}

impl RemoteMessage {
    pub(crate) fn new(
        router: Weak<Router>,
        sender: ComponentId,
        target: ComponentId,
        payload: Bytes,
    ) -> RemoteMessage {
        RemoteMessage {
            sender,
            target,
            payload,
            router,
            ended: AtomicBool::new(false),
            extra: None,
        }
    }

    /// A try of the durable `sender`'s outbox entry `seq`: its ending is not counted here but
    /// handed to the outbox through the returned receiver.
    pub(crate) fn durable(
        router: Weak<Router>,
        sender: ComponentId,
        target: ComponentId,
        payload: Bytes,
        seq: u64,
    ) -> (RemoteMessage, oneshot::Receiver<RemoteOutcome>) {
        let (outcome, ended) = oneshot::channel();
        let mut message = RemoteMessage::new(router, sender, target, payload);
        message.extra.get_or_insert_default().durable = Some(DurableTry {
            seq,
            outcome: Mutex::new(Some(outcome)),
        });
        (message, ended)
    }

    /// The sender's sequence number when the sender is durable: the serving host stores it
    /// with this number, so a durable target that already holds it (a copy sent again after
    /// a restart or a try nobody acknowledged) drops it and acknowledges it again.
    pub fn durable_seq(&self) -> Option<u64> {
        self.durable_try().map(|durable| durable.seq)
    }

    /// The same message, sent in the trace `trace` names.
    pub(crate) fn with_trace(mut self, trace: Option<TraceContext>) -> RemoteMessage {
        if let Some(trace) = trace {
            self.extra.get_or_insert_default().trace = Some(trace);
        }
        self
    }

    /// The context of its sender's span, if it was sent in a trace: the serving host's
    /// handler continues the trace.
    pub fn trace(&self) -> Option<TraceContext> {
        self.extra.as_ref().and_then(|extra| extra.trace)
    }

    fn durable_try(&self) -> Option<&DurableTry> {
        self.extra.as_ref()?.durable.as_ref()
    }

    /// Who sent it, as stamped by this host.
    pub fn sender(&self) -> &ComponentId {
        &self.sender
    }

    /// Whom it is for.
    pub fn target(&self) -> &ComponentId {
        &self.target
    }

    /// What it carries (cheap to clone).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The serving host has queued it: counted delivered here.
    pub fn delivered(self) {
        if self.end_durable(RemoteOutcome::Delivered) {
            return;
        }
        if let Some(router) = self.end() {
            bump(&router.counters.delivered);
        }
    }

    /// It will not be delivered, or may not have been: dead-lettered here with `reason`.
    /// A durable sender's message is not: its outbox tries it again.
    pub fn dead_letter(self, reason: &str) {
        self.dead_letter_ref(reason);
    }

    /// The serving host refused it with `error`: dead-lettered here with `reason`, as
    /// [`dead_letter`](Self::dead_letter) does; a durable sender's outbox hears the error, to
    /// tell a refusal worth trying again (a full mailbox, a store that failed, a host
    /// shutting down) from one that never passes.
    pub fn refused_there(self, reason: &str, error: MessagingError) {
        if self.end_durable(RemoteOutcome::Refused(error)) {
            return;
        }
        self.dead_letter_ref(reason);
    }

    /// Refused before it left: counted refused here; its sender is told by the caller.
    pub(crate) fn refused(self) {
        if self.durable_try().is_some() {
            // Its outbox counts it, as it does every try's ending.
            self.ended.store(true, Ordering::Release);
            return;
        }
        if let Some(router) = self.end() {
            bump(&router.counters.refused);
        }
    }

    /// End a durable sender's try with `outcome`, handed to its outbox; false if it is not
    /// one.
    fn end_durable(&self, outcome: RemoteOutcome) -> bool {
        let Some(durable) = self.durable_try() else {
            return false;
        };
        if !self.ended.swap(true, Ordering::AcqRel) {
            let waiting = durable
                .outcome
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(waiting) = waiting {
                let _ = waiting.send(outcome);
            }
        }
        true
    }

    fn dead_letter_ref(&self, reason: &str) {
        if self.end_durable(RemoteOutcome::Failed(reason.to_string())) {
            return;
        }
        if let Some(router) = self.end() {
            bump(&router.counters.dead_lettered);
            router.dead_letters.record(
                self.sender.clone(),
                self.target.clone(),
                MessageKind::Message,
                &self.payload,
                reason,
            );
        }
    }

    /// Mark it ended, once; the router to count it in, if the broker is still there.
    fn end(&self) -> Option<Arc<Router>> {
        if self.ended.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.router.upgrade()
    }
}

impl Drop for RemoteMessage {
    fn drop(&mut self) {
        if !self.ended.load(Ordering::Acquire) {
            self.dead_letter_ref("dropped on its way to another host without an outcome");
        }
    }
}

impl std::fmt::Debug for RemoteMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteMessage")
            .field("sender", &self.sender)
            .field("target", &self.target)
            .field("payload_len", &self.payload.len())
            .field("durable_seq", &self.durable_seq())
            .finish()
    }
}

/// The remote a router hands what is not registered here, if a lattice is attached.
/// Where a broker keeps its way to other hosts: at most one remote at a time, which can be
/// detached again (a lattice that is dropped or leaves), so the broker can join anew.
///
/// A flag in front of the lock keeps a broker without a remote (the usual case, and every
/// publication's path) from touching the lock at all.
pub(crate) struct RemoteSlot {
    attached: AtomicBool,
    remote: RwLock<Option<Arc<dyn Remote>>>,
}

impl RemoteSlot {
    pub(crate) fn new() -> RemoteSlot {
        RemoteSlot {
            attached: AtomicBool::new(false),
            remote: RwLock::new(None),
        }
    }

    /// Whether a remote is attached: one atomic load, for the checks on every send.
    pub(crate) fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    /// The remote attached now, if any.
    pub(crate) fn get(&self) -> Option<Arc<dyn Remote>> {
        if !self.attached.load(Ordering::Acquire) {
            return None;
        }
        self.remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Attach `remote`, unless one already is: then it is handed back.
    pub(crate) fn set(&self, remote: Arc<dyn Remote>) -> Result<(), Arc<dyn Remote>> {
        let mut slot = self.remote.write().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return Err(remote);
        }
        *slot = Some(remote);
        self.attached.store(true, Ordering::Release);
        Ok(())
    }

    /// Detach `remote` if it is the one attached; true if it was.
    pub(crate) fn take_if(&self, remote: &Arc<dyn Remote>) -> bool {
        let mut slot = self.remote.write().unwrap_or_else(|e| e.into_inner());
        // Compared by address alone: the vtable half of a `dyn` pointer may differ
        // between codegen units for the same object.
        let same = slot
            .as_ref()
            .is_some_and(|held| std::ptr::addr_eq(Arc::as_ptr(held), Arc::as_ptr(remote)));
        if same {
            *slot = None;
            self.attached.store(false, Ordering::Release);
        }
        same
    }
}

/// The answer to a request that came from another host, once its target's handler has
/// run (or it ended otherwise).
pub type RemoteAnswer = BoxFuture<'static, Result<Vec<u8>, MessagingError>>;

impl Router {
    /// The checks a message from another host passes before it may be queued here: the
    /// broker is not shutting down, the target is registered, exposed to other hosts and
    /// still taking messages, and the payload is within this host's limit. Counted as
    /// arrived, and as refused when it is not let in.
    ///
    /// A target that is registered but not exposed is `target-not-found`: other hosts
    /// learn nothing about what this host keeps to itself.
    fn admit_arrival(&self, target: &str, len: usize) -> Result<Arc<Entry>, MessagingError> {
        bump(&self.counters.arrived);
        // A key's entry put away since it was registered is no answer: its successor is.
        let registered = self.registry.get(target).filter(|entry| {
            !(entry.shared.keyed.is_some() && entry.shared.is_retired() && entry.shared.is_closed())
        });
        let (entry, misplaced) = match registered {
            Some(entry) => (Some(entry), None),
            None if !self.is_shutting_down() && target.len() <= MAX_NAME_BYTES => {
                match self.keys.activate_arrival(self, target) {
                    Some(Ok(entry)) => (Some(entry), None),
                    Some(Err(refusal)) => (None, Some(refusal)),
                    None => (None, None),
                }
            }
            None => (None, None),
        };
        let entry = entry.filter(|entry| entry.shared.exposure != Exposure::Local);
        let admitted = if self.is_shutting_down() {
            Err(MessagingError::ShuttingDown)
        } else if target.len() > MAX_NAME_BYTES {
            Err(MessagingError::TargetNotFound(bounded(target, 64)))
        } else if let Some(refusal) = misplaced {
            Err(refusal)
        } else if let Some(entry) = &entry {
            if entry.shared.is_closed() {
                Err(closed_error(entry))
            } else if len > self.config.max_payload_bytes {
                Err(MessagingError::PayloadTooLarge(
                    self.config.max_payload_bytes as u64,
                ))
            } else {
                Ok(entry.clone())
            }
        } else {
            Err(MessagingError::TargetNotFound(target.to_string()))
        };
        admitted.inspect_err(|_| self.refused(entry.as_deref()))
    }

    /// Queue what came from another host in its target's mailbox: the one way in from the
    /// lattice, so a mailbox backed by something else later changes only this.
    fn enqueue_arrival(&self, entry: &Entry, envelope: Envelope) -> Result<(), MessagingError> {
        self.enqueue(entry, envelope).map_err(|refused| {
            self.refused(Some(entry));
            refused.error
        })
    }

    pub(crate) fn accept_message(
        &self,
        sender: ComponentId,
        target: &str,
        payload: Bytes,
        trace: Option<TraceContext>,
    ) -> Result<(), MessagingError> {
        let entry = self.admit_arrival(target, payload.len())?;
        if entry.shared.durable.is_some() {
            // Queued before it is stored, it would be acknowledged and then lost in a crash.
            self.refused(Some(&entry));
            return Err(crate::durable::needs_waiting(&entry.shared.id));
        }
        self.enqueue_arrival(&entry, Envelope::traced(sender, payload, trace))
    }

    /// A message from another host, queued at once for a target that is not durable, and
    /// for a durable one once its store holds it (carrying `durable_seq`, its durable
    /// sender's sequence number, so a copy the target already holds is dropped and answered
    /// `Ok` again). Its `Ok` is what the serving host may acknowledge.
    pub(crate) async fn accept_message_stored(
        self: Arc<Router>,
        sender: ComponentId,
        target: &str,
        payload: Bytes,
        durable_seq: Option<u64>,
        trace: Option<TraceContext>,
    ) -> Result<(), MessagingError> {
        let entry = self.admit_arrival(target, payload.len())?;
        let envelope = Envelope::traced(sender, payload, trace);
        let Some(durable) = entry.shared.durable.as_ref() else {
            return self.enqueue_arrival(&entry, envelope);
        };
        let store = durable.store.clone();
        let stored = if entry.shared.keyed.is_some() {
            self.store_for_key(entry, envelope, None, durable_seq).await
        } else {
            self.store_then_enqueue(entry, store, envelope, None, durable_seq)
                .await
        };
        stored.map_err(|refused| refused.error)
    }

    pub(crate) fn accept_request(
        &self,
        sender: ComponentId,
        target: &str,
        payload: Bytes,
        timeout: Duration,
        trace: Option<TraceContext>,
    ) -> Result<RemoteAnswer, MessagingError> {
        let entry = self.admit_arrival(target, payload.len())?;
        let (reply, answer) = oneshot::channel();
        let expires = Instant::now() + timeout;
        let envelope = Envelope::Request {
            sender,
            payload,
            reply,
            expires,
            trace: trace.map(Box::new),
        };
        self.enqueue_arrival(&entry, envelope)?;
        let target = target.to_string();
        Ok(Box::pin(async move {
            crate::request::answer_by(&target, answer, expires).await
        }))
    }

    pub(crate) fn accept_publication(
        &self,
        sender: &ComponentId,
        topic: &str,
        payload: Bytes,
        trace: Option<TraceContext>,
    ) -> u32 {
        if self.is_shutting_down() || topic.len() > MAX_NAME_BYTES {
            return 0;
        }
        self.fan_out(sender, topic, payload, Some(&self.counters.arrived), trace)
    }
}

/// What a remote needs to know of a component, if anything: one that is exposed or
/// subscribes to topics.
pub(crate) fn served_of(shared: &ActorShared) -> Option<Served> {
    // A key is served through its keyed component (`Keyed::served`), never on its own.
    if shared.keyed.is_some() {
        return None;
    }
    let subscriptions = shared.capabilities.subscribe_patterns().to_vec();
    (shared.exposure != crate::exposure::Exposure::Local || !subscriptions.is_empty()).then(|| {
        Served {
            id: shared.id.clone(),
            exposure: shared.exposure,
            subscriptions,
        }
    })
}
