//! The server's side of the XPONY negotiation (proto-spec xpony.md §3),
//! sans-IO, for every receiving session that offers it (the `inbound`
//! relay session, the sealed relay's listeners): the command's syntax,
//! message 1 → the 334 with message 2, and the line after it.
//!
//! What depends on the session stays with the session: the state rules
//! (R1–R4: EHLO first, not encrypted yet, offered), R2 (no transaction
//! open), and the injection check (R11) right before the 334 is written,
//! since only the session knows its input buffer.

use super::{Reply, replies};
use crate::pony::negotiation::{self, ServerIdentity};
use crate::pony::noise::{Keypair, PROTOCOL_NAME, Responder, ResponderAwaitingFinish, Transport};

/// R6–R8 (§3.1, §3.3) on an XPONY command line without its line ending
/// (`crlf`: it ended in CR LF, not a bare LF, as every line of the exchange
/// must): `XPONY SP protocol-name SP b64-field`, exactly one SP each, the
/// name one we offer, the field visible ASCII (else R6) and canonical
/// base64 (else R8, "cannot decode"). Returns message 1.
pub fn parse_command(line: &[u8], crlf: bool) -> Result<Vec<u8>, Reply> {
    let syntax = replies::xpony_syntax;
    let verb_ok = line
        .get(..5)
        .is_some_and(|v| v.eq_ignore_ascii_case(negotiation::KEYWORD.as_bytes()));
    if !crlf || !verb_ok || line.get(5) != Some(&b' ') {
        return Err(syntax());
    }
    let args = std::str::from_utf8(&line[6..]).map_err(|_| syntax())?;
    // §2: the name's characters.
    let name_ok = |n: &str| {
        (1..=255).contains(&n.len())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+/".contains(c))
    };
    let field_ok = |f: &str| !f.is_empty() && f.bytes().all(|b| b.is_ascii_graphic());
    let mut parts = args.split(' ');
    let (name, encoded) = match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(encoded), None) if name_ok(name) && field_ok(encoded) => (name, encoded),
        _ => return Err(syntax()),
    };
    if name != PROTOCOL_NAME {
        return Err(replies::unrecognized_protocol_name());
    }
    negotiation::decode_line(encoded).ok_or_else(replies::cannot_decode_base64)
}

/// Message 1 failed (R10): the reply, and why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeFailed {
    pub reply: Reply,
    pub error: String,
}

/// Processes message 1 under `prologue` (G, C, R of §4.2) with a fresh
/// ephemeral key (or `ephemeral`, when a test fixes it) and writes message
/// 2: the state waiting for message 3 and the `334` line to send (R12),
/// or R10. §4.3/§4.4: message 1 defines no payload item, but a payload over
/// 1024 octets or a broken item list fails it.
pub fn respond(
    identity: &ServerIdentity,
    prologue: &[u8],
    message_1: &[u8],
    ephemeral: Option<Keypair>,
) -> Result<(ResponderAwaitingFinish, Vec<u8>), HandshakeFailed> {
    let ephemeral = match ephemeral {
        Some(key) => Ok(key),
        None => Keypair::generate().map_err(|e| e.to_string()),
    };
    let step = ephemeral.and_then(|e| {
        let (ready, payload) = Responder::new(prologue, identity.key.clone(), e)
            .read_message_1(message_1)
            .map_err(|e| e.to_string())?;
        negotiation::check_message_1_payload(&payload).map_err(|e| e.to_string())?;
        ready
            .write_message_2(&identity.hints.encode())
            .map_err(|e| e.to_string())
    });
    match step {
        Ok((state, message_2)) => {
            let line = format!("334 {}\r\n", negotiation::encode_line(&message_2));
            Ok((state, line.into_bytes()))
        }
        Err(error) => Err(HandshakeFailed {
            reply: replies::xpony_handshake_failed(),
            error,
        }),
    }
}

/// What the line after the 334 led to (§3.3 R13–R15).
#[derive(Debug)]
pub enum Finish {
    /// `*` (R13): reply, and the session goes on in plaintext.
    Aborted(Reply),
    /// Message 3 was good: switch to the channel, send nothing.
    Established(Transport),
    /// R14 or R15: reply, then close.
    Failed { reply: Reply, error: String },
}

