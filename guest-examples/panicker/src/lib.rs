//! A hostile component whose handlers always panic. A guest panic prints its message to stderr
//! and then traps, so this is the test that the host reports the panic message, marks the
//! instance poisoned, and carries on with other work.

use courier_sdk::prelude::*;

/// Panics on every message, quoting the payload so a test can tell which call caused it.
#[handler]
fn refuse(msg: Message) -> Result<(), HandlerError> {
    panic!(
        "panicker refuses: {}",
        String::from_utf8_lossy(msg.payload())
    );
}

/// Panics on every request, quoting the payload.
#[handler(request)]
fn refuse_request(req: Message) -> Result<Vec<u8>, HandlerError> {
    panic!(
        "panicker refuses: {}",
        String::from_utf8_lossy(req.payload())
    );
}
