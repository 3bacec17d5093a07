//! A hostile component that allocates until memory runs out. It is the test that the host's
//! per-instance memory limit stops one guest from taking the whole process down with it, and
//! that the instance is replaced afterwards.

use courier_sdk::prelude::*;

/// Size of each allocation: large enough to reach any sane limit in a few steps.
const BLOCK_BYTES: usize = 1024 * 1024;

/// Every block ever allocated, kept alive so the allocator can never reuse freed memory and
/// the instance's memory only grows. `#[handler]` keeps one `Memhog` for the life of the
/// instance.
#[derive(Default)]
struct Memhog {
    hoard: Vec<Vec<u8>>,
}

impl Memhog {
    /// Allocates 1 MiB blocks without end, until the allocator fails and the instance traps.
    /// Each block is filled with a non-zero byte so its pages are written, not merely
    /// reserved: zero-filled memory could come from fresh `memory.grow` pages without the
    /// guest touching them.
    fn hoard_forever(&mut self) -> ! {
        loop {
            self.hoard.push(vec![0xA5_u8; BLOCK_BYTES]);
        }
    }
}

#[handler]
impl Memhog {
    fn handle_message(&mut self, _msg: Message) -> Result<(), HandlerError> {
        self.hoard_forever()
    }

    fn handle_request(&mut self, _req: Message) -> Result<Vec<u8>, HandlerError> {
        self.hoard_forever()
    }
}
