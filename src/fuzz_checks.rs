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

/// The sealed relay's plaintext format (proto-spec `sealed-relay.md`,
/// "Spool file format"): what `parse` accepts formats back to the very
/// same bytes (so nothing can hide in a header the writer would not
/// write), and an envelope `format` accepts parses back to itself with the
/// message untouched (what the relay seals, the home side can read: no
/// lost mail). The input also serves as an envelope: fields split at `|`.
pub fn sealed_format(input: &[u8]) {
    use crate::relay::sealed::{self, MAX_RECIPIENTS, SealedEnvelope};
    if let Ok((envelope, message)) = sealed::parse(input) {
        assert!((1..=MAX_RECIPIENTS).contains(&envelope.rcpt_to.len()));
        let again = sealed::format(&envelope, message).expect("a parsed envelope formats");
        assert_eq!(
            again, input,
            "a parsed sealed file formats to its own bytes"
        );
    }
    let text = String::from_utf8_lossy(input);
    let mut fields = text.split('|').map(str::to_string);
    let envelope = SealedEnvelope {
        mail_from: fields.next().unwrap_or_default(),
        rcpt_to: fields.collect(),
    };
    if let Ok(bytes) = sealed::format(&envelope, input) {
        let (back, message) = sealed::parse(&bytes).expect("what format writes parses");
        assert_eq!(back, envelope);
        assert_eq!(message, input);
    }
}

/// A fixed age key pair for [`sealed_open`] (the fuzzer wants the same
/// input to do the same thing every time).
fn fixed_age_identity() -> age::x25519::Identity {
    "AGE-SECRET-KEY-10PRL9XDGJNH25FDRF23ANLN5QHNL00C4NEKZUQLMMAVMNE6PTUWQT2D6FK"
        .parse()
        .expect("a fixed age identity")
}

/// A sealed file as the home side gets it from a relay it need not trust:
/// opening arbitrary bytes never panics; and a message sealed the way
/// `seal` seals it (DATA form, dot-stuffed) opens to its envelope and the
/// dot-unstuffed message.
pub fn sealed_open(input: &[u8]) {
    use crate::relay::seal;
    use crate::relay::sealed::SealedEnvelope;
    let identity = fixed_age_identity();
    let identities: seal::Identities = vec![Box::new(identity.clone())];
    let _ = seal::open(&identities, input);

    let mut wire = Vec::new();
    let mut stuffer = DotStuffer::new();
    stuffer.push(input, &mut wire);
    stuffer.finish(&mut wire);
    let envelope = SealedEnvelope {
        mail_from: String::new(),
        rcpt_to: vec!["a@example.org".into()],
    };
    let file = seal::seal(&[identity.to_public()], &envelope, &wire).expect("sealing a message");
    let (back, message) = seal::open(&identities, &file).expect("our own sealed file opens");
    assert_eq!(back, envelope);
    let mut unstuffed = Vec::new();
    crate::smtp::data::unstuff_to(&wire, &mut unstuffed).expect("writing into a Vec");
    assert_eq!(message, unstuffed);
    assert!(message.is_empty() || message.ends_with(b"\r\n"));
}

/// XFETCH (proto-spec/fetch.md). The relay's side: a command line the
/// grammar accepts prints back to itself, its id names a spool file that
/// stays in the spool directory, and `check` passes a request only to an
/// authorized key inside the channel after EHLO outside a transaction
/// (§5, F1 to F6). The home side: a hostile relay's bytes never panic
/// the client, never hand over more octets than arrived or than the size
/// limit, and every answer is to a command it sent; what a relay writes
/// for a script of commands reads back as exactly those answers however
/// the bytes are cut.
pub fn xfetch(input: &[u8]) {
    use crate::relay::xfetch::{
        self, FetchClient, FetchEvent, FetchKeys, Protection, Request, SessionFacts,
    };
    use crate::smtp::replies;
    let head = |i: usize| input.get(i).copied().unwrap_or(0);

    for line in input.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(request) = xfetch::parse(line) else {
            continue;
        };
        assert!(xfetch::is_command(line));
        let text = request.to_line();
        let again = text
            .strip_suffix("\r\n")
            .expect("a command line ends in CRLF");
        assert_eq!(xfetch::parse(again.as_bytes()).as_ref(), Some(&request));
        if let Request::Delete(id) = &request {
            assert!(xfetch::valid_id(id));
            let spool_id: crate::state::SpoolId = id.parse().expect("a fetch id is a spool id");
            assert_eq!(spool_id.as_str(), id);
        }
    }

    let ours: crate::pony::keys::PublicKey = [1; 32];
    let keys = FetchKeys::new(if head(0) & 1 == 1 { vec![ours] } else { vec![] });
    let peer = if head(0) & 2 == 2 { ours } else { [2; 32] };
    let facts = SessionFacts {
        protection: match head(1) % 3 {
            0 => Protection::Plain,
            1 => Protection::Tls,
            _ => Protection::Xpony(peer),
        },
        hello: head(2) & 1 == 1,
        in_transaction: head(2) & 2 == 2,
    };
    let line = input.get(3..).unwrap_or_default();
    match xfetch::check(&keys, &facts, line) {
        Ok(request) => {
            assert!(!keys.is_empty() && facts.hello && !facts.in_transaction);
            assert_eq!(facts.protection, Protection::Xpony(ours));
            assert_eq!(xfetch::parse(line), Some(request));
        }
        Err(refusal) => {
            assert!(refusal.reply.code() >= 500);
            assert_eq!(refusal.unauthorized.is_some(), refusal.reply.code() == 535);
        }
    }

    // The home side against hostile bytes: the first byte picks the
    // commands sent, the second the size limit, the third the read size.
    let caps = crate::smtp::EhloReply::parse(&Reply::multiline(
        250,
        vec!["relay.example".into(), xfetch::KEYWORD.into()],
    ));
    let limit = u64::from(head(1));
    let step = usize::from(head(2)).max(1);
    let mut client = FetchClient::new(&caps, limit).expect("XFETCH is offered");
    let mut sent = 0;
    for bit in 0..8 {
        match (head(0) >> bit) & 3 {
            0 => client.next(),
            1 => client.delete("id-1"),
            2 => client.next(),
            _ => client.quit(),
        }
        sent += 1;
    }
    let wire = input.get(3..).unwrap_or_default();
    let (mut answers, mut octets) = (0, 0);
    'read: for chunk in wire.chunks(step) {
        client.receive(chunk);
        loop {
            match client.poll() {
                Ok(None) => break,
                Ok(Some(event)) => {
                    answers += 1;
                    assert!(answers <= sent, "more answers than commands");
                    match event {
                        FetchEvent::Message { id, sealed } => {
                            assert!(xfetch::valid_id(&id));
                            assert!(sealed.len() as u64 <= limit);
                            octets += sealed.len();
                            assert!(octets <= wire.len());
                        }
                        FetchEvent::Deleted { id } => assert_eq!(id, "id-1"),
                        FetchEvent::Empty | FetchEvent::Bye => {}
                    }
                }
                Err(_) => break 'read,
            }
        }
    }

    // A relay's script: each input byte is one answer, the sealed files
    // cut from the input itself (so they look like replies too).
    let mut client = FetchClient::new(&caps, u64::MAX).expect("XFETCH is offered");
    let (mut relay, mut want) = (Vec::new(), Vec::new());
    for (n, &b) in input.iter().enumerate().take(16) {
        match b % 4 {
            0 => {
                let id = format!("m{n}.x");
                let sealed = input[n..]
                    .iter()
                    .copied()
                    .take(usize::from(b))
                    .collect::<Vec<u8>>();
                client.next();
                xfetch::write_message(&id, &sealed, &mut relay);
                want.push(FetchEvent::Message { id, sealed });
            }
            1 => {
                client.next();
                replies::fetch_empty().write_to(&mut relay);
                want.push(FetchEvent::Empty);
            }
            2 => {
                let id = format!("{n}_{b}");
                client.delete(&id);
                replies::fetch_deleted(&id).write_to(&mut relay);
                want.push(FetchEvent::Deleted { id });
            }
            _ => {
                client.quit();
                replies::bye().write_to(&mut relay);
                want.push(FetchEvent::Bye);
            }
        }
    }
    let mut got = Vec::new();
    for chunk in relay.chunks(step) {
        client.receive(chunk);
        while let Some(event) = client.poll().expect("our relay's answers read back") {
            got.push(event);
        }
    }
    assert_eq!(got, want);
    assert!(!client.waiting());
}

