use courier_sdk::prelude::*;

#[handler]
fn on_message(sender: String, payload: Vec<u8>) -> Result<(), HandlerError> {
    let _ = (sender, payload);
    Ok(())
}

fn main() {}
