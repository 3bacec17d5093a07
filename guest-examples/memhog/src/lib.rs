//! A hostile component that allocates until memory runs out. It is the test that the host's
//! per-instance memory limit stops one guest from taking the whole process down with it, and
//! that the instance is replaced afterwards.

use std::sync::Mutex;

wit_bindgen::generate!({ path: "../../wit", world: "actor" });

/// Size of each allocation: large enough to reach any sane limit in a few steps.
const BLOCK_BYTES: usize = 1024 * 1024;

/// Every block ever allocated, kept alive so the allocator can never reuse freed memory and the
/// instance's memory only grows.
static HOARD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Allocates on every call until the allocator fails and the instance traps.
struct Memhog;

/// Allocates 1 MiB blocks without end. Each block is filled with a non-zero byte so its pages
/// are written, not merely reserved: zero-filled memory could come from fresh `memory.grow`
/// pages without the guest touching them.
fn hoard_forever() -> ! {
    loop {
        let block = vec![0xA5_u8; BLOCK_BYTES];
        HOARD
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(block);
    }
}

impl Guest for Memhog {
    fn handle_message(_sender: ComponentId, _message: Vec<u8>) -> Result<(), ComponentError> {
        hoard_forever()
    }

    fn handle_request(_sender: ComponentId, _request: Vec<u8>) -> Result<Vec<u8>, ComponentError> {
        hoard_forever()
    }
}

export!(Memhog);
