use courier_sdk::prelude::*;

#[handler]
async fn on_message(_msg: Message) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
