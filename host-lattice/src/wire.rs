//! What travels between hosts besides the payload: the headers a host stamps, and errors
//! as header values.
//!
//! | header | set by | meaning |
//! |---|---|---|
//! | `Courier-Sender` | the sending host | the id of the component (or `host`) that sent it |
//! | `Courier-Kind` | the sending host | `message`, `request`, `publication` or `probe` |
//! | `Courier-Target` | the sending host | the id or topic as the sender wrote it |
//! | `Courier-Host` | the sending host | the host it came from |
//! | `Courier-Id` | the sending host | `<host>:<seq>`, unique per message |
//! | `Courier-Timeout-Ms` | the sending host | how long a request's sender waits |
//! | `Courier-Error` | the answering host | why it refused (an error code, below) |
//! | `Courier-Detail` | the answering host | the error's text (a name, a limit, a handler's message) |
//!
//! Guests never see NATS and cannot set any of these: a guest chooses only a target and a
//! payload, and the host writes the rest.

use async_nats::HeaderMap;
use courier_host_broker::{ComponentError, MessagingError};

pub(crate) const SENDER: &str = "Courier-Sender";
pub(crate) const KIND: &str = "Courier-Kind";
pub(crate) const TARGET: &str = "Courier-Target";
pub(crate) const HOST: &str = "Courier-Host";
pub(crate) const ID: &str = "Courier-Id";
pub(crate) const TIMEOUT_MS: &str = "Courier-Timeout-Ms";
pub(crate) const ERROR: &str = "Courier-Error";
pub(crate) const DETAIL: &str = "Courier-Detail";

/// The most of an error's text that goes into a header: header values share the server's
/// payload limit, and a handler's error text is the guest's choice.
pub(crate) const DETAIL_LIMIT: usize = 1024;

/// What a message on an actor subject is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Message,
    Request,
    Publication,
    /// A question to whichever host serves an id: are you there? Answered with the host's
    /// name; used to keep one host per id and to confirm a new subscription.
    Probe,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Request => "request",
            Kind::Publication => "publication",
            Kind::Probe => "probe",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Kind> {
        Some(match text {
            "message" => Kind::Message,
            "request" => Kind::Request,
            "publication" => Kind::Publication,
            "probe" => Kind::Probe,
            _ => return None,
        })
    }
}

/// A header value, if present.
pub(crate) fn get<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|value| value.as_str())
}

/// `text` fit for a header value: at most [`DETAIL_LIMIT`] bytes, with line breaks and
/// other control characters (which would end the header) escaped.
pub(crate) fn header_text(text: &str) -> String {
    let text = courier_host_core::text::bounded(text, DETAIL_LIMIT);
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Put `error` into `headers`.
pub(crate) fn put_error(headers: &mut HeaderMap, error: &MessagingError) {
    let (code, detail) = match error {
        MessagingError::TargetNotFound(id) => ("target-not-found", id.clone()),
        MessagingError::AccessDenied(id) => ("access-denied", id.clone()),
        MessagingError::MailboxFull(id) => ("mailbox-full", id.clone()),
        MessagingError::PayloadTooLarge(limit) => ("payload-too-large", limit.to_string()),
        MessagingError::Timeout => ("timeout", String::new()),
        MessagingError::HandlerFailed(ComponentError::InvalidMessage(text)) => {
            ("handler-failed/invalid-message", text.clone())
        }
        MessagingError::HandlerFailed(ComponentError::Unsupported(text)) => {
            ("handler-failed/unsupported", text.clone())
        }
        MessagingError::HandlerFailed(ComponentError::Internal(text)) => {
            ("handler-failed/internal", text.clone())
        }
        MessagingError::TargetCrashed(text) => ("target-crashed", text.clone()),
        MessagingError::ShuttingDown => ("shutting-down", String::new()),
    };
    headers.insert(ERROR, code);
    if !detail.is_empty() {
        headers.insert(DETAIL, header_text(&detail));
    }
}

/// The error in `headers`, if there is one. An error code this host does not know (from a
/// newer host, say) is the serving host's failure, described as it was given.
pub(crate) fn take_error(headers: Option<&HeaderMap>) -> Option<MessagingError> {
    let code = get(headers, ERROR)?;
    let detail = get(headers, DETAIL).unwrap_or_default().to_string();
    Some(match code {
        "target-not-found" => MessagingError::TargetNotFound(detail),
        "access-denied" => MessagingError::AccessDenied(detail),
        "mailbox-full" => MessagingError::MailboxFull(detail),
        "payload-too-large" => MessagingError::PayloadTooLarge(detail.parse().unwrap_or(0)),
        "timeout" => MessagingError::Timeout,
        "handler-failed/invalid-message" => {
            MessagingError::HandlerFailed(ComponentError::InvalidMessage(detail))
        }
        "handler-failed/unsupported" => {
            MessagingError::HandlerFailed(ComponentError::Unsupported(detail))
        }
        "handler-failed/internal" => {
            MessagingError::HandlerFailed(ComponentError::Internal(detail))
        }
        "target-crashed" => MessagingError::TargetCrashed(detail),
        "shutting-down" => MessagingError::ShuttingDown,
        other => MessagingError::TargetCrashed(format!(
            "the serving host answered `{}`: {detail}",
            header_text(other)
        )),
    })
}

/// A short name of `error`, for dead-letter reasons and logs.
pub(crate) fn error_code(error: &MessagingError) -> String {
    let mut headers = HeaderMap::new();
    put_error(&mut headers, error);
    let code = get(Some(&headers), ERROR).unwrap_or_default();
    match get(Some(&headers), DETAIL) {
        Some(detail) => format!("{code} ({detail})"),
        None => code.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_survives_the_trip() {
        let errors = [
            MessagingError::TargetNotFound("pong".into()),
            MessagingError::AccessDenied("pong".into()),
            MessagingError::MailboxFull("pong".into()),
            MessagingError::PayloadTooLarge(1024),
            MessagingError::Timeout,
            MessagingError::HandlerFailed(ComponentError::InvalidMessage("bad".into())),
            MessagingError::HandlerFailed(ComponentError::Unsupported("no".into())),
            MessagingError::HandlerFailed(ComponentError::Internal("oops".into())),
            MessagingError::TargetCrashed("trapped".into()),
            MessagingError::ShuttingDown,
        ];
        for error in errors {
            let mut headers = HeaderMap::new();
            put_error(&mut headers, &error);
            // The WIT's error has no `PartialEq`; its `Debug` shows every field.
            assert_eq!(
                format!("{:?}", take_error(Some(&headers))),
                format!("{:?}", Some(error))
            );
        }
        assert!(take_error(Some(&HeaderMap::new())).is_none());
    }

    #[test]
    fn a_guests_error_text_cannot_break_a_header() {
        let text = format!("line\r\nCourier-Sender: forged\n{}", "x".repeat(10_000));
        let value = header_text(&text);
        assert!(!value.contains(['\r', '\n']));
        assert!(value.len() < DETAIL_LIMIT + 64);
    }
}
