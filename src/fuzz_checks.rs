//! Invariants checked on arbitrary input, shared by the `cargo fuzz` targets
//! in `fuzz/` and by a deterministic run in the normal test suite (so CI
//! exercises them without a nightly toolchain). Each function panics when an
//! invariant is broken, which is what a fuzzer looks for.

use std::sync::Arc;

use crate::inbound::Identity;
use crate::inbound::session::{Session, SessionConfig};
use crate::smtp::command::{NextLine, next_line};
use crate::smtp::{BareNewlines, Command, DataScanner, DotStuffer, EhloReply, Reply, ReplyParser};

/// Reply parsing never panics, spans stay inside the input, and a parsed
/// reply formats back to something that parses to the same reply.
pub fn reply_parser(input: &[u8]) {
    let Ok(Some(span)) = ReplyParser::next_span(input) else {
        return;
    };
    assert!(span.len <= input.len() && span.lines >= 1);
    let reply = Reply::from_span(input, span);
    let wire = reply.to_bytes();
    let again = ReplyParser::next_span(&wire)
        .expect("formatted reply parses")
        .expect("formatted reply is complete");
    assert_eq!(again.len, wire.len());
    assert_eq!(Reply::from_span(&wire, again).code(), reply.code());
    let ehlo = EhloReply::parse(&reply);
    let _ = ehlo.size_limit();
    let _ = ehlo.to_reply().to_bytes();
    let _ = reply.enhanced_status();
}

/// Line splitting and command parsing never panic and never run past the input.
pub fn command_parser(input: &[u8]) {
    let mut rest = input;
    for _ in 0..input.len() + 1 {
        match next_line(rest) {
            NextLine::Line { line_len, consumed } => {
                assert!(line_len < consumed && consumed <= rest.len());
                let _ = Command::parse(&rest[..line_len]);
                rest = &rest[consumed..];
            }
            NextLine::TooLong { consumed } => {
                assert!(consumed > 0 && consumed <= rest.len());
                rest = &rest[consumed..];
            }
            NextLine::Incomplete => return,
        }
    }
}

/// The DATA scanner gives the same result however the input is split, never
/// leaves a bare CR or LF, and writes CRLF.CRLF only as its final five bytes.
/// A dot-stuffed message scans back to itself.
pub fn data_scanner(input: &[u8]) {
    let split = input.first().map_or(1, |&b| usize::from(b % 7) + 1);
    let mut whole = DataScanner::new();
    let mut out = Vec::new();
    let scan = whole.scan(input, &mut out);

    let mut pieces = DataScanner::new();
    let mut out2 = Vec::new();
    let mut used = 0;
    for chunk in input.chunks(split) {
        let s = pieces.scan(chunk, &mut out2);
        used += s.consumed;
        if s.end {
            break;
        }
    }
    assert_eq!(out, out2);
    assert_eq!(scan.consumed, used);

    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(&out);
    let ends = framed.windows(5).filter(|w| w == b"\r\n.\r\n").count();
    assert_eq!(ends, usize::from(scan.end));
    if scan.end {
        assert!(framed.ends_with(b"\r\n.\r\n"));
    }
    for (i, &b) in out.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r');
        }
        if b == b'\r' && i + 1 < out.len() {
            assert_eq!(out[i + 1], b'\n');
        }
    }

    let mut wire = Vec::new();
    let mut stuffer = DotStuffer::new();
    stuffer.push(input, &mut wire);
    stuffer.finish(&mut wire);
    let mut back = Vec::new();
    let s = DataScanner::new().scan(&wire, &mut back);
    assert!(s.end && s.consumed == wire.len());
    assert_eq!(back, wire);
}

