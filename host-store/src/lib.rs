#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![deny(unused_must_use)]

pub mod limits;

mod error;
mod record;
mod redb;
mod store;

pub use crate::error::{Bound, StoreError};
pub use crate::record::{
    Appended, Batch, Committed, DeadLetter, DeadLetters, Entry, Kind, Outgoing, Recovered,
    StoreStats, StoredEntry, StoredOutgoing, Timer, TimerChange,
};
pub use crate::redb::{FILE_NAME, RedbStore};
pub use crate::store::{Store, StoreFuture};
