//! The protocol's test vectors (proto-spec §14, Appendix A): produced by
//! this implementation from fixed keys, stored in `proto-spec/vectors/`,
//! and checked by `cargo test`. Set `BLACKPONY_BLESS_VECTORS=1` to write
//! the files anew after a deliberate change.
//!
//! - [`handshake`]: the positive scenario, `xpony-1-handshake.json`;
//! - [`negative`]: inputs that must be refused, with the point of failure
//!   and the required reaction, `xpony-1-negative.json`; its tests replay
//!   each one against the real session state machines and channel;
//! - [`dns`]: DNS key records and what they mean, `xpony-1-dns.json`.
//!
//! The module exists for the tests only, so its generators may panic: a
//! fixed input that stops working is a test failure.

mod dns;
mod handshake;
mod negative;

use sha2::{Digest, Sha256};

use super::negotiation::{ServerHints, encode_line, message_3_payload, prologue};
use super::noise::{Initiator, KEY_LEN, Keypair, PROTOCOL_NAME, Responder, Transport};

/// `SHA-256("xpony-1 test vector: " || role)` as a private key.
pub fn fixed_key(role: &str) -> Keypair {
    let digest: [u8; KEY_LEN] = Sha256::digest(format!("xpony-1 test vector: {role}")).into();
    Keypair::from_secret(digest)
}

/// The plaintext negotiation of Appendix A: greeting G, EHLO line C, and
/// the EHLO reply R.
const GREETING: &[u8] = b"220 mx.example.org ESMTP blackpony\r\n";
const EHLO_LINE: &[u8] = b"EHLO client.example.net";
const EHLO_REPLY: &[u8] = b"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250 XPONY Noise_XX_25519_ChaChaPoly_SHA256\r\n";

fn scenario_prologue() -> Vec<u8> {
    prologue(GREETING, EHLO_LINE, EHLO_REPLY)
}

/// Message 2's payload in Appendix A: 30 days, a successor, the name.
fn server_hints() -> ServerHints {
    ServerHints {
        max_age: 2_592_000,
        successor: Some(fixed_key("server successor").public()),
        hostname: Some("mx.example.org".into()),
    }
}

/// Message 3's payload in Appendix A: the client's name.
fn client_payload() -> Vec<u8> {
    message_3_payload("client.example.net")
}

fn initiator() -> Initiator {
    Initiator::new(
        &scenario_prologue(),
        fixed_key("client static"),
        fixed_key("client ephemeral"),
    )
}

fn responder() -> Responder {
    Responder::new(
        &scenario_prologue(),
        fixed_key("server static"),
        fixed_key("server ephemeral"),
    )
}

/// The three messages of Appendix A and the two sides' transports.
struct Scenario {
    m1: Vec<u8>,
    m2: Vec<u8>,
    m3: Vec<u8>,
    client: Transport,
    server: Transport,
}

/// Appendix A's handshake, with these payloads in messages 2 and 3.
fn handshake(p2: &[u8], p3: &[u8]) -> Scenario {
    let (init, m1) = initiator().write_message_1(&[]).unwrap();
    let (resp, _) = responder().read_message_1(&m1).unwrap();
    let (resp, m2) = resp.write_message_2(p2).unwrap();
    let (init, _) = init.read_message_2(&m2).unwrap();
    let (client, m3) = init.write_message_3(p3).unwrap();
    let (server, _) = resp.read_message_3(&m3).unwrap();
    Scenario {
        m1,
        m2,
        m3,
        client,
        server,
    }
}

/// Appendix A's handshake with its own payloads.
fn scenario() -> Scenario {
    handshake(&server_hints().encode(), &client_payload())
}

/// The SMTP line of each handshake message (proto-spec §3.1).
fn xpony_line(m1: &[u8]) -> String {
    format!("XPONY {PROTOCOL_NAME} {}\r\n", encode_line(m1))
}

fn continue_line(m2: &[u8]) -> String {
    format!("334 {}\r\n", encode_line(m2))
}

fn finish_line(m3: &[u8]) -> String {
    format!("{}\r\n", encode_line(m3))
}

/// The same base64 with the unused low bits of its last character set:
/// the same octets to a lenient decoder, refused by a strict one
/// (RFC 4648 §3.5; proto-spec §3.1).
pub(super) fn non_canonical(b64: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let data = b64.trim_end_matches('=');
    assert!(data.len() < b64.len(), "{b64} has no unused bits");
    let last = data.as_bytes()[data.len() - 1];
    let value = ALPHABET.iter().position(|&c| c == last).unwrap();
    assert_eq!(value & 1, 0, "{b64} is not canonical already");
    let mut out = data[..data.len() - 1].to_string();
    out.push(char::from(ALPHABET[value | 1]));
    out.push_str(&b64[data.len()..]);
    out
}

/// `bytes` as the inside of a JSON string: CR, LF and the like as
/// escapes, so the text shows the exact octets.
fn json_text(bytes: &[u8]) -> String {
    let mut out = String::new();
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Compares a generated vector file with the stored one (writing it
/// first under `BLACKPONY_BLESS_VECTORS`).
fn check_stored(name: &str, now: &str) {
    let path = format!("{}/proto-spec/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("BLACKPONY_BLESS_VECTORS").is_some() {
        std::fs::write(&path, now).unwrap();
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(
        stored, now,
        "the implementation no longer produces the stored {name}"
    );
}

/// The stored file, parsed, for the tests that replay it.
fn stored_json(name: &str) -> serde_json::Value {
    let path = format!("{}/proto-spec/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}
