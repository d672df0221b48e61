//! The relay session driven in memory: a scripted client on one side, a
//! scripted backend on the other, no sockets.

use super::message::SIZE_SLACK;
use super::*;
use crate::inbound::identity::Identity;
use crate::smtp::BareNewlines;

struct Harness {
    session: Session,
}

fn config(identity: Identity) -> SessionConfig {
    SessionConfig {
        hostname: "mx.example.org".into(),
        identity,
        require_tls: false,
        bare_newlines: BareNewlines::Normalize,
        trace_header: false,
        pony: None,
        error_limits: ErrorLimits::default(),
    }
}

const BACKEND_EHLO: &str = "250-backend.example\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n\
    250-STARTTLS\r\n250-XCLIENT NAME ADDR PROTO HELO PORT\r\n250-XFORWARD NAME ADDR\r\n\
    250-CHUNKING\r\n250-BINARYMIME\r\n250-8BITMIME\r\n250-X-SECRET\r\n250 SMTPUTF8\r\n";

impl Harness {
    fn new(config: SessionConfig) -> Self {
        Harness {
            session: Session::new(
                Arc::new(config),
                "127.0.0.77:40000".parse().unwrap(),
                "127.0.0.1:25".parse().unwrap(),
            ),
        }
    }

    /// A session past the greeting, in the given mode.
    fn opened(identity: Identity) -> Self {
        let mut h = Harness::new(config(identity));
        h.backend("220 backend.example ESMTP\r\n");
        assert_eq!(h.take_client(), "220 backend.example ESMTP\r\n");
        h
    }

    fn client(&mut self, s: &str) {
        self.session.client_input(s.as_bytes());
    }

    fn backend(&mut self, s: &str) {
        self.session.backend_input(s.as_bytes());
    }

    fn take_client(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.session.to_client)).unwrap()
    }

    fn take_backend(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.session.to_backend)).unwrap()
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.session.poll_action()).collect()
    }

    /// A session inside a message: greeting, MAIL, RCPT, DATA and 354 done,
    /// the buffers emptied.
    fn in_message(config: SessionConfig) -> Self {
        let mut h = Harness::new(config);
        h.backend("220 ok\r\n");
        h.take_client();
        h.client("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
        h.backend("250 Ok\r\n250 Ok\r\n354 go\r\n");
        h.take_backend();
        h.take_client();
        h
    }

    /// A session past the greeting and, in XCLIENT mode, the identity
    /// handshake (EHLO, XCLIENT, the new greeting).
    fn identified(identity: Identity) -> Self {
        let mut h = Harness::opened(identity);
        if identity == Identity::Xclient {
            h.take_backend();
            h.backend(BACKEND_EHLO);
            h.take_backend();
            h.backend("220 backend.example ESMTP\r\n");
        }
        h
    }

    /// EHLO from the client, answered by the backend; returns what the client saw.
    fn ehlo(&mut self) -> String {
        self.client("EHLO client.example\r\n");
        assert_eq!(self.take_backend(), "EHLO client.example\r\n");
        self.backend(BACKEND_EHLO);
        self.take_client()
    }
}

const IDENTITIES: [Identity; 5] = [
    Identity::ProxyV2,
    Identity::ProxyV1,
    Identity::None,
    Identity::Exec,
    Identity::Xclient,
];

fn tls13() -> Encryption {
    Encryption::Tls {
        version: "TLSv1.3",
        cipher: "TLS_AES_256_GCM_SHA384".into(),
    }
}

#[test]
fn ehlo_is_rewritten() {
    let mut h = Harness::opened(Identity::ProxyV2);
    assert_eq!(
        h.ehlo(),
        "250-backend.example\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n\
         250-SMTPUTF8\r\n250 STARTTLS\r\n"
    );
}

