//! The pieces of the SMTP negotiation that are pure data: the EHLO keyword,
//! the prologue that binds the plaintext exchange into the handshake, and
//! the payloads carried in the handshake messages.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::keys::PublicKey;

/// The EHLO keyword; its parameter is the Noise protocol name
/// ([`PROTOCOL_NAME`](super::noise::PROTOCOL_NAME)). The SMTP layer owns the EHLO types and builds the line from these
/// (`Capability::xpony`, `EhloReply::offers_xpony`): `pony/` is below
/// `smtp/` and does not know SMTP.
pub const KEYWORD: &str = "XPONY";

/// The prologue (Noise §6): the greeting, the client's last EHLO line and
/// the server's reply to it, each as the bytes that crossed the wire, so a
/// middlebox that changes any of them (for example strips STARTTLS or
/// XPONY from the capability list) makes the handshake fail.
///
/// `"blackpony-xpony-1" || u32be(len G) || G || u32be(len C) || C || u32be(len R) || R`
pub fn prologue(greeting: &[u8], ehlo_line: &[u8], ehlo_reply: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + greeting.len() + ehlo_line.len() + ehlo_reply.len());
    out.extend_from_slice(b"blackpony-xpony-1");
    for part in [greeting, ehlo_line, ehlo_reply] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// A server's blackpony identity: its host key and what it tells clients.
#[derive(Debug)]
pub struct ServerIdentity {
    pub key: super::noise::Keypair,
    pub hints: ServerHints,
}

/// What a server tells the client in message 2's payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerHints {
    /// Seconds the client should keep the pin (0: do not pin).
    pub max_age: u32,
    /// The key the server will move to.
    pub successor: Option<PublicKey>,
    /// The server's name (informational).
    pub hostname: Option<String>,
}

const MAX_AGE: u8 = 0x01;
const SUCCESSOR: u8 = 0x02;
const HOSTNAME: u8 = 0x03;

/// The largest handshake payload (proto-spec §4.3, §4.4): every message
/// with a longer one fails, whichever message it is.
pub const MAX_PAYLOAD: usize = 1024;

/// Why a payload could not be read. Each one fails its handshake message
/// (proto-spec §4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload of {0} octets is longer than 1024")]
    TooLong(usize),
    #[error("payload item runs past the end")]
    Truncated,
    #[error("payload item {0:#04x} appears twice")]
    Duplicate(u8),
    #[error("payload item {0:#04x} has the wrong length")]
    BadLength(u8),
    #[error("payload item {0:#04x} has an invalid value")]
    BadValue(u8),
}

/// The items of one handshake payload whose types `defined` lists for
/// this message, applying proto-spec §4.4's rules in their order: a
/// malformed item list fails (rule 1), other types are ignored whatever
/// they hold (rule 2), a defined type seen twice fails (rule 3). Rule 4
/// (each value's constraint) is the caller's.
fn items<'a>(mut payload: &'a [u8], defined: &[u8]) -> Result<Vec<(u8, &'a [u8])>, PayloadError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(PayloadError::TooLong(payload.len()));
    }
    let mut found: Vec<(u8, &[u8])> = Vec::new();
    while !payload.is_empty() {
        let [kind, hi, lo, rest @ ..] = payload else {
            return Err(PayloadError::Truncated);
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let value = rest.get(..len).ok_or(PayloadError::Truncated)?;
        payload = &rest[len..];
        if !defined.contains(kind) {
            continue;
        }
        if found.iter().any(|(k, _)| k == kind) {
            return Err(PayloadError::Duplicate(*kind));
        }
        found.push((*kind, value));
    }
    Ok(found)
}

/// `hostname` (proto-spec §4.4): 1 to 255 octets of UTF-8 without
/// control characters (no octet below 0x20, no 0x7F).
fn valid_hostname(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?;
    let ok = (1..=255).contains(&value.len()) && !value.iter().any(|&b| b < 0x20 || b == 0x7f);
    ok.then_some(text)
}

