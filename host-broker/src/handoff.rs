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
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Instant;

use tokio::sync::Notify;

use crate::actor::{Aftermath, Core, End, panic_text};
use crate::mailbox::Envelope;
use crate::registry::{ActorShared, Entry};

/// A lent call that its requester stopped driving: the actor finishes it.
type Unfinished = Pin<Box<dyn Future<Output = (Box<Core>, Option<Aftermath>)> + Send>>;

/// Where an actor's core is while its task does not hold it.
enum Place {
    /// The actor's task holds it.
    Actor,
    /// The actor is idle: a requester may borrow it.
    Idle(Box<Core>),
    /// A requester is running a handler with it.
    Lent,
    /// A requester gave it back with something the actor must deal with first.
    Back(Box<Core>, Aftermath),
    /// A requester stopped waiting for its call, which the actor finishes.
    Unfinished(Unfinished),
    /// The actor has ended: nothing is lent any more.
    Closed,
}

/// One actor's hand-off point, in its [`ActorShared`].
pub(crate) struct HandOff {
    place: Mutex<Place>,
    /// Wakes an actor waiting for a lent core.
    returned: Notify,
}

impl Default for HandOff {
    fn default() -> Self {
        HandOff {
            place: Mutex::new(Place::Actor),
            returned: Notify::new(),
        }
    }
}

impl HandOff {
    fn place(&self) -> MutexGuard<'_, Place> {
        self.place.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leave the core here while the actor waits for its mailbox.
    pub(crate) fn park(&self, core: Box<Core>) {
        *self.place() = Place::Idle(core);
    }

    /// The actor has ended, or its task was dropped: nothing is lent any more, and a core
    /// left here is dropped (it holds the actor's shared state, which holds this, so
    /// leaving it would keep its instance alive for ever).
    pub(crate) fn close(&self) {
        let left = std::mem::replace(&mut *self.place(), Place::Closed);
        drop(left);
    }

    /// Take the core back for the actor's task: at once if it is idle here; once it is
    /// given back if it is lent. What a requester gave back with it comes along, and an
    /// unfinished call is finished first.
    pub(crate) async fn reclaim(&self) -> (Box<Core>, Option<Aftermath>) {
        loop {
            // Made before the look, so a core given back in between still wakes it: the
            // actor's task is the only waiter, and `notify_one` keeps a permit for it.
            let returned = self.returned.notified();
            let taken = {
                let mut place = self.place();
                match *place {
                    Place::Lent => None,
                    _ => Some(std::mem::replace(&mut *place, Place::Actor)),
                }
            };
            match taken {
                None => returned.await,
                Some(Place::Idle(core)) => return (core, None),
                Some(Place::Back(core, aftermath)) => return (core, Some(aftermath)),
                Some(Place::Unfinished(call)) => return call.await,
                Some(Place::Lent | Place::Actor | Place::Closed) => {
                    unreachable!("only the actor's task takes its core back, once it left it")
                }
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
        let mut place = self.place();
        match std::mem::replace(&mut *place, Place::Lent) {
            Place::Idle(core) => Some(core),
            other => {
                *place = other;
                None
            }
        }
    }

    /// Give back a lent core, with what the actor must deal with, if anything.
    fn give_back(&self, entry: &Entry, back: Place) {
        let wake = !matches!(back, Place::Idle(_));
        {
            let mut place = self.place();
            if matches!(*place, Place::Closed) {
                // The actor's task is gone; so is the core, once `back` is dropped.
                drop(place);
                drop(back);
                return;
            }
            *place = back;
        }
        self.returned.notify_one();
        if wake {
            // An idle actor waits on its mailbox, not here. A full mailbox means it has
            // messages, and looks here before handling them; a closed one, that it is
            // ending, which takes its core back too.
            let _ = entry.mailbox.try_send(Envelope::Wake);
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
    let handled = {
        let mut handle = std::pin::pin!(core.handle());
        std::future::poll_fn(|cx| {
            match std::panic::catch_unwind(AssertUnwindSafe(|| handle.as_mut().poll(cx))) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(aftermath)) => Poll::Ready(Ok(aftermath)),
                Err(panic) => Poll::Ready(Err(panic)),
            }
        })
        .await
    };
    handled.unwrap_or_else(|panic| {
        let text = panic_text(&*panic);
        tracing::error!(component = %core.shared.id, panic = %text, "actor panicked; the component is failed");
        core.instance = None;
        Some(Aftermath::Ended(End::Failed(format!(
            "the host panicked while serving it: {text}"
        ))))
    })
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
                None => Place::Idle(core),
                Some(aftermath) => Place::Back(core, aftermath),
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
                .give_back(&self.entry, Place::Unfinished(call));
        }
    }
}
