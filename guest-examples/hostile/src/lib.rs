//! A component that misbehaves on command. Host tests send it one command per message or
//! request and check what the host does about it: the deadline, the memory cap, the stack
//! limit, capabilities, mailbox limits, and accounting for every message.
//!
//! A command is UTF-8, `name` or `name:argument`. The same commands work as messages (the
//! result is dropped, an error fails the message) and as requests (the result is the reply).
//!
//! Well-behaved commands:
//! - `count`: how many commands this instance has run, itself included (state that a
//!   fresh instance starts again);
//! - `self`: the id the host gave it;
//! - `last-sender`: the sender of the last message (not request) it received, as the host
//!   stamped it;
//! - `send:<target>[:<payload>]`, `request:<target>[:<payload>]`, `publish:<topic>`: one
//!   messaging call; the reply is `ok`, the request's reply, the count reached, or
//!   `err: <error>` (the payload defaults to `hi`);
//! - `flood:<target>:<n>[:<bytes>]`: send `n` messages as fast as possible (their sequence
//!   numbers, or `bytes` bytes each); the reply is `sent=<s> refused=<r> first_error=<e>`;
//! - `big:<bytes>`: a reply of that many bytes.
//!
//! Commands that try the host's bounds on what a guest chooses:
//! - `fail:<bytes>`: fail with an `internal` error whose text is that many bytes;
//! - `long-target:<bytes>`, `long-topic:<bytes>`: send to an id, or publish on a topic, that
//!   many bytes long; the reply is the outcome, as for `send` and `publish`.
//!
//! Hostile commands:
//! - `spin`: loop without end, calling nothing;
//! - `spin-calls`: loop without end, calling a host import on every turn;
//! - `recurse`: recurse without end until the stack overflows;
//! - `alloc`: allocate 1 MiB blocks without end;
//! - `panic`: panic;
//! - `send-then-panic:<target>[:<payload>]`: send one message, then panic, so tests can see
//!   what becomes of what a handler sent before it trapped;
//! - `unreachable`: execute `unreachable`;
//! - `sleep:<ms>`: sleep in a WASI host call (where no epoch check runs);
//! - `sleep-loop:<ms>:<times>`: sleep `times` times for `ms` each, so that no single wait is
//!   long enough to look stuck;
//! - `exit:<code>`: call WASI `exit`;
//! - `peek:<address>`: read the byte at that address of its linear memory, wherever it is.

use std::cell::Cell;
use std::hint::black_box;
use std::time::Duration;

use courier_sdk::prelude::*;

