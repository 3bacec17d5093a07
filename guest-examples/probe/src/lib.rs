//! A component that does one host-facing thing per request and reports what happened. Host
//! tests drive it to check the host services, the messaging imports and capability checks, and
//! that WASI gives a guest no ambient authority: no environment, no filesystem, no network.
//!
//! A request is a UTF-8 command, optionally with an argument after the first `:`
//! (`log:hello`, `send:orders/new`). Replies are plain bytes, mostly text, so a failing test
//! shows the guest's view of the failure verbatim.

use courier::actor::host_services::{self, LogLevel};
use courier::actor::messaging;

wit_bindgen::generate!({ path: "../../wit", world: "actor" });

/// Payload the probe sends, so a receiving test component sees something recognisable.
const PROBE_PAYLOAD: &[u8] = b"hi";

/// How long a `request:` command waits for its reply, in milliseconds.
const REQUEST_TIMEOUT_MS: u32 = 1000;

/// Runs the probe command in each request.
struct Probe;

impl Guest for Probe {
    fn handle_message(_sender: ComponentId, _message: Vec<u8>) -> Result<(), ComponentError> {
        Ok(())
    }

    fn handle_request(_sender: ComponentId, request: Vec<u8>) -> Result<Vec<u8>, ComponentError> {
        let command = String::from_utf8(request).map_err(|e| {
            ComponentError::InvalidMessage(format!("probe command is not UTF-8: {e}"))
        })?;
        run(&command)
    }
}

/// Dispatches one command to the check it names.
fn run(command: &str) -> Result<Vec<u8>, ComponentError> {
    let (name, argument) = match command.split_once(':') {
        Some((name, argument)) => (name, Some(argument)),
        None => (command, None),
    };
    let reply = match (name, argument) {
        ("time", None) => host_services::current_time_millis().to_le_bytes().to_vec(),
        ("log", Some(text)) => {
            host_services::log(LogLevel::Info, text);
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
        ("self", None) => messaging::self_id().into_bytes(),
        ("send", Some(target)) => match messaging::send_message(target, PROBE_PAYLOAD) {
            Ok(()) => b"ok".to_vec(),
            Err(e) => format!("err: {e:?}").into_bytes(),
        },
        ("request", Some(target)) => {
            match messaging::send_request(target, PROBE_PAYLOAD, REQUEST_TIMEOUT_MS) {
                Ok(reply) => reply,
                Err(e) => format!("err: {e:?}").into_bytes(),
            }
        }
        ("publish", Some(topic)) => match messaging::publish(topic, PROBE_PAYLOAD) {
            Ok(reached) => reached.to_string().into_bytes(),
            Err(e) => format!("err: {e:?}").into_bytes(),
        },
        _ => {
            return Err(ComponentError::InvalidMessage(format!(
                "unknown probe command: {command}"
            )));
        }
    };
    Ok(reply)
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

export!(Probe);
