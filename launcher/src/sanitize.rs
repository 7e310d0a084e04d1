//! Making text from an image safe to print on a terminal.

/// Replaces control characters (except newline and tab) with U+FFFD, so a
/// hostile image cannot send escape sequences to the user's terminal.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_neutralised() {
        assert_eq!(
            printable("a\x1b[31mb\n\tc\u{7f}"),
            "a\u{fffd}[31mb\n\tc\u{fffd}"
        );
    }
}
