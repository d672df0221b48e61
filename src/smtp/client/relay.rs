//! A transaction relayed command by command, for the SMTP proxy
//! (`outbound --protocol smtp`): the MTA's envelope and message reach
//! blackpony one command at a time, and each is answered with the remote's
//! own reply, so the session cannot be given the whole transaction up front
//! as [`ClientSession::next_transaction`] is. The rules are the same ones,
//! kept in one place: MAIL is built by [`mail_command`](super::mail_command) (`SIZE=`,
//! `BODY=8BITMIME`, `SMTPUTF8`), the server's SIZE and SMTPUTF8 are checked
//! before MAIL, RSET probes a kept session (RFC 5321 §4.1.1.5) and is
//! pipelined with MAIL and the first RCPT when the server offers PIPELINING
//! (RFC 2920 §3.1), 8-bit content is downgraded for a server without
//! 8BITMIME (RFC 6152 §3), and the end of data gives a reply per recipient.
//!
//! The caller starts each command on a ready session, drives the session
//! until it is ready again ([`Step::Ready`](super::Step::Ready)), and takes
//! the reply with [`ClientSession::take_relay_reply`]. A session that ends
//! instead (connection lost, RSET refused) says why in its outcome.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{ClientSession, ContentRefusal, HostFailure, Pending, State};
use crate::smtp::envelope::{ContentFacts, Envelope};
use crate::smtp::{EhloReply, Reply};

/// What a relayed transaction keeps between its commands.
#[derive(Debug, Default)]
pub(super) struct Relay {
    /// The MTA's `SIZE=` (RFC 1870), for MAIL.
    pub(super) declared_size: Option<u64>,
    /// The reply to the last command, for the caller.
    reply: Option<Reply>,
    /// Where DATA stands.
    data: DataPhase,
}

/// Where DATA stands in a relayed transaction.
#[derive(Debug, Default)]
enum DataPhase {
    /// Not sent (or the transaction's message is out).
    #[default]
    NotSent,
    /// DATA went out behind the last RCPT (RFC 2920 §3.1: the MTA's DATA
    /// was already there). The answer to that RCPT waits here until DATA's
    /// reply comes, so that both reach the MTA together.
    SentAhead { rcpt_answer: Option<Reply> },
    /// The remote's reply to DATA sent ahead, until the MTA's DATA takes it
    /// ([`ClientSession::take_relay_data_reply`]); a 354 means the server
    /// already waits for the message.
    RepliedAhead(Reply),
    /// The server said 354 and waits for the message.
    WaitsForMessage,
}

impl DataPhase {
    /// After DATA's reply: the server waits for the message on a 354.
    fn after(reply: &Reply) -> DataPhase {
        if reply.code() == 354 {
            DataPhase::WaitsForMessage
        } else {
            DataPhase::NotSent
        }
    }

    fn waits_for_message(&self) -> bool {
        match self {
            DataPhase::WaitsForMessage => true,
            DataPhase::RepliedAhead(reply) => reply.code() == 354,
            DataPhase::NotSent | DataPhase::SentAhead { .. } => false,
        }
    }
}

