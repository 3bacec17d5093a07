//! The [`Store`] trait: what the broker asks of a durable store.

use std::future::Future;
use std::pin::Pin;

use crate::error::StoreError;
use crate::record::{
    Appended, Batch, Committed, DeadLetter, DeadLetters, Entry, Recovered, StoreStats, Timer,
};

/// The future a [`Store`] operation returns: `Send` and owning everything it needs, so it can
/// be awaited on any task after the call returns.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// A durable store for a host's actors: mailbox entries, state, outboxes, sequence marks,
/// dead letters and timers, every record keyed by its actor.
///
/// The trait is object-safe, so the broker holds an `Arc<dyn Store>` and another store (a
/// distributed one) can stand beside [`RedbStore`](crate::RedbStore). Every write resolves
/// only once it is durable: when [`append`](Store::append) says `Stored`, a crash or power
/// cut after that does not lose the entry.
///
/// ```
/// use courier_host_store::{Batch, Entry, Kind, RedbStore, Store};
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let store: Arc<dyn Store> = Arc::new(RedbStore::open_in_dir(dir.path())?);
/// let appended = store
///     .append(vec![Entry::new("counter", "host", Kind::Message, &b"+1"[..]).with_seq(1)])
///     .await?;
/// let position = appended[0].position().expect("a new entry is stored");
///
/// let mut batch = Batch::new("counter");
/// batch.consumed.push(position);
/// batch.state = Some(bytes::Bytes::from_static(b"1"));
/// store.commit(batch).await?;
///
/// let counter = store.load("counter").await?;
/// assert_eq!(counter.state.as_deref(), Some(&b"1"[..]));
/// assert!(counter.mailbox.is_empty());
/// # Ok(())
/// # }
/// ```
pub trait Store: Send + Sync + 'static {
    /// Store accepted messages in their actors' mailboxes, in order, and resolve once they are
    /// durable. One result per entry, in the same order: where it was stored, or that its
    /// actor already holds it ([`Entry::seq`]). All the entries are stored or none.
    fn append(&self, entries: Vec<Entry>) -> StoreFuture<Vec<Appended>>;

    /// Record one handled batch of one actor in one transaction: the entries it consumed,
    /// its new state, what it sent (its outbox) and which outbox entries were delivered.
    fn commit(&self, batch: Batch) -> StoreFuture<Committed>;

    /// Remove everything of `actor`: state, mailbox, outbox, sequence marks and timers.
    fn forget(&self, actor: &str) -> StoreFuture<()>;

    /// The actors with a state, a mailbox entry, an outbox entry or a timer stored, in id
    /// order.
    fn actors(&self) -> StoreFuture<Vec<String>>;

    /// An actor as last committed: state, unconsumed mailbox and undelivered outbox in
    /// order, and timers. An actor with nothing stored loads as empty.
    fn load(&self, actor: &str) -> StoreFuture<Recovered>;

    /// Keep a dead letter; past [`MAX_DEAD_LETTERS`](crate::limits::MAX_DEAD_LETTERS) the
    /// oldest is dropped and counted.
    fn dead_letter(&self, letter: DeadLetter) -> StoreFuture<()>;

    /// The dead letters kept, oldest first, and how many were dropped.
    fn dead_letters(&self) -> StoreFuture<DeadLetters>;

    /// Keep a timer, replacing the actor's timer of the same name.
    fn put_timer(&self, timer: Timer) -> StoreFuture<()>;

    /// Remove the actor's timer `name`; `false` if it had none.
    fn cancel_timer(&self, actor: &str, name: &str) -> StoreFuture<bool>;

    /// The actor's timers, by name.
    fn timers(&self, actor: &str) -> StoreFuture<Vec<Timer>>;

    /// What the store holds and how its commits are going.
    fn stats(&self) -> StoreStats;
}
