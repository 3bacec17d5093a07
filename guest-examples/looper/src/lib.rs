//! A hostile component that never returns and never calls the host. Only epoch interruption
//! can stop it, so it is the test that a per-call deadline really interrupts running wasm
//! rather than waiting for the guest to yield.

use courier_sdk::prelude::*;

/// Burns CPU without end. `black_box` keeps the optimiser from proving the loop does nothing,
/// so the guest really executes instructions instead of sitting in a trivial branch.
fn spin_forever() -> ! {
    let mut turns: u64 = 0;
    loop {
        turns = std::hint::black_box(turns.wrapping_add(1));
    }
}

/// Spins forever on every message.
#[handler]
fn spin(_msg: Message) -> Result<(), HandlerError> {
    spin_forever()
}

/// Spins forever on every request.
#[handler(request)]
fn spin_on_request(_req: Message) -> Result<Vec<u8>, HandlerError> {
    spin_forever()
}