fn hostname_item(value: &[u8]) -> Result<String, PayloadError> {
    valid_hostname(value)
        .map(str::to_string)
        .ok_or(PayloadError::BadValue(HOSTNAME))
}

/// Message 1's payload: no item is defined for it (proto-spec §4.4), so
/// any items are ignored, but it must still be a well-formed item list
/// of at most 1024 octets.
pub fn check_message_1_payload(payload: &[u8]) -> Result<(), PayloadError> {
    items(payload, &[]).map(|_| ())
}

/// Message 3's payload: the client's `hostname`, if it sent one
/// (proto-spec §4.4; informational only, never for a trust decision).
pub fn decode_message_3_payload(payload: &[u8]) -> Result<Option<String>, PayloadError> {
    match items(payload, &[HOSTNAME])?.first() {
        Some((_, value)) => hostname_item(value).map(Some),
        None => Ok(None),
    }
}

/// Message 3's payload naming the client.
pub fn message_3_payload(hostname: &str) -> Vec<u8> {
    let mut out = Vec::new();
    push_hostname(&mut out, hostname);
    out
}

/// Appends a `hostname` item, cut to 255 octets at a character boundary;
/// nothing for a name the receiver would refuse (empty, control characters).
fn push_hostname(out: &mut Vec<u8>, hostname: &str) {
    let mut end = hostname.len().min(255);
    while !hostname.is_char_boundary(end) {
        end -= 1;
    }
    let value = &hostname.as_bytes()[..end];
    if valid_hostname(value).is_some() {
        push_item(out, HOSTNAME, value);
    }
}

fn push_item(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

impl ServerHints {
    /// Encodes as TLV items: type (1), length (u16be), value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        push_item(&mut out, MAX_AGE, &self.max_age.to_be_bytes());
        if let Some(s) = &self.successor {
            push_item(&mut out, SUCCESSOR, s);
        }
        if let Some(h) = &self.hostname {
            push_hostname(&mut out, h);
        }
        out
    }

    /// Decodes message 2's payload (proto-spec §4.4): unknown types are
    /// skipped (room to grow); a duplicate, a wrong length or a bad
    /// hostname fails the message.
    pub fn decode(payload: &[u8]) -> Result<ServerHints, PayloadError> {
        let mut hints = ServerHints::default();
        for (kind, value) in items(payload, &[MAX_AGE, SUCCESSOR, HOSTNAME])? {
            match kind {
                MAX_AGE => {
                    let bytes: [u8; 4] = value
                        .try_into()
                        .map_err(|_| PayloadError::BadLength(kind))?;
                    hints.max_age = u32::from_be_bytes(bytes);
                }
                SUCCESSOR => {
                    hints.successor = Some(
                        value
                            .try_into()
                            .map_err(|_| PayloadError::BadLength(kind))?,
                    );
                }
                _ => hints.hostname = Some(hostname_item(value)?),
            }
        }
        Ok(hints)
    }
}

/// Base64 for the SMTP lines that carry handshake messages.
pub fn encode_line(message: &[u8]) -> String {
    B64.encode(message)
}

