//! The sidecar's relay session, sans-IO.
//!
//! A [`Session`] sits between one client and one backend MTA. The I/O loop
//! feeds it bytes from either side ([`Session::client_input`],
//! [`Session::backend_input`]), writes out what it leaves in
//! [`Session::to_client`] and [`Session::to_backend`], and carries out the
//! [`Action`]s it asks for (start TLS, restart the backend, close).
//!
//! Ordering is kept by one queue, `pending`: every command the session
//! forwards adds the reply it expects from the backend, and every reply the
//! session gives itself (STARTTLS, a refused XCLIENT, a 530 under
//! `--require-tls`) is queued behind the backend replies still owed, so a
//! pipelining client (RFC 2920) gets its replies in the order of its commands.
//!
//! The session parses the client's commands itself and never forwards a
//! byte it has not understood: commands are re-terminated with CRLF, message
//! content goes through the [`DataScanner`](crate::smtp::DataScanner), and
//! where the backend's state depends on a reply (DATA, AUTH) the session
//! waits for that reply before reading on, exactly as the backend does.
//!
//! This file is what the I/O loop calls (its inputs, the timeouts, the
//! orders it polls) and the loop that runs the session as far as its input
//! allows. The parts, a file each:
//!
//! - `state.rs`: what a session holds (its phase, the queue of replies it
//!   expects, its buffers) and the steps every part takes (queue a reply of
//!   its own in its turn, log, close);
//! - `commands.rs`: the client's command lines, answered or forwarded;
//! - `replies.rs`: the backend's replies, and the identity dialogue
//!   (XCLIENT, RSET after STARTTLS) the sidecar has with it on its own;
//! - `extensions.rs`: which EHLO extensions pass to the internet;
//! - `message.rs`: the message after 354, and what refuses it;
//! - `encryption.rs`: STARTTLS and XPONY, and the fresh start after them;
//! - `dialogue.rs`: the client's standing (EHLO, a mail transaction);
//! - `errors.rs`: Postfix's error limits and repeated refusals;
//! - `notice.rs`: what the session logs.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use self::dialogue::Dialogue;
pub use self::errors::ErrorLimits;
use self::errors::{ErrorCount, Repeats};
pub use self::notice::Notice;
pub use self::state::{Action, Session, SessionConfig, Stats};
use self::state::{Expect, Phase, Then};
use crate::inbound::identity::XclientAttrs;
use crate::smtp::{self, Reply};
use crate::transport::Encryption;

mod commands;
mod dialogue;
mod encryption;
mod errors;
mod extensions;
mod message;
mod notice;
mod replies;
mod state;
#[cfg(test)]
mod tests;

/// Client bytes buffered while we wait (for a reply, for the handshake).
const MAX_CLIENT_BUFFER: usize = 256 * 1024;

impl Session {
    /// A session for a client at `client` that connected to our `local`
    /// address; the backend connection is being opened.
    pub fn new(config: Arc<SessionConfig>, client: SocketAddr, local: SocketAddr) -> Self {
        let mut pending = VecDeque::new();
        pending.push_back(Expect::Greeting);
        Session {
            config,
            client,
            local,
            phase: Phase::Opening,
            pending,
            client_in: Vec::new(),
            backend_in: Vec::new(),
            skipping_line: false,
            line_crlf: true,
            dialogue: Dialogue::Opened,
            tls: None,
            xclient: XclientAttrs::default(),
            backend_size: None,
            actions: VecDeque::new(),
            to_client: Vec::new(),
            to_backend: Vec::new(),
            greeting_sent: Vec::new(),
            ehlo_line: Vec::new(),
            ehlo_reply_sent: Vec::new(),
            xpony_offered: false,
            errors: ErrorCount::default(),
            repeats: Repeats::default(),
            client_done: false,
            client_truncated: None,
            pony_ready: None,
            #[cfg(test)]
            fixed_ephemeral: None,
            stats: Stats::default(),
        }
    }

