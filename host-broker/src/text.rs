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

/// `text` if it is at most `limit` bytes, else its start and how long it was.
pub(crate) fn bounded(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_with_its_length() {
        assert_eq!(bounded("pong", 8), "pong");
        assert_eq!(bounded("abcdefghij", 4), "abcd… (10 bytes in all)");
        // Cut on a character boundary: `é` is two bytes.
        assert_eq!(bounded("aéé", 2), "a… (5 bytes in all)");
        assert!(bounded_text(&"x".repeat(1 << 20)).len() < TEXT_LIMIT + 32);
    }
}
