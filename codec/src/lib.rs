//! Multicodec framing of Courier payloads, shared by the host and the guest SDK.
//!
//! A Courier payload is a byte string. When a component sends a typed value, the bytes start
//! with a *multicodec prefix*: the code of the encoding from the public
//! [multicodec table](https://github.com/multiformats/multicodec/blob/master/table.csv),
//! written as an unsigned LEB128 varint. A receiver reads the prefix first, so it can refuse a
//! payload it cannot read (`invalid-message`) instead of misreading it.
//!
//! | codec | code | prefix bytes | feature |
//! |---|---|---|---|
//! | [`Codec::Raw`] | `0x55` | `55` | always |
//! | [`Codec::Json`] | `0x0200` | `80 04` | `json` |
//! | [`Codec::Cbor`] | `0x51` | `51` | `cbor` |
//!
//! Framing raw bytes needs no feature:
//!
//! ```
//! use courier_codec::{Codec, frame, unframe};
//!
//! let payload = frame(Codec::Raw, b"hello");
//! assert_eq!(payload, [0x55, b'h', b'e', b'l', b'l', b'o']);
//! assert_eq!(unframe(Codec::Raw, &payload).unwrap(), b"hello");
//!
//! // A payload framed with another codec is refused with both codecs named.
//! let err = unframe(Codec::Cbor, &payload).unwrap_err();
//! assert_eq!(err.to_string(), "payload is raw (0x55), expected cbor (0x51)");
//! ```
//!
//! With the `json` or `cbor` feature, [`encode`] and [`decode`] carry any serde value.
//! The crate has no dependency beyond serde and the codecs' own crates, so the host can use it
//! as well as the guests.

use std::fmt;

/// Longest varint the multiformats unsigned-varint spec allows: 9 bytes, 63 bits.
const MAX_VARINT_BYTES: usize = 9;

/// An encoding from the multicodec table that Courier payloads may be framed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// Bytes as they are, with no structure (`raw`, `0x55`).
    Raw,
    /// JSON text (`json`, `0x0200`). Readable in logs; larger and slower than CBOR.
    Json,
    /// CBOR, RFC 8949 (`cbor`, `0x51`). Compact binary.
    Cbor,
}

impl Codec {
    /// Every codec this crate knows, whether or not its feature is enabled.
    pub const ALL: [Codec; 3] = [Codec::Raw, Codec::Json, Codec::Cbor];

    /// Its code in the multicodec table.
    pub const fn code(self) -> u64 {
        match self {
            Codec::Raw => 0x55,
            Codec::Json => 0x0200,
            Codec::Cbor => 0x51,
        }
    }

    /// Its name in the multicodec table.
    pub const fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Json => "json",
            Codec::Cbor => "cbor",
        }
    }

    /// The codec with this multicodec code, if Courier knows it.
    pub fn from_code(code: u64) -> Option<Codec> {
        Codec::ALL.into_iter().find(|codec| codec.code() == code)
    }

    /// The prefix that frames a payload of this codec: its code as an unsigned varint.
    pub const fn prefix(self) -> &'static [u8] {
        match self {
            Codec::Raw => &[0x55],
            Codec::Json => &[0x80, 0x04],
            Codec::Cbor => &[0x51],
        }
    }

    /// Whether this build can encode and decode serde values with it: `json` and `cbor` each
    /// need their feature, and `raw` carries bytes, not serde values.
    pub const fn is_serde_enabled(self) -> bool {
        match self {
            Codec::Raw => false,
            Codec::Json => cfg!(feature = "json"),
            Codec::Cbor => cfg!(feature = "cbor"),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Codes are written as in the multicodec table, padded to whole bytes.
        let width = if self.code() > 0xff { 4 } else { 2 };
        write!(f, "{} (0x{:0width$x})", self.name(), self.code())
    }
}

/// The codec a payload's prefix names, as far as this crate can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// A codec Courier knows.
    Codec(Codec),
    /// A well-formed varint that is no codec Courier knows.
    Unknown(u64),
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Codec(codec) => codec.fmt(f),
            Found::Unknown(code) => write!(f, "an unknown codec (0x{code:x})"),
        }
    }
}

