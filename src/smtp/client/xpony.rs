//! The XPONY initiator inside the client session (proto-spec §3): message 1
//! after EHLO, the server's key handed to the caller to judge, message 3
//! or `*`, and the switch to the channel.

use super::outcome::HostFailure;
use super::state::{ClientSession, PonyOffer, State, Step};
use crate::pony::negotiation::{self, ServerHints};
use crate::pony::noise::{InitiatorAwaitingResponse, Keypair, PROTOCOL_NAME, Transport};
use crate::smtp::Reply;

impl ClientSession {
    /// Fixes the ephemeral key of the next XPONY handshake, so the spec's
    /// test vectors can be replayed against this session (and a fuzz
    /// input does the same thing every time).
    pub(crate) fn fix_ephemeral(mut self, key: Keypair) -> Self {
        self.fixed_ephemeral = Some(key);
        self
    }

    /// Uses the blackpony extension when the server offers it (preferred
    /// over STARTTLS).
    pub fn with_pony(mut self, offer: PonyOffer) -> Self {
        self.pony = Some(offer);
        self
    }

    /// The server's key is acceptable: send message 3 and switch.
    pub fn xpony_accept(&mut self) -> Step {
        let State::XponyConfirm(state) = std::mem::replace(&mut self.state, State::Done) else {
            return Step::Continue;
        };
        // Our name, inside the encrypted payload (proto-spec §4.4): the
        // server may log it; it decides nothing.
        match state.write_message_3(&negotiation::message_3_payload(&self.helo_name)) {
            Ok((transport, message_3)) => {
                let line = negotiation::encode_line(&message_3);
                self.send_line(&line);
                self.pony_ready = Some((transport, std::mem::take(&mut self.inbuf)));
                self.state = State::XponySwitch;
                Step::SwitchToPony
            }
            Err(e) => {
                self.fail(HostFailure::PonyFailed { why: e.to_string() });
                Step::Continue
            }
        }
    }

    /// The server's key is refused: abort with `*` (proto-spec §8.3).
    pub fn xpony_reject(&mut self, why: String) {
        if matches!(self.state, State::XponyConfirm(_)) {
            self.abort_xpony(HostFailure::PonyRejected { why });
        }
    }

    /// After a 334 the server reads our next line as message 3: `*` is the
    /// only safe thing to send (proto-spec §3.4), then QUIT after its 501.
    pub(super) fn abort_xpony(&mut self, failure: HostFailure) {
        self.send_line("*");
        self.state = State::XponyAborting { failure };
    }

    /// The channel after [`Step::SwitchToPony`], with any bytes read behind
    /// the 334 (there should be none).
    pub fn take_pony(&mut self) -> Option<(Transport, Vec<u8>)> {
        self.pony_ready.take()
    }

    /// The connection runs over the blackpony channel: start over with EHLO.
    pub fn pony_established(&mut self) {
        if matches!(self.state, State::XponySwitch) {
            self.tls_established();
        }
    }

    /// Sends XPONY with message 1 (proto-spec §3.2).
    pub(super) fn start_xpony(&mut self) {
        let Some(offer) = &self.pony else {
            return;
        };
        let prologue = negotiation::prologue(
            &self.greeting_raw,
            self.ehlo_line.as_bytes(),
            &self.ehlo_raw,
        );
        let ephemeral = match self.fixed_ephemeral.take() {
            Some(key) => Ok(key),
            None => Keypair::generate().map_err(|e| e.to_string()),
        };
        let started = ephemeral.and_then(|e| {
            crate::pony::noise::Initiator::new(&prologue, offer.key.clone(), e)
                .write_message_1(&[])
                .map_err(|e| e.to_string())
        });
        match started {
            Ok((state, message_1)) => {
                let line = format!(
                    "XPONY {PROTOCOL_NAME} {}",
                    negotiation::encode_line(&message_1)
                );
                self.send_line(&line);
                self.state = State::XponySent(state);
            }
            Err(why) => self.fail(HostFailure::PonyFailed { why }),
        }
    }

    /// The reply to XPONY: 334 with message 2, or a refusal.
    pub(super) fn on_xpony_reply(
        &mut self,
        state: InitiatorAwaitingResponse,
        reply: Reply,
    ) -> Option<Step> {
        let required = self.pony.as_ref().is_some_and(|p| p.required);
        // §3.4: a 421, or a 554 (R11: the server closes behind it), ends
        // the session; going on with STARTTLS would only meet a closed
        // connection. Any other 2xx/3xx than 334 is a protocol error.
        if reply.code() == 421 || reply.code() == 554 || (reply.code() < 400 && reply.code() != 334)
        {
            let failure = HostFailure::PonyFailed {
                why: format!("server answered XPONY with {reply}"),
            };
            if reply.code() < 400 {
                self.fail(failure);
            } else {
                self.fail_silently(failure);
            }
            return None;
        }
        if reply.code() != 334 {
            if required {
                self.fail(HostFailure::PonyFailed {
                    why: format!("server refused XPONY: {reply}"),
                });
            } else {
                // Not this time: STARTTLS or plaintext, as without XPONY.
                self.pony = None;
                self.after_hello();
            }
            return None;
        }
        // Bytes behind the 334 came before message 3 in plaintext: whoever
        // sent them is not the server we are about to trust (§3.6). Close
        // without writing anything more.
        if !self.inbuf.is_empty() {
            self.fail_silently(HostFailure::PonyFailed {
                why: format!("{} bytes after the 334 (injection)", self.inbuf.len()),
            });
            return None;
        }
        // §3.1: every line of the exchange ends in CRLF. The reply parser
        // tolerates a bare LF in ordinary replies (RFC 5321 §2.3.8 asks for
        // CRLF, robustness reads LF too); a 334 ended by one is not the
        // server's xpony-continue, so the negotiation is cancelled as for
        // any malformed 334 (§3.4: `*`, temporary failure).
        if !lines_end_in_crlf(&std::mem::take(&mut self.last_raw)) {
            self.abort_xpony(HostFailure::PonyFailed {
                why: "the 334 reply to XPONY ends in a bare LF (proto-spec §3.1: CRLF)".into(),
            });
            return None;
        }
        // §3.4: a 334 with a continuation line is a protocol error too.
        let message_2 = match reply.lines() {
            [line] => negotiation::decode_line(line),
            _ => None,
        }
        .ok_or_else(|| "message 2 is not one line of base64".to_string());
        let step = message_2.and_then(|m2| state.read_message_2(&m2).map_err(|e| e.to_string()));
        let read = step.and_then(|(confirm, payload)| {
            ServerHints::decode(&payload)
                .map(|hints| (confirm, hints))
                .map_err(|e| e.to_string())
        });
        match read {
            Ok((confirm, hints)) => {
                let key = confirm.remote_static();
                self.state = State::XponyConfirm(confirm);
                Some(Step::CheckServerKey { key, hints })
            }
            // A tampered negotiation (prologue mismatch) fails here.
            Err(why) => {
                self.abort_xpony(HostFailure::PonyFailed { why });
                None
            }
        }
    }
}

/// Whether every line of `raw` (a reply as it came, each line up to and
/// including its LF) ends in CRLF. A CR elsewhere in a line is no line end:
/// the base64 check refuses it.
fn lines_end_in_crlf(raw: &[u8]) -> bool {
    raw.split_inclusive(|&b| b == b'\n')
        .all(|line| line.ends_with(b"\r\n"))
}
