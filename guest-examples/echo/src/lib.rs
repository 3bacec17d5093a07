//! The simplest friendly component: it accepts every message and answers every request with the
//! request itself. Host tests use it to check delivery without any guest logic in the way, and
//! the benchmarks use it as the wasm floor, so it must stay as cheap as a handler can be.

use courier_sdk::prelude::*;

/// Accepts every message and does nothing with it.
#[handler]
fn accept(_msg: Message) -> Result<(), HandlerError> {
    Ok(())
}

/// Mirrors the request, so a reply proves the payload survived the round trip through the
/// host byte for byte.
#[handler(request)]
fn mirror(req: Message) -> Result<Vec<u8>, HandlerError> {
    Ok(req.into_payload())
}
