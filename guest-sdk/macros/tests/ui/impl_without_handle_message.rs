use courier_sdk::prelude::*;

#[derive(Default)]
struct Counter {
    seen: u64,
}

#[handler]
impl Counter {
    fn handle_messages(&mut self, _msg: Message) -> Result<(), HandlerError> {
        self.seen += 1;
        Ok(())
    }
}

fn main() {}
