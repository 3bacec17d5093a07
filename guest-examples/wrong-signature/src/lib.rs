//! A broken component on purpose: its `handle-message` takes and returns strings instead of the
//! contract's types. The host must refuse it at load time and say which export has the wrong
//! type, instead of trapping on the first message.

wit_bindgen::generate!({ path: "wit", world: "wrong-signature" });

/// Has both handlers, one of them mistyped.
struct WrongSignature;

impl Guest for WrongSignature {
    fn handle_message(_sender: String, _message: String) -> Result<(), String> {
        Ok(())
    }

    fn handle_request(_sender: ComponentId, request: Vec<u8>) -> Result<Vec<u8>, ComponentError> {
        Ok(request)
    }
}

export!(WrongSignature);
