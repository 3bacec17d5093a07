//! A broken component on purpose: its handlers are right, but it exports world
//! `stateful-actor`'s `state` interface with a `save-state` that returns a string and a
//! `load-state` that takes one. The host must refuse it at load time and name the mistyped
//! export, instead of failing its first upgrade or restart.

wit_bindgen::generate!({ path: "wit", world: "wrong-state" });

/// Right handlers, wrong state.
struct WrongState;

impl Guest for WrongState {
    fn handle_message(_sender: ComponentId, _message: Vec<u8>) -> Result<(), ComponentError> {
        Ok(())
    }

    fn handle_request(_sender: ComponentId, request: Vec<u8>) -> Result<Vec<u8>, ComponentError> {
        Ok(request)
    }
}

impl exports::courier::actor::state::Guest for WrongState {
    fn save_state() -> String {
        String::new()
    }

    fn load_state(_state: String) {}
}

export!(WrongState);
