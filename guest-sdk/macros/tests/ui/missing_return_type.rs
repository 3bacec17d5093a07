use courier_sdk::prelude::*;

#[handler]
fn on_message(_msg: Message) {}

fn main() {}