/// The relay session survives anything from either side: the first byte of
/// each chunk says which side sent it. Whatever happens, the backend is only
/// ever sent complete CRLF-terminated lines or scanned message data, and the
/// buffers stay bounded.
pub fn inbound_session(input: &[u8]) {
    let config = SessionConfig {
        hostname: "mx.example".into(),
        identity: if input.first().is_some_and(|b| b & 1 == 1) {
            Identity::Xclient
        } else {
            Identity::ProxyV2
        },
        require_tls: input.get(1).is_some_and(|b| b & 1 == 1),
        bare_newlines: if input.get(2).is_some_and(|b| b & 1 == 1) {
            BareNewlines::Reject
        } else {
            BareNewlines::Normalize
        },
        trace_header: true,
        // XPONY offered too, so its command and message 3 paths get hit.
        pony: input.get(3).is_some_and(|b| b & 1 == 1).then(|| {
            Arc::new(crate::pony::negotiation::ServerIdentity {
                key: crate::pony::noise::Keypair::from_secret([7; 32]),
                hints: crate::pony::negotiation::ServerHints::default(),
            })
        }),
        error_limits: Default::default(),
    };
    let mut session = Session::new(
        Arc::new(config),
        "192.0.2.1:1000".parse().expect("literal address"),
        "127.0.0.1:25".parse().expect("literal address"),
    );
    for chunk in input.split(|&b| b == 0xff) {
        let Some((&selector, data)) = chunk.split_first() else {
            continue;
        };
        match selector % 6 {
            0 | 1 => session.client_input(data),
            2 | 3 => session.backend_input(data),
            4 => session.tls_established(crate::transport::Encryption::Tls {
                version: "TLSv1.3",
                cipher: "TLS_AES_128_GCM_SHA256".into(),
            }),
            _ => session.timeout(),
        }
        while let Some(action) = session.poll_action() {
            if let crate::inbound::session::Action::Delay(_) = action {
                session.delay_over();
            }
        }
        session.to_client.clear();
        session.to_backend.clear();
        if session.is_closed() {
            break;
        }
    }
}

/// Two ends of an XPONY channel from fixed keys (the fuzzer wants the same
/// input to do the same thing every time).
fn fixed_channel_pair() -> (crate::pony::channel::Channel, crate::pony::channel::Channel) {
    use crate::pony::noise::{Keypair, handshake_in_memory};
    let key = |n: u8| Keypair::from_secret([n; 32]);
    let (i, r) = handshake_in_memory(b"fuzz", (key(1), key(2)), (key(3), key(4)))
        .expect("a handshake between fixed keys");
    (
        crate::pony::channel::Channel::new(i),
        crate::pony::channel::Channel::new(r),
    )
}

/// XPONY frames (proto-spec §5): arbitrary bytes on the wire never panic,
/// never yield more plaintext than arrived, and once the channel has failed
/// it stays failed; and whatever is sealed opens to the same bytes, however
/// the wire is cut into reads.
pub fn pony_frames(input: &[u8]) {
    let (mut sender, mut receiver) = fixed_channel_pair();
    // Hostile wire: the first byte picks the read size.
    let step = usize::from(input.first().copied().unwrap_or(1)).max(1);
    let mut buffered = Vec::new();
    let mut plaintext = Vec::new();
    for chunk in input.chunks(step) {
        buffered.extend_from_slice(chunk);
        match receiver.open(&buffered, &mut plaintext) {
            Ok(opened) => {
                buffered.drain(..opened.consumed);
            }
            Err(_) => break,
        }
        assert!(plaintext.len() <= input.len(), "more plaintext than input");
    }

    // Round trip, read back in pieces of `step` octets.
    let (mut wire, mut back) = (Vec::new(), Vec::new());
    sender
        .seal_data(input, &mut wire)
        .expect("sealing a short record");
    sender.seal_close(&mut wire).expect("sealing CLOSE");
    let mut receiver = fixed_channel_pair().1;
    let mut buffered = Vec::new();
    for chunk in wire.chunks(step) {
        buffered.extend_from_slice(chunk);
        let opened = receiver
            .open(&buffered, &mut back)
            .expect("our own frames open");
        buffered.drain(..opened.consumed);
    }
    assert_eq!(back, input, "a sealed record opens to what was sealed");
    assert!(receiver.peer_closed(), "CLOSE arrives");
}

/// The handshake payloads and DNS key records (proto-spec §4.4, §8.2):
/// parsers never panic, and what they accept round-trips.
pub fn pony_payloads(input: &[u8]) {
    use crate::pony::keys::{DnsRecord, dns_record, parse_dns_record};
    use crate::pony::negotiation::{ServerHints, check_message_1_payload, decode_line};
    let _ = check_message_1_payload(input);
    if let Ok(hints) = ServerHints::decode(input) {
        assert_eq!(ServerHints::decode(&hints.encode()), Ok(hints));
    }
    let text = String::from_utf8_lossy(input);
    if let DnsRecord::Key { key, .. } = parse_dns_record(&text) {
        assert_eq!(
            parse_dns_record(&dns_record(&key)),
            DnsRecord::Key {
                key,
                testing: false
            }
        );
    }
    if let Some(message) = decode_line(&text) {
        assert_eq!(
            decode_line(&crate::pony::negotiation::encode_line(&message)),
            Some(message)
        );
    }
}

