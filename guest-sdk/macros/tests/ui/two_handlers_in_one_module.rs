use courier_sdk::prelude::*;

#[derive(Default)]
struct State;

#[handler]
impl State {
    fn handle_message(&mut self, _msg: Message) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[handler]
fn on_message(_msg: Message) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
