//! Errors of the broker's own API (spawning, stopping). Errors of sending are the WIT
//! `messaging-error`, the same a guest sees.

use courier_host_core::ComponentId;

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
    /// No component with this id is running.
    #[error("no component with id `{0}`")]
    NotFound(ComponentId),
    /// The broker is shutting down and starts nothing new.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// The first instance could not be created.
    #[error(transparent)]
    Instantiate(#[from] courier_host_core::Error),
}

/// Checks an id: `name` or `namespace/name`, made of letters, digits, `-`, `_`, `.` and `/`,
/// so it reads well in logs and can be matched by `prefix/*` patterns.
pub(crate) fn check_id(id: &str) -> Result<(), BrokerError> {
    let invalid = |reason| BrokerError::InvalidId {
        id: id.to_string(),
        reason,
    };
    if id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if id == "host" {
        return Err(invalid("`host` is the sender id of the host itself"));
    }
    if id.starts_with('/') || id.ends_with('/') || id.contains("//") {
        return Err(invalid("a `/` must separate two non-empty parts"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return Err(invalid(
            "only letters, digits, `-`, `_`, `.` and `/` are allowed",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_id;

    #[test]
    fn ids_are_names_or_namespaced_names() {
        assert!(check_id("pong").is_ok());
        assert!(check_id("orders/billing-2").is_ok());
        for bad in ["", "host", "/a", "a/", "a//b", "a b", "a*"] {
            assert!(check_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