impl ClientSession {
    /// Starts a relayed transaction on a ready session: RSET first when
    /// `reset` (a kept session), then MAIL from `sender` and RCPT to the
    /// first `recipient`. The content is not known yet: the MTA's
    /// `declared_size` stands for it (RFC 1870 §4), and 8-bit content is
    /// assumed (it is converted at the end of data for a server without
    /// 8BITMIME). `Err`: the server's SIZE or missing SMTPUTF8 refuses the
    /// transaction before anything is sent (the session stays ready).
    /// `Ok(false)`: the session is not ready; nothing was done. With
    /// `then_data` (the MTA's DATA already follows this RCPT) DATA goes out
    /// behind the RCPT when the server offers PIPELINING.
    pub fn relay_begin(
        &mut self,
        sender: &str,
        declared_size: Option<u64>,
        recipient: &str,
        reset: bool,
        then_data: bool,
    ) -> Result<bool, ContentRefusal> {
        if !self.is_ready() {
            return Ok(false);
        }
        let caps = self.caps_or_none();
        let envelope = Envelope {
            sender: sender.to_string(),
            recipients: vec![recipient.to_string()],
        };
        let utf8 = envelope.needs_smtputf8();
        match caps.size_limit() {
            Some(limit) if declared_size.is_some_and(|n| n > limit) => {
                return Err(ContentRefusal::TooBig { limit });
            }
            _ if utf8 && !caps.has("SMTPUTF8") => return Err(ContentRefusal::NeedsSmtpUtf8),
            _ => {}
        }
        self.keep_open = true;
        self.relay = Some(Relay {
            declared_size,
            ..Relay::default()
        });
        self.envelope = envelope;
        self.rcpt_replies = vec![None];
        self.content = ContentFacts {
            size: declared_size.unwrap_or(0),
            eight_bit: true,
            nul: false,
        };
        self.wire_message = None;
        self.mail_reply = None;
        self.outcome = None;
        self.content_refusal = None;
        let pipelining = caps.has("PIPELINING");
        let mut owed = VecDeque::new();
        if reset {
            self.send_line("RSET");
            owed.push_back(Pending::Rset);
        }
        if !reset || pipelining {
            self.send_mail(&caps);
            owed.push_back(Pending::Mail);
        }
        if pipelining {
            self.send_line(&format!("RCPT TO:<{recipient}>"));
            owed.push_back(Pending::Rcpt(0));
            if then_data {
                self.send_data_ahead(&mut owed);
            }
        }
        self.state = State::Transaction { owed };
        Ok(true)
    }

    /// DATA behind the last RCPT (RFC 2920 §3.1: DATA may end a group of
    /// pipelined commands); the RCPT's reply still answers the RCPT.
    fn send_data_ahead(&mut self, owed: &mut VecDeque<Pending>) {
        self.send_line("DATA");
        owed.push_back(Pending::Data);
        if let Some(relay) = self.relay.as_mut() {
            relay.data = DataPhase::SentAhead { rcpt_answer: None };
        }
    }

    /// Whether the server accepted MAIL of the relayed transaction: when it
    /// did not, the reply taken after [`Self::relay_begin`] is MAIL's.
    pub fn relay_mail_accepted(&self) -> bool {
        self.mail_reply.as_ref().is_some_and(Reply::is_success)
    }

    /// RCPT to one more recipient of the relayed transaction, with DATA
    /// behind it as for [`Self::relay_begin`]. False (and nothing done)
    /// unless the session is ready in one.
    pub fn relay_recipient(&mut self, recipient: &str, then_data: bool) -> bool {
        if !self.is_ready() || self.relay.is_none() || self.relay_waits_for_message() {
            return false;
        }
        self.envelope.recipients.push(recipient.to_string());
        self.rcpt_replies.push(None);
        let i = self.rcpt_replies.len() - 1;
        self.send_line(&format!("RCPT TO:<{recipient}>"));
        let mut owed = VecDeque::from([Pending::Rcpt(i)]);
        if then_data && self.pipelining() {
            self.send_data_ahead(&mut owed);
        }
        self.state = State::Transaction { owed };
        true
    }

    /// The reply to DATA sent ahead ([`Self::relay_begin`]'s `then_data`),
    /// for the MTA's DATA; `None` when DATA was not sent ahead.
    pub fn take_relay_data_reply(&mut self) -> Option<Reply> {
        let relay = self.relay.as_mut()?;
        match std::mem::take(&mut relay.data) {
            DataPhase::RepliedAhead(reply) => {
                relay.data = DataPhase::after(&reply);
                Some(reply)
            }
            other => {
                relay.data = other;
                None
            }
        }
    }

    /// Whether the server said 354 and waits for the message: nothing but
    /// the message may reach it (QUIT would be taken as message text).
    pub fn relay_waits_for_message(&self) -> bool {
        self.relay
            .as_ref()
            .is_some_and(|r| r.data.waits_for_message())
    }

    /// DATA. False (and nothing done) unless the session is ready in a
    /// relayed transaction.
    pub fn relay_data(&mut self) -> bool {
        if !self.is_ready() || self.relay.is_none() || self.relay_waits_for_message() {
            return false;
        }
        self.send_line("DATA");
        self.state = State::Transaction {
            owed: VecDeque::from([Pending::Data]),
        };
        true
    }