/// The DNS TXT records read when sending (one record a line of input):
/// `_smtp._tls` (RFC 8460 §3), `_mta-sts` (RFC 8461 §3.1) and
/// `_xpony._tcp` (proto-spec §8.2). Each accepts exactly one record of its
/// own kind, so the same records twice are refused (§3: more than one
/// record means none); a TLS-RPT destination is a trimmed URI, a mailto:
/// one an address that can go into RCPT TO; and every XPONY key found is
/// the key of one of the records and prints back to a record of itself.
pub fn dns_txt(input: &[u8]) {
    use crate::outbound::sts::{self, Discovery};
    use crate::outbound::tlsrpt::{self, Rua};
    use crate::pony::keys::{DnsRecord, dns_record, parse_dns_record, parse_dns_records};
    let text = String::from_utf8_lossy(input);
    let records: Vec<String> = text.split('\n').map(str::to_string).collect();
    let twice: Vec<String> = records.iter().chain(&records).cloned().collect();

    if let Ok(destinations) = tlsrpt::parse_policy_record(&records) {
        assert!(!destinations.is_empty());
        assert!(
            tlsrpt::parse_policy_record(&twice).is_err(),
            "two records taken"
        );
        for rua in &destinations {
            let (Rua::Mailto(uri) | Rua::Https(uri) | Rua::Other(uri)) = rua;
            assert!(!uri.is_empty() && uri.trim() == uri && !uri.contains([',', ';']));
            match rua {
                Rua::Mailto(address) => {
                    assert!(
                        crate::smtp::envelope::address_is_sane(address),
                        "{address:?}"
                    );
                    assert!(
                        crate::smtp::envelope::domain_of(address).is_some(),
                        "{address:?}"
                    );
                }
                Rua::Https(url) => assert!(url.to_ascii_lowercase().starts_with("https:")),
                Rua::Other(_) => {}
            }
        }
    }

    if let Discovery::Id(id) = sts::parse_txt(&records) {
        let alone = [format!("v=STSv1; id={id}")];
        assert!(matches!(sts::parse_txt(&alone), Discovery::Id(again) if again == id));
        assert!(
            !matches!(sts::parse_txt(&twice), Discovery::Id(_)),
            "two records taken"
        );
    }

    let keys = parse_dns_records(&records);
    assert!(keys.len() <= records.len());
    for key in &keys {
        assert!(records.iter().any(|r| matches!(
            parse_dns_record(r),
            DnsRecord::Key { key: k, testing: false } if k == *key
        )));
        assert_eq!(parse_dns_records(&[dns_record(key)]), vec![*key]);
    }
}

/// State files read back from disk (another process, an older version, a
/// crash or an operator may have left anything there): the pin of an MX
/// host (`<state-dir>/pins/`), the MTA-STS policy cache, a host key file
/// and a spool id. Whatever reads as a value writes back to text that
/// reads as the same value; a fetch id is always a spool id.
pub fn state_files(input: &[u8]) {
    use crate::pony::keys::{encode_key, parse_key_file};
    use crate::pony::pins;
    use crate::state::sts_cache;
    let text = String::from_utf8_lossy(input);
    if let Some(pin) = pins::parse(&text) {
        assert_eq!(pins::parse(&pins::encode("mx.example", &pin)), Some(pin));
    }
    if let Some(record) = sts_cache::decode(&text) {
        assert_eq!(sts_cache::decode(&sts_cache::encode(&record)), Some(record));
    }
    if let Some(keypair) = parse_key_file(&text) {
        let again = parse_key_file(&crate::pony::keys::key_file_text(&keypair))
            .expect("a written key file reads");
        assert_eq!(encode_key(&again.public()), encode_key(&keypair.public()));
    }
    for line in text.lines() {
        if let Ok(id) = line.parse::<crate::state::SpoolId>() {
            assert_eq!(id.to_string(), line);
        }
        if crate::relay::xfetch::valid_id(line) {
            assert!(line.parse::<crate::state::SpoolId>().is_ok(), "{line:?}");
        }
    }
}

