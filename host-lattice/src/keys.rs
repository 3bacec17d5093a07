//! Keyed components served by several hosts: each key is placed on one of them by
//! rendezvous hashing, and messages and requests for it go to that host alone.
//!
//! Every host that serves the keyed component `cart` lists it in its heartbeat (`keyed`),
//! and subscribes to the keys placed on it, `courier.<lattice>.y.*.<host>.cart.>`. The
//! owner of `cart/8812` is, among the hosts the directory lists for `cart` (and this host,
//! if it serves `cart` too), the one with the highest score of a hash of (host, key):
//! every host with the same view of who serves `cart` picks the same owner, whichever host
//! sends, and when a host joins or leaves only the keys it wins or held move (about one key
//! in n+1 on a join to n hosts, and exactly the departed host's keys on a leave).
//!
//! A host whose view changes puts away the keys it no longer owns
//! ([`Broker::release_moved_keys`](courier_host_broker::Broker::release_moved_keys)), and
//! one that leaves puts away all of them. What another host sends by an older view to a
//! host that does not own the key is refused with the host that does, and ends at its
//! sender as any refusal from another host does (a dead letter with the reason, or the
//! requester's error): never lost without a record.

use std::sync::Arc;
use std::time::Instant;

use async_nats::Subscriber;
use courier_host_broker::{ComponentId, MessagingError, Placement};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::lattice::{CONFIRM_TIMEOUT, Inner, NATS_WAIT, PROBE_TIMEOUT, bounded, stopped};
use crate::serving::Acks;

/// The host among `hosts` that owns `id` (`<component>/<key>`): the one whose hash with
/// `id` scores highest (rendezvous, or highest-random-weight, hashing). `None` when
/// `hosts` is empty. The hash is fixed here (FNV-1a, then a 64-bit finaliser), not the
/// standard library's, so hosts built by different compilers agree.
pub(crate) fn owner<'a>(hosts: impl IntoIterator<Item = &'a str>, id: &str) -> Option<&'a str> {
    hosts
        .into_iter()
        .max_by_key(|host| (score(host, id), *host))
}

