//! Bounds on the text a guest chooses, before the host stores, copies or logs it.
//!
//! A guest picks its target ids, topics and error texts freely (the WIT's `component-id` is
//! a string of any length). The host keeps none of them whole beyond these bounds: an id or
//! topic longer than [`MAX_NAME_BYTES`](crate::MAX_NAME_BYTES) is refused before anything
//! else is done with it, and any other guest-chosen text is cut to [`TEXT_LIMIT`] where the
//! host logs it or keeps it (a dead letter's reason, say).

/// The most of a guest-chosen text the host logs or keeps: enough to read, small enough that
/// a thousand dead letters or a burst of warnings stays small.
pub(crate) const TEXT_LIMIT: usize = 1024;

/// `text` if it is at most [`TEXT_LIMIT`] bytes, else its start (cut on a character
/// boundary) and how long it was.
pub(crate) fn bounded_text(text: &str) -> String {
    bounded(text, TEXT_LIMIT)
}

pub(crate) use courier_host_core::text::bounded;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_kept_to_a_kibibyte() {
        assert_eq!(bounded_text("pong"), "pong");
        assert!(bounded_text(&"x".repeat(1 << 20)).len() < TEXT_LIMIT + 32);
    }
}
