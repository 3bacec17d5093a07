//! Serving this host's exposed components to the others: claiming an id, reading its
//! subject, queueing what arrives and acknowledging it in batches, answering requests.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use async_nats::{HeaderMap, Subscriber};
use bytes::Bytes;
use courier_host_broker::{ComponentId, Exposure, HOST_SENDER, MessagingError, Served};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::inbound::{Held, StreamKey, Verdict};
use crate::lattice::{
    CONFIRM_TIMEOUT, Inner, NATS_WAIT, PROBE_TIMEOUT, Serving, bounded, stopped, valid_sender,
};
use crate::wire::{self, Envelope, Kind};

impl Inner {
    /// Serve `served` to the other hosts: subscribe to its subject if it is exposed (once
    /// sure no other host serves it, unless it is replicated), and to its topics. An id
    /// already served or being claimed here is served once: a spawn can race the join
    /// that lists what already runs.
    pub(crate) async fn serve(self: &Arc<Self>, served: Served) -> Result<(), String> {
        let Served {
            id,
            exposure,
            subscriptions,
        } = served;
        {
            let serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
            let mut claiming = self.claiming.lock().unwrap_or_else(|e| e.into_inner());
            if serving.contains_key(&id) || !claiming.insert(id.clone()) {
                return Ok(());
            }
        }
        let keyed = self.broker.upgrade().is_some_and(|b| b.is_keyed(&id));
        let claimed = match keyed {
            true => self.subscribe_keys(&id).await.map(Some),
            false => self.subscribe_actor(&id, exposure).await,
        };
        {
            let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
            self.claiming
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            let (task, stop) = claimed?.unzip();
            serving.insert(
                id,
                Serving {
                    exposure,
                    keyed,
                    task,
                    stop,
                    subscriptions,
                },
            );
        }
        self.resubscribe_topics().await;
        self.publish_heartbeat(false).await;
        Ok(())
    }

