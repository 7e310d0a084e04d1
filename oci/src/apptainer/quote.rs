//! Ports of the Go string encoders Apptainer's outputs go through:
//! its shell `Escape`, Go's `%q` (`strconv.Quote`), and `encoding/json`'s
//! string encoding with HTML escaping (what `json.MarshalIndent` writes).

use std::fmt::Write as _;

/// Apptainer's shell escape: `\` `"` `` ` `` `$` get a backslash.
pub fn shell_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '"' | '`' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `'` → `'"'"'`, for text inside a single-quoted shell word.
pub fn escape_single_quotes(s: &str) -> String {
    s.replace('\'', r#"'"'"'"#)
}

/// Unicode format characters (Cf) and other code points Go's
/// `unicode.IsPrint` rejects beyond controls and separators; unassigned
/// code points are not known here and count as printable.
fn is_format_or_private(c: char) -> bool {
    matches!(u32::from(c),
        0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x890..=0x891 | 0x8e2 | 0x180e | 0x200b..=0x200f
        | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff | 0xfff9..=0xfffb | 0x110bd | 0x110cd
        | 0x13430..=0x1343f | 0x1bca0..=0x1bca3 | 0x1d173..=0x1d17a | 0xe0001 | 0xe0020..=0xe007f
        | 0xe000..=0xf8ff | 0xf0000..=0xffffd | 0x100000..=0x10fffd)
}

/// Go's `unicode.IsPrint` (approximated as above): ASCII space counts,
/// other spaces and separators do not.
fn is_print(c: char) -> bool {
    c == ' ' || !(c.is_control() || c.is_whitespace() || is_format_or_private(c))
}

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if is_print(c) => out.push(c),
            c if u32::from(c) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if u32::from(c) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08x}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

/// A JSON string as Go's `encoding/json` writes it (HTML-safe: `<` `>`
/// `&` and U+2028/2029 escaped; Go ≥ 1.22 writes `\b` and `\f`).
pub fn go_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 || matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}') => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A string map as `json.MarshalIndent(m, "", "\t")` writes it: keys
/// sorted, one per line, tab indent, no trailing newline; `{}` when empty.
pub fn go_json_map<'a>(entries: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let lines: Vec<String> = entries
        .into_iter()
        .map(|(k, v)| format!("\t{}: {}", go_json_string(k), go_json_string(v)))
        .collect();
    if lines.is_empty() {
        return "{}".to_owned();
    }
    format!("{{\n{}\n}}", lines.join(",\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values are what Go 1.22 prints for `fmt.Sprintf("%q", x)`
    /// and `json.Marshal(x)` (hand-derived from the Go rules).
    #[test]
    fn go_quote_table() {
        for (input, want) in [
            (
                "plain /usr/bin:1.0-x_y=z, ok",
                r#""plain /usr/bin:1.0-x_y=z, ok""#,
            ),
            (r#"q"x"#, r#""q\"x""#),
            (r"back\slash", r#""back\\slash""#),
            ("\u{7}\u{8}\u{c}\n\r\t\u{b}", r#""\a\b\f\n\r\t\v""#),
            ("\u{0}\u{1b}\u{7f}", r#""\x00\x1b\x7f""#),
            ("é中😀", "\"é中😀\""),
            (
                "\u{a0}\u{200b}\u{2028}\u{85}",
                r#""\u00a0\u200b\u2028\u0085""#,
            ),
            ("\u{e0001}\u{10fffd}", r#""\U000e0001\U0010fffd""#),
        ] {
            assert_eq!(go_quote(input), want, "{input:?}");
        }
    }

    #[test]
    fn double_escaping_of_env_values() {
        // design §5.2: `a$b` → `"a\\$b"`, `q"x` → `"q\\\"x"`.
        assert_eq!(go_quote(&shell_escape("a$b")), r#""a\\$b""#);
        assert_eq!(go_quote(&shell_escape(r#"q"x"#)), r#""q\\\"x""#);
        assert_eq!(go_quote(&shell_escape("`c`\\")), r#""\\`c\\`\\\\""#);
        assert_eq!(escape_single_quotes("it's"), r#"it'"'"'s"#);
    }

    #[test]
    fn go_json_table() {
        assert_eq!(go_json_string("<a&b>"), r#""\u003ca\u0026b\u003e""#);
        assert_eq!(
            go_json_string("\u{2028}\u{2029}\u{1}\u{8}\u{c}\"\\/é"),
            "\"\\u2028\\u2029\\u0001\\b\\f\\\"\\\\/é\""
        );
        let m: std::collections::BTreeMap<String, String> = [
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "1".to_owned()),
        ]
        .into();
        assert_eq!(go_json_map(&m), "{\n\t\"a\": \"1\",\n\t\"b\": \"2\"\n}");
        assert_eq!(go_json_map(&std::collections::BTreeMap::new()), "{}");
    }
}
