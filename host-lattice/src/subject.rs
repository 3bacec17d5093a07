//! The subjects a lattice uses, and how ids and topics become subject tokens.
//!
//! Everything lives under one prefix per lattice, `courier.<lattice>`, and every subject a
//! host publishes on carries its own name in the token after the kind letter, so NATS
//! permissions can pin a host to speaking for itself:
//!
//! | subject | published by | what goes on it |
//! |---|---|---|
//! | `courier.<lattice>.a.<from>.<id>` | host `<from>` | messages, requests and probes for the component `<id>`; its host subscribes to `a.*.<id>` |
//! | `courier.<lattice>.y.<from>.<owner>.<component>.<key>` | host `<from>` | messages and requests for a key of a keyed component, to the host `<owner>` its placement chose; `<owner>` subscribes to `y.*.<owner>.<component>.>` |
//! | `courier.<lattice>.t.<from>.<topic>` | host `<from>` | publications on `<topic>`; each host with subscribers subscribes once to `t.*.<pattern>` |
//! | `courier.<lattice>.k.<from>.<host>.<incarnation>` | host `<from>` | batches of acknowledgements for what one run of `<host>` sent to `<from>` |
//! | `courier.<lattice>.h.<host>.r.<incarnation>.<seq>` | the host answering, as a NATS response | refusals and replies for one run of host `<host>` |
//! | `courier.<lattice>.h.<host>.who` | host `<host>` | asks whether a live host answers for `<host>`; it answers with its incarnation |
//! | `courier.<lattice>.h.<host>.hb` | host `<host>` | its heartbeat: what it serves |
//! | `courier.<lattice>.h.<host>.hello` | host `<host>` | a host that joined, asking the others for their heartbeats |
//! | `courier.<lattice>.h.<host>.inbox.…` | the host answering, as a NATS response | answers to its probes and questions |
//!
//! So the permissions of host `<host>` in lattice `<lattice>` can be (nats-server's
//! configuration):
//!
//! ```text
//! permissions: {
//!   publish: { allow: ["courier.<lattice>.*.<host>.>"] }
//!   subscribe: { allow: ["courier.<lattice>.>"] }
//!   allow_responses: true
//! }
//! ```
//!
//! With these the server refuses a host that publishes as another; `allow_responses` lets a
//! host answer on the reply subject of a message it received (once), and nowhere else.
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
    /// This host's name.
    host: String,
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
            host: host.to_string(),
            incarnation: incarnation.to_string(),
        }
    }

    /// Where this host sends messages, requests and probes for `id`.
    pub(crate) fn actor(&self, id: &str) -> String {
        format!("{}.a.{}.{}", self.prefix, self.host, encode(id))
    }

    /// What the host serving `id` subscribes to: what any host sends it.
    pub(crate) fn actor_from_any(&self, id: &str) -> String {
        format!("{}.a.*.{}", self.prefix, encode(id))
    }

    /// Where this host sends messages and requests for the key `id` (`<component>/<key>`)
    /// to `owner`, the host it is placed on.
    pub(crate) fn key(&self, owner: &str, id: &str) -> String {
        format!("{}.y.{}.{owner}.{}", self.prefix, self.host, encode(id))
    }

    /// What this host subscribes to for the keys of `component` placed on it, from any
    /// host.
    pub(crate) fn keys_from_any(&self, component: &str) -> String {
        format!("{}.y.*.{}.{}.>", self.prefix, self.host, encode(component))
    }

    /// The key (`<component>/<key>`) a subject [`key`](Subjects::key) wrote is for.
    pub(crate) fn key_of(&self, subject: &str) -> Option<String> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".y.")?;
        let (_from, rest) = rest.split_once('.')?;
        let (_owner, id) = rest.split_once('.')?;
        decode(id)
    }

    /// Where this host sends publications on `topic`.
    pub(crate) fn topic(&self, topic: &str) -> String {
        format!("{}.t.{}.{}", self.prefix, self.host, encode(topic))
    }

    /// The subscription that hears the topics of `pattern` (`*` or `prefix/*` as the
    /// subject wildcard `>`) from any host.
    pub(crate) fn topic_pattern(&self, pattern: &courier_host_broker::Pattern) -> String {
        use courier_host_broker::Pattern;
        match pattern {
            Pattern::Any => format!("{}.t.*.>", self.prefix),
            Pattern::Exact(topic) => format!("{}.t.*.{}", self.prefix, encode(topic)),
            Pattern::Prefix(prefix) => {
                // `orders/` is the part `orders` followed by anything.
                let parts = prefix.trim_end_matches('/');
                format!("{}.t.*.{}.>", self.prefix, encode(parts))
            }
        }
    }

    /// The sending host and the topic of a publication's subject, if it is one hosts write.
    pub(crate) fn publication<'a>(&self, subject: &'a str) -> Option<(&'a str, String)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".t.")?;
        let (from, topic) = rest.split_once('.')?;
        Some((from, decode(topic)?))
    }

    /// Where this run of this host hears refusals and replies: `<this>.<seq>`. The
    /// incarnation in it keeps a later run under the same name from hearing them.
    pub(crate) fn replies(&self) -> String {
        format!("{}.r.{}", self.me, self.incarnation)
    }

    /// Where this host acknowledges what one run of another host sent it: that host's
    /// [`replies`](Subjects::replies) subject, `<prefix>.h.<host>.r.<incarnation>`.
    /// `None` for a reply subject hosts do not write.
    pub(crate) fn acks_for(&self, replies: &str) -> Option<String> {
        let (host, incarnation) = self.replies_of(replies)?;
        Some(format!(
            "{}.k.{}.{host}.{incarnation}",
            self.prefix, self.host
        ))
    }

    /// The host and incarnation of a [`replies`](Subjects::replies) subject, if it is one
    /// hosts write.
    pub(crate) fn replies_of<'a>(&self, replies: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = replies
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".h.")?;
        let (host, incarnation) = rest.split_once(".r.")?;
        (is_plain_token(host) && is_plain_token(incarnation)).then_some((host, incarnation))
    }

    /// What this run of this host subscribes to for its acknowledgements, from any host.
    pub(crate) fn acks(&self) -> String {
        format!("{}.k.*.{}.{}", self.prefix, self.host, self.incarnation)
    }

    /// The host that published on `subject`, for the subjects whose first token after the
    /// kind letter is the sender's name (`a`, `t`, `k`, `h`).
    pub(crate) fn sending_host<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?;
        let (_kind, rest) = rest.split_once('.')?;
        let host = rest.split('.').next()?;
        is_plain_token(host).then_some(host)
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
        assert_eq!(subjects.topic_pattern(&Pattern::Any), "courier.lab.t.*.>");
        assert_eq!(
            subjects.topic_pattern(&Pattern::parse("scores/*")),
            "courier.lab.t.*.scores.>"
        );
        assert_eq!(
            subjects.topic_pattern(&Pattern::parse("news")),
            "courier.lab.t.*.news"
        );
        assert_eq!(subjects.topic("scores/eu"), "courier.lab.t.h1.scores.eu");
        assert_eq!(
            subjects.publication("courier.lab.t.h2.scores.eu"),
            Some(("h2", "scores/eu".to_string()))
        );
        assert_eq!(subjects.publication("courier.lab.t.h2"), None);
        assert_eq!(
            subjects.actor("orders/billing"),
            "courier.lab.a.h1.orders.billing"
        );
        assert_eq!(
            subjects.actor_from_any("orders/billing"),
            "courier.lab.a.*.orders.billing"
        );
    }

    #[test]
    fn what_a_host_publishes_carries_its_name() {
        let h1 = Subjects::new("lab", "h1", "0123");
        let h2 = Subjects::new("lab", "h2", "4567");
        let published = [
            h1.actor("pong"),
            h1.key("h2", "cart/8812"),
            h1.topic("news"),
            h1.heartbeat(),
            h1.hello(),
            h1.who(),
            h1.acks_for(&h2.replies()).unwrap(),
        ];
        for subject in published {
            assert_eq!(h2.sending_host(&subject), Some("h1"), "{subject}");
            // What the documented permission `courier.lab.*.h1.>` allows.
            let tokens: Vec<&str> = subject.split('.').collect();
            assert_eq!(tokens[..2], ["courier", "lab"]);
            assert_eq!(tokens[3], "h1", "{subject}");
        }
        assert_eq!(
            h1.acks_for(&h2.replies()).unwrap(),
            "courier.lab.k.h1.h2.4567"
        );
        assert_eq!(h2.acks(), "courier.lab.k.*.h2.4567");
        assert_eq!(h1.key("h2", "cart/a.b"), "courier.lab.y.h1.h2.cart.a%2Eb");
        assert_eq!(h2.keys_from_any("cart"), "courier.lab.y.*.h2.cart.>");
        assert_eq!(
            h2.key_of(&h1.key("h2", "cart/a.b")).as_deref(),
            Some("cart/a.b")
        );
        assert_eq!(h1.acks_for("courier.lab.h.h2.r.*"), None);
        assert_eq!(h1.acks_for("courier.other.h.h2.r.4567"), None);
    }
}
