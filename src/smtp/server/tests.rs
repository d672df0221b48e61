//! The receiving session driven in memory: LMTP and SMTP, as the MTA
//! hands over mail and as the sealed relay receives it.

use std::sync::Arc;

use super::commands::size_param;
use super::*;
use crate::pony::negotiation::{self, ServerIdentity};
use crate::pony::noise::PROTOCOL_NAME;
use crate::smtp::{BareNewlines, Envelope};

fn out(s: &mut ReceiveSession) -> String {
    String::from_utf8(std::mem::take(&mut s.output)).unwrap()
}

#[test]
fn size_parameter() {
    for (args, want) in [
        ("FROM:<a@b>", Ok(None)),
        ("FROM:<a@b> SIZE=1234", Ok(Some(1234))),
        ("FROM:<a@b> BODY=8BITMIME size=99", Ok(Some(99))),
        ("FROM:<a@b> SIZE=x", Err(())),
        ("FROM:<a@b> SIZE=", Err(())),
        ("FROM:<a@b> SIZE=-1", Err(())),
        ("FROM:<a@b> SIZE=99999999999999999999", Ok(Some(u64::MAX))),
        (
            "FROM:<a@b> SIZE=99999999999999999999999999",
            Ok(Some(u64::MAX)),
        ),
        ("FROM:<a=SIZE=5@b>", Ok(None)),
    ] {
        assert_eq!(size_param(args), want, "{args}");
    }
    let mut s = ReceiveSession::new(Protocol::Smtp, "bp.example", 1000);
    out(&mut s);
    // A size too large for 64 bits is too big, not "no size given"; a
    // size that is not a number is a syntax error (RFC 1870 §3, §6).
    s.input(
        b"EHLO mta.example\r\nMAIL FROM:<a@b> SIZE=1001\r\n\
          MAIL FROM:<a@b> SIZE=99999999999999999999999\r\nMAIL FROM:<a@b> SIZE=ten\r\n\
          MAIL FROM:<a@b> SIZE=1000\r\n",
    );
    let o = out(&mut s);
    assert!(
        o.ends_with(
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n\
             552 5.3.4 Message size exceeds fixed maximum message size\r\n\
             501 5.5.4 Bad message size syntax\r\n250 2.1.0 Ok\r\n"
        ),
        "{o}"
    );
    assert_eq!(s.declared_size(), Some(1000));
}

#[test]
fn one_reply_per_recipient_after_data() {
    let mut s = ReceiveSession::new(Protocol::Lmtp, "bp.example", 1000);
    assert!(out(&mut s).starts_with("220 "));
    s.input(b"LHLO mta.example\r\nMAIL FROM:<>\r\nRCPT TO:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
    let o = out(&mut s);
    assert!(o.contains("250-PIPELINING") && o.ends_with("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"), "{o}");
    s.input(b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n");
    assert_eq!(
        s.poll_event(),
        Some(ReceiveEvent::Deliver {
            envelope: Envelope {
                sender: String::new(),
                recipients: vec!["a@x.example".into(), "b@y.example".into()]
            },
            wire: b"Subject: x\r\n\r\n..dot\r\n.\r\n".to_vec()
        })
    );
    assert_eq!(out(&mut s), "", "QUIT waits for the delivery");
    s.delivered(&[
        Reply::new(250, "2.0.0 Ok: queued as R1"),
        Reply::new(450, "4.2.0 greylisted"),
    ]);
    assert_eq!(
        out(&mut s),
        "250 2.0.0 Ok: queued as R1\r\n450 4.2.0 greylisted\r\n221 2.0.0 Bye\r\n"
    );
    assert_eq!(s.poll_event(), Some(ReceiveEvent::Close));
}

#[test]
fn sequence_and_syntax_errors() {
    let mut s = ReceiveSession::new(Protocol::Lmtp, "bp", 1000);
    out(&mut s);
    s.input(b"MAIL FROM:<a@b>\r\nEHLO x\r\nLHLO x\r\nRCPT TO:<a@b>\r\nMAIL FROM:<a b>\r\nMAIL FROM:<a@b>\r\nDATA\r\nRCPT TO:<a@b>\r\nRCPT TO:<bad\r\n");
    let o = out(&mut s);
    let codes: Vec<&str> = o
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..3])
        .collect();
    assert_eq!(
        codes,
        [
            "503", "500", "250", "503", "501", "250", "554", "250", "501"
        ],
        "{o}"
    );
}

