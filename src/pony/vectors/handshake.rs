//! The positive scenario of proto-spec Appendix A (§14 items 1–5):
//! `proto-spec/vectors/xpony-1-handshake.json`.

use super::super::channel::{Channel, MAX_BODY, MIN_FRAME, PAD_BLOCK, padding_for};
use super::super::keys::{encode_key, fingerprint};
use super::super::noise::{PROTOCOL_NAME, hex};
use super::{
    EHLO_LINE, EHLO_REPLY, GREETING, client_payload, continue_line, finish_line, fixed_key,
    handshake, json_text, scenario_prologue, server_hints, xpony_line,
};

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
    let pro = scenario_prologue();
    out.push_str("  ],\n");
    out.push_str(&format!("  \"greeting\": \"{}\",\n", json_text(GREETING)));
    out.push_str(&format!("  \"ehlo_line\": \"{}\",\n", json_text(EHLO_LINE)));
    out.push_str(&format!(
        "  \"ehlo_reply\": \"{}\",\n",
        json_text(EHLO_REPLY)
    ));
    out.push_str(&format!("  \"prologue\": \"{}\",\n", hex(&pro)));

    let p2 = server_hints().encode();
    let p3 = client_payload();
    let run = handshake(&p2, &p3);
    let lines = [
        xpony_line(&run.m1),
        continue_line(&run.m2),
        finish_line(&run.m3),
    ];
    for (i, ((m, p), line)) in [(&run.m1, &Vec::new()), (&run.m2, &p2), (&run.m3, &p3)]
        .into_iter()
        .zip(&lines)
        .enumerate()
    {
        out.push_str(&format!(
            "  \"message_{}\": {{\"payload\": \"{}\", \"noise\": \"{}\", \"smtp_line\": \"{}\"}},\n",
            i + 1,
            hex(p),
            hex(m),
            json_text(line.as_bytes())
        ));
    }
    out.push_str(&format!(
        "  \"handshake_hash\": \"{}\",\n",
        hex(&run.client.handshake_hash())
    ));
    assert_eq!(run.client.handshake_hash(), run.server.handshake_hash());

    let mut c = Channel::new(run.client);
    let mut s = Channel::new(run.server);
    let mut frames = Vec::new();
    let mut frame = |dir: &str, ch: &mut Channel, kind: u8, body: &[u8], pad: usize| {
        let mut wire = Vec::new();
        ch.seal_record(kind, body, pad, &mut wire).unwrap();
        frames.push(format!(
            "    {{\"direction\": \"{dir}\", \"type\": {kind}, \"body\": \"{}\", \"padding\": {pad}, \"frame\": \"{}\"}}",
            json_text(body),
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
    // The REKEY record was sealed with the old key; the sender now rekeys.
    c.rekey_send_after_record();
    let f4 = frame("c->s", &mut c, 0, b"QUIT\r\n", 0);
    let f5 = frame("s->c", &mut s, 0, b"221 2.0.0 Bye\r\n", 0);
    let f6 = frame("c->s", &mut c, 1, b"", 0);
    let f7 = frame("s->c", &mut s, 1, b"", 0);
    // The receiving sides open what was sent, in order.
    let (mut at_s, mut at_c) = (Vec::new(), Vec::new());
    for f in [&f1, &f3, &f4, &f6] {
        s.open(f, &mut at_s).unwrap();
    }
    for f in [&f2, &f5, &f7] {
        c.open(f, &mut at_c).unwrap();
    }
    assert_eq!(at_s, b"EHLO client.example.net\r\nQUIT\r\n");
    out.push_str("  \"frames\": [\n");
    out.push_str(&frames.join(",\n"));
    out.push_str("\n  ],\n");
    // proto-spec §5.4: the recommended padding, by body length (the frames
    // above use less, to stay short).
    let padded: Vec<String> = [
        0, 6, 15, 25, 237, 238, 493, 494, 16_384, 65_261, 65_262, MAX_BODY,
    ]
    .iter()
    .map(|&body| {
        let padding = padding_for(body, PAD_BLOCK);
        format!(
            "    {{\"body_length\": {body}, \"padding\": {padding}, \"frame_length\": {}}}",
            MIN_FRAME + body + padding
        )
    })
    .collect();
    out.push_str("  \"recommended_padding\": [\n");
    out.push_str(&padded.join(",\n"));
    out.push_str("\n  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_match_the_stored_file() {
        super::super::check_stored("xpony-1-handshake.json", &handshake_vector());
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
