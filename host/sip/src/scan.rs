//! Line scanning of a SIP message head (start line and header fields), shared by `parse`,
//! stream framing and the stateless 400 builder. It works on bytes and never looks at the body.

use std::borrow::Cow;

/// The head of a message as found at the start of a buffer.
pub(crate) struct Head<'a> {
    /// The start line, without its line ending.
    pub start_line: &'a [u8],
    /// Header fields in order, continuation lines folded in, one entry per logical line.
    pub lines: Vec<Cow<'a, [u8]>>,
    /// Offset of the first body byte (just past the blank line), or `None` when the buffer ends
    /// before the blank line. Lines left unterminated at the end of the buffer are not in `lines`.
    pub body_start: Option<usize>,
}

/// How many CR and LF bytes open `buf`. RFC 3261 §7.5 has stream receivers ignore CRLFs before
/// a start line; RFC 5626 uses them as keep-alives.
pub(crate) fn leading_crlf(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count()
}

/// Splits the head of the message that starts at `buf[0]` (leading CRLFs already skipped) into
/// lines. Lines end with LF, with or without CR (RFC 3261 §7 asks for CRLF; lone LF is accepted
/// because it costs nothing and some stacks send it). Returns `None` if not even the start line
/// is complete.
pub(crate) fn scan(buf: &[u8]) -> Option<Head<'_>> {
    let mut pos = 0;
    let next_line = |pos: &mut usize| -> Option<&[u8]> {
        let rest = &buf[*pos..];
        let nl = rest.iter().position(|&b| b == b'\n')?;
        *pos += nl + 1;
        let line = &rest[..nl];
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    };
    let start_line = next_line(&mut pos)?;
    let mut lines: Vec<Cow<'_, [u8]>> = Vec::new();
    let mut body_start = None;
    while let Some(line) = next_line(&mut pos) {
        if line.is_empty() {
            body_start = Some(pos);
            break;
        }
        match (line[0], lines.last_mut()) {
            // Folding (RFC 3261 §7.3.1): a line opening with whitespace continues the previous
            // field; the line break and leading whitespace become one space.
            (b' ' | b'\t', Some(prev)) => {
                let prev = prev.to_mut();
                prev.push(b' ');
                prev.extend_from_slice(trim(line));
            }
            // A continuation with nothing to continue: kept as a line, rejected as a field.
            _ => lines.push(Cow::Borrowed(line)),
        }
    }
    Some(Head {
        start_line,
        lines,
        body_start,
    })
}

/// A header field split into its name (compact forms expanded) and trimmed value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Field<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

/// Splits a logical header line at its first colon. `None` when the line is not UTF-8, has no
/// colon, or its name is not a token; whitespace between name and colon is allowed (RFC 3261
/// §7.3.1) and dropped.
pub(crate) fn field(line: &[u8]) -> Option<Field<'_>> {
    let line = std::str::from_utf8(line).ok()?;
    let (name, value) = line.split_once(':')?;
    let name = name.trim_end_matches([' ', '\t']);
    if name.is_empty() || !name.bytes().all(is_token) {
        return None;
    }
    Some(Field {
        name: expand_compact(name),
        value: value.trim_matches([' ', '\t']),
    })
}

/// The full name of a compact header form (RFC 3261 §7.3.3 and the IANA SIP header registry),
/// or the name itself. rsip knows none of them: `f:` would be an unknown header and the
/// message would have no From.
pub(crate) fn expand_compact(name: &str) -> &str {
    let [c] = name.as_bytes() else {
        return name;
    };
    match c.to_ascii_lowercase() {
        b'a' => "Accept-Contact",
        b'b' => "Referred-By",
        b'c' => "Content-Type",
        b'd' => "Request-Disposition",
        b'e' => "Content-Encoding",
        b'f' => "From",
        b'i' => "Call-ID",
        b'j' => "Reject-Contact",
        b'k' => "Supported",
        b'l' => "Content-Length",
        b'm' => "Contact",
        b'n' => "Identity-Info",
        b'o' => "Event",
        b'r' => "Refer-To",
        b's' => "Subject",
        b't' => "To",
        b'u' => "Allow-Events",
        b'v' => "Via",
        b'x' => "Session-Expires",
        b'y' => "Identity",
        _ => name,
    }
}

/// RFC 3261 §25.1 `token` characters.
pub(crate) fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn trim(line: &[u8]) -> &[u8] {
    let start = line
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &line[start..end]
}

/// Splits a header value at commas that are outside quoted strings and angle brackets, for the
/// fields whose values are comma-separated lists (Via).
pub(crate) fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut quoted, mut escaped, mut angle, mut from) = (false, false, false, 0);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                parts.push(&value[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[from..]);
    parts
        .into_iter()
        .map(|p| p.trim_matches([' ', '\t']))
        .filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(buf: &[u8]) -> Vec<String> {
        scan(buf)
            .unwrap()
            .lines
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }

    #[test]
    fn folds_continuation_lines_and_stops_at_the_blank_line() {
        let buf =
            b"INVITE sip:a@b SIP/2.0\r\nSubject: one\r\n  two\r\n\tthree\r\nTo: x\r\n\r\nv=0\r\n";
        assert_eq!(lines(buf), ["Subject: one two three", "To: x"]);
        let head = scan(buf).unwrap();
        assert_eq!(&buf[head.body_start.unwrap()..], b"v=0\r\n");
    }

    #[test]
    fn accepts_bare_lf_and_reports_a_missing_blank_line() {
        let head = scan(b"SIP/2.0 200 OK\nTo: x\nFrom: y\n\n").unwrap();
        assert_eq!(head.start_line, b"SIP/2.0 200 OK");
        assert_eq!(head.body_start, Some(30));
        let head = scan(b"SIP/2.0 200 OK\r\nTo: x\r\nFrom: y").unwrap();
        assert_eq!(head.lines.len(), 1, "the unterminated line is left out");
        assert_eq!(head.body_start, None);
        assert!(scan(b"SIP/2.0 200 OK").is_none());
    }

    #[test]
    fn fields_expand_compact_names() {
        let f = field(b"i : abc@host ").unwrap();
        assert_eq!(
            f,
            Field {
                name: "Call-ID",
                value: "abc@host"
            }
        );
        assert_eq!(field(b"V:SIP/2.0/UDP h").unwrap().name, "Via");
        assert_eq!(field(b"X-Custom: 1").unwrap().name, "X-Custom");
        assert_eq!(field(b"Bad Name: 1"), None);
        assert_eq!(field(b"no colon"), None);
        assert_eq!(field(b": empty name"), None);
        assert_eq!(field(b"To: \xff"), None);
    }

    #[test]
    fn splits_lists_outside_quotes_and_brackets() {
        let parts: Vec<_> = split_list(r#"a;x="1,2", <sip:b,c>;q=1 ,, d"#).collect();
        assert_eq!(parts, [r#"a;x="1,2""#, "<sip:b,c>;q=1", "d"]);
    }
}
