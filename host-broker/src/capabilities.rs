//! Capabilities: which ids and topics a component may reach. Deny by default.

use crate::ids::check_id;

/// A set of ids or topics: an exact name, a `prefix/*` pattern, or `*` for everything.
///
/// ```
/// use courier_host_broker::Pattern;
///
/// assert!(Pattern::parse("orders/*").matches("orders/billing"));
/// assert!(!Pattern::parse("orders/*").matches("orders"));
/// assert!(Pattern::parse("audit").matches("audit"));
/// assert!(!Pattern::parse("audit").matches("audit/log"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Exactly this name.
    Exact(String),
    /// Every name that starts with this prefix (which includes its trailing `/`).
    Prefix(String),
    /// Every name.
    Any,
}

impl Pattern {
    /// Read a pattern: `*` is any name, `a/b/*` any name under `a/b/`, anything else exact.
    ///
    /// This never fails, so a `*` anywhere else is a literal character of an exact name;
    /// [`Pattern::try_parse`] refuses such text instead, for patterns a person wrote.
    pub fn parse(text: &str) -> Pattern {
        if text == "*" {
            Pattern::Any
        } else if let Some(prefix) = text.strip_suffix('*').filter(|p| p.ends_with('/')) {
            Pattern::Prefix(prefix.to_string())
        } else {
            Pattern::Exact(text.to_string())
        }
    }

    /// Read a pattern a person wrote, refusing what [`Pattern::parse`] would take in a way
    /// they cannot have meant: a `*` other than alone or as the last part of `prefix/*`, and a
    /// name or prefix that is not a valid id (see [`check_id`]).
    ///
    /// ```
    /// use courier_host_broker::Pattern;
    ///
    /// assert_eq!(Pattern::try_parse("orders/*"), Ok(Pattern::Prefix("orders/".into())));
    /// let err = Pattern::try_parse("ord*").unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "`ord*` is not a valid pattern: `*` may stand alone or end one as `prefix/*`"
    /// );
    /// ```
    pub fn try_parse(text: &str) -> Result<Pattern, PatternError> {
        if text == "*" {
            return Ok(Pattern::Any);
        }
        let name = text.strip_suffix("/*").unwrap_or(text);
        let refused = |reason| PatternError {
            pattern: text.to_string(),
            reason,
        };
        if name.contains('*') {
            return Err(refused("`*` may stand alone or end one as `prefix/*`"));
        }
        check_id(name).map_err(refused)?;
        Ok(Pattern::parse(text))
    }

    /// Whether `name` is in the set.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(exact) => exact == name,
            Pattern::Prefix(prefix) => {
                name.starts_with(prefix.as_str()) && name.len() > prefix.len()
            }
            Pattern::Any => true,
        }
    }
}

impl std::fmt::Display for Pattern {
    /// The pattern as it is written: `pong`, `orders/*` or `*`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Exact(name) => f.write_str(name),
            Pattern::Prefix(prefix) => write!(f, "{prefix}*"),
            Pattern::Any => f.write_str("*"),
        }
    }
}

/// Why [`Pattern::try_parse`] refused a pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{pattern}` is not a valid pattern: {reason}")]
pub struct PatternError {
    /// The text given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// What a component may do: a builder whose default allows nothing.
///
/// ```
/// use courier_host_broker::{Capabilities, Pattern};
///
/// let caps = Capabilities::none()
///     .allow_send(Pattern::try_parse("orders/*").unwrap())
///     .subscribe(Pattern::try_parse("news").unwrap());
/// assert!(caps.may_send("orders/billing"));
/// assert!(!caps.may_request("orders/billing"));
/// assert!(caps.subscribes_to("news"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    send: Vec<Pattern>,
    request: Vec<Pattern>,
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
}

impl Capabilities {
    /// No capabilities at all: the component can only answer what it is sent.
    pub fn none() -> Self {
        Capabilities::default()
    }

    /// Allow sending fire-and-forget messages to ids in `pattern`.
    pub fn allow_send(mut self, pattern: Pattern) -> Self {
        self.send.push(pattern);
        self
    }

    /// Allow sending requests to ids in `pattern`.
    pub fn allow_request(mut self, pattern: Pattern) -> Self {
        self.request.push(pattern);
        self
    }