/// The line after our 334 (without its line ending; `crlf`: it ended in
/// CR LF): `*`, or message 3.
pub fn finish(state: ResponderAwaitingFinish, line: &[u8], crlf: bool) -> Finish {
    if line == b"*" && crlf {
        return Finish::Aborted(replies::xpony_aborted());
    }
    // R14: a line that is neither `*` nor base64, each ended by CR LF, is
    // answered apart from a message 3 that fails (R15); both close.
    let Some(message_3) = std::str::from_utf8(line)
        .ok()
        .filter(|_| crlf)
        .and_then(negotiation::decode_line)
    else {
        return Finish::Failed {
            reply: replies::cannot_decode_base64(),
            error: "message 3 is not base64".into(),
        };
    };
    // §4.7: message 3 fails on Noise errors and on a payload that breaks
    // §4.4 alike.
    let result = state
        .read_message_3(&message_3)
        .map_err(|e| e.to_string())
        .and_then(|(transport, payload)| {
            negotiation::decode_message_3_payload(&payload)
                .map(|_hostname| transport)
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(transport) => Finish::Established(transport),
        Err(error) => Finish::Failed {
            reply: replies::xpony_handshake_failed(),
            error,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_syntax() {
        let ok = format!("XPONY {PROTOCOL_NAME} AAAA");
        assert_eq!(parse_command(ok.as_bytes(), true), Ok(vec![0, 0, 0]));
        let lower = format!("xpony {PROTOCOL_NAME} AAAA");
        assert!(parse_command(lower.as_bytes(), true).is_ok());
        for (line, code) in [
            (format!("XPONY  {PROTOCOL_NAME} AAAA"), 501),
            (format!("XPONY {PROTOCOL_NAME}  AAAA"), 501),
            (format!("XPONY {PROTOCOL_NAME} AAAA "), 501),
            (format!("XPONY\t{PROTOCOL_NAME} AAAA"), 501),
            (format!("XPONY {PROTOCOL_NAME}"), 501),
            (format!("XPONY {PROTOCOL_NAME} "), 501),
            ("XPONY".to_string(), 501),
            ("XPONY na-me AAAA".to_string(), 501),
            ("XPONY Noise_NN AAAA".to_string(), 504),
            (format!("XPONY {PROTOCOL_NAME} AAB="), 501),
            (format!("XPONY {PROTOCOL_NAME} AB=="), 501),
        ] {
            assert_eq!(
                parse_command(line.as_bytes(), true).map_err(|r| r.code()),
                Err(code),
                "{line}"
            );
        }
    }

    /// A whole negotiation against the client's own Noise side; `*`; junk.
    #[test]
    fn respond_and_finish() {
        let identity = ServerIdentity {
            key: Keypair::from_secret([9; 32]),
            hints: Default::default(),
        };
        let client = crate::pony::noise::Initiator::new(
            b"p",
            Keypair::from_secret([1; 32]),
            Keypair::from_secret([2; 32]),
        );
        let (waiting, m1) = client.write_message_1(&[]).unwrap();
        let (state, line) = respond(&identity, b"p", &m1, None).unwrap();
        let text = String::from_utf8(line).unwrap();
        let m2 = negotiation::decode_line(text.strip_prefix("334 ").unwrap().trim_end()).unwrap();
        let (confirm, _) = waiting.read_message_2(&m2).unwrap();
        assert_eq!(confirm.remote_static(), identity.key.public());
        let (_, m3) = confirm.write_message_3(&[]).unwrap();
        let m3 = negotiation::encode_line(&m3);
        match finish(state, m3.as_bytes(), true) {
            Finish::Established(t) => {
                assert_eq!(t.remote_static(), Keypair::from_secret([1; 32]).public())
            }
            other => panic!("{other:?}"),
        }
        // A prologue that differs fails message 2 at the client, and any
        // broken message 1 is R10.
        assert_eq!(
            respond(&identity, b"p", &[0; 5], None)
                .unwrap_err()
                .reply
                .code(),
            535
        );
        let (_, m1) = crate::pony::noise::Initiator::new(
            b"p",
            Keypair::from_secret([1; 32]),
            Keypair::from_secret([3; 32]),
        )
        .write_message_1(&[])
        .unwrap();
        let (state, _) = respond(&identity, b"p", &m1, None).unwrap();
        assert!(matches!(finish(state, b"*", true), Finish::Aborted(r) if r.code() == 501));
        let (state, _) = respond(&identity, b"p", &m1, None).unwrap();
        assert!(
            matches!(finish(state, b"QUIT", true), Finish::Failed { reply, .. } if reply.code() == 535)
        );
        let (state, _) = respond(&identity, b"p", &m1, None).unwrap();
        assert!(
            matches!(finish(state, b"not base64!", true), Finish::Failed { reply, .. } if reply.code() == 501)
        );
    }
}
