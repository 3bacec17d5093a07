//! Live upgrade: a running component swapped for a new version of itself between two
//! messages, its mailbox, id, metrics and books untouched.
//!
//! The order goes to the actor beside its mailbox, not through it, so it does not wait
//! behind what is queued: the actor finishes the handler in flight, takes the order before
//! its next message, makes an instance of the new version and swaps it in, and carries on
//! with the same queue in the same order. Senders never see it: they keep queueing
//! throughout.
//!
//! State moves when both versions export world `stateful-actor`'s `state` interface: the
//! running instance's `save-state`, then the new one's `load-state`. If the new version
//! cannot be instantiated, refuses the state or traps taking it, the old instance keeps
//! serving and the caller hears why. If the running instance traps in `save-state`, it
//! can never run again: a fresh instance of the same version takes its place, holding the
//! last state saved for restarts if there is one ([`Supervision::checkpoint`]), with no
//! restart charged and no message lost. A shutdown's drain deadline cuts every step.
//!
//! [`Supervision::checkpoint`]: crate::Supervision::checkpoint

use std::time::{Duration, Instant};

use courier_host_core::{Component, ComponentId};
use tokio::sync::oneshot;

use crate::actor::{Aftermath, Core, End, activate_core, unless_drained};
use crate::error::BrokerError;
use crate::mailbox::Envelope;
use crate::registry::{ComponentState, Registry};

/// What [`Broker::upgrade`](crate::Broker::upgrade) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgraded {
    /// The component.
    pub id: ComponentId,
    /// The version it ran before ([`Component::version`]).
    pub previous: String,
    /// The version it runs now.
    pub version: String,
    /// Bytes of state moved from the old version to the new one; `None` when one of them
    /// does not keep state (does not export `state`), so none was moved.
    pub state_bytes: Option<usize>,
    /// From the order to the swap: the handler in flight, if any, making the new instance
    /// and moving the state.
    pub took: Duration,
}

/// An upgrade waiting for its actor.
pub(crate) struct UpgradeOrder {
    pub(crate) component: Component,
    pub(crate) ordered: Instant,
    pub(crate) reply: oneshot::Sender<Result<Upgraded, String>>,
}

/// Order the upgrade of `id`, a component in `registry` (not a keyed one's template: its
/// keys are upgraded one by one), and wait for its actor to take it.
pub(crate) async fn upgrade_registered(
    registry: &Registry,
    id: &str,
    component: Component,
) -> Result<Upgraded, BrokerError> {
    let refused = |reason: String| BrokerError::Upgrade {
        component: id.into(),
        reason,
    };
    let entry = registry
        .get(id)
        .ok_or_else(|| BrokerError::NotFound(id.into()))?;
    match entry.shared.state() {
        ComponentState::Running | ComponentState::Restarting => {}
        state => {
            return Err(refused(format!(
                "it is {}: only a running component is upgraded",
                state.name()
            )));
        }
    }
    let (reply, answer) = oneshot::channel();
    let order = UpgradeOrder {
        component,
        ordered: Instant::now(),
        reply,
    };
    if entry.shared.order_upgrade(order).is_err() {
        return Err(refused("another upgrade of it is under way".into()));
    }
    // An actor that closed meanwhile will not look for the order: take it back. (It
    // closes before it looks for a last order, so one of the two sees the other.)
    if entry.shared.is_closed() && entry.shared.take_upgrade_order().is_some() {
        return Err(refused("it stopped before it took the upgrade".into()));
    }
    // Wakes an idle actor; a full mailbox means a busy one, which looks for the order
    // before each message anyway.
    let _ = entry.try_send(Envelope::Wake);
    match answer.await {
        Ok(Ok(upgraded)) => {
            tracing::info!(component = %id, previous = %upgraded.previous, version = %upgraded.version, took = ?upgraded.took, "upgraded");
            Ok(upgraded)
        }
        Ok(Err(reason)) => Err(refused(reason)),
        Err(_) => Err(refused("it stopped before it took the upgrade".into())),
    }
}

