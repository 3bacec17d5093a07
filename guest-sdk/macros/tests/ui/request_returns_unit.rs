use courier_sdk::prelude::*;

#[handler]
fn on_message(_msg: Message) -> Result<(), HandlerError> {
    Ok(())
}

#[handler(request)]
fn on_request(_req: Message) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