/// The relay's fetch listener (`seal --fetch-listen`, proto-spec/fetch.md)
/// against a hostile client, the first byte of each chunk saying what
/// happens (client bytes, or the I/O loop serving a pending XFETCH line):
/// what goes back is always whole replies, the greeting first; an XFETCH
/// line is handed to the fetch server only as a line of that verb, and
/// served only to an authorized key in the channel (never here, where no
/// channel is ever established).
pub fn fetch_session(input: &[u8]) {
    use crate::relay::fetch_server::{FetchSession, ListenerConfig, SessionAction};
    use crate::relay::xfetch::{self, FetchKeys};
    let keys = FetchKeys::new(vec![[1; 32]]);
    let config = ListenerConfig {
        hostname: "relay.example".into(),
        identity: Arc::new(crate::pony::negotiation::ServerIdentity {
            key: crate::pony::noise::Keypair::from_secret([7; 32]),
            hints: crate::pony::negotiation::ServerHints::default(),
        }),
        keys: keys.clone(),
        timeouts: Default::default(),
    };
    let mut session = FetchSession::new(Arc::new(config));
    let mut out = std::mem::take(&mut session.out);
    assert!(out.starts_with(b"220 "));
    'chunks: for chunk in input.split(|&b| b == 0xff) {
        session.input(chunk);
        loop {
            let action = session.poll();
            out.append(&mut session.out);
            match action {
                None => break,
                Some(SessionAction::Fetch { line, facts }) => {
                    assert!(xfetch::is_command(&line));
                    let refusal = xfetch::check(&keys, &facts, &line)
                        .expect_err("XFETCH outside a channel is refused");
                    refusal.reply.write_to(&mut session.out);
                }
                Some(SessionAction::SwitchToPony | SessionAction::Close) => break 'chunks,
            }
        }
    }
    out.append(&mut session.out);
    let mut rest = &out[..];
    while !rest.is_empty() {
        let span = ReplyParser::next_span(rest)
            .expect("the session writes well-formed replies")
            .expect("the session writes whole replies");
        rest = &rest[span.len..];
    }
}

/// The receiving session (`smtp::server`: the sealed relay's MX, and the
/// LMTP/SMTP face of the outbound transport) against a hostile client, the
/// first bytes choosing the protocol and options, the first byte of each
/// chunk whether the client sends it or the I/O loop answers (accept or
/// refuse). Every message handed out has a sane envelope within the
/// limits, is in DATA form with one end of data, at the end, and keeps the
/// content rules (no bare CR or LF, no NUL when refused); what the relay
/// would seal of it reads back (no lost mail); the output is whole
/// replies.
pub fn receive_session(input: &[u8]) {
    use crate::relay::sealed::{self, SealedEnvelope};
    use crate::smtp::envelope::address_is_sane;
    use crate::smtp::server::{
        MAX_RECIPIENTS, Protocol, ReceiveEvent, ReceiveOptions, ReceiveSession,
    };
    let head = |i: usize| input.get(i).copied().unwrap_or(0);
    let protocol = if head(0) & 1 == 1 {
        Protocol::Lmtp
    } else {
        Protocol::Smtp
    };
    let options = ReceiveOptions {
        starttls: head(0) & 2 == 2,
        bare_newlines: if head(0) & 4 == 4 {
            BareNewlines::Reject
        } else {
            BareNewlines::Normalize
        },
        refuse_nul: head(0) & 8 == 8,
    };
    let limit = 16 + u64::from(head(1));
    let mut session = ReceiveSession::new(protocol, "mx.example", limit).with_options(options);
    if head(0) & 16 == 16 {
        session = session.with_pony(Arc::new(crate::pony::negotiation::ServerIdentity {
            key: crate::pony::noise::Keypair::from_secret([7; 32]),
            hints: crate::pony::negotiation::ServerHints::default(),
        }));
    }
    let check_message = |envelope: &crate::smtp::Envelope, wire: &[u8]| {
        assert!(envelope.sender.is_empty() || address_is_sane(&envelope.sender));
        assert!((1..=MAX_RECIPIENTS).contains(&envelope.recipients.len()));
        assert!(envelope.recipients.iter().all(|r| address_is_sane(r)));
        assert!(
            wire.len() as u64 <= limit + 3,
            "{} octets over {limit}",
            wire.len()
        );
        let mut framed = b"\r\n".to_vec();
        framed.extend_from_slice(wire);
        assert!(framed.ends_with(b"\r\n.\r\n"));
        assert_eq!(framed.windows(5).filter(|w| w == b"\r\n.\r\n").count(), 1);
        for (i, &b) in wire.iter().enumerate() {
            assert!(b != b'\n' || (i > 0 && wire[i - 1] == b'\r'), "bare LF");
            assert!(b != b'\r' || wire.get(i + 1) == Some(&b'\n'), "bare CR");
            assert!(b != 0 || !options.refuse_nul, "NUL");
        }
        let mut message = Vec::new();
        crate::smtp::data::unstuff_to(wire, &mut message).expect("writing into a Vec");
        let envelope = SealedEnvelope {
            mail_from: envelope.sender.clone(),
            rcpt_to: envelope.recipients.clone(),
        };
        let file = sealed::format(&envelope, &message).expect("an accepted envelope seals");
        let (back, body) = sealed::parse(&file).expect("what is sealed reads back");
        assert_eq!((back, body), (envelope, &message[..]));
    };
    'chunks: for chunk in input.get(2..).unwrap_or_default().split(|&b| b == 0xff) {
        let Some((&selector, data)) = chunk.split_first() else {
            continue;
        };
        match selector % 8 {
            0 => session.eof(),
            1 => session.shutting_down(),
            _ => session.input(data),
        }
        // Each event is answered at once, accepted unless the selector's
        // high bit says refuse.
        let refuse = selector & 0x80 == 0x80;
        let answer = |ok: u16| Reply::new(if refuse { 550 } else { ok }, "x");
        for _ in 0..input.len() + 8 {
            let Some(event) = session.poll_event() else {
                break;
            };
            match event {
                ReceiveEvent::Deliver { envelope, wire } => {
                    check_message(&envelope, &wire);
                    let replies = vec![answer(250); envelope.recipients.len()];
                    session.delivered(&replies);
                }
                ReceiveEvent::EndOfData { envelope, wire } => {
                    check_message(&envelope, &wire);
                    session.answer(&answer(250));
                }
                ReceiveEvent::Recipient { sender, recipient } => {
                    assert!(sender.is_empty() || address_is_sane(&sender));
                    assert!(!recipient.is_empty() && address_is_sane(&recipient));
                    session.answer(&answer(250));
                }
                ReceiveEvent::Data => session.answer(&answer(354)),
                ReceiveEvent::StartTls => session.tls_established(),
                ReceiveEvent::StartPony | ReceiveEvent::Close => break 'chunks,
                ReceiveEvent::XponyFailed { .. } | ReceiveEvent::Reset => {}
            }
        }
        assert!(session.message_bytes() <= limit + 3);
        if session.is_closed() {
            break;
        }
    }
    let mut rest = &session.output[..];
    assert!(rest.starts_with(b"220 "));
    while !rest.is_empty() {
        let span = ReplyParser::next_span(rest)
            .expect("the session writes well-formed replies")
            .expect("the session writes whole replies");
        rest = &rest[span.len..];
    }
}