    /// The next thing the I/O loop must do, after writing out the buffers.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The client's address, and ours it connected to.
    pub fn client_addr(&self) -> SocketAddr {
        self.client
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn tls(&self) -> Option<&Encryption> {
        self.tls.as_deref()
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Whether the I/O loop should read from the client now.
    pub fn wants_client_input(&self) -> bool {
        !self.client_done
            && !matches!(
                self.phase,
                Phase::Closed | Phase::Handshake(_) | Phase::XponySwitch | Phase::TooManyErrors
            )
            && self.client_in.len() < MAX_CLIENT_BUFFER
    }

    /// Whether the session waits for XPONY message 3 (its timeout runs
    /// from the 334 as a whole, not from the last byte: proto-spec §3.8).
    pub fn awaiting_message_3(&self) -> bool {
        matches!(self.phase, Phase::XponyAwaitingFinish(_))
    }

    /// Whether the client is sending a message (after the backend's 354),
    /// for the message's deadline (a minimum rate, not a line's time).
    pub fn receiving_message(&self) -> bool {
        matches!(self.phase, Phase::Message(_))
    }

    /// Whether a reply from the backend is owed (for choosing the timeout).
    pub fn awaiting_backend(&self) -> bool {
        self.pending.iter().any(|e| {
            !matches!(
                e,
                Expect::Local(..) | Expect::Xpony(_) | Expect::Pause { .. }
            )
        })
    }

    /// Bytes from the client (already decrypted if TLS is up).
    pub fn client_input(&mut self, data: &[u8]) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.client_in.extend_from_slice(data);
        self.advance();
    }

    /// Bytes from the backend.
    pub fn backend_input(&mut self, data: &[u8]) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.backend_in.extend_from_slice(data);
        self.advance();
    }

