//! The simplest friendly component: it accepts every message and answers every request with the
//! request itself. Host tests use it to check delivery without any guest logic in the way, and
//! the benchmarks use it as the wasm floor, so it must stay as cheap as a handler can be.

wit_bindgen::generate!({ path: "../../wit", world: "actor" });

/// Does nothing with messages and mirrors requests, so a reply proves the payload survived the
/// round trip through the host byte for byte.
struct Echo;

impl Guest for Echo {
    fn handle_message(_sender: ComponentId, _message: Vec<u8>) -> Result<(), ComponentError> {
        Ok(())
    }

    fn handle_request(_sender: ComponentId, request: Vec<u8>) -> Result<Vec<u8>, ComponentError> {
        Ok(request)
    }
}

export!(Echo);
