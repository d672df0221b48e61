//! The DATA stream: finding where a message ends, and writing one.
//!
//! [`DataScanner`] is the receiving side. It decides where a message sent
//! after `354` ends, and rewrites the stream so that whoever reads its output
//! cannot decide differently. This is the defence against SMTP smuggling:
//! RFC 5321 §4.1.1.4 ends a message only at CRLF "." CRLF, but some servers
//! also accept `LF . LF` and other variants, so a message that a lenient
//! front reads as one can be read as two by the server behind it.
//!
//! The rules here:
//! - only CR LF "." CR LF ends the message (the CR LF before the dot may be
//!   the one that ended the DATA command);
//! - a bare LF or bare CR (RFC 5321 §2.3.8 forbids both) is either rewritten
//!   to CR LF (`BareNewlines::Normalize`) or counted so the caller can refuse
//!   the message (`BareNewlines::Reject`);
//! - a line that is a single dot but does not end the message (because a bare
//!   LF or CR touches it) is written out dot-stuffed as `..`, so that after
//!   normalisation it cannot become an end-of-data on the next hop;
//! - a NUL octet is counted (see [`DataScanner::nuls`]) so the caller can
//!   refuse the message. It is neither rewritten nor dropped here. NUL has
//!   no place in DATA as the sidecar offers it: RFC 5321 §4.1.1.4 says
//!   control characters other than SP, HT, CR and LF SHOULD be avoided,
//!   RFC 5322 §3.5 `text` excludes %d0 (only the obsolete syntax of §4.1,
//!   which must not be generated, has it), and the 8-bit data of RFC 6152
//!   §3 is 8bit data in the sense of RFC 2045 §2.8, which has no NULs (only
//!   BINARYMIME, which is not offered, carries them). And a next hop that
//!   drops NULs would read `CRLF NUL "." CRLF` as an end of data this
//!   scanner did not see (SMTP smuggling); refusing is the only answer that
//!   leaves both hops agreeing where the message ends.
//!
//! [`DotStuffer`] is the sending side: it turns a message into DATA form.

/// The message text of a DATA-form message (as [`DataScanner`] writes it:
/// CRLF lines, ending `.` CRLF): the final `.` line removed and leading
/// dots unstuffed (RFC 5321 §4.5.2).
pub fn unstuff(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len());
    // Writing into a Vec cannot fail.
    let _ = unstuff_to(wire, &mut out);
    out
}

/// [`unstuff`] into a writer, line by line (the sealed relay streams the
/// message through its encryptor this way, with no second plaintext copy).
pub fn unstuff_to(wire: &[u8], out: &mut impl std::io::Write) -> std::io::Result<()> {
    let body = wire.strip_suffix(b".\r\n").unwrap_or(wire);
    for line in body.split_inclusive(|&b| b == b'\n') {
        out.write_all(line.strip_prefix(b".").unwrap_or(line))?;
    }
    Ok(())
}

/// What to do with a bare CR or LF inside a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BareNewlines {
    /// Rewrite it to CR LF (the default).
    #[default]
    Normalize,
    /// Keep scanning to the end of the message, then refuse it.
    Reject,
}

/// Where the scanner is inside the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pos {
    /// At the start of a line. `after_crlf` is true when the previous line
    /// ended in a real CR LF (or the message just started): only such a line
    /// can be the terminating dot.
    LineStart { after_crlf: bool },
    /// A line that so far is a single dot, not yet written out.
    Dot { after_crlf: bool },
    /// Somewhere inside a line.
    Middle,
    /// Just after a CR; the next byte decides whether it was a CR LF.
    /// `dot` says the CR followed a lone dot at a line start.
    Cr { dot: Option<bool> },
}

/// Result of feeding bytes to a [`DataScanner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// How many input bytes were used. Less than the input only when the
    /// message ended: the rest belongs to the next command.
    pub consumed: usize,
    /// Whether the terminating CR LF "." CR LF was found.
    pub end: bool,
}

/// Streaming end-of-data scanner and normaliser. See the module docs.
#[derive(Debug, Clone)]
pub struct DataScanner {
    pos: Pos,
    /// Bare CRs and LFs seen in this message.
    bare_newlines: u64,
    /// NUL octets seen in this message.
    nuls: u64,
    /// Bytes written out, terminator included.
    written: u64,
}

