use courier_sdk::prelude::*;

struct Counter {
    seen: u64,
}

#[handler]
impl Counter {
    fn handle_message(&mut self, _msg: Message) -> Result<(), HandlerError> {
        self.seen += 1;
        Ok(())
    }
}

fn main() {}
