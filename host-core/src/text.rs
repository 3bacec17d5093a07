//! Text a guest chooses, cut to a bound before the host logs or keeps it.

/// `text` if it is at most `limit` bytes, else its start (cut on a character boundary) and
/// how long it was in all, so a reader knows it was cut and by how much.
///
/// ```
/// use courier_host_core::text::bounded;
///
/// assert_eq!(bounded("pong", 8), "pong");
/// assert_eq!(bounded("abcdefghij", 4), "abcd… (10 bytes in all)");
/// ```
pub fn bounded(text: &str, limit: usize) -> String {
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
    use super::bounded;

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        // `é` is two bytes.
        assert_eq!(bounded("aéé", 2), "a… (5 bytes in all)");
        assert_eq!(bounded("", 0), "");
    }
}
