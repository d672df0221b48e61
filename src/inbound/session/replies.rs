//! The backend's replies: each is handled as the command it answers
//! expects ([`Expect`]), relayed to the client, or, for the commands the
//! sidecar sends on its own (the identity dialogue: EHLO and XCLIENT, RSET
//! after STARTTLS), checked and kept from the client.

use super::dialogue::Dialogue;
use super::notice::Notice;
use super::state::{Expect, OwnStep, Phase, Session};
use crate::inbound::identity::{Identity, XclientAttrs, xclient_command};
use crate::smtp::{EhloReply, Reply, ReplyParser, ReplySpan, replies};

impl Session {
    /// Handles every complete reply in the backend buffer.
    pub(super) fn handle_backend_replies(&mut self) -> bool {
        let mut consumed = 0;
        let mut progressed = false;
        while !matches!(self.phase, Phase::Closed) {
            let span = match ReplyParser::next_span(&self.backend_in[consumed..]) {
                Ok(Some(span)) => span,
                Ok(None) => break,
                Err(e) => {
                    self.notice(Notice::BackendProtocol(e));
                    self.fail_to_client(replies::backend_problem(&self.config.hostname));
                    self.close("backend-error");
                    return true;
                }
            };
            // Local replies queued before this one go out first.
            progressed |= self.flush_local_replies();
            if matches!(self.phase, Phase::Closed)
                || matches!(self.pending.front(), Some(Expect::Pause { .. }))
            {
                // Closed, or this reply waits for the error limit's pause.
                break;
            }
            progressed = true;
            let start = consumed;
            consumed += span.len;
            self.handle_reply(start, span);
        }
        self.backend_in.drain(..consumed);
        progressed
    }

    /// Handles one reply that starts at `start` in the backend buffer.
    pub(super) fn handle_reply(&mut self, start: usize, span: ReplySpan) {
        let raw = start..start + span.len;
        let Some(expect) = self.pending.pop_front() else {
            // Unsolicited: a 421 (RFC 5321 §3.8) is relayed, anything else
            // means we no longer know where the backend is.
            if span.code == 421 {
                self.to_client.extend_from_slice(&self.backend_in[raw]);
                self.close("backend-closed");
            } else {
                let reply = Reply::from_span(&self.backend_in[start..], span).to_string();
                self.notice(Notice::BackendUnexpected { reply });
                self.fail_to_client(replies::backend_problem(&self.config.hostname));
                self.close("backend-error");
            }
            return;
        };
        match expect {
            Expect::Local(..) | Expect::Xpony(_) | Expect::Pause { .. } => {
                // Cannot happen: local replies at the head are flushed before
                // a backend reply is handled. Fail safe if it ever does.
                let reply = Reply::from_span(&self.backend_in[start..], span).to_string();
                self.notice(Notice::BackendUnexpected { reply });
                self.close("internal-error");
            }
            Expect::Greeting => {
                self.to_client
                    .extend_from_slice(&self.backend_in[raw.clone()]);
                self.greeting_sent = self.backend_in[raw].to_vec();
                if span.code == 220 && self.config.identity == Identity::Xclient {
                    let line = format!("EHLO {}\r\n", self.config.hostname);
                    self.to_backend.extend_from_slice(line.as_bytes());
                    self.pending.push_back(Expect::Own(OwnStep::Ehlo));
                } else if span.code != 220 {
                    // The backend refuses service; the client may still QUIT.
                    self.phase = Phase::Commands;
                }
            }
            Expect::Own(step) => {
                let reply = Reply::from_span(&self.backend_in[start..], span);
                let wanted = match step {
                    OwnStep::Greeting | OwnStep::Xclient => reply.code() == 220,
                    OwnStep::Ehlo | OwnStep::Rset => reply.is_success(),
                };
                if !wanted {
                    self.backend_refused(step, &reply);
                    return;
                }
                if step == OwnStep::Ehlo {
                    let ehlo = EhloReply::parse(&reply);
                    match ehlo.get("XCLIENT") {
                        Some(cap) => self.xclient = XclientAttrs::parse(&cap.params),
                        None => {
                            self.backend_refused(step, &reply);
                            return;
                        }
                    }
                    self.send_xclient();
                }
            }
            Expect::Relay => self.relay(raw),
            Expect::Mail => {
                self.relay(raw);
                if span.code / 100 == 2 {
                    self.step_dialogue(Dialogue::mail_accepted);
                }
            }
            Expect::Reset => {
                self.relay(raw);
                if span.code / 100 == 2 {
                    self.step_dialogue(Dialogue::transaction_ended);
                }
            }
            Expect::Ehlo => {
                if span.code == 250 {
                    // RFC 5321 §4.1.4: EHLO ends any transaction, as RSET.
                    self.step_dialogue(Dialogue::transaction_ended);
                    let reply = Reply::from_span(&self.backend_in[start..], span);
                    self.rewrite_ehlo(&reply);
                } else {
                    self.relay(raw);
                }
            }
            Expect::Data => {
                self.relay(raw);
                if span.code == 354 {
                    self.start_message();
                } else {
                    self.phase = Phase::Commands;
                }
            }
            Expect::Auth => {
                self.relay(raw);
                self.phase = if span.code == 334 {
                    Phase::AuthResponse
                } else {
                    Phase::Commands
                };
            }
            Expect::EndOfData => {
                // Whatever the verdict, the transaction is over.
                self.step_dialogue(Dialogue::transaction_ended);
                if span.code / 100 == 2 {
                    self.stats.messages += 1;
                    // As Postfix: errors count "without delivering mail".
                    self.errors.forgive();
                } else {
                    self.stats.refused += 1;
                }
                self.relay(raw);
            }
            Expect::Quit => {
                // The log keeps the last mail reply, not the 221.
                self.to_client.extend_from_slice(&self.backend_in[raw]);
                self.close("quit");
            }
        }
    }

    /// Copies a backend reply to the client and remembers it for the log.
    pub(super) fn relay(&mut self, raw: std::ops::Range<usize>) {
        let bytes = &self.backend_in[raw];
        self.to_client.extend_from_slice(bytes);
        self.stats.last_reply.clear();
        let first_line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
        let first_line = first_line.strip_suffix(b"\r").unwrap_or(first_line);
        self.stats
            .last_reply
            .push_str(&String::from_utf8_lossy(first_line));
    }

    pub(super) fn backend_refused(&mut self, step: OwnStep, reply: &Reply) {
        self.notice(Notice::BackendRefused {
            step: step.name(),
            reply: reply.to_string(),
        });
        self.fail_to_client(replies::backend_configuration_problem(
            &self.config.hostname,
        ));
        self.close("backend-refused");
    }

    /// Identifies the client to the backend, once per backend connection:
    /// after XCLIENT, Postfix checks its authorization against the new
    /// client address, so a second XCLIENT would be refused. The client's
    /// own EHLO/HELO then sets the HELO name and protocol at the backend.
    pub(super) fn send_xclient(&mut self) {
        let line = xclient_command(&self.xclient, self.client, self.local);
        self.to_backend.extend_from_slice(line.as_bytes());
        self.to_backend.extend_from_slice(b"\r\n");
        self.pending.push_back(Expect::Own(OwnStep::Xclient));
    }
}
