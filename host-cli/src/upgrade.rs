//! `courier upgrade ID PATH`: hand a new version of a component to a running `courier run`
//! through its ingress (`POST /components/{id}/upgrade`).
//!
//! A plain HTTP/1.1 client over a `TcpStream`: the ingress listens on loopback only, so
//! there is no TLS to speak, and one request needs no client library.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use crate::ingress::MAX_COMPONENT_BYTES;
use crate::units::format_bytes;

/// How long the runner may take to compile the component and swap it in.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(120);

/// The most of an answer read back: the ingress's answers are small JSON objects.
const ANSWER_LIMIT: u64 = 64 << 10;

/// Send the component at `path` to the runner at `url` (`http://HOST:PORT`) as the new
/// version of `id`, with `token` as the bearer token, or else the token the runner made
/// for its run if it keeps one where [`crate::token`] says. Returns the runner's answer on
/// success; the error says what went wrong, with the runner's answer if it gave one.
pub fn upgrade(id: &str, path: &Path, url: &str, token: Option<&str>) -> Result<String, String> {
    let bytes =
        std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    if bytes.len() > MAX_COMPONENT_BYTES {
        return Err(format!(
            "{} is {}, over the {} a runner takes",
            path.display(),
            format_bytes(bytes.len() as u64),
            format_bytes(MAX_COMPONENT_BYTES as u64)
        ));
    }
    let authority = url
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|authority| !authority.is_empty() && !authority.contains('/'))
        .ok_or_else(|| format!("`{url}` is not an `http://HOST:PORT` address"))?;
    let found;
    let token = match token {
        Some(token) => Some(token),
        None => {
            found = crate::token::find(authority);
            found.as_ref().map(|(token, _)| token.as_str())
        }
    };
    let mut stream = TcpStream::connect(authority)
        .map_err(|err| format!("cannot reach the runner at {url}: {err}"))?;
    stream
        .set_read_timeout(Some(UPGRADE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(UPGRADE_TIMEOUT)))
        .map_err(|err| format!("cannot set a timeout: {err}"))?;
    let mut head = format!(
        "POST /components/{}/upgrade HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/wasm\r\nContent-Length: {}\r\nConnection: close\r\n",
        id.replace('/', "%2F"),
        bytes.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(&bytes))
        .map_err(|err| format!("sending the component to {url} failed: {err}"))?;
    let mut answer = Vec::new();
    stream
        .take(ANSWER_LIMIT)
        .read_to_end(&mut answer)
        .map_err(|err| format!("reading the runner's answer failed: {err}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("the runner's answer is not HTTP: {head}"))?;
    if status == 200 {
        Ok(body.trim().to_string())
    } else if status == 401 && token.is_none() {
        Err(format!(
            "the runner asks for a token (401): give it with --token or COURIER_TOKEN; a run \
             whose manifest sets none keeps the one it made in {}, and there is none there",
            authority
                .to_socket_addrs()
                .ok()
                .and_then(|mut addresses| addresses.next())
                .map_or_else(
                    || crate::token::token_dir().display().to_string(),
                    |address| crate::token::token_file(address).display().to_string()
                )
        ))
    } else {
        Err(format!(
            "the runner refused the upgrade ({status}): {}",
            body.trim()
        ))
    }
}
