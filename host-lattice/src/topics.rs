//! Publications from other hosts: one subscription per topic pattern this host's
//! components hear, the fewest that cover them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::Subscriber;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use crate::lattice::{Inner, NATS_WAIT, bounded, stopped, valid_sender};
use crate::wire::{Envelope, Kind};

impl Inner {
    /// Subscribe to the topics this host's components hear, once each: the fewest
    /// subjects that cover them, so a publication reaches this host once. One change at a
    /// time: two at once (two spawns) would both see a topic missing and subscribe twice.
    pub(crate) async fn resubscribe_topics(self: &Arc<Self>) {
        let _one_at_a_time = self.topics_changing.lock().await;
        let patterns: Vec<courier_host_broker::Pattern> = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|s| s.subscriptions.iter().cloned())
            .collect();
        let wanted = covering(&patterns);
        let wanted: BTreeSet<String> = wanted
            .iter()
            .map(|p| self.subjects.topic_pattern(p))
            .collect();
        let (to_add, to_drop): (Vec<String>, Vec<JoinHandle<()>>) = {
            let mut tasks = self.topic_tasks.lock().unwrap_or_else(|e| e.into_inner());
            let to_drop = tasks
                .extract_if(|subject, _| !wanted.contains(subject))
                .map(|(_, task)| task)
                .collect();
            let to_add = wanted
                .iter()
                .filter(|subject| !tasks.contains_key(*subject))
                .cloned()
                .collect();
            (to_add, to_drop)
        };
        for task in to_drop {
            task.abort();
        }
        for subject in to_add {
            match bounded(NATS_WAIT, self.client.subscribe(subject.clone())).await {
                Some(Ok(subscriber)) => {
                    let task = tokio::spawn(self.clone().hear_topic(subscriber));
                    self.topic_tasks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(subject, task);
                }
                Some(Err(err)) => tracing::error!(%subject, error = %err, "cannot hear topic"),
                None => {
                    tracing::error!(%subject, "cannot hear topic: the NATS client did not take the subscription")
                }
            }
        }
        let _ = bounded(NATS_WAIT, self.client.flush()).await;
    }

    /// A publication from another host on a topic this host hears.
    pub(crate) async fn hear_topic(self: Arc<Self>, mut subscriber: Subscriber) {
        let mut stop = self.stop.subscribe();
        loop {
            let message = tokio::select! {
                biased;
                message = subscriber.next() => match message {
                    Some(message) => message,
                    None => return,
                },
                _ = stopped(&mut stop) => return,
            };
            let Some((from, topic)) = self.subjects.publication(&message.subject) else {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if from == self.config.host {
                // Its own publication, already delivered here.
                continue;
            }
            let opened = Envelope::open(&message.payload)
                .filter(|(envelope, _)| envelope.kind == Kind::Publication);
            let sender = opened
                .as_ref()
                .and_then(|(envelope, _)| valid_sender(envelope.sender));
            let (Some((envelope, at)), Some(sender)) = (opened, sender) else {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if self.forged(from, &sender) {
                self.counters.forged.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(broker) = self.broker.upgrade() else {
                return;
            };
            self.counters
                .arrived_publications
                .fetch_add(1, Ordering::Relaxed);
            let trace = envelope.trace;
            broker.accept_publication(&sender, &topic, message.payload.slice(at..), trace);
        }
    }
}

/// The fewest patterns that match every topic `patterns` match, none covering another:
/// `*` covers all, `a/*` covers `a/b` and `a/b/*`.
fn covering(patterns: &[courier_host_broker::Pattern]) -> Vec<courier_host_broker::Pattern> {
    use courier_host_broker::Pattern;
    let covers = |outer: &Pattern, inner: &Pattern| match (outer, inner) {
        (Pattern::Any, _) => true,
        (Pattern::Prefix(outer), Pattern::Prefix(inner)) => {
            inner.starts_with(outer.as_str()) && inner.len() > outer.len()
        }
        (Pattern::Prefix(_), Pattern::Exact(name)) => outer.matches(name),
        _ => false,
    };
    let mut unique: Vec<Pattern> = Vec::new();
    for pattern in patterns {
        if !unique.contains(pattern) {
            unique.push(pattern.clone());
        }
    }
    unique
        .iter()
        .filter(|p| !unique.iter().any(|q| q != *p && covers(q, p)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_host_broker::Pattern;

    #[test]
    fn topic_subscriptions_cover_each_topic_once() {
        let patterns = [
            Pattern::parse("news"),
            Pattern::parse("scores/*"),
            Pattern::parse("scores/eu"),
            Pattern::parse("scores/eu/*"),
            Pattern::parse("news"),
        ];
        assert_eq!(
            covering(&patterns),
            [Pattern::parse("news"), Pattern::parse("scores/*")]
        );
        let with_any = [Pattern::parse("news"), Pattern::Any];
        assert_eq!(covering(&with_any), [Pattern::Any]);
    }
}
