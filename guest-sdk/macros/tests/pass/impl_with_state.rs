//! A handler impl with both methods and a helper method.

use courier_sdk::prelude::*;

#[derive(Default)]
struct Counter {
    seen: u64,
}

#[handler]
impl Counter {
    fn handle_message(&mut self, _msg: Message) -> Result<(), HandlerError> {
        self.bump();
        Ok(())
    }

    fn handle_request(&mut self, _req: Message) -> Result<Vec<u8>, HandlerError> {
        Ok(self.seen.to_le_bytes().to_vec())
    }

    fn bump(&mut self) {
        self.seen += 1;
    }
}

fn main() {
    let mut counter = Counter::default();
    counter.handle_message(Message::new("test", Vec::new())).unwrap();
    assert_eq!(counter.handle_request(Message::new("test", Vec::new())).unwrap(), 1u64.to_le_bytes());
}
