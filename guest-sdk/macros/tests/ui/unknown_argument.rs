use courier_sdk::prelude::*;

#[handler(requests)]
fn on_request(req: Message) -> Result<Vec<u8>, HandlerError> {
    Ok(req.into_payload())
}

fn main() {}
