//! A message handler function with a request handler function beside it.

use courier_sdk::prelude::*;

#[handler]
fn on_message(msg: Message) -> Result<(), HandlerError> {
    if msg.payload().is_empty() {
        return Err(HandlerError::invalid("empty message"));
    }
    Ok(())
}

#[handler(request)]
fn on_request(req: Message) -> Result<Vec<u8>, HandlerError> {
    Ok(req.into_payload())
}

fn main() {
    // The functions stay ordinary functions, callable in a native test.
    assert!(on_message(Message::new("test", b"x".to_vec())).is_ok());
    assert_eq!(on_request(Message::new("test", b"hi".to_vec())).unwrap(), b"hi");
}