#[test]
fn smtp_mode_waits_for_the_remote_answers() {
    let mut s = ReceiveSession::new(Protocol::Smtp, "bp", 1000);
    assert!(out(&mut s).contains("ESMTP"));
    // A pipelining client: everything at once.
    s.input(b"EHLO mta\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\nRCPT TO:<b@y>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n");
    let o = out(&mut s);
    assert!(o.ends_with("250 2.1.0 Ok\r\n"), "{o}");
    assert_eq!(
        s.poll_event(),
        Some(ReceiveEvent::Recipient {
            sender: "s@x".into(),
            recipient: "a@y".into()
        })
    );
    assert_eq!(s.poll_event(), None, "nothing more until the answer");
    s.answer(&Reply::new(550, "5.1.1 remote says no"));
    assert_eq!(out(&mut s), "550 5.1.1 remote says no\r\n");
    assert!(
        matches!(s.poll_event(), Some(ReceiveEvent::Recipient { recipient, .. }) if recipient == "b@y")
    );
    s.answer(&Reply::new(250, "2.1.5 remote ok"));
    assert_eq!(s.poll_event(), Some(ReceiveEvent::Data));
    s.answer(&Reply::new(354, "remote go ahead"));
    assert_eq!(
        s.poll_event(),
        Some(ReceiveEvent::EndOfData {
            envelope: Envelope {
                sender: "s@x".into(),
                recipients: vec!["b@y".into()]
            },
            wire: b"hello\r\n.\r\n".to_vec()
        })
    );
    assert_eq!(
        out(&mut s),
        "250 2.1.5 remote ok\r\n354 remote go ahead\r\n"
    );
    s.answer(&Reply::new(250, "2.0.0 remote queued"));
    assert_eq!(out(&mut s), "250 2.0.0 remote queued\r\n221 2.0.0 Bye\r\n");
    assert_eq!(s.poll_event(), Some(ReceiveEvent::Close));
}

#[test]
fn smtp_mode_data_refused_and_reset() {
    let mut s = ReceiveSession::new(Protocol::Smtp, "bp", 1000);
    s.input(b"HELO mta\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\n");
    s.poll_event();
    s.answer(&Reply::new(250, "2.1.5 ok"));
    s.input(b"DATA\r\n");
    assert_eq!(s.poll_event(), Some(ReceiveEvent::Data));
    s.answer(&Reply::new(451, "4.3.0 remote busy"));
    out(&mut s);
    s.input(b"RSET\r\nDATA\r\n");
    assert_eq!(s.poll_event(), Some(ReceiveEvent::Reset));
    assert_eq!(
        out(&mut s),
        "250 2.0.0 Ok\r\n503 5.5.1 Error: need MAIL command\r\n"
    );
}

