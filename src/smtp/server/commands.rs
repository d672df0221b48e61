//! The MTA's command lines: LHLO or EHLO/HELO, MAIL, RCPT, DATA, RSET,
//! STARTTLS and the rest, each answered here or handed to the driver as an
//! event (SMTP's RCPT and DATA, answered by the remote).

use super::state::{Phase, Protocol, ReceiveEvent, ReceiveSession};
use crate::pony::negotiation;
use crate::pony::noise::PROTOCOL_NAME;
use crate::smtp::envelope::address_is_sane;
use crate::smtp::{Command, DataScanner, Reply, Verb, replies};

/// Most recipients in one transaction (Postfix's `lmtp_destination_recipient_limit`
/// default is 50; we accept more and say 452 beyond, RFC 5321 §4.5.3.1.8).
pub const MAX_RECIPIENTS: usize = 1000;

impl ReceiveSession {
    pub(super) fn command(&mut self, line: &[u8]) {
        let Ok(cmd) = Command::parse(line) else {
            self.reply(replies::bad_syntax());
            return;
        };
        let lhlo =
            cmd.verb == Verb::Unknown && line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"LHLO");
        let hello = match self.protocol {
            Protocol::Lmtp => lhlo,
            Protocol::Smtp => cmd.verb == Verb::Ehlo,
        };
        let starttls = self.offers_starttls();
        let greets = hello || (cmd.verb == Verb::Helo && self.protocol == Protocol::Smtp);
        if greets && cmd.args.trim().is_empty() {
            // RFC 5321 §4.1.1.1 (RFC 2033 §4.1 for LHLO): the client names
            // itself; an empty greeting is a syntax error (as Postfix's).
            let verb = if lhlo { "LHLO" } else { cmd.verb.as_str() };
            self.reply(replies::syntax(&format!("{verb} hostname")));
            return;
        }
        match (cmd.verb, &mut self.phase) {
            (Verb::Helo, _) if self.protocol == Protocol::Smtp => {
                self.reset_transaction();
                self.ehlo_line.clear();
                self.reply(replies::helo(&self.hostname));
                self.phase = Phase::Ready;
            }
            (_, _) if hello => {
                self.reset_transaction();
                let mut lines = vec![
                    self.hostname.clone(),
                    "PIPELINING".into(),
                    format!("SIZE {}", self.max_message_size),
                    "8BITMIME".into(),
                    "SMTPUTF8".into(),
                    "ENHANCEDSTATUSCODES".into(),
                ];
                if self.offers_starttls() {
                    lines.push("STARTTLS".into());
                }
                if self.offers_xpony() {
                    lines.push(format!("{} {PROTOCOL_NAME}", negotiation::KEYWORD));
                }
                let start = self.output.len();
                Reply::multiline(250, lines).write_to(&mut self.output);
                self.ehlo_line = line.to_vec();
                self.ehlo_reply = self.output[start..].to_vec();
                self.phase = Phase::Ready;
            }
            (Verb::Quit, _) => {
                self.reply(replies::bye());
                self.phase = Phase::Closed;
                self.events.push_back(ReceiveEvent::Close);
            }
            (Verb::Noop, _) => self.reply(replies::ok()),
            (Verb::Rset, Phase::Greeted) => self.reply(replies::ok()),
            (Verb::Rset, _) => {
                self.reset_transaction();
                self.phase = Phase::Ready;
                self.reply(replies::ok());
            }
            (Verb::Vrfy, _) => self.reply(replies::cannot_verify()),
            (Verb::Xpony, _) if self.pony.is_some() && self.protocol == Protocol::Smtp => {
                self.xpony_command(line);
            }
            (Verb::StartTls, _) if !starttls => {
                self.reply(replies::command_not_implemented());
            }
            (Verb::StartTls, Phase::Greeted) => self.reply(replies::send_ehlo_first()),
            (Verb::StartTls, _) => {
                // RFC 3207 §4.2 and CVE-2011-0411: whatever the client
                // pipelined behind STARTTLS was sent in plaintext and must
                // not run inside TLS.
                if !self.input.is_empty() {
                    self.input.clear();
                    self.reply(replies::pipelined_after("STARTTLS"));
                    self.phase = Phase::Closed;
                    self.events.push_back(ReceiveEvent::Close);
                    return;
                }
                self.reset_transaction();
                self.reply(replies::ready_to_start_tls());
                self.phase = Phase::Handshake;
                self.events.push_back(ReceiveEvent::StartTls);
            }
            (Verb::Ehlo | Verb::Helo, _) => self.reply(replies::this_is_lmtp()),
            (Verb::Unknown, _) if lhlo => self.reply(replies::this_is_smtp()),
            (_, Phase::Greeted) => self.reply(replies::send_hello_first(match self.protocol {
                Protocol::Lmtp => "LHLO",
                Protocol::Smtp => "EHLO",
            })),
            (Verb::Mail, Phase::Ready) => match path_arg(cmd.args, "FROM:") {
                Some(sender) if sender.is_empty() || address_is_sane(&sender) => {
                    // RFC 1870 §6: a declared size over the limit is
                    // refused at once; a declared size is passed on.
                    let Ok(size) = size_param(cmd.args) else {
                        self.reply(replies::bad_size_syntax());
                        return;
                    };
                    if size.is_some_and(|n| n > self.max_message_size) {
                        self.reply(replies::message_too_big());
                        return;
                    }
                    self.declared_size = size;
                    self.phase = Phase::Mail { sender };
                    self.reply(replies::sender_ok());
                }
                _ => self.reply(replies::bad_sender_syntax()),
            },
            (Verb::Mail, _) => self.reply(replies::nested_mail()),
            (Verb::Rcpt, Phase::Mail { .. } | Phase::Rcpt { .. }) => {
                let Some(rcpt) =
                    path_arg(cmd.args, "TO:").filter(|r| !r.is_empty() && address_is_sane(r))
                else {
                    self.reply(replies::bad_recipient_syntax());
                    return;
                };
                let (sender, mut recipients) =
                    match std::mem::replace(&mut self.phase, Phase::Ready) {
                        Phase::Mail { sender } => (sender, Vec::new()),
                        Phase::Rcpt { sender, recipients } => (sender, recipients),
                        // The match arm above only admits Mail and Rcpt.
                        _ => return,
                    };
                if recipients.len() >= MAX_RECIPIENTS {
                    self.reply(replies::too_many_recipients());
                } else if self.protocol == Protocol::Smtp {
                    self.events.push_back(ReceiveEvent::Recipient {
                        sender: sender.clone(),
                        recipient: rcpt.clone(),
                    });
                    self.phase = Phase::AwaitingRcpt {
                        sender,
                        recipients,
                        recipient: rcpt,
                    };
                    return;
                } else {
                    recipients.push(rcpt);
                    self.reply(replies::recipient_ok());
                }
                self.phase = if recipients.is_empty() {
                    Phase::Mail { sender }
                } else {
                    Phase::Rcpt { sender, recipients }
                };
            }
            (Verb::Rcpt, _) => self.reply(replies::need_mail()),
            (Verb::Data, Phase::Rcpt { .. }) => {
                let Phase::Rcpt { sender, recipients } =
                    std::mem::replace(&mut self.phase, Phase::Ready)
                else {
                    return;
                };
                if self.protocol == Protocol::Smtp {
                    self.events.push_back(ReceiveEvent::Data);
                    self.phase = Phase::AwaitingData { sender, recipients };
                    return;
                }
                self.reply(replies::start_mail_input());
                self.phase = Phase::Data {
                    sender,
                    recipients,
                    scanner: DataScanner::new(),
                    wire: Vec::new(),
                    too_big: false,
                };
            }
            (Verb::Data, Phase::Mail { .. }) => self.reply(replies::no_valid_recipients()),
            (Verb::Data, _) => self.reply(replies::need_mail()),
            _ => self.reply(replies::command_not_recognized()),
        }
    }
}

/// The `SIZE=` parameter of `FROM:<a@b> SIZE=123 BODY=8BITMIME` (RFC
/// 1870 §3; keywords are case-insensitive): `Ok(None)` without one,
/// `Err(())` when its value is not digits. A number too large for 64
/// bits (RFC 1870 allows 20 digits) is `u64::MAX`: over any limit, refused as too big rather than
/// taken for "no size given".
pub(super) fn size_param(args: &str) -> Result<Option<u64>, ()> {
    let Some(close) = args.find('>') else {
        return Ok(None);
    };
    let value = args[close + 1..].split_ascii_whitespace().find_map(|p| {
        let (key, value) = p.split_once('=')?;
        key.eq_ignore_ascii_case("SIZE").then_some(value)
    });
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) => Err(()),
        Some(v) => Ok(Some(v.parse().unwrap_or(u64::MAX))),
    }
}

/// The address in `FROM:<a@b> PARAMS` / `TO:<a@b>`, without brackets.
fn path_arg(args: &str, prefix: &str) -> Option<String> {
    let rest = args.get(..prefix.len())?;
    if !rest.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = args[prefix.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some(rest[..end].to_string())
}
