//! Downgrading an 8-bit message for a server that does not offer 8BITMIME.
//!
//! RFC 6152 §3: a client MUST NOT send 8-bit data to such a server; it may
//! convert the message to 7 bit with MIME, or return it. Like Postfix
//! (`disable_mime_output_conversion = no`), every MIME leaf part whose body
//! has 8-bit octets is re-encoded as quoted-printable (RFC 2045 §6.7) and
//! its `Content-Transfer-Encoding` header rewritten; multipart bodies and
//! `message/rfc822` parts are walked into. A message without MIME headers
//! becomes `text/plain; charset=unknown-8bit` (RFC 1428) in
//! quoted-printable. Headers themselves are left alone: 8-bit header text
//! cannot be converted without knowing its charset.
//!
//! Pure functions over bytes: the message in DATA form in, the converted
//! message in DATA form out.

use super::DotStuffer;
use super::data::unstuff;

/// Quoted-printable lines are at most 76 characters (RFC 2045 §6.7 rule 5).
const QP_LINE: usize = 76;
/// MIME nesting deeper than this is left as it is (a hostile message
/// should not make us recurse without bound).
const MAX_DEPTH: usize = 16;

/// The message (DATA form: CRLF lines, dot-stuffed, ending `.\r\n`) with
/// every 8-bit body part converted to quoted-printable; `None` when it has
/// no 8-bit octet (nothing to do).
pub fn downgrade_8bit(wire: &[u8]) -> Option<Vec<u8>> {
    if wire.iter().all(|&b| b < 0x80) {
        return None;
    }
    let message = unstuff(wire);
    let mut converted = Vec::with_capacity(message.len() + message.len() / 4);
    convert_message(&message, &mut converted, 0);
    let mut out = Vec::with_capacity(converted.len() + 8);
    let mut stuffer = DotStuffer::new();
    stuffer.push(&converted, &mut out);
    stuffer.finish(&mut out);
    Some(out)
}

/// One entity: headers, the empty line, the body.
fn split_entity(entity: &[u8]) -> (&[u8], &[u8]) {
    if entity.starts_with(b"\r\n") {
        return (&[], entity);
    }
    match entity.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&entity[..i + 2], &entity[i + 2..]),
        None => (entity, &[]),
    }
}

/// The header fields, unfolded, as (lower-case name, value).
fn header_fields(headers: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(headers);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    fields
}

/// A top-level message: MIME if it says so, else plain text.
fn convert_message(message: &[u8], out: &mut Vec<u8>, depth: usize) {
    let (headers, body) = split_entity(message);
    let fields = header_fields(headers);
    if fields.iter().any(|(n, _)| n == "mime-version") {
        convert_entity(headers, body, &fields, out, depth);
    } else if body.iter().any(|&b| b >= 0x80) {
        // Not MIME: make it a MIME text part so it can be encoded.
        out.extend_from_slice(&without_content_fields(headers));
        out.extend_from_slice(
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=unknown-8bit\r\n\
              Content-Transfer-Encoding: quoted-printable\r\n",
        );
        out.extend_from_slice(b"\r\n");
        quoted_printable(body.strip_prefix(b"\r\n").unwrap_or(body), out);
    } else {
        out.extend_from_slice(message);
    }
}

/// One MIME entity (RFC 2045): a multipart is walked part by part, an
/// encapsulated message is converted as a message, a leaf with 8-bit
/// octets is re-encoded.
fn convert_entity(
    headers: &[u8],
    body: &[u8],
    fields: &[(String, String)],
    out: &mut Vec<u8>,
    depth: usize,
) {
    let content_type = fields
        .iter()
        .find(|(n, _)| n == "content-type")
        .map(|(_, v)| v.as_str())
        .unwrap_or("text/plain");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let needs = body.iter().any(|&b| b >= 0x80);
    if !needs || depth > MAX_DEPTH {
        out.extend_from_slice(headers);
        out.extend_from_slice(body);
        return;
    }
    if media.starts_with("multipart/")
        && let Some(boundary) = parameter(content_type, "boundary")
    {
        out.extend_from_slice(headers);
        convert_multipart(body, boundary.as_bytes(), out, depth);
        return;
    }
    if media == "message/rfc822" {
        // The encapsulated message is converted; its own encoding becomes
        // 7bit (RFC 2046 §5.2.1 allows only 7bit, 8bit and binary).
        out.extend_from_slice(&with_encoding(headers, "7bit"));
        let inner = body.strip_prefix(b"\r\n").unwrap_or(body);
        out.extend_from_slice(b"\r\n");
        convert_message(inner, out, depth + 1);
        return;
    }
    out.extend_from_slice(&with_encoding(headers, "quoted-printable"));
    quoted_printable(body, out);
}

