//! The protocol's test vectors (proto-spec §14, Appendix A): produced by
//! this implementation from fixed keys, stored in `proto-spec/vectors/`,
//! and checked by `cargo test`. Set `BLACKPONY_BLESS_VECTORS=1` to write
//! the file anew after a deliberate change.

use sha2::{Digest, Sha256};

use super::channel::Channel;
use super::keys::{encode_key, fingerprint};
use super::negotiation::{ServerHints, encode_line, prologue};
use super::noise::{Initiator, KEY_LEN, Keypair, PROTOCOL_NAME, Responder, hex};

/// `SHA-256("xpony-1 test vector: " || role)` as a private key.
pub fn fixed_key(role: &str) -> Keypair {
    let digest: [u8; KEY_LEN] = Sha256::digest(format!("xpony-1 test vector: {role}")).into();
    Keypair::from_secret(digest)
}

const GREETING: &[u8] = b"220 mx.example.org ESMTP blackpony\r\n";
const EHLO_LINE: &[u8] = b"EHLO client.example.net";
const EHLO_REPLY: &[u8] = b"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250 XPONY Noise_XX_25519_ChaChaPoly_SHA256\r\n";

fn escaped(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace('\r', "\\r")
        .replace('\n', "\\n")
}

/// The whole scenario as JSON text (stable field order, one value per line).
pub fn handshake_vector() -> String {
    let roles = [
        "client static",
        "client ephemeral",
        "server static",
        "server ephemeral",
        "server successor",
    ];
    let mut out = String::from("{\n  \"protocol_name\": \"");
    out.push_str(PROTOCOL_NAME);
    out.push_str("\",\n  \"keys\": [\n");
    for (i, role) in roles.iter().enumerate() {
        let k = fixed_key(role);
        out.push_str(&format!(
            "    {{\"role\": \"{role}\", \"private\": \"{}\", \"public\": \"{}\", \"public_base64\": \"{}\", \"fingerprint\": \"{}\"}}{}\n",
            hex(k.secret_bytes().as_ref()),
            hex(&k.public()),
            encode_key(&k.public()),
            fingerprint(&k.public()),
            if i + 1 < roles.len() { "," } else { "" }
        ));
    }
    let pro = prologue(GREETING, EHLO_LINE, EHLO_REPLY);
    out.push_str("  ],\n");
    out.push_str(&format!("  \"greeting\": \"{}\",\n", escaped(GREETING)));
    out.push_str(&format!("  \"ehlo_line\": \"{}\",\n", escaped(EHLO_LINE)));
    out.push_str(&format!("  \"ehlo_reply\": \"{}\",\n", escaped(EHLO_REPLY)));
    out.push_str(&format!("  \"prologue\": \"{}\",\n", hex(&pro)));

    let hints = ServerHints {
        max_age: 2_592_000,
        successor: Some(fixed_key("server successor").public()),
        hostname: Some("mx.example.org".into()),
    };
    let p2 = hints.encode();
    let p3 = {
        let name = b"client.example.net";
        let mut v = vec![0x03, 0, name.len() as u8];
        v.extend_from_slice(name);
        v
    };
    let init = Initiator::new(
        &pro,
        fixed_key("client static"),
        fixed_key("client ephemeral"),
    );
    let resp = Responder::new(
        &pro,
        fixed_key("server static"),
        fixed_key("server ephemeral"),
    );
    // Every step of these fixed inputs succeeds; a failure is a test failure.
    let (init, m1) = init.write_message_1(&[]).expect("message 1");
    let (resp, _) = resp.read_message_1(&m1).expect("read 1");
    let (resp, m2) = resp.write_message_2(&p2).expect("message 2");
    let (init, _) = init.read_message_2(&m2).expect("read 2");
    let (client, m3) = init.write_message_3(&p3).expect("message 3");
    let (server, _) = resp.read_message_3(&m3).expect("read 3");
    let lines = [
        format!("XPONY {PROTOCOL_NAME} {}\r\n", encode_line(&m1)),
        format!("334 {}\r\n", encode_line(&m2)),
        format!("{}\r\n", encode_line(&m3)),
    ];
    for (i, ((m, p), line)) in [(&m1, &Vec::new()), (&m2, &p2), (&m3, &p3)]
        .into_iter()
        .zip(&lines)
        .enumerate()
    {
        out.push_str(&format!(
            "  \"message_{}\": {{\"payload\": \"{}\", \"noise\": \"{}\", \"smtp_line\": \"{}\"}},\n",
            i + 1,
            hex(p),
            hex(m),
            escaped(line.as_bytes())
        ));
    }
    out.push_str(&format!(
        "  \"handshake_hash\": \"{}\",\n",
        hex(&client.handshake_hash())
    ));
    assert_eq!(client.handshake_hash(), server.handshake_hash());

    let mut c = Channel::new(client);
    let mut s = Channel::new(server);
    let mut frames = Vec::new();
    let mut frame = |dir: &str, ch: &mut Channel, kind: u8, body: &[u8], pad: usize| {
        let mut wire = Vec::new();
        ch.seal_record(kind, body, pad, &mut wire).expect("seal");
        frames.push(format!(
            "    {{\"direction\": \"{dir}\", \"type\": {kind}, \"body\": \"{}\", \"padding\": {pad}, \"frame\": \"{}\"}}",
            escaped(body),
            hex(&wire)
        ));
        wire
    };
    let f1 = frame("c->s", &mut c, 0, b"EHLO client.example.net\r\n", 4);
    let f2 = frame(
        "s->c",
        &mut s,
        0,
        b"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
        0,
    );
    let f3 = frame("c->s", &mut c, 2, b"", 0);
    c_rekey(&mut c);
    let f4 = frame("c->s", &mut c, 0, b"QUIT\r\n", 0);
    let f5 = frame("s->c", &mut s, 0, b"221 2.0.0 Bye\r\n", 0);
    let f6 = frame("c->s", &mut c, 1, b"", 0);
    let f7 = frame("s->c", &mut s, 1, b"", 0);
    // The receiving sides open what was sent, in order.
    let (mut at_s, mut at_c) = (Vec::new(), Vec::new());
    for f in [&f1, &f3, &f4, &f6] {
        s.open(f, &mut at_s).expect("server opens");
    }
    for f in [&f2, &f5, &f7] {
        c.open(f, &mut at_c).expect("client opens");
    }
    assert_eq!(at_s, b"EHLO client.example.net\r\nQUIT\r\n");
    out.push_str("  \"frames\": [\n");
    out.push_str(&frames.join(",\n"));
    out.push_str("\n  ]\n}\n");
    out
}

