#![doc = include_str!("../README.md")]

// The `#[handler]` expansion and the generated `export!` macro name this crate as
// `::courier_sdk`, which must also resolve inside the crate itself.
extern crate self as courier_sdk;

mod error;
mod message;
mod messaging;
mod timers;

pub use courier_codec as codec;
pub use courier_codec::{Codec, CodecError};
pub use error::{HandlerError, MessagingError};
pub use message::Message;
pub use messaging::{Level, log, now_millis, publish, request, self_id, send};
pub use timers::{TimerError, cancel_timer, missed_ticks, send_after, send_at, send_every};

/// Generates the component's exports from a handler function or a handler `impl` block.
///
/// On a function `fn(Message) -> Result<(), HandlerError>`, it exports that function as the
/// component's message handler. Requests are answered with `unsupported`, unless a second
/// function `fn(Message) -> Result<Vec<u8>, HandlerError>` in the same module carries
/// `#[handler(request)]`:
///
/// ```
/// use courier_sdk::prelude::*;
///
/// #[handler]
/// fn on_message(msg: Message) -> Result<(), HandlerError> {
///     courier_sdk::info!("{} bytes from {}", msg.payload().len(), msg.sender());
///     Ok(())
/// }
///
/// #[handler(request)]
/// fn on_request(req: Message) -> Result<Vec<u8>, HandlerError> {
///     Ok(req.into_payload())
/// }
/// # fn main() {}
/// ```
///
/// On an `impl` block of a type that implements `Default`, it keeps one value of that type
/// for the life of the instance (created on the first call) and calls its methods
/// `handle_message(&mut self, msg: Message) -> Result<(), HandlerError>` and, if present,
/// `handle_request(&mut self, req: Message) -> Result<Vec<u8>, HandlerError>`; without
/// `handle_request`, requests are answered with `unsupported`. Other methods in the block are
/// left alone.
///
/// ```
/// use courier_sdk::prelude::*;
///
/// #[derive(Default)]
/// struct Counter {
///     seen: u64,
/// }
///
/// #[handler]
/// impl Counter {
///     fn handle_message(&mut self, _msg: Message) -> Result<(), HandlerError> {
///         self.seen += 1;
///         Ok(())
///     }
///
///     fn handle_request(&mut self, _req: Message) -> Result<Vec<u8>, HandlerError> {
///         Ok(self.seen.to_le_bytes().to_vec())
///     }
/// }
/// # fn main() {}
/// ```
///
/// A component has one message handler: a second `#[handler]` in the same crate is a compile
/// error, and so is a wrong signature, a `handle_message` missing from an `impl`, or
/// `#[handler(request)]` with no `#[handler]` function beside it.
///
/// The expansion names this crate `::courier_sdk`, so depend on it under that name.
pub use courier_sdk_macros::handler;

/// Serde, re-exported so a component can derive `Serialize` and `Deserialize` without a
/// dependency of its own: `#[derive(courier_sdk::serde::Serialize)]` with
/// `#[serde(crate = "courier_sdk::serde")]`.
#[cfg(any(feature = "json", feature = "cbor"))]
pub use serde;

/// Encodes `value` as JSON, framed with the `json` multicodec prefix (`0x0200`), ready to
/// [`send`]. The receiver decodes it with [`Message::decode`].
#[cfg(feature = "json")]
pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    codec::encode(Codec::Json, value)
}

/// Encodes `value` as CBOR, framed with the `cbor` multicodec prefix (`0x51`): more compact
/// than [`encode`]'s JSON. The receiver decodes it with [`Message::decode`].
#[cfg(feature = "cbor")]
pub fn encode_cbor<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    codec::encode(Codec::Cbor, value)
}

/// Decodes a framed payload, such as a reply from [`request`], with whichever enabled codec
/// its prefix names; see [`Message::decode`].
#[cfg(any(feature = "json", feature = "cbor"))]
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    codec::decode(payload)
}

/// What a handler module usually needs: `use courier_sdk::prelude::*;`.
///
/// The log macros are not here, since `warn` and `error` would clash with names in scope;
/// call them as `courier_sdk::info!(...)`.
pub mod prelude {
    pub use crate::{HandlerError, Message, MessagingError, handler};
}

/// The glue that `#[handler]` expands to. Not part of the API: it may change in any release.
#[doc(hidden)]
#[path = "glue.rs"]
pub mod __private;
