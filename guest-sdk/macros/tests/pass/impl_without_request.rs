//! A handler impl with no `handle_request`: requests are answered with `unsupported`.

use courier_sdk::prelude::*;

#[derive(Default)]
struct Sink;

#[handler]
impl Sink {
    fn handle_message(&mut self, _msg: Message) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