#[test]
fn oversized_message() {
    let mut s = ReceiveSession::new(Protocol::Lmtp, "bp", 10);
    s.input(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
    out(&mut s);
    s.input(b"0123456789012345678901234567890\r\n.\r\n");
    assert_eq!(
        out(&mut s),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert_eq!(s.poll_event(), None);
}

/// What a server's memory bound sees: the octets held of the message
/// arriving, none before or after it or once it is over the size limit; a
/// `421` in the middle of it ends the session with nothing delivered.
#[test]
fn message_bytes_held_and_close_mid_message() {
    for protocol in [Protocol::Lmtp, Protocol::Smtp] {
        let mut s = ReceiveSession::new(protocol, "bp", 20);
        let hello: &[u8] = match protocol {
            Protocol::Lmtp => b"LHLO x\r\n",
            Protocol::Smtp => b"EHLO x\r\n",
        };
        s.input(hello);
        s.input(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
        if protocol == Protocol::Smtp {
            while let Some(event) = s.poll_event() {
                if matches!(event, ReceiveEvent::Recipient { .. }) {
                    s.answer(&Reply::new(250, "2.1.5 Ok"));
                } else if event == ReceiveEvent::Data {
                    s.answer(&Reply::new(354, "go ahead"));
                }
            }
        }
        assert!(s.receiving_message(), "{protocol:?}");
        assert_eq!(s.message_bytes(), 0);
        s.input(b"0123456789\r\n");
        assert_eq!(s.message_bytes(), 12, "{protocol:?}");
        // Over the size limit: discarded, so no longer held.
        s.input(b"0123456789\r\n");
        assert_eq!(s.message_bytes(), 0, "{protocol:?}");
        out(&mut s);
        s.close_with(&Reply::new(421, "4.3.1 full"));
        assert_eq!(out(&mut s), "421 4.3.1 full\r\n");
        assert!(s.is_closed() && !s.receiving_message());
        assert_eq!(s.poll_event(), Some(ReceiveEvent::Close));
        // The rest of the message changes nothing.
        s.input(b".\r\n");
        s.close_with(&Reply::new(421, "4.3.2 again"));
        assert_eq!((out(&mut s).as_str(), s.poll_event()), ("", None));
    }
}

fn mx(options: ReceiveOptions) -> ReceiveSession {
    let mut s = ReceiveSession::new(Protocol::Smtp, "mx", 1000).with_options(options);
    out(&mut s);
    s
}

const STARTTLS: ReceiveOptions = ReceiveOptions {
    starttls: true,
    bare_newlines: BareNewlines::Normalize,
    refuse_nul: false,
};

#[test]
fn starttls_then_the_session_starts_over() {
    let mut s = mx(STARTTLS);
    s.input(b"EHLO c\r\nMAIL FROM:<a@b>\r\n");
    assert!(out(&mut s).contains("250 STARTTLS\r\n"));
    s.input(b"STARTTLS\r\n");
    assert_eq!(out(&mut s), "220 2.0.0 Ready to start TLS\r\n");
    // The open transaction ends (RFC 3207 §4.2), then the handshake.
    assert_eq!(s.poll_event(), Some(ReceiveEvent::Reset));
    assert_eq!(s.poll_event(), Some(ReceiveEvent::StartTls));
    s.tls_established();
    // Nothing from before TLS counts: MAIL needs EHLO again, and EHLO
    // no longer offers STARTTLS.
    s.input(b"MAIL FROM:<a@b>\r\nEHLO c\r\nSTARTTLS\r\n");
    let o = out(&mut s);
    assert!(o.starts_with("503 5.5.1 Send EHLO first\r\n"), "{o}");
    assert!(!o.contains("STARTTLS"), "{o}");
    assert!(o.ends_with("502 5.5.1 Command not implemented\r\n"), "{o}");
}

#[test]
fn starttls_offer_and_refusals() {
    // (options, input, expected output tail, closed)
    let cases: &[(ReceiveOptions, &[u8], &str, bool)] = &[
        (
            STARTTLS,
            b"EHLO c\r\n",
            "250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n",
            false,
        ),
        (
            ReceiveOptions::default(),
            b"EHLO c\r\n",
            "250 ENHANCEDSTATUSCODES\r\n",
            false,
        ),
        (
            ReceiveOptions::default(),
            b"EHLO c\r\nSTARTTLS\r\n",
            "502 5.5.1 Command not implemented\r\n",
            false,
        ),
        (
            STARTTLS,
            b"STARTTLS\r\n",
            "503 5.5.1 Send EHLO first\r\n",
            false,
        ),
        // CVE-2011-0411: a command pipelined behind STARTTLS.
        (
            STARTTLS,
            b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\n",
            "554 5.5.1 Error: command pipelined after STARTTLS, closing connection\r\n",
            true,
        ),
    ];
    for (options, input, tail, closed) in cases {
        let mut s = mx(*options);
        s.input(input);
        let o = out(&mut s);
        assert!(
            o.ends_with(tail),
            "{:?}: {o}",
            String::from_utf8_lossy(input)
        );
        assert_eq!(s.is_closed(), *closed);
        assert_ne!(s.poll_event(), Some(ReceiveEvent::StartTls));
    }
}

#[test]
fn content_refusals() {
    let strict = ReceiveOptions {
        starttls: false,
        bare_newlines: BareNewlines::Reject,
        refuse_nul: true,
    };
    let cases: &[(ReceiveOptions, &[u8], Option<&str>)] = &[
        (strict, b"ok\r\n.\r\n", None),
        (strict, b"bare\nlf\r\n.\r\n", Some("550 5.6.11 ")),
        (strict, b"bare\rcr\r\n.\r\n", Some("550 5.6.11 ")),
        (strict, b"nul\0here\r\n.\r\n", Some("550 5.6.0 ")),
        (ReceiveOptions::default(), b"nul\0here\r\n.\r\n", None),
        (ReceiveOptions::default(), b"bare\nlf\r\n.\r\n", None),
    ];
    for (options, message, refusal) in cases {
        let mut s = mx(*options);
        s.input(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
        s.poll_event();
        s.answer(&Reply::new(250, "2.1.5 Ok"));
        s.input(b"DATA\r\n");
        assert_eq!(s.poll_event(), Some(ReceiveEvent::Data));
        s.answer(&Reply::new(354, "go"));
        out(&mut s);
        s.input(message);
        match refusal {
            Some(code) => {
                assert_eq!(s.poll_event(), Some(ReceiveEvent::Reset));
                let o = out(&mut s);
                assert!(o.starts_with(code), "{o}");
            }
            None => assert!(matches!(
                s.poll_event(),
                Some(ReceiveEvent::EndOfData { .. })
            )),
        }
    }
}

fn pony_mx() -> ReceiveSession {
    let identity = Arc::new(ServerIdentity {
        key: crate::pony::noise::Keypair::from_secret([9; 32]),
        hints: Default::default(),
    });
    mx(STARTTLS).with_pony(identity)
}

/// XPONY refusals in the order of xpony.md §3.3, one reply each.
#[test]
fn xpony_state_rules() {
    let xpony = format!("XPONY {PROTOCOL_NAME} AAAA\r\n");
    // (input before XPONY, expected reply, listed in the last EHLO reply)
    let cases: &[(&str, &str)] = &[
        ("", "503 5.5.1 Send EHLO first\r\n"),
        ("HELO c\r\n", "503 5.5.1 Send EHLO first\r\n"),
        ("EHLO c\r\nHELO c\r\n", "503 5.5.1 Send EHLO first\r\n"),
        (
            "EHLO c\r\nMAIL FROM:<a@b>\r\n",
            "503 5.5.1 Not permitted during a mail transaction\r\n",
        ),
        // Message 1 is three zero octets: not a Noise message (R10).
        ("EHLO c\r\n", "535 5.7.8 Handshake failed\r\n"),
        ("EHLO c\r\nRSET\r\n", "535 5.7.8 Handshake failed\r\n"),
    ];
    for (before, want) in cases {
        let mut s = pony_mx();
        s.input(before.as_bytes());
        let o = out(&mut s);
        if before.starts_with("EHLO") {
            assert!(o.contains(&format!("250 XPONY {PROTOCOL_NAME}\r\n")), "{o}");
        }
        s.input(xpony.as_bytes());
        assert_eq!(out(&mut s), *want, "{before:?}");
        assert!(!s.is_closed());
    }
    // Without a host key XPONY is neither listed nor known; in LMTP never.
    let mut s = mx(STARTTLS);
    s.input(b"EHLO c\r\n");
    assert!(!out(&mut s).contains("XPONY"));
    s.input(xpony.as_bytes());
    assert_eq!(out(&mut s), "502 5.5.2 Error: command not recognized\r\n");
    // Syntax (R6) and name (R7) come before message 1.
    let mut s = pony_mx();
    s.input(b"EHLO c\r\nXPONY Noise_NN AAAA\r\nXPONY  x\r\n");
    let o = out(&mut s);
    assert!(
        o.ends_with("504 5.5.4 Unrecognized protocol name\r\n501 5.5.4 Syntax: XPONY protocol-name base64\r\n"),
        "{o}"
    );
    // After STARTTLS: R3, and not listed.
    let mut s = pony_mx();
    s.input(b"EHLO c\r\nSTARTTLS\r\n");
    out(&mut s);
    s.tls_established();
    s.input(b"EHLO c\r\n");
    assert!(!out(&mut s).contains("XPONY"));
    s.input(xpony.as_bytes());
    assert_eq!(out(&mut s), "503 5.5.1 Already encrypted\r\n");
}

/// A whole negotiation against the client's Noise side, then SMTP
/// again inside the channel; `*` and injection.
#[test]
fn xpony_handshake_then_smtp_starts_over() {
    use crate::pony::noise::{Initiator, Keypair};
    let start = |s: &mut ReceiveSession, after: &[u8]| {
        let greeting = out(s);
        s.input(b"EHLO c\r\n");
        let ehlo_reply = out(s);
        let prologue = negotiation::prologue(greeting.as_bytes(), b"EHLO c", ehlo_reply.as_bytes());
        let client = Initiator::new(
            &prologue,
            Keypair::from_secret([1; 32]),
            Keypair::from_secret([2; 32]),
        );
        let (waiting, m1) = client.write_message_1(&[]).unwrap();
        let mut line = format!(
            "XPONY {PROTOCOL_NAME} {}\r\n",
            negotiation::encode_line(&m1)
        )
        .into_bytes();
        line.extend_from_slice(after);
        s.input(&line);
        waiting
    };
    let fresh = || {
        let mut s = ReceiveSession::new(Protocol::Smtp, "mx", 1000).with_options(STARTTLS);
        s = s.with_pony(Arc::new(ServerIdentity {
            key: Keypair::from_secret([9; 32]),
            hints: Default::default(),
        }));
        s
    };
    let mut s = fresh();
    let waiting = start(&mut s, b"");
    let reply = out(&mut s);
    let m2 = negotiation::decode_line(reply.strip_prefix("334 ").unwrap().trim_end()).unwrap();
    let (confirm, _) = waiting.read_message_2(&m2).unwrap();
    let (_, m3) = confirm.write_message_3(&[]).unwrap();
    s.input(format!("{}\r\nframes", negotiation::encode_line(&m3)).as_bytes());
    assert_eq!(out(&mut s), "", "no plaintext reply to message 3");
    assert_eq!(s.poll_event(), Some(ReceiveEvent::StartPony));
    let (transport, already) = s.take_pony().unwrap();
    assert_eq!(
        transport.remote_static(),
        Keypair::from_secret([1; 32]).public()
    );
    assert_eq!(already, b"frames");
    s.pony_established();
    assert!(s.pony_up());
    s.input(b"MAIL FROM:<a@b>\r\nEHLO c\r\nXPONY x y\r\n");
    let o = out(&mut s);
    assert!(o.starts_with("503 5.5.1 Send EHLO first\r\n"), "{o}");
    assert!(!o.contains("STARTTLS") && !o.contains("250 XPONY"), "{o}");
    assert!(o.ends_with("503 5.5.1 Already encrypted\r\n"), "{o}");

    // `*` (R13): plaintext goes on.
    let mut s = fresh();
    start(&mut s, b"");
    out(&mut s);
    s.input(b"*\r\nNOOP\r\n");
    assert_eq!(out(&mut s), "501 5.7.0 XPONY aborted\r\n250 2.0.0 Ok\r\n");
    // R11: plaintext pipelined behind XPONY.
    let mut s = fresh();
    start(&mut s, b"MAIL FROM:<evil@x>\r\n");
    assert_eq!(
        out(&mut s),
        "554 5.5.1 Error: command pipelined after XPONY, closing connection\r\n"
    );
    assert!(s.is_closed());
    // R14: junk instead of message 3 closes.
    let mut s = fresh();
    start(&mut s, b"");
    out(&mut s);
    s.input(b"not base64!\r\n");
    assert_eq!(out(&mut s), "501 5.5.2 Cannot decode base64\r\n");
    assert!(s.is_closed());
}

/// The SMTP proxy sends DATA with the last RCPT when the MTA's DATA is
/// already there (RFC 2920 §3.1); only then.
#[test]
fn data_next_says_whether_the_mta_pipelined_data_behind_its_rcpt() {
    for (input, next) in [
        (&b"MAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\nDATA\r\n"[..], true),
        (b"MAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\ndata\n", true),
        (
            b"MAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\nRCPT TO:<b@y>\r\nDATA\r\n",
            false,
        ),
        (b"MAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\n", false),
        (b"MAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\nDAT", false),
        (b"MAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\nDATAX\r\n", false),
    ] {
        let mut s = ReceiveSession::new(Protocol::Smtp, "bp.test", 1 << 20);
        s.input(b"EHLO mta\r\n");
        s.input(input);
        assert!(
            matches!(s.poll_event(), Some(ReceiveEvent::Recipient { .. })),
            "{input:?}"
        );
        assert_eq!(s.data_next(), next, "{input:?}");
    }
    // Not while no RCPT waits for its answer.
    let s = ReceiveSession::new(Protocol::Smtp, "bp.test", 1 << 20);
    assert!(!s.data_next());
}

/// RFC 5321 §4.1.1.1 (RFC 2033 §4.1): a greeting names the client, so an
/// empty one is 501 and changes nothing.
#[test]
fn empty_greetings_are_refused() {
    for (protocol, lines, want) in [
        (
            Protocol::Smtp,
            &b"EHLO\r\nHELO \r\nMAIL FROM:<a@b>\r\n"[..],
            &[
                "501 5.5.4 Syntax: EHLO hostname",
                "501 5.5.4 Syntax: HELO hostname",
                "503 5.5.1 Send EHLO first",
            ][..],
        ),
        (
            Protocol::Lmtp,
            b"LHLO\r\nLHLO mta\r\nLHLO  \r\nMAIL FROM:<a@b>\r\n",
            &[
                "501 5.5.4 Syntax: LHLO hostname",
                "250 ",
                "501 5.5.4 Syntax: LHLO hostname",
                "250 2.1.0 Ok",
            ],
        ),
    ] {
        let mut s = ReceiveSession::new(protocol, "bp", 1000);
        out(&mut s);
        s.input(lines);
        let o = out(&mut s);
        let last: Vec<&str> = o
            .split("\r\n")
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .collect();
        assert_eq!(last.len(), want.len(), "{o}");
        for (got, want) in last.iter().zip(want) {
            assert!(got.starts_with(want), "{got} / {want}\n{o}");
        }
    }
}
