//! One exit status for a one-shot delivery, as MTAs read it
//! (docs/INTEROP-NOTES.md, "How MTAs read a mailer's exit status"):
//! Postfix's pipe(8) defers only on 75 (EX_TEMPFAIL) and 71, and bounces on
//! every other non-zero status; sendmail also queues 74.
//! So any temporary failure must be 75, never 69 or 74.
//!
//! One status for several recipients is lossy: when some were delivered and
//! another failed temporarily, the MTA retries them all and the delivered
//! ones get the message twice. Per-recipient modes (`blackpony lmtp`,
//! `blackpony outbound --protocol lmtp`) do not have this problem.

use super::report::{RecipientStatus, Status};
use crate::sysexits::Exit;

/// The exit status and the first line to print (it starts with the enhanced
/// status code, which pipe(8) reads and which agrees with the status).
pub fn summarize(results: &[RecipientStatus]) -> (Exit, String) {
    if let Some(t) = results.iter().find(|r| r.status() == Status::Deferred) {
        let dsn = t.dsn();
        return (
            Exit::TempFail,
            format!("{dsn} {}: {}", one_line(&t.recipient), t.reply),
        );
    }
    if let Some(b) = results.iter().find(|r| r.status() == Status::Bounced) {
        let dsn = b.dsn();
        // A bounce's class is 5 (the reply's class and its enhanced code's
        // agree, or the code is the class's 5.0.0).
        let code = match (dsn.subject, dsn.detail) {
            // Null MX (5.1.10) and unknown domains (5.1.2): no such host.
            (1, 10) | (1, 2) => Exit::NoHost,
            // Addressing status (RFC 3463 §3.2): the mailbox.
            (1, _) => Exit::NoUser,
            // Content or media (RFC 3463 §3.7), a message too big for the system.
            (6, _) | (3, 4) => Exit::DataErr,
            _ => Exit::Unavailable,
        };
        return (
            code,
            format!("{dsn} {}: {}", one_line(&b.recipient), b.reply),
        );
    }
    let n = results.len();
    (
        Exit::Ok,
        format!(
            "2.0.0 delivered to {n} recipient{}",
            if n == 1 { "" } else { "s" }
        ),
    )
}

/// The recipient as the MTA gave it, on one line: the status line is the
/// first line pipe(8) reads, and a recipient argument with a CR or LF in
/// it (refused as bad syntax) must not start a line of its own there, as
/// the log does not either.
fn one_line(text: &str) -> String {
    let mut line = text.to_string();
    crate::log::one_line(&mut line);
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::SecurityLevel;
    use crate::smtp::Reply;
    use std::time::Duration;

    fn status(code: u16, text: &str) -> RecipientStatus {
        RecipientStatus {
            recipient: "a@b.example".into(),
            reply: Reply::new(code, text),
            relay: None,
            tls: None,
            verdict: None,
            level: SecurityLevel::Plaintext,
            delay: Duration::ZERO,
        }
    }

    #[test]
    fn exit_codes_as_mtas_read_them() {
        let cases = [
            (vec![status(250, "2.0.0 Ok")], Exit::Ok, "2.0.0"),
            (
                vec![status(250, "2.0.0 Ok"), status(450, "4.2.0 greylisted")],
                Exit::TempFail,
                "4.2.0",
            ),
            (
                vec![
                    status(550, "5.1.1 no such user"),
                    status(451, "4.3.0 later"),
                ],
                Exit::TempFail,
                "4.3.0",
            ),
            (
                vec![status(550, "5.1.1 no such user")],
                Exit::NoUser,
                "5.1.1",
            ),
            (vec![status(556, "5.1.10 null MX")], Exit::NoHost, "5.1.10"),
            (
                vec![status(550, "5.1.2 no such domain")],
                Exit::NoHost,
                "5.1.2",
            ),
            (vec![status(552, "5.3.4 too big")], Exit::DataErr, "5.3.4"),
            (vec![status(554, "5.7.1 spam")], Exit::Unavailable, "5.7.1"),
            (
                vec![status(421, "no enhanced code")],
                Exit::TempFail,
                "4.0.0",
            ),
            (
                vec![status(554, "no enhanced code")],
                Exit::Unavailable,
                "5.0.0",
            ),
        ];
        for (results, want_code, want_dsn) in cases {
            let (code, line) = summarize(&results);
            assert_eq!(code, want_code, "{line}");
            assert!(line.starts_with(want_dsn), "{line}");
        }
        // A recipient argument with a line end stays on the status line.
        let mut bad = status(501, "5.1.3 Bad recipient address syntax");
        bad.recipient = "b@x\r\nfake: status=sent".into();
        let (_, line) = summarize(&[bad]);
        assert_eq!(
            line,
            "5.1.3 b@x??fake: status=sent: 501 5.1.3 Bad recipient address syntax"
        );
    }
}
