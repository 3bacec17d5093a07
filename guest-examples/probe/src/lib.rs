//! A component that does one host-facing thing per request and reports what happened. Host
//! tests drive it to check the host services, the messaging imports and capability checks, and
//! that WASI gives a guest no ambient authority: no environment, no filesystem, no network.
//!
//! A request is a UTF-8 command, optionally with an argument after the first `:`
//! (`log:hello`, `send:orders/new`, `send-big:orders/new` to send 64 KiB, `ask:other:self` to
//! request the command `self` of the component `other`). Replies are plain bytes, mostly text, so a failing test
//! shows the guest's view of the failure verbatim.

use std::time::Duration;

use courier_sdk::prelude::*;
use courier_sdk::{Level, MessagingError};

/// Payload the probe sends, so a receiving test component sees something recognisable.
const PROBE_PAYLOAD: &[u8] = b"hi";

/// Size of what `send-big:` and `publish-big:` send: over a broker's payload limit when a
/// test sets it low, to see which check a refusal comes from.
const BIG_PAYLOAD: usize = 64 * 1024;

/// How long a `request:` command waits for its reply.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);

/// Accepts messages and ignores them: the probe's work is in its requests.
#[handler]
fn ignore(_msg: Message) -> Result<(), HandlerError> {
    Ok(())
}

/// Runs the probe command in each request.
#[handler(request)]
fn probe(req: Message) -> Result<Vec<u8>, HandlerError> {
    let command = String::from_utf8(req.into_payload())
        .map_err(|e| HandlerError::invalid(format!("probe command is not UTF-8: {e}")))?;
    run(&command)
}

/// Dispatches one command to the check it names.
fn run(command: &str) -> Result<Vec<u8>, HandlerError> {
    let (name, argument) = match command.split_once(':') {
        Some((name, argument)) => (name, Some(argument)),
        None => (command, None),
    };
    let reply = match (name, argument) {
        ("time", None) => courier_sdk::now_millis().to_le_bytes().to_vec(),
        ("log", Some(text)) => {
            courier_sdk::log(Level::Info, text);
            b"ok".to_vec()
        }
        ("print", Some(text)) => {
            println!("{text}");
            eprintln!("{text}");
            b"ok".to_vec()
        }
        ("env", None) => environment().into_bytes(),
        ("fs", None) => filesystem().into_bytes(),
        ("net", None) => network().into_bytes(),
        // A trap with no panic message in front of it, so the host's report of a bare trap
        // (not a panic, not a deadline) can be tested.
        ("trap", None) => core::arch::wasm32::unreachable(),
        ("self", None) => courier_sdk::self_id().into_bytes(),
        ("send", Some(target)) => match courier_sdk::send(target, PROBE_PAYLOAD) {
            Ok(()) => b"ok".to_vec(),
            Err(e) => failure(&e).into_bytes(),
        },
        ("request", Some(target)) => {
            match courier_sdk::request(target, PROBE_PAYLOAD, REQUEST_TIMEOUT) {
                Ok(reply) => reply,
                Err(e) => failure(&e).into_bytes(),
            }
        }
        // `ask:<target>:<command>`: request `<command>` of `<target>` (another probe, say)
        // and reply with its answer, so tests can chain requests through components.
        ("ask", Some(rest)) => {
            let (target, command) = rest.split_once(':').unwrap_or((rest, ""));
            match courier_sdk::request(target, command.as_bytes(), REQUEST_TIMEOUT) {
                Ok(reply) => reply,
                Err(e) => failure(&e).into_bytes(),
            }
        }
        ("publish", Some(topic)) => match courier_sdk::publish(topic, PROBE_PAYLOAD) {
            Ok(reached) => reached.to_string().into_bytes(),
            Err(e) => failure(&e).into_bytes(),
        },
        ("send-big", Some(target)) => match courier_sdk::send(target, vec![0; BIG_PAYLOAD]) {
            Ok(()) => b"ok".to_vec(),
            Err(e) => failure(&e).into_bytes(),
        },
        ("publish-big", Some(topic)) => match courier_sdk::publish(topic, vec![0; BIG_PAYLOAD]) {
            Ok(reached) => reached.to_string().into_bytes(),
            Err(e) => failure(&e).into_bytes(),
        },
        _ => {
            return Err(HandlerError::invalid(format!(
                "unknown probe command: {command}"
            )));
        }
    };
    Ok(reply)
}

/// `err: ` and the error as the WIT bindings print it (`MessagingError::TargetNotFound("pong")`),
/// the form host tests match on. The SDK's `Debug` prints the variant alone, so the type name
/// goes in front, and a failed handler's error is named as the WIT `ComponentError`.
fn failure(error: &MessagingError) -> String {
    match error {
        MessagingError::HandlerFailed(cause) => {
            format!("err: MessagingError::HandlerFailed(ComponentError::{cause:?})")
        }
        other => format!("err: MessagingError::{other:?}"),
    }
}

/// Counts environment variables and arguments as `vars,args`: both should be 0 unless the host
/// granted them.
fn environment() -> String {
    format!("{},{}", std::env::vars().count(), std::env::args().count())
}

/// Tries to list the root directory and to create a file, reporting each outcome: both should
/// fail unless the host preopened a directory.
fn filesystem() -> String {
    let read_dir = outcome(std::fs::read_dir("/"));
    let create = outcome(std::fs::File::create("probe.txt"));
    format!("read_dir: {read_dir}; create: {create}")
}

/// Tries to open a TCP connection to the discard port: it should fail unless the host granted
/// network access.
fn network() -> String {
    outcome(std::net::TcpStream::connect("127.0.0.1:9"))
}

/// `ok`, or `err: ` and the error, for a reply a test can match on.
fn outcome<T>(result: std::io::Result<T>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("err: {e}"),
    }
}
