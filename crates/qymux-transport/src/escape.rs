//! Escaping text that a peer controls before it reaches a log line or a terminal.
//!
//! A close reason, a name from a certificate or a request path is chosen by whoever is on
//! the other side. Printed as is, a newline forges a second log line and an ANSI escape
//! sequence rewrites the operator's terminal. [`escape_peer_text`] (or the [`PeerText`]
//! `Display` wrapper, which does not allocate) writes such text on one line with every
//! control character, and every other character that is not printable, escaped the way
//! Rust's `char::escape_default` does (`\n`, `\u{1b}`), and backslashes doubled, so the
//! output cannot be mistaken for text that was escaped already.

use std::fmt;

/// Displays peer-controlled text escaped: printable characters as they are, backslash as
/// `\\`, control characters (C0, DEL, C1) and Unicode format characters that reorder or
/// hide text (bidirectional overrides, zero-width characters) as `\n`, `\t`, `\r` or
/// `\u{..}`.
///
/// ```
/// use qymux_transport::PeerText;
/// let reason = "bye\n2025-01-01 INFO admin logged in\x1b[2J";
/// assert_eq!(
///     PeerText(reason).to_string(),
///     r"bye\n2025-01-01 INFO admin logged in\u{1b}[2J"
/// );
/// ```
#[derive(Clone, Copy, Debug)]
pub struct PeerText<'a>(pub &'a str);

impl fmt::Display for PeerText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if needs_escape(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Returns `text` escaped as [`PeerText`] displays it: safe to put on one log line or
/// print to a terminal.
///
/// ```
/// use qymux_transport::escape_peer_text;
/// assert_eq!(escape_peer_text("a\x1b[31mred\r\n"), r"a\u{1b}[31mred\r\n");
/// assert_eq!(escape_peer_text("plain text, ünïcödé"), "plain text, ünïcödé");
/// ```
pub fn escape_peer_text(text: &str) -> String {
    PeerText(text).to_string()
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Zero-width and joiner characters, bidirectional marks, embeddings,
            // overrides and isolates (the "Trojan Source" set), the BOM.
            '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2028}'..='\u{2029}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape_peer_text("\x1b[2J\x07\x00\x7f"),
            r"\u{1b}[2J\u{7}\u{0}\u{7f}"
        );
        assert_eq!(escape_peer_text("\u{9b}31m"), r"\u{9b}31m");
        assert_eq!(escape_peer_text("a\u{202e}b"), r"a\u{202e}b");
        assert_eq!(escape_peer_text("line1\nline2"), r"line1\nline2");
    }

    #[test]
    fn backslashes_are_doubled_so_escapes_cannot_be_forged() {
        // A peer sending the six characters `\u{1b}` must not look like an escaped ESC.
        assert_eq!(escape_peer_text(r"\u{1b}"), r"\\u{1b}");
        assert_ne!(escape_peer_text(r"\n"), escape_peer_text("\n"));
    }

    #[test]
    fn printable_text_is_unchanged() {
        let text = "agent-eu-1 (CN=Ümlaut, 名前) 🙂 \"quoted\" 'single'";
        assert_eq!(escape_peer_text(text), text);
    }

    #[test]
    fn output_has_no_control_characters() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let escaped = escape_peer_text(&all);
        assert!(!escaped.chars().any(needs_escape), "{escaped:?}");
    }
}