    /// The message (DATA form, with its terminator) after the server's 354,
    /// downgraded for a server without 8BITMIME; its final reply is the
    /// relay reply, and every recipient's result is the session's outcome.
    /// False (and nothing done) unless the server waits for the message.
    pub fn relay_message(&mut self, wire: Arc<Vec<u8>>, content: ContentFacts) -> bool {
        if !self.is_ready() || !self.relay_waits_for_message() {
            return false;
        }
        if let Some(relay) = self.relay.as_mut() {
            relay.data = DataPhase::NotSent;
        }
        self.content = content;
        self.wire_message = Some(wire);
        let caps = self.caps_or_none();
        self.fit_8bit(&caps);
        if let Some(message) = self.wire_message.take() {
            self.outgoing.extend_from_slice(&message);
        }
        self.state = State::EndOfData;
        true
    }

    /// The reply to the relayed command, once the session is ready again.
    pub fn take_relay_reply(&mut self) -> Option<Reply> {
        self.relay.as_mut().and_then(|r| r.reply.take())
    }

    /// One reply of a relayed transaction; the session is ready again once
    /// nothing more is owed.
    pub(super) fn on_relay_reply(&mut self, pending: Pending, reply: Reply) {
        let pipelining = self.pipelining();
        match pending {
            // As for a delivering session: a kept session the server no
            // longer serves fails here, else MAIL follows.
            Pending::Rset => self.on_transaction_reply(pending, reply),
            Pending::Mail => {
                let ok = reply.is_success();
                self.mail_reply = Some(reply.clone());
                if !pipelining {
                    if ok {
                        self.send_rcpt(0);
                    } else {
                        self.relay_answer(reply);
                    }
                }
            }
            Pending::Rcpt(i) => {
                if let Some(slot) = self.rcpt_replies.get_mut(i) {
                    *slot = Some(reply.clone());
                }
                let last = matches!(&self.state, State::Transaction { owed } if owed.is_empty());
                let data_ahead = self
                    .relay
                    .as_ref()
                    .is_some_and(|r| matches!(r.data, DataPhase::SentAhead { .. }));
                if last || data_ahead {
                    // A refused MAIL is the answer, not the RCPT's 503.
                    let answer = match &self.mail_reply {
                        Some(mail) if !mail.is_success() => mail.clone(),
                        _ => reply,
                    };
                    match self.relay.as_mut() {
                        Some(Relay {
                            data: DataPhase::SentAhead { rcpt_answer },
                            ..
                        }) if !last => *rcpt_answer = Some(answer),
                        _ => self.relay_answer(answer),
                    }
                }
            }
            Pending::Data => {
                // As for a delivering session: the MTA must never get a
                // 250 for a message it has not sent.
                if let Some(e) = super::outcome::unexpected_data_reply(&reply) {
                    self.fail(HostFailure::Protocol(e));
                    return;
                }
                let mut ahead = None;
                if let Some(relay) = self.relay.as_mut() {
                    relay.data = match std::mem::take(&mut relay.data) {
                        // The reply waits for the MTA's DATA; the MTA's
                        // RCPT gets the RCPT's answer now.
                        DataPhase::SentAhead { rcpt_answer } => {
                            ahead = rcpt_answer;
                            DataPhase::RepliedAhead(reply.clone())
                        }
                        _ => DataPhase::after(&reply),
                    };
                }
                self.relay_answer(ahead.unwrap_or(reply));
            }
        }
    }

    /// The final reply to the message, for the caller of a relayed
    /// transaction (a delivering one reads its outcome).
    pub(super) fn relay_answer_final(&mut self, reply: &Reply) {
        if let Some(relay) = self.relay.as_mut() {
            relay.reply = Some(reply.clone());
        }
    }

    fn relay_answer(&mut self, reply: Reply) {
        if let Some(relay) = self.relay.as_mut() {
            relay.reply = Some(reply);
        }
        self.state = State::Ready;
    }