/// The message in one of those lines; `None` for anything but canonical
/// base64 (proto-spec §3.1: the engine refuses non-zero unused bits and
/// wrong padding; white space anywhere is a syntax error), including an
/// empty line, which carries no message.
pub fn decode_line(line: &str) -> Option<Vec<u8>> {
    if line.is_empty() {
        return None;
    }
    B64.decode(line).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_round_trip_and_reject_junk() {
        let hints = ServerHints {
            max_age: 86400,
            successor: Some([3; 32]),
            hostname: Some("mx.example.org".into()),
        };
        assert_eq!(ServerHints::decode(&hints.encode()), Ok(hints));
        assert_eq!(ServerHints::decode(&[]), Ok(ServerHints::default()));
        // Unknown items are skipped.
        assert_eq!(
            ServerHints::decode(&[0x7f, 0, 2, 9, 9]),
            Ok(ServerHints::default())
        );
        assert_eq!(
            ServerHints::decode(&[1, 0, 4, 0]),
            Err(PayloadError::Truncated)
        );
        assert_eq!(
            ServerHints::decode(&[1, 0, 3, 0, 0, 1]),
            Err(PayloadError::BadLength(1))
        );
        assert_eq!(
            ServerHints::decode(&[1, 0, 4, 0, 0, 0, 1, 1, 0, 4, 0, 0, 0, 2]),
            Err(PayloadError::Duplicate(1))
        );
    }

    /// proto-spec §4.3/§4.4: the payload limit, item framing, duplicates
    /// and the hostname constraint, in every message that has them.
    #[test]
    fn payload_rules_of_section_4_4() {
        // 1024 octets pass, 1025 fail, in message 1 as in the others.
        let item = |len: usize| {
            let mut v = vec![0x00];
            v.extend_from_slice(&((len - 3) as u16).to_be_bytes());
            v.resize(len, 0);
            v
        };
        assert_eq!(check_message_1_payload(&item(1024)), Ok(()));
        assert_eq!(
            check_message_1_payload(&item(1025)),
            Err(PayloadError::TooLong(1025))
        );
        assert_eq!(
            ServerHints::decode(&item(1025)),
            Err(PayloadError::TooLong(1025))
        );
        assert_eq!(
            decode_message_3_payload(&item(1025)),
            Err(PayloadError::TooLong(1025))
        );
        // Message 1 defines no item, but a broken item list still fails.
        assert_eq!(
            check_message_1_payload(&[1, 0, 4, 0]),
            Err(PayloadError::Truncated)
        );
        assert_eq!(check_message_1_payload(&[1, 0, 1, 0, 1, 0, 1, 0]), Ok(()));
        // Undefined types repeat freely; type 0 is not defined anywhere.
        assert_eq!(
            ServerHints::decode(&[0, 0, 0, 0, 0, 0]),
            Ok(ServerHints::default())
        );
        // max-age and successor are message 2's: ignored in message 3.
        assert_eq!(decode_message_3_payload(&[1, 0, 1, 9, 1, 0, 0]), Ok(None));
        assert_eq!(
            decode_message_3_payload(&[3, 0, 1, b'c', 3, 0, 1, b'c']),
            Err(PayloadError::Duplicate(3))
        );
        for bad in [&b""[..], b"a\nb", b"\x7f", b"\xff"] {
            let mut p = vec![3, 0, bad.len() as u8];
            p.extend_from_slice(bad);
            assert_eq!(
                ServerHints::decode(&p),
                Err(PayloadError::BadValue(3)),
                "{bad:?}"
            );
            assert_eq!(decode_message_3_payload(&p), Err(PayloadError::BadValue(3)));
        }
        assert_eq!(
            decode_message_3_payload(&message_3_payload("client.example.net")),
            Ok(Some("client.example.net".into()))
        );
        // The encoder never writes a hostname its peer would refuse.
        assert_eq!(message_3_payload(""), b"");
        let long = "é".repeat(200);
        let cut = decode_message_3_payload(&message_3_payload(&long)).unwrap();
        assert_eq!(cut.map(|h| h.len()), Some(254));
    }

    #[test]
    fn prologue_binds_every_part() {
        let p = prologue(b"220 mx\r\n", b"EHLO c", b"250-mx\r\n250 XPONY x\r\n");
        assert!(p.starts_with(b"blackpony-xpony-1\0\0\0\x08220 mx\r\n\0\0\0\x06EHLO c"));
        assert_ne!(p, prologue(b"220 mx\r\n", b"EHLO c", b"250 mx\r\n"));
        // Lengths keep the parts apart: moving a byte across a border differs.
        assert_ne!(prologue(b"ab", b"c", b""), prologue(b"a", b"bc", b""));
    }
}
