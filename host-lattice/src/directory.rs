//! What this host knows of the others: who is there and what each serves, from their
//! heartbeats.
//!
//! A send to an id no host serves is refused here, at once, with `target-not-found`,
//! without anything going on the wire. The directory can be behind by a moment (a host
//! that just started serving an id announces it at once, but the announcement takes a
//! round trip); a host that vanished is forgotten after three missed heartbeats, and
//! until then a send to it ends as `no-host` when NATS finds nobody listening.

use std::collections::{HashMap, HashSet};
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
    /// The topic patterns its components subscribe to.
    pub topics: Vec<String>,
    /// How long ago its last heartbeat came.
    pub last_heard: Duration,
}

struct Seen {
    heartbeat: Heartbeat,
    at: Instant,
}

#[derive(Default)]
pub(crate) struct Directory {
    hosts: RwLock<HashMap<String, Seen>>,
    /// Every id some other host serves.
    served: RwLock<HashSet<String>>,
}

impl Directory {
    /// Whether some other host serves `id`.
    pub(crate) fn serves(&self, id: &str) -> bool {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// Take in a heartbeat that came on `from`'s subject. One that names another host than
    /// the subject's is ignored: a host speaks only for itself.
    pub(crate) fn heard(&self, from: &str, mut heartbeat: Heartbeat) {
        if heartbeat.host != from {
            return;
        }
        heartbeat.served.truncate(MAX_ENTRIES_PER_HOST);
        heartbeat.replicated.truncate(MAX_ENTRIES_PER_HOST);
        heartbeat.topics.truncate(MAX_ENTRIES_PER_HOST);
        let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
        if heartbeat.leaving {
            if hosts.remove(from).is_some() {
                tracing::info!(host = from, "host left the lattice");
                self.reindex(&hosts);
            }
            return;
        }
        let full = hosts.len() >= MAX_HOSTS;
        let changed = match hosts.get_mut(from) {
            Some(seen) => {
                seen.at = Instant::now();
                let changed = seen.heartbeat != heartbeat;
                seen.heartbeat = heartbeat;
                changed
            }
            None if full => return,
            None => {
                tracing::info!(host = from, "host joined the lattice");
                hosts.insert(
                    from.to_string(),
                    Seen {
                        heartbeat,
                        at: Instant::now(),
                    },
                );
                true
            }
        };
        if changed {
            self.reindex(&hosts);
        }
    }

    /// Forget hosts not heard from within `silence`.
    pub(crate) fn expire(&self, silence: Duration) {
        let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
        let before = hosts.len();
        hosts.retain(|host, seen| {
            let alive = seen.at.elapsed() <= silence;
            if !alive {
                tracing::warn!(host, "host not heard from; forgetting what it served");
            }
            alive
        });
        if hosts.len() != before {
            self.reindex(&hosts);
        }
    }

    fn reindex(&self, hosts: &HashMap<String, Seen>) {
        let served = hosts
            .values()
            .flat_map(|seen| {
                seen.heartbeat
                    .served
                    .iter()
                    .chain(&seen.heartbeat.replicated)
            })
            .cloned()
            .collect();
        *self.served.write().unwrap_or_else(|e| e.into_inner()) = served;
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
    fn a_host_speaks_only_for_itself() {
        let directory = Directory::default();
        directory.heard("mallory", beat("b", &["pong"]));
        assert!(!directory.serves("pong"));
    }
}