impl Default for DataScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl DataScanner {
    /// A scanner positioned right after the CR LF that ended `DATA`.
    pub fn new() -> Self {
        DataScanner {
            pos: Pos::LineStart { after_crlf: true },
            bare_newlines: 0,
            nuls: 0,
            written: 0,
        }
    }

    /// How many bare CRs and LFs the message had so far.
    pub fn bare_newlines(&self) -> u64 {
        self.bare_newlines
    }

    /// How many NUL octets the message had so far. It counts every NUL the
    /// last [`DataScanner::scan`] consumed, so a caller that refuses on it
    /// can hold back that very chunk.
    pub fn nuls(&self) -> u64 {
        self.nuls
    }

    /// How many bytes the scanner has written out so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Scans `input`, appending the normalised stream to `out`. When the end
    /// is found, `out` ends with CR LF "." CR LF and the scan stops there.
    pub fn scan(&mut self, input: &[u8], out: &mut Vec<u8>) -> Scan {
        let start_len = out.len();
        let mut i = 0;
        while i < input.len() {
            if self.pos == Pos::Middle {
                // Fast path: copy everything up to the next CR, LF or NUL.
                match memchr::memchr3(b'\r', b'\n', 0, &input[i..]) {
                    None => {
                        out.extend_from_slice(&input[i..]);
                        i = input.len();
                        break;
                    }
                    Some(n) => {
                        out.extend_from_slice(&input[i..i + n]);
                        i += n;
                    }
                }
            }
            let b = input[i];
            i += 1;
            if b == 0 {
                // Framed like any other octet; the caller refuses the message.
                self.nuls += 1;
            }
            if self.step(b, out) {
                self.written += (out.len() - start_len) as u64;
                return Scan {
                    consumed: i,
                    end: true,
                };
            }
        }
        self.written += (out.len() - start_len) as u64;
        Scan {
            consumed: i,
            end: false,
        }
    }

    /// Handles one byte; returns true at end of data.
    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        match (self.pos, b) {
            (Pos::Cr { dot }, b'\n') => {
                match dot {
                    Some(true) => {
                        out.extend_from_slice(b".\r\n");
                        return true;
                    }
                    // A lone dot after a bare newline: stuff it.
                    Some(false) => out.extend_from_slice(b"..\r\n"),
                    None => out.extend_from_slice(b"\r\n"),
                }
                self.pos = Pos::LineStart { after_crlf: true };
            }
            (Pos::Cr { dot }, _) => {
                // A bare CR: it ended the line it was on.
                self.bare_newlines += 1;
                if dot.is_some() {
                    out.extend_from_slice(b"..");
                }
                out.extend_from_slice(b"\r\n");
                self.pos = Pos::LineStart { after_crlf: false };
                return self.step(b, out);
            }
            (Pos::Dot { .. }, b'\n') => {
                self.bare_newlines += 1;
                out.extend_from_slice(b"..\r\n");
                self.pos = Pos::LineStart { after_crlf: false };
            }
            (Pos::Dot { after_crlf }, b'\r') => {
                self.pos = Pos::Cr {
                    dot: Some(after_crlf),
                }
            }
            (Pos::Dot { .. }, _) => {
                out.push(b'.');
                out.push(b);
                self.pos = Pos::Middle;
            }
            (Pos::LineStart { after_crlf }, b'.') => self.pos = Pos::Dot { after_crlf },
            (Pos::LineStart { .. } | Pos::Middle, b'\r') => self.pos = Pos::Cr { dot: None },
            (Pos::LineStart { .. } | Pos::Middle, b'\n') => {
                self.bare_newlines += 1;
                out.extend_from_slice(b"\r\n");
                self.pos = Pos::LineStart { after_crlf: false };
            }
            (Pos::LineStart { .. } | Pos::Middle, _) => {
                out.push(b);
                self.pos = Pos::Middle;
            }
        }
        false
    }
}

