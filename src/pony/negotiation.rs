//! The pieces of the SMTP negotiation that are pure data: the EHLO keyword,
//! the prologue that binds the plaintext exchange into the handshake, and
//! the payloads carried in the handshake messages.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::keys::PublicKey;
use super::noise::PROTOCOL_NAME;

/// The EHLO keyword, and its parameter (the Noise protocol name).
pub const KEYWORD: &str = "XPONY";

/// The EHLO line a server adds: `XPONY Noise_XX_25519_ChaChaPoly_SHA256`.
pub fn ehlo_capability() -> crate::smtp::Capability {
    crate::smtp::Capability::new(KEYWORD, PROTOCOL_NAME)
}

/// Whether an EHLO reply offers a protocol we speak.
pub fn offered(ehlo: &crate::smtp::EhloReply) -> bool {
    ehlo.get(KEYWORD)
        .is_some_and(|c| c.params.split_whitespace().any(|p| p == PROTOCOL_NAME))
}

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

/// Why a payload could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload item runs past the end")]
    Truncated,
    #[error("payload item {0:#04x} appears twice")]
    Duplicate(u8),
    #[error("payload item {0:#04x} has the wrong length")]
    BadLength(u8),
}

impl ServerHints {
    /// Encodes as TLV items: type (1), length (u16be), value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut item = |kind: u8, value: &[u8]| {
            out.push(kind);
            out.extend_from_slice(&(value.len() as u16).to_be_bytes());
            out.extend_from_slice(value);
        };
        item(MAX_AGE, &self.max_age.to_be_bytes());
        if let Some(s) = &self.successor {
            item(SUCCESSOR, s);
        }
        if let Some(h) = &self.hostname {
            item(HOSTNAME, &h.as_bytes()[..h.len().min(255)]);
        }
        out
    }

    /// Decodes TLV items; unknown types are skipped (room to grow),
    /// duplicates of known ones are errors.
    pub fn decode(mut payload: &[u8]) -> Result<ServerHints, PayloadError> {
        let mut hints = ServerHints::default();
        let mut seen = [false; 4];
        while !payload.is_empty() {
            let [kind, hi, lo, rest @ ..] = payload else {
                return Err(PayloadError::Truncated);
            };
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            let value = rest.get(..len).ok_or(PayloadError::Truncated)?;
            payload = &rest[len..];
            if let Some(flag) = seen.get_mut(usize::from(*kind)) {
                if *flag {
                    return Err(PayloadError::Duplicate(*kind));
                }
                *flag = true;
            }
            match *kind {
                MAX_AGE => {
                    let bytes: [u8; 4] = value
                        .try_into()
                        .map_err(|_| PayloadError::BadLength(*kind))?;
                    hints.max_age = u32::from_be_bytes(bytes);
                }
                SUCCESSOR => {
                    hints.successor = Some(
                        value
                            .try_into()
                            .map_err(|_| PayloadError::BadLength(*kind))?,
                    );
                }
                HOSTNAME => hints.hostname = Some(String::from_utf8_lossy(value).into_owned()),
                _ => {}
            }
        }
        Ok(hints)
    }
}

/// Base64 for the SMTP lines that carry handshake messages.
pub fn encode_line(message: &[u8]) -> String {
    B64.encode(message)
}

pub fn decode_line(line: &str) -> Option<Vec<u8>> {
    B64.decode(line.trim()).ok()
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

    #[test]
    fn prologue_binds_every_part() {
        let p = prologue(b"220 mx\r\n", b"EHLO c", b"250-mx\r\n250 XPONY x\r\n");
        assert!(p.starts_with(b"blackpony-xpony-1\0\0\0\x08220 mx\r\n\0\0\0\x06EHLO c"));
        assert_ne!(p, prologue(b"220 mx\r\n", b"EHLO c", b"250 mx\r\n"));
        // Lengths keep the parts apart: moving a byte across a border differs.
        assert_ne!(prologue(b"ab", b"c", b""), prologue(b"a", b"bc", b""));
    }
}
