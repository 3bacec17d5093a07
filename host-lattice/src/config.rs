//! How a host joins a lattice: its name, the lattice's, the NATS servers and how to
//! authenticate to them.

use std::path::PathBuf;
use std::time::Duration;

/// How long a host waits for the serving host to acknowledge a message before it
/// dead-letters it as `unconfirmed` (by default).
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a host tells the others what it serves (by default). A host not heard from
/// for three periods is taken to be gone.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);

/// How many messages may wait to go on the wire (by default): past this, a send to
/// another host is refused with `mailbox-full` until the connection catches up.
pub const DEFAULT_OUTBOUND_CAPACITY: usize = 65_536;

/// How many payload bytes may wait to go on the wire (by default), with the same refusal.
pub const DEFAULT_OUTBOUND_BYTES: u64 = 64 << 20;

/// How many payload bytes each of a host's subscriptions may hold unread (by default):
/// with the server's largest message this sets how many messages the NATS client buffers
/// per subscription before it drops them as a slow consumer (counted, and sent again by
/// their senders when numbered). The default, 8 GiB, is 8,192 messages at a server's usual
/// 1 MiB limit (the client's own default is 65,536, 64 GiB of such messages): a tighter
/// budget bounds memory further against a peer that sends large messages faster than this
/// host reads them, at the price of drops when a burst of small ones meets a host busy
/// elsewhere. What is dropped is sent again in a window of half this host's own capacity
/// (`pending.rs`), which has to carry a failover's resends within the ack timeout: at
/// 1 GiB (1,024 messages, a window of 512) a failover with 43,000 messages to send again
/// could not, on a loaded 2-core machine (6,288 ended `unconfirmed` in one run of five).
pub const DEFAULT_INBOUND_BYTES: u64 = 8 << 30;

/// The fewest and the most messages a subscription buffers, whatever the byte budget and
/// the server's largest message: fewer would drop bursts of small messages, more is the
/// client's own default.
pub const SUBSCRIPTION_CAPACITY: std::ops::RangeInclusive<usize> = 64..=65_536;

/// How a host proves to the NATS servers that it is one of the lattice's hosts.
///
/// Anyone who can publish on the lattice's subjects can claim any sender id, so these
/// credentials are what makes a sender id trustworthy; see the crate's trust model.
#[derive(Clone, Default)]
pub enum Auth {
    /// No credentials (a server on loopback, say).
    #[default]
    None,
    /// A token.
    Token(String),
    /// A user name and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A NATS credentials file (a JWT and an NKey seed).
    CredentialsFile(PathBuf),
}

impl std::fmt::Debug for Auth {
    /// Names the kind of credentials, never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
            Auth::UserPassword { user, .. } => write!(f, "UserPassword({user}, <redacted>)"),
            Auth::CredentialsFile(path) => write!(f, "CredentialsFile({})", path.display()),
        }
    }
}

/// Settings of a host in a lattice: a builder, with defaults for everything but the
/// names and the servers.
///
/// ```
/// use courier_host_lattice::{Auth, LatticeConfig};
///
/// let config = LatticeConfig::new("shop", "eu-1")
///     .server("nats://10.0.0.7:4222")
///     .server("nats://10.0.0.8:4222")
///     .auth(Auth::Token("s3cret".into()));
/// assert_eq!(config.get_servers().len(), 2);
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Debug, Clone)]
pub struct LatticeConfig {
    pub(crate) name: String,
    pub(crate) host: String,
    pub(crate) servers: Vec<String>,
    pub(crate) auth: Auth,
    pub(crate) ack_timeout: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) outbound_capacity: usize,
    pub(crate) outbound_bytes: u64,
    pub(crate) inbound_bytes: u64,
}

impl LatticeConfig {
    /// Host `host` in the lattice `name`. Both are 1 to 64 ASCII letters, digits, `-` or
    /// `_` (they are subject tokens); [`Lattice::join`](crate::Lattice::join) refuses others.
    pub fn new(name: impl Into<String>, host: impl Into<String>) -> LatticeConfig {
        LatticeConfig {
            name: name.into(),
            host: host.into(),
            servers: Vec::new(),
            auth: Auth::None,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            heartbeat: DEFAULT_HEARTBEAT,
            outbound_capacity: DEFAULT_OUTBOUND_CAPACITY,
            outbound_bytes: DEFAULT_OUTBOUND_BYTES,
            inbound_bytes: DEFAULT_INBOUND_BYTES,
        }
    }