/// The codec or codecs a reader accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Exactly this codec.
    One(Codec),
    /// Any codec Courier knows ([`split`] accepts each of them).
    AnyKnown,
    /// Any serde codec enabled in this build (`decode` accepts each of them).
    AnySerde,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::One(codec) => codec.fmt(f),
            Expected::AnyKnown => f.write_str("raw (0x55), json (0x0200) or cbor (0x51)"),
            Expected::AnySerde => {
                let mut enabled = Codec::ALL.into_iter().filter(|c| c.is_serde_enabled());
                match enabled.next() {
                    None => f.write_str("a serde codec, but none is enabled in this build"),
                    Some(first) => {
                        first.fmt(f)?;
                        for codec in enabled {
                            write!(f, " or {codec}")?;
                        }
                        Ok(())
                    }
                }
            }
        }
    }
}

/// Why a payload could not be framed, unframed, encoded or decoded. Every message names the
/// codec that was expected and, where there was one, the codec that was found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The payload is empty, so it has no multicodec prefix.
    Empty {
        /// What the reader would have accepted.
        expected: Expected,
    },
    /// The payload ends inside its multicodec prefix, or the prefix is not a valid unsigned
    /// varint (longer than 9 bytes, or not minimally encoded).
    BadPrefix {
        /// What the reader would have accepted.
        expected: Expected,
    },
    /// The prefix names a codec the reader does not accept.
    WrongCodec {
        /// What the prefix says.
        found: Found,
        /// What the reader would have accepted.
        expected: Expected,
    },
    /// The codec cannot carry serde values in this build: `raw`, or a codec whose feature is
    /// off.
    NotSerde {
        /// The codec that was asked for.
        codec: Codec,
    },
    /// The value could not be encoded.
    Encode {
        /// The codec that was encoding.
        codec: Codec,
        /// The codec's own description of the failure.
        reason: String,
    },
    /// The prefix is right, but the body after it is malformed, truncated, or not the type
    /// that was asked for.
    Decode {
        /// The codec named by the prefix.
        codec: Codec,
        /// The codec's own description of the failure.
        reason: String,
    },
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Empty { expected } => {
                write!(f, "payload is empty, expected {expected}")
            }
            CodecError::BadPrefix { expected } => write!(
                f,
                "payload ends inside its multicodec prefix or the prefix is malformed, \
                 expected {expected}"
            ),
            CodecError::WrongCodec { found, expected } => {
                write!(f, "payload is {found}, expected {expected}")
            }
            CodecError::NotSerde { codec } => match codec {
                Codec::Raw => write!(f, "{codec} carries bytes, not serde values"),
                _ => write!(
                    f,
                    "{codec} is not enabled in this build (cargo feature `{}`)",
                    codec.name()
                ),
            },
            CodecError::Encode { codec, reason } => {
                write!(f, "could not encode value as {codec}: {reason}")
            }
            CodecError::Decode { codec, reason } => {
                write!(
                    f,
                    "payload is {codec} but its body does not decode: {reason}"
                )
            }
        }
    }
}

impl std::error::Error for CodecError {}

/// Appends `value` as an unsigned LEB128 varint: 7 bits a byte, low bits first, the high bit
/// set on every byte but the last.
pub fn write_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads an unsigned varint from the start of `bytes`, returning the value and how many bytes
/// it took. `None` if `bytes` ends inside the varint, or the varint is longer than the 9 bytes
/// the multiformats spec allows, or it is not minimally encoded (a trailing zero byte), since
/// each value must have exactly one prefix.
pub fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (index, &byte) in bytes.iter().take(MAX_VARINT_BYTES).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            if byte == 0 && index > 0 {
                return None;
            }
            return Some((value, index + 1));
        }
    }
    None
}