    fn caps_or_none(&self) -> EhloReply {
        self.caps.clone().unwrap_or(EhloReply {
            greeting: String::new(),
            capabilities: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::client::{HostFailure, SessionOutcome, Step};

    fn ready(caps: &[&str]) -> ClientSession {
        let caps = EhloReply {
            greeting: "mx.test".into(),
            capabilities: caps
                .iter()
                .map(|c| {
                    let (keyword, params) = c.split_once(' ').unwrap_or((c, ""));
                    crate::smtp::ehlo::Capability::new(keyword, params)
                })
                .collect(),
        };
        ClientSession::resume("client.test", caps)
    }

    fn sent(s: &mut ClientSession) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut s.outgoing)).into_owned()
    }

    /// The message after a 354, and the server's 250 for it.
    fn message_queued(s: &mut ClientSession) {
        let wire = b"Subject: hi\r\n\r\nbody\r\n.\r\n".to_vec();
        let facts = ContentFacts::of(&wire);
        assert!(s.relay_message(Arc::new(wire.clone()), facts));
        assert_eq!(sent(s).as_bytes(), wire.as_slice());
        assert_eq!(s.receive(b"250 2.0.0 queued\r\n"), Step::Ready);
        assert_eq!(s.take_relay_reply().map(|r| r.code()), Some(250));
    }

    #[test]
    fn a_relayed_transaction_runs_command_by_command() {
        let mut s = ready(&["PIPELINING", "SIZE 1000", "8BITMIME"]);
        assert_eq!(
            s.relay_begin("a@client.test", Some(100), "b@mx.test", true, false),
            Ok(true)
        );
        // RSET, MAIL and the first RCPT in one flight (RFC 2920 §3.1).
        assert_eq!(
            sent(&mut s),
            "RSET\r\nMAIL FROM:<a@client.test> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<b@mx.test>\r\n"
        );
        assert_eq!(s.receive(b"250 ok\r\n250 2.1.0 ok\r\n"), Step::Continue);
        assert_eq!(s.receive(b"250 2.1.5 ok\r\n"), Step::Ready);
        assert!(s.relay_mail_accepted());
        assert_eq!(s.take_relay_reply().map(|r| r.code()), Some(250));
        assert!(s.relay_recipient("c@mx.test", false));
        assert_eq!(sent(&mut s), "RCPT TO:<c@mx.test>\r\n");
        assert_eq!(s.receive(b"550 5.1.1 no such user\r\n"), Step::Ready);
        assert_eq!(s.take_relay_reply().map(|r| r.code()), Some(550));
        // No message before the 354.
        assert!(!s.relay_message(Arc::new(b".\r\n".to_vec()), ContentFacts::default()));
        assert!(s.relay_data());
        assert_eq!(sent(&mut s), "DATA\r\n");
        assert_eq!(s.receive(b"354 go ahead\r\n"), Step::Ready);
        assert_eq!(s.take_relay_reply().map(|r| r.code()), Some(354));
        message_queued(&mut s);
        // Each recipient's fate, as for a delivering session.
        let Some(SessionOutcome::Replied(results)) = s.take_outcome() else {
            panic!("no outcome");
        };
        let codes: Vec<_> = results.iter().map(|r| r.reply.code()).collect();
        assert_eq!(codes, [250, 550]);
        // Ready for the next transaction on the same session.
        assert!(s.is_ready());
    }

