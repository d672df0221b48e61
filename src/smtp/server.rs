//! The receiving side of the outbound transport, sans-IO: how an MTA hands
//! blackpony a message.
//!
//! - **LMTP** (RFC 2033): recipients are accepted when their syntax is sane;
//!   whether they are delivered is decided by the remote server, and after
//!   the data one reply per recipient carries that decision
//!   ([`ReceiveEvent::Deliver`], answered with [`ReceiveSession::delivered`]).
//! - **SMTP** as a per-transaction proxy: RCPT, DATA and end-of-data are not
//!   answered here but by the remote server, whose replies the driver passes
//!   to [`ReceiveSession::answer`] ([`ReceiveEvent::Recipient`],
//!   [`ReceiveEvent::Data`], [`ReceiveEvent::EndOfData`]). The session
//!   reads no further command until the answer is in, so replies stay in
//!   order for a pipelining client.
//! - **SMTP as a receiving MX** (the sealed relay): the same answered
//!   events, the answers decided by the driver itself (its domains, its
//!   spool), with [`ReceiveOptions`] turning on what a server facing the
//!   internet needs: STARTTLS with the injection rule (RFC 3207 §4.2,
//!   CVE-2011-0411), refusal of bare CR/LF and NUL in content, and XPONY
//!   with a host key ([`ReceiveSession::with_pony`], proto-spec xpony.md §3:
//!   the negotiation is the shared [`super::xpony_server`], as in `inbound`).
//!
//! This file is the session's face (how it is made, fed, answered) and the
//! loop that reads lines or message bytes as the phase allows. The parts,
//! a file each: `state.rs` (what a session holds, and the steps every part
//! takes), `commands.rs` (the MTA's command lines), `message.rs` (the
//! message after 354 and its refusals), `encryption.rs` (the end of
//! STARTTLS, and XPONY as the responder).

use std::collections::VecDeque;

pub use self::commands::MAX_RECIPIENTS;
use self::state::Phase;
pub use self::state::{Protocol, ReceiveEvent, ReceiveOptions, ReceiveSession};
use super::command::{Command, NextLine, Verb, next_line};
use super::{DataScanner, Reply, replies};

mod commands;
mod encryption;
mod message;
mod state;
#[cfg(test)]
mod tests;

impl ReceiveSession {
    /// A session whose greeting is already in the output.
    pub fn new(protocol: Protocol, hostname: &str, max_message_size: u64) -> Self {
        let mut s = ReceiveSession {
            protocol,
            hostname: hostname.to_string(),
            max_message_size,
            options: ReceiveOptions::default(),
            tls: false,
            pony: None,
            pony_up: false,
            pony_ready: None,
            greeting: Vec::new(),
            ehlo_line: Vec::new(),
            ehlo_reply: Vec::new(),
            line_crlf: true,
            phase: Phase::Greeted,
            input: Vec::new(),
            skipping_line: false,
            discard: Vec::new(),
            declared_size: None,
            output: Vec::new(),
            events: VecDeque::new(),
        };
        let name = match protocol {
            Protocol::Lmtp => "LMTP",
            Protocol::Smtp => "ESMTP",
        };
        s.reply(replies::greeting(hostname, name));
        s.greeting = s.output.clone();
        s
    }

    /// The same session with `options` (set before any input).
    pub fn with_options(mut self, options: ReceiveOptions) -> Self {
        self.options = options;
        self
    }

    pub fn poll_event(&mut self) -> Option<ReceiveEvent> {
        self.events.pop_front()
    }

    /// The `SIZE=` the client declared in the current transaction's MAIL.
    pub fn declared_size(&self) -> Option<u64> {
        self.declared_size
    }