/// Reads the prefix of `payload`: the codec it names and the body after it. Any codec Courier
/// knows is returned, enabled or not; an unknown code is refused as [`Found::Unknown`].
pub fn split(payload: &[u8]) -> Result<(Codec, &[u8]), CodecError> {
    split_expecting(payload, Expected::AnyKnown)
}

/// [`split`], with `expected` named in the errors.
fn split_expecting(payload: &[u8], expected: Expected) -> Result<(Codec, &[u8]), CodecError> {
    if payload.is_empty() {
        return Err(CodecError::Empty { expected });
    }
    let (code, length) = read_varint(payload).ok_or(CodecError::BadPrefix { expected })?;
    let codec = Codec::from_code(code).ok_or(CodecError::WrongCodec {
        found: Found::Unknown(code),
        expected,
    })?;
    Ok((codec, &payload[length..]))
}

/// `body` with the prefix of `codec` in front.
pub fn frame(codec: Codec, body: &[u8]) -> Vec<u8> {
    let prefix = codec.prefix();
    let mut payload = Vec::with_capacity(prefix.len() + body.len());
    payload.extend_from_slice(prefix);
    payload.extend_from_slice(body);
    payload
}

/// The body of `payload`, if its prefix names `codec`; otherwise an error naming the codec
/// found and the one expected.
pub fn unframe(codec: Codec, payload: &[u8]) -> Result<&[u8], CodecError> {
    let expected = Expected::One(codec);
    let (found, body) = split_expecting(payload, expected)?;
    if found == codec {
        Ok(body)
    } else {
        Err(CodecError::WrongCodec {
            found: Found::Codec(found),
            expected,
        })
    }
}

/// Encodes `value` with `codec` and frames it. Fails with [`CodecError::NotSerde`] for
/// [`Codec::Raw`] or a codec whose feature is off.
#[cfg(any(feature = "json", feature = "cbor"))]
pub fn encode<T: serde::Serialize + ?Sized>(
    codec: Codec,
    value: &T,
) -> Result<Vec<u8>, CodecError> {
    let mut payload = codec.prefix().to_vec();
    match codec {
        #[cfg(feature = "json")]
        Codec::Json => {
            serde_json::to_writer(&mut payload, value).map_err(|e| CodecError::Encode {
                codec,
                reason: e.to_string(),
            })?
        }
        #[cfg(feature = "cbor")]
        Codec::Cbor => {
            ciborium::into_writer(value, &mut payload).map_err(|e| CodecError::Encode {
                codec,
                reason: e.to_string(),
            })?
        }
        _ => return Err(CodecError::NotSerde { codec }),
    }
    Ok(payload)
}

/// Decodes a framed payload with whichever enabled serde codec its prefix names. A payload of
/// another codec (`raw`, a codec whose feature is off, an unknown code) is refused with both
/// the codec found and the codecs accepted in the error.
#[cfg(any(feature = "json", feature = "cbor"))]
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    let (codec, body) = split_expecting(payload, Expected::AnySerde)?;
    if !codec.is_serde_enabled() {
        return Err(CodecError::WrongCodec {
            found: Found::Codec(codec),
            expected: Expected::AnySerde,
        });
    }
    decode_body(codec, body)
}

/// Decodes a framed payload that must be of `codec`; any other prefix is refused.
#[cfg(any(feature = "json", feature = "cbor"))]
pub fn decode_as<T: serde::de::DeserializeOwned>(
    codec: Codec,
    payload: &[u8],
) -> Result<T, CodecError> {
    if !codec.is_serde_enabled() {
        return Err(CodecError::NotSerde { codec });
    }
    decode_body(codec, unframe(codec, payload)?)
}