    /// Subscribe to the subject of `id` if `exposure` says other hosts reach it, and start
    /// the task that reads it. Every id is a queue group, so even two hosts that both
    /// believe they serve an exclusive id (each started it at the same moment) never both
    /// get a message: each goes to one of them. Such a pair is refused here when its
    /// probes see each other, and reported by the directory when they do not.
    async fn subscribe_actor(
        self: &Arc<Self>,
        id: &ComponentId,
        exposure: Exposure,
    ) -> Result<Option<(JoinHandle<()>, watch::Sender<bool>)>, String> {
        if exposure == Exposure::Local {
            return Ok(None);
        }
        // Probes go where this host sends; the subscription hears every host's sends.
        let subject = self.subjects.actor(id);
        let from_any = self.subjects.actor_from_any(id);
        let taken = |host: &str| {
            format!(
                "host `{}` already serves `{id}` in the lattice `{}`",
                wire::header_text(host),
                self.config.name
            )
        };
        if exposure == Exposure::Lattice
            && let Some(host) = self.probe(&subject, PROBE_TIMEOUT).await
            && host != self.config.host
        {
            return Err(taken(&host));
        }
        let subscriber = bounded(
            CONFIRM_TIMEOUT,
            self.client
                .queue_subscribe(from_any.clone(), QUEUE_GROUP.to_string()),
        )
        .await
        .ok_or_else(|| {
            format!("cannot subscribe to `{from_any}`: the NATS client did not take it")
        })?
        .map_err(|err| format!("cannot subscribe to `{from_any}`: {err}"))?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(self.clone().serve_actor(id.clone(), subscriber, stopped));
        // A flush does not prove the server has the subscription; an answer to a probe on
        // the subject from this host does. Another host's answer to an exclusive id means
        // both subscribed at once: the one whose name sorts later steps back, so the two
        // never both step back (each can hear the other, the queue group answering at
        // random), and the other probes on until its own subscription answers.
        let deadline = Instant::now() + CONFIRM_TIMEOUT;
        loop {
            match self.probe(&subject, PROBE_TIMEOUT).await {
                Some(host) if host == self.config.host => return Ok(Some((task, stop))),
                Some(host)
                    if exposure == Exposure::Lattice
                        && host.as_str() < self.config.host.as_str() =>
                {
                    let _ = stop.send(true);
                    return Err(taken(&host));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                let _ = stop.send(true);
                return Err(format!(
                    "the subscription to `{from_any}` was not confirmed within {}",
                    courier_host_core::units::format_duration(CONFIRM_TIMEOUT)
                ));
            }
        }
    }

    /// Stop serving `id`: its task unsubscribes, answers what it already took, and sends
    /// the acknowledgements it gathered.
    pub(crate) fn withdraw(self: &Arc<Self>, id: &ComponentId) {
        let removed = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(Serving {
            stop: Some(stop), ..
        }) = removed
        {
            let _ = stop.send(true);
        }
        let inner = self.clone();
        tokio::spawn(async move {
            inner.resubscribe_topics().await;
            inner.publish_heartbeat(false).await;
        });
    }

    /// Which host answers a probe on `subject`, if any does within `timeout`.
    pub(crate) async fn probe(&self, subject: &str, timeout: Duration) -> Option<String> {
        let probe = Envelope {
            kind: Kind::Probe,
            sender: HOST_SENDER,
            timeout_ms: 0,
            deadline_ms: 0,
            stream_seq: 0,
            low: 0,
            trace: None,
        };
        let request = async_nats::Request::new()
            .payload(probe.wrap(&[]))
            .timeout(Some(timeout));
        let asked = self.client.send_request(subject.to_string(), request);
        match bounded(timeout + NATS_WAIT, asked)
            .await
            .and_then(Result::ok)
        {
            Some(answer) => Some(
                wire::get(answer.headers.as_ref(), wire::HOST)
                    .unwrap_or("?")
                    .to_string(),
            ),
            None => None,
        }
    }

    /// Read `id`'s subject until told to stop (this component's stop, or the whole
    /// host's); then unsubscribe and handle what had already come, so nothing this host
    /// took from the server is left unanswered.
    pub(crate) async fn serve_actor(
        self: Arc<Self>,
        id: ComponentId,
        mut subscriber: Subscriber,
        mut own_stop: watch::Receiver<bool>,
    ) {
        let mut stop = self.stop.subscribe();
        let mut acks = Acks::default();
        loop {
            // Acknowledgements wait while more messages are ready, and go out together,
            // one NATS message for a batch, when none is, when the batch is full, or when
            // the oldest has waited `ACK_DELAY`: a steady stream of requests, which are
            // answered one by one, must not hold the messages' acknowledgements back.
            let next = match subscriber.next().now_or_never() {
                Some(next) => next,
                None => {
                    self.send_acks(&mut acks).await;
                    let overdue = self
                        .inbound
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .next_overdue(&id);
                    let hold_ends = async {
                        match overdue {
                            Some(at) => tokio::time::sleep_until(at.into()).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        biased;
                        next = subscriber.next() => next,
                        _ = stopped(&mut stop) => break,
                        _ = stopped(&mut own_stop) => break,
                        () = hold_ends => {
                            self.release_held(&id, false, &mut acks).await;
                            continue;
                        }
                    }
                }
            };
            let Some(message) = next else {
                self.release_held(&id, true, &mut acks).await;
                self.send_acks(&mut acks).await;
                return;
            };
            self.arrival(&id, message, &mut acks).await;
            if acks.due() {
                self.send_acks(&mut acks).await;
            }
        }
        let _ = bounded(NATS_WAIT, subscriber.unsubscribe()).await;
        // What the server delivered before it took the unsubscription; bounded, since
        // with no server to take it the stream would not end.
        let rest = async {
            while let Some(message) = subscriber.next().await {
                self.arrival(&id, message, &mut acks).await;
                if acks.due() {
                    self.send_acks(&mut acks).await;
                }
            }
        };
        let _ = bounded(NATS_WAIT, rest).await;
        // What waited for its turn is delivered now: nothing more will come here.
        self.release_held(&id, true, &mut acks).await;
        self.send_acks(&mut acks).await;
    }

    /// Deliver, in their order, the messages to `id` held for a turn that did not come
    /// while they could be held (or all of them).
    async fn release_held(self: &Arc<Self>, id: &ComponentId, all: bool, acks: &mut Acks) {
        let overdue = self
            .inbound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .overdue(id, all);
        for (stream, held) in overdue {
            self.deliver_in_turn(id, &stream, held, acks).await;
        }
    }

    /// Deliver message `held` of `stream` to `id`, then every held one whose turn that
    /// makes it; each is acknowledged in the batch, or refused on its own reply subject.
    async fn deliver_in_turn(
        self: &Arc<Self>,
        id: &ComponentId,
        stream: &StreamKey,
        held: Held,
        acks: &mut Acks,
    ) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let mut next = Some(held);
        while let Some(held) = next.take() {
            self.counters
                .arrived_messages
                .fetch_add(1, Ordering::Relaxed);
            // A durable target answers once its store holds the message: only then is it
            // acknowledged, so an acknowledged message survives this host's crash.
            let outcome = broker
                .accept_message_stored(held.sender, id, held.payload, held.durable_seq, held.trace)
                .await;
            next = {
                let mut inbound = self.inbound.lock().unwrap_or_else(|e| e.into_inner());
                inbound.settled(stream, held.seq, &outcome);
                inbound.next_in_turn(stream)
            };
            match outcome {
                Ok(()) => acks.add(held.reply),
                Err(error) => self.reply(held.reply, Err(error)).await,
            }
        }
    }

    /// Send the acknowledgements gathered in `acks`: one message per host that sent, on a
    /// subject that names this host as their sender.
    pub(crate) async fn send_acks(&self, acks: &mut Acks) {
        for (replies, seqs) in acks.take() {
            let Some(subject) = self.subjects.acks_for(&replies) else {
                continue;
            };
            let sent = bounded(
                NATS_WAIT,
                self.client
                    .publish(subject, wire::encode_seqs(&seqs).into()),
            )
            .await;
            if !matches!(sent, Some(Ok(()))) {
                tracing::warn!(
                    "acknowledgements to another host not sent: the NATS client did not take them"
                );
            }
        }
    }

    /// A message, request or probe for the local component `id`. Returns the reply
    /// subject of a message queued here, whose acknowledgement the caller sends in a batch;
    /// everything else is answered here.
    pub(crate) async fn arrival(
        self: &Arc<Self>,
        id: &ComponentId,
        message: async_nats::Message,
        acks: &mut Acks,
    ) {
        let reply = message.reply.clone();
        let opened = Envelope::open(&message.payload);
        if let Some((
            Envelope {
                kind: Kind::Probe, ..
            },
            _,
        )) = opened
        {
            if let Some(reply) = reply {
                let mut answer = HeaderMap::new();
                answer.insert(wire::HOST, self.config.host.as_str());
                let _ = bounded(
                    NATS_WAIT,
                    self.client
                        .publish_with_headers(reply, answer, Bytes::new()),
                )
                .await;
            }
            return;
        }
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let from = self.subjects.sending_host(&message.subject);
        let sender = opened
            .as_ref()
            .and_then(|(envelope, _)| valid_sender(envelope.sender));
        let Ok(durable_seq) = wire::durable_seq(message.headers.as_ref()) else {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            if let Some(reply) = reply {
                let refusal = MessagingError::AccessDenied(
                    "a message whose durable sequence number is not a number".into(),
                );
                self.reply(reply, Err(refusal)).await;
            }
            return;
        };
        let outcome = match (opened, sender, from) {
            (Some(_), Some(sender), Some(from)) if self.forged(from, &sender) => {
                self.counters.forged.fetch_add(1, Ordering::Relaxed);
                Err(MessagingError::AccessDenied(format!(
                    "host `{from}` cannot send as `{sender}`, which another host runs"
                )))
            }
            (Some((envelope, _)), Some(_), Some(_)) if envelope.expired() => {
                // Its sender gave up on it (it waited in a client's buffer through a
                // reconnect, say): handling it now would do what its sender was told did
                // not happen, or answer nobody.
                self.counters.expired.fetch_add(1, Ordering::Relaxed);
                return;
            }
            (Some((envelope, at)), Some(sender), Some(from)) => {
                let payload = message.payload.slice(at..);
                match envelope.kind {
                    Kind::Message if envelope.stream_seq > 0 => {
                        let stream = self.stream_of(reply.as_deref(), from, id);
                        let (Some(stream), Some(reply)) = (stream, reply.clone()) else {
                            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                            return;
                        };
                        let left = (envelope.deadline_ms != 0).then(|| {
                            Duration::from_millis(
                                envelope
                                    .deadline_ms
                                    .saturating_sub(wire::unix_ms(SystemTime::now())),
                            )
                        });
                        let mut held = Held::new(envelope.stream_seq, sender, payload, reply, left)
                            .with_trace(envelope.trace);
                        held.durable_seq = durable_seq;
                        let verdict = self
                            .inbound
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .check(&stream, envelope.low, held);
                        match verdict {
                            Verdict::New(held) => {
                                self.deliver_in_turn(id, &stream, held, acks).await;
                                return;
                            }
                            Verdict::Duplicate => {
                                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                                Ok(())
                            }
                            Verdict::Refused(error) => {
                                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                                Err(error)
                            }
                            Verdict::Held => {
                                self.counters.out_of_order.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            Verdict::Dropped => {
                                // Its sender sends it again.
                                self.counters
                                    .dropped_out_of_order
                                    .fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                    Kind::Message => {
                        self.counters
                            .arrived_messages
                            .fetch_add(1, Ordering::Relaxed);
                        broker
                            .accept_message_stored(sender, id, payload, durable_seq, envelope.trace)
                            .await
                    }
                    Kind::Request => {
                        self.counters
                            .arrived_requests
                            .fetch_add(1, Ordering::Relaxed);
                        // The time its requester has left, by the deadline when this
                        // host's clock says less than the envelope's timeout.
                        let mut timeout = Duration::from_millis(envelope.timeout_ms.into());
                        if envelope.deadline_ms != 0 {
                            let left = envelope
                                .deadline_ms
                                .saturating_sub(wire::unix_ms(SystemTime::now()));
                            timeout = timeout.min(Duration::from_millis(left));
                        }
                        match broker.accept_request(sender, id, payload, timeout, envelope.trace) {
                            Ok(answer) => {
                                let inner = self.clone();
                                tokio::spawn(async move {
                                    let answer = answer.await;
                                    if let Some(reply) = reply {
                                        inner.reply(reply, answer).await;
                                    }
                                });
                                return;
                            }
                            Err(error) => Err(error),
                        }
                    }
                    Kind::Publication | Kind::Probe => {
                        self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                        Err(MessagingError::AccessDenied(
                            "a publication sent to a component's subject".into(),
                        ))
                    }
                }
            }
            _ => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                Err(MessagingError::AccessDenied(
                    "a message without a valid envelope and sender".into(),
                ))
            }
        };
        match (outcome, reply) {
            (Ok(()), Some(reply)) if Acks::batchable(&reply) => acks.add(reply),
            (outcome, Some(reply)) => self.reply(reply, outcome.map(|()| Vec::new())).await,
            (_, None) => {}
        }
    }

    /// The stream a numbered message belongs to: its sending run (the reply subject less
    /// its sequence number) and its target. `None` unless the reply subject is one the
    /// sending host `from` writes for itself, so no host can advance another's stream.
    fn stream_of(&self, reply: Option<&str>, from: &str, id: &ComponentId) -> Option<StreamKey> {
        let (prefix, _seq) = reply?.rsplit_once('.')?;
        let (host, _incarnation) = self.subjects.replies_of(prefix)?;
        (host == from).then(|| (prefix.to_string(), id.clone()))
    }

    /// Whether host `from` speaks for a component it does not run by sending as `sender`:
    /// one this host serves to the lattice alone, or one the directory says another host
    /// serves alone. `host` (a host's own sends) is any host's to use.
    pub(crate) fn forged(&self, from: &str, sender: &str) -> bool {
        if sender == HOST_SENDER || from == self.config.host {
            return false;
        }
        let ours = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sender)
            .is_some_and(|s| s.exposure == Exposure::Lattice);
        ours || self.directory.runs_elsewhere(from, sender).is_some()
    }

    /// Answer on `reply`: the reply's bytes (empty for an acknowledgement) or the error.
    pub(crate) async fn reply(
        &self,
        reply: async_nats::Subject,
        answer: Result<Vec<u8>, MessagingError>,
    ) {
        let mut headers = HeaderMap::new();
        let payload = match answer {
            Ok(bytes) if bytes.len() > self.max_payload() => {
                wire::put_error(
                    &mut headers,
                    &MessagingError::HandlerFailed(courier_host_broker::ComponentError::Internal(
                        format!(
                            "a reply of {} bytes is over the lattice's limit of {} bytes",
                            bytes.len(),
                            self.max_payload()
                        ),
                    )),
                );
                Bytes::new()
            }
            Ok(bytes) => Bytes::from(bytes),
            Err(error) => {
                wire::put_error(&mut headers, &error);
                headers.insert(wire::HOST, self.config.host.as_str());
                Bytes::new()
            }
        };
        let sent = bounded(
            NATS_WAIT,
            self.client.publish_with_headers(reply, headers, payload),
        )
        .await;
        if !matches!(sent, Some(Ok(()))) {
            tracing::warn!("answer to another host not sent: the NATS client did not take it");
        }
    }
}

/// The queue group every served id is read in: replicas share it on purpose, and two
/// hosts that both claimed an exclusive id by mistake share it too, so neither gets what
/// the other got.
const QUEUE_GROUP: &str = "courier";

/// The longest an acknowledgement waits for others to go out with it.
const ACK_DELAY: Duration = Duration::from_millis(5);

/// Acknowledgements gathered for a batch: sequence numbers by the reply prefix of the host
/// that sent them.
#[derive(Default)]
pub(crate) struct Acks {
    pending: Vec<(String, Vec<u64>)>,
    count: usize,
    /// When the oldest acknowledgement in the batch was gathered.
    since: Option<Instant>,
}

impl Acks {
    /// Whether a message with this reply subject (`<prefix>.<seq>`, as hosts write it) can
    /// be acknowledged in a batch.
    pub(crate) fn batchable(reply: &str) -> bool {
        reply
            .rsplit_once('.')
            .is_some_and(|(_, seq)| seq.parse::<u64>().is_ok())
    }

    /// Gather the acknowledgement for `reply`.
    fn add(&mut self, reply: async_nats::Subject) {
        let Some((prefix, seq)) = reply
            .rsplit_once('.')
            .and_then(|(prefix, seq)| Some((prefix, seq.parse::<u64>().ok()?)))
        else {
            return;
        };
        match self.pending.iter_mut().find(|(p, _)| p == prefix) {
            Some((_, seqs)) => seqs.push(seq),
            None => self.pending.push((prefix.to_string(), vec![seq])),
        }
        self.count += 1;
        self.since.get_or_insert_with(Instant::now);
    }

    /// Whether the batch must go now: it is full, or its oldest has waited long enough.
    pub(crate) fn due(&self) -> bool {
        self.count >= wire::MAX_ACKS || self.since.is_some_and(|t| t.elapsed() >= ACK_DELAY)
    }

    fn take(&mut self) -> Vec<(String, Vec<u64>)> {
        self.count = 0;
        self.since = None;
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The serving loop asks `due` after every arrival, so a batch goes out when it is
    /// full or its oldest acknowledgement has waited `ACK_DELAY`, even while more messages
    /// keep coming (a steady stream of requests never lets the subscription run dry).
    #[test]
    fn a_batch_is_due_when_full_or_when_its_oldest_has_waited() {
        let mut acks = Acks::default();
        assert!(!acks.due(), "nothing gathered");
        acks.add("courier.l.h.a.r.1.7".into());
        assert!(!acks.due(), "just gathered");
        std::thread::sleep(ACK_DELAY);
        assert!(acks.due(), "the oldest has waited");
        assert_eq!(acks.take(), [("courier.l.h.a.r.1".to_string(), vec![7])]);
        assert!(!acks.due(), "taken");
        for seq in 0..wire::MAX_ACKS as u64 {
            acks.add(format!("courier.l.h.b.r.2.{seq}").into());
        }
        assert!(acks.due(), "full");
        let batches = acks.take();
        assert_eq!(batches.len(), 1, "one batch per sending run");
        assert_eq!(batches[0].1.len(), wire::MAX_ACKS);
    }
}