    /// The client finished sending (EOF, or an XPONY CLOSE frame, which
    /// "processes the data received before it", proto-spec §5.3). Replies
    /// the backend still owes for commands already passed on are relayed
    /// before the session closes: a client may pipeline the end of a
    /// message, QUIT and its close, and must still learn that the message
    /// was accepted (else it sends it again). A message cut off before its
    /// end of data is dropped with the backend connection.
    pub fn client_eof(&mut self) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.client_done = true;
        self.advance();
        self.close_if_client_done();
    }

    /// The outcome of one read from the client connection, as the I/O loop
    /// got it: bytes, EOF (`Ok` of nothing), or an error.
    pub fn client_read(&mut self, read: std::io::Result<&[u8]>) {
        use crate::transport::log_words::error_words;
        use std::io::ErrorKind;
        match read {
            Ok([]) => self.client_eof(),
            Ok(data) => self.client_input(data),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                self.client_truncated(error_words(&e))
            }
            // A reset is an ordinary way to go; a broken record or frame is
            // worth its own log line.
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                self.client_lost()
            }
            Err(e) => self.client_error(error_words(&e)),
        }
    }

    /// The client's connection ended without its clean end: an XPONY
    /// channel without CLOSE, or TLS without close_notify. Everything
    /// before it was authenticated and is handled as before an EOF (an
    /// open message is dropped, replies owed are still sent). It is a
    /// truncation unless the client's commands included QUIT; the verdict
    /// depends on the bytes received, not on how the reads split them
    /// (proto-spec §5.6).
    pub fn client_truncated(&mut self, error: String) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.client_truncated = Some(error);
        self.client_eof();
    }

    /// Reading from the client failed: nothing more will come, and nothing
    /// more can be trusted.
    pub fn client_error(&mut self, error: String) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.notice(Notice::ClientError { error });
        self.close("client-error");
    }

    /// Writing to the client failed: it is gone.
    pub fn client_lost(&mut self) {
        if !matches!(self.phase, Phase::Closed) {
            self.close("client-closed");
        }
    }

    fn close_if_client_done(&mut self) {
        if self.client_done
            && !matches!(self.phase, Phase::Closed)
            && (matches!(self.phase, Phase::Message(_)) || !self.awaiting_backend())
        {
            match self.client_truncated.take() {
                Some(error) if !matches!(self.phase, Phase::Quitting) => {
                    self.notice(Notice::ClientError { error });
                    self.close("truncated");
                }
                _ => self.close("client-closed"),
            }
        }
    }

    /// The backend closed its side.
    pub fn backend_eof(&mut self) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.notice(Notice::BackendClosed);
        self.fail_to_client(smtp::replies::service_unavailable(&self.config.hostname));
        self.close("backend-closed");
    }

    /// The peer we were waiting for was silent too long.
    pub fn timeout(&mut self) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        if self.awaiting_backend() {
            self.notice(Notice::Timeout {
                waiting_for: "backend",
            });
            self.fail_to_client(smtp::replies::backend_timed_out(&self.config.hostname));
        } else if matches!(self.phase, Phase::XponyAwaitingFinish(_)) {
            // proto-spec §3.3 R17.
            self.notice(Notice::Timeout {
                waiting_for: "XPONY message 3",
            });
            self.fail_to_client(smtp::replies::xpony_timeout());
        } else {
            self.notice(Notice::Timeout {
                waiting_for: "client",
            });
            self.fail_to_client(smtp::replies::timeout(&self.config.hostname));
        }
        self.close("timeout");
    }

    /// The server ends the session on its own (eviction, shutdown, a write
    /// deadline): `reply`, if any, is the last thing the client gets; a
    /// `421` may answer any command (RFC 5321 §3.8). A message cut off
    /// before its end of data is dropped with the backend connection.
    pub fn end(&mut self, reply: Option<Reply>, why: &'static str) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        if let Some(reply) = reply {
            self.fail_to_client(reply);
        }
        self.close(why);
    }

    /// The backend was replaced after [`Action::RestartBackend`].
    pub fn backend_restarted(&mut self) {
        self.backend_in.clear();
        self.advance();
    }

    /// The error limit's wait was served (see [`Action::Delay`]).
    pub fn delay_over(&mut self) {
        if let Some(Expect::Pause { started: true }) = self.pending.front() {
            self.pending.pop_front();
            self.advance();
        }
    }

    /// Runs the session as far as the buffered input allows.
    fn advance(&mut self) {
        loop {
            if matches!(self.phase, Phase::Closed) {
                return;
            }
            if matches!(self.phase, Phase::Opening) && self.pending.is_empty() {
                // Greeting relayed and the identity handshake done.
                self.phase = Phase::Commands;
            }
            let mut progressed = self.flush_local_replies();
            progressed |= self.handle_backend_replies();
            progressed |= self.handle_client_input();
            if !progressed {
                self.close_if_client_done();
                return;
            }
        }
    }

    /// Sends the local replies now at the head of the queue.
    fn flush_local_replies(&mut self) -> bool {
        let mut progressed = false;
        while let Some(Expect::Local(..) | Expect::Xpony(_) | Expect::Pause { .. }) =
            self.pending.front_mut()
        {
            if let Some(Expect::Pause { started }) = self.pending.front_mut() {
                if !*started {
                    *started = true;
                    self.actions
                        .push_back(Action::Delay(self.config.error_limits.sleep));
                    return true;
                }
                // Waiting for `delay_over`.
                return progressed;
            }
            let (reply, then) = match self.pending.pop_front() {
                Some(Expect::Local(reply, then)) => (reply, then),
                Some(Expect::Xpony(message_1)) => {
                    self.xpony_respond(&message_1);
                    return true;
                }
                _ => break,
            };
            progressed = true;
            match then {
                Then::Continue => reply.write_to(&mut self.to_client),
                Then::TooManyErrors => {
                    self.notice(Notice::TooManyErrors {
                        errors: self.errors.count(),
                    });
                    self.fail_to_client(reply);
                    self.close("too-many-errors");
                    return true;
                }
                Then::StartTls => {
                    // Decided in turn, when the replies to every command
                    // pipelined before STARTTLS (a MAIL among them) are
                    // known. RFC 3207 §4.2 discards the session's state at
                    // TLS; a transaction opened before it must not survive
                    // at a backend that would let the client go on with it.
                    let Some(outside) = self.dialogue.no_transaction() else {
                        self.phase = Phase::Commands;
                        self.local(smtp::replies::transaction_in_progress(), Then::Continue);
                        continue;
                    };
                    // CVE-2011-0411 class: anything the client sent after
                    // STARTTLS and before our 220 was sent in plaintext and
                    // must not be executed inside TLS.
                    if !self.client_in.is_empty() {
                        let bytes = self.client_in.len();
                        self.client_in.clear();
                        self.notice(Notice::StartTlsInjection { bytes });
                        self.fail_to_client(smtp::replies::pipelined_after("STARTTLS"));
                        self.close("starttls-injection");
                        return true;
                    }
                    reply.write_to(&mut self.to_client);
                    self.phase = Phase::Handshake(outside);
                    self.actions.push_back(Action::StartTls);
                    return true;
                }
            }
        }
        progressed
    }
}