/// The body of a multipart entity, delimiters and preamble/epilogue kept,
/// each part converted (RFC 2046 §5.1.1).
fn convert_multipart(body: &[u8], boundary: &[u8], out: &mut Vec<u8>, depth: usize) {
    let delimiter = [b"--".as_slice(), boundary].concat();
    let is_delimiter = |line: &[u8]| {
        let line = line.strip_suffix(b"\r\n").unwrap_or(line);
        line.starts_with(&delimiter)
            && line[delimiter.len()..]
                .iter()
                .all(|&b| b == b'-' || b == b' ' || b == b'\t')
    };
    // The body is cut at delimiter lines; what lies between two of them is
    // one part (its final CRLF belongs to the delimiter, RFC 2046 §5.1.1).
    let mut part_start: Option<usize> = None;
    let mut offset = 0;
    for line in body.split_inclusive(|&b| b == b'\n') {
        let line_start = offset;
        offset += line.len();
        // The delimiter line begins with the CRLF before it; the first may
        // stand at the very start of the body.
        if !is_delimiter(line) {
            continue;
        }
        match part_start {
            None => out.extend_from_slice(&body[..line_start]),
            Some(start) => {
                let part = &body[start..line_start];
                let (part, crlf) = match part.strip_suffix(b"\r\n") {
                    Some(p) => (p, true),
                    None => (part, false),
                };
                let (headers, part_body) = split_entity(part);
                let fields = header_fields(headers);
                convert_entity(headers, part_body, &fields, out, depth + 1);
                if crlf {
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        out.extend_from_slice(line);
        part_start = Some(offset);
        let closing = line
            .strip_suffix(b"\r\n")
            .unwrap_or(line)
            .get(delimiter.len()..)
            .is_some_and(|rest| rest.starts_with(b"--"));
        if closing {
            // The epilogue: kept, but encoded if it is 8-bit (it is never
            // shown, and must not break the 7-bit promise).
            let epilogue = &body[offset..];
            if epilogue.iter().any(|&b| b >= 0x80) {
                quoted_printable(epilogue, out);
            } else {
                out.extend_from_slice(epilogue);
            }
            return;
        }
    }
    // No closing delimiter: convert what is there as the last part.
    match part_start {
        Some(start) => {
            let (headers, part_body) = split_entity(&body[start..]);
            let fields = header_fields(headers);
            convert_entity(headers, part_body, &fields, out, depth + 1);
        }
        None => quoted_printable(body, out),
    }
}

/// A parameter of a structured header value (`boundary="x"`), RFC 2045 §5.1.
fn parameter(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|v| !v.is_empty())
    })
}

/// The header block with its Content-Transfer-Encoding set to `encoding`
/// (replaced where it was, or added at the end).
fn with_encoding(headers: &[u8], encoding: &str) -> Vec<u8> {
    let mut out = without_fields(headers, &["content-transfer-encoding"]);
    out.extend_from_slice(format!("Content-Transfer-Encoding: {encoding}\r\n").as_bytes());
    out
}

fn without_content_fields(headers: &[u8]) -> Vec<u8> {
    without_fields(
        headers,
        &["mime-version", "content-type", "content-transfer-encoding"],
    )
}

