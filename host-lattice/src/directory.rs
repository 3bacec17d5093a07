//! What this host knows of the others: who is there and what each serves, from their
//! heartbeats.
//!
//! A send to an id no host serves is refused here, at once, with `target-not-found`,
//! without anything going on the wire. The directory can be behind by a moment (a host
//! that just started serving an id announces it at once, but the announcement takes a
//! round trip); a host that vanished is forgotten after three missed heartbeats, and
//! until then a send to it ends as `no-host` when NATS finds nobody listening.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The most hosts a directory keeps: a lattice of hosts is trusted, but what it may make
/// this host store is bounded all the same.
pub const MAX_HOSTS: usize = 1024;

/// The most ids and topics kept from one host's heartbeat.
pub const MAX_ENTRIES_PER_HOST: usize = 65_536;

/// What a host says in its heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    pub(crate) host: String,
    /// Ids it serves alone.
    #[serde(default)]
    pub(crate) served: Vec<String>,
    /// Ids it serves as one of several replicas.
    #[serde(default)]
    pub(crate) replicated: Vec<String>,
    /// Keyed components it serves with others, each key placed on one of them.
    #[serde(default)]
    pub(crate) keyed: Vec<String>,
    /// Topic patterns its components subscribe to.
    #[serde(default)]
    pub(crate) topics: Vec<String>,
    /// Set in the last heartbeat of a host that is leaving.
    #[serde(default)]
    pub(crate) leaving: bool,
}

/// Another host of the lattice, as last heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Its name.
    pub host: String,
    /// The ids it serves alone.
    pub served: Vec<String>,
    /// The ids it serves as one of several replicas.
    pub replicated: Vec<String>,
    /// The keyed components it serves with others, each key placed on one of them.
    pub keyed: Vec<String>,
    /// The topic patterns its components subscribe to.
    pub topics: Vec<String>,
    /// How long ago its last heartbeat came.
    pub last_heard: Duration,
}

/// The most bytes of ids and topics the directory keeps from all hosts together.
pub const MAX_DIRECTORY_BYTES: usize = 64 << 20;

/// An id that more than one host says it serves alone: each message to it goes to one of
/// them (every id is a queue group), but which one is not defined, so per-sender order and
/// the component's state are split between them until one stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The id.
    pub id: String,
    /// The hosts that claim it, sorted (this host among them when it does).
    pub hosts: Vec<String>,
}

struct Seen {
    heartbeat: Heartbeat,
    at: Instant,
    /// The bytes of its ids and topics, counted against [`MAX_DIRECTORY_BYTES`].
    bytes: usize,
}

/// Who serves each id: kept up to date host by host as heartbeats change, never rebuilt
/// from every host.
#[derive(Default)]
struct Index {
    /// For every id some other host serves: the hosts that serve it alone, and how many
    /// serve it as replicas.
    ids: HashMap<String, Claims>,
}

#[derive(Default)]
struct Claims {
    exclusive: Vec<String>,
    replicas: Vec<String>,
    /// The hosts that serve it as a keyed component, over which its keys are placed.
    keyed: Vec<String>,
}

impl Claims {
    fn is_empty(&self) -> bool {
        self.exclusive.is_empty() && self.replicas.is_empty() && self.keyed.is_empty()
    }
}

/// How long a host that stopped serving an id may still acknowledge messages to it: a
/// serving task sends the acknowledgements it gathered as it stops, and they can arrive
/// after the heartbeat that no longer lists the id.
pub(crate) const WITHDRAWN_GRACE: Duration = Duration::from_secs(10);

impl Index {
    fn add(&mut self, heartbeat: &Heartbeat) {
        for id in &heartbeat.served {
            let claims = self.ids.entry(id.clone()).or_default();
            if !claims.exclusive.contains(&heartbeat.host) {
                claims.exclusive.push(heartbeat.host.clone());
            }
        }
        for id in &heartbeat.replicated {
            let claims = self.ids.entry(id.clone()).or_default();
            if !claims.replicas.contains(&heartbeat.host) {
                claims.replicas.push(heartbeat.host.clone());
            }
        }
        for id in &heartbeat.keyed {
            let claims = self.ids.entry(id.clone()).or_default();
            if !claims.keyed.contains(&heartbeat.host) {
                claims.keyed.push(heartbeat.host.clone());
            }
        }
    }