/// Turns a message into DATA form (RFC 5321 §4.5.2): lines end in CR LF
/// (a bare LF or CR in the input becomes CR LF), a line starting with a dot
/// gets a second dot, and [`DotStuffer::finish`] adds the terminator.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    at_line_start: bool,
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    pub fn new() -> Self {
        DotStuffer {
            at_line_start: true,
            pending_cr: false,
        }
    }

    /// Appends the stuffed form of `input` to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64);
        let mut i = 0;
        while i < input.len() {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if input[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            if self.at_line_start && input[i] == b'.' {
                out.push(b'.');
            }
            self.at_line_start = false;
            let rest = &input[i..];
            match memchr::memchr2(b'\r', b'\n', rest) {
                None => {
                    out.extend_from_slice(rest);
                    return;
                }
                Some(n) => {
                    out.extend_from_slice(&rest[..n]);
                    i += n + 1;
                    if rest[n] == b'\r' {
                        self.pending_cr = true;
                    } else {
                        out.extend_from_slice(b"\r\n");
                        self.at_line_start = true;
                    }
                }
            }
        }
    }

    /// Ends the message: a CR LF if the last line was not ended, then `.` CR LF.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr {
            self.pending_cr = false;
            self.at_line_start = true;
            out.extend_from_slice(b"\r\n");
        }
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = DotStuffer::new();
    }
}

/// The longest line SMTP carries: 998 octets before the CRLF (RFC 5321
/// §4.5.3.1.6; RFC 5322 §2.1.1).
pub const MAX_LINE_OCTETS: usize = 998;