/// The header block without the named fields (continuation lines included).
fn without_fields(headers: &[u8], names: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len());
    let mut dropping = false;
    for line in headers.split_inclusive(|&b| b == b'\n') {
        let continuation = line.first().is_some_and(|&b| b == b' ' || b == b'\t');
        if !continuation {
            let name = line
                .split(|&b| b == b':')
                .next()
                .map(|n| String::from_utf8_lossy(n).trim().to_ascii_lowercase())
                .unwrap_or_default();
            dropping = names.contains(&name.as_str());
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Quoted-printable (RFC 2045 §6.7) of a body with CRLF line ends: line
/// breaks stay hard breaks, lines are cut with soft breaks at 76
/// characters, white space before a line end is encoded.
fn quoted_printable(body: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for line in body.split_inclusive(|&b| b == b'\n') {
        let (text, ending) = match line.strip_suffix(b"\r\n") {
            Some(t) => (t, true),
            None => (line, false),
        };
        let mut width = 0;
        for (i, &b) in text.iter().enumerate() {
            let last = i + 1 == text.len();
            let literal = matches!(b, 33..=60 | 62..=126) || (matches!(b, b' ' | b'\t') && !last);
            let len = if literal { 1 } else { 3 };
            // Room for a soft break ("=") on this line.
            if width + len > QP_LINE - 1 {
                out.extend_from_slice(b"=\r\n");
                width = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
            width += len;
        }
        if ending {
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = DotStuffer::new();
        s.push(text.as_bytes(), &mut out);
        s.finish(&mut out);
        out
    }

    fn text(wire: &[u8]) -> String {
        String::from_utf8(unstuff(wire)).unwrap()
    }

    #[test]
    fn seven_bit_messages_are_left_alone() {
        assert_eq!(downgrade_8bit(&wire("Subject: x\r\n\r\nhello\r\n")), None);
    }

    #[test]
    fn quoted_printable_rules() {
        let mut out = Vec::new();
        quoted_printable(
            "caf\u{e9} = ok \r\n.dot\r\ntrailing \t\r\n".as_bytes(),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "caf=C3=A9 =3D ok=20\r\n.dot\r\ntrailing =09\r\n"
        );
        let mut out = Vec::new();
        quoted_printable(&[0xe9; 40], &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.split("\r\n").all(|l| l.len() <= 76), "{text}");
        assert_eq!(text.replace("=\r\n", ""), "=E9".repeat(40));
    }

    #[test]
    fn single_part_is_re_encoded() {
        let input = "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
                     Content-Transfer-Encoding: 8bit\r\nSubject: s\r\n\r\ncaf\u{e9}\r\n.\r\n";
        let out = text(&downgrade_8bit(&wire(input)).unwrap());
        assert_eq!(
            out,
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nSubject: s\r\n\
             Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n.\r\n"
        );
    }

    #[test]
    fn non_mime_message_becomes_unknown_8bit_text() {
        let out = text(&downgrade_8bit(&wire("Subject: s\r\n\r\n\u{fc}ber\r\n")).unwrap());
        assert_eq!(
            out,
            "Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=unknown-8bit\r\n\
             Content-Transfer-Encoding: quoted-printable\r\n\r\n=C3=BCber\r\n"
        );
    }

    #[test]
    fn multipart_parts_and_nested_messages() {
        let input = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
                     preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nascii only\r\n\
                     --b1\r\nContent-Type: text/plain; charset=latin1\r\n\
                     Content-Transfer-Encoding: 8bit\r\n\r\nna\u{ef}ve\r\n\
                     --b1\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\
                     MIME-Version: 1.0\r\n\r\n\u{e9}t\u{e9}\r\n--b1--\r\nepilogue\r\n";
        let out = text(&downgrade_8bit(&wire(input)).unwrap());
        assert!(out.bytes().all(|b| b < 0x80), "{out}");
        assert!(out.contains("\r\n--b1\r\nContent-Type: text/plain\r\n\r\nascii only\r\n--b1\r\n"));
        assert!(
            out.contains(
                "Content-Transfer-Encoding: quoted-printable\r\n\r\nna=C3=AFve\r\n--b1\r\n"
            )
        );
        assert!(
            out.contains("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\n")
        );
        assert!(out.contains("Subject: inner\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A9t=C3=A9\r\n--b1--\r\nepilogue\r\n"), "{out}");
        assert!(out.starts_with("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\n"));
    }

    #[test]
    fn dot_lines_survive_the_round_trip() {
        let out = downgrade_8bit(&wire("Subject: s\r\n\r\n.\u{e9}\r\n..\r\n")).unwrap();
        // Dot-stuffed again on the way out, and the end of data is intact.
        assert!(out.ends_with(b"\r\n.\r\n"));
        assert!(
            text(&out).ends_with("\r\n\r\n.=C3=A9\r\n..\r\n"),
            "{}",
            text(&out)
        );
    }

    /// Whatever comes in, nothing panics and the DATA form stays intact.
    #[test]
    fn keeps_the_data_form() {
        for input in crate::fuzz_checks::pseudo_random_inputs(
            0xb17,
            500,
            b"\r\n-:;= \t\x80\xe9abMIME-Version: 1.0Content-Type: multipart/mixed; boundary=b--b\r\n",
        ) {
            let mut w = Vec::new();
            let mut s = DotStuffer::new();
            s.push(&input, &mut w);
            s.finish(&mut w);
            if let Some(out) = downgrade_8bit(&w) {
                // Header text may stay 8-bit (its charset is unknown); the
                // DATA form must stay intact.
                assert!(out.ends_with(b"\r\n.\r\n"), "{input:?}");
                assert!(!out[..out.len() - 3].windows(5).any(|x| x == b"\r\n.\r\n"));
            }
        }
    }
}
