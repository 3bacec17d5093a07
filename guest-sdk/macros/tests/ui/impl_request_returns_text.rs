use courier_sdk::prelude::*;

#[derive(Default)]
struct Greeter;

#[handler]
impl Greeter {
    fn handle_message(&mut self, _msg: Message) -> Result<(), HandlerError> {
        Ok(())
    }

    fn handle_request(&mut self, _req: Message) -> Result<String, HandlerError> {
        Ok("hello".into())
    }
}

fn main() {}
