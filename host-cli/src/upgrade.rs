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

/// How long to wait for `100 Continue` before sending the body anyway.
const CONTINUE_WAIT: Duration = Duration::from_secs(5);

/// Reads into `answer` until it holds a whole response head; the offset just past it, or
/// `None` if the connection ended first.
fn read_head(stream: &mut TcpStream, answer: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(at + 4));
        }
        if answer.len() as u64 >= ANSWER_LIMIT {
            return Err(std::io::Error::other("the answer's head is too long"));
        }
        match stream.read(&mut buffer)? {
            0 => return Ok(None),
            n => answer.extend_from_slice(&buffer[..n]),
        }
    }
}

fn is_timeout(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

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
        "POST /components/{}/upgrade HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/wasm\r\nContent-Length: {}\r\nConnection: close\r\nExpect: 100-continue\r\n",
        id.replace('/', "%2F"),
        bytes.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    let sending = |err: std::io::Error| format!("sending the component to {url} failed: {err}");
    stream.write_all(head.as_bytes()).map_err(sending)?;
    // The runner refuses an upgrade (no token, no such component, another one compiling)
    // before it reads the body, and then closes: a body sent regardless would meet a reset
    // connection and hide the refusal. So the body goes only once the runner says
    // `100 Continue` (or after a few seconds of silence, as RFC 9110 asks of a client).
    let mut answer = Vec::new();
    stream
        .set_read_timeout(Some(CONTINUE_WAIT))
        .map_err(|err| format!("cannot set a timeout: {err}"))?;
    let interim = read_head(&mut stream, &mut answer);
    stream
        .set_read_timeout(Some(UPGRADE_TIMEOUT))
        .map_err(|err| format!("cannot set a timeout: {err}"))?;
    let go_on = match interim {
        Ok(Some(end)) if answer.starts_with(b"HTTP/1.1 100") => {
            answer.drain(..end);
            true
        }
        // A final answer: the refusal.
        Ok(Some(_)) => false,
        Ok(None) => return Err("the runner closed the connection without an answer".into()),
        Err(err) if answer.is_empty() && is_timeout(&err) => true,
        Err(err) => return Err(format!("reading the runner's answer failed: {err}")),
    };
    if go_on {
        stream.write_all(&bytes).map_err(sending)?;
    }
    let room = ANSWER_LIMIT.saturating_sub(answer.len() as u64);
    (&mut stream)
        .take(room)
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