thread_local! {
    /// Commands this instance has run.
    static COMMANDS: Cell<u64> = const { Cell::new(0) };
    /// Who sent the last message (not request), as the host said.
    static LAST_SENDER: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// How long a `request:` command waits for its reply.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);

/// Runs a command sent as a message.
#[handler]
fn on_message(msg: Message) -> Result<(), HandlerError> {
    LAST_SENDER.with_borrow_mut(|last| *last = msg.sender().to_string());
    run(msg.text()?).map(drop)
}

/// Runs a command sent as a request and replies with its result.
#[handler(request)]
fn on_request(req: Message) -> Result<Vec<u8>, HandlerError> {
    run(req.text()?)
}

fn run(command: &str) -> Result<Vec<u8>, HandlerError> {
    COMMANDS.set(COMMANDS.get() + 1);
    let (name, argument) = command.split_once(':').unwrap_or((command, ""));
    let reply = match name {
        "count" => COMMANDS.get().to_string().into_bytes(),
        "self" => courier_sdk::self_id().into_bytes(),
        "last-sender" => LAST_SENDER.with_borrow(|last| last.clone().into_bytes()),
        "send" => {
            let (target, payload) = target_and_payload(argument);
            outcome(courier_sdk::send(target, payload).map(|()| b"ok".to_vec()))
        }
        "request" => {
            let (target, payload) = target_and_payload(argument);
            outcome(courier_sdk::request(target, payload, REQUEST_TIMEOUT))
        }
        "publish" => {
            outcome(courier_sdk::publish(argument, b"hi").map(|n| n.to_string().into_bytes()))
        }
        "flood" => flood(argument)?.into_bytes(),
        "big" => vec![b'x'; number(argument)? as usize],
        "fail" => {
            let text = "x".repeat(number(argument)? as usize);
            return Err(HandlerError::internal(text));
        }
        "long-target" => {
            let target = "t".repeat(number(argument)? as usize);
            outcome(courier_sdk::send(&target, b"hi").map(|()| b"ok".to_vec()))
        }
        "long-topic" => {
            let topic = "t".repeat(number(argument)? as usize);
            outcome(courier_sdk::publish(&topic, b"hi").map(|n| n.to_string().into_bytes()))
        }
        "spin" => loop {
            black_box(COMMANDS.get());
        },
        "spin-calls" => loop {
            black_box(courier_sdk::now_millis());
        },
        "recurse" => recurse(black_box(1)).to_le_bytes().to_vec(),
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1; 1 << 20]);
                black_box(&hoard);
            }
        }
        "panic" => panic!("hostile was told to panic"),
        "send-then-panic" => {
            let (target, payload) = target_and_payload(argument);
            let sent = courier_sdk::send(target, payload);
            panic!("hostile was told to panic after sending ({sent:?})")
        }
        "unreachable" => core::arch::wasm32::unreachable(),
        "sleep" => {
            std::thread::sleep(Duration::from_millis(number(argument)?));
            b"slept".to_vec()
        }
        "sleep-loop" => {
            let (ms, times) = argument
                .split_once(':')
                .ok_or_else(|| HandlerError::invalid("sleep-loop needs <ms>:<times>"))?;
            for _ in 0..number(times)? {
                std::thread::sleep(Duration::from_millis(number(ms)?));
            }
            b"slept".to_vec()
        }
        "exit" => std::process::exit(number(argument)? as i32),
        "peek" => {
            let address = number(argument)? as usize as *const u8;
            // SAFETY: none, on purpose: an address past the end of linear memory must trap
            // in the host, which is what this command is for.
            vec![unsafe { core::ptr::read_volatile(black_box(address)) }]
        }
        _ => return Err(HandlerError::invalid(format!("unknown command: {command}"))),
    };
    Ok(reply)
}

/// Splits `target[:payload]`; the payload defaults to `hi`.
fn target_and_payload(argument: &str) -> (&str, &[u8]) {
    match argument.split_once(':') {
        Some((target, payload)) => (target, payload.as_bytes()),
        None => (argument, b"hi"),
    }
}

fn number(text: &str) -> Result<u64, HandlerError> {
    text.parse()
        .map_err(|e| HandlerError::invalid(format!("expected a number, got {text:?}: {e}")))
}

/// `ok` bytes or the error as text, so a test sees the guest's view of the outcome.
fn outcome(result: Result<Vec<u8>, MessagingError>) -> Vec<u8> {
    result.unwrap_or_else(|e| format!("err: {e:?}").into_bytes())
}

/// `<target>:<n>[:<bytes>]`: `n` messages of `bytes` bytes each, or of their 8-byte
/// sequence numbers.
fn flood(argument: &str) -> Result<String, HandlerError> {
    let mut parts = argument.splitn(3, ':');
    let (Some(target), Some(n)) = (parts.next(), parts.next()) else {
        return Err(HandlerError::invalid("flood needs <target>:<n>[:<bytes>]"));
    };
    let big = parts.next().map(number).transpose()?;
    let big = big.map(|bytes| vec![7u8; bytes as usize]);
    let (mut sent, mut refused, mut first_error) = (0u64, 0u64, None);
    for i in 0..number(n)? {
        let sequence = i.to_le_bytes();
        let payload = big.as_deref().unwrap_or(&sequence);
        match courier_sdk::send(target, payload) {
            Ok(()) => sent += 1,
            Err(e) => {
                refused += 1;
                first_error.get_or_insert_with(|| format!("{e:?}"));
            }
        }
    }
    Ok(format!(
        "sent={sent} refused={refused} first_error={}",
        first_error.unwrap_or_else(|| "none".into())
    ))
}

/// Recursion the compiler cannot turn into a loop: each frame has work left after the call.
/// Only scalars, so the frames live on wasm's own call stack (which the host bounds and
/// reports as a stack overflow) rather than on the shadow stack in linear memory.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    // Never true, but the compiler cannot know: it keeps the recursion finite in theory.
    if depth == u64::MAX - COMMANDS.get() {
        return depth;
    }
    recurse(depth + 1).wrapping_mul(31).wrapping_add(depth)
}
