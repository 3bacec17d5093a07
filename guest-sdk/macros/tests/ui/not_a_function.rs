use courier_sdk::prelude::*;

#[handler]
struct Handler;

fn main() {}
