use courier_sdk::HandlerError;

/// Not the SDK's message: the shape check passes, the type check does not.
struct Message;

#[courier_sdk::handler]
fn on_message(_msg: Message) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