    fn remove(&mut self, heartbeat: &Heartbeat) {
        for id in &heartbeat.served {
            if let Some(claims) = self.ids.get_mut(id) {
                claims.exclusive.retain(|host| *host != heartbeat.host);
            }
        }
        for id in &heartbeat.replicated {
            if let Some(claims) = self.ids.get_mut(id) {
                claims.replicas.retain(|host| *host != heartbeat.host);
            }
        }
        for id in &heartbeat.keyed {
            if let Some(claims) = self.ids.get_mut(id) {
                claims.keyed.retain(|host| *host != heartbeat.host);
            }
        }
        for id in heartbeat
            .served
            .iter()
            .chain(&heartbeat.replicated)
            .chain(&heartbeat.keyed)
        {
            if self.ids.get(id).is_some_and(Claims::is_empty) {
                self.ids.remove(id);
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct Directory {
    hosts: RwLock<HashMap<String, Seen>>,
    index: RwLock<Index>,
    /// (host, id) pairs a host stopped serving, and when: within [`WITHDRAWN_GRACE`] its
    /// late acknowledgements still count. Bounded like the index: at most one entry per id
    /// a host ever listed, and each lives only for the grace.
    withdrawn: std::sync::Mutex<HashMap<(String, String), Instant>>,
    /// The bytes of every host's ids and topics together.
    bytes: std::sync::atomic::AtomicUsize,
}

/// The bytes a heartbeat's ids and topics take.
fn heartbeat_bytes(heartbeat: &Heartbeat) -> usize {
    heartbeat
        .served
        .iter()
        .chain(&heartbeat.replicated)
        .chain(&heartbeat.keyed)
        .chain(&heartbeat.topics)
        .map(|s| s.len() + std::mem::size_of::<String>())
        .sum()
}

impl Directory {
    /// Whether some other host serves `id`.
    pub(crate) fn serves(&self, id: &str) -> bool {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .contains_key(id)
    }

    /// Whether exactly one host serves `id`, alone: messages to it are numbered so they can
    /// be sent again (`pending.rs`). Sent again to a replicated id (or one two hosts claim)
    /// a message could reach another host than the first time, which could not know it.
    pub(crate) fn serves_alone(&self, id: &str) -> bool {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .get(id)
            .is_some_and(|c| c.exclusive.len() == 1 && c.replicas.is_empty())
    }

    /// Whether `host` serves `id` (alone or as a replica), or stopped within
    /// [`WITHDRAWN_GRACE`]: whether an acknowledgement from it for a message to `id` can be
    /// true.
    pub(crate) fn may_answer_for(&self, host: &str, id: &str) -> bool {
        let serves = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .get(id)
            .is_some_and(|c| c.exclusive.iter().chain(&c.replicas).any(|h| h == host));
        // A key is answered for by the hosts that serve its keyed component.
        let component = id.split_once('/').map(|(component, _)| component);
        let serves_key = component
            .is_some_and(|component| self.keyed_hosts(component).iter().any(|h| h == host));
        serves || serves_key || {
            let mut withdrawn = self.withdrawn.lock().unwrap_or_else(|e| e.into_inner());
            withdrawn.retain(|_, at| at.elapsed() < WITHDRAWN_GRACE);
            withdrawn.contains_key(&(host.to_string(), id.to_string()))
                || component.is_some_and(|component| {
                    withdrawn.contains_key(&(host.to_string(), component.to_string()))
                })
        }
    }

    /// The other hosts that serve `component` as a keyed component, whose keys are placed
    /// over them (and this host, if it serves it too).
    pub(crate) fn keyed_hosts(&self, component: &str) -> Vec<String> {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .get(component)
            .map(|c| c.keyed.clone())
            .unwrap_or_default()
    }

    /// The host other than `from` that serves `sender` alone, if one does: a message from
    /// `from` that names `sender` as its sender speaks for a component `from` does not run.
    pub(crate) fn runs_elsewhere(&self, from: &str, sender: &str) -> Option<String> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let claims = index.ids.get(sender)?;
        if claims
            .exclusive
            .iter()
            .chain(&claims.replicas)
            .any(|h| h == from)
        {
            return None;
        }
        claims.exclusive.first().cloned()
    }

    /// Note that `host` no longer serves what `heartbeat` listed and `now` does not.
    fn note_withdrawn(&self, old: &Heartbeat, now: Option<&Heartbeat>) {
        let still = |id: &String| {
            now.is_some_and(|now| {
                now.served.contains(id) || now.replicated.contains(id) || now.keyed.contains(id)
            })
        };
        let mut withdrawn = self.withdrawn.lock().unwrap_or_else(|e| e.into_inner());
        withdrawn.retain(|_, at| at.elapsed() < WITHDRAWN_GRACE);
        for id in old.served.iter().chain(&old.replicated).chain(&old.keyed) {
            if !still(id) && withdrawn.len() < MAX_ENTRIES_PER_HOST {
                withdrawn.insert((old.host.clone(), id.clone()), Instant::now());
            }
        }
    }

    /// Take in a heartbeat that came on `from`'s subject. One that names another host than
    /// the subject's is ignored: a host speaks only for itself. Returns whether what the
    /// directory knows changed.
    pub(crate) fn heard(&self, from: &str, mut heartbeat: Heartbeat) -> bool {
        use std::sync::atomic::Ordering;
        if heartbeat.host != from {
            return false;
        }
        heartbeat.served.truncate(MAX_ENTRIES_PER_HOST);
        heartbeat.replicated.truncate(MAX_ENTRIES_PER_HOST);
        heartbeat.keyed.truncate(MAX_ENTRIES_PER_HOST);
        heartbeat.topics.truncate(MAX_ENTRIES_PER_HOST);
        let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
        if heartbeat.leaving {
            if let Some(seen) = hosts.remove(from) {
                tracing::info!(host = from, "host left the lattice");
                self.note_withdrawn(&seen.heartbeat, None);
                self.forget(&seen);
            }
            return true;
        }
        if let Some(seen) = hosts.get_mut(from) {
            seen.at = Instant::now();
            if seen.heartbeat == heartbeat {
                return false;
            }
        }
        let bytes = heartbeat_bytes(&heartbeat);
        let before = hosts.get(from).map_or(0, |seen| seen.bytes);
        let total = self.bytes.load(Ordering::Relaxed) - before + bytes;
        if total > MAX_DIRECTORY_BYTES || (before == 0 && hosts.len() >= MAX_HOSTS) {
            tracing::warn!(
                host = from,
                bytes,
                "heartbeat not taken: the directory is full"
            );
            return false;
        }
        let seen = Seen {
            heartbeat,
            at: Instant::now(),
            bytes,
        };
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        match hosts.get(from) {
            Some(old) => {
                self.note_withdrawn(&old.heartbeat, Some(&seen.heartbeat));
                index.remove(&old.heartbeat);
            }
            None => tracing::info!(host = from, "host joined the lattice"),
        }
        index.add(&seen.heartbeat);
        hosts.insert(from.to_string(), seen);
        self.bytes.store(total, Ordering::Relaxed);
        true
    }

    /// Take a host's entries out of the index and the byte count.
    fn forget(&self, seen: &Seen) {
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seen.heartbeat);
        self.bytes
            .fetch_sub(seen.bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Forget hosts not heard from within `silence`; returns whether one was.
    pub(crate) fn expire(&self, silence: Duration) -> bool {
        let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<Seen> = hosts
            .extract_if(|host, seen| {
                let gone = seen.at.elapsed() > silence;
                if gone {
                    tracing::warn!(host, "host not heard from; forgetting what it served");
                }
                gone
            })
            .map(|(_, seen)| seen)
            .collect();
        for seen in &gone {
            self.note_withdrawn(&seen.heartbeat, None);
            self.forget(seen);
        }
        !gone.is_empty()
    }

    /// The ids more than one host claims to serve alone: among the other hosts, or one of
    /// them and this host (`own`, the ids this host serves alone, and `me`, its name).
    pub(crate) fn conflicts<'a>(
        &self,
        me: &str,
        own: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Conflict> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let mut conflicts: Vec<Conflict> = Vec::new();
        let mut own_ids = std::collections::HashSet::new();
        for id in own {
            own_ids.insert(id);
            if let Some(claims) = index.ids.get(id)
                && !claims.exclusive.is_empty()
            {
                let mut hosts = claims.exclusive.clone();
                hosts.push(me.to_string());
                hosts.sort();
                conflicts.push(Conflict {
                    id: id.to_string(),
                    hosts,
                });
            }
        }
        for (id, claims) in &index.ids {
            if claims.exclusive.len() > 1 && !own_ids.contains(id.as_str()) {
                let mut hosts = claims.exclusive.clone();
                hosts.sort();
                conflicts.push(Conflict {
                    id: id.clone(),
                    hosts,
                });
            }
        }
        conflicts.sort_by(|a, b| a.id.cmp(&b.id));
        conflicts
    }

    /// Every other host, sorted by name.
    pub(crate) fn hosts(&self) -> Vec<HostInfo> {
        let hosts = self.hosts.read().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<HostInfo> = hosts
            .values()
            .map(|seen| HostInfo {
                host: seen.heartbeat.host.clone(),
                served: seen.heartbeat.served.clone(),
                replicated: seen.heartbeat.replicated.clone(),
                keyed: seen.heartbeat.keyed.clone(),
                topics: seen.heartbeat.topics.clone(),
                last_heard: seen.at.elapsed(),
            })
            .collect();
        list.sort_by(|a, b| a.host.cmp(&b.host));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(host: &str, served: &[&str]) -> Heartbeat {
        Heartbeat {
            host: host.into(),
            served: served.iter().map(|s| s.to_string()).collect(),
            ..Heartbeat::default()
        }
    }

    #[test]
    fn a_host_is_known_by_its_heartbeat_and_forgotten_when_it_leaves_or_goes_quiet() {
        let directory = Directory::default();
        directory.heard("b", beat("b", &["pong"]));
        assert!(directory.serves("pong"));
        directory.heard("b", beat("b", &[]));
        assert!(!directory.serves("pong"), "it stopped serving pong");
        directory.heard("c", beat("c", &["echo"]));
        directory.heard(
            "c",
            Heartbeat {
                leaving: true,
                ..beat("c", &[])
            },
        );
        assert!(!directory.serves("echo"));
        directory.heard("d", beat("d", &["counter"]));
        directory.expire(Duration::ZERO);
        assert!(!directory.serves("counter"));
        assert!(directory.hosts().is_empty());
    }

    #[test]
    fn the_hosts_of_a_keyed_component_answer_for_its_keys() {
        let directory = Directory::default();
        for host in ["b", "c"] {
            directory.heard(
                host,
                Heartbeat {
                    keyed: vec!["cart".into()],
                    ..beat(host, &[])
                },
            );
        }
        assert!(directory.serves("cart"));
        assert!(!directory.serves_alone("cart"), "its keys are not numbered");
        let mut hosts = directory.keyed_hosts("cart");
        hosts.sort();
        assert_eq!(hosts, ["b", "c"]);
        assert!(directory.may_answer_for("b", "cart/8812"));
        assert!(!directory.may_answer_for("mallory", "cart/8812"));
        directory.heard(
            "c",
            Heartbeat {
                leaving: true,
                ..beat("c", &[])
            },
        );
        assert_eq!(directory.keyed_hosts("cart"), ["b"]);
        assert!(
            directory.may_answer_for("c", "cart/8812"),
            "acknowledgements it gathered before it left still count, for a while"
        );
    }

    #[test]
    fn a_host_speaks_only_for_itself() {
        let directory = Directory::default();
        directory.heard("mallory", beat("b", &["pong"]));
        assert!(!directory.serves("pong"));
    }

    #[test]
    fn only_a_host_that_serves_an_id_may_answer_for_it() {
        let directory = Directory::default();
        directory.heard("b", beat("b", &["pong"]));
        directory.heard(
            "c",
            Heartbeat {
                replicated: vec!["echo".into()],
                ..beat("c", &[])
            },
        );
        assert!(directory.may_answer_for("b", "pong"));
        assert!(directory.may_answer_for("c", "echo"));
        assert!(
            !directory.may_answer_for("c", "pong"),
            "c does not serve pong"
        );
        assert!(!directory.may_answer_for("mallory", "pong"));
        // A host that stops still answers for what it gathered, for a while.
        directory.heard("b", beat("b", &[]));
        assert!(directory.may_answer_for("b", "pong"));
        directory
            .withdrawn
            .lock()
            .unwrap()
            .values_mut()
            .for_each(|at| *at = at.checked_sub(WITHDRAWN_GRACE).unwrap());
        assert!(!directory.may_answer_for("b", "pong"), "the grace is over");

        // A sender id that one host runs alone is that host's to use.
        directory.heard("b", beat("b", &["pong"]));
        assert_eq!(directory.runs_elsewhere("c", "pong").as_deref(), Some("b"));
        assert_eq!(directory.runs_elsewhere("b", "pong"), None);
        assert_eq!(
            directory.runs_elsewhere("c", "echo"),
            None,
            "c's own replica"
        );
        assert_eq!(
            directory.runs_elsewhere("b", "ping"),
            None,
            "nobody serves ping"
        );
    }

    #[test]
    fn two_hosts_claiming_one_id_are_a_conflict_until_one_stops() {
        let directory = Directory::default();
        directory.heard("b", beat("b", &["pong", "echo"]));
        assert!(
            directory
                .conflicts("a", ["echo"])
                .iter()
                .any(|c| c.id == "echo" && c.hosts == ["a", "b"])
        );
        directory.heard("c", beat("c", &["pong"]));
        let conflicts = directory.conflicts("a", []);
        assert_eq!(
            conflicts,
            [Conflict {
                id: "pong".into(),
                hosts: vec!["b".into(), "c".into()]
            }]
        );
        directory.heard("c", beat("c", &[]));
        assert!(directory.conflicts("a", []).is_empty());
        assert!(directory.serves("pong"), "b still serves it");
    }

    #[test]
    fn the_directory_is_bounded_in_bytes_and_updated_host_by_host() {
        let directory = Directory::default();
        let big = "x".repeat(200);
        let many: Vec<String> = (0..MAX_ENTRIES_PER_HOST)
            .map(|i| format!("{big}{i}"))
            .collect();
        let mut hosts_taken = 0;
        for host in 0..10 {
            let name = format!("h{host}");
            let heartbeat = Heartbeat {
                host: name.clone(),
                topics: many.clone(),
                ..Heartbeat::default()
            };
            if directory.heard(&name, heartbeat) {
                hosts_taken += 1;
            }
        }
        assert!(hosts_taken > 0 && hosts_taken < 10, "{hosts_taken}");
        assert!(directory.bytes.load(std::sync::atomic::Ordering::Relaxed) <= MAX_DIRECTORY_BYTES);
        // A host that shrinks gives its bytes back, and the next one fits.
        directory.heard("h0", beat("h0", &["pong"]));
        assert!(directory.serves("pong"));
        directory.expire(Duration::ZERO);
        assert_eq!(
            directory.bytes.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        assert!(!directory.serves("pong"));
    }
}