/// The 8BITMIME downgrade (RFC 6152 §3) never panics, and the message
/// keeps its DATA form: one end of data, at the end.
pub fn mime_downgrade(input: &[u8]) {
    let mut wire = Vec::new();
    let mut stuffer = DotStuffer::new();
    stuffer.push(input, &mut wire);
    stuffer.finish(&mut wire);
    if let Some(out) = crate::smtp::mime::downgrade_8bit(&wire) {
        assert!(out.ends_with(b"\r\n.\r\n") || out == b".\r\n");
        let body = &out[..out.len() - 3];
        assert!(
            !body.windows(5).any(|w| w == b"\r\n.\r\n"),
            "end of data inside"
        );
    }
}

/// The MTA-STS policy and TXT parsers (RFC 8461 §3) never panic; a policy
/// they accept keeps the RFC's bounds (max_age capped, mx unless mode none),
/// its patterns print back to themselves, and an accepted id is 1 to 32
/// letters and digits.
pub fn sts_policy(input: &[u8]) {
    use crate::outbound::sts::{self, Discovery, MAX_AGE_CAP, Mode, MxPattern};
    if let Ok(policy) = sts::parse_policy(input) {
        assert!(policy.max_age <= MAX_AGE_CAP);
        assert!(policy.mode == Mode::None || !policy.mx.is_empty());
        for pattern in &policy.mx {
            let text = pattern.to_string();
            assert_eq!(MxPattern::parse(&text).as_ref(), Some(pattern));
            let host = text
                .strip_prefix("*.")
                .map_or(text.clone(), |d| format!("mx.{d}"));
            assert!(pattern.matches(&host), "{text} does not match {host}");
        }
    }
    let text = String::from_utf8_lossy(input);
    let records: Vec<String> = text.split('\n').map(str::to_string).collect();
    if let Discovery::Id(id) = sts::parse_txt(&records) {
        assert!((1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}

/// A small deterministic generator for running the checks in `cargo test`.
#[cfg(test)]
pub(crate) fn pseudo_random_inputs(seed: u64, count: usize, alphabet: &[u8]) -> Vec<Vec<u8>> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            let len = (next() % 300) as usize;
            (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMTP_ALPHABET: &[u8] = b"\r\n.\r\n. 0123456789-- EHLO MAIL DATA STARTTLS XCLIENT AUTH 250 354 220 334 \xff\x00\x01\x02\x03\x04\x05";

    #[test]
    fn checks_hold_on_pseudo_random_input() {
        for input in pseudo_random_inputs(0x5eed, 3000, SMTP_ALPHABET) {
            reply_parser(&input);
            command_parser(&input);
            data_scanner(&input);
            inbound_session(&input);
            pony_payloads(&input);
            mime_downgrade(&input);
        }
        for input in pseudo_random_inputs(0xf4a3e, 100, &[0, 1, 2, 3, 19, 20, 0xff, 0x42]) {
            pony_frames(&input);
        }
        for input in pseudo_random_inputs(0x575, 3000, STS_ALPHABET) {
            sts_policy(&input);
        }
    }

    const STS_ALPHABET: &[u8] =
        b"version: STSv1\r\nmode: enforce testing none\nmx: *.a.b-c.example\nmax_age: 0123456789 ;=v=STSv1; id=\t\xff";

    /// Valid policies and records do turn up: the check sees more than junk.
    #[test]
    fn sts_check_on_real_policies() {
        sts_policy(b"version: STSv1\r\nmode: enforce\r\nmx: *.example.org\r\nmx: mx.example.net\r\nmax_age: 86400\r\n");
        sts_policy(b"v=STSv1; id=20190429T010101;");
    }

    /// Valid frames and records do turn up: the checks see more than junk.
    #[test]
    fn pony_checks_on_real_frames() {
        let (mut sender, _) = fixed_channel_pair();
        let mut wire = vec![7];
        sender.seal_data(b"EHLO x\r\n", &mut wire).unwrap();
        sender.seal_close(&mut wire).unwrap();
        pony_frames(&wire);
        pony_payloads(b"v=XPONY1; k=x25519; p=StN2G5wEsAhmLNu08/pLAMZip7m2AWVz+tN4+JSBZnw=");
        pony_payloads(&crate::pony::negotiation::ServerHints::default().encode());
    }
}
