//! The client session against scripted servers, and against the inbound
//! relay session (two state machines driven against each other in memory).

use super::*;
use crate::smtp::DotStuffer;

fn envelope(rcpts: &[&str]) -> Envelope {
    Envelope {
        sender: "sender@client.example".into(),
        recipients: rcpts.iter().map(|s| s.to_string()).collect(),
    }
}

fn wire(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = DotStuffer::new();
    s.push(message, &mut out);
    s.finish(&mut out);
    out
}

fn session(starttls: StartTls, rcpts: &[&str], message: &[u8]) -> ClientSession {
    ClientSession::new(
        "client.example",
        starttls,
        envelope(rcpts),
        ContentFacts::of(message),
        wire(message),
    )
}

fn take(s: &mut ClientSession) -> String {
    String::from_utf8(std::mem::take(&mut s.outgoing)).unwrap()
}

fn codes(outcome: &SessionOutcome) -> Vec<(String, u16, &'static str)> {
    match outcome {
        SessionOutcome::Replied(r) => r
            .iter()
            .map(|r| (r.recipient.clone(), r.reply.code(), r.stage))
            .collect(),
        other => panic!("not replied: {other:?}"),
    }
}

#[test]
fn pipelined_delivery_with_starttls() {
    let mut s = session(
        StartTls::IfOffered,
        &["a@mx.example", "b@mx.example"],
        b"Subject: x\r\n\r\nhi\r\n",
    );
    assert_eq!(s.receive(b"220 mx.example ESMTP\r\n"), Step::Continue);
    assert_eq!(take(&mut s), "EHLO client.example\r\n");
    s.receive(b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n");
    assert_eq!(take(&mut s), "STARTTLS\r\n");
    assert_eq!(s.receive(b"220 go ahead\r\n"), Step::StartTls);
    s.tls_established();
    assert_eq!(take(&mut s), "EHLO client.example\r\n");
    s.receive(b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n");
    assert_eq!(
        take(&mut s),
        "MAIL FROM:<sender@client.example> SIZE=18\r\nRCPT TO:<a@mx.example>\r\nRCPT TO:<b@mx.example>\r\nDATA\r\n"
    );
    s.receive(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no such user\r\n354 go\r\n");
    assert_eq!(take(&mut s), "Subject: x\r\n\r\nhi\r\n.\r\n");
    s.receive(b"250 2.0.0 Ok: queued as X\r\n");
    assert_eq!(take(&mut s), "QUIT\r\n");
    assert_eq!(s.receive(b"221 2.0.0 Bye\r\n"), Step::Done);
    assert_eq!(
        codes(s.outcome().unwrap()),
        [
            ("a@mx.example".to_string(), 250, "end of data"),
            ("b@mx.example".to_string(), 550, "RCPT TO")
        ]
    );
    assert!(s.tls_up());
}

#[test]
fn one_command_at_a_time_without_pipelining() {
    let mut s = session(StartTls::IfOffered, &["a@x", "b@x"], b"hi\r\n");
    s.receive(b"220 x\r\n");
    take(&mut s);
    s.receive(b"250 x\r\n");
    assert_eq!(take(&mut s), "MAIL FROM:<sender@client.example>\r\n");
    s.receive(b"250 ok\r\n");
    assert_eq!(take(&mut s), "RCPT TO:<a@x>\r\n");
    s.receive(b"450 4.2.0 greylisted\r\n");
    assert_eq!(take(&mut s), "RCPT TO:<b@x>\r\n");
    s.receive(b"250 ok\r\n");
    assert_eq!(take(&mut s), "DATA\r\n");
    s.receive(b"354 go\r\n");
    assert_eq!(take(&mut s), "hi\r\n.\r\n");
    s.receive(b"250 queued\r\n");
    assert_eq!(
        codes(s.outcome().unwrap()),
        [
            ("a@x".to_string(), 450, "RCPT TO"),
            ("b@x".to_string(), 250, "end of data")
        ]
    );
}

#[test]
fn helo_fallback_and_refusals() {
    let mut s = session(StartTls::IfOffered, &["a@x"], b"hi\r\n");
    s.receive(b"220 old\r\n");
    take(&mut s);
    s.receive(b"502 what\r\n");
    assert_eq!(take(&mut s), "HELO client.example\r\n");
    s.receive(b"250 hello\r\n");
    assert_eq!(take(&mut s), "MAIL FROM:<sender@client.example>\r\n");

    let mut s = session(StartTls::IfOffered, &["a@x"], b"hi\r\n");
    s.receive(b"554 go away\r\n");
    assert!(matches!(
        s.outcome(),
        Some(SessionOutcome::Failed(HostFailure::Refused {
            stage: "greeting",
            ..
        }))
    ));
    assert_eq!(take(&mut s), "QUIT\r\n");
}

#[test]
fn all_recipients_refused_when_pipelining() {
    let mut s = session(StartTls::Never, &["a@x"], b"hi\r\n");
    s.receive(b"220 x\r\n250-x\r\n250 PIPELINING\r\n");
    take(&mut s);
    s.receive(b"250 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n");
    assert_eq!(
        codes(s.outcome().unwrap()),
        [("a@x".to_string(), 550, "RCPT TO")]
    );
    assert_eq!(take(&mut s), "QUIT\r\n");

    // A broken server that says 354 anyway gets an empty message.
    let mut s = session(StartTls::Never, &["a@x"], b"hi\r\n");
    s.receive(b"220 x\r\n250-x\r\n250 PIPELINING\r\n");
    take(&mut s);
    s.receive(b"250 ok\r\n550 5.1.1 unknown\r\n354 go\r\n");
    assert_eq!(take(&mut s), ".\r\nQUIT\r\n");
}

#[test]
fn response_injection_after_starttls_is_discarded() {
    let mut s = session(StartTls::IfOffered, &["a@x"], b"hi\r\n");
    s.receive(b"220 x\r\n");
    s.receive(b"250-x\r\n250 STARTTLS\r\n");
    take(&mut s);
    assert_eq!(
        s.receive(b"220 ready\r\n250-evil\r\n250 PIPELINING\r\n"),
        Step::StartTls
    );
    assert_eq!(s.injected_after_starttls, 26);
    s.tls_established();
    assert_eq!(take(&mut s), "EHLO client.example\r\n");
    s.receive(b"250 x\r\n");
    // The injected PIPELINING was not believed: one command at a time.
    assert_eq!(take(&mut s), "MAIL FROM:<sender@client.example>\r\n");
}

#[test]
fn tls_policy() {
    let mut s = session(StartTls::Required, &["a@x"], b"hi\r\n");
    s.receive(b"220 x\r\n250 x\r\n");
    assert!(matches!(
        s.outcome(),
        Some(SessionOutcome::Failed(HostFailure::TlsUnavailable {
            reply: None
        }))
    ));

    let mut s = session(StartTls::Never, &["a@x"], b"hi\r\n");
    s.receive(b"220 x\r\n250-x\r\n250 STARTTLS\r\n");
    take(&mut s);
    s.receive(b"");
    assert!(!s.tls_up());

    // STARTTLS refused under "may": carry on in plaintext.
    let mut s = session(StartTls::IfOffered, &["a@x"], b"hi\r\n");
    s.receive(b"220 x\r\n250-x\r\n250 STARTTLS\r\n");
    take(&mut s);
    s.receive(b"454 4.7.0 TLS not available\r\n");
    assert_eq!(take(&mut s), "MAIL FROM:<sender@client.example>\r\n");
}

#[test]
fn content_checks() {
    let mut s = session(StartTls::Never, &["a@x"], &[b'x'; 2000]);
    s.receive(b"220 x\r\n250-x\r\n250 SIZE 1000\r\n");
    assert_eq!(
        codes(s.outcome().unwrap()),
        [("a@x".to_string(), 552, "content check")]
    );
    assert_eq!(
        s.content_refusal,
        Some(ContentRefusal::TooBig { limit: 1000 })
    );

    let mut s = ClientSession::new(
        "c",
        StartTls::Never,
        Envelope {
            sender: String::new(),
            recipients: vec!["j\u{f6}rg@x".into()],
        },
        ContentFacts::default(),
        wire(b""),
    );
    s.receive(b"220 x\r\n250 x\r\n");
    assert_eq!(codes(s.outcome().unwrap())[0].1, 553);

    let mut s = session(StartTls::Never, &["a@x"], "caf\u{e9}\r\n".as_bytes());
    s.receive(b"220 x\r\n250-x\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n");
    assert_eq!(
        take(&mut s),
        "EHLO client.example\r\nMAIL FROM:<sender@client.example> BODY=8BITMIME\r\n"
    );
}

#[test]
fn messages_with_nul_are_never_sent() {
    // NUL next to a line end (what a NUL-dropping next hop reads as an end
    // of data), alone, and at the very start or end.
    for message in [
        &b"a\r\n\0.\r\nMAIL FROM:<x@y>\r\n"[..],
        b"a\r\n.\0\r\n",
        b"a\r\n\0.\r",
        b"a\r\n\0.\n",
        b"\0",
        b"body\0",
    ] {
        let facts = ContentFacts::of(message);
        assert_eq!(refuse_message(&facts), Some(ContentRefusal::ContainsNul));
        let mut s = session(StartTls::Never, &["a@x", "b@x"], message);
        s.receive(b"220 x\r\n250-x\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
        // EHLO, then QUIT: no MAIL, no byte of the message.
        assert_eq!(
            take(&mut s),
            "EHLO client.example\r\nQUIT\r\n",
            "{message:?}"
        );
        assert_eq!(s.content_refusal, Some(ContentRefusal::ContainsNul));
        assert_eq!(
            codes(s.outcome().unwrap()),
            [
                ("a@x".to_string(), 554, "content check"),
                ("b@x".to_string(), 554, "content check")
            ]
        );
    }
    assert_eq!(refuse_message(&ContentFacts::of(b"a\r\n.\r\n\x01")), None);
}

#[test]
fn lost_connection_outcomes() {
    let mut s = session(StartTls::Never, &["a@x"], b"hi\r\n");
    s.receive(b"220 x\r\n");
    s.connection_lost();
    assert!(matches!(
        s.outcome(),
        Some(SessionOutcome::Failed(HostFailure::Lost { stage: "EHLO" }))
    ));

    let mut s = session(StartTls::Never, &["a@x"], b"hi\r\n");
    s.receive(b"220 x\r\n250-x\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    s.connection_lost();
    assert_eq!(
        s.outcome(),
        Some(&SessionOutcome::Uncertain {
            accepted: vec!["a@x".into()]
        })
    );
}

#[test]
fn garbage_from_server() {
    let mut s = session(StartTls::Never, &["a@x"], b"hi\r\n");
    assert_eq!(s.receive(b"HTTP/1.1 400 Bad Request\r\n"), Step::Done);
    assert!(matches!(
        s.outcome(),
        Some(SessionOutcome::Failed(HostFailure::Protocol(_)))
    ));
}

/// A tiny in-memory MTA behind the sidecar: enough SMTP to accept a message.
#[derive(Default)]
struct MiniMta {
    pending: Vec<u8>,
    in_data: bool,
    message: Vec<u8>,
    messages: Vec<Vec<u8>>,
}

impl MiniMta {
    /// After STARTTLS or XPONY the sidecar tells its backend connection QUIT
    /// and opens a new one: this MTA takes the new connection and greets.
    fn reconnect(&mut self, sidecar: &mut crate::inbound::session::Session) {
        use crate::inbound::session::Action;
        assert_eq!(sidecar.poll_action(), Some(Action::RestartBackend));
        assert_eq!(std::mem::take(&mut sidecar.to_backend), b"QUIT\r\n");
        self.pending.clear();
        self.in_data = false;
        sidecar.backend_restarted();
        sidecar.backend_input(b"220 mini.example ESMTP\r\n");
    }

    /// Answers what the sidecar sent it.
    fn serve(&mut self, sidecar: &mut crate::inbound::session::Session) {
        let to_mta = std::mem::take(&mut sidecar.to_backend);
        if !to_mta.is_empty() {
            let replies = self.input(&to_mta);
            sidecar.backend_input(&replies);
        }
    }

    fn input(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=nl).collect();
            if self.in_data {
                if line == b".\r\n" {
                    self.in_data = false;
                    self.messages.push(std::mem::take(&mut self.message));
                    out.extend_from_slice(b"250 2.0.0 Ok: queued as MINI\r\n");
                } else {
                    self.message.extend_from_slice(&line);
                }
                continue;
            }
            let verb = String::from_utf8_lossy(&line[..line.len().min(4)]).to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" => b"250-mini.example\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
                "DATA" => {
                    self.in_data = true;
                    b"354 go\r\n"
                }
                "QUIT" => b"221 2.0.0 Bye\r\n",
                "RCPT" if line.windows(7).any(|w| w == b"unknown") => b"550 5.1.1 unknown user\r\n",
                _ => b"250 2.0.0 Ok\r\n",
            };
            out.extend_from_slice(reply);
        }
        out
    }
}

/// The outbound client state machine talks to the inbound relay session,
/// which talks to a tiny MTA: every byte moves in memory, STARTTLS included
/// (the handshake itself is the I/O loop's job, so both sides are told it
/// happened).
#[test]
fn client_through_the_sidecar() {
    use crate::inbound::Identity;
    use crate::inbound::session::{Action, Session, SessionConfig};
    use std::sync::Arc;

    let sidecar_config = SessionConfig {
        hostname: "mx.example".into(),
        identity: Identity::ProxyV2,
        require_tls: false,
        bare_newlines: crate::smtp::BareNewlines::Normalize,
        trace_header: true,
        pony: None,
        error_limits: Default::default(),
    };
    let mut sidecar = Session::new(
        Arc::new(sidecar_config),
        "192.0.2.9:5000".parse().unwrap(),
        "192.0.2.1:25".parse().unwrap(),
    );
    let mut mta = MiniMta::default();
    let message = b"Subject: both ways\r\n\r\n.leading dot\r\nbare\nnewline\r\n";
    let mut client = session(
        StartTls::IfOffered,
        &["a@mx.example", "unknown@mx.example"],
        message,
    );

    let greeting = mta.input(b"");
    assert!(greeting.is_empty());
    sidecar.backend_input(b"220 mini.example ESMTP\r\n");
    let mut step = Step::Continue;
    for _ in 0..100 {
        let to_client = std::mem::take(&mut sidecar.to_client);
        if !to_client.is_empty() {
            step = client.receive(&to_client);
        }
        if step == Step::StartTls {
            assert_eq!(sidecar.poll_action(), Some(Action::StartTls));
            sidecar.tls_established(crate::transport::Encryption::Tls {
                version: "TLSv1.3",
                cipher: "TLS_AES_128_GCM_SHA256".into(),
            });
            mta.reconnect(&mut sidecar);
            client.tls_established();
            step = Step::Continue;
        }
        if step == Step::Done {
            break;
        }
        let to_sidecar = std::mem::take(&mut client.outgoing);
        if !to_sidecar.is_empty() {
            sidecar.client_input(&to_sidecar);
        }
        mta.serve(&mut sidecar);
    }
    assert_eq!(step, Step::Done);
    assert!(client.tls_up());
    assert_eq!(
        codes(client.outcome().unwrap()),
        [
            ("a@mx.example".to_string(), 250, "end of data"),
            ("unknown@mx.example".to_string(), 550, "RCPT TO")
        ]
    );
    assert_eq!(mta.messages.len(), 1);
    let got = String::from_utf8(mta.messages[0].clone()).unwrap();
    assert!(
        got.starts_with("Received: from client.example (unknown [192.0.2.9])\r\n"),
        "{got}"
    );
    assert!(
        got.contains("with ESMTPS (TLSv1.3 TLS_AES_128_GCM_SHA256)"),
        "{got}"
    );
    assert!(
        got.ends_with("Subject: both ways\r\n\r\n..leading dot\r\nbare\r\nnewline\r\n"),
        "{got}"
    );
}

/// proto-spec §3.4: what the client does with each kind of reply to its
/// XPONY command, required or not.
#[test]
fn replies_to_xpony() {
    use crate::pony::noise::Keypair;
    // (reply, required, what the client writes next, outcome: None = session goes on)
    let cases: &[(&str, bool, &str, Option<&str>)] = &[
        // Refused, not required: on to STARTTLS as without XPONY.
        (
            "454 4.7.0 Temporary failure\r\n",
            false,
            "STARTTLS\r\n",
            None,
        ),
        (
            "504 5.5.4 Unrecognized protocol name\r\n",
            false,
            "STARTTLS\r\n",
            None,
        ),
        // Refused while required: a downgrade, QUIT.
        (
            "454 4.7.0 Temporary failure\r\n",
            true,
            "QUIT\r\n",
            Some("refused XPONY"),
        ),
        // The server is closing: nothing more to write.
        ("421 4.4.2 Bye\r\n", false, "", Some("421")),
        (
            "554 5.5.1 Error: command pipelined after XPONY\r\n",
            false,
            "",
            Some("554"),
        ),
        // A success code that is not 334: protocol error.
        ("250 2.0.0 Ok\r\n", false, "QUIT\r\n", Some("250")),
        // 334 with a continuation line or bad base64: '*', then wait.
        ("334-AAAA\r\n334 AAAA\r\n", false, "*\r\n", None),
        ("334 !!!!\r\n", false, "*\r\n", None),
        // Bytes behind the 334: close without another word.
        ("334 AAAA\r\n250 injected\r\n", false, "", Some("injection")),
    ];
    for (reply, required, next, outcome) in cases {
        let mut s = session(StartTls::IfOffered, &["a@x"], b"hi\r\n").with_pony(PonyOffer {
            key: Keypair::generate().unwrap(),
            required: *required,
        });
        s.receive(b"220 x ESMTP\r\n");
        take(&mut s);
        s.receive(b"250-x\r\n250-STARTTLS\r\n250 XPONY Noise_XX_25519_ChaChaPoly_SHA256\r\n");
        assert!(take(&mut s).starts_with("XPONY Noise_XX_25519_ChaChaPoly_SHA256 "));
        s.receive(reply.as_bytes());
        assert_eq!(take(&mut s), *next, "after {reply:?}");
        match (outcome, s.outcome()) {
            (None, None) => {}
            (Some(want), Some(SessionOutcome::Failed(HostFailure::PonyFailed { why }))) => {
                assert!(why.contains(want), "after {reply:?}: {why}")
            }
            (want, got) => panic!("after {reply:?}: want {want:?}, got {got:?}"),
        }
    }
}

/// proto-spec §3.1: the 334 line that carries message 2 ends in CRLF. The
/// server's real 334 (message 2 for the client's message 1) with each line
/// end: CRLF goes on to the key check; a bare LF, or a CR that is no line
/// end, cancels the negotiation with `*` (§3.4) and the session then fails
/// with the reason, after the server's 501.
#[test]
fn xpony_334_line_ends_in_crlf() {
    use crate::pony::negotiation::{self, ServerHints};
    use crate::pony::noise::{Keypair, PROTOCOL_NAME, Responder};
    let greeting = "220 x ESMTP\r\n";
    let ehlo = format!("250-x\r\n250-STARTTLS\r\n250 XPONY {PROTOCOL_NAME}\r\n");
    // (how the 334 line ends, whether the key check comes, what the client
    //  writes, the failure after the server's 501)
    let cases: &[(&str, bool, &str, Option<&str>)] = &[
        ("\r\n", true, "", None),
        ("\n", false, "*\r\n", Some("bare LF")),
        ("\r\r\n", false, "*\r\n", Some("not one line of base64")),
        ("\rX\r\n", false, "*\r\n", Some("not one line of base64")),
    ];
    for (end, checks_key, next, failure) in cases {
        let mut s = session(StartTls::IfOffered, &["a@x"], b"hi\r\n").with_pony(PonyOffer {
            key: Keypair::generate().unwrap(),
            required: false,
        });
        s.receive(greeting.as_bytes());
        take(&mut s);
        s.receive(ehlo.as_bytes());
        let xpony = take(&mut s);
        let b64 = xpony
            .strip_prefix(&format!("XPONY {PROTOCOL_NAME} "))
            .and_then(|l| l.strip_suffix("\r\n"))
            .unwrap();
        let prologue =
            negotiation::prologue(greeting.as_bytes(), b"EHLO client.example", ehlo.as_bytes());
        let server = Responder::new(
            &prologue,
            Keypair::generate().unwrap(),
            Keypair::generate().unwrap(),
        );
        let (ready, _) = server
            .read_message_1(&negotiation::decode_line(b64).unwrap())
            .unwrap();
        let (_, m2) = ready
            .write_message_2(&ServerHints::default().encode())
            .unwrap();
        let line = format!("334 {}{end}", negotiation::encode_line(&m2));
        let step = s.receive(line.as_bytes());
        assert_eq!(
            matches!(step, Step::CheckServerKey { .. }),
            *checks_key,
            "334 ended by {end:?}: {step:?}"
        );
        assert_eq!(take(&mut s), *next, "334 ended by {end:?}");
        if let Some(want) = failure {
            assert!(s.outcome().is_none(), "{end:?}: waits for the 501");
            s.receive(b"501 5.7.0 XPONY aborted\r\n");
            assert_eq!(take(&mut s), "QUIT\r\n", "{end:?}");
            match s.outcome() {
                Some(SessionOutcome::Failed(HostFailure::PonyFailed { why })) => {
                    assert!(why.contains(want), "{end:?}: {why}")
                }
                other => panic!("{end:?}: {other:?}"),
            }
        }
    }
}

/// Sends `bytes` from one end of the channel to the other as a frame and
/// puts what arrives in their place; the number of frames sent (0 or 1).
fn cross(
    from: &mut crate::pony::channel::Channel,
    to: &mut crate::pony::channel::Channel,
    bytes: &mut Vec<u8>,
) -> usize {
    if bytes.is_empty() {
        return 0;
    }
    let mut wire = Vec::new();
    from.seal_data(bytes, &mut wire).unwrap();
    bytes.clear();
    to.open(&wire, bytes).unwrap();
    1
}

/// The outbound client and the inbound relay session meet with XPONY, in
/// memory: the handshake lines go through both state machines, the key
/// check step is answered as the deliverer answers it, and after the switch
/// every byte crosses as frames sealed and opened by two channels (what
/// the I/O loop's `PonyStream` does on each side).
#[test]
fn client_through_the_sidecar_with_xpony() {
    use crate::inbound::Identity;
    use crate::inbound::session::{Action, Session, SessionConfig};
    use crate::pony::channel::Channel;
    use crate::pony::negotiation::{ServerHints, ServerIdentity};
    use crate::pony::noise::Keypair;
    use std::sync::Arc;

    let server_key = Keypair::generate().unwrap();
    let client_key = Keypair::generate().unwrap();
    let config = SessionConfig {
        hostname: "mx.example".into(),
        identity: Identity::ProxyV2,
        require_tls: false,
        bare_newlines: crate::smtp::BareNewlines::Normalize,
        trace_header: true,
        pony: Some(Arc::new(ServerIdentity {
            key: server_key.clone(),
            hints: ServerHints {
                max_age: 3600,
                ..ServerHints::default()
            },
        })),
        error_limits: Default::default(),
    };
    let mut sidecar = Session::new(
        Arc::new(config),
        "192.0.2.9:5000".parse().unwrap(),
        "192.0.2.1:25".parse().unwrap(),
    );
    let mut mta = MiniMta::default();
    let mut client = session(
        StartTls::IfOffered,
        &["a@mx.example"],
        b"Subject: pony\r\n\r\nhi\r\n",
    )
    .with_pony(PonyOffer {
        key: client_key.clone(),
        required: false,
    });
    // The two ends of the channel, once the handshake has made them.
    let mut channels: Option<(Channel, Channel)> = None;
    let mut seen_key = None;
    let mut frames_crossed = 0;

    sidecar.backend_input(b"220 mini.example ESMTP\r\n");
    let mut step = Step::Continue;
    for _ in 0..200 {
        // Sidecar -> client: plaintext before the switch, frames after.
        let mut to_client = std::mem::take(&mut sidecar.to_client);
        if let Some((client_end, server_end)) = channels.as_mut() {
            frames_crossed += cross(server_end, client_end, &mut to_client);
        }
        if !to_client.is_empty() {
            step = client.receive(&to_client);
        }
        match step {
            Step::CheckServerKey { key, hints } => {
                assert_eq!(hints.max_age, 3600);
                seen_key = Some(key);
                step = client.xpony_accept();
            }
            Step::StartTls => panic!("STARTTLS chosen over XPONY"),
            _ => {}
        }
        if step == Step::SwitchToPony {
            // Message 3 is the last plaintext line.
            let line = std::mem::take(&mut client.outgoing);
            sidecar.client_input(&line);
            assert_eq!(sidecar.poll_action(), Some(Action::StartPony));
            let (server_transport, behind) = sidecar.take_pony().unwrap();
            let (client_transport, ahead) = client.take_pony().unwrap();
            assert!(behind.is_empty() && ahead.is_empty());
            channels = Some((
                Channel::new(client_transport),
                Channel::new(server_transport),
            ));
            sidecar.pony_established(crate::transport::Encryption::Pony {
                peer: client_key.public(),
            });
            mta.reconnect(&mut sidecar);
            client.pony_established();
            step = Step::Continue;
            continue;
        }
        if step == Step::Done {
            break;
        }
        // Client -> sidecar.
        let mut to_sidecar = std::mem::take(&mut client.outgoing);
        if let Some((client_end, server_end)) = channels.as_mut() {
            frames_crossed += cross(client_end, server_end, &mut to_sidecar);
        }
        if !to_sidecar.is_empty() {
            sidecar.client_input(&to_sidecar);
        }
        mta.serve(&mut sidecar);
    }
    assert_eq!(step, Step::Done);
    assert_eq!(seen_key, Some(server_key.public()));
    assert!(frames_crossed >= 4, "{frames_crossed} frames");
    assert_eq!(
        codes(client.outcome().unwrap()),
        [("a@mx.example".to_string(), 250, "end of data")]
    );
    let got = String::from_utf8(mta.messages[0].clone()).unwrap();
    let want = format!(
        " with ESMTP (XPONY Noise_XX_25519_ChaChaPoly_SHA256 peer={})",
        crate::pony::keys::fingerprint(&client_key.public())
    );
    assert!(got.contains(&want), "{got}");
    assert!(got.ends_with("Subject: pony\r\n\r\nhi\r\n"), "{got}");
}

/// RFC 6152 §3: an 8-bit message to a server without 8BITMIME goes out
/// converted to quoted-printable (and without BODY=8BITMIME); to one with
/// it, unchanged.
#[test]
fn eight_bit_message_downgraded_without_8bitmime() {
    let message = "Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
                   Content-Transfer-Encoding: 8bit\r\n\r\ncaf\u{e9}\r\n"
        .as_bytes();
    for (ehlo, body_param, sent) in [
        ("250-mx\r\n250 PIPELINING\r\n", false, "caf=C3=A9\r\n.\r\n"),
        (
            "250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            true,
            "caf\u{e9}\r\n.\r\n",
        ),
    ] {
        let mut s = session(StartTls::Never, &["a@mx.example"], message);
        s.receive(b"220 mx ESMTP\r\n");
        take(&mut s);
        s.receive(ehlo.as_bytes());
        let commands = take(&mut s);
        assert_eq!(commands.contains("BODY=8BITMIME"), body_param, "{commands}");
        s.receive(b"250 ok\r\n250 ok\r\n354 go\r\n");
        let data = take(&mut s);
        assert!(data.ends_with(sent), "{data}");
        assert_eq!(
            data.contains("Content-Transfer-Encoding: quoted-printable"),
            !body_param
        );
    }
}

/// A kept session (keep_open / resume / next_transaction): what it writes
/// and how it ends, for each way the server answers the next transaction.
#[test]
fn kept_session_next_transaction() {
    let message = b"Subject: x\r\n\r\nhi\r\n";
    let pipelining = "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n";
    let plain = "250-mx.example\r\n250 SIZE 1000\r\n";
    // (name, EHLO reply, server input after next_transaction in steps
    //  (bytes, what the client writes then), outcome, ready after)
    type Case = (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        Result<u16, &'static str>,
        bool,
    );
    let cases: &[Case] = &[
        (
            "pipelined: RSET in front of the transaction, kept again",
            pipelining,
            &[
                (
                    "250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n",
                    "Subject: x\r\n\r\nhi\r\n.\r\n",
                ),
                ("250 2.0.0 queued\r\n", ""),
            ],
            Ok(250),
            true,
        ),
        (
            "without PIPELINING: RSET alone, then MAIL",
            plain,
            &[
                (
                    "250 2.0.0 Ok\r\n",
                    "MAIL FROM:<sender@client.example> SIZE=18\r\n",
                ),
                ("250 2.1.0 Ok\r\n", "RCPT TO:<a@mx.example>\r\n"),
                ("250 2.1.5 Ok\r\n", "DATA\r\n"),
                ("354 go\r\n", "Subject: x\r\n\r\nhi\r\n.\r\n"),
                ("250 2.0.0 queued\r\n", ""),
            ],
            Ok(250),
            true,
        ),
        (
            "the server timed the session out: 421 to RSET, nothing more written",
            pipelining,
            &[("421 4.4.2 mx.example Error: timeout exceeded\r\n", "")],
            Err("RSET"),
            false,
        ),
        (
            "a server that refuses RSET is not trusted with the transaction",
            plain,
            &[("502 5.5.2 Error: command not recognized\r\n", "")],
            Err("RSET"),
            false,
        ),
        (
            "a refused recipient keeps the session usable",
            pipelining,
            &[(
                "250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n",
                "",
            )],
            Ok(550),
            true,
        ),
    ];
    for (name, ehlo, steps, want, ready) in cases {
        let mut s = session(StartTls::Never, &["a@mx.example"], message).keep_open();
        s.receive(b"220 mx.example ESMTP\r\n");
        take(&mut s);
        s.receive(ehlo.as_bytes());
        take(&mut s);
        s.receive(b"250 2.1.0 Ok\r\n");
        if *ehlo == plain {
            s.receive(b"250 2.1.5 Ok\r\n");
            s.receive(b"354 go\r\n");
        } else {
            s.receive(b"250 2.1.5 Ok\r\n354 go\r\n");
        }
        take(&mut s);
        assert_eq!(s.receive(b"250 2.0.0 first\r\n"), Step::Ready, "{name}");
        assert_eq!(take(&mut s), "", "{name}: no QUIT after a kept transaction");
        assert_eq!(codes(&s.take_outcome().unwrap())[0].1, 250, "{name}");

        // The next transaction, on the session as the cache gives it back.
        let caps = s.capabilities().cloned().unwrap();
        let mut s = ClientSession::resume("client.example", caps);
        assert!(s.is_ready(), "{name}");
        assert!(s.next_transaction(
            envelope(&["a@mx.example"]),
            ContentFacts::of(message),
            wire(message)
        ));
        let first = take(&mut s);
        if *ehlo == plain {
            assert_eq!(first, "RSET\r\n", "{name}");
        } else {
            assert_eq!(
                first,
                "RSET\r\nMAIL FROM:<sender@client.example> SIZE=18\r\nRCPT TO:<a@mx.example>\r\nDATA\r\n",
                "{name}"
            );
        }
        for (input, written) in steps.iter() {
            s.receive(input.as_bytes());
            assert_eq!(take(&mut s), *written, "{name}: after {input:?}");
        }
        match (want, s.take_outcome()) {
            (Ok(code), Some(outcome)) => assert_eq!(codes(&outcome)[0].1, *code, "{name}"),
            (Err(stage), Some(SessionOutcome::Failed(HostFailure::Lost { stage: got }))) => {
                assert_eq!(got, *stage, "{name}")
            }
            (_, other) => panic!("{name}: {other:?}"),
        }
        assert_eq!(s.is_ready(), *ready, "{name}");
        // Only a ready session starts another transaction.
        assert_eq!(
            s.next_transaction(
                envelope(&["b@mx.example"]),
                ContentFacts::of(message),
                wire(message)
            ),
            *ready,
            "{name}"
        );
    }
    // A connection lost before the RSET's reply: nothing was decided.
    let caps = EhloReply {
        greeting: "mx.example".into(),
        capabilities: vec![crate::smtp::ehlo::Capability::new("PIPELINING", "")],
    };
    let mut s = ClientSession::resume("client.example", caps);
    s.next_transaction(
        envelope(&["a@mx.example"]),
        ContentFacts::of(message),
        wire(message),
    );
    take(&mut s);
    s.connection_lost();
    assert_eq!(
        s.take_outcome(),
        Some(SessionOutcome::Failed(HostFailure::Lost { stage: "RSET" }))
    );
}

/// Bytes behind the last reply owed (RFC 2920 §3.1: a server sends
/// nothing unasked) would answer the next transaction's RSET, and every
/// reply after it would go to the wrong command (a recipient bounced with
/// another's 550). What was decided stands; the session is not kept, and
/// an opening session that never got so far fails.
#[test]
fn bytes_behind_the_last_reply_end_a_kept_session() {
    let message = b"Subject: x\r\n\r\nhi\r\n";
    // (what follows the final reply in the same read, outcome code)
    for (stray, want) in [
        ("250 2.0.0 Ok\r\n", Some(250)),
        ("2", Some(250)),
        ("421 4.4.2 bye\r\n", Some(250)),
        ("", None),
    ] {
        let mut s = session(StartTls::Never, &["a@mx.example"], message).keep_open();
        s.receive(b"220 mx.example ESMTP\r\n250-mx.example\r\n250 PIPELINING\r\n");
        s.receive(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n");
        take(&mut s);
        let step = s.receive(format!("250 2.0.0 queued\r\n{stray}").as_bytes());
        assert_eq!(codes(s.outcome().unwrap())[0].1, 250, "{stray:?}");
        match want {
            Some(_) => {
                assert_eq!(step, Step::Continue, "{stray:?}");
                assert!(!s.is_ready(), "{stray:?}");
                assert_eq!(take(&mut s), "QUIT\r\n", "{stray:?}");
                assert!(!s.next_transaction(
                    envelope(&["b@mx.example"]),
                    ContentFacts::of(message),
                    wire(message)
                ));
                assert_eq!(s.receive(b"221 bye\r\n"), Step::Done);
                assert_eq!(codes(s.outcome().unwrap())[0].1, 250, "{stray:?}");
            }
            None => {
                assert_eq!(step, Step::Ready);
                assert_eq!(take(&mut s), "");
            }
        }
    }
    // An opening session: a reply behind EHLO's is no session to use.
    let mut s = ClientSession::opening("client.example", StartTls::Never);
    let step = s.receive(b"220 mx.example ESMTP\r\n250 mx.example\r\n250 ok\r\n");
    assert_eq!(step, Step::Continue);
    assert!(!s.is_ready());
    assert_eq!(take(&mut s), "EHLO client.example\r\nQUIT\r\n");
    assert!(matches!(
        s.outcome(),
        Some(SessionOutcome::Failed(HostFailure::Protocol(
            crate::smtp::ReplyError::Unsolicited
        )))
    ));
}

/// LMTP (RFC 2033): LHLO, no HELO fallback, and after the message one reply
/// per recipient RCPT accepted, in order; a connection lost among those
/// replies keeps the ones read.
#[test]
fn lmtp_replies_per_recipient() {
    let lmtp = |rcpts: &[&str]| session(StartTls::Never, rcpts, b"Subject: x\r\n\r\nhi\r\n").lmtp();
    let rcpts = ["a@home.example", "b@home.example", "c@home.example"];
    let opening = |s: &mut ClientSession| {
        s.receive(b"220 home.example LMTP\r\n");
        assert_eq!(take(s), "LHLO client.example\r\n");
        s.receive(b"250-home.example\r\n250 PIPELINING\r\n");
        assert_eq!(
            take(s),
            "MAIL FROM:<sender@client.example>\r\nRCPT TO:<a@home.example>\r\n\
             RCPT TO:<b@home.example>\r\nRCPT TO:<c@home.example>\r\nDATA\r\n"
        );
        s.receive(
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no such user\r\n250 2.1.5 Ok\r\n354 go\r\n",
        );
        assert_eq!(take(s), "Subject: x\r\n\r\nhi\r\n.\r\n");
    };
    // (replies after the message, connection lost after them, outcome)
    type Case<'a> = (&'a [u8], bool, [(u16, &'static str); 3]);
    let cases: Vec<Case> = vec![
        (
            b"250 2.0.0 a saved\r\n452 4.2.2 c over quota\r\n",
            false,
            [(250, "end of data"), (550, "RCPT TO"), (452, "end of data")],
        ),
        // the connection lost after a's reply: c's delivery is uncertain
        (
            b"250 2.0.0 a saved\r\n",
            true,
            [(250, "end of data"), (550, "RCPT TO"), (451, "end of data")],
        ),
    ];
    for (replies, lost, want) in cases {
        let mut s = lmtp(&rcpts);
        opening(&mut s);
        assert_eq!(s.receive(replies), Step::Continue);
        if lost {
            assert!(s.outcome().is_none(), "one reply of two is no outcome");
            s.connection_lost();
        } else {
            assert_eq!(take(&mut s), "QUIT\r\n");
            assert_eq!(s.receive(b"221 2.0.0 Bye\r\n"), Step::Done);
        }
        let got = codes(s.outcome().unwrap());
        let want: Vec<_> = rcpts
            .iter()
            .zip(want)
            .map(|(r, (code, stage))| (r.to_string(), code, stage))
            .collect();
        assert_eq!(got, want);
    }
    // No reply at all after the message: uncertain, as in SMTP.
    let mut s = lmtp(&rcpts);
    opening(&mut s);
    s.connection_lost();
    assert!(matches!(
        s.outcome(),
        Some(SessionOutcome::Uncertain { .. })
    ));
    // A server that refuses LHLO is not asked HELO.
    let mut s = lmtp(&rcpts);
    s.receive(b"220 home.example LMTP\r\n");
    take(&mut s);
    s.receive(b"500 5.5.1 unknown command\r\n");
    assert!(!take(&mut s).contains("HELO"));
    assert!(matches!(
        s.outcome(),
        Some(SessionOutcome::Failed(HostFailure::Refused {
            stage: "LHLO",
            ..
        }))
    ));
}

/// RFC 5321 §4.3.2: DATA is answered 354, 4xx or 5xx. A 2xx there (a
/// server that skips the message, or one reply too many pipelined ahead of
/// the 354) must not stand for the message, which was never sent: the
/// session fails as a protocol error (the caller defers, 451 4.5.0), and
/// not a byte of the message goes out.
#[test]
fn a_2xx_to_data_never_counts_as_delivered() {
    for (pipelining, replies) in [
        (true, &b"250 ok\r\n250 ok\r\n250 ok no data\r\n"[..]),
        (true, b"250 ok\r\n250 ok\r\n250 extra\r\n354 go\r\n"),
        (true, b"250 ok\r\n250 ok\r\n334 what\r\n"),
        (false, b"250 ok\r\n250 ok\r\n250 ok no data\r\n"),
    ] {
        let mut s = session(StartTls::Never, &["a@x"], b"hi\r\n");
        s.receive(b"220 x\r\n");
        take(&mut s);
        s.receive(if pipelining {
            b"250-x\r\n250 PIPELINING\r\n"
        } else {
            b"250 x\r\n"
        });
        let mut wrote = take(&mut s);
        // One reply at a time, as a server without pipelining needs.
        let mut rest = replies;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            s.receive(&rest[..=nl]);
            rest = &rest[nl + 1..];
            wrote += &take(&mut s);
        }
        let code = if replies.ends_with(b"334 what\r\n") {
            334
        } else {
            250
        };
        assert_eq!(
            s.outcome(),
            Some(&SessionOutcome::Failed(HostFailure::Protocol(
                ReplyError::Unexpected {
                    command: "DATA",
                    code
                }
            ))),
            "{replies:?}"
        );
        assert!(!wrote.contains("hi\r\n"), "message sent: {wrote:?}");
        assert!(wrote.ends_with("DATA\r\nQUIT\r\n"), "{wrote:?}");
    }
}