/// The REKEY record was sealed with the old key; the sender now rekeys.
fn c_rekey(c: &mut Channel) {
    c.rekey_send_after_record();
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proto-spec/vectors/xpony-1-handshake.json"
    );

    #[test]
    fn vectors_match_the_stored_file() {
        let now = handshake_vector();
        if std::env::var_os("BLACKPONY_BLESS_VECTORS").is_some() {
            std::fs::write(FILE, &now).unwrap();
        }
        let stored =
            std::fs::read_to_string(FILE).expect("proto-spec/vectors/xpony-1-handshake.json");
        assert_eq!(
            stored, now,
            "the implementation no longer produces the stored vectors"
        );
    }

    /// The worked example of proto-spec Appendix A was computed by an
    /// independent implementation; ours must give the same bytes.
    #[test]
    fn appendix_a_agrees() {
        let v = handshake_vector();
        for expected in [
            "6a79a864b620e44db17a57d9c9e11c627469cf016bc67a383becf79deb41170e",
            "XPONY Noise_XX_25519_ChaChaPoly_SHA256 anmoZLYg5E2xelfZyeEcYnRpzwFrxno4O+z3netBFw4=\\r\\n",
            "334 ExrpU8BEJP7bGeGc5VL1jKMQs5zE7XkxtDMq/sRe6WT8FsK1q19lhPi+Yfy7eaR/GejyYxncLKoOnXqSmJMuSZLKJEvyVAaRAEHP85hQJ08gRh8I5q+RtPNI/xk1gljbbJI/z0YhjSnhMAn7Tus1SLT8D3Tu6W9xKAkl0ukaD2ddMZZ7RFkiXnkQ4Gkk0/M16ODFrEN1CJ9VV9Y=\\r\\n",
            "6ilYiywtyvCq3sqCPVOWOiVJox0IIwDXjxCfowOryN4EWAmUuviOd3deC5bB42xnE0gAwvFSO0YNCfLB4TmQ6uHOKgQ0fFcBdx99fOxrKgLrHG5nUQ==\\r\\n",
            "db680cde19a1055fd4f6affc3096de6fb924a719c0ff50ee5886cff8e07a0f5e",
            "SHA256:+2UO6LEmMqSM8wvii4x2Ky3MquqlsGHW6BqNyHgf/TU",
            "00300fe043da2e428f9f47b6554f1f5cb76948a9bada3eef7057a35b8364e5d8309b0f94d19e46996426e186b5c31a8c2e78",
            "0013e2682618bdab1cfdace440b6592788a56162b2",
            "0019f5070639bff3e4995e765c509c1275bb00b474c55741a44b04",
            "0013290c422184b67bd80f845484c9281350f8d1f5",
        ] {
            assert!(v.contains(expected), "missing {expected}");
        }
    }
}
