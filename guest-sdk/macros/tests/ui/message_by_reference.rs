use courier_sdk::prelude::*;

#[handler]
fn on_message(msg: &Message) -> Result<(), HandlerError> {
    let _ = msg;
    Ok(())
}

fn main() {}
