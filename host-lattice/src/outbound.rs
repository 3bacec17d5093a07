//! What goes out: the checks before the wire, the outbound queue and the one task that puts
//! it on the wire in order, and the broker's way to other hosts (`Remote`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_host_broker::{
    ComponentId, MessagingError, Remote, RemoteMessage, RemoteRefusal, Served, TraceContext,
};
use courier_host_core::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use crate::lattice::{Gateway, Inner, NATS_WAIT, Outbound, bounded};
use crate::pending::Unacked;
use crate::wire::{self, Envelope, Kind};

impl Inner {
    /// The refusal of a send to `target` before anything goes on the wire, if it must be
    /// refused: this host is leaving, no host serves the target, or the payload is too
    /// large for the wire.
    pub(crate) fn refuse_early(&self, target: &str, len: usize) -> Option<MessagingError> {
        if self.leaving.load(Ordering::Acquire) {
            return Some(MessagingError::ShuttingDown);
        }
        if !self.directory.serves(target) {
            return Some(MessagingError::TargetNotFound(target.to_string()));
        }
        let limit = self.max_payload();
        if len > limit {
            return Some(MessagingError::PayloadTooLarge(limit as u64));
        }
        None
    }

    /// Count `len` payload bytes into the outbound window, unless that would pass its
    /// bound. A message's bytes stay counted until it ends (acknowledged, refused, or
    /// dead-lettered), a request's and a publication's until they are on the wire: the
    /// window is everything this host holds for other hosts.
    pub(crate) fn reserve(&self, len: u64, target: &str) -> Result<(), MessagingError> {
        let queued = self.outbound_bytes.fetch_add(len, Ordering::Relaxed) + len;
        if queued > self.config.outbound_bytes {
            self.release(len);
            return Err(MessagingError::MailboxFull(target.to_string()));
        }
        Ok(())
    }

    /// Take `len` bytes out of the outbound window.
    pub(crate) fn release(&self, len: u64) {
        self.outbound_bytes.fetch_sub(len, Ordering::Relaxed);
    }

