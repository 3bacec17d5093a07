//! A hostile component whose handlers always panic. A guest panic prints its message to stderr
//! and then traps, so this is the test that the host reports the panic message, marks the
//! instance poisoned, and carries on with other work.

wit_bindgen::generate!({ path: "../../wit", world: "actor" });

/// Panics on every call, quoting the payload so a test can tell which call caused it.
struct Panicker;

impl Guest for Panicker {
    fn handle_message(_sender: ComponentId, message: Vec<u8>) -> Result<(), ComponentError> {
        panic!("panicker refuses: {}", String::from_utf8_lossy(&message));
    }

    fn handle_request(_sender: ComponentId, request: Vec<u8>) -> Result<Vec<u8>, ComponentError> {
        panic!("panicker refuses: {}", String::from_utf8_lossy(&request));
    }
}

export!(Panicker);
