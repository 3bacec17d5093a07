use courier_sdk::prelude::*;

#[derive(Default)]
struct Counter;

#[handler]
impl Counter {
    fn handle_message(&self, _msg: Message) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
