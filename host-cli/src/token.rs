//! The management token `courier run` makes when the manifest sets none, and where
//! `courier upgrade` finds it.
//!
//! Routes that change what runs (`POST /components/{id}/upgrade` and `/restart`) always ask
//! for a bearer token: without one any local user could swap a component's code, keep its
//! capabilities and read its saved state and every message sent to it. When neither
//! `runtime.token` nor `COURIER_TOKEN` gives one, the runner makes one per run from the OS's
//! random number generator and writes it to a file only its user can read, at a place that
//! a client can work out from the ingress's address alone:
//!
//! `<dir>/ingress-<ip>-<port>.token`, where `<dir>` is `$XDG_RUNTIME_DIR/courier` (the
//! user's private runtime folder) when that is set, `courier-run` in the platform's cache
//! folder otherwise; `<ip>` is the listening address's IP with any `:` written as `_`.
//!
//! The folder is created for its owner alone (mode 700) and refused if it belongs to another
//! user or others may enter it; the file is created with mode 600, so no other user can read
//! it even while it is written, and removed when the run ends.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// Bytes of randomness in a made token (written as twice as many hex digits).
const TOKEN_BYTES: usize = 32;

/// The folder that holds the tokens made by runs of this user.
pub fn token_dir() -> PathBuf {
    match dirs::runtime_dir() {
        Some(runtime) => runtime.join("courier"),
        None => dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("courier-run"),
    }
}

/// Where the run listening on `address` keeps its made token.
pub fn token_file(address: SocketAddr) -> PathBuf {
    let ip = address.ip().to_string().replace(':', "_");
    token_dir().join(format!("ingress-{ip}-{}.token", address.port()))
}

/// A token made for one run, and its file, removed when this is dropped.
pub struct MadeToken {
    token: String,
    file: PathBuf,
}

impl MadeToken {
    /// Make a token for the ingress on `address` and write it to [`token_file`].
    pub fn make(address: SocketAddr) -> Result<MadeToken, String> {
        let mut random = [0u8; TOKEN_BYTES];
        getrandom::getrandom(&mut random)
            .map_err(|err| format!("the OS gave no random bytes for a token: {err}"))?;
        let token: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
        let file = token_file(address);
        let dir = file.parent().unwrap_or(Path::new("."));
        private_dir(dir)?;
        // Written beside it and renamed over it, so a reader never sees half a token.
        let partial = file.with_extension(format!("token.{}.partial", std::process::id()));
        let _ = std::fs::remove_file(&partial);
        let mut out = create_private(&partial)
            .map_err(|err| format!("cannot create {}: {err}", partial.display()))?;
        out.write_all(token.as_bytes())
            .and_then(|()| out.sync_all())
            .map_err(|err| format!("cannot write {}: {err}", partial.display()))?;
        std::fs::rename(&partial, &file)
            .map_err(|err| format!("cannot write {}: {err}", file.display()))?;
        Ok(MadeToken { token, file })
    }

    /// The token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Its file.
    pub fn file(&self) -> &Path {
        &self.file
    }
}

impl Drop for MadeToken {
    fn drop(&mut self) {
        // Only ours: a later run on the same address may have written its own meanwhile.
        if std::fs::read_to_string(&self.file).is_ok_and(|text| text == self.token) {
            let _ = std::fs::remove_file(&self.file);
        }
    }
}

/// The token a run listening at `authority` (`HOST:PORT`, as in `--url`) made, if one of the
/// addresses it names has a token file.
pub fn find(authority: &str) -> Option<(String, PathBuf)> {
    let addresses = authority.to_socket_addrs().ok()?;
    addresses.into_iter().find_map(|address| {
        let file = token_file(address);
        let token = std::fs::read_to_string(&file).ok()?;
        let token = token.trim();
        (!token.is_empty()).then(|| (token.to_string(), file))
    })
}

#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Creates `dir` for its owner alone if it is missing, and refuses one that another user
/// owns or that others may enter, where a token would not stay secret.
#[cfg(unix)]
fn private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|err| format!("cannot read {}: {err}", dir.display()))?;
    let user = rustix::process::geteuid().as_raw();
    let mode = meta.mode() & 0o777;
    if !meta.is_dir() || meta.uid() != user || mode & 0o077 != 0 {
        return Err(format!(
            "{} is not a folder of user {user}'s alone (owner {}, mode {mode:03o}), so a token \
             kept there would not stay secret: `chmod 700` it, or set `runtime.token` or \
             `COURIER_TOKEN`",
            dir.display(),
            meta.uid()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn private_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_named_by_the_address() {
        let v4 = token_file("127.0.0.1:8080".parse().unwrap());
        assert!(
            v4.ends_with("ingress-127.0.0.1-8080.token"),
            "{}",
            v4.display()
        );
        let v6 = token_file("[::1]:9000".parse().unwrap());
        assert!(v6.ends_with("ingress-__1-9000.token"), "{}", v6.display());
    }
}