/// Decodes `body`, the part after the prefix, with `codec`, which must be serde-enabled.
#[cfg(any(feature = "json", feature = "cbor"))]
fn decode_body<T: serde::de::DeserializeOwned>(codec: Codec, body: &[u8]) -> Result<T, CodecError> {
    let failed = |reason: String| CodecError::Decode { codec, reason };
    match codec {
        #[cfg(feature = "json")]
        Codec::Json => serde_json::from_slice(body).map_err(|e| failed(e.to_string())),
        #[cfg(feature = "cbor")]
        Codec::Cbor => ciborium::from_reader(body).map_err(|e| failed(e.to_string())),
        _ => Err(CodecError::NotSerde { codec }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_the_varints_of_the_multicodec_codes() {
        for codec in Codec::ALL {
            let mut varint = Vec::new();
            write_varint(codec.code(), &mut varint);
            assert_eq!(varint, codec.prefix(), "{codec}");
            assert_eq!(
                read_varint(codec.prefix()),
                Some((codec.code(), varint.len()))
            );
            assert_eq!(Codec::from_code(codec.code()), Some(codec));
        }
    }

    #[test]
    fn codecs_display_as_in_the_multicodec_table() {
        assert_eq!(Codec::Raw.to_string(), "raw (0x55)");
        assert_eq!(Codec::Json.to_string(), "json (0x0200)");
        assert_eq!(Codec::Cbor.to_string(), "cbor (0x51)");
    }

    #[test]
    fn varints_round_trip_at_the_edges_of_each_length() {
        for value in [
            0,
            1,
            0x7f,
            0x80,
            0x3fff,
            0x4000,
            u64::from(u32::MAX),
            (1 << 63) - 1,
        ] {
            let mut bytes = Vec::new();
            write_varint(value, &mut bytes);
            assert_eq!(
                read_varint(&bytes),
                Some((value, bytes.len())),
                "{value:#x}"
            );
        }
    }

    #[test]
    fn varints_that_are_truncated_overlong_or_not_minimal_are_refused() {
        assert_eq!(read_varint(&[]), None);
        assert_eq!(read_varint(&[0x80]), None, "ends inside the varint");
        assert_eq!(read_varint(&[0xff; 9]), None, "longer than 9 bytes");
        assert_eq!(
            read_varint(&[0x80, 0x00]),
            None,
            "zero written in two bytes"
        );
        assert_eq!(
            read_varint(&[0xd5, 0x00]),
            None,
            "0x55 with a trailing zero byte"
        );
    }

    #[test]
    fn raw_frames_round_trip() {
        let payload = frame(Codec::Raw, b"bytes");
        assert_eq!(unframe(Codec::Raw, &payload).unwrap(), b"bytes");
        assert_eq!(unframe(Codec::Raw, &frame(Codec::Raw, b"")).unwrap(), b"");
    }

    #[test]
    fn unframing_names_the_codec_found_and_the_codec_expected() {
        let json = frame(Codec::Json, b"{}");
        let err = unframe(Codec::Cbor, &json).unwrap_err();
        assert_eq!(
            err,
            CodecError::WrongCodec {
                found: Found::Codec(Codec::Json),
                expected: Expected::One(Codec::Cbor),
            }
        );
        assert_eq!(
            err.to_string(),
            "payload is json (0x0200), expected cbor (0x51)"
        );
    }

    #[test]
    fn empty_truncated_and_unknown_prefixes_are_refused() {
        let expected = Expected::One(Codec::Json);
        assert_eq!(
            unframe(Codec::Json, b""),
            Err(CodecError::Empty { expected })
        );
        // The first byte of the json prefix, and nothing after it.
        assert_eq!(
            unframe(Codec::Json, &[0x80]),
            Err(CodecError::BadPrefix { expected })
        );
        let err = unframe(Codec::Json, &[0x70, 1, 2]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "payload is an unknown codec (0x70), expected json (0x0200)"
        );
    }

    #[cfg(any(feature = "json", feature = "cbor"))]
    mod serde_codecs {
        use super::*;
        use proptest::prelude::*;
        use serde::{Deserialize, Serialize};

        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        struct Order {
            id: u64,
            item: String,
            quantities: Vec<u32>,
            note: Option<String>,
        }

        fn order() -> Order {
            Order {
                id: 7,
                item: "tea".into(),
                quantities: vec![1, 2, 3],
                note: None,
            }
        }

        fn enabled() -> impl Iterator<Item = Codec> {
            Codec::ALL.into_iter().filter(|c| c.is_serde_enabled())
        }

        #[test]
        fn values_round_trip_through_every_enabled_codec() {
            for codec in enabled() {
                let payload = encode(codec, &order()).unwrap();
                assert!(payload.starts_with(codec.prefix()), "{codec}");
                assert_eq!(decode::<Order>(&payload).unwrap(), order(), "{codec}");
                assert_eq!(decode_as::<Order>(codec, &payload).unwrap(), order());
            }
        }

        #[test]
        fn raw_carries_no_serde_values() {
            assert_eq!(
                encode(Codec::Raw, &order()),
                Err(CodecError::NotSerde { codec: Codec::Raw })
            );
            let err = decode::<Order>(&frame(Codec::Raw, b"{}")).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("payload is raw (0x55), expected "),
                "{err}"
            );
        }

        #[test]
        fn a_truncated_body_is_refused_naming_its_codec() {
            for codec in enabled() {
                let payload = encode(codec, &order()).unwrap();
                let truncated = &payload[..payload.len() - 2];
                match decode::<Order>(truncated) {
                    Err(CodecError::Decode { codec: found, .. }) => assert_eq!(found, codec),
                    other => panic!("{codec}: {other:?}"),
                }
            }
        }

        #[test]
        fn an_unframed_payload_is_refused_not_misread() {
            // Plain JSON text starts with `{`, 0x7b: a valid one-byte varint for no codec.
            let err = decode::<Order>(br#"{"id":7}"#).unwrap_err();
            assert!(matches!(
                err,
                CodecError::WrongCodec {
                    found: Found::Unknown(0x7b),
                    ..
                }
            ));
        }

        #[cfg(feature = "json")]
        #[test]
        fn json_floats_decode_to_the_exact_value_encoded() {
            // serde_json's default float parser may be one bit off for long mantissas, which
            // would make a float decoded and encoded again come back different. Courier turns
            // on its `float_roundtrip` feature; these values are ones the default gets wrong.
            for value in [
                1.844_677_374_467_440_6e26_f64,
                184_467_737_446_744_073_709_551_615.0,
                0.1,
                1e-300,
                f64::MAX,
                f64::MIN_POSITIVE,
                5e-324,
            ] {
                let payload = encode(Codec::Json, &value).unwrap();
                let back: f64 = decode(&payload).unwrap();
                assert_eq!(back.to_bits(), value.to_bits(), "{value:e}");
            }
        }

        #[cfg(all(feature = "json", feature = "cbor"))]
        #[test]
        fn decoding_as_one_codec_refuses_the_other() {
            let cbor = encode(Codec::Cbor, &order()).unwrap();
            let err = decode_as::<Order>(Codec::Json, &cbor).unwrap_err();
            assert_eq!(
                err.to_string(),
                "payload is cbor (0x51), expected json (0x0200)"
            );
        }

        proptest! {
            #[test]
            fn any_order_round_trips(
                id in any::<u64>(),
                item in ".*",
                quantities in proptest::collection::vec(any::<u32>(), 0..16),
                note in proptest::option::of(".*"),
            ) {
                let value = Order { id, item, quantities, note };
                for codec in enabled() {
                    let payload = encode(codec, &value).unwrap();
                    prop_assert_eq!(&decode::<Order>(&payload).unwrap(), &value);
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                let _ = decode::<Order>(&bytes);
                let _ = split(&bytes);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_varint_round_trips(value in 0..(1u64 << 63)) {
            let mut bytes = Vec::new();
            write_varint(value, &mut bytes);
            proptest::prop_assert_eq!(read_varint(&bytes), Some((value, bytes.len())));
        }

        #[test]
        fn any_raw_body_round_trips(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let payload = frame(Codec::Raw, &body);
            proptest::prop_assert_eq!(unframe(Codec::Raw, &payload).unwrap(), &body[..]);
        }
    }
}
