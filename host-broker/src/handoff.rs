//! The direct hand-off: a request to an idle actor runs on the requester's own task.
//!
//! Queued through the mailbox, a request round trip wakes the target's task and then the
//! requester's: on a multi-threaded runtime each wake-up may cross to another worker, and
//! those crossings, not the handlers, were most of a wasm-to-wasm request's time. So an
//! actor whose mailbox is empty leaves its [`Core`] (its instance and what supervising it
//! needs) here, and a requester that finds it idle borrows it, runs the one handler on its
//! own task and gives it back, as seL4's IPC fast path or Go's scheduler hand-off run the
//! callee on the caller's time slice. A chain of requests to idle actors then runs like a
//! chain of function calls, on one worker, while the other workers stay free for
//! everything else.
//!
//! The invariants hold because the core is in exactly one place at a time (the actor's
//! task, here, or one requester), and:
//! - **per-sender order**: a core is lent only while nothing its actor was sent is still
//!   unhandled ([`ActorShared::queued`]), so a request never overtakes a message or request
//!   its sender queued before it; the actor itself waits for a lent core before it handles
//!   anything that came in meanwhile;
//! - **deadlines**: the handler runs under its own deadline as on the actor's task; a
//!   requester whose timeout passes first stops waiting and gives the unfinished call back
//!   to the actor, which finishes it (the requester hears `timeout`, as when queued);
//! - **supervision**: a trap, a panic, or a shutdown during a lent call goes back to the
//!   actor with the core, and the actor recovers as after any other call;
//! - **cycles**: a core that is lent is not idle, so a request that comes back around to it
//!   is queued and ends in a timeout like any other cycle;
//! - **accounting**: the lent call counts its delivery, dead letter or refusal exactly as
//!   the actor would.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Instant;

use tokio::sync::Notify;

use crate::actor::{Aftermath, Core, catching_panics};
use crate::mailbox::Envelope;
use crate::registry::{ActorShared, Entry};

/// A lent call that its requester stopped driving: the actor finishes it.
type Unfinished = Pin<Box<dyn Future<Output = (Box<Core>, Option<Aftermath>)> + Send>>;

/// What a requester gives back that the actor must deal with before anything else.
enum Returned {
    /// The core, and what its call left (a trap, an end).
    Back(Box<Core>, Aftermath),
    /// A call the requester stopped driving, with the core inside it.
    Unfinished(Unfinished),
}

/// How a requester gives a core back.
enum GiveBack {
    /// Idle again: the call is done and left nothing for the actor.
    Idle(Box<Core>),
    /// With work for the actor.
    Returned(Returned),
}

/// One actor's hand-off point, in its [`ActorShared`].
///
/// An actor goes idle and wakes many times a second when its messages come one at a time,
/// so leaving its core here and taking it back are one atomic swap each; only a core given
/// back with work for the actor goes through a lock.
pub(crate) struct HandOff {
    /// The core while the actor is idle (from `Box::into_raw`); null while the actor's task
    /// or a requester holds it.
    idle: AtomicPtr<Core>,
    /// What a requester gave back for the actor to deal with.
    returned: Mutex<Option<Returned>>,
    /// The actor has ended: nothing is lent or kept here any more.
    closed: AtomicBool,
    /// Wakes an actor waiting for a lent core.
    notify: Notify,
}

impl Default for HandOff {
    fn default() -> Self {
        HandOff {
            idle: AtomicPtr::new(std::ptr::null_mut()),
            returned: Mutex::new(None),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }
}

impl Drop for HandOff {
    fn drop(&mut self) {
        drop(self.take_idle());
    }
}

impl HandOff {
    fn returned(&self) -> MutexGuard<'_, Option<Returned>> {
        self.returned.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The idle core, if it is here, taken out.
    fn take_idle(&self) -> Option<Box<Core>> {
        let core = self.idle.swap(std::ptr::null_mut(), Ordering::SeqCst);
        // SAFETY: a non-null pointer in `idle` came from `Box::into_raw` in `put_idle`, and
        // the swap took it out, so this is its one owner.
        (!core.is_null()).then(|| unsafe { Box::from_raw(core) })
    }

    /// Leave `core` here, idle. Only its owner (the actor's task, or the requester that took
    /// it) puts it back, and only while `idle` is null.
    fn put_idle(&self, core: Box<Core>) {
        let previous = self.idle.swap(Box::into_raw(core), Ordering::SeqCst);
        debug_assert!(previous.is_null(), "a core is in one place at a time");
    }

    /// Leave the core here while the actor waits for its mailbox.
    pub(crate) fn park(&self, core: Box<Core>) {
        self.put_idle(core);
    }

    /// The actor has ended, or its task was dropped: nothing is lent any more, and a core
    /// left here is dropped (it holds the actor's shared state, which holds this, so
    /// leaving it would keep its instance alive for ever).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        drop(self.take_idle());
        let returned = self.returned().take();
        drop(returned);
    }

