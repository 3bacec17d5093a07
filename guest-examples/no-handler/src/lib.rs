//! A broken component on purpose: it exports `handle-request` but not `handle-message`, which
//! every Courier component must export. The host must refuse it at load time and say which
//! export is missing, instead of failing later when the first message arrives.

wit_bindgen::generate!({ path: "wit", world: "no-handler" });

/// Answers requests and, by design, cannot take messages.
struct NoHandler;

impl Guest for NoHandler {
    fn handle_request(_sender: ComponentId, request: Vec<u8>) -> Result<Vec<u8>, ComponentError> {
        Ok(request)
    }
}

export!(NoHandler);