    /// Put `item`, whose bytes are reserved, on the outbound queue.
    fn push(&self, item: Outbound, target: &str) -> Result<(), MessagingError> {
        self.outbound.try_send(item).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => MessagingError::MailboxFull(target.to_string()),
            mpsc::error::TrySendError::Closed(_) => MessagingError::ShuttingDown,
        })
    }

    /// How close to its deadline a message is no longer put on the wire: the expiry may
    /// take it from then on, and a message must not be both on the wire and given up on.
    fn margin(&self) -> Duration {
        (self.config.ack_timeout / 10).min(Duration::from_millis(100))
    }

    /// Put what is queued on the wire, in order. A message is published with a reply
    /// subject of its own sequence number, where its acknowledgement comes back. Only what
    /// is still owed goes out: a message whose acknowledgement would come too late, or a
    /// request whose requester stopped waiting, ends here instead; a request carries the
    /// time its requester has left. While no server can be reached, what is queued waits
    /// here, where it can still be given up on, not in the client's buffer.
    pub(crate) async fn send_queued(self: Arc<Self>, mut queue: mpsc::Receiver<Outbound>) {
        let replies = self.subjects.replies();
        let mut batch = Vec::with_capacity(256);
        let mut connection = self.connections();
        loop {
            tokio::select! {
                biased;
                () = self.resend_wake.notified() => {}
                received = queue.recv_many(&mut batch, 256) => {
                    if received == 0 {
                        return;
                    }
                }
            }
            // What is to go again goes before anything newer, so each stream stays in
            // order on the wire.
            self.send_owed(&replies, &mut connection).await;
            for item in batch.drain(..) {
                match item {
                    Outbound::Addressed {
                        seq,
                        request,
                        stream_seq,
                        durable_seq,
                        subject,
                        sender,
                        payload,
                        expires,
                        trace,
                    } => {
                        let due = if request {
                            self.release(payload.len() as u64);
                            expires
                        } else {
                            expires.checked_sub(self.margin()).unwrap_or(expires)
                        };
                        let connected = self.wait_connected(due).await;
                        if request && !self.waiting_for(seq) {
                            // The requester stopped waiting: nobody would take the reply.
                            continue;
                        }
                        let left = due.saturating_duration_since(Instant::now());
                        if !connected || left.is_zero() {
                            self.not_sent(
                                seq,
                                request,
                                "no NATS server could be reached before it was due",
                            );
                            continue;
                        }
                        self.send_owed(&replies, &mut connection).await;
                        let envelope = if request {
                            let ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1);
                            Envelope {
                                kind: Kind::Request,
                                sender: &sender,
                                timeout_ms: ms,
                                deadline_ms: wire::deadline_ms(due),
                                stream_seq: 0,
                                low: 0,
                                trace,
                            }
                        } else {
                            let low = self.going_out(seq, stream_seq, connection);
                            Envelope {
                                kind: Kind::Message,
                                sender: &sender,
                                timeout_ms: 0,
                                deadline_ms: wire::deadline_ms(expires),
                                stream_seq,
                                low,
                                trace,
                            }
                        };
                        let payload = envelope.wrap(&payload);
                        let reply = format!("{replies}.{seq}");
                        let published =
                            bounded(left, self.publish(subject, reply, durable_seq, payload)).await;
                        match published {
                            Some(Ok(())) => {}
                            Some(Err(err)) => self.not_sent(
                                seq,
                                request,
                                &format!("the NATS client did not take it: {err}"),
                            ),
                            None => self.not_sent(
                                seq,
                                request,
                                "the NATS client did not take it before it was due",
                            ),
                        }
                    }
                    Outbound::Publication {
                        subject,
                        sender,
                        payload,
                        trace,
                    } => {
                        self.release(payload.len() as u64);
                        let payload = Envelope {
                            kind: Kind::Publication,
                            sender: &sender,
                            timeout_ms: 0,
                            deadline_ms: 0,
                            stream_seq: 0,
                            low: 0,
                            trace,
                        }
                        .wrap(&payload);
                        let published =
                            bounded(NATS_WAIT, self.client.publish(subject, payload)).await;
                        if !matches!(published, Some(Ok(()))) {
                            self.counters
                                .publications_dropped
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                "publication not sent to other hosts: the NATS client did not take it"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Note that message `seq` goes on the wire now, on connection `connection`; the lowest
    /// number still open in its stream, for its envelope.
    fn going_out(&self, seq: u64, stream_seq: u64, connection: u64) -> u64 {
        let mut pending = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = pending.get_mut(seq) else {
            return stream_seq;
        };
        entry.published = Some(Instant::now());
        entry.connection = connection;
        let target = entry.message.target().clone();
        pending.low(&target, stream_seq)
    }

    /// Put on the wire again every message marked for it before anything newer goes, as
    /// the resend window makes room: while it is full, wait for acknowledgements (or
    /// endings) to free it. Returns at once while no server can be reached: what is
    /// queued then waits for a connection, and the reconnect marks everything again.
    async fn send_owed(&self, replies: &str, connection: &mut u64) {
        while self.send_again(replies, connection).await {
            // Woken when an ending makes room; the sleep bounds the wait should the
            // notification have gone to the `select!` before this loop.
            let _ =
                tokio::time::timeout(Duration::from_millis(5), self.resend_wake.notified()).await;
        }
    }

    /// Put on the wire again, in the order they were first queued, the numbered messages
    /// marked for it, and after a new connection every one that went out on an earlier
    /// one: the server that had them may have died with them, or with their
    /// acknowledgements. The serving host drops what it already has (`inbound.rs`).
    /// Returns whether some stay marked for want of room in the resend window.
    pub(crate) async fn send_again(&self, replies: &str, connection: &mut u64) -> bool {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return false;
        }
        let now_connection = self.connections();
        if now_connection == *connection && !self.resend_marked.load(Ordering::Acquire) {
            return false;
        }
        let margin = self.margin();
        let timeout = self.config.ack_timeout;
        let (resends, left) = {
            let mut pending = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
            if now_connection != *connection {
                *connection = now_connection;
                pending.mark(|entry| entry.connection != now_connection);
            }
            if pending.marked() == 0 {
                self.resend_marked.store(false, Ordering::Release);
                return false;
            }
            // Only what can still be acknowledged before it is given up on goes again.
            let taken = pending.take_marked(now_connection, |entry| {
                entry.queued.elapsed() + margin < timeout
            });
            let left = pending.marked() > 0;
            self.resend_marked.store(left, Ordering::Release);
            (taken, left)
        };
        if resends.is_empty() {
            return left;
        }
        self.counters
            .resent
            .fetch_add(resends.len() as u64, Ordering::Relaxed);
        for resend in resends {
            let payload = Envelope {
                kind: Kind::Message,
                sender: &resend.sender,
                timeout_ms: 0,
                deadline_ms: wire::deadline_ms(resend.queued + timeout),
                stream_seq: resend.stream_seq,
                low: resend.low,
                trace: resend.trace,
            }
            .wrap(&resend.payload);
            let published = bounded(
                NATS_WAIT,
                self.publish(
                    self.subjects.actor(&resend.target),
                    format!("{replies}.{}", resend.seq),
                    resend.durable_seq,
                    payload,
                ),
            )
            .await;
            if !matches!(published, Some(Ok(()))) {
                // It stays unacknowledged: the next round or its expiry ends it.
                tracing::debug!(seq = resend.seq, "a message sent again was not taken");
            }
        }
        left
    }

    /// Publish a message on `subject` with `reply`, and a durable sender's number in its
    /// headers when it has one.
    async fn publish(
        &self,
        subject: String,
        reply: String,
        durable_seq: Option<u64>,
        payload: Bytes,
    ) -> Result<(), async_nats::PublishError> {
        match durable_seq {
            None => {
                self.client
                    .publish_with_reply(subject, reply, payload)
                    .await
            }
            Some(seq) => {
                self.client
                    .publish_with_reply_and_headers(
                        subject,
                        reply,
                        wire::durable_headers(seq),
                        payload,
                    )
                    .await
            }
        }
    }

    /// Wait until the client is connected, at most until `until`; whether it is.
    async fn wait_connected(&self, until: Instant) -> bool {
        loop {
            if self.client.connection_state() == async_nats::connection::State::Connected {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether a requester still waits for the answer to request `seq`.
    fn waiting_for(&self, seq: u64) -> bool {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&seq)
    }

    /// End `seq`, which never went on the wire: a request's requester hears `timeout`, a
    /// message is dead-lettered as not sent.
    fn not_sent(&self, seq: u64, request: bool, why: &str) {
        if request {
            self.answer(seq, Err(MessagingError::Timeout));
        } else if let Some(unacked) = self.take_unacked(seq, &self.counters.unsent) {
            unacked
                .message
                .dead_letter(&format!("not sent: {why}; it did not reach another host"));
        }
    }
}

impl Remote for Gateway {
    fn send(&self, message: RemoteMessage) -> Result<(), RemoteRefusal> {
        let inner = &self.0;
        let subject = match inner.address(message.target(), message.payload().len()) {
            Ok(subject) => subject,
            Err(error) => {
                inner.counters.refused_here.fetch_add(1, Ordering::Relaxed);
                return Err(RemoteRefusal { error, message });
            }
        };
        let seq = inner.next_seq();
        let target = message.target().clone();
        let len = message.payload().len() as u64;
        if let Err(error) = inner.reserve(len, &target) {
            inner.counters.refused_here.fetch_add(1, Ordering::Relaxed);
            return Err(RemoteRefusal { error, message });
        }
        let queued = Instant::now();
        // Numbered, so it can be sent again, when one host serves the target alone.
        let numbered = inner.directory.serves_alone(&target);
        let mut pending = inner.unacked.lock().unwrap_or_else(|e| e.into_inner());
        let stream_seq = if numbered { pending.number(&target) } else { 0 };
        let item = Outbound::Addressed {
            seq,
            request: false,
            stream_seq,
            durable_seq: message.durable_seq(),
            subject,
            sender: message.sender().clone(),
            payload: message.payload().clone(),
            expires: queued + inner.config.ack_timeout,
            trace: message.trace(),
        };
        // On record, and counted sent, before it can be acknowledged; queued under the
        // same lock that numbered it, so the numbers of a stream go on the wire in order.
        pending.insert(
            seq,
            Unacked {
                queued,
                len,
                message,
                stream_seq,
                published: None,
                connection: 0,
                resend: false,
                no_responders: false,
                again: false,
            },
        );
        inner.counters.sent.fetch_add(1, Ordering::Relaxed);
        let pushed = inner.push(item, &target);
        drop(pending);
        if let Err(error) = pushed {
            // Never queued, so never acknowledged: it comes back as it went in, unless the
            // lattice ended it meanwhile (dropped), which accounted for it.
            let taken = {
                let mut pending = inner.unacked.lock().unwrap_or_else(|e| e.into_inner());
                let taken = pending.remove(seq);
                if taken.is_some() {
                    pending.unnumber(&target, stream_seq);
                    inner.counters.sent.fetch_sub(1, Ordering::Relaxed);
                    inner.counters.refused_here.fetch_add(1, Ordering::Relaxed);
                }
                taken
            };
            if let Some(unacked) = taken {
                inner.release(len);
                return Err(RemoteRefusal {
                    error,
                    message: unacked.message,
                });
            }
        }
        Ok(())
    }

    fn request(
        &self,
        sender: &ComponentId,
        target: &str,
        payload: Bytes,
        timeout: Duration,
        trace: Option<TraceContext>,
    ) -> BoxFuture<'static, Result<Vec<u8>, MessagingError>> {
        let inner = self.0.clone();
        let subject = match inner.address(target, payload.len()) {
            Ok(subject) => subject,
            Err(error) => {
                inner.counters.refused_here.fetch_add(1, Ordering::Relaxed);
                return Box::pin(async move { Err(error) });
            }
        };
        if let Err(error) = inner.reserve(payload.len() as u64, target) {
            inner.counters.refused_here.fetch_add(1, Ordering::Relaxed);
            return Box::pin(async move { Err(error) });
        }
        let seq = inner.next_seq();
        let (answer, answered) = oneshot::channel();
        inner
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq, answer);
        let len = payload.len() as u64;
        let item = Outbound::Addressed {
            seq,
            request: true,
            stream_seq: 0,
            durable_seq: None,
            subject,
            // The time left goes into the envelope as the request goes on the wire.
            sender: sender.clone(),
            payload,
            expires: Instant::now() + timeout,
            trace,
        };
        if let Err(error) = inner.push(item, target) {
            inner.counters.refused_here.fetch_add(1, Ordering::Relaxed);
            inner.release(len);
            inner
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&seq);
            return Box::pin(async move { Err(error) });
        }
        inner.counters.requests.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            // Whatever ends the wait (an answer, the caller's timeout, the caller giving
            // up), the entry goes.
            let forget = Forget { inner: &inner, seq };
            let answer = match tokio::time::timeout(timeout, answered).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(MessagingError::ShuttingDown),
                Err(_) => Err(MessagingError::Timeout),
            };
            drop(forget);
            answer
        })
    }

    fn publish(
        &self,
        sender: &ComponentId,
        topic: &str,
        payload: Bytes,
        trace: Option<TraceContext>,
    ) {
        let inner = &self.0;
        if inner.leaving.load(Ordering::Acquire) {
            return;
        }
        if payload.len() > inner.max_payload() {
            inner
                .counters
                .publications_dropped
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %sender,
                topic = %wire::header_text(topic),
                len = payload.len(),
                limit = inner.max_payload(),
                "publication too large for other hosts; delivered on this host only"
            );
            return;
        }
        let len = payload.len() as u64;
        let item = Outbound::Publication {
            subject: inner.subjects.topic(topic),
            sender: sender.clone(),
            payload,
            trace,
        };
        let queued = inner
            .reserve(len, topic)
            .and_then(|()| inner.push(item, topic).inspect_err(|_| inner.release(len)));
        match queued {
            Ok(()) => {
                inner.counters.publications.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                inner
                    .counters
                    .publications_dropped
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%sender, "publication not sent to other hosts: outbound queue full");
            }
        }
    }

    fn serve(&self, served: Served) -> BoxFuture<'static, Result<(), String>> {
        let inner = self.0.clone();
        Box::pin(async move { inner.serve(served).await })
    }

    fn withdraw(&self, id: &ComponentId) {
        self.0.withdraw(id);
    }

    fn place(&self, component: &str, key: &str) -> courier_host_broker::Placement {
        self.0.place(component, key)
    }
}

/// Removes a request's entry from the waiting list when its wait ends.
struct Forget<'a> {
    inner: &'a Inner,
    seq: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.seq);
    }
}