    /// Add a NATS server URL (`nats://host:port`, or `tls://host:port` to require TLS).
    /// The client connects to one and fails over to the others.
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.servers.push(url.into());
        self
    }

    /// How the host authenticates to the servers.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// How long to wait for a message's acknowledgement ([`DEFAULT_ACK_TIMEOUT`]).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// How often to send a heartbeat ([`DEFAULT_HEARTBEAT`]).
    pub fn heartbeat(mut self, period: Duration) -> Self {
        self.heartbeat = period;
        self
    }

    /// How many messages may wait to go on the wire ([`DEFAULT_OUTBOUND_CAPACITY`]).
    pub fn outbound_capacity(mut self, messages: usize) -> Self {
        self.outbound_capacity = messages.max(1);
        self
    }

    /// How many payload bytes may wait to go on the wire ([`DEFAULT_OUTBOUND_BYTES`]).
    pub fn outbound_bytes(mut self, bytes: u64) -> Self {
        self.outbound_bytes = bytes;
        self
    }

    /// How many payload bytes each subscription may hold unread
    /// ([`DEFAULT_INBOUND_BYTES`]); see [`LatticeConfig::subscription_capacity`].
    pub fn inbound_bytes(mut self, bytes: u64) -> Self {
        self.inbound_bytes = bytes;
        self
    }

    /// How many messages each subscription buffers when the server's largest message is
    /// `max_payload` bytes: the inbound byte budget over that, within
    /// [`SUBSCRIPTION_CAPACITY`].
    ///
    /// ```
    /// use courier_host_lattice::LatticeConfig;
    ///
    /// let config = LatticeConfig::new("shop", "eu-1").inbound_bytes(64 << 20);
    /// assert_eq!(config.subscription_capacity(1 << 20), 64);
    /// assert_eq!(config.subscription_capacity(4 << 10), 16_384);
    /// assert_eq!(config.subscription_capacity(64), 65_536);
    /// // The default budget, 8 GiB: 8,192 of a server's usual 1 MiB.
    /// assert_eq!(LatticeConfig::new("shop", "eu-1").subscription_capacity(1 << 20), 8_192);
    /// ```
    pub fn subscription_capacity(&self, max_payload: usize) -> usize {
        let fits = self.inbound_bytes / max_payload.max(1) as u64;
        usize::try_from(fits)
            .unwrap_or(usize::MAX)
            .clamp(*SUBSCRIPTION_CAPACITY.start(), *SUBSCRIPTION_CAPACITY.end())
    }

    /// The lattice's name.
    pub fn get_name(&self) -> &str {
        &self.name
    }

    /// This host's name.
    pub fn get_host(&self) -> &str {
        &self.host
    }

    /// The server URLs.
    pub fn get_servers(&self) -> &[String] {
        &self.servers
    }

    /// The acknowledgement timeout.
    pub fn get_ack_timeout(&self) -> Duration {
        self.ack_timeout
    }

    /// The heartbeat period.
    pub fn get_heartbeat(&self) -> Duration {
        self.heartbeat
    }
}

impl LatticeConfig {
    /// What is weak in how this host reaches its servers, one sentence each, for the host
    /// to warn about at join: a server on another machine with no authentication (whoever
    /// reaches it can speak for any component), or credentials sent to one in plaintext.
    pub fn trust_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for url in &self.servers {
            if on_this_machine(url) {
                continue;
            }
            let plaintext = !url.starts_with("tls://");
            match &self.auth {
                Auth::None => warnings.push(format!(
                    "the lattice has no authentication and the NATS server {url} is not on \
                     this machine: anyone who can reach it can send as any component"
                )),
                Auth::Token(_) | Auth::UserPassword { .. } if plaintext => warnings.push(format!(
                    "the lattice's credentials go to the NATS server {url} in plaintext: use a \
                     tls:// URL"
                )),
                _ => {}
            }
        }
        warnings
    }
}

/// Whether a server URL names this machine (a loopback address or `localhost`).
fn on_this_machine(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = if let Some(bracketed) = rest.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        rest.split(':').next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_server_without_authentication_or_with_plaintext_credentials_is_warned_about() {
        let local = LatticeConfig::new("l", "a")
            .server("nats://127.0.0.1:4222")
            .server("nats://localhost:4223")
            .server("nats://[::1]:4224");
        assert!(local.trust_warnings().is_empty());
        let open = LatticeConfig::new("l", "a").server("nats://10.0.0.7:4222");
        let warnings = open.trust_warnings();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("no authentication"), "{warnings:?}");
        let plaintext = open.clone().auth(Auth::Token("t".into()));
        assert!(plaintext.trust_warnings()[0].contains("plaintext"));
        let tls = LatticeConfig::new("l", "a")
            .server("tls://nats.example:4222")
            .auth(Auth::Token("t".into()));
        assert!(tls.trust_warnings().is_empty());
        let no_auth_tls = LatticeConfig::new("l", "a").server("tls://nats.example:4222");
        assert_eq!(no_auth_tls.trust_warnings().len(), 1);
    }
}
