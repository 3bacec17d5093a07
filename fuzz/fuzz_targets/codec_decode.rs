//! Arbitrary bytes as a framed payload: the codec's reading functions never panic, and what
//! they accept round-trips.
//!
//! - `read_varint`: a varint it accepts is the one `write_varint` writes for its value (the
//!   prefix of a value is unique);
//! - `split` and `unframe`: the codec and body they return frame back to the same bytes;
//! - `decode`: a typed payload, or any JSON or CBOR value, that decodes encodes again and
//!   decodes to the same value.

#![no_main]

use courier_codec::{
    Codec, decode, decode_as, encode, frame, read_varint, split, unframe, write_varint,
};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

/// A payload shaped like the ones components send: numbers, text, bytes, optional and
/// repeated fields, a nested enum and a float.
#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
    delta: i32,
    item: String,
    note: Option<String>,
    quantities: Vec<u32>,
    tags: Vec<(String, bool)>,
    status: Status,
    price: f64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Status {
    Open,
    Held { reason: String },
    Shipped(u16),
}

impl PartialEq for Order {
    /// Field by field, the float by its bits: a NaN that survives is the same NaN.
    fn eq(&self, other: &Order) -> bool {
        self.id == other.id
            && self.delta == other.delta
            && self.item == other.item
            && self.note == other.note
            && self.quantities == other.quantities
            && self.tags == other.tags
            && self.status == other.status
            && self.price.to_bits() == other.price.to_bits()
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some((value, length)) = read_varint(data) {
        let mut written = Vec::new();
        write_varint(value, &mut written);
        assert_eq!(written, data[..length], "varint {value:#x}");
    }

    match split(data) {
        Ok((codec, body)) => {
            assert_eq!(frame(codec, body), data, "{codec}");
            assert_eq!(unframe(codec, data).expect("split accepted it"), body);
        }
        // Every error can describe itself.
        Err(err) => assert!(!err.to_string().is_empty()),
    }
    for codec in Codec::ALL {
        if let Ok(body) = unframe(codec, data) {
            assert_eq!(frame(codec, body), data, "{codec}");
        }
    }

    if let Ok(order) = decode::<Order>(data) {
        let (codec, _) = split(data).expect("decode accepted it");
        let again = encode(codec, &order).expect("a decoded value encodes");
        let back: Order = decode_as(codec, &again).expect("an encoded value decodes");
        assert_eq!(back, order, "{codec}");
    }
    if let Ok(value) = decode_as::<serde_json::Value>(Codec::Json, data) {
        let again = encode(Codec::Json, &value).expect("a JSON value encodes");
        let back: serde_json::Value = decode_as(Codec::Json, &again).expect("and decodes");
        assert_eq!(back, value);
    }
    if let Ok(value) = decode_as::<ciborium::Value>(Codec::Cbor, data) {
        let again = encode(Codec::Cbor, &value).expect("a CBOR value encodes");
        let back: ciborium::Value = decode_as(Codec::Cbor, &again).expect("and decodes");
        let twice = encode(Codec::Cbor, &back).expect("a CBOR value encodes");
        // Compared as encodings, since a NaN is not equal to itself.
        assert_eq!(twice, again);
    }
});