impl Core {
    /// Take the upgrade ordered since the last message (the actor looks at
    /// `upgrade_pending` first, a load on the per-message path): make the new
    /// version's instance, then swap it in. On failure the old version stays; what the
    /// failure left for the actor (an instance whose `save-state` trapped, a call the drain
    /// cut) comes back.
    pub(crate) async fn take_upgrade(&mut self) -> Option<Aftermath> {
        // A key whose instance is not made yet makes it first (from its stored state, when
        // durable), so what it holds moves to the new version as for any instance.
        if self.instance.is_none()
            && self.shared.keyed.is_some()
            && let Some(aftermath) = activate_core(self).await
        {
            return Some(aftermath);
        }
        let order = self.shared.take_upgrade_order()?;
        let previous = self.component.version().to_string();
        let (answer, aftermath) = match self.next_version(&order.component).await {
            Ok((instance, state_bytes)) => {
                let version = order.component.version().to_string();
                self.shared.set_component(order.component.clone());
                self.component = order.component;
                // The old instance goes here, its slot back to the pool.
                self.instance = Some(instance);
                let upgraded = Upgraded {
                    id: self.shared.id.clone(),
                    previous,
                    version,
                    state_bytes,
                    took: order.ordered.elapsed(),
                };
                (Ok(upgraded), None)
            }
            Err(NotUpgraded { reason, aftermath }) => {
                tracing::warn!(component = %self.shared.id, %reason, "upgrade failed; the running version stays");
                (Err(reason), aftermath)
            }
        };
        let _ = order.reply.send(answer);
        aftermath
    }

    /// An instance of `next` holding the running instance's state, when both versions keep
    /// state, and how many bytes of it moved. Every call that runs guest code here is
    /// bounded by the drain deadline as well as by its own.
    async fn next_version(
        &mut self,
        next: &Component,
    ) -> Result<(courier_host_core::Instance, Option<usize>), NotUpgraded> {
        let drained = || NotUpgraded::new("the shutdown deadline passed during the upgrade");
        let made = {
            let making = std::pin::pin!(next.instantiate(self.options.clone()));
            unless_drained(&self.shared, None, making).await
        };
        let mut instance = made.ok_or_else(drained)?.map_err(|err| {
            NotUpgraded::new(format!("the new version cannot be instantiated: {err}"))
        })?;
        let running = match self.instance.as_mut() {
            Some(running) if running.keeps_state() => running,
            _ => return Ok((instance, None)),
        };
        let saved = {
            let saving = std::pin::pin!(running.save_state());
            unless_drained(&self.shared, None, saving).await
        };
        let state = match saved {
            Some(Ok(state)) => state,
            // Refused by the host (a state over the limit): the instance is as it was.
            Some(Err(err)) if !running.is_poisoned() => {
                return Err(NotUpgraded::new(format!(
                    "the running version's state cannot be moved: {err}"
                )));
            }
            // The running instance trapped and is poisoned; the state it held is gone with
            // it. Its new instance goes first, so the replacement has a slot.
            Some(Err(err)) => {
                drop(instance);
                let last = match &self.checkpoint {
                    Some((state, _)) => format!(
                        "it runs on from its last saved state ({} bytes)",
                        state.len()
                    ),
                    None => "it runs on from a fresh instance: no state of it was saved".into(),
                };
                return Err(NotUpgraded {
                    reason: format!("the running version could not save its state: {err}; {last}"),
                    aftermath: Some(Aftermath::SaveFailed(err)),
                });
            }
            None => {
                // Cut part-way through the call: the instance must not run again.
                self.instance = None;
                let reason = "the shutdown deadline passed during the upgrade";
                return Err(NotUpgraded {
                    reason: reason.into(),
                    aftermath: Some(Aftermath::Ended(End::Stopped(reason.into()))),
                });
            }
        };
        if !instance.keeps_state() {
            // A state is never dropped silently: only an empty one may be left behind.
            return if state.is_empty() {
                Ok((instance, None))
            } else {
                Err(NotUpgraded::new(format!(
                    "the new version keeps no state (it does not export `state`) and the running one has {} bytes of it",
                    state.len()
                )))
            };
        }
        let loaded = {
            let loading = std::pin::pin!(instance.load_state(&state));
            unless_drained(&self.shared, None, loading).await
        };
        match loaded.ok_or_else(drained)? {
            Ok(Ok(())) => Ok((instance, Some(state.len()))),
            // The SDK's answer of a version that keeps no state: unsupported, no text.
            Ok(Err(courier_host_core::ComponentError::Unsupported(text))) if text.is_empty() => {
                Err(NotUpgraded::new(format!(
                    "the new version keeps no state across upgrades and the running one has {} bytes of it",
                    state.len()
                )))
            }
            Ok(Err(refusal)) => Err(NotUpgraded::new(format!(
                "the new version refused the state ({} bytes): {refusal:?}",
                state.len()
            ))),
            Err(err) => Err(NotUpgraded::new(format!(
                "the new version failed taking the state ({} bytes): {err}",
                state.len()
            ))),
        }
    }
}

/// Why an upgrade was not made, and what it left for the actor, if anything.
struct NotUpgraded {
    reason: String,
    aftermath: Option<Aftermath>,
}

impl NotUpgraded {
    /// A refusal that leaves the running instance as it was.
    fn new(reason: impl Into<String>) -> NotUpgraded {
        NotUpgraded {
            reason: reason.into(),
            aftermath: None,
        }
    }
}