    /// RFC 2920 §3.1: the MTA's DATA already follows its RCPT, so DATA
    /// goes out with RSET, MAIL and RCPT (or with a later RCPT); the RCPT's
    /// reply answers the RCPT, DATA's waits for the MTA's DATA; a server
    /// that said 354 with no recipient accepted is never sent anything
    /// but a message (the caller cuts it).
    #[test]
    fn data_goes_out_with_the_last_rcpt_when_the_mta_pipelines() {
        struct Case {
            caps: &'static [&'static str],
            second: bool,
            replies: &'static [u8],
            sent: &'static str,
            answer: u16,
            data: Option<u16>,
            waits: bool,
        }
        let cases = [
            Case {
                caps: &["PIPELINING"],
                second: false,
                replies: b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
                sent: "RSET\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n",
                answer: 250,
                data: Some(354),
                waits: true,
            },
            Case {
                caps: &["PIPELINING"],
                second: false,
                replies: b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n",
                sent: "RSET\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n",
                answer: 550,
                data: Some(554),
                waits: false,
            },
            // A refused MAIL is the answer, as without DATA.
            Case {
                caps: &["PIPELINING"],
                second: false,
                replies: b"250 ok\r\n553 5.7.1 sender refused\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n",
                sent: "RSET\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n",
                answer: 553,
                data: Some(503),
                waits: false,
            },
            // A broken server: 354 although no recipient was accepted.
            Case {
                caps: &["PIPELINING"],
                second: false,
                replies: b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n",
                sent: "RSET\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n",
                answer: 550,
                data: Some(354),
                waits: true,
            },
            // Without PIPELINING, DATA waits for the MTA's.
            Case {
                caps: &[],
                second: false,
                replies: b"250 ok\r\n250 ok\r\n250 ok\r\n",
                sent: "RSET\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\n",
                answer: 250,
                data: None,
                waits: false,
            },
            // The second recipient is the last: DATA goes with its RCPT.
            Case {
                caps: &["PIPELINING"],
                second: true,
                replies: b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
                sent: "RSET\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\nRCPT TO:<c@mx.test>\r\nDATA\r\n",
                answer: 250,
                data: Some(354),
                waits: true,
            },
        ];
        for (n, case) in cases.iter().enumerate() {
            let mut s = ready(case.caps);
            assert_eq!(
                s.relay_begin("a@client.test", None, "b@mx.test", true, !case.second),
                Ok(true)
            );
            let mut wrote = String::new();
            let mut replies = case.replies;
            let mut step = Step::Continue;
            // Feed the replies one line at a time, as a server may send them.
            while let Some(nl) = replies.iter().position(|b| *b == b'\n') {
                wrote += &sent(&mut s);
                step = s.receive(&replies[..=nl]);
                replies = &replies[nl + 1..];
                if step == Step::Ready && case.second && s.envelope.recipients.len() == 1 {
                    assert_eq!(
                        s.take_relay_reply().map(|r| r.code()),
                        Some(250),
                        "case {n}"
                    );
                    assert!(s.relay_recipient("c@mx.test", true), "case {n}");
                }
            }
            wrote += &sent(&mut s);
            assert_eq!(step, Step::Ready, "case {n}");
            assert_eq!(wrote, case.sent, "case {n}");
            assert_eq!(
                s.take_relay_reply().map(|r| r.code()),
                Some(case.answer),
                "case {n}"
            );
            assert_eq!(
                s.take_relay_data_reply().map(|r| r.code()),
                case.data,
                "case {n}"
            );
            assert_eq!(s.relay_waits_for_message(), case.waits, "case {n}");
            if case.waits {
                // Nothing but the message may follow a 354.
                assert!(!s.relay_recipient("d@mx.test", false), "case {n}");
                assert!(!s.relay_data(), "case {n}");
                assert!(s.outgoing.is_empty(), "case {n}");
            }
        }
        // The message then goes as after a DATA of its own.
        let mut s = ready(&["PIPELINING"]);
        assert_eq!(
            s.relay_begin("a@client.test", None, "b@mx.test", false, true),
            Ok(true)
        );
        sent(&mut s);
        s.receive(b"250 ok\r\n250 ok\r\n354 go\r\n");
        assert_eq!(s.take_relay_data_reply().map(|r| r.code()), Some(354));
        message_queued(&mut s);
        assert!(!s.relay_waits_for_message());
    }

    /// A 2xx to DATA (RFC 5321 §4.3.2 allows 354, 4xx, 5xx) never
    /// reaches the MTA as DATA's answer, sent ahead or on its own: the
    /// session fails as a protocol error, so the proxy answers with the
    /// 451 that stands for it and the MTA keeps the message.
    #[test]
    fn a_2xx_to_data_fails_the_session() {
        for ahead in [true, false] {
            let mut s = ready(&["PIPELINING"]);
            assert_eq!(
                s.relay_begin("a@client.test", None, "b@mx.test", false, ahead),
                Ok(true)
            );
            sent(&mut s);
            let mut step = s.receive(b"250 ok\r\n250 ok\r\n");
            if !ahead {
                assert_eq!(step, Step::Ready);
                assert_eq!(s.take_relay_reply().map(|r| r.code()), Some(250));
                assert!(s.relay_data());
                assert_eq!(sent(&mut s), "DATA\r\n");
            }
            step = s.receive(b"250 2.0.0 Ok: queued\r\n");
            assert_ne!(step, Step::Ready, "ahead={ahead}");
            assert_eq!(s.take_relay_data_reply(), None, "ahead={ahead}");
            assert!(!s.relay_waits_for_message(), "ahead={ahead}");
            assert!(
                matches!(
                    s.outcome(),
                    Some(SessionOutcome::Failed(HostFailure::Protocol(
                        crate::smtp::ReplyError::Unexpected {
                            command: "DATA",
                            code: 250
                        }
                    )))
                ),
                "ahead={ahead}: {:?}",
                s.outcome()
            );
            assert_eq!(sent(&mut s), "QUIT\r\n", "ahead={ahead}");
        }
    }

    #[test]
    fn refusals_before_anything_is_sent() {
        for (caps, size, rcpt, refusal) in [
            (
                &["SIZE 1000"][..],
                Some(5000),
                "b@mx.test",
                ContentRefusal::TooBig { limit: 1000 },
            ),
            (
                &["8BITMIME"][..],
                None,
                "bö@mx.test",
                ContentRefusal::NeedsSmtpUtf8,
            ),
        ] {
            let mut s = ready(caps);
            assert_eq!(
                s.relay_begin("a@client.test", size, rcpt, false, false),
                Err(refusal)
            );
            assert!(s.outgoing.is_empty());
            assert!(s.is_ready());
        }
    }

    #[test]
    fn without_pipelining_one_command_at_a_time() {
        let mut s = ready(&[]);
        assert_eq!(
            s.relay_begin("a@client.test", Some(10), "b@mx.test", true, false),
            Ok(true)
        );
        assert_eq!(sent(&mut s), "RSET\r\n");
        assert_eq!(s.receive(b"250 ok\r\n"), Step::Continue);
        // No SIZE offered: no SIZE=; no 8BITMIME: no BODY=.
        assert_eq!(sent(&mut s), "MAIL FROM:<a@client.test>\r\n");
        assert_eq!(s.receive(b"550 5.7.1 sender refused\r\n"), Step::Ready);
        assert!(!s.relay_mail_accepted());
        assert_eq!(s.take_relay_reply().map(|r| r.code()), Some(550));
        assert!(s.outgoing.is_empty());
    }

    #[test]
    fn a_kept_session_the_server_closed_fails_at_rset() {
        let mut s = ready(&["PIPELINING"]);
        assert_eq!(
            s.relay_begin("a@client.test", None, "b@mx.test", true, false),
            Ok(true)
        );
        sent(&mut s);
        assert_eq!(s.receive(b"421 4.4.2 idle timeout\r\n"), Step::Done);
        assert_eq!(
            s.outcome(),
            Some(&SessionOutcome::Failed(HostFailure::Lost { stage: "RSET" }))
        );
        assert!(s.outgoing.is_empty());
        assert_eq!(s.take_relay_reply(), None);
    }

    #[test]
    fn eight_bit_content_is_downgraded_for_a_server_without_8bitmime() {
        let mut s = ready(&["PIPELINING"]);
        assert_eq!(
            s.relay_begin("a@client.test", None, "b@mx.test", false, false),
            Ok(true)
        );
        // Assumed 8-bit, but the server does not offer 8BITMIME: no BODY=.
        assert_eq!(
            sent(&mut s),
            "MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\n"
        );
        s.receive(b"250 ok\r\n250 ok\r\n");
        assert!(s.relay_data());
        s.receive(b"354 go\r\n");
        sent(&mut s);
        let wire = "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\n.\r\n"
            .as_bytes()
            .to_vec();
        let facts = ContentFacts::of(&wire);
        assert!(facts.eight_bit);
        assert!(s.relay_message(Arc::new(wire), facts));
        let out = std::mem::take(&mut s.outgoing);
        assert!(out.is_ascii(), "{}", String::from_utf8_lossy(&out));
        assert!(out.ends_with(b"\r\n.\r\n"));
    }
}
