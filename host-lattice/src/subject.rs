//! The subjects a lattice uses, and how ids and topics become subject tokens.
//!
//! Everything lives under one prefix per lattice, `courier.<lattice>`:
//!
//! | subject | what goes on it |
//! |---|---|
//! | `courier.<lattice>.a.<id>` | messages and requests for the component `<id>`; its host subscribes |
//! | `courier.<lattice>.t.<topic>` | publications on `<topic>`; each host with subscribers subscribes once |
//! | `courier.<lattice>.h.<host>.r.<incarnation>.<seq>` | refusals and replies for one run of host `<host>`; `.r.<incarnation>.acks`: batches of acknowledgements |
//! | `courier.<lattice>.h.<host>.who` | asks whether a live host answers for `<host>`; it answers with its incarnation |
//! | `courier.<lattice>.h.<host>.hb` | host `<host>`'s heartbeat: what it serves |
//! | `courier.<lattice>.h.<host>.hello` | a host that joined, asking the others for their heartbeats |
//!
//! NATS tokens cannot hold `.`, `*`, `>` or white space. An id or topic's `/`-separated
//! parts become tokens (so `orders/*` is the subject wildcard `orders.>`), and in each
//! part every byte other than an ASCII letter, digit, `-` or `_` is written `%XX`; an empty
//! part is `%`. The mapping is reversible ([`decode`]).

/// The token form of `name`: its `/`-separated parts as `.`-separated tokens.
///
/// ```
/// use courier_host_lattice::subject::{decode, encode};
///
/// assert_eq!(encode("orders/billing-2"), "orders.billing-2");
/// assert_eq!(encode("v1.2 beta"), "v1%2E2%20beta");
/// assert_eq!(decode(&encode("a//b.c*>")).as_deref(), Some("a//b.c*>"));
/// ```
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, part) in name.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        if part.is_empty() {
            out.push('%');
        }
        for byte in part.bytes() {
            if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
                out.push(byte as char);
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    out
}

/// The name whose token form is `tokens`, if it is one [`encode`] makes.
pub fn decode(tokens: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(tokens.len());
    for (i, part) in tokens.split('.').enumerate() {
        if i > 0 {
            bytes.push(b'/');
        }
        if part == "%" {
            continue;
        }
        let mut rest = part.as_bytes();
        if rest.is_empty() {
            return None;
        }
        while let Some((&first, tail)) = rest.split_first() {
            if first == b'%' {
                let hex = tail.get(..2)?;
                let hex = std::str::from_utf8(hex).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                rest = &tail[2..];
            } else if first.is_ascii_alphanumeric() || first == b'-' || first == b'_' {
                bytes.push(first);
                rest = tail;
            } else {
                return None;
            }
        }
    }
    String::from_utf8(bytes).ok()
}

/// Whether `name` can name a lattice or a host: 1 to 64 ASCII letters, digits, `-` or `_`,
/// so it is one subject token as it is.
pub(crate) fn is_plain_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The subjects of one host in one lattice.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    /// `courier.<lattice>`
    prefix: String,
    /// `courier.<lattice>.h.<host>`
    me: String,
    /// This run's random token.
    incarnation: String,
}

impl Subjects {
    pub(crate) fn new(lattice: &str, host: &str, incarnation: &str) -> Subjects {
        let prefix = format!("courier.{lattice}");
        let me = format!("{prefix}.h.{host}");
        Subjects {
            prefix,
            me,
            incarnation: incarnation.to_string(),
        }
    }

    /// Where messages and requests for `id` go.
    pub(crate) fn actor(&self, id: &str) -> String {
        format!("{}.a.{}", self.prefix, encode(id))
    }

    /// Where publications on `topic` go.
    pub(crate) fn topic(&self, topic: &str) -> String {
        format!("{}.t.{}", self.prefix, encode(topic))
    }

    /// The subscription that hears the topics of `pattern` (`*` or `prefix/*` as the
    /// subject wildcard `>`).
    pub(crate) fn topic_pattern(&self, pattern: &courier_host_broker::Pattern) -> String {
        use courier_host_broker::Pattern;
        match pattern {
            Pattern::Any => format!("{}.t.>", self.prefix),
            Pattern::Exact(topic) => self.topic(topic),
            Pattern::Prefix(prefix) => {
                // `orders/` is the part `orders` followed by anything.
                let parts = prefix.trim_end_matches('/');
                format!("{}.t.{}.>", self.prefix, encode(parts))
            }
        }
    }

    /// Where this run of this host hears acknowledgements and replies: `<this>.<seq>`.
    /// The incarnation in it keeps a later run under the same name from hearing them.
    pub(crate) fn replies(&self) -> String {
        format!("{}.r.{}", self.me, self.incarnation)
    }

    /// Where a live host answers for its name.
    pub(crate) fn who(&self) -> String {
        format!("{}.who", self.me)
    }

    /// This host's heartbeat.
    pub(crate) fn heartbeat(&self) -> String {
        format!("{}.hb", self.me)
    }

    /// Every host's heartbeat.
    pub(crate) fn heartbeats(&self) -> String {
        format!("{}.h.*.hb", self.prefix)
    }

    /// This host's greeting when it joins.
    pub(crate) fn hello(&self) -> String {
        format!("{}.hello", self.me)
    }

    /// Every host's greeting.
    pub(crate) fn hellos(&self) -> String {
        format!("{}.h.*.hello", self.prefix)
    }

    /// This host's inbox prefix, so every subject it uses is under the lattice's prefix.
    pub(crate) fn inbox(&self) -> String {
        format!("{}.inbox", self.me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_host_broker::Pattern;

    #[test]
    fn ids_and_topics_map_to_tokens_and_back() {
        for name in [
            "pong",
            "orders/billing",
            "a.b",
            "sp ace",
            "star*",
            "gt>",
            "%",
            "a//b",
            "/lead",
            "trail/",
            "ünï",
            "",
        ] {
            let tokens = encode(name);
            assert!(
                !tokens.contains(['*', '>', ' ']) && !tokens.split('.').any(str::is_empty),
                "`{name}` as `{tokens}` is not a valid run of tokens"
            );
            assert_eq!(decode(&tokens).as_deref(), Some(name), "via `{tokens}`");
        }
        assert_eq!(decode("a.%zz"), None);
        assert_eq!(decode("a..b"), None);
    }

    #[test]
    fn topic_patterns_become_subject_wildcards() {
        let subjects = Subjects::new("lab", "h1", "0123");
        assert_eq!(subjects.replies(), "courier.lab.h.h1.r.0123");
        assert_eq!(subjects.topic_pattern(&Pattern::Any), "courier.lab.t.>");
        assert_eq!(
            subjects.topic_pattern(&Pattern::parse("scores/*")),
            "courier.lab.t.scores.>"
        );
        assert_eq!(
            subjects.topic_pattern(&Pattern::parse("news")),
            "courier.lab.t.news"
        );
        assert_eq!(subjects.topic("scores/eu"), "courier.lab.t.scores.eu");
        assert_eq!(
            subjects.actor("orders/billing"),
            "courier.lab.a.orders.billing"
        );
    }
}