    /// Take the core back for the actor's task: at once if it is idle here; once it is
    /// given back if it is lent. What a requester gave back with it comes along, and an
    /// unfinished call is finished first.
    pub(crate) async fn reclaim(&self) -> (Box<Core>, Option<Aftermath>) {
        loop {
            if let Some(core) = self.take_idle() {
                return (core, None);
            }
            // Made before the second look, so a core given back in between still wakes
            // it: the actor's task is the only waiter, and `notify_one` keeps a permit.
            let given_back = self.notify.notified();
            if let Some(core) = self.take_idle() {
                return (core, None);
            }
            let returned = self.returned().take();
            match returned {
                Some(Returned::Back(core, aftermath)) => return (core, Some(aftermath)),
                Some(Returned::Unfinished(call)) => return call.await,
                None => given_back.await,
            }
        }
    }

    /// Lend the core for one request, if the actor is idle with nothing unhandled and no
    /// upgrade or shutdown is waiting for it.
    fn lend(&self, shared: &ActorShared) -> Option<Box<Core>> {
        // Whatever this requester sent before was counted in `queued` before this look,
        // and is counted out only once handled: at zero, it has all been handled.
        if shared.queued.messages.load(Ordering::Acquire) != 0
            || shared.upgrade_pending.load(Ordering::Acquire)
            || !shared.is_current()
            || shared.is_draining()
        {
            return None;
        }
        self.take_idle()
    }

    /// Give back a lent core, with what the actor must deal with, if anything.
    fn give_back(&self, entry: &Entry, back: GiveBack) {
        match back {
            GiveBack::Idle(core) => {
                self.put_idle(core);
                // A close between the put and this look has not seen the core: take it
                // out again and drop it, since the actor will not.
                if self.closed.load(Ordering::SeqCst) {
                    drop(self.take_idle());
                }
                self.notify.notify_one();
            }
            GiveBack::Returned(returned) => {
                {
                    let mut slot = self.returned();
                    if self.closed.load(Ordering::SeqCst) {
                        // The actor's task is gone; so is the core, once this is dropped.
                        drop(slot);
                        drop(returned);
                        return;
                    }
                    *slot = Some(returned);
                }
                self.notify.notify_one();
                // An idle actor waits on its mailbox, not here. A full mailbox means it has
                // messages, and looks here before handling them; a closed one, that it is
                // ending, which takes its core back too.
                let _ = entry.try_send(Envelope::Wake);
            }
        }
    }
}

/// Run `request` (an [`Envelope::Request`]) on the calling task if `entry`'s actor is idle;
/// otherwise hand it back to be queued. The answer goes to the request's reply channel
/// either way.
pub(crate) async fn try_deliver_here(
    entry: &Arc<Entry>,
    request: Envelope,
    expires: Instant,
) -> Result<(), Envelope> {
    let Some(mut core) = entry.shared.handoff.lend(&entry.shared) else {
        return Err(request);
    };
    crate::metrics::bump(&entry.shared.metrics.handed_off);
    let call: Unfinished = Box::pin(async move {
        core.current = Some(request);
        let aftermath = handle_guarded(&mut core).await;
        (core, aftermath)
    });
    Lent {
        entry: entry.clone(),
        call: Some(call),
    }
    .drive(expires)
    .await;
    Ok(())
}

/// [`Core::handle`], with a panic in the host (a bug: guests trap, they do not panic the
/// host) caught and turned into the end of the actor, as the actor's own task does, rather
/// than unwinding through whoever borrowed the core.
async fn handle_guarded(core: &mut Core) -> Option<Aftermath> {
    let handled = catching_panics(std::pin::pin!(core.handle())).await;
    handled.unwrap_or_else(|panic| Some(Aftermath::Ended(core.panicked(&*panic))))
}

/// A core borrowed by a requester, with the call it runs. Dropped before the call is
/// done (the requester's time ran out, or its own caller dropped it), it gives the call
/// back to the actor to finish.
struct Lent {
    entry: Arc<Entry>,
    call: Option<Unfinished>,
}

impl Lent {
    /// Drive the call until it is done or `expires` passes. The first poll costs no timer:
    /// a handler that answers without waiting (the common case) never registers one.
    async fn drive(mut self, expires: Instant) {
        let mut timer = None;
        let done = std::future::poll_fn(|cx| {
            let Some(call) = self.call.as_mut() else {
                return Poll::Ready(None);
            };
            if let Poll::Ready(done) = call.as_mut().poll(cx) {
                return Poll::Ready(Some(done));
            }
            let timer =
                timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(expires.into())));
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        if let Some((core, aftermath)) = done {
            self.call = None;
            let back = match aftermath {
                None => GiveBack::Idle(core),
                Some(aftermath) => GiveBack::Returned(Returned::Back(core, aftermath)),
            };
            self.entry.shared.handoff.give_back(&self.entry, back);
        }
        // Otherwise dropping `self` gives the unfinished call back.
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            self.entry
                .shared
                .handoff
                .give_back(&self.entry, GiveBack::Returned(Returned::Unfinished(call)));
        }
    }
}
