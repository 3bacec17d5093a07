//! A hostile component that never returns and never calls the host. Only epoch interruption
//! can stop it, so it is the test that a per-call deadline really interrupts running wasm
//! rather than waiting for the guest to yield.

wit_bindgen::generate!({ path: "../../wit", world: "actor" });

/// Spins forever on every call.
struct Looper;

/// Burns CPU without end. `black_box` keeps the optimiser from proving the loop does nothing,
/// so the guest really executes instructions instead of sitting in a trivial branch.
fn spin_forever() -> ! {
    let mut turns: u64 = 0;
    loop {
        turns = std::hint::black_box(turns.wrapping_add(1));
    }
}

impl Guest for Looper {
    fn handle_message(_sender: ComponentId, _message: Vec<u8>) -> Result<(), ComponentError> {
        spin_forever()
    }

    fn handle_request(_sender: ComponentId, _request: Vec<u8>) -> Result<Vec<u8>, ComponentError> {
        spin_forever()
    }
}

export!(Looper);
