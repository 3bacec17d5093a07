use courier_sdk::prelude::*;

mod orders {
    use courier_sdk::prelude::*;

    #[handler]
    fn on_order(_msg: Message) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[handler]
fn on_message(_msg: Message) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
