//! The negative vectors of proto-spec §14 item 6:
//! `proto-spec/vectors/xpony-1-negative.json`. Each case changes one thing
//! in the positive scenario of Appendix A (same keys, same negotiation) and
//! states where the receiver must notice it and what it must do. The tests
//! replay every stored input against the real state machines: the relay
//! session for the server side, the client session, and the channel (as
//! the connection reads it) after the switch.

use super::super::channel::Channel;
use super::super::negotiation::encode_line;
use super::super::noise::{PROTOCOL_NAME, hex};
use super::{
    EHLO_REPLY, client_payload, continue_line, finish_line, fixed_key, initiator, json_text,
    non_canonical, responder, scenario, server_hints, xpony_line,
};

/// Where the receiver stands when a case's input arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    ServerAfterEhlo,
    ServerAfter334,
    ClientAfterXpony,
    ServerChannel,
}

impl At {
    const ALL: [At; 4] = [
        At::ServerAfterEhlo,
        At::ServerAfter334,
        At::ClientAfterXpony,
        At::ServerChannel,
    ];

    fn name(self) -> &'static str {
        match self {
            At::ServerAfterEhlo => "server-after-ehlo",
            At::ServerAfter334 => "server-after-334",
            At::ClientAfterXpony => "client-after-xpony",
            At::ServerChannel => "server-channel",
        }
    }

    fn meaning(self) -> &'static str {
        match self {
            At::ServerAfterEhlo => {
                "the server (static and ephemeral keys and message 2 payload of xpony-1-handshake.json) sent the greeting and the ehlo_reply of xpony-1-handshake.json in answer to its ehlo_line; the input is the next octets from the client"
            }
            At::ServerAfter334 => {
                "as server-after-ehlo, then the server received message_1's smtp_line and sent message_2's smtp_line (both of xpony-1-handshake.json); the input is the next octets from the client"
            }
            At::ClientAfterXpony => {
                "the client (static and ephemeral keys of xpony-1-handshake.json) received the greeting, sent the ehlo_line, received the ehlo_reply (or the case's ehlo_reply_received) and sent message_1's smtp_line; the input is the next octets from the server"
            }
            At::ServerChannel => {
                "the server processed message 3 of xpony-1-handshake.json and switched; the input is everything it then receives (direction c->s, first frame at n = 0), followed by the end of the connection"
            }
        }
    }
}

/// What the receiver must do (proto-spec §3.3, §3.4, §5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reaction {
    /// The server replies with `code`; the session then stays in
    /// plaintext, as before the XPONY command, or the server closes.
    Reply {
        code: u16,
        enhanced: &'static str,
        close: bool,
    },
    /// The client sends `*`, waits for the reply, sends QUIT, and reports
    /// a temporary failure.
    Cancel,
    /// The client closes the connection without writing anything more.
    Close,
    /// A fatal transport error: the receiver closes, no plaintext.
    Fatal,
    /// The session was truncated: an error, handled as a lost connection.
    Truncated,
    /// Not refused: a normal end of the session (the boundary of the
    /// truncation rule, proto-spec §5.6).
    End,
}

impl Reaction {
    fn json(self) -> String {
        match self {
            Reaction::Reply {
                code,
                enhanced,
                close,
            } => format!(
                "{{\"kind\": \"reply\", \"code\": {code}, \"enhanced\": \"{enhanced}\", \"then\": \"{}\"}}",
                if close { "close" } else { "plaintext" }
            ),
            Reaction::Cancel => {
                "{\"kind\": \"cancel\", \"send\": \"*\\r\\n\", \"then\": \"await-reply\"}".into()
            }
            Reaction::Close => "{\"kind\": \"close\", \"send\": \"\", \"then\": \"close\"}".into(),
            Reaction::Fatal => "{\"kind\": \"fatal\", \"then\": \"close\"}".into(),
            Reaction::Truncated => "{\"kind\": \"truncated\", \"then\": \"close\"}".into(),
            Reaction::End => "{\"kind\": \"end\", \"then\": \"close\"}".into(),
        }
    }
}

/// The enhanced status codes the cases' replies carry (proto-spec §3.3).
const ENHANCED: &[&str] = &["5.5.1", "5.5.2", "5.5.4", "5.5.6", "5.7.8"];

