use courier_sdk::prelude::*;

#[handler]
fn on_message(_msg: Message) -> Result<(), HandlerError> {
    Ok(())
}

#[handler]
fn on_other_message(_msg: Message) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