/// Canned server replies for [`client_session`]: a chunk can pick whole
/// replies by index, so a short input reaches deep into the dialogue.
const CANNED_REPLIES: &[&[u8]] = &[
    b"220 mx.example ESMTP\r\n",
    b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n250 STARTTLS\r\n",
    b"250-mx.example\r\n250-XPONY Noise_XX_25519_ChaChaPoly_SHA256\r\n250 STARTTLS\r\n",
    b"250-mx.example\r\n250 SIZE 10\r\n",
    b"250 2.0.0 ok\r\n",
    b"354 go ahead\r\n",
    b"221 2.0.0 bye\r\n",
    b"421 4.4.2 closing\r\n",
    b"451 4.3.0 try later\r\n",
    b"550 5.1.1 no such user\r\n",
    b"500 5.5.1 what\r\n",
    b"334 AAAA\r\n",
    b"220 go ahead\r\n",
    b"250 ok\n",
    b"252 2.1.5 maybe\r\n",
    b"250-mx.example\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n",
];

/// The outbound client session (`smtp::client`) against a hostile MX: the
/// first two bytes choose the session (STARTTLS policy, LMTP, kept open,
/// XPONY offered or required, 8-bit, NUL; recipients), then each chunk's
/// first byte whether the server sends bytes (raw, or canned replies by
/// index), the TLS handshake finishes, the caller acts on a step, or the
/// connection is lost. Whatever the server says: the buffer of unparsed
/// bytes stays within one reply's bounds; the client writes whole command
/// lines (the message only after the server's 354, and nothing of the
/// transaction in plaintext when TLS or XPONY is required); and every
/// outcome is clear: one result per recipient, in order, a 2xx only as the
/// reply to the final dot of a message that went out, "uncertain" only
/// when the connection was lost after it went out. Returns how many
/// messages were delivered (for the tests: sessions do get that far).
pub fn client_session(input: &[u8]) -> usize {
    use crate::smtp::client::{
        ClientSession, HostFailure, PonyOffer, SessionOutcome, StartTls, Step,
    };
    use crate::smtp::envelope::{ContentFacts, Envelope};
    use crate::smtp::limits::{MAX_REPLY_LINE, MAX_REPLY_LINES};
    let head = |i: usize| input.get(i).copied().unwrap_or(0);
    let starttls = match head(0) & 3 {
        0 => StartTls::Never,
        1 => StartTls::IfOffered,
        _ => StartTls::Required,
    };
    let (lmtp, keep_open) = (head(0) & 4 == 4, head(0) & 8 == 8);
    let pony_required = head(0) & 0x30 == 0x30;
    let message: &[u8] = match head(0) >> 6 {
        0 | 1 => b"Subject: x\r\nX-Fuzz: 7f3a\r\n\r\n.dot\r\n",
        2 => b"Subject: \xe9\r\nX-Fuzz: 7f3a\r\n\r\nbody\r\n",
        _ => b"Subject: x\r\nX-Fuzz: 7f3a\r\n\r\nn\0l\r\n",
    };
    let marker = b"X-Fuzz: 7f3a";
    let recipients: Vec<String> = (0..=head(1) % 4)
        .map(|n| format!("r{n}@mx.example"))
        .collect();
    let envelope = Envelope {
        sender: "s@client.example".into(),
        recipients: recipients.clone(),
    };
    let mut wire = Vec::new();
    let mut stuffer = DotStuffer::new();
    stuffer.push(message, &mut wire);
    stuffer.finish(&mut wire);
    let content = ContentFacts::of(message);
    let mut session = ClientSession::new(
        "client.example",
        starttls,
        envelope.clone(),
        content,
        wire.clone(),
    );
    if lmtp {
        session = session.lmtp();
    }
    if keep_open {
        session = session.keep_open();
    }
    if head(0) & 0x10 == 0x10 {
        session = session.with_pony(PonyOffer {
            key: crate::pony::noise::Keypair::from_secret([5; 32]),
            required: pony_required,
        });
    }

    let mut encrypted = false;
    let mut step = Step::Continue;
    // This transaction's message went out; the server answered after it.
    let (mut message_out, mut answered_after) = (false, false);
    let mut transactions = 1;
    let (mut lost, mut delivered, mut counted) = (false, 0, false);
    let bound = MAX_REPLY_LINE * MAX_REPLY_LINES;
    for chunk in input.get(2..).unwrap_or_default().split(|&b| b == 0xff) {
        let Some((&selector, data)) = chunk.split_first() else {
            continue;
        };
        let mut fed = false;
        // The I/O loop reads nothing while the caller owes a TLS
        // handshake or the switch to XPONY.
        let reading = !matches!(step, Step::StartTls | Step::SwitchToPony);
        match selector % 8 {
            0..=3 if reading => {
                step = session.receive(data);
                fed = true;
            }
            4 if reading => {
                let canned: Vec<u8> = data
                    .iter()
                    .flat_map(|&b| CANNED_REPLIES[usize::from(b) % CANNED_REPLIES.len()].iter())
                    .copied()
                    .collect();
                step = session.receive(&canned);
                fed = true;
            }
            0..=4 => {}
            5 => {
                if step == Step::StartTls {
                    session.tls_established();
                    encrypted = true;
                    step = Step::Continue;
                }
            }
            6 => match &step {
                Step::CheckServerKey { .. } => {
                    if selector & 0x80 == 0x80 {
                        session.xpony_reject("refused".into());
                    } else {
                        step = session.xpony_accept();
                    }
                }
                Step::SwitchToPony => {
                    assert!(session.take_pony().is_some());
                    session.pony_established();
                    encrypted = true;
                    step = Step::Continue;
                }
                Step::Ready if transactions < 4 => {
                    assert!(session.next_transaction(envelope.clone(), content, wire.clone()));
                    transactions += 1;
                    (message_out, answered_after, counted) = (false, false, false);
                    step = Step::Continue;
                }
                _ => {}
            },
            _ => {
                session.connection_lost();
                lost = true;
            }
        }
        if fed && message_out {
            answered_after = true;
        }
        assert!(
            session.buffered() <= bound || matches!(step, Step::Done),
            "{} octets buffered",
            session.buffered()
        );

        // What the client wrote: whole lines; the message only after a
        // 354 arrived, and once; no transaction in plaintext when the
        // policy requires encryption.
        let out = std::mem::take(&mut session.outgoing);
        if let Some(at) = out.windows(marker.len()).position(|w| w == marker) {
            assert!(
                fed && !message_out,
                "the message went out unasked, or twice"
            );
            assert!(!content.nul, "a message with NUL went out");
            assert!(at == 0 || out[..at].ends_with(b"\r\n"));
            message_out = true;
        }
        assert!(out.is_empty() || out.ends_with(b"\r\n"));
        let required = starttls == StartTls::Required || pony_required;
        if required && !encrypted {
            for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let verb = line.split(|&b| b == b' ').next().unwrap_or_default();
                assert!(
                    [
                        &b"EHLO"[..],
                        b"LHLO",
                        b"HELO",
                        b"STARTTLS\r",
                        b"XPONY",
                        b"*\r",
                        b"QUIT\r"
                    ]
                    .contains(&verb),
                    "{:?} in plaintext under a policy that requires encryption",
                    String::from_utf8_lossy(line)
                );
            }
        }

        if let Some(outcome) = session.outcome() {
            match outcome {
                SessionOutcome::Replied(results) => {
                    assert_eq!(
                        results.iter().map(|r| &r.recipient).collect::<Vec<_>>(),
                        recipients.iter().collect::<Vec<_>>()
                    );
                    for r in results {
                        if r.reply.is_success() {
                            assert_eq!(r.stage, "end of data", "{r:?}");
                            assert!(message_out && answered_after, "{r:?} before the message");
                        }
                    }
                    if !counted && results.iter().any(|r| r.reply.is_success()) {
                        delivered += 1;
                        counted = true;
                    }
                }
                SessionOutcome::Uncertain { accepted } => {
                    assert!(lost && message_out && !accepted.is_empty());
                }
                SessionOutcome::Failed(failure) => {
                    if let HostFailure::Lost { .. } = failure {
                        assert!(lost || failure == &HostFailure::Lost { stage: "RSET" });
                    }
                }
            }
        }
        if lost || matches!(step, Step::Done) {
            break;
        }
    }
    delivered
}

