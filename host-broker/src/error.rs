//! Errors of the broker's own API (spawning, stopping). Errors of sending are the WIT
//! `messaging-error`, the same a guest sees.

use bytes::Bytes;
use courier_host_core::{ComponentId, MessagingError};

use crate::capabilities::PatternError;

/// Why the broker refused an operation on a component.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A component with this id is already running.
    #[error("a component with id `{0}` is already running")]
    DuplicateId(ComponentId),
    /// The id is not acceptable.
    #[error("`{id}` is not a valid component id: {reason}")]
    InvalidId {
        /// The id given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A capability pattern in the spec would not mean what it says (see
    /// [`Pattern::try_parse`](crate::Pattern::try_parse)).
    #[error("component `{component}`: `capabilities.{list}`: {error}")]
    InvalidPattern {
        /// The component whose spec holds it.
        component: ComponentId,
        /// Which list it is in: `send`, `request`, `publish` or `subscribe`.
        list: &'static str,
        /// The pattern and what is wrong with it.
        error: PatternError,
    },
    /// A value in the spec is out of its bounds.
    #[error("component `{component}`: `{field}` {reason}")]
    InvalidSpec {
        /// The component whose spec holds it.
        component: ComponentId,
        /// The field, as the builder method that sets it is named.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No component with this id is running.
    #[error("no component with id `{0}`")]
    NotFound(ComponentId),
    /// The broker is shutting down and starts nothing new.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// An upgrade was refused or failed; the running version keeps serving.
    #[error("component `{component}` was not upgraded: {reason}")]
    Upgrade {
        /// The component.
        component: ComponentId,
        /// Why.
        reason: String,
    },
    /// The attached remote would not serve the component to other hosts (say, another
    /// host already serves its id); the component was stopped again.
    #[error("component `{component}` cannot be served to other hosts: {reason}")]
    Remote {
        /// The component.
        component: ComponentId,
        /// The remote's reason.
        reason: String,
    },
    /// The store of a durable component failed it: it could not be loaded, say.
    #[error("component `{component}`: {source}")]
    Store {
        /// The component.
        component: ComponentId,
        /// The store's error, which names its file.
        source: courier_host_store::StoreError,
    },
    /// A durable component could not be brought back to its committed state.
    #[error("component `{component}` cannot be recovered: {reason}")]
    Recovery {
        /// The component.
        component: ComponentId,
        /// Why.
        reason: String,
    },
    /// The first instance could not be created.
    #[error(transparent)]
    Instantiate(#[from] courier_host_core::Error),
}

/// A message the broker did not queue, given back with the reason, so the caller can retry
/// it (after a `mailbox-full`, say) without having kept a copy.
///
/// ```no_run
/// # fn run(broker: courier_host_broker::Broker) {
/// use courier_host_broker::{Bytes, MessagingError};
///
/// let mut payload = Bytes::from_static(b"tick");
/// loop {
///     match broker.send("counter", payload) {
///         Ok(()) => break,
///         Err(refused) if matches!(refused.error(), MessagingError::MailboxFull(_)) => {
///             payload = refused.into_payload();
///             std::thread::yield_now();
///         }
///         Err(refused) => panic!("{refused}"),
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct SendError {
    error: MessagingError,
    payload: Bytes,
}

impl SendError {
    /// `payload`, not queued because of `error`.
    pub(crate) fn new(error: MessagingError, payload: Bytes) -> SendError {
        SendError { error, payload }
    }

    /// Why the message was not queued.
    pub fn error(&self) -> &MessagingError {
        &self.error
    }

    /// The payload that was not sent.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload that was not sent, to send again.
    pub fn into_payload(self) -> Bytes {
        self.payload
    }

    /// The reason, without the payload.
    pub fn into_error(self) -> MessagingError {
        self.error
    }
}

impl From<SendError> for MessagingError {
    fn from(err: SendError) -> MessagingError {
        err.error
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a message of {} bytes was not sent: {}",
            self.payload.len(),
            self.error
        )
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}