    /// Allow publishing on topics in `pattern`.
    pub fn allow_publish(mut self, pattern: Pattern) -> Self {
        self.publish.push(pattern);
        self
    }

    /// Receive publications on topics in `pattern`.
    pub fn subscribe(mut self, pattern: Pattern) -> Self {
        self.subscribe.push(pattern);
        self
    }

    /// The ids it may send messages to.
    pub fn send_patterns(&self) -> &[Pattern] {
        &self.send
    }

    /// The ids it may send requests to.
    pub fn request_patterns(&self) -> &[Pattern] {
        &self.request
    }

    /// The topics it may publish on.
    pub fn publish_patterns(&self) -> &[Pattern] {
        &self.publish
    }

    /// The topics whose publications it receives.
    pub fn subscribe_patterns(&self) -> &[Pattern] {
        &self.subscribe
    }

    /// Checks every pattern as [`Pattern::try_parse`] would, and says which list the first
    /// one it refuses is in (`send`, `request`, `publish` or `subscribe`).
    pub fn validate(&self) -> Result<(), (&'static str, PatternError)> {
        for (list, patterns) in [
            ("send", &self.send),
            ("request", &self.request),
            ("publish", &self.publish),
            ("subscribe", &self.subscribe),
        ] {
            for pattern in patterns {
                Pattern::try_parse(&pattern.to_string()).map_err(|err| (list, err))?;
            }
        }
        Ok(())
    }

    /// Whether the component may send a message to `target`.
    pub fn may_send(&self, target: &str) -> bool {
        self.send.iter().any(|p| p.matches(target))
    }

    /// Whether the component may send a request to `target`.
    pub fn may_request(&self, target: &str) -> bool {
        self.request.iter().any(|p| p.matches(target))
    }

    /// Whether the component may publish on `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| p.matches(topic))
    }

    /// Whether the component receives publications on `topic`.
    pub fn subscribes_to(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|p| p.matches(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_allowed_by_default() {
        let caps = Capabilities::none();
        assert!(!caps.may_send("pong"));
        assert!(!caps.may_request("pong"));
        assert!(!caps.may_publish("news"));
        assert!(!caps.subscribes_to("news"));
    }

    #[test]
    fn a_prefix_pattern_covers_names_below_it_only() {
        let caps = Capabilities::none().allow_send(Pattern::parse("orders/*"));
        assert!(caps.may_send("orders/billing"));
        assert!(caps.may_send("orders/eu/billing"));
        assert!(!caps.may_send("orders/"));
        assert!(!caps.may_send("ordersx/billing"));
        assert!(!caps.may_send("billing"));
    }

    #[test]
    fn a_star_inside_a_name_is_taken_literally() {
        assert_eq!(Pattern::parse("a*"), Pattern::Exact("a*".into()));
        assert!(Pattern::parse("*").matches("anything/at/all"));
    }

    #[test]
    fn patterns_are_written_back_as_they_were_read() {
        for text in ["pong", "orders/*", "*", "a*"] {
            assert_eq!(Pattern::parse(text).to_string(), text);
        }
    }

    #[test]
    fn validate_names_the_list_of_the_first_bad_pattern() {
        let caps = Capabilities::none()
            .allow_send(Pattern::parse("pong"))
            .allow_send(Pattern::parse("orders/*"))
            .subscribe(Pattern::parse("news"))
            .subscribe(Pattern::parse("sc*res"));
        let (list, err) = caps.validate().unwrap_err();
        assert_eq!(list, "subscribe");
        assert_eq!(err.pattern, "sc*res");
        assert!(Capabilities::none().validate().is_ok());
    }

    #[test]
    fn try_parse_refuses_what_parse_would_take_literally() {
        assert_eq!(Pattern::try_parse("*"), Ok(Pattern::Any));
        assert_eq!(
            Pattern::try_parse("a/b/*"),
            Ok(Pattern::Prefix("a/b/".into()))
        );
        assert_eq!(
            Pattern::try_parse("pong"),
            Ok(Pattern::Exact("pong".into()))
        );
        for bad in ["a*", "a/*/b", "*/a", "a**", "a//*", "/*", "", "a b", "host"] {
            let err = Pattern::try_parse(bad).expect_err(bad);
            assert_eq!(err.pattern, bad);
        }
    }
}