#[test]
fn pipelined_replies_stay_in_order_with_local_ones() {
    let mut h = Harness::opened(Identity::ProxyV2);
    h.ehlo();
    h.client("MAIL FROM:<a@client.example>\r\nRCPT TO:<b@example.org>\r\nXCLIENT ADDR=1.2.3.4\r\nRCPT TO:<c@example.org>\r\nFOO\r\n");
    // The refused XCLIENT and the unknown command never reach the backend.
    assert_eq!(
        h.take_backend(),
        "MAIL FROM:<a@client.example>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\n"
    );
    assert_eq!(h.take_client(), "", "local replies wait for the backend's");
    h.backend("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
    assert_eq!(
        h.take_client(),
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.7.0 Error: insufficient authorization\r\n"
    );
    h.backend("550 5.1.1 <c@example.org>: unknown\r\n");
    assert_eq!(
        h.take_client(),
        "550 5.1.1 <c@example.org>: unknown\r\n502 5.5.2 Error: command not recognized\r\n"
    );
    let actions = h.actions();
    assert!(actions.contains(&Action::Log(Notice::CommandRefused { command: "XCLIENT" })));
    // The unknown command is logged too, without the client's text.
    assert!(actions.contains(&Action::Log(Notice::CommandRefused { command: "unknown" })));
}

#[test]
fn refused_commands_never_reach_the_backend() {
    for line in [
        "XCLIENT ADDR=1.2.3.4\r\n",
        "xforward NAME=spoof\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "BDAT 10 LAST\r\n",
        "TURN\r\n",
        "\0EHLO\r\n",
        "\r\n",
    ] {
        let mut h = Harness::opened(Identity::ProxyV2);
        h.client(line);
        assert_eq!(h.take_backend(), "", "{line:?} was forwarded");
        let reply = h.take_client();
        assert!(reply.starts_with('5'), "{line:?} got {reply:?}");
    }
}

#[test]
fn data_waits_for_354_before_reading_the_message() {
    let mut h = Harness::opened(Identity::ProxyV2);
    h.ehlo();
    // A client that does not wait for 354 (forbidden by RFC 2920 §3.1).
    h.client("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nRSET\r\nhello\r\n.\r\n");
    assert_eq!(
        h.take_backend(),
        "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
    );
    // The backend refuses the recipient, so DATA fails: what follows is
    // commands, as the backend will read it too.
    h.backend("250 2.1.0 Ok\r\n554 5.7.1 no\r\n554 5.5.1 Error: no valid recipients\r\n");
    assert_eq!(h.take_backend(), "RSET\r\n");
    h.backend("250 2.0.0 Ok\r\n");
    assert_eq!(
        h.take_client(),
        "250 2.1.0 Ok\r\n554 5.7.1 no\r\n554 5.5.1 Error: no valid recipients\r\n250 2.0.0 Ok\r\n\
         502 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: bad syntax\r\n"
    );
}

#[test]
fn message_is_forwarded_and_verdict_is_the_backends() {
    let mut h = Harness::opened(Identity::ProxyV2);
    h.ehlo();
    h.client("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
    h.take_backend();
    h.backend("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
    h.take_client();
    h.client("Subject: x\r\n\r\nbody\r\n..dot\r\n.\r\nQUIT\r\n");
    assert_eq!(
        h.take_backend(),
        "Subject: x\r\n\r\nbody\r\n..dot\r\n.\r\nQUIT\r\n"
    );
    assert_eq!(h.take_client(), "", "never answers for the backend");
    h.backend("250 2.0.0 Ok: queued as ABC\r\n221 2.0.0 Bye\r\n");
    assert_eq!(
        h.take_client(),
        "250 2.0.0 Ok: queued as ABC\r\n221 2.0.0 Bye\r\n"
    );
    assert_eq!(h.actions(), [Action::Close]);
    let stats = h.session.stats();
    assert_eq!((stats.messages, stats.end), (1, "quit"));
    assert_eq!(stats.last_reply, "250 2.0.0 Ok: queued as ABC");
}

#[test]
fn smuggled_end_of_data_is_neutralised() {
    // Each variant would end the message on a lenient server; here the
    // backend must see it as content and only the real end as the end.
    for variant in ["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r\n.\r", "\r.\r\n"] {
        let mut h = Harness::opened(Identity::ProxyV2);
        h.ehlo();
        h.client("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
        h.backend("250 Ok\r\n250 Ok\r\n354 go\r\n");
        h.take_backend();
        h.client(&format!(
            "body{variant}MAIL FROM:<evil@x>\r\nRCPT TO:<smuggled@y>\r\nDATA\r\nevil\r\n.\r\n"
        ));
        let forwarded = h.take_backend();
        let framed = format!("\r\n{forwarded}");
        assert_eq!(
            framed.matches("\r\n.\r\n").count(),
            1,
            "{variant:?} gave {forwarded:?}"
        );
        assert!(
            forwarded.ends_with("evil\r\n.\r\n"),
            "{variant:?} gave {forwarded:?}"
        );
        assert!(
            !forwarded.replace("\r\n", "").contains(['\r', '\n']),
            "{variant:?} left a bare newline in {forwarded:?}"
        );
        assert!(h.actions().is_empty());
    }
}

#[test]
fn bare_newline_reject_closes_without_end_of_data() {
    let mut c = config(Identity::ProxyV2);
    c.bare_newlines = BareNewlines::Reject;
    let mut h = Harness::in_message(c);
    h.client("line one\r\nsneaky\n.\nMAIL FROM:<x@y>\r\n");
    let partial = h.take_backend();
    assert!(!partial.contains("sneaky"), "{partial:?}");
    assert_eq!(h.take_client(), "");
    h.client("more\r\n.\r\n");
    assert_eq!(
        h.take_backend(),
        "",
        "the backend never sees an end of data"
    );
    assert!(h.take_client().starts_with("550 5.6.11 "));
    let actions = h.actions();
    assert!(
        actions.contains(&Action::Log(Notice::BareNewline { count: 2 })),
        "{actions:?}"
    );
    assert_eq!(actions.last(), Some(&Action::Close));
}

/// A NUL in a message is refused in every `--bare-newlines` mode, on the
/// path of a bare newline under `reject`: the chunk with the NUL is not
/// forwarded, the backend never gets an end of data, the client gets
/// `550 5.6.0` once the message has ended, and the session closes.
#[test]
fn nul_in_a_message_is_refused_without_end_of_data() {
    // (what follows "body" in the message, NULs in it)
    let cases: &[(&str, u64)] = &[
        // The issue's probes: an MTA that drops NULs sees CRLF.CRLF in each.
        ("\r\n\0.\r\n", 1),
        ("\r\n.\0\r\n", 1),
        ("\r\n\0.\r", 1),
        ("\r\n\0.\n", 1),
        // NUL away from any line end, several, at the very start of a line.
        ("\0", 1),
        (" x\0y\0z\r\n\0\0", 4),
        ("\r\n\0\r\n.\0", 2),
    ];
    for policy in [BareNewlines::Normalize, BareNewlines::Reject] {
        for &(tail, nuls) in cases {
            let mut c = config(Identity::ProxyV2);
            c.bare_newlines = policy;
            let mut h = Harness::in_message(c);
            // A clean first chunk goes out as usual.
            h.client("Subject: x\r\n\r\n");
            assert_eq!(h.take_backend(), "Subject: x\r\n\r\n");
            h.client(&format!(
                "body{tail}MAIL FROM:<evil@x>\r\nRCPT TO:<smuggled@y>\r\nDATA\r\n"
            ));
            let what = format!("{tail:?} with {policy:?}");
            assert_eq!(h.take_backend(), "", "{what}: the NUL chunk was forwarded");
            assert_eq!(h.take_client(), "", "{what}: answered before the end");
            h.client("evil\r\n.\r\n");
            assert_eq!(
                h.take_backend(),
                "",
                "{what}: the backend got an end of data"
            );
            assert_eq!(
                h.take_client(),
                "550 5.6.0 Message refused: message contains NUL characters (RFC 5322 section 3.5)\r\n",
                "{what}"
            );
            let actions = h.actions();
            assert!(
                actions.contains(&Action::Log(Notice::Nul { count: nuls })),
                "{what}: {actions:?}"
            );
            assert_eq!(actions.last(), Some(&Action::Close), "{what}");
            assert_eq!(h.session.stats().end, "message-refused", "{what}");
            assert_eq!(h.session.stats().refused, 1, "{what}");
        }
    }
}

/// NUL in a chunk that also ends the message: refused in the same turn.
#[test]
fn nul_in_the_last_chunk_is_refused() {
    let mut h = Harness::in_message(config(Identity::ProxyV2));
    h.client("a\0b\r\n.\r\nQUIT\r\n");
    assert_eq!(h.take_backend(), "");
    assert!(h.take_client().starts_with("550 5.6.0 "));
    assert_eq!(h.actions().last(), Some(&Action::Close));
}

/// NUL in a command line: `500 5.5.2`, never forwarded, wherever it is.
#[test]
fn nul_in_a_command_line_is_a_syntax_error() {
    for line in [
        "\0\r\n",
        "\0EHLO x\r\n",
        "EHLO x\0\r\n",
        "EHLO x\0.example\r\n",
        "MAIL FROM:<a@b>\0\r\n",
        "MAIL\0FROM:<a@b>\r\n",
        "RCPT TO:<b@c>\0RCPT TO:<d@e>\r\n",
        "NOOP\0\n",
        "QUIT\0\r\n",
    ] {
        let mut h = Harness::opened(Identity::ProxyV2);
        h.ehlo();
        h.client(line);
        assert_eq!(h.take_backend(), "", "{line:?} was forwarded");
        assert_eq!(
            h.take_client(),
            "500 5.5.2 Error: bad syntax\r\n",
            "{line:?}"
        );
        assert!(!h.session.is_closed(), "{line:?}");
    }
}

#[test]
fn starttls_then_fresh_start() {
    let mut h = Harness::opened(Identity::ProxyV2);
    h.ehlo();
    h.client("MAIL FROM:<before@tls>\r\n");
    h.take_backend();
    h.client("STARTTLS\r\n");
    assert_eq!(h.take_client(), "", "the answer waits for the MAIL reply");
    h.backend("250 2.1.0 Ok\r\n");
    // Not inside the transaction MAIL opened (as Postfix).
    assert_eq!(
        h.take_client(),
        "250 2.1.0 Ok\r\n503 5.5.1 Error: MAIL transaction in progress\r\n"
    );
    assert_eq!(h.actions(), []);
    h.client("RSET\r\nSTARTTLS\r\n");
    assert_eq!(h.take_backend(), "RSET\r\n");
    h.backend("250 2.0.0 Ok\r\n");
    assert_eq!(
        h.take_client(),
        "250 2.0.0 Ok\r\n220 2.0.0 Ready to start TLS\r\n"
    );
    assert_eq!(h.actions(), [Action::StartTls]);
    assert!(!h.session.wants_client_input());

    h.session.tls_established(tls13());
    // Nothing from before TLS survives at the backend: the old connection is
    // told QUIT and a new one (with a new PROXY header) replaces it.
    assert_eq!(h.take_backend(), "QUIT\r\n");
    assert_eq!(h.actions(), [Action::RestartBackend]);
    h.client("EHLO client.example\r\n");
    assert_eq!(h.take_backend(), "", "waits for the new backend's greeting");
    h.session.backend_restarted();
    h.backend("220 backend.example ESMTP\r\n");
    assert_eq!(h.take_client(), "", "the new greeting is not relayed");
    assert_eq!(h.take_backend(), "EHLO client.example\r\n");
    h.backend(BACKEND_EHLO);
    let ehlo = h.take_client();
    assert!(ehlo.starts_with("250-backend.example\r\n"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    h.client("STARTTLS\r\n");
    assert_eq!(h.take_client(), "554 5.5.1 Error: TLS already active\r\n");
}

/// A backend that refuses a second EHLO (RFC 5321 §4.1.4 allows it; OpenSMTPD
/// answers "503 5.5.1 Invalid command: Already identified") never sees one:
/// after STARTTLS the client's EHLO is the first on a new connection, in every
/// mode but XCLIENT (whose backend, Postfix, takes EHLO again after RSET).
#[test]
fn starttls_never_sends_a_backend_a_second_ehlo() {
    for identity in IDENTITIES {
        let mut h = Harness::identified(identity);
        h.ehlo();
        h.client("STARTTLS\r\n");
        h.take_client();
        assert_eq!(h.actions(), [Action::StartTls], "{identity:?}");
        h.session.tls_established(tls13());
        if identity == Identity::Xclient {
            assert_eq!(h.take_backend(), "RSET\r\n");
            assert_eq!(h.actions(), []);
            continue;
        }
        assert_eq!(h.take_backend(), "QUIT\r\n", "{identity:?}");
        assert_eq!(h.actions(), [Action::RestartBackend], "{identity:?}");
        h.session.backend_restarted();
        h.backend("220 new backend\r\n");
        h.client("EHLO client.example\r\n");
        assert_eq!(h.take_backend(), "EHLO client.example\r\n", "{identity:?}");
        h.backend("250 new backend\r\n");
        assert_eq!(h.take_client(), "250 new backend\r\n", "{identity:?}");
    }
}

#[test]
fn plaintext_pipelined_after_starttls_is_refused() {
    for tail in ["MAIL FROM:<x@y>\r\n", "E", "\r\n"] {
        let mut h = Harness::opened(Identity::ProxyV2);
        h.ehlo();
        h.client(&format!("STARTTLS\r\n{tail}"));
        assert!(h.take_client().starts_with("554 5.5.1 "), "{tail:?}");
        assert_eq!(h.take_backend(), "");
        let actions = h.actions();
        assert!(!actions.contains(&Action::StartTls), "{tail:?}");
        assert!(
            actions.contains(&Action::Log(Notice::StartTlsInjection {
                bytes: tail.len()
            })),
            "{actions:?}"
        );
        assert_eq!(actions.last(), Some(&Action::Close));
    }
}

#[test]
fn injection_arriving_while_starttls_waits_is_refused() {
    let mut h = Harness::opened(Identity::ProxyV2);
    h.ehlo();
    h.client("NOOP\r\nSTARTTLS\r\n");
    h.client("MAIL FROM:<x@y>\r\n");
    h.backend("250 2.0.0 Ok\r\n");
    assert_eq!(
        h.take_client(),
        "250 2.0.0 Ok\r\n554 5.5.1 Error: command pipelined after STARTTLS, closing connection\r\n"
    );
    assert_eq!(h.take_backend(), "NOOP\r\n");
}

#[test]
fn require_tls() {
    let mut c = config(Identity::ProxyV2);
    c.require_tls = true;
    let mut h = Harness::new(c);
    h.backend("220 ok\r\n");
    h.take_client();
    h.client("EHLO c\r\nNOOP\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nRSET\r\nQUIT\r\n");
    assert_eq!(h.take_backend(), "EHLO c\r\nNOOP\r\nRSET\r\nQUIT\r\n");
    h.backend(BACKEND_EHLO);
    h.backend("250 Ok\r\n250 Ok\r\n221 Bye\r\n");
    let out = h.take_client();
    assert_eq!(
        out.matches("530 5.7.0 Must issue a STARTTLS command first\r\n")
            .count(),
        3,
        "{out}"
    );
    assert!(out.ends_with("221 Bye\r\n"));
}

#[test]
fn xclient_identifies_the_client_once() {
    let mut h = Harness::new(config(Identity::Xclient));
    h.backend("220 backend.example ESMTP\r\n");
    assert_eq!(h.take_client(), "220 backend.example ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO mx.example.org\r\n");
    // A client that talks early waits until the backend knows who it is.
    h.client("EHLO client.example\r\n");
    assert_eq!(h.take_backend(), "");
    h.backend(BACKEND_EHLO);
    assert_eq!(
        h.take_backend(),
        "XCLIENT ADDR=127.0.0.77 PORT=40000 NAME=[UNAVAILABLE]\r\n"
    );
    assert_eq!(h.take_backend(), "", "nothing is pipelined after XCLIENT");
    h.backend("220 backend.example ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO client.example\r\n");
    h.backend(BACKEND_EHLO);
    let out = h.take_client();
    assert!(out.starts_with("250-backend.example\r\n"), "{out}");
    assert!(!out.contains("220"), "own replies are not relayed: {out}");
    // Neither a second EHLO nor STARTTLS sends XCLIENT again.
    h.client("EHLO again.example\r\n");
    assert_eq!(h.take_backend(), "EHLO again.example\r\n");
    h.backend(BACKEND_EHLO);
    h.client("STARTTLS\r\n");
    h.take_client();
    h.session.tls_established(tls13());
    assert_eq!(h.take_backend(), "RSET\r\n");
}

#[test]
fn xclient_refused_by_backend_is_a_421() {
    let mut h = Harness::new(config(Identity::Xclient));
    h.backend("220 backend.example ESMTP\r\n");
    h.take_client();
    h.take_backend();
    h.backend("250-backend.example\r\n250 PIPELINING\r\n");
    assert!(h.take_client().starts_with("421 4.3.0 "));
    let actions = h.actions();
    assert!(matches!(
        actions[0],
        Action::Log(Notice::BackendRefused { step: "ehlo", .. })
    ));
    assert_eq!(actions.last(), Some(&Action::Close));
}

#[test]
fn exec_backend_restarts_after_tls() {
    let mut h = Harness::opened(Identity::Exec);
    h.ehlo();
    h.client("STARTTLS\r\n");
    h.take_client();
    assert_eq!(h.actions(), [Action::StartTls]);
    h.session.tls_established(tls13());
    assert_eq!(h.actions(), [Action::RestartBackend]);
    assert_eq!(h.take_backend(), "QUIT\r\n", "for the old program");
    h.client("EHLO client.example\r\n");
    assert_eq!(h.take_backend(), "", "waits for the new backend's greeting");
    h.session.backend_restarted();
    h.backend("220 new backend\r\n");
    assert_eq!(h.take_client(), "", "the new greeting is not relayed");
    assert_eq!(h.take_backend(), "EHLO client.example\r\n");
}

#[test]
fn auth_responses_are_lines_not_commands() {
    let mut h = Harness::opened(Identity::ProxyV2);
    h.ehlo();
    h.client("AUTH LOGIN\r\n");
    assert_eq!(h.take_backend(), "AUTH LOGIN\r\n");
    h.client("dXNlcg==\r\n");
    assert_eq!(h.take_backend(), "", "waits for the 334");
    h.backend("334 VXNlcm5hbWU6\r\n");
    assert_eq!(h.take_backend(), "dXNlcg==\r\n");
    h.backend("334 UGFzc3dvcmQ6\r\n");
    h.client("cGFzcw==\r\n");
    assert_eq!(h.take_backend(), "cGFzcw==\r\n");
    h.backend("535 5.7.8 no\r\n");
    h.client("NOOP\r\n");
    assert_eq!(h.take_backend(), "NOOP\r\n");
}

#[test]
fn over_long_command_line() {
    let mut h = Harness::opened(Identity::ProxyV2);
    let long = "A".repeat(crate::smtp::limits::MAX_COMMAND_LINE + 100);
    h.client(&long);
    h.client("\r\nNOOP\r\n");
    assert_eq!(h.take_backend(), "NOOP\r\n");
    assert_eq!(h.take_client(), "500 5.5.2 Error: line too long\r\n");
    h.backend("250 Ok\r\n");
    assert_eq!(h.take_client(), "250 Ok\r\n");
}

#[test]
fn broken_or_unsolicited_backend_replies() {
    let mut h = Harness::opened(Identity::ProxyV2);
    h.backend("250 surprise\r\n");
    assert!(h.take_client().starts_with("421 4.3.0 "));
    assert!(h.session.is_closed());

    let mut h = Harness::opened(Identity::ProxyV2);
    h.backend("421 4.4.2 backend.example timeout\r\n");
    assert_eq!(h.take_client(), "421 4.4.2 backend.example timeout\r\n");
    assert!(h.session.is_closed());

    let mut h = Harness::opened(Identity::ProxyV2);
    h.client("NOOP\r\n");
    h.backend("garbage\r\n");
    assert!(h.take_client().starts_with("421 4.3.0 "));

    let mut h = Harness::opened(Identity::ProxyV2);
    h.client("NOOP\r\n");
    h.session.backend_eof();
    assert!(h.take_client().starts_with("421 4.3.2 "));
}

#[test]
fn timeouts_name_the_silent_side() {
    let mut h = Harness::opened(Identity::ProxyV2);
    h.session.timeout();
    assert!(h.take_client().starts_with("421 4.4.2 "));
    let mut h = Harness::opened(Identity::ProxyV2);
    h.client("NOOP\r\n");
    assert!(h.session.awaiting_backend());
    h.session.timeout();
    assert!(h.take_client().starts_with("421 4.4.1 "));
    // proto-spec §3.3 R17: no message 3 after our 334.
    let (mut h, _, _) = pony_opened();
    h.client(&xpony_line());
    assert!(h.take_client().starts_with("334 "));
    h.session.timeout();
    assert_eq!(h.take_client(), "421 4.4.2 Timeout waiting for XPONY\r\n");
    assert!(h.session.is_closed());
}

#[test]
fn trace_header_opens_the_message() {
    let mut c = config(Identity::ProxyV2);
    c.trace_header = true;
    let mut h = Harness::new(c);
    h.backend("220 ok\r\n");
    h.ehlo();
    h.client("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
    h.take_backend();
    h.backend("250 Ok\r\n250 Ok\r\n354 go\r\n");
    h.client("Subject: hi\r\n\r\nbody\r\n.\r\n");
    let forwarded = h.take_backend();
    assert!(
        forwarded.starts_with(
            "Received: from client.example (unknown [127.0.0.77])\r\n\tby mx.example.org (blackpony) with ESMTP (without TLS);\r\n\t"
        ),
        "{forwarded}"
    );
    assert!(
        forwarded.ends_with("+0000\r\nSubject: hi\r\n\r\nbody\r\n.\r\n"),
        "{forwarded}"
    );
}

#[test]
fn oversized_message_is_cut_off() {
    let mut h = Harness::opened(Identity::ProxyV2);
    h.ehlo(); // SIZE 1000000
    h.client("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
    h.backend("250 Ok\r\n250 Ok\r\n354 go\r\n");
    h.take_backend();
    h.take_client();
    let line = format!("{}\r\n", "x".repeat(998));
    for _ in 0..1100 {
        h.client(&line);
    }
    let forwarded = h.take_backend();
    assert!(forwarded.len() as u64 <= 1_000_000 + SIZE_SLACK + 1000);
    h.client(".\r\n");
    assert!(h.take_client().starts_with("552 5.3.4 "));
    assert!(h.session.is_closed());
}

#[test]
fn byte_at_a_time_client_gets_the_same_result() {
    let script = "EHLO client.example\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n";
    let mut h = Harness::opened(Identity::ProxyV2);
    for b in script.bytes() {
        h.session.client_input(&[b]);
    }
    assert_eq!(
        h.take_backend(),
        "EHLO client.example\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
    );
    for b in "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n".bytes() {
        h.session.backend_input(&[b]);
    }
    assert_eq!(
        h.take_client(),
        "250-ok\r\n250 STARTTLS\r\n250 ok\r\n250 ok\r\n354 go\r\n"
    );
}

fn pony_config() -> SessionConfig {
    let mut c = config(Identity::ProxyV2);
    c.pony = Some(Arc::new(crate::pony::negotiation::ServerIdentity {
        key: crate::pony::noise::Keypair::from_secret([9; 32]),
        hints: crate::pony::negotiation::ServerHints {
            max_age: 3600,
            successor: None,
            hostname: Some("mx.example.org".into()),
        },
    }));
    c
}

/// Opens a session with XPONY offered; returns the harness, the greeting
/// and the EHLO reply as the client saw them.
fn pony_opened() -> (Harness, String, String) {
    let mut h = Harness::new(pony_config());
    h.backend("220 backend.example ESMTP\r\n");
    let greeting = h.take_client();
    let ehlo = h.ehlo();
    assert!(
        ehlo.contains("250 XPONY Noise_XX_25519_ChaChaPoly_SHA256\r\n"),
        "{ehlo}"
    );
    (h, greeting, ehlo)
}

#[test]
fn xpony_handshake_switches_to_frames() {
    use crate::pony::negotiation::{ServerHints, decode_line, encode_line, prologue};
    use crate::pony::noise::{Initiator, Keypair};
    let (mut h, greeting, ehlo) = pony_opened();
    let pro = prologue(greeting.as_bytes(), b"EHLO client.example", ehlo.as_bytes());
    let init = Initiator::new(
        &pro,
        Keypair::generate().unwrap(),
        Keypair::generate().unwrap(),
    );
    let (init, m1) = init.write_message_1(&[]).unwrap();
    h.client(&format!(
        "XPONY Noise_XX_25519_ChaChaPoly_SHA256 {}\r\n",
        encode_line(&m1)
    ));
    assert_eq!(h.take_backend(), "", "XPONY never reaches the backend");
    let reply = h.take_client();
    let m2 = decode_line(reply.strip_prefix("334 ").unwrap().trim_end()).unwrap();
    let (init, payload) = init.read_message_2(&m2).unwrap();
    assert_eq!(init.remote_static(), Keypair::from_secret([9; 32]).public());
    assert_eq!(ServerHints::decode(&payload).unwrap().max_age, 3600);
    let (client_transport, m3) = init.write_message_3(&[]).unwrap();
    // Message 3 and the first frame arrive together.
    let mut channel = crate::pony::channel::Channel::new(client_transport);
    let mut frames = Vec::new();
    channel
        .seal_data(b"EHLO client.example\r\n", &mut frames)
        .unwrap();
    let mut bytes = format!("{}\r\n", encode_line(&m3)).into_bytes();
    bytes.extend_from_slice(&frames);
    h.session.client_input(&bytes);
    assert_eq!(h.actions(), [Action::StartPony]);
    let (server_transport, already_read) = h.session.take_pony().unwrap();
    assert_eq!(
        already_read, frames,
        "the first frame is handed to the channel"
    );
    let info = crate::transport::Encryption::pony(&server_transport);
    h.session.pony_established(info);
    // Nothing from before the switch survives (§6): a new backend connection.
    assert_eq!(h.take_backend(), "QUIT\r\n");
    assert_eq!(h.actions(), [Action::RestartBackend]);
    h.client("EHLO client.example\r\n");
    h.session.backend_restarted();
    h.backend("220 backend.example ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO client.example\r\n");
    h.backend(BACKEND_EHLO);
    let after = h.take_client();
    assert!(
        !after.contains("XPONY") && !after.contains("STARTTLS"),
        "{after}"
    );
    // §6: MAIL before the new EHLO is refused here, whatever the backend
    // would say.
    let (mut h2, _, _) = pony_opened();
    h2.session.phase = Phase::Commands;
    h2.session.tls = Some(Box::new(crate::transport::Encryption::Pony {
        peer: [3; 32],
    }));
    h2.session.dialogue = Dialogue::Restarted;
    h2.client("MAIL FROM:<a@b>\r\n");
    assert_eq!(h2.take_client(), "503 5.5.1 Send EHLO first\r\n");
    assert!(!h2.take_backend().contains("MAIL"));
    // §6: neither may start again.
    h.client("STARTTLS\r\n");
    assert_eq!(h.take_client(), "503 5.5.1 Already encrypted\r\n");
    h.client("XPONY Noise_XX_25519_ChaChaPoly_SHA256 AAAA\r\n");
    assert_eq!(h.take_client(), "503 5.5.1 Already encrypted\r\n");
}

#[test]
fn xpony_refusals() {
    // Not offered without a host key.
    let mut h = Harness::opened(Identity::ProxyV2);
    h.ehlo();
    h.client("XPONY Noise_XX_25519_ChaChaPoly_SHA256 AAAA\r\n");
    assert!(h.take_client().starts_with("502 "));

    let (mut h, _, _) = pony_opened();
    h.client("XPONY Noise_NN_25519_ChaChaPoly_SHA256 AAAA\r\n");
    assert!(h.take_client().starts_with("504 5.5.4"));
    h.client("XPONY Noise_XX_25519_ChaChaPoly_SHA256 !!!\r\n");
    assert!(h.take_client().starts_with("501 5.5.2"));
    // A message 1 that is too short: 535, and still plaintext.
    h.client("XPONY Noise_XX_25519_ChaChaPoly_SHA256 AAAA\r\n");
    assert!(h.take_client().starts_with("535 5.7.8"));
    h.client("NOOP\r\n");
    assert_eq!(h.take_backend(), "NOOP\r\n");

    // Plaintext pipelined behind XPONY.
    let (mut h, _, _) = pony_opened();
    let m1 = crate::pony::negotiation::encode_line(&[1u8; 32]);
    h.client(&format!(
        "XPONY Noise_XX_25519_ChaChaPoly_SHA256 {m1}\r\nMAIL FROM:<x@y>\r\n"
    ));
    assert!(h.take_client().starts_with("554 5.5.1"));
    assert!(
        h.actions()
            .contains(&Action::Log(Notice::XponyInjection { bytes: 17 }))
    );
    assert!(h.session.is_closed());

    // The client gives up with `*` after our 334.
    let (mut h, _, _) = pony_opened();
    h.client(&xpony_line());
    assert!(h.take_client().starts_with("334 "));
    h.client("*\r\n");
    assert_eq!(h.take_client(), "501 5.7.0 XPONY aborted\r\n");
    // A bad message 3 closes the connection.
    let (mut h, _, _) = pony_opened();
    h.client(&xpony_line());
    h.take_client();
    h.client("AAAA\r\n");
    assert!(h.take_client().starts_with("535 5.7.8"));
    assert!(h.session.is_closed());
}

/// Sends XPONY with a fresh message 1 under `prologue`; returns the
/// initiator waiting for message 2.
fn send_xpony(h: &mut Harness, prologue: &[u8]) -> crate::pony::noise::InitiatorAwaitingResponse {
    use crate::pony::noise::{Initiator, Keypair};
    let (init, m1) = Initiator::new(
        prologue,
        Keypair::generate().unwrap(),
        Keypair::generate().unwrap(),
    )
    .write_message_1(&[])
    .unwrap();
    h.client(&format!(
        "XPONY Noise_XX_25519_ChaChaPoly_SHA256 {}\r\n",
        crate::pony::negotiation::encode_line(&m1)
    ));
    init
}

/// proto-spec §3.3: a failing message 1 gets R10 even with octets behind
/// it, which are then ordinary pipelined commands (Appendix B D5, D6); a
/// message 3 line that is not base64 gets R14, one whose payload breaks
/// §4.4 gets R15; both close.
#[test]
fn xpony_check_order_and_message_3_failures() {
    use crate::pony::negotiation::{decode_line, encode_line, prologue};
    use crate::pony::noise::{Initiator, Keypair};
    // The all-zero point: message 2 cannot be written (§4.1).
    let (mut h, _, _) = pony_opened();
    h.client(&format!(
        "XPONY Noise_XX_25519_ChaChaPoly_SHA256 {}\r\nNOOP\r\n",
        encode_line(&[0u8; 32])
    ));
    assert!(h.take_client().starts_with("535 5.7.8"));
    assert!(!h.session.is_closed());
    assert_eq!(h.take_backend(), "NOOP\r\n");

    // A message 1 payload over 1024 octets (§4.3).
    let (mut h, _, _) = pony_opened();
    let mut payload = vec![0x7f, 0x03, 0xfe];
    payload.resize(1025, 0);
    let (_, m1) = Initiator::new(
        b"",
        Keypair::generate().unwrap(),
        Keypair::generate().unwrap(),
    )
    .write_message_1(&payload)
    .unwrap();
    h.client(&format!(
        "XPONY Noise_XX_25519_ChaChaPoly_SHA256 {}\r\n",
        encode_line(&m1)
    ));
    assert!(h.take_client().starts_with("535 5.7.8"));

    for line in ["AAAA=\r\n", "\r\n"] {
        let (mut h, _, _) = pony_opened();
        send_xpony(&mut h, b"");
        assert!(h.take_client().starts_with("334 "));
        h.client(line);
        assert!(h.take_client().starts_with("501 5.5.2"), "{line:?}");
        assert!(h.session.is_closed());
    }

    // A message 3 that authenticates but carries an empty hostname.
    let (mut h, greeting, ehlo) = pony_opened();
    let pro = prologue(greeting.as_bytes(), b"EHLO client.example", ehlo.as_bytes());
    let init = send_xpony(&mut h, &pro);
    let reply = h.take_client();
    let m2 = decode_line(reply[4..].trim_end()).unwrap();
    let (init, _) = init.read_message_2(&m2).unwrap();
    let (_, m3) = init.write_message_3(&[3, 0, 0]).unwrap();
    h.client(&format!("{}\r\n", encode_line(&m3)));
    assert!(h.take_client().starts_with("535 5.7.8"));
    assert!(h.session.is_closed());
    assert!(h.session.take_pony().is_none());
}

/// proto-spec §3.3 R2: no XPONY inside a mail transaction, decided when the
/// backend's reply to MAIL is known; RSET (or the end of data) ends it.
#[test]
fn xpony_refused_during_a_mail_transaction() {
    let (mut h, _, _) = pony_opened();
    // Pipelined: the MAIL reply is still owed when XPONY arrives.
    h.client(&format!("MAIL FROM:<a@b>\r\n{}", xpony_line()));
    assert_eq!(h.take_backend(), "MAIL FROM:<a@b>\r\n");
    h.backend("250 2.1.0 Ok\r\n");
    assert_eq!(
        h.take_client(),
        "250 2.1.0 Ok\r\n503 5.5.1 Not permitted during a mail transaction\r\n"
    );
    // A refused MAIL opens nothing; RSET closes what was open.
    h.client("RSET\r\n");
    h.backend("250 2.0.0 Ok\r\n");
    h.take_client();
    h.client("MAIL FROM:<bad>\r\n");
    h.backend("501 5.1.7 Bad sender address syntax\r\n");
    h.take_client();
    h.take_backend();
    h.client(&xpony_line());
    assert!(h.take_client().starts_with("334 "));
}

/// proto-spec §3.3 R16: a message 3 line over the limit is answered and the
/// connection closed (the next line must not be taken for message 3).
#[test]
fn over_long_message_3_closes() {
    let (mut h, _, _) = pony_opened();
    h.client(&xpony_line());
    assert!(h.take_client().starts_with("334 "));
    h.client(&format!("{}\r\n", "A".repeat(5000)));
    assert_eq!(h.take_client(), "500 5.5.6 Line too long\r\n");
    assert!(h.session.is_closed());
}

/// An XPONY command with a well-formed message 1 (for a prologue the server
/// will not share, so message 2 is all it gets to).
fn xpony_line() -> String {
    let (_, m1) = crate::pony::noise::Initiator::new(
        b"x",
        crate::pony::noise::Keypair::generate().unwrap(),
        crate::pony::noise::Keypair::generate().unwrap(),
    )
    .write_message_1(&[])
    .unwrap();
    format!(
        "XPONY Noise_XX_25519_ChaChaPoly_SHA256 {}\r\n",
        crate::pony::negotiation::encode_line(&m1)
    )
}

/// A client that pipelines the end of its message and QUIT and then
/// closes (EOF, or an XPONY CLOSE) still gets the backend's verdict: the
/// replies owed for what it sent are relayed before the session closes.
/// A message cut off before its end of data is not finished for it.
#[test]
fn replies_owed_at_client_eof_are_still_relayed() {
    let mut h = Harness::opened(Identity::ProxyV2);
    h.ehlo();
    h.client("MAIL FROM:<a@b>\r\n");
    h.backend("250 2.1.0 Ok\r\n");
    h.client("RCPT TO:<c@d>\r\n");
    h.backend("250 2.1.5 Ok\r\n");
    h.client("DATA\r\n");
    h.backend("354 go\r\n");
    h.take_client();
    h.take_backend();
    h.client("Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    h.session.client_eof();
    assert!(!h.session.is_closed(), "the backend still owes two replies");
    assert!(!h.session.wants_client_input());
    assert!(h.take_backend().ends_with(".\r\nQUIT\r\n"));
    h.backend("250 2.0.0 Ok: queued as X\r\n221 2.0.0 Bye\r\n");
    assert_eq!(
        h.take_client(),
        "250 2.0.0 Ok: queued as X\r\n221 2.0.0 Bye\r\n"
    );
    assert!(h.session.is_closed());

    // Cut off in the middle of a message: closed at once, no end of data.
    let mut h = Harness::opened(Identity::ProxyV2);
    h.ehlo();
    h.client("MAIL FROM:<a@b>\r\n");
    h.backend("250 2.1.0 Ok\r\n");
    h.client("RCPT TO:<c@d>\r\n");
    h.backend("250 2.1.5 Ok\r\n");
    h.client("DATA\r\n");
    h.backend("354 go\r\n");
    h.take_backend();
    h.client("Subject: x\r\n\r\nhalf a bo");
    h.session.client_eof();
    assert!(h.session.is_closed());
    assert!(!h.take_backend().contains("\r\n.\r\n"));
}

/// proto-spec §3.1: exactly one SP between the fields, a protocol name of
/// its characters, a message 1 that is there: anything else is R6.
#[test]
fn xpony_syntax_is_strict() {
    let name = "Noise_XX_25519_ChaChaPoly_SHA256";
    for line in [
        format!("XPONY  {name} AAAA\r\n"),
        format!("XPONY\t{name} AAAA\r\n"),
        format!("XPONY {name}  AAAA\r\n"),
        format!("XPONY {name} \r\n"),
        format!("XPONY {name} AAAA \r\n"),
        "XPONY Noise-XX AAAA\r\n".to_string(),
        format!("XPONY {name}\r\n"),
    ] {
        let (mut h, _, _) = pony_opened();
        h.client(&line);
        assert_eq!(
            h.take_client(),
            "501 5.5.4 Syntax: XPONY protocol-name base64\r\n",
            "{line:?}"
        );
    }
    // The verb's case does not matter (RFC 5321 §2.4); the name's does.
    let (mut h, _, _) = pony_opened();
    h.client("xpony noise_xx_25519_chachapoly_sha256 AAAA\r\n");
    assert!(h.take_client().starts_with("504 5.5.4"));
}

/// proto-spec §3.1, §3.3: the line ends in CR LF (a bare LF is R6), the
/// message field is visible ASCII (a control character is R6); visible
/// characters that are not base64 are R8 (5.5.2); an over-long XPONY line
/// is R5 (5.5.6, as AUTH's). After the 334 a line ended by a bare LF,
/// `*` included, is R14 and closes.
#[test]
fn xpony_line_ends_and_characters() {
    let name = "Noise_XX_25519_ChaChaPoly_SHA256";
    let good = xpony_line();
    let bare_lf = good.replace("\r\n", "\n");
    let syntax = "501 5.5.4 Syntax: XPONY protocol-name base64\r\n";
    let cases: Vec<(String, &str)> = vec![
        (bare_lf, syntax),
        (format!("XPONY {name} AAAA\t\r\n"), syntax),
        // Not a command at all: the generic reply, before XPONY's (§3.3 R6).
        (
            format!("XPONY {name} AA\x01A\r\n"),
            "500 5.5.2 Error: bad syntax\r\n",
        ),
        (
            format!("XPONY {name} AA!A\r\n"),
            "501 5.5.2 Cannot decode base64\r\n",
        ),
        (
            format!("XPONY {name} AAA\r\n"),
            "501 5.5.2 Cannot decode base64\r\n",
        ),
        (
            format!("XPONY {name} {}\r\n", "A".repeat(4100)),
            "500 5.5.6 Line too long\r\n",
        ),
        (
            format!("xpony {name} {}", "A".repeat(4100)),
            "500 5.5.6 Line too long\r\n",
        ),
        (
            format!("NOOP {}\r\n", "A".repeat(4100)),
            "500 5.5.2 Error: line too long\r\n",
        ),
    ];
    for (line, want) in cases {
        let (mut h, _, _) = pony_opened();
        h.client(&line);
        assert_eq!(h.take_client(), want, "{line:?}");
        assert!(!h.session.is_closed(), "{line:?}");
    }
    for (line, want) in [
        ("*\n", "501 5.5.2 Cannot decode base64\r\n"),
        ("AAAA\n", "501 5.5.2 Cannot decode base64\r\n"),
        ("*\r\n", "501 5.7.0 XPONY aborted\r\n"),
    ] {
        let (mut h, _, _) = pony_opened();
        h.client(&xpony_line());
        assert!(h.take_client().starts_with("334 "));
        h.client(line);
        assert_eq!(h.take_client(), want, "{line:?}");
        assert_eq!(
            h.session.is_closed(),
            line.ends_with("\n") && !line.ends_with("\r\n")
        );
    }
}

/// Brings a session through STARTTLS (in any identity mode) to the point
/// where the client speaks inside TLS; the backend's buffers are emptied.
fn through_starttls(identity: Identity) -> Harness {
    let mut h = Harness::identified(identity);
    h.ehlo();
    h.client("STARTTLS\r\n");
    assert_eq!(h.take_client(), "220 2.0.0 Ready to start TLS\r\n");
    assert_eq!(h.actions(), [Action::StartTls], "{identity:?}");
    h.session.tls_established(tls13());
    if identity == Identity::Xclient {
        assert_eq!(h.take_backend(), "RSET\r\n");
        h.backend("250 2.0.0 Ok\r\n");
    } else {
        assert_eq!(h.take_backend(), "QUIT\r\n");
        assert_eq!(h.actions(), [Action::RestartBackend]);
        h.session.backend_restarted();
        h.backend("220 new backend\r\n");
    }
    assert_eq!(h.take_client(), "", "{identity:?}");
    h
}

/// RFC 3207 §4.2: STARTTLS inside a transaction is refused (as Postfix), so
/// no transaction opened before TLS can be carried on inside it; decided in
/// turn, when the replies to what was pipelined before it are known.
#[test]
fn starttls_inside_a_transaction_is_refused() {
    // (what comes before STARTTLS, the backend's replies to it, TLS starts)
    let cases: &[(&str, &str, bool)] = &[
        ("MAIL FROM:<a@x>\r\n", "250 2.1.0 Ok\r\n", false),
        (
            "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n",
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n",
            false,
        ),
        // A refused MAIL opens nothing.
        ("MAIL FROM:<a@x>\r\n", "550 5.1.0 no\r\n", true),
        // RSET, EHLO and HELO end a transaction once accepted.
        ("MAIL FROM:<a@x>\r\nRSET\r\n", "250 Ok\r\n250 Ok\r\n", true),
        (
            "MAIL FROM:<a@x>\r\nEHLO again\r\n",
            "250 Ok\r\n250 backend.example\r\n",
            true,
        ),
        (
            "MAIL FROM:<a@x>\r\nHELO again\r\n",
            "250 Ok\r\n250 backend.example\r\n",
            true,
        ),
        // A refused RSET does not.
        (
            "MAIL FROM:<a@x>\r\nRSET\r\n",
            "250 Ok\r\n421 4.3.0 no\r\n",
            false,
        ),
        // A failed DATA leaves the transaction open (RFC 5321 §4.1.1.4).
        (
            "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n",
            "250 Ok\r\n250 Ok\r\n554 5.5.1 no valid recipients\r\n",
            false,
        ),
    ];
    for &(before, replies, starts) in cases {
        let mut h = Harness::opened(Identity::ProxyV2);
        h.ehlo();
        h.client(before);
        h.client("STARTTLS\r\n");
        h.backend(replies);
        let out = h.take_client();
        if starts {
            assert!(
                out.ends_with("220 2.0.0 Ready to start TLS\r\n"),
                "{before:?}: {out}"
            );
            assert_eq!(h.actions(), [Action::StartTls], "{before:?}");
        } else {
            assert!(
                out.ends_with("503 5.5.1 Error: MAIL transaction in progress\r\n"),
                "{before:?}: {out}"
            );
            assert!(!h.actions().contains(&Action::StartTls), "{before:?}");
            // Still plaintext, still serving: commands after it are read.
            h.take_backend();
            h.client("NOOP\r\n");
            assert_eq!(h.take_backend(), "NOOP\r\n", "{before:?}");
        }
    }
}

/// A message ends the transaction, so STARTTLS works after it.
#[test]
fn starttls_after_a_message() {
    let mut h = Harness::opened(Identity::ProxyV2);
    h.ehlo();
    h.client("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
    h.backend("250 Ok\r\n250 Ok\r\n354 go\r\n");
    h.client("x\r\n.\r\nSTARTTLS\r\n");
    assert!(!h.take_client().contains("220 2.0.0"));
    h.backend("250 2.0.0 queued\r\n");
    assert!(
        h.take_client()
            .ends_with("220 2.0.0 Ready to start TLS\r\n")
    );
    assert_eq!(h.actions(), [Action::StartTls]);
}

/// After STARTTLS the client starts over with EHLO (RFC 3207 §4.2): in every
/// identity mode, commands that need the session's identity are answered
/// 503 by the sidecar, the backend is not asked; others still go through.
#[test]
fn mail_commands_after_starttls_need_a_new_ehlo() {
    for identity in IDENTITIES {
        let mut h = through_starttls(identity);
        for line in [
            "MAIL FROM:<a@x>\r\n",
            "RCPT TO:<victim@y>\r\n",
            "DATA\r\n",
            "AUTH PLAIN AGFhAGI=\r\n",
            "ETRN example.org\r\n",
        ] {
            h.client(line);
            assert_eq!(
                h.take_client(),
                "503 5.5.1 Send EHLO first\r\n",
                "{identity:?} {line:?}"
            );
            assert_eq!(h.take_backend(), "", "{identity:?} {line:?} was forwarded");
        }
        h.client("NOOP\r\n");
        assert_eq!(h.take_backend(), "NOOP\r\n", "{identity:?}");
        h.backend("250 2.0.0 Ok\r\n");
        assert_eq!(h.take_client(), "250 2.0.0 Ok\r\n", "{identity:?}");
        // EHLO pipelined with MAIL: the MAIL is the new session's.
        h.client("EHLO client.example\r\nMAIL FROM:<a@x>\r\n");
        assert_eq!(
            h.take_backend(),
            "EHLO client.example\r\nMAIL FROM:<a@x>\r\n",
            "{identity:?}"
        );
        h.backend("250 backend.example\r\n250 2.1.0 Ok\r\n");
        assert_eq!(
            h.take_client(),
            "250 backend.example\r\n250 2.1.0 Ok\r\n",
            "{identity:?}"
        );
        assert!(h.session.dialogue.in_transaction(), "{identity:?}");
    }
}

/// The trace header names the HELO given inside TLS, never the one before.
#[test]
fn trace_header_after_starttls_has_the_new_hello() {
    let mut c = config(Identity::ProxyV2);
    c.trace_header = true;
    let mut h = Harness::new(c);
    h.backend("220 ok\r\n");
    h.client("EHLO before.example\r\n");
    h.backend(BACKEND_EHLO);
    h.client("STARTTLS\r\n");
    h.actions();
    h.session.tls_established(tls13());
    h.session.backend_restarted();
    h.backend("220 new\r\n");
    h.client("HELO after.example\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
    h.backend("250 ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n");
    h.take_backend();
    h.client("x\r\n.\r\n");
    let message = h.take_backend();
    assert!(
        message.starts_with("Received: from after.example ") && message.contains(" with SMTPS "),
        "{message}"
    );
    assert!(!message.contains("before.example"), "{message}");
}

fn limits(soft: u32, hard: u32) -> SessionConfig {
    let mut c = config(Identity::ProxyV2);
    c.error_limits = ErrorLimits {
        soft,
        hard,
        sleep: std::time::Duration::from_millis(1500),
    };
    c
}

/// Postfix's error limits: from the soft limit on, every reply waits (an
/// action for the I/O loop, so no other session waits); at the hard limit
/// 421 and close, with a few log lines however much garbage came.
#[test]
fn error_limits_slow_down_then_close() {
    let mut h = Harness::new(config(Identity::ProxyV2));
    h.backend("220 ok\r\n");
    h.take_client();
    let garbage = "\u{1}junk\r\n".repeat(200);
    h.client(&garbage);
    let bad = "500 5.5.2 Error: bad syntax\r\n";
    assert_eq!(h.take_client(), bad.repeat(10), "the first 10 at once");
    let pause = Action::Delay(std::time::Duration::from_secs(1));
    assert_eq!(h.actions(), [Action::Log(Notice::BadSyntax), pause.clone()]);
    assert!(!h.session.wants_client_input(), "reads no more");
    for n in 11..=20 {
        assert_eq!(h.take_client(), "", "error {n} waits");
        h.session.delay_over();
        assert_eq!(h.take_client(), bad, "error {n}");
        assert_eq!(h.actions(), std::slice::from_ref(&pause), "error {n}");
    }
    h.session.delay_over();
    assert_eq!(
        h.take_client(),
        "421 4.7.0 mx.example.org Error: too many errors\r\n"
    );
    assert_eq!(
        h.actions(),
        [
            Action::Log(Notice::TooManyErrors { errors: 20 }),
            Action::Log(Notice::Repeated {
                first: Box::new(Notice::BadSyntax),
                count: 20
            }),
            Action::Close
        ]
    );
    assert_eq!(h.session.stats().end, "too-many-errors");
    assert_eq!(h.take_backend(), "", "nothing reached the backend");
}

/// Every kind of error of the sidecar's own counts, and the limit logs
/// its own notice; lines already parsed when the limit hits are not read.
#[test]
fn error_limit_counts_every_refusal() {
    let mut h = Harness::new(limits(100, 6));
    h.backend("220 ok\r\n");
    h.take_client();
    h.client(
        "FOO\r\nXCLIENT ADDR=1.2.3.4\r\nBDAT 1 LAST\r\nDATA x\r\nSTARTTLS x\r\n\0\r\nNOOP\r\n",
    );
    let out = h.take_client();
    let codes: Vec<&str> = out.lines().map(|l| &l[..3]).collect();
    assert_eq!(
        codes,
        ["502", "550", "502", "501", "501", "500", "421"],
        "{out}"
    );
    let actions = h.actions();
    assert!(
        actions.contains(&Action::Log(Notice::TooManyErrors { errors: 6 })),
        "{actions:?}"
    );
    assert_eq!(actions.last(), Some(&Action::Close));
    assert_eq!(
        h.take_backend(),
        "",
        "the NOOP behind the limit is not read"
    );
}

/// Past the soft limit the backend's replies wait too; a delivered message
/// forgives the errors before it (Postfix: "without delivering mail").
#[test]
fn error_pause_holds_backend_replies_and_delivery_forgives() {
    let mut h = Harness::new(limits(2, 5));
    h.backend("220 ok\r\n");
    h.take_client();
    h.client("FOO\r\nFOO\r\nNOOP\r\n");
    assert_eq!(h.take_backend(), "NOOP\r\n");
    h.backend("250 2.0.0 Ok\r\n");
    assert_eq!(
        h.take_client(),
        "502 5.5.2 Error: command not recognized\r\n".repeat(2)
    );
    assert_eq!(
        h.actions(),
        [
            // Logged once (the second is counted, and summed up at the end).
            Action::Log(Notice::CommandRefused { command: "unknown" }),
            Action::Delay(std::time::Duration::from_millis(1500))
        ]
    );
    h.session.delay_over();
    assert_eq!(h.take_client(), "250 2.0.0 Ok\r\n", "after the pause");
    // A message accepted: the count starts again. Until then each reply
    // waits its pause.
    h.client("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
    for reply in ["250 Ok\r\n", "250 Ok\r\n", "354 go\r\n"] {
        h.backend(reply);
        assert_eq!(h.take_client(), "", "{reply:?} waits");
        h.session.delay_over();
        assert_eq!(h.take_client(), reply);
    }
    h.client("x\r\n.\r\n");
    h.backend("250 2.0.0 queued\r\n");
    assert_eq!(h.take_client(), "", "the verdict waits too");
    h.session.delay_over();
    assert_eq!(h.take_client(), "250 2.0.0 queued\r\n");
    h.actions();
    h.client("FOO\r\nFOO\r\n");
    assert_eq!(
        h.take_client(),
        "502 5.5.2 Error: command not recognized\r\n".repeat(2),
        "forgiven: no pause"
    );
    assert_eq!(h.actions(), []);
}
