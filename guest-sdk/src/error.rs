//! The errors a handler returns and the errors messaging calls return.

use std::fmt;

use crate::__private::bindings::ComponentError;
use crate::__private::bindings::courier::actor::types::MessagingError as WitMessagingError;
use crate::codec::CodecError;

/// Why a handler refused or failed to handle a message; the host passes it to the sender as
/// the WIT `component-error` of the same name.
///
/// `?` converts the SDK's other errors: a [`CodecError`] (a payload that does not decode)
/// becomes [`HandlerError::InvalidMessage`], a [`MessagingError`] (a send of the handler's own
/// that failed) becomes [`HandlerError::Internal`].
///
/// ```
/// use courier_sdk::HandlerError;
///
/// let err = HandlerError::invalid("expected a decimal count");
/// assert_eq!(err.to_string(), "invalid message: expected a decimal count");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandlerError {
    /// The payload could not be understood: wrong codec, malformed, truncated.
    InvalidMessage(String),
    /// The component does not handle this kind of message, for example requests.
    Unsupported(String),
    /// The handler failed for a reason of its own.
    Internal(String),
}

impl HandlerError {
    /// The payload could not be understood.
    pub fn invalid(reason: impl Into<String>) -> Self {
        HandlerError::InvalidMessage(reason.into())
    }

    /// The component does not handle this kind of message.
    pub fn unsupported(reason: impl Into<String>) -> Self {
        HandlerError::Unsupported(reason.into())
    }

    /// The handler failed for a reason of its own.
    pub fn internal(reason: impl Into<String>) -> Self {
        HandlerError::Internal(reason.into())
    }

    /// The text of the error, without its kind.
    pub fn reason(&self) -> &str {
        match self {
            HandlerError::InvalidMessage(reason)
            | HandlerError::Unsupported(reason)
            | HandlerError::Internal(reason) => reason,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::InvalidMessage(reason) => write!(f, "invalid message: {reason}"),
            HandlerError::Unsupported(reason) => write!(f, "unsupported: {reason}"),
            HandlerError::Internal(reason) => write!(f, "internal error: {reason}"),
        }
    }
}

impl std::error::Error for HandlerError {}

impl From<CodecError> for HandlerError {
    fn from(err: CodecError) -> Self {
        HandlerError::InvalidMessage(err.to_string())
    }
}

impl From<MessagingError> for HandlerError {
    fn from(err: MessagingError) -> Self {
        HandlerError::Internal(err.to_string())
    }
}

impl From<HandlerError> for ComponentError {
    fn from(err: HandlerError) -> Self {
        match err {
            HandlerError::InvalidMessage(reason) => ComponentError::InvalidMessage(reason),
            HandlerError::Unsupported(reason) => ComponentError::Unsupported(reason),
            HandlerError::Internal(reason) => ComponentError::Internal(reason),
        }
    }
}

impl From<ComponentError> for HandlerError {
    fn from(err: ComponentError) -> Self {
        match err {
            ComponentError::InvalidMessage(reason) => HandlerError::InvalidMessage(reason),
            ComponentError::Unsupported(reason) => HandlerError::Unsupported(reason),
            ComponentError::Internal(reason) => HandlerError::Internal(reason),
        }
    }
}

/// Why the host did not deliver something this component sent: the WIT `messaging-error`.
///
/// Its `Debug` output is the variant alone, `TargetNotFound("pong")`; its `Display` output is a
/// sentence, `no component "pong" is running`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessagingError {
    /// No component with this id is running.
    TargetNotFound(String),
    /// This component's capabilities do not allow it to reach this id or topic.
    AccessDenied(String),
    /// The target's mailbox is full; the message was not queued. Nothing was lost: the
    /// caller still has the payload and may try again later.
    MailboxFull(String),
    /// The payload is larger than the host accepts; the limit in bytes.
    PayloadTooLarge(u64),
    /// No reply came before the request's timeout.
    Timeout,
    /// The target's handler returned this error.
    HandlerFailed(HandlerError),
    /// The target trapped while handling the message; the host's description.
    TargetCrashed(String),
    /// The host is shutting down and accepts no new messages.
    ShuttingDown,
}

impl fmt::Display for MessagingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessagingError::TargetNotFound(id) => write!(f, "no component {id:?} is running"),
            MessagingError::AccessDenied(id) => {
                write!(f, "this component may not reach {id:?}")
            }
            MessagingError::MailboxFull(id) => write!(f, "the mailbox of {id:?} is full"),
            MessagingError::PayloadTooLarge(limit) => {
                write!(
                    f,
                    "the payload is larger than the host's limit of {limit} bytes"
                )
            }
            MessagingError::Timeout => f.write_str("no reply came before the timeout"),
            MessagingError::HandlerFailed(err) => write!(f, "the target's handler failed: {err}"),
            MessagingError::TargetCrashed(reason) => write!(f, "the target crashed: {reason}"),
            MessagingError::ShuttingDown => f.write_str("the host is shutting down"),
        }
    }
}

impl std::error::Error for MessagingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MessagingError::HandlerFailed(err) => Some(err),
            _ => None,
        }
    }
}

impl From<WitMessagingError> for MessagingError {
    fn from(err: WitMessagingError) -> Self {
        match err {
            WitMessagingError::TargetNotFound(id) => MessagingError::TargetNotFound(id),
            WitMessagingError::AccessDenied(id) => MessagingError::AccessDenied(id),
            WitMessagingError::MailboxFull(id) => MessagingError::MailboxFull(id),
            WitMessagingError::PayloadTooLarge(limit) => MessagingError::PayloadTooLarge(limit),
            WitMessagingError::Timeout => MessagingError::Timeout,
            WitMessagingError::HandlerFailed(err) => MessagingError::HandlerFailed(err.into()),
            WitMessagingError::TargetCrashed(reason) => MessagingError::TargetCrashed(reason),
            WitMessagingError::ShuttingDown => MessagingError::ShuttingDown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_errors_map_to_the_component_error_of_the_same_kind() {
        let cases = [
            (
                HandlerError::invalid("a"),
                ComponentError::InvalidMessage("a".into()),
            ),
            (
                HandlerError::unsupported("b"),
                ComponentError::Unsupported("b".into()),
            ),
            (
                HandlerError::internal("c"),
                ComponentError::Internal("c".into()),
            ),
        ];
        for (handler_error, component_error) in cases {
            let mapped = ComponentError::from(handler_error.clone());
            assert_eq!(format!("{mapped:?}"), format!("{component_error:?}"));
            assert_eq!(HandlerError::from(mapped), handler_error);
        }
    }

    #[test]
    fn a_codec_error_is_an_invalid_message_and_a_messaging_error_is_internal() {
        let codec = crate::codec::unframe(crate::codec::Codec::Json, b"").unwrap_err();
        assert_eq!(
            HandlerError::from(codec),
            HandlerError::invalid("payload is empty, expected json (0x0200)")
        );
        assert_eq!(
            HandlerError::from(MessagingError::MailboxFull("pong".into())),
            HandlerError::internal("the mailbox of \"pong\" is full")
        );
    }

    #[test]
    fn wit_messaging_errors_keep_their_case_and_payload() {
        let wit = WitMessagingError::HandlerFailed(ComponentError::Unsupported("no".into()));
        assert_eq!(
            MessagingError::from(wit),
            MessagingError::HandlerFailed(HandlerError::unsupported("no"))
        );
        assert_eq!(
            format!("{:?}", MessagingError::TargetNotFound("pong".into())),
            "TargetNotFound(\"pong\")"
        );
    }
}
