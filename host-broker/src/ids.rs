//! Ids and the limit on names: what an id may be, the id the host sends as, and how long an
//! id or topic may be. The bottom of the crate: every layer checks names against these, and
//! this module uses nothing of the crate.

/// The sender id of messages the host sends without naming another. No component may
/// take it as its id.
pub const HOST_SENDER: &str = "host";

/// The longest id or topic, in bytes. An id is checked against it at spawn
/// ([`check_id`]); a guest that names a longer target or topic gets
/// `target-not-found` with the name cut short, before the host logs or keeps it.
pub const MAX_NAME_BYTES: usize = 255;

/// Checks a component id against the broker's rules and says what is wrong with it: an id is
/// `name` or `namespace/name`, made of letters, digits, `-`, `_`, `.` and `/`, so it reads
/// well in logs and can be matched by `prefix/*` patterns, at most
/// [`MAX_NAME_BYTES`] long; `host` is taken by the host itself.
///
/// [`Broker::spawn`](crate::Broker::spawn) refuses an id that fails this with
/// [`BrokerError::InvalidId`](crate::BrokerError::InvalidId); a tool that reads ids from a file can check them first.
///
/// ```
/// use courier_host_broker::check_id;
///
/// assert!(check_id("orders/billing-2").is_ok());
/// assert_eq!(check_id("host"), Err("`host` is the sender id of the host itself"));
/// assert!(check_id("a b").is_err());
/// ```
pub fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("it is empty");
    }
    if id == HOST_SENDER {
        return Err("`host` is the sender id of the host itself");
    }
    if id.len() > MAX_NAME_BYTES {
        return Err("it is longer than 255 bytes");
    }
    if id.starts_with('/') || id.ends_with('/') || id.contains("//") {
        return Err("a `/` must separate two non-empty parts");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return Err("only letters, digits, `-`, `_`, `.` and `/` are allowed");
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
        let long = "a".repeat(256);
        assert!(check_id(&long[..255]).is_ok());
        for bad in ["", "host", "/a", "a/", "a//b", "a b", "a*", &long] {
            assert!(check_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