/// `original` edited by `edits`, two octets an edit: a position (past the
/// end: append) and a value to XOR in (0 at a position: cut there).
fn edited(original: &[u8], edits: &[u8]) -> Vec<u8> {
    let mut out = original.to_vec();
    for pair in edits.chunks(2) {
        let (&at, value) = (
            pair.first().unwrap_or(&0),
            pair.get(1).copied().unwrap_or(0),
        );
        let at = usize::from(at) * out.len().max(1) / 255;
        match out.get_mut(at) {
            Some(_) if value == 0 => out.truncate(at),
            Some(b) => *b ^= value,
            None => out.push(value),
        }
    }
    out
}

/// The XPONY handshake inside SMTP (proto-spec §3, §4) between the real
/// client session and the real server side, with one thing a man in the
/// middle (or a hostile peer) could touch edited by the input: the
/// client's XPONY line (message 1), the greeting or EHLO reply the server
/// binds into the prologue, the 334 line (message 2), or the line after
/// it (message 3). Never a panic; the client learns the server's key only
/// from untouched messages under an untouched prologue, and then it is the
/// server's key and hints; after a refused message 2 the client writes `*`
/// and nothing else; the server is established only by the very message 3
/// the client wrote, and then both ends of the channel talk. Returns
/// whether the channel came up (for the tests).
pub fn xpony_handshake(input: &[u8]) -> bool {
    use crate::pony::negotiation::{ServerHints, ServerIdentity, decode_line, prologue};
    use crate::pony::noise::Keypair;
    use crate::smtp::client::{ClientSession, PonyOffer, SessionOutcome, StartTls, Step};
    use crate::smtp::envelope::{ContentFacts, Envelope};
    use crate::smtp::xpony_server::{self, Finish};
    let head = |i: usize| input.get(i).copied().unwrap_or(0);
    let edits = input.get(2..).unwrap_or_default();
    let what = head(0) % 5;
    let identity = ServerIdentity {
        key: Keypair::from_secret([7; 32]),
        hints: ServerHints {
            max_age: u32::from(head(1)) * 3600,
            successor: None,
            hostname: Some("mx.example".into()),
        },
    };
    let greeting: &[u8] = b"220 mx.example ESMTP\r\n";
    let ehlo_reply: &[u8] =
        b"250-mx.example\r\n250-XPONY Noise_XX_25519_ChaChaPoly_SHA256\r\n250 STARTTLS\r\n";
    let mut client = ClientSession::new(
        "client.example",
        StartTls::IfOffered,
        Envelope {
            sender: String::new(),
            recipients: vec!["a@mx.example".into()],
        },
        ContentFacts::default(),
        b".\r\n".to_vec(),
    )
    .with_pony(PonyOffer {
        key: Keypair::from_secret([5; 32]),
        required: head(1) & 1 == 1,
    })
    .fix_ephemeral(Keypair::from_secret([6; 32]));
    client.receive(greeting);
    client.outgoing.clear();
    client.receive(ehlo_reply);
    let sent_line = std::mem::take(&mut client.outgoing);
    assert!(sent_line.starts_with(b"XPONY ") && sent_line.ends_with(b"\r\n"));
    let sent_m1 = xpony_server::parse_command(&sent_line[..sent_line.len() - 2], true)
        .expect("the client's own XPONY line parses");

    // The server's view: message 1 and the prologue, maybe edited.
    let line = if what == 0 {
        edited(&sent_line, edits)
    } else {
        sent_line.clone()
    };
    let crlf = line.ends_with(b"\r\n");
    let line_body = line.strip_suffix(b"\r\n").unwrap_or(&line);
    let (seen_greeting, seen_ehlo) = match what {
        1 => (edited(greeting, edits), ehlo_reply.to_vec()),
        2 => (greeting.to_vec(), edited(ehlo_reply, edits)),
        _ => (greeting.to_vec(), ehlo_reply.to_vec()),
    };
    let server_prologue = prologue(&seen_greeting, b"EHLO client.example", &seen_ehlo);
    let m1 = match xpony_server::parse_command(line_body, crlf) {
        Ok(m1) => m1,
        Err(reply) => {
            assert!([501, 504].contains(&reply.code()), "{reply}");
            return false;
        }
    };
    let (state, reply_334) = match xpony_server::respond(
        &identity,
        &server_prologue,
        &m1,
        Some(Keypair::from_secret([8; 32])),
    ) {
        Ok(done) => done,
        Err(failed) => {
            assert_eq!(failed.reply.code(), 535);
            return false;
        }
    };
    let untouched =
        m1 == sent_m1 && server_prologue == prologue(greeting, b"EHLO client.example", ehlo_reply);
    let genuine_m2 = decode_line(
        std::str::from_utf8(&reply_334[4..reply_334.len() - 2]).expect("our 334 is ASCII"),
    )
    .expect("our 334 carries base64");

    // The client's view of message 2, maybe edited.
    let seen_334 = if what == 3 {
        edited(&reply_334, edits)
    } else {
        reply_334.clone()
    };
    let step = client.receive(&seen_334);
    let Step::CheckServerKey { key, hints } = step else {
        let out = std::mem::take(&mut client.outgoing);
        assert!(
            [&b""[..], b"*\r\n", b"QUIT\r\n", b"STARTTLS\r\n"].contains(&&out[..]),
            "{:?} after a bad message 2",
            String::from_utf8_lossy(&out)
        );
        if out == b"*\r\n" {
            assert!(matches!(
                xpony_server::finish(state, b"*", true),
                Finish::Aborted(reply) if reply.code() == 501
            ));
            client.receive(b"501 5.7.0 XPONY aborted\r\n");
            assert!(matches!(client.outcome(), Some(SessionOutcome::Failed(_))));
        }
        return false;
    };
    assert!(
        untouched,
        "message 2 read under a touched message 1 or prologue"
    );
    let seen_m2 = std::str::from_utf8(&seen_334[4..])
        .ok()
        .and_then(|l| decode_line(l.trim_end_matches(['\r', '\n'])));
    assert_eq!(
        seen_m2.as_ref(),
        Some(&genuine_m2),
        "an edited message 2 was read"
    );
    assert_eq!(key, identity.key.public());
    assert_eq!(hints, identity.hints);
    assert_eq!(client.xpony_accept(), Step::SwitchToPony);
    let m3_line = std::mem::take(&mut client.outgoing);
    let (mut client_channel, behind) = client.take_pony().expect("the channel after message 3");
    assert!(behind.is_empty());

    // The server's view of message 3, maybe edited.
    let seen_m3 = if what == 4 {
        edited(&m3_line, edits)
    } else {
        m3_line.clone()
    };
    let crlf = seen_m3.ends_with(b"\r\n");
    let body = seen_m3.strip_suffix(b"\r\n").unwrap_or(&seen_m3);
    match xpony_server::finish(state, body, crlf) {
        Finish::Established(mut server_channel) => {
            let decoded = |l: &[u8]| {
                std::str::from_utf8(l)
                    .ok()
                    .and_then(|l| decode_line(l.trim_end_matches(['\r', '\n'])))
            };
            assert_eq!(
                decoded(&seen_m3),
                decoded(&m3_line),
                "an edited message 3 was taken"
            );
            assert_eq!(
                server_channel.remote_static(),
                Keypair::from_secret([5; 32]).public()
            );
            let sealed = client_channel
                .encrypt(b"EHLO client.example\r\n")
                .expect("sealing");
            assert_eq!(
                server_channel
                    .decrypt(&sealed)
                    .expect("the server opens the client's record"),
                b"EHLO client.example\r\n"
            );
            let sealed = server_channel
                .encrypt(b"250 mx.example\r\n")
                .expect("sealing");
            assert_eq!(
                client_channel
                    .decrypt(&sealed)
                    .expect("the client opens the server's record"),
                b"250 mx.example\r\n"
            );
            true
        }
        Finish::Aborted(reply) => {
            assert_eq!(body, b"*");
            assert_eq!(reply.code(), 501);
            false
        }
        Finish::Failed { reply, .. } => {
            assert!([501, 535].contains(&reply.code()), "{reply}");
            false
        }
    }
}

