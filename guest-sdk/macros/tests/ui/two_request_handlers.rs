use courier_sdk::prelude::*;

#[handler]
fn on_message(_msg: Message) -> Result<(), HandlerError> {
    Ok(())
}

#[handler(request)]
fn on_request(req: Message) -> Result<Vec<u8>, HandlerError> {
    Ok(req.into_payload())
}

#[handler(request)]
fn on_other_request(req: Message) -> Result<Vec<u8>, HandlerError> {
    Ok(req.into_payload())
}

fn main() {}
