//! What a handler receives.

/// The sender id of a timer's message is this and the timer's name.
const TIMER_SENDER_PREFIX: &str = "timer:";

/// One message or request delivered to this component: who sent it, and its payload.
///
/// The sender is stamped by the host; another component cannot forge it. The payload is the
/// bytes the sender passed, unchanged: a framed value if the sender used
/// `courier_sdk::encode` (with a codec feature on), anything at all otherwise.
///
/// ```
/// use courier_sdk::Message;
///
/// let msg = Message::new("orders/billing", b"42".to_vec());
/// assert_eq!(msg.sender(), "orders/billing");
/// assert_eq!(msg.payload(), b"42");
/// assert_eq!(msg.into_payload(), b"42".to_vec());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    sender: String,
    payload: Vec<u8>,
}

impl Message {
    /// A message as the host would deliver it; for calling a handler directly in a test.
    pub fn new(sender: impl Into<String>, payload: Vec<u8>) -> Self {
        Message {
            sender: sender.into(),
            payload,
        }
    }

    /// The id of the component (or `host`) that sent the message, as the host stamped it.
    pub fn sender(&self) -> &str {
        &self.sender
    }

    /// The name of the timer that sent this message, if a timer of this component did
    /// (its sender is `timer:<name>`, which no component can take as its id); `None` for a
    /// message from a component or the host.
    ///
    /// ```
    /// use courier_sdk::Message;
    ///
    /// assert_eq!(Message::new("timer:tick", vec![]).timer(), Some("tick"));
    /// assert_eq!(Message::new("orders/billing", vec![]).timer(), None);
    /// ```
    pub fn timer(&self) -> Option<&str> {
        self.sender.strip_prefix(TIMER_SENDER_PREFIX)
    }

    /// The payload, exactly as sent.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload, without copying it.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }

    /// The sender and the payload, without copying either.
    pub fn into_parts(self) -> (String, Vec<u8>) {
        (self.sender, self.payload)
    }

    /// The payload as UTF-8 text, or [`HandlerError::InvalidMessage`] saying it is not.
    ///
    /// [`HandlerError::InvalidMessage`]: crate::HandlerError::InvalidMessage
    pub fn text(&self) -> Result<&str, crate::HandlerError> {
        std::str::from_utf8(&self.payload)
            .map_err(|e| crate::HandlerError::invalid(format!("payload is not UTF-8: {e}")))
    }

    /// Decodes a payload framed by [`encode`](crate::encode) (or by any sender using the same
    /// multicodec prefixes) with whichever enabled codec its prefix names. A payload of
    /// another codec, or a truncated one, is refused with an error that names the codec found
    /// and the codecs expected; `?` turns it into `invalid-message` for the sender.
    ///
    /// ```
    /// # #[cfg(feature = "json")] {
    /// use courier_sdk::{Message, encode};
    ///
    /// let msg = Message::new("ping", encode(&(1_u32, "one")).unwrap());
    /// assert_eq!(msg.decode::<(u32, String)>().unwrap(), (1, "one".to_owned()));
    ///
    /// let raw = Message::new("ping", b"\x55plain bytes".to_vec());
    /// let err = raw.decode::<u32>().unwrap_err();
    /// assert!(err.to_string().starts_with("payload is raw (0x55), expected json (0x0200)"));
    /// # }
    /// ```
    #[cfg(any(feature = "json", feature = "cbor"))]
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::codec::CodecError> {
        crate::codec::decode(&self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HandlerError;

    #[test]
    fn text_refuses_a_payload_that_is_not_utf8() {
        let msg = Message::new("ping", vec![0xff, 0xfe]);
        assert!(matches!(msg.text(), Err(HandlerError::InvalidMessage(_))));
        assert_eq!(Message::new("ping", b"10".to_vec()).text().unwrap(), "10");
    }

    #[cfg(all(feature = "json", feature = "cbor"))]
    #[test]
    fn decode_reads_either_codec_and_refuses_raw_as_an_invalid_message() {
        let json = Message::new("a", crate::encode(&[1_u8, 2, 3]).unwrap());
        let cbor = Message::new("b", crate::encode_cbor(&[1_u8, 2, 3]).unwrap());
        assert_eq!(json.decode::<Vec<u8>>().unwrap(), [1, 2, 3]);
        assert_eq!(cbor.decode::<Vec<u8>>().unwrap(), [1, 2, 3]);

        let raw = Message::new("c", crate::codec::frame(crate::Codec::Raw, b"abc"));
        let err = HandlerError::from(raw.decode::<Vec<u8>>().unwrap_err());
        assert_eq!(
            err,
            HandlerError::invalid("payload is raw (0x55), expected json (0x0200) or cbor (0x51)")
        );
    }
}