/// One negative vector.
struct Case {
    name: &'static str,
    spec: &'static str,
    at: At,
    /// Facts about the input beyond the octets: (field, JSON value).
    facts: Vec<(&'static str, String)>,
    input: Vec<u8>,
    failure: &'static str,
    reaction: Reaction,
}

fn quoted(text: &[u8]) -> String {
    format!("\"{}\"", json_text(text))
}

fn hex_value(bytes: &[u8]) -> String {
    format!("\"{}\"", hex(bytes))
}

/// An order-8 point of Curve25519 (RFC 7748 §5 lists such inputs): every
/// DH with it is all zero.
const LOW_ORDER_POINT: &str = "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800";

/// An item list: type, u16be length, value.
fn items(list: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, value) in list {
        out.push(*kind);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// Message 2 of the scenario with another payload.
fn message_2_with(payload: &[u8]) -> Vec<u8> {
    let (_, m1) = initiator().write_message_1(&[]).unwrap();
    let (ready, _) = responder().read_message_1(&m1).unwrap();
    ready.write_message_2(payload).unwrap().1
}

/// Message 3 of the scenario with another payload.
fn message_3_with(payload: &[u8]) -> Vec<u8> {
    let (init, _) = initiator().write_message_1(&[]).unwrap();
    let (init, _) = init.read_message_2(&scenario().m2).unwrap();
    init.write_message_3(payload).unwrap().1
}

/// A frame from the client at n = 0 holding exactly `record`.
fn first_frame(record: &[u8]) -> Vec<u8> {
    let mut transport = scenario().client;
    let ciphertext = transport.encrypt(record).unwrap();
    let mut frame = (ciphertext.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&ciphertext);
    frame
}

fn cases() -> Vec<Case> {
    let run = scenario();
    let max_age = 2_592_000u32.to_be_bytes();
    let mut cases = Vec::new();

    let stripped = String::from_utf8_lossy(EHLO_REPLY).replace("250-STARTTLS\r\n", "");
    cases.push(Case {
        name: "prologue-mismatch",
        spec: "§4.2, §3.4, §4.7",
        at: At::ClientAfterXpony,
        facts: vec![("ehlo_reply_received", quoted(stripped.as_bytes()))],
        input: continue_line(&run.m2).into_bytes(),
        failure: "message 2, decrypting the server's static key: a middlebox removed STARTTLS from the EHLO reply towards the client only, so the client's prologue differs from the server's; the 334 line is the positive one",
        reaction: Reaction::Cancel,
    });

    let low = super::super::noise::unhex(LOW_ORDER_POINT).unwrap();
    cases.push(Case {
        name: "low-order-ephemeral-key",
        spec: "§4.1, §4.7, §3.3 R10",
        at: At::ServerAfterEhlo,
        facts: vec![("message_1", hex_value(&low))],
        input: xpony_line(&low).into_bytes(),
        failure: "message 1: the client's ephemeral key is a point of order 8, so DH(server ephemeral, e) is all zero and message 2 cannot be written",
        reaction: Reaction::Reply {
            code: 535,
            enhanced: "5.7.8",
            close: false,
        },
    });

    let short = &run.m2[..95];
    cases.push(Case {
        name: "truncated-message-2",
        spec: "§4.3, §4.7, §3.4",
        at: At::ClientAfterXpony,
        facts: vec![("message_2", hex_value(short))],
        input: continue_line(short).into_bytes(),
        failure: "message 2 is the first 95 octets of the positive one, shorter than the minimum of 96 (e, encrypted s, tag)",
        reaction: Reaction::Cancel,
    });

    let payload = items(&[(0x01, &max_age), (0x01, &0u32.to_be_bytes())]);
    cases.push(Case {
        name: "duplicated-max-age",
        spec: "§4.4 rule 3, §4.7, §3.4",
        at: At::ClientAfterXpony,
        facts: vec![("payload", hex_value(&payload))],
        input: continue_line(&message_2_with(&payload)).into_bytes(),
        failure: "message 2's payload (which decrypts) holds max-age twice",
        reaction: Reaction::Cancel,
    });

    let mut payload = client_payload();
    payload.truncate(payload.len() - 4);
    cases.push(Case {
        name: "truncated-tlv-item",
        spec: "§4.4 rule 1, §4.7, §3.3 R15",
        at: At::ServerAfter334,
        facts: vec![("payload", hex_value(&payload))],
        input: finish_line(&message_3_with(&payload)).into_bytes(),
        failure: "message 3's payload (which decrypts) is a hostname item whose length says 18 octets where 14 follow",
        reaction: Reaction::Reply {
            code: 535,
            enhanced: "5.7.8",
            close: true,
        },
    });

    let payload = items(&[(0x01, &max_age), (0x03, b"")]);
    cases.push(Case {
        name: "empty-hostname",
        spec: "§4.4 rule 4, §4.7, §3.4",
        at: At::ClientAfterXpony,
        facts: vec![("payload", hex_value(&payload))],
        input: continue_line(&message_2_with(&payload)).into_bytes(),
        failure: "message 2's payload (which decrypts) holds a hostname of length 0 (allowed: 1 to 255)",
        reaction: Reaction::Cancel,
    });

    let payload = items(&[(0x00, &[0u8; 1022])]);
    let (_, m1) = initiator().write_message_1(&payload).unwrap();
    cases.push(Case {
        name: "payload-of-1025-octets",
        spec: "§4.3, §4.4, §3.3 R10",
        at: At::ServerAfterEhlo,
        facts: vec![("payload", hex_value(&payload))],
        input: xpony_line(&m1).into_bytes(),
        failure: "message 1's payload is 1025 octets, over the limit of 1024; it is one well-formed item of the undefined type 0x00, which alone would be ignored",
        reaction: Reaction::Reply {
            code: 535,
            enhanced: "5.7.8",
            close: false,
        },
    });

    cases.push(Case {
        name: "non-canonical-base64-message-1",
        spec: "§3.1, §3.3 R8",
        at: At::ServerAfterEhlo,
        facts: Vec::new(),
        input: format!(
            "XPONY {PROTOCOL_NAME} {}\r\n",
            non_canonical(&encode_line(&run.m1))
        )
        .into_bytes(),
        failure: "the base64 of message 1 has non-zero unused bits in its last character (it would decode to the positive message 1)",
        reaction: Reaction::Reply {
            code: 501,
            enhanced: "5.5.2",
            close: false,
        },
    });
    cases.push(Case {
        name: "non-canonical-base64-message-2",
        spec: "§3.1, §3.4",
        at: At::ClientAfterXpony,
        facts: Vec::new(),
        input: format!("334 {}\r\n", non_canonical(&encode_line(&run.m2))).into_bytes(),
        failure: "the base64 of message 2 has non-zero unused bits in its last character (it would decode to the positive message 2)",
        reaction: Reaction::Cancel,
    });
    cases.push(Case {
        name: "non-canonical-base64-message-3",
        spec: "§3.1, §3.3 R14",
        at: At::ServerAfter334,
        facts: Vec::new(),
        input: format!("{}\r\n", non_canonical(&encode_line(&run.m3))).into_bytes(),
        failure: "the base64 of message 3 has non-zero unused bits in its last character (it would decode to the positive message 3)",
        reaction: Reaction::Reply {
            code: 501,
            enhanced: "5.5.2",
            close: true,
        },
    });

    let mut input = xpony_line(&run.m1).into_bytes();
    input.extend_from_slice(b"NOOP\r\n");
    cases.push(Case {
        name: "octets-after-the-xpony-line",
        spec: "§3.6 rule 1, §3.3 R11",
        at: At::ServerAfterEhlo,
        facts: Vec::new(),
        input,
        failure: "octets after the LF of a valid XPONY line, found when the 334 is about to be sent",
        reaction: Reaction::Reply {
            code: 554,
            enhanced: "5.5.1",
            close: true,
        },
    });

    let mut input = xpony_line(&low).into_bytes();
    input.extend_from_slice(b"NOOP\r\n");
    cases.push(Case {
        name: "octets-after-a-refused-xpony-line",
        spec: "§3.3 (order of checks), Appendix B D5 and D6",
        at: At::ServerAfterEhlo,
        facts: Vec::new(),
        input,
        failure: "message 1 fails (the low-order key of low-order-ephemeral-key) before the injection check is reached; the NOOP behind it is an ordinary pipelined command, answered after the 535",
        reaction: Reaction::Reply {
            code: 535,
            enhanced: "5.7.8",
            close: false,
        },
    });

    let long = format!("XPONY {PROTOCOL_NAME} {}\r\n", "A".repeat(4056));
    assert_eq!(long.len(), 4097);
    cases.push(Case {
        name: "xpony-line-of-4097-octets",
        spec: "§3.5, §3.3 R5",
        at: At::ServerAfterEhlo,
        facts: Vec::new(),
        input: long.into_bytes(),
        failure: "the XPONY line is 4097 octets with its CRLF, one over the limit (its base64 is well-formed)",
        reaction: Reaction::Reply {
            code: 500,
            enhanced: "5.5.6",
            close: false,
        },
    });
    cases.push(Case {
        name: "bare-lf-after-the-xpony-line",
        spec: "§3.1, §3.3 R6",
        at: At::ServerAfterEhlo,
        facts: Vec::new(),
        input: xpony_line(&run.m1).replace("\r\n", "\n").into_bytes(),
        failure: "the positive XPONY line ended by LF without CR",
        reaction: Reaction::Reply {
            code: 501,
            enhanced: "5.5.4",
            close: false,
        },
    });
    let mut b64 = encode_line(&run.m1);
    b64.replace_range(10..11, "!");
    cases.push(Case {
        name: "non-alphabet-character-in-message-1",
        spec: "§3.1, §3.3 R8",
        at: At::ServerAfterEhlo,
        facts: Vec::new(),
        input: format!("XPONY {PROTOCOL_NAME} {b64}\r\n").into_bytes(),
        failure: "the base64 of message 1 with its 11th character replaced by '!' (visible ASCII outside the alphabet: cannot decode, not a syntax error)",
        reaction: Reaction::Reply {
            code: 501,
            enhanced: "5.5.2",
            close: false,
        },
    });
    cases.push(Case {
        name: "bare-lf-after-message-3",
        spec: "§3.1, §3.3 R14",
        at: At::ServerAfter334,
        facts: Vec::new(),
        input: finish_line(&run.m3).replace("\r\n", "\n").into_bytes(),
        failure: "the positive message 3 line ended by LF without CR",
        reaction: Reaction::Reply {
            code: 501,
            enhanced: "5.5.2",
            close: true,
        },
    });
    let payload = [0x00, 0x00];
    let (_, m1) = initiator().write_message_1(&payload).unwrap();
    cases.push(Case {
        name: "malformed-item-in-message-1",
        spec: "§4.4 rule 1, §4.7, §3.3 R10",
        at: At::ServerAfterEhlo,
        facts: vec![("payload", hex_value(&payload))],
        input: xpony_line(&m1).into_bytes(),
        failure: "message 1's payload is 2 octets, shorter than an item header: no item is defined for message 1, but a malformed item list still fails it",
        reaction: Reaction::Reply {
            code: 535,
            enhanced: "5.7.8",
            close: false,
        },
    });

    let mut input = continue_line(&run.m2).into_bytes();
    input.extend_from_slice(b"250 2.0.0 Ok\r\n");
    cases.push(Case {
        name: "octets-after-the-334-line",
        spec: "§3.6 rule 5, §3.4",
        at: At::ClientAfterXpony,
        facts: Vec::new(),
        input,
        failure: "octets after the LF of the (positive) 334 line; neither message 3 nor * may be sent",
        reaction: Reaction::Close,
    });
    cases.push(Case {
        name: "bare-lf-after-the-334-line",
        spec: "§3.1, §3.4",
        at: At::ClientAfterXpony,
        facts: Vec::new(),
        input: continue_line(&run.m2).replace("\r\n", "\n").into_bytes(),
        failure: "the positive 334 line ended by LF without CR",
        reaction: Reaction::Cancel,
    });

    let record = [0x00, 0x00];
    cases.push(Case {
        name: "frame-with-l-18",
        spec: "§5.1, §5.6",
        at: At::ServerChannel,
        facts: vec![("record", hex_value(&record))],
        input: first_frame(&record),
        failure: "L = 18 < 19; the 18 octets are a valid encryption of the 2 octets 00 00 under k(c->s) at n = 0, so only the length check catches it",
        reaction: Reaction::Fatal,
    });

    let mut c = Channel::new(scenario().client);
    let mut input = Vec::new();
    c.seal_record(0x00, b"EHLO client.example.net\r\n", 4, &mut input)
        .unwrap();
    input[2] ^= 0x01;
    cases.push(Case {
        name: "flipped-ciphertext-bit",
        spec: "§5.1, §5.6",
        at: At::ServerChannel,
        facts: Vec::new(),
        input,
        failure: "the first frame of xpony-1-handshake.json (EHLO) with the lowest bit of its first ciphertext octet flipped: the decryption fails",
        reaction: Reaction::Fatal,
    });

    let mut record = vec![0x00, 0x00, 0x19];
    record.extend_from_slice(b"EHLO client.example.net\r\n");
    record.extend_from_slice(&[0, 0, 0, 1]);
    cases.push(Case {
        name: "non-zero-padding",
        spec: "§5.2, §5.6",
        at: At::ServerChannel,
        facts: vec![("record", hex_value(&record))],
        input: first_frame(&record),
        failure: "the record (which decrypts) is the positive EHLO record with its last padding octet 01",
        reaction: Reaction::Fatal,
    });

    let record = [0x03, 0x00, 0x00];
    cases.push(Case {
        name: "unknown-record-type-0x03",
        spec: "§5.3, §5.6",
        at: At::ServerChannel,
        facts: vec![("record", hex_value(&record))],
        input: first_frame(&record),
        failure: "the record (which decrypts) has type 0x03",
        reaction: Reaction::Fatal,
    });

    let mut record = vec![0x01, 0x00, 0x06];
    record.extend_from_slice(b"QUIT\r\n");
    cases.push(Case {
        name: "close-with-a-body",
        spec: "§5.3, §5.6",
        at: At::ServerChannel,
        facts: vec![("record", hex_value(&record))],
        input: first_frame(&record),
        failure: "the record (which decrypts) is a CLOSE with the 6-octet body QUIT\\r\\n; nothing of it may be acted on",
        reaction: Reaction::Fatal,
    });

    // The client->server frames of xpony-1-handshake.json, without CLOSE.
    let mut c = Channel::new(scenario().client);
    let mut ehlo_rekey = Vec::new();
    c.seal_record(0x00, b"EHLO client.example.net\r\n", 4, &mut ehlo_rekey)
        .unwrap();
    c.seal_record(0x02, b"", 0, &mut ehlo_rekey).unwrap();
    c.rekey_send_after_record();
    let mut with_quit = ehlo_rekey.clone();
    c.seal_record(0x00, b"QUIT\r\n", 0, &mut with_quit).unwrap();
    let mut close = Vec::new();
    c.seal_record(0x01, b"", 0, &mut close).unwrap();
    cases.push(Case {
        name: "eof-without-close",
        spec: "§5.6 (truncation)",
        at: At::ServerChannel,
        facts: Vec::new(),
        input: ehlo_rekey,
        failure: "the first two client->server frames of xpony-1-handshake.json (EHLO, REKEY), then the connection ends without CLOSE and without QUIT: the session is truncated (the EHLO is still answered)",
        reaction: Reaction::Truncated,
    });
    cases.push(Case {
        name: "eof-after-quit-without-close",
        spec: "§5.6 (truncation), §10.1",
        at: At::ServerChannel,
        facts: Vec::new(),
        input: with_quit.clone(),
        failure: "the client->server frames of xpony-1-handshake.json (EHLO, REKEY, QUIT) without the final CLOSE, then the connection ends, all in one read: not a truncation, because the SMTP session ended with QUIT; the EHLO and the QUIT are answered",
        reaction: Reaction::End,
    });
    let mut input = with_quit;
    input.extend_from_slice(&close[..10]);
    cases.push(Case {
        name: "partial-frame-after-quit",
        spec: "§5.6 (truncation)",
        at: At::ServerChannel,
        facts: Vec::new(),
        input,
        failure: "as eof-after-quit-without-close, then the first 10 octets of the CLOSE frame: the connection ends in the middle of a frame, but after QUIT, so the session ended normally",
        reaction: Reaction::End,
    });
    cases
}

/// The whole file as JSON text (stable field order).
pub fn negative_vectors() -> String {
    let mut out = String::from("{\n");
    out.push_str(&format!("  \"protocol_name\": \"{PROTOCOL_NAME}\",\n"));
    out.push_str("  \"based_on\": \"xpony-1-handshake.json\",\n");
    out.push_str("  \"at\": {\n");
    let stages: Vec<String> = At::ALL
        .iter()
        .map(|at| {
            format!(
                "    \"{}\": \"{}\"",
                at.name(),
                json_text(at.meaning().as_bytes())
            )
        })
        .collect();
    out.push_str(&stages.join(",\n"));
    out.push_str("\n  },\n  \"cases\": [\n");
    let cases: Vec<String> = cases()
        .into_iter()
        .map(|case| {
            let mut fields = vec![
                ("name", quoted(case.name.as_bytes())),
                ("spec", quoted(case.spec.as_bytes())),
                ("at", quoted(case.at.name().as_bytes())),
            ];
            fields.extend(case.facts);
            fields.push(("input_hex", hex_value(&case.input)));
            if case.at != At::ServerChannel {
                fields.push(("input_text", quoted(&case.input)));
            }
            fields.push(("failure", quoted(case.failure.as_bytes())));
            fields.push(("reaction", case.reaction.json()));
            let body: Vec<String> = fields
                .into_iter()
                .map(|(k, v)| format!("      \"{k}\": {v}"))
                .collect();
            format!("    {{\n{}\n    }}", body.join(",\n"))
        })
        .collect();
    out.push_str(&cases.join(",\n"));
    out.push_str("\n  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::AsyncReadExt;

    use super::super::{EHLO_LINE, GREETING, check_stored, stored_json};
    use super::*;
    use crate::inbound::Identity;
    use crate::inbound::session::{Action, Session, SessionConfig};
    use crate::pony::negotiation::ServerIdentity;
    use crate::smtp::client::{
        ClientSession, HostFailure, PonyOffer, SessionOutcome, StartTls, Step,
    };
    use crate::smtp::{BareNewlines, ContentFacts, Envelope};
    use crate::transport::PonyStream;

    #[test]
    fn vectors_match_the_stored_file() {
        check_stored("xpony-1-negative.json", &negative_vectors());
    }

    /// What a receiver did with an input: the reaction it showed, or that
    /// it took the input (`Accepted`), or something else (`Other`).
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Did(Reaction),
        Accepted,
        Other(String),
    }

    /// The backend's EHLO reply: the session rewrites it into the
    /// scenario's R (adding STARTTLS and XPONY).
    const BACKEND_EHLO: &[u8] = b"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";

    /// The relay session in the scenario's server role, after the EHLO.
    fn server_after_ehlo() -> Session {
        let config = SessionConfig {
            hostname: "mx.example.org".into(),
            identity: Identity::ProxyV2,
            require_tls: false,
            bare_newlines: BareNewlines::Normalize,
            trace_header: false,
            pony: Some(Arc::new(ServerIdentity {
                key: fixed_key("server static"),
                hints: server_hints(),
            })),
            error_limits: Default::default(),
        };
        let mut s = Session::new(
            Arc::new(config),
            "192.0.2.1:40000".parse().unwrap(),
            "192.0.2.25:25".parse().unwrap(),
        );
        s.fix_ephemeral(fixed_key("server ephemeral"));
        s.backend_input(GREETING);
        assert_eq!(std::mem::take(&mut s.to_client), GREETING);
        s.client_input(&[EHLO_LINE, b"\r\n"].concat());
        assert_eq!(
            std::mem::take(&mut s.to_backend),
            [EHLO_LINE, b"\r\n"].concat()
        );
        s.backend_input(BACKEND_EHLO);
        assert_eq!(
            String::from_utf8_lossy(&std::mem::take(&mut s.to_client)),
            String::from_utf8_lossy(EHLO_REPLY),
            "the session's EHLO reply is the scenario's R"
        );
        s
    }

    fn server_reaction(mut s: Session, input: &[u8]) -> Seen {
        s.client_input(input);
        let out = String::from_utf8_lossy(&std::mem::take(&mut s.to_client)).into_owned();
        let actions: Vec<Action> = std::iter::from_fn(|| s.poll_action()).collect();
        if out.starts_with("334 ") || actions.contains(&Action::StartPony) {
            return Seen::Accepted;
        }
        let Some(code) = out.get(..3).and_then(|c| c.parse().ok()) else {
            return Seen::Other(out);
        };
        let close = s.is_closed();
        if !close {
            // "plaintext": the session is as before XPONY, so a command
            // goes on to the backend.
            s.client_input(b"NOOP\r\n");
            if !s.to_backend.ends_with(b"NOOP\r\n") {
                return Seen::Other(format!("{out} and then NOOP was not relayed"));
            }
        }
        let Some(enhanced) = out
            .get(4..)
            .and_then(|t| t.split(' ').next())
            .and_then(|e| ENHANCED.iter().find(|k| **k == e))
        else {
            return Seen::Other(out);
        };
        Seen::Did(Reaction::Reply {
            code,
            enhanced,
            close,
        })
    }

    fn client_after_xpony(ehlo_reply: &[u8]) -> ClientSession {
        let mut c = ClientSession::new(
            "client.example.net",
            StartTls::IfOffered,
            Envelope {
                sender: "a@client.example.net".into(),
                recipients: vec!["b@example.org".into()],
            },
            ContentFacts::default(),
            b"Subject: x\r\n\r\nx\r\n.\r\n".to_vec(),
        )
        .with_pony(PonyOffer {
            key: fixed_key("client static"),
            required: false,
        })
        .fix_ephemeral(fixed_key("client ephemeral"));
        c.receive(GREETING);
        assert_eq!(
            std::mem::take(&mut c.outgoing),
            [EHLO_LINE, b"\r\n"].concat()
        );
        c.receive(ehlo_reply);
        assert_eq!(
            String::from_utf8_lossy(&std::mem::take(&mut c.outgoing)),
            xpony_line(&scenario().m1),
            "the client sends the scenario's message 1"
        );
        c
    }

    fn client_reaction(mut c: ClientSession, input: &[u8]) -> Seen {
        let step = c.receive(input);
        if matches!(step, Step::CheckServerKey { .. }) {
            return Seen::Accepted;
        }
        let out = String::from_utf8_lossy(&std::mem::take(&mut c.outgoing)).into_owned();
        let failed = matches!(
            c.outcome(),
            Some(SessionOutcome::Failed(HostFailure::PonyFailed { .. }))
        );
        match out.as_str() {
            "*\r\n" if c.outcome().is_none() => {
                // §3.4: after `*`, the reply, then QUIT and a failure.
                c.receive(b"501 5.7.0 XPONY aborted\r\n");
                let quit = c.outgoing == b"QUIT\r\n";
                let failed = matches!(
                    c.outcome(),
                    Some(SessionOutcome::Failed(HostFailure::PonyFailed { .. }))
                );
                if quit && failed {
                    Seen::Did(Reaction::Cancel)
                } else {
                    Seen::Other(format!("* then {:?}", c.outcome()))
                }
            }
            "" if step == Step::Done && failed => Seen::Did(Reaction::Close),
            _ => Seen::Other(format!("{out:?} {step:?} {:?}", c.outcome())),
        }
    }

    /// A client connection that hands out `step` octets per read, then EOF.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl tokio::io::AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self
                .step
                .min(self.data.len() - self.pos)
                .min(buf.remaining());
            let pos = self.pos;
            buf.put_slice(&self.data[pos..pos + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// What the server session did with what came over the channel.
    #[derive(Debug, PartialEq, Eq)]
    struct Served {
        /// The session's end (its log line's `end=`).
        end: &'static str,
        /// The replies it wrote to the client after the switch.
        replies: String,
        /// Whether it logged a client error (a fatal frame, a truncation).
        client_error: bool,
    }

    /// The relay session after the scenario's message 3, reading `input`
    /// from the client through the channel `step` octets per read, as the
    /// connection's I/O loop does. The backend answers at once, or (`slow`)
    /// only once the client has nothing more to read: the end of the
    /// connection then comes before the replies.
    async fn serve_channel(input: &[u8], step: usize, slow: bool) -> Served {
        let run = scenario();
        let mut s = server_after_ehlo();
        s.client_input(xpony_line(&run.m1).as_bytes());
        s.to_client.clear();
        s.client_input(finish_line(&run.m3).as_bytes());
        assert_eq!(s.poll_action(), Some(Action::StartPony));
        let (transport, leftover) = s.take_pony().unwrap();
        let info = crate::transport::Encryption::pony(&transport);
        let mut client = PonyStream::new(
            Trickle {
                data: input.to_vec(),
                pos: 0,
                step,
            },
            Channel::new(transport),
            leftover,
        );
        s.pony_established(info);
        let mut client_error = false;
        let mut buf = vec![0u8; 4096];
        for _ in 0..100_000 {
            while let Some(action) = s.poll_action() {
                match action {
                    Action::RestartBackend => {
                        // The old backend's QUIT; the new one greets.
                        s.to_backend.clear();
                        s.backend_restarted();
                        s.backend_input(GREETING);
                    }
                    Action::Log(crate::inbound::session::Notice::ClientError { .. }) => {
                        client_error = true
                    }
                    Action::Close => {
                        return Served {
                            end: s.stats().end,
                            replies: String::from_utf8_lossy(&s.to_client).into_owned(),
                            client_error,
                        };
                    }
                    _ => {}
                }
            }
            if slow && s.wants_client_input() {
                let read = client.read(&mut buf).await;
                s.client_read(
                    read.as_ref()
                        .map(|&n| &buf[..n])
                        .map_err(|e| std::io::Error::new(e.kind(), e.to_string())),
                );
                continue;
            }
            let to_backend = String::from_utf8(std::mem::take(&mut s.to_backend)).unwrap();
            for line in to_backend.lines() {
                let reply: &[u8] = if line.starts_with("EHLO") {
                    BACKEND_EHLO
                } else if line == "QUIT" {
                    b"221 2.0.0 Bye\r\n"
                } else {
                    b"250 2.0.0 Ok\r\n"
                };
                s.backend_input(reply);
            }
            if s.wants_client_input() {
                let read = client.read(&mut buf).await;
                s.client_read(
                    read.as_ref()
                        .map(|&n| &buf[..n])
                        .map_err(|e| std::io::Error::new(e.kind(), e.to_string())),
                );
            } else if s.to_backend.is_empty() && !s.is_closed() {
                panic!("the session is stuck: {:?}", s.stats());
            }
        }
        panic!("the session did not end");
    }

    /// The server's side of the channel: the relay session reading what
    /// came after message 3, all in one read and a byte per read, which
    /// must come out alike (proto-spec §5.6: the verdict does not depend
    /// on how the octets were split).
    async fn channel_reaction(input: &[u8]) -> Seen {
        let served = serve_channel(input, usize::MAX, false).await;
        for (step, slow) in [(usize::MAX, true), (1, false), (1, true)] {
            let other = serve_channel(input, step, slow).await;
            if other != served {
                return Seen::Other(format!(
                    "one read: {served:?}; {step} octets per read, slow backend {slow}: {other:?}"
                ));
            }
        }
        match served {
            Served {
                end: "client-error",
                client_error: true,
                ..
            } => Seen::Did(Reaction::Fatal),
            Served {
                end: "truncated",
                client_error: true,
                ..
            } => Seen::Did(Reaction::Truncated),
            Served {
                end: "quit",
                client_error: false,
                ref replies,
            } if replies.ends_with("221 2.0.0 Bye\r\n") => Seen::Did(Reaction::End),
            Served {
                end: "client-closed",
                client_error: false,
                ..
            } => Seen::Accepted,
            other => Seen::Other(format!("{other:?}")),
        }
    }

    /// The case: EHLO, REKEY, QUIT and the end of the connection
    /// in one read get their replies, and the session ends normally (not
    /// truncated), as when each came in a read of its own.
    #[tokio::test]
    async fn ehlo_rekey_quit_and_eof_in_one_read_are_answered() {
        let case = cases()
            .into_iter()
            .find(|c| c.name == "eof-after-quit-without-close")
            .unwrap();
        for (step, slow) in [
            (usize::MAX, true),
            (usize::MAX, false),
            (1, true),
            (7, false),
        ] {
            let served = serve_channel(&case.input, step, slow).await;
            assert_eq!(served.end, "quit", "step {step}: {served:?}");
            assert!(!served.client_error, "step {step}: {served:?}");
            assert!(
                served.replies.starts_with("250-mx.example.org\r\n")
                    && served
                        .replies
                        .ends_with("250 ENHANCEDSTATUSCODES\r\n221 2.0.0 Bye\r\n"),
                "step {step}: {served:?}"
            );
        }
        // Without the QUIT it is a truncation, still with the EHLO answered.
        let case = cases()
            .into_iter()
            .find(|c| c.name == "eof-without-close")
            .unwrap();
        let served = serve_channel(&case.input, usize::MAX, true).await;
        assert_eq!((served.end, served.client_error), ("truncated", true));
        assert!(
            served.replies.ends_with("250 ENHANCEDSTATUSCODES\r\n"),
            "{served:?}"
        );
    }

    fn reaction_of(json: &serde_json::Value) -> Reaction {
        let code = json["code"].as_u64().map(|c| u16::try_from(c).unwrap());
        match (json["kind"].as_str().unwrap(), code) {
            ("reply", Some(code)) => Reaction::Reply {
                code,
                enhanced: ENHANCED
                    .iter()
                    .find(|e| json["enhanced"] == **e)
                    .unwrap_or_else(|| panic!("enhanced code of {json}")),
                close: json["then"] == "close",
            },
            ("cancel", None) => Reaction::Cancel,
            ("close", None) => Reaction::Close,
            ("fatal", None) => Reaction::Fatal,
            ("truncated", None) => Reaction::Truncated,
            ("end", None) => Reaction::End,
            other => panic!("unknown reaction {other:?}"),
        }
    }

    /// Every stored input, fed to the code that receives it in a real
    /// session, must meet the stored reaction.
    #[tokio::test]
    async fn every_negative_vector_is_refused_as_stated() {
        let stored = stored_json("xpony-1-negative.json");
        let cases = stored["cases"].as_array().unwrap();
        assert_eq!(cases.len(), super::cases().len());
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let input = crate::pony::noise::unhex(case["input_hex"].as_str().unwrap()).unwrap();
            if let Some(text) = case["input_text"].as_str() {
                assert_eq!(text.as_bytes(), input, "{name}: input_text and input_hex");
            }
            let at = case["at"].as_str().unwrap();
            let seen = match at {
                "server-after-ehlo" => server_reaction(server_after_ehlo(), &input),
                "server-after-334" => {
                    let mut s = server_after_ehlo();
                    s.client_input(xpony_line(&scenario().m1).as_bytes());
                    assert_eq!(
                        String::from_utf8_lossy(&std::mem::take(&mut s.to_client)),
                        continue_line(&scenario().m2),
                        "the session sends the scenario's message 2"
                    );
                    server_reaction(s, &input)
                }
                "client-after-xpony" => {
                    let ehlo = case["ehlo_reply_received"]
                        .as_str()
                        .map_or(EHLO_REPLY, str::as_bytes);
                    client_reaction(client_after_xpony(ehlo), &input)
                }
                "server-channel" => channel_reaction(&input).await,
                other => panic!("{name}: unknown stage {other}"),
            };
            assert_eq!(
                seen,
                Seen::Did(reaction_of(&case["reaction"])),
                "{name}: {}",
                case["failure"]
            );
        }
    }

    /// The stages are sound: the positive inputs pass them, so the cases
    /// fail for the one thing each changes.
    #[tokio::test]
    async fn the_positive_scenario_passes_every_stage() {
        let run = scenario();
        assert_eq!(
            server_reaction(server_after_ehlo(), xpony_line(&run.m1).as_bytes()),
            Seen::Accepted
        );
        let mut s = server_after_ehlo();
        s.client_input(xpony_line(&run.m1).as_bytes());
        s.to_client.clear();
        assert_eq!(
            server_reaction(s, finish_line(&run.m3).as_bytes()),
            Seen::Accepted
        );
        assert_eq!(
            client_reaction(
                client_after_xpony(EHLO_REPLY),
                continue_line(&run.m2).as_bytes()
            ),
            Seen::Accepted
        );
        let mut c = Channel::new(run.client);
        let mut wire = Vec::new();
        c.seal_data(b"EHLO client.example.net\r\n", &mut wire)
            .unwrap();
        c.seal_close(&mut wire).unwrap();
        assert_eq!(channel_reaction(&wire).await, Seen::Accepted);
    }
}
