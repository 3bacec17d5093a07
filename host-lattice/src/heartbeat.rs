//! Heartbeats: what this host tells the others it serves, and what it hears of theirs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::{HeaderMap, Subscriber};
use bytes::Bytes;
use courier_host_broker::Exposure;
use futures_util::StreamExt;

use crate::directory::{Conflict, Heartbeat};
use crate::lattice::{Inner, NATS_WAIT, bounded};
use crate::wire;

impl Inner {
    /// Publish what this host serves; `leaving` says it serves nothing from now on.
    pub(crate) async fn publish_heartbeat(&self, leaving: bool) {
        let heartbeat = if leaving {
            Heartbeat {
                host: self.config.host.clone(),
                leaving: true,
                ..Heartbeat::default()
            }
        } else {
            self.heartbeat()
        };
        let body = serde_json::to_vec(&heartbeat).unwrap_or_default();
        match bounded(
            NATS_WAIT,
            self.client.publish(self.subjects.heartbeat(), body.into()),
        )
        .await
        {
            Some(Ok(())) => {}
            Some(Err(err)) => tracing::warn!(error = %err, "heartbeat not sent"),
            None => tracing::warn!("heartbeat not sent: the NATS client is not taking messages"),
        }
    }

    pub(crate) fn heartbeat(&self) -> Heartbeat {
        let serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        let mut heartbeat = Heartbeat {
            host: self.config.host.clone(),
            ..Heartbeat::default()
        };
        let mut topics = BTreeSet::new();
        for (id, serving) in serving.iter() {
            if serving.keyed {
                heartbeat.keyed.push(id.to_string());
                continue;
            }
            match serving.exposure {
                Exposure::Lattice => heartbeat.served.push(id.to_string()),
                Exposure::Replicated => heartbeat.replicated.push(id.to_string()),
                Exposure::Local => {}
            }
            topics.extend(serving.subscriptions.iter().map(|p| p.to_string()));
        }
        heartbeat.served.sort();
        heartbeat.replicated.sort();
        heartbeat.keyed.sort();
        heartbeat.topics = topics.into_iter().collect();
        heartbeat
    }

    pub(crate) async fn beat(self: Arc<Self>) {
        let period = self.config.heartbeat;
        let mut ticks = tokio::time::interval(period);
        loop {
            ticks.tick().await;
            if self.leaving.load(Ordering::Acquire) {
                return;
            }
            self.publish_heartbeat(false).await;
            if self.directory.expire(period * 3) {
                self.release_moved_keys();
            }
        }
    }

    pub(crate) async fn hear_heartbeats(self: Arc<Self>, mut heartbeats: Subscriber) {
        while let Some(message) = heartbeats.next().await {
            // `courier.<lattice>.h.<host>.hb`
            let Some(from) = message.subject.split('.').nth(3) else {
                continue;
            };
            if from == self.config.host {
                continue;
            }
            match serde_json::from_slice::<Heartbeat>(&message.payload) {
                Ok(heartbeat) => {
                    if self.directory.heard(from, heartbeat) {
                        self.release_moved_keys();
                        self.report_conflicts();
                        self.recheck_doubtful(from);
                    }
                }
                Err(err) => {
                    tracing::warn!(host = %wire::header_text(from), error = %err, "unreadable heartbeat")
                }
            }
        }
    }

    /// Answer, with this run's incarnation, every host that asks whether this host name is
    /// taken.
    pub(crate) async fn answer_who(self: Arc<Self>, mut who: Subscriber) {
        while let Some(message) = who.next().await {
            let Some(reply) = message.reply else {
                continue;
            };
            let mut headers = HeaderMap::new();
            headers.insert(wire::HOST, self.config.host.as_str());
            headers.insert(wire::INCARNATION, self.incarnation.as_str());
            let _ = bounded(
                NATS_WAIT,
                self.client
                    .publish_with_headers(reply, headers, Bytes::new()),
            )
            .await;
        }
    }

    pub(crate) async fn hear_hellos(self: Arc<Self>, mut hellos: Subscriber) {
        while let Some(message) = hellos.next().await {
            if message.subject.split('.').nth(3) != Some(self.config.host.as_str()) {
                self.publish_heartbeat(false).await;
            }
        }
    }

    /// The ids more than one host claims to serve alone, this host included.
    pub(crate) fn conflicts(&self) -> Vec<Conflict> {
        let serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        let own = serving
            .iter()
            .filter(|(_, s)| s.exposure == Exposure::Lattice)
            .map(|(id, _)| &**id);
        self.directory.conflicts(&self.config.host, own)
    }

    /// Log each conflict once when it appears, and again if it comes back after it ended.
    pub(crate) fn report_conflicts(&self) {
        let conflicts = self.conflicts();
        let mut reported = self
            .reported_conflicts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for conflict in &conflicts {
            if reported.insert(conflict.id.clone()) {
                tracing::error!(
                    component = %conflict.id,
                    hosts = ?conflict.hosts,
                    "more than one host serves this id alone; each message goes to one of them, \
                     so its order and state are split until all but one stop it"
                );
            }
        }
        reported.retain(|id| conflicts.iter().any(|c| &c.id == id));
    }
}