/// A day's TLS-RPT session records read back from the state directory
/// (`<state>/tlsrpt/<domain>/<day>`: torn writes, a crash, an older
/// version, an operator's editor): only complete lines count, every line
/// is a record or counted as skipped, a record reads back from the very
/// line `record` would write for it, and the report of the day counts
/// exactly the day's sessions of known kinds and is JSON. Returns that
/// count (for the tests).
pub fn tlsrpt_records(input: &[u8]) -> u64 {
    use crate::outbound::outcome::{PolicyType, TlsFailure};
    use crate::outbound::tlsrpt::{self, Report, Reporter};
    let lines = crate::state::daily::complete_lines(input);
    let newlines = input.iter().filter(|&&b| b == b'\n').count();
    assert!(lines.len() <= newlines);
    assert!(lines.iter().all(|l| !l.is_empty() && !l.contains('\n')));
    let (records, skipped) = tlsrpt::parse_records(&lines);
    assert_eq!(records.len() + skipped, lines.len());
    for record in &records {
        let line = serde_json::to_string(record).expect("a record serializes");
        assert!(!line.contains('\n'), "a record is one line");
        assert_eq!(tlsrpt::parse_records(&[line]), (vec![record.clone()], 0));
    }
    // The day of the first record that has one, else a fixed day.
    let day = records
        .iter()
        .map(|r| r.t)
        .find(|&t| t < 253_402_300_800)
        .map_or_else(|| "2026-12-03".to_string(), tlsrpt::day_of);
    let start = tlsrpt::parse_day(&day).expect("day_of gives a day");
    let reporter = Reporter {
        organization: "example".into(),
        contact: "tlsrpt@example.org".into(),
        submitter: "mx.example.org".into(),
    };
    let report =
        Report::build(&reporter, "example.net", &day, &records).expect("a day builds a report");
    let counted = records
        .iter()
        .filter(|r| (start..start + 86_400).contains(&r.t))
        .filter(|r| PolicyType::from_name(&r.policy_type).is_some())
        .filter(|r| r.result == "success" || TlsFailure::from_name(&r.result).is_some())
        .count() as u64;
    let total: u64 = report
        .policies
        .iter()
        .map(|p| p.summary.total_successful_session_count + p.summary.total_failure_session_count)
        .sum();
    assert_eq!(total, counted);
    let json: serde_json::Value =
        serde_json::from_str(&report.to_json()).expect("the report is JSON");
    assert_eq!(
        json["date-range"]["start-datetime"],
        format!("{day}T00:00:00Z")
    );
    total
}