    /// SMTP proxy: whether the client's next command, already received
    /// behind the RCPT awaiting its answer, is DATA (a client pipelining
    /// its envelope, RFC 2920 §3.1): the proxy may then send DATA to the
    /// remote with that RCPT instead of a round trip later.
    /// The line is found and read as [`Self::input`] will (the same
    /// `next_line` and `Command::parse`), so the guess never disagrees with
    /// the command the session then takes.
    pub fn data_next(&self) -> bool {
        if !matches!(self.phase, Phase::AwaitingRcpt { .. }) || self.skipping_line {
            return false;
        }
        match next_line(&self.input) {
            NextLine::Line { line_len, .. } => matches!(
                Command::parse(&self.input[..line_len]),
                Ok(Command {
                    verb: Verb::Data,
                    args: ""
                })
            ),
            NextLine::Incomplete | NextLine::TooLong { .. } => false,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Whether the client is sending a message (after the 354): the time
    /// it takes is measured against a minimum rate, not per line.
    pub fn receiving_message(&self) -> bool {
        matches!(self.phase, Phase::Data { .. })
    }

    /// Bytes from the client.
    pub fn input(&mut self, data: &[u8]) {
        self.input.extend_from_slice(data);
        self.advance();
    }

    /// The client went away: nothing is delivered that was not complete.
    pub fn eof(&mut self) {
        self.phase = Phase::Closed;
    }

    /// The server is shutting down: `421 4.3.2` (RFC 5321 §3.8) and the
    /// session ends, whatever the client was sending (a message not yet
    /// complete is not delivered; the client tries again later).
    pub fn shutting_down(&mut self) {
        self.close_with(&replies::shutting_down(&self.hostname));
    }

    /// Ends the session with `reply` (a `421`, RFC 5321 §3.8: the server
    /// may close at any time after one), whatever the client was sending;
    /// a message not yet complete is not delivered.
    pub fn close_with(&mut self, reply: &Reply) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        reply.write_to(&mut self.output);
        self.phase = Phase::Closed;
        self.events.push_back(ReceiveEvent::Close);
    }

    /// Octets of the message being received that the session holds now
    /// (none outside a message, nor once it is over the size limit and
    /// discarded): for a server's bound on the memory messages take.
    pub fn message_bytes(&self) -> u64 {
        match &self.phase {
            Phase::Data {
                wire,
                too_big: false,
                ..
            } => wire.len() as u64,
            _ => 0,
        }
    }

    /// SMTP: the answer to the pending [`ReceiveEvent::Recipient`],
    /// [`ReceiveEvent::Data`] or [`ReceiveEvent::EndOfData`].
    pub fn answer(&mut self, reply: &Reply) {
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::AwaitingRcpt {
                sender,
                mut recipients,
                recipient,
            } => {
                reply.write_to(&mut self.output);
                if reply.is_success() {
                    recipients.push(recipient);
                }
                self.phase = if recipients.is_empty() {
                    Phase::Mail { sender }
                } else {
                    Phase::Rcpt { sender, recipients }
                };
            }
            Phase::AwaitingData { sender, recipients } => {
                reply.write_to(&mut self.output);
                self.phase = if reply.code() == 354 {
                    Phase::Data {
                        sender,
                        recipients,
                        scanner: DataScanner::new(),
                        wire: Vec::new(),
                        too_big: false,
                    }
                } else {
                    Phase::Rcpt { sender, recipients }
                };
            }
            Phase::AwaitingEnd => {
                reply.write_to(&mut self.output);
                self.phase = Phase::Ready;
            }
            other => self.phase = other,
        }
        self.advance();
    }

    /// One reply per recipient of the message handed out with
    /// [`ReceiveEvent::Deliver`], in the same order (RFC 2033 §4.2).
    pub fn delivered(&mut self, replies: &[Reply]) {
        let Phase::Delivering { count } = self.phase else {
            return;
        };
        for i in 0..count {
            match replies.get(i) {
                Some(r) => r.write_to(&mut self.output),
                None => self.reply(replies::no_result_for_recipient()),
            }
        }
        self.phase = Phase::Ready;
        self.advance();
    }

    fn advance(&mut self) {
        loop {
            match &mut self.phase {
                Phase::Closed
                | Phase::Delivering { .. }
                | Phase::AwaitingRcpt { .. }
                | Phase::AwaitingData { .. }
                | Phase::AwaitingEnd
                | Phase::Handshake
                | Phase::XponySwitch => return,
                Phase::Data { .. } => {
                    if !self.scan_data() {
                        return;
                    }
                }
                _ if self.skipping_line => match memchr::memchr(b'\n', &self.input) {
                    Some(nl) => {
                        self.input.drain(..=nl);
                        self.skipping_line = false;
                    }
                    None => {
                        self.input.clear();
                        return;
                    }
                },
                _ => match next_line(&self.input) {
                    NextLine::Incomplete => return,
                    NextLine::TooLong { consumed } => {
                        self.skipping_line = !self.input[..consumed].ends_with(b"\n");
                        let xpony = self.input[..consumed.min(6)].eq_ignore_ascii_case(b"XPONY ");
                        self.input.drain(..consumed);
                        if self.awaiting_message_3() {
                            // R16: a message 3 line over the limit.
                            self.reply(replies::xpony_line_too_long());
                            self.close();
                        } else if xpony && self.pony.is_some() {
                            // R5, as for an over-long AUTH line (RFC 4954 §4).
                            self.reply(replies::xpony_line_too_long());
                        } else {
                            self.reply(replies::line_too_long());
                        }
                    }
                    NextLine::Line { line_len, consumed } => {
                        let line = self.input[..line_len].to_vec();
                        self.line_crlf = consumed == line_len + 2;
                        self.input.drain(..consumed);
                        if self.awaiting_message_3() {
                            self.xpony_finish(&line);
                        } else {
                            self.command(&line);
                        }
                    }
                },
            }
        }
    }
}