/// The weight of `host` for `id`.
fn score(host: &str, id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in host.bytes().chain([0xff]).chain(id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV alone mixes the last bytes poorly, and keys often differ only there.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

impl Inner {
    /// Whether this host serves `component` as a keyed component.
    fn serves_keyed(&self, component: &str) -> bool {
        self.serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(component)
            .is_some_and(|serving| serving.keyed)
    }

    /// The host that owns the key `id` of `component`, by this host's view: among the
    /// other hosts the directory lists for `component`, and this one if `here` (it serves
    /// `component` too). `None` when none serves it.
    fn owner_of(&self, component: &str, id: &str, here: bool) -> Option<String> {
        let others = self.directory.keyed_hosts(component);
        let me = here.then_some(self.config.host.as_str());
        owner(others.iter().map(String::as_str).chain(me), id).map(str::to_string)
    }

    /// Where the key `key` of `component`, which this host serves, runs. A host that is
    /// leaving places its keys on the others, if there are any.
    pub(crate) fn place(&self, component: &str, key: &str) -> Placement {
        let id = format!("{component}/{key}");
        let here = !self.leaving.load(std::sync::atomic::Ordering::Acquire);
        match self.owner_of(component, &id, here) {
            Some(host) if host != self.config.host => Placement::Elsewhere(host),
            _ => Placement::Here,
        }
    }

    /// The subject to send `target` on, if it is a key of a keyed component some host
    /// serves: the one its owner hears. `None` if it is not; the refusal if its owner is
    /// this host, which does not hold the key (this host's broker routes its own keys).
    pub(crate) fn key_subject(&self, target: &str) -> Option<Result<String, MessagingError>> {
        let (component, _) = target.split_once('/')?;
        let here = self.serves_keyed(component);
        let owner = self.owner_of(component, target, here)?;
        if owner == self.config.host {
            return Some(Err(MessagingError::TargetNotFound(target.to_string())));
        }
        Some(Ok(self.subjects.key(&owner, target)))
    }

    /// The subject to send `len` bytes to `target` on, or the refusal before the wire:
    /// its owner's subject for a key, the id's own subject otherwise.
    pub(crate) fn address(&self, target: &str, len: usize) -> Result<String, MessagingError> {
        match self.key_subject(target) {
            None => match self.refuse_early(target, len) {
                Some(error) => Err(error),
                None => Ok(self.subjects.actor(target)),
            },
            Some(Err(error)) => Err(error),
            Some(Ok(subject)) => {
                // The component is served (its owner was found): the other checks.
                let component = target.split_once('/').map_or(target, |(c, _)| c);
                match self.refuse_early(component, len) {
                    Some(error) => Err(error),
                    None => Ok(subject),
                }
            }
        }
    }

    /// Put away the keys this host no longer owns, of every keyed component it serves: the
    /// hosts serving one changed.
    pub(crate) fn release_moved_keys(&self) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        for id in self.keyed_components() {
            let moved = broker.release_moved_keys(&id);
            if moved > 0 {
                tracing::info!(component = %id, keys = moved, "keys placed on another host now: putting them away here");
            }
        }
    }

    /// Put away every key of the keyed components this host serves, and wait until they
    /// are (at most until `deadline`): this host is leaving, and the others place its keys
    /// from now on.
    pub(crate) async fn put_keys_away(&self, deadline: Instant) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let keyed: Vec<ComponentId> = self.keyed_components();
        for id in &keyed {
            broker.release_keys(id);
        }
        let away = || {
            broker
                .keyed_metrics()
                .iter()
                .filter(|m| keyed.contains(&m.id))
                .all(|m| m.active == 0 && m.passivating == 0)
        };
        while !away() && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// The keyed components this host serves.
    fn keyed_components(&self) -> Vec<ComponentId> {
        self.serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, serving)| serving.keyed)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Subscribe to the keys of `component` placed on this host and start the task that
    /// reads them, once a probe shows the server has the subscription.
    pub(crate) async fn subscribe_keys(
        self: &Arc<Self>,
        component: &ComponentId,
    ) -> Result<(JoinHandle<()>, watch::Sender<bool>), String> {
        let subject = self.subjects.keys_from_any(component);
        let subscriber = bounded(CONFIRM_TIMEOUT, self.client.subscribe(subject.clone()))
            .await
            .ok_or_else(|| {
                format!("cannot subscribe to `{subject}`: the NATS client did not take it")
            })?
            .map_err(|err| format!("cannot subscribe to `{subject}`: {err}"))?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(self.clone().serve_keys(subscriber, stopped));
        // Any key's subject on this host answers the probe.
        let probe = self
            .subjects
            .key(&self.config.host, &format!("{component}/probe"));
        let deadline = Instant::now() + CONFIRM_TIMEOUT;
        loop {
            if self.probe(&probe, PROBE_TIMEOUT).await.as_deref() == Some(&self.config.host) {
                return Ok((task, stop));
            }
            if Instant::now() >= deadline {
                let _ = stop.send(true);
                return Err(format!(
                    "the subscription to `{subject}` was not confirmed within {}",
                    courier_host_core::units::format_duration(CONFIRM_TIMEOUT)
                ));
            }
        }
    }

    /// Read what other hosts send to the keys placed here until told to stop; then
    /// unsubscribe and handle what had already come. Messages to keys are not numbered
    /// (their owner can change), so there is nothing to hold for its turn.
    async fn serve_keys(
        self: Arc<Self>,
        mut subscriber: Subscriber,
        mut own_stop: watch::Receiver<bool>,
    ) {
        let mut stop = self.stop.subscribe();
        let mut acks = Acks::default();
        loop {
            let next = match subscriber.next().now_or_never() {
                Some(next) => next,
                None => {
                    self.send_acks(&mut acks).await;
                    tokio::select! {
                        biased;
                        next = subscriber.next() => next,
                        _ = stopped(&mut stop) => break,
                        _ = stopped(&mut own_stop) => break,
                    }
                }
            };
            let Some(message) = next else {
                self.send_acks(&mut acks).await;
                return;
            };
            self.key_arrival(message, &mut acks).await;
            if acks.due() {
                self.send_acks(&mut acks).await;
            }
        }
        let _ = bounded(NATS_WAIT, subscriber.unsubscribe()).await;
        let rest = async {
            while let Some(message) = subscriber.next().await {
                self.key_arrival(message, &mut acks).await;
                if acks.due() {
                    self.send_acks(&mut acks).await;
                }
            }
        };
        let _ = bounded(NATS_WAIT, rest).await;
        self.send_acks(&mut acks).await;
    }

    /// A message, request or probe for a key placed here, named by its subject.
    async fn key_arrival(self: &Arc<Self>, message: async_nats::Message, acks: &mut Acks) {
        match self.subjects.key_of(&message.subject) {
            Some(id) => self.arrival(&ComponentId::from(id), message, acks).await,
            None => {
                self.counters
                    .malformed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<String> {
        (0..10_000).map(|i| format!("cart/{i}")).collect()
    }

    fn placed<'a>(hosts: &[&'a str], keys: &[String]) -> Vec<&'a str> {
        keys.iter()
            .map(|key| owner(hosts.iter().copied(), key).unwrap())
            .collect()
    }

    #[test]
    fn the_owner_of_a_key_is_the_same_whoever_asks_and_in_whatever_order() {
        assert_eq!(owner([], "cart/1"), None);
        assert_eq!(owner(["a"], "cart/1"), Some("a"));
        for key in keys().iter().take(100) {
            assert_eq!(
                owner(["a", "b", "c"], key),
                owner(["c", "a", "b"], key),
                "{key}"
            );
        }
        // Fixed by the hash, not by the build: a host built otherwise must agree.
        assert_eq!(score("a", "cart/1"), score("a", "cart/1"));
        assert_ne!(score("a", "cart/1"), score("b", "cart/1"));
        assert_ne!(score("a", "cart/1"), score("a", "cart/2"));
        assert_eq!(
            score("a", "cart/1"),
            0x3f1f_1529_8177_07ea,
            "the hash changed: hosts of two versions would place keys differently"
        );
    }

    #[test]
    fn keys_spread_evenly_over_the_hosts() {
        let keys = keys();
        let two = placed(&["a", "b"], &keys);
        let on_a = two.iter().filter(|h| **h == "a").count();
        assert!(
            (4_500..=5_500).contains(&on_a),
            "{on_a} of 10,000 keys on a"
        );
        let four = placed(&["a", "b", "c", "d"], &keys);
        for host in ["a", "b", "c", "d"] {
            let on = four.iter().filter(|h| **h == host).count();
            assert!(
                (2_200..=2_800).contains(&on),
                "{on} of 10,000 keys on {host}"
            );
        }
    }

    #[test]
    fn only_the_departed_hosts_keys_move_and_a_joining_host_takes_only_its_own() {
        let keys = keys();
        let before = placed(&["a", "b", "c"], &keys);
        let after = placed(&["a", "c"], &keys);
        for (key, (was, is)) in keys.iter().zip(before.iter().zip(&after)) {
            if *was != "b" {
                assert_eq!(was, is, "{key} moved though its host stayed");
            }
        }
        // And back: the keys that move to a joining host come to it, from wherever.
        for (key, (was, is)) in keys.iter().zip(after.iter().zip(&before)) {
            if was != is {
                assert_eq!(
                    *is, "b",
                    "{key} moved to another host than the one that joined"
                );
            }
        }
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!(
            (2_800..=3_900).contains(&moved),
            "{moved} of 10,000 keys moved"
        );
    }
}