/// The fetch journal (`<state>/fetch/delivered/<id>`, proto-spec/fetch.md
/// §6 rule 3) read back after a crash or by a newer version: every
/// recipient read is a non-empty line of the file; a set that can be
/// written reads back as itself (else a delivered recipient would be
/// delivered again), and what cannot be written is refused, never
/// written changed. The input also serves as recipients split at `|`.
pub fn fetch_journal(input: &[u8]) {
    use crate::relay::journal::{decode, encode};
    let text = String::from_utf8_lossy(input);
    let read = decode(&text);
    for r in &read {
        assert!(!r.is_empty() && !r.contains('\n') && text.contains(r.as_str()));
    }
    match encode(&read) {
        Ok(again) => assert_eq!(decode(&again), read),
        Err(_) => assert!(read.iter().any(|r| r.contains('\r'))),
    }
    let recipients: std::collections::BTreeSet<String> =
        text.split('|').map(str::to_string).collect();
    if let Ok(written) = encode(&recipients) {
        assert_eq!(decode(&written), recipients);
    }
}

/// The TOML config file (`--config`): any text reads as settings or as a
/// clear error, never a panic; and the settings of each role, merged as
/// `inbound` and `outbound` merge them (no flags; a host key path taken
/// out, since it would be read), hold only times a clock can add (a
/// timeout of 2^63 seconds panicked at the first session, not at start).
pub fn config_file(input: &[u8]) {
    use crate::cli::config::FileConfig;
    // The loader reads the file as UTF-8: anything else is its error.
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let file = match FileConfig::parse(text) {
        Ok(file) => file,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let usable = |what: &str, d: std::time::Duration| {
        assert!(
            std::time::Instant::now().checked_add(d * 2).is_some(),
            "{what} of {d:?} overflows the clock"
        );
    };
    if let Some(mut inbound) = file.inbound {
        inbound.host_key = None;
        match crate::cli::inbound::merge_inbound(Default::default(), inbound) {
            Ok(settings) => {
                let c = &settings.config;
                usable("client_timeout", c.timeouts.line);
                usable("stress_client_timeout", c.timeouts.stress_line);
                usable("backend_timeout", c.backend_timeout);
                usable("shutdown_timeout", c.shutdown_grace);
                usable("evict_idle", c.limits.evict_idle);
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    if let Some(outbound) = file.outbound {
        match crate::cli::outbound::merge_outbound(Default::default(), outbound) {
            Ok(settings) => usable("tls_backoff", settings.tls_backoff),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
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

    const RELAY_ALPHABET: &[u8] = b"BLACKPONY-SEALED 1\r\nMAIL FROM:<s@x.example>\r\nRCPT TO:<a@b.example>\r\n\r\n|\r\n.\r\n XFETCH NEXT DELETE m1.x EHLO XPONY QUIT 250 2.0.0 MESSAGE EMPTY Deleted 535 221 0123456789 \xff\x00\x01\x02\x03";

    const DNS_ALPHABET: &[u8] = b"v=TLSRPTv1; rua=mailto:a@b.example,https://r.example/x,%0A%3C%40 v=STSv1; id=20190429 v=XPONY1; k=x25519; t=y; p=StN2G5wEsAhmLNu08/pLAMZip7m2AWVz+tN4+JSBZnw=\n\n;;\t\r";

    const STATE_ALPHABET: &[u8] = b"key: StN2G5wEsAhmLNu08/pLAMZip7m2AWVz+tN4+JSBZnw=\nfirst-seen: 1\nlast-seen: 2\nmax-age: 0\nsource: dns tofu\nsuccessor: \nid: 2019\nfetched: 17\n\n#private-key:\r..m1_x-\n\xff";

    #[test]
    fn relay_checks_hold_on_pseudo_random_input() {
        for input in pseudo_random_inputs(0x5ea1, 2000, RELAY_ALPHABET) {
            sealed_format(&input);
            xfetch(&input);
            fetch_session(&input);
        }
        for input in pseudo_random_inputs(0x0be7, 50, RELAY_ALPHABET) {
            sealed_open(&input);
        }
    }

    #[test]
    fn dns_and_state_checks_hold_on_pseudo_random_input() {
        for input in pseudo_random_inputs(0xd115, 3000, DNS_ALPHABET) {
            dns_txt(&input);
        }
        for input in pseudo_random_inputs(0x57a7e, 3000, STATE_ALPHABET) {
            state_files(&input);
        }
        for input in pseudo_random_inputs(0x10e7, 3000, b"a@x.example|b@y\r\n\n\r|\xff") {
            fetch_journal(&input);
        }
    }

    const RECEIVE_ALPHABET: &[u8] = b"\r\n.\r\n. EHLO LHLO HELO MAIL FROM:<a@b.example> RCPT TO:<c@d.example> <> DATA BDAT STARTTLS XPONY RSET QUIT SIZE=9 \x00\x02\x03\x82\x83\xff\r\n";

    #[test]
    fn receive_session_check_holds_on_pseudo_random_input() {
        for input in pseudo_random_inputs(0x4ece, 3000, RECEIVE_ALPHABET) {
            receive_session(&input);
        }
        // Whole transactions, for each protocol and option set: messages
        // do get handed out and checked.
        for head in 0..32u8 {
            let mut input = vec![head, 200, 2];
            input.extend_from_slice(
                b"EHLO c\r\nLHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
            );
            input
                .extend_from_slice(b"\xff\x02Subject: x\r\n\r\n..dot\r\nbare\nlf\r\n.\r\nQUIT\r\n");
            receive_session(&input);
        }
    }

    /// Valid files, records and sessions do turn up: the checks see more
    /// than junk.
    #[test]
    fn relay_dns_and_state_checks_on_real_input() {
        sealed_format(b"BLACKPONY-SEALED 1\r\nMAIL FROM:<>\r\nRCPT TO:<a@b.example>\r\n\r\nSubject: x\r\n\r\nbody\r\n");
        sealed_format(b"s@x.example|a@b.example|c@d.example");
        sealed_open(b"Subject: x\r\n\r\n.leading dot\r\n");
        xfetch(b"\x01\x02\x03XFETCH DELETE m1.x\r\nxfetch next\n250 2.0.0 MESSAGE m1.x 3\r\nabc250 2.0.0 EMPTY\r\n");
        fetch_session(b"\x00EHLO home.example\r\nXFETCH NEXT\r\nMAIL FROM:<>\r\nQUIT\r\n");
        dns_txt(b"v=TLSRPTv1; rua=mailto:tlsrpt@example.org,https://r.example/v1\nv=STSv1; id=20190429T010101;\nv=XPONY1; k=x25519; p=StN2G5wEsAhmLNu08/pLAMZip7m2AWVz+tN4+JSBZnw=");
        state_files(b"key: StN2G5wEsAhmLNu08/pLAMZip7m2AWVz+tN4+JSBZnw=\nfirst-seen: 1\nlast-seen: 2\nmax-age: 0\n");
        state_files(b"id: 20190429\nfetched: 1700000000\n\nversion: STSv1\r\n");
        state_files(b"# key\nStN2G5wEsAhmLNu08/pLAMZip7m2AWVz+tN4+JSBZnw=\n");
    }

    /// Chunk selectors and canned-reply indexes, with some raw reply
    /// bytes: sessions get far (EHLO with PIPELINING, 354, the message).
    const CLIENT_ALPHABET: &[u8] =
        b"\xff\xff\x04\x04\x05\x06\x07\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f250 354 \r\n-";

    #[test]
    fn client_session_check_holds_on_pseudo_random_input() {
        for input in pseudo_random_inputs(0xc11e, 4000, CLIENT_ALPHABET) {
            client_session(&input);
        }
    }

    /// Whole sessions do happen: delivered over STARTTLS, by LMTP, 8-bit,
    /// kept and reused; a message with NUL never goes out.
    #[test]
    fn client_session_check_on_real_sessions() {
        // Greeting and EHLO (PIPELINING, STARTTLS), STARTTLS's 220, the
        // handshake, EHLO again, the replies to MAIL, two RCPT and DATA,
        // the final reply (LMTP: one per recipient); then, on a kept
        // session, the next transaction after RSET; QUIT's reply.
        let session = |head: u8, kept: bool, lmtp: bool| {
            let fin: &[u8] = if lmtp {
                b"\xff\x04\x04\x04"
            } else {
                b"\xff\x04\x04"
            };
            let mut input = vec![head, 1];
            input.extend_from_slice(
                b"\x04\x00\x01\xff\x04\x0c\xff\x05\xff\x04\x01\xff\x04\x04\x04\x04\x05",
            );
            input.extend_from_slice(fin);
            if kept {
                input.extend_from_slice(b"\xff\x06\xff\x04\x04\x04\x04\x04\x05");
                input.extend_from_slice(fin);
            }
            input.extend_from_slice(b"\xff\x04\x06");
            client_session(&input)
        };
        for (head, delivered) in [
            (0x01, 1),
            (0x02, 1),
            (0x03, 1),
            (0x05, 1),
            (0x09, 2),
            (0x0d, 2),
            (0x81, 1),
            (0xc1, 0),
        ] {
            let (kept, lmtp) = (head & 8 == 8, head & 4 == 4);
            assert_eq!(session(head, kept, lmtp), delivered, "head {head:#x}");
        }
    }

    #[test]
    fn xpony_handshake_check_holds_on_pseudo_random_input() {
        let alphabet = [0, 1, 2, 3, 4, 5, 9, 10, 40, 77, 128, 200, 255];
        for input in pseudo_random_inputs(0x9097, 400, &alphabet) {
            xpony_handshake(&input);
        }
        // Untouched, whatever is edited: the channel comes up.
        for what in 0..5 {
            assert!(xpony_handshake(&[what, 0]), "{what}");
        }
    }

    const TLSRPT_ALPHABET: &[u8] = b"{\"t\":1764720000,\"policy-type\":\"sts\",\"result\":\"success\",\"receiving-mx-hostname\":\"mx.example\",\"reason\":\"x\"}\n\n{\"policy-string\":[\"mx: *.e\"],\"receiving-ip\":\"192.0.2.1\",\"sending-mta-ip\":\"::1\"} validation-failure starttls-not-supported tlsa no-policy-found 18446744073709551615 \xff\\u0000";

    #[test]
    fn tlsrpt_records_check_holds() {
        for input in pseudo_random_inputs(0x7157, 3000, TLSRPT_ALPHABET) {
            tlsrpt_records(&input);
        }
        // Real records, one cut short: the day's report counts two.
        let counted = tlsrpt_records(b"{\"t\":1764720000,\"policy-type\":\"sts\",\"policy-string\":[\"version: STSv1\",\"mx: *.example.net\"],\"result\":\"success\",\"receiving-mx-hostname\":\"mx.example.net\"}\n{\"t\":1764720001,\"policy-type\":\"tlsa\",\"result\":\"validation-failure\",\"receiving-mx-hostname\":\"mx.example.net\",\"receiving-ip\":\"192.0.2.1\",\"reason\":\"no match\"}\n{\"t\":17647");
        assert_eq!(counted, 2);
    }

    const CONFIG_ALPHABET: &[u8] = b"[inbound]\n[outbound]\nidentity = \"xclient\"\nbackend = \"127.0.0.1:10025\"\nclient_timeout = backend_timeout = tls_backoff = evict_idle = 9223372036854775807 -1 0 \"\n[[x]]\n= .,{}\xff";

    #[test]
    fn config_file_check_holds() {
        for input in pseudo_random_inputs(0xc0f1, 3000, CONFIG_ALPHABET) {
            config_file(&input);
        }
        config_file(include_bytes!("../packaging/etc/blackpony.toml"));
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