/// Breaks lines of a message in DATA form (CRLF line ends, dot-stuffed)
/// that are longer than [`MAX_LINE_OCTETS`], by inserting CRLF and a space,
/// as Postfix's `smtp_line_length_limit` does: a server may refuse or cut
/// longer lines, and a continuation starting with a space can never be read
/// as a dot line or end of data. `None` when no line is too long (the usual
/// case: nothing is copied).
pub fn fold_long_lines(wire: &[u8]) -> Option<Vec<u8>> {
    let too_long = wire
        .split(|&b| b == b'\n')
        .any(|line| line.strip_suffix(b"\r").unwrap_or(line).len() > MAX_LINE_OCTETS);
    if !too_long {
        return None;
    }
    let mut out = Vec::with_capacity(wire.len() + wire.len() / MAX_LINE_OCTETS * 3 + 3);
    let mut rest = wire;
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let (line, after) = rest.split_at(end);
        rest = after;
        let body_len = line.len()
            - line
                .iter()
                .rev()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
        let (mut text, ending) = line.split_at(body_len);
        // The first piece keeps the whole limit; each continuation starts
        // with the space, so carries one octet less.
        let mut room = MAX_LINE_OCTETS;
        while text.len() > room {
            out.extend_from_slice(&text[..room]);
            out.extend_from_slice(b"\r\n ");
            text = &text[room..];
            room = MAX_LINE_OCTETS - 1;
        }
        out.extend_from_slice(text);
        out.extend_from_slice(ending);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `input` in one piece and byte by byte; both must agree.
    /// Returns the output, where the end is, the bare newlines and the NULs.
    fn scan_all(input: &[u8]) -> (Vec<u8>, Option<usize>, u64, u64) {
        let mut whole = DataScanner::new();
        let mut out = Vec::new();
        let scan = whole.scan(input, &mut out);
        let end = scan.end.then_some(scan.consumed);

        let mut bytewise = DataScanner::new();
        let mut out2 = Vec::new();
        let mut end2 = None;
        let mut nuls_so_far = 0;
        for (i, b) in input.iter().enumerate() {
            let scan = bytewise.scan(std::slice::from_ref(b), &mut out2);
            // A NUL is counted by the scan that consumed it: the session
            // refuses on the chunk that carries it, never a chunk later.
            nuls_so_far += u64::from(*b == 0);
            assert_eq!(bytewise.nuls(), nuls_so_far, "{input:?} at {i}");
            if scan.end {
                end2 = Some(i + 1);
                break;
            }
        }
        assert_eq!(out, out2, "chunking changed the output for {input:?}");
        assert_eq!(end, end2, "chunking changed the end for {input:?}");
        assert_eq!(whole.written(), out.len() as u64);
        assert_eq!(whole.nuls(), bytewise.nuls(), "{input:?}");
        (out, end, whole.bare_newlines(), whole.nuls())
    }

    #[test]
    fn end_of_data_variants() {
        // (input, normalised output up to the end, where the end is, bare count)
        type Case<'a> = (&'a [u8], &'a [u8], Option<usize>, u64);
        let cases: &[Case] = &[
            (b".\r\n", b".\r\n", Some(3), 0),
            (b"a\r\n.\r\nMAIL", b"a\r\n.\r\n", Some(6), 0),
            (b"a\r\n..\r\n.\r\n", b"a\r\n..\r\n.\r\n", Some(10), 0),
            (b"a\r\n.b\r\n.\r\n", b"a\r\n.b\r\n.\r\n", Some(10), 0),
            // Smuggling attempts: none of these end the message.
            (b"a\n.\nMAIL", b"a\r\n..\r\nMAIL", None, 2),
            (b"a\r.\rMAIL", b"a\r\n..\r\nMAIL", None, 2),
            (b"a\n.\r\nMAIL", b"a\r\n..\r\nMAIL", None, 1),
            (b"a\r\n.\nMAIL", b"a\r\n..\r\nMAIL", None, 1),
            (b"a\r\n.\rMAIL", b"a\r\n..\r\nMAIL", None, 1),
            (b"a\r.\r\nMAIL", b"a\r\n..\r\nMAIL", None, 1),
            (b"a\r\r\n.\r\n", b"a\r\n\r\n.\r\n", Some(7), 1),
            (b"\n.\r\n", b"\r\n..\r\n", None, 1),
            (b"a\r\n\r\n.\r\n", b"a\r\n\r\n.\r\n", Some(8), 0),
            (b"x\ny\rz\r\n", b"x\r\ny\r\nz\r\n", None, 2),
        ];
        for &(input, want, want_end, want_bare) in cases {
            let (out, end, bare, _) = scan_all(input);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "output for {:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(
                end,
                want_end,
                "end for {:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(
                bare,
                want_bare,
                "bare count for {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// Where CR LF "." CR LF occurs in `out`, counting the CR LF that ended
    /// DATA before it.
    fn terminators(out: &[u8]) -> Vec<usize> {
        let mut framed = b"\r\n".to_vec();
        framed.extend_from_slice(out);
        framed
            .windows(5)
            .enumerate()
            .filter(|(_, w)| w == b"\r\n.\r\n")
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn output_never_contains_a_premature_terminator() {
        // Every string of up to 6 bytes over the interesting alphabet, NUL
        // included: the output has CRLF.CRLF (with the implied CRLF before
        // the start) only at its very end, and only when the scanner
        // reported the end. And where a next hop that drops NULs would see
        // an earlier end, the scanner counted a NUL, so the session refuses
        // the message before that hop gets its end of data.
        let alphabet = [b'\r', b'\n', b'.', b'a', 0];
        let k = alphabet.len();
        for len in 1..=6u32 {
            for n in 0..k.pow(len) {
                let input: Vec<u8> = (0..len).map(|i| alphabet[(n / k.pow(i)) % k]).collect();
                let (out, end, _, nuls) = scan_all(&input);
                let hits = terminators(&out);
                let framed_len = out.len() + 2;
                match end {
                    Some(_) => assert_eq!(hits, [framed_len - 5], "{input:?}"),
                    None => assert!(hits.is_empty(), "{input:?} gave {out:?}"),
                }
                let consumed = end.unwrap_or(input.len());
                assert_eq!(
                    nuls,
                    input[..consumed].iter().filter(|&&b| b == 0).count() as u64,
                    "{input:?}"
                );
                let stripped: Vec<u8> = out.iter().copied().filter(|&b| b != 0).collect();
                let stripped_hits = terminators(&stripped);
                if stripped_hits != hits {
                    assert!(nuls > 0, "{input:?}: hidden end of data, no NUL counted");
                }
                // No bare CR or LF survives normalisation.
                for (i, &b) in out.iter().enumerate() {
                    if b == b'\n' {
                        assert!(i > 0 && out[i - 1] == b'\r', "{input:?} gave {out:?}");
                    }
                    if b == b'\r' && i + 1 < out.len() {
                        assert_eq!(out[i + 1], b'\n', "{input:?} gave {out:?}");
                    }
                }
            }
        }
    }

    /// NUL: framed as an ordinary octet, counted in the very scan that
    /// consumes it. The first four are the issue's probes: an MTA that drops
    /// NULs would see an end of data in each.
    #[test]
    fn nul_octets_are_counted_not_framed() {
        // (input, where the end is, NULs counted up to there)
        let cases: &[(&[u8], Option<usize>, u64)] = &[
            (b"a\r\n\0.\r\nMAIL", None, 1),
            (b"a\r\n.\0\r\nMAIL", None, 1),
            (b"a\r\n\0.\rMAIL", None, 1),
            (b"a\r\n\0.\nMAIL", None, 1),
            (b"\0.\r\n", None, 1),
            (b".\0\r\n", None, 1),
            (b"a\0\r\n.\r\nMAIL", Some(7), 1),
            (b"a\r\0\n.\r\n", None, 1),
            (b"a\r\n\0\r\n.\r\n", Some(9), 1),
            (b"\0\0\0", None, 3),
            (b"a\r\n.\r\n\0", Some(6), 0),
            (b"no nul\r\n.\r\n", Some(11), 0),
        ];
        for &(input, want_end, want_nuls) in cases {
            let (out, end, _, nuls) = scan_all(input);
            assert_eq!(end, want_end, "end for {input:?}");
            assert_eq!(nuls, want_nuls, "NULs in {input:?}");
            let consumed = end.unwrap_or(input.len());
            let nuls_in = input[..consumed].iter().filter(|&&b| b == 0).count();
            assert_eq!(
                out.iter().filter(|&&b| b == 0).count(),
                nuls_in,
                "{input:?} gave {out:?}"
            );
        }
    }

    #[test]
    fn stuffing() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b"a\n", b"a\r\n.\r\n"),
            (b".a\n.\n..\n", b"..a\r\n..\r\n...\r\n.\r\n"),
            (b"a\r\nb\rc\n", b"a\r\nb\r\nc\r\n.\r\n"),
            (b"x\r\n.", b"x\r\n..\r\n.\r\n"),
            (b"x\r", b"x\r\n.\r\n"),
        ];
        for &(input, want) in cases {
            for chunk in [1, 2, 1000] {
                let mut s = DotStuffer::new();
                let mut out = Vec::new();
                for piece in input.chunks(chunk) {
                    s.push(piece, &mut out);
                }
                s.finish(&mut out);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(want),
                    "{input:?} in chunks of {chunk}"
                );
            }
        }
    }

    #[test]
    fn stuffed_message_scans_back() {
        let message = b"Subject: x\n\n.\n..\n.hidden\r\nend";
        let mut wire = Vec::new();
        let mut s = DotStuffer::new();
        s.push(message, &mut wire);
        s.finish(&mut wire);
        let (out, end, bare, _) = scan_all(&wire);
        assert_eq!(end, Some(wire.len()));
        assert_eq!(out, wire);
        assert_eq!(bare, 0);
    }

    #[test]
    fn long_lines_are_folded() {
        assert_eq!(fold_long_lines(b"short\r\n.\r\n"), None);
        let exact = [b"x".repeat(998), b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(fold_long_lines(&exact), None);
        let long = [b"a".repeat(2500), b"\r\nnext\r\n.\r\n".to_vec()].concat();
        let folded = fold_long_lines(&long).unwrap();
        let lines: Vec<&[u8]> = folded.split(|&b| b == b'\n').collect();
        assert_eq!(lines[0].len(), 998 + 1, "998 octets and the CR");
        assert!(lines[1].starts_with(b" ") && lines[1].len() == 998 + 1);
        assert!(lines[2].starts_with(b" ") && lines[2].len() == 1 + (2500 - 998 - 997) + 1);
        assert_eq!(&lines[3..], [&b"next\r"[..], b".\r", b""]);
        // Nothing is lost but the inserted CRLF+space pairs.
        let unfolded: Vec<u8> = String::from_utf8(folded.clone())
            .unwrap()
            .replace("\r\n ", "")
            .into_bytes();
        assert_eq!(unfolded, long);
        assert!(folded.split(|&b| b == b'\n').all(|l| l.len() <= 999));
    }
}
