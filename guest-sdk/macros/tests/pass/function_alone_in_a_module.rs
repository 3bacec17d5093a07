//! A message handler function alone, in a module, with full paths and no prelude.

mod handlers {
    #[courier_sdk::handler]
    pub fn on_message(_msg: courier_sdk::Message) -> Result<(), courier_sdk::HandlerError> {
        Ok(())
    }
}

fn main() {
    assert!(handlers::on_message(courier_sdk::Message::new("test", Vec::new())).is_ok());
}
