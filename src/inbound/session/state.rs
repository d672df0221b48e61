//! What a relay session holds, and the few steps every part of it takes:
//! log a notice, queue a reply of its own in its turn, end the session.
//!
//! Ordering is kept by one queue, `pending`: every command the session
//! forwards adds the reply it expects from the backend ([`Expect`]), and
//! every reply the session gives itself is queued behind the backend
//! replies still owed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::dialogue::{Dialogue, NoTransaction};
use super::errors::{ErrorCount, ErrorLimits, Repeats, Verdict};
use super::notice::Notice;
use crate::inbound::identity::{Identity, XclientAttrs};
use crate::pony::negotiation::ServerIdentity;
#[cfg(test)]
use crate::pony::noise::Keypair;
use crate::pony::noise::{ResponderAwaitingFinish, Transport};
use crate::smtp::{BareNewlines, DataScanner, Reply, replies};
use crate::transport::Encryption;

/// Settings shared by every session of one listener.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our host name, for replies and the trace header.
    pub hostname: String,
    pub identity: Identity,
    /// Refuse mail transactions before STARTTLS.
    pub require_tls: bool,
    pub bare_newlines: BareNewlines,
    /// Add a `Received:` header naming the TLS use.
    pub trace_header: bool,
    /// Offer the blackpony extension (XPONY) with this host key.
    pub pony: Option<Arc<ServerIdentity>>,
    /// Postfix's soft and hard error limits.
    pub error_limits: ErrorLimits,
}

/// Something the I/O loop must do after writing out the buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run the TLS handshake with the client, then call
    /// [`Session::tls_established`] or [`Session::tls_failed`].
    StartTls,
    /// Replace the backend by a fresh one (after STARTTLS or XPONY, except
    /// in XCLIENT mode: in exec mode the new process gets the TLS facts in
    /// its environment), then call [`Session::backend_restarted`]. What is
    /// in [`Session::to_backend`] then is for the old backend, written to it
    /// before it is replaced.
    RestartBackend,
    /// Switch the client connection to the blackpony channel: take the
    /// transport with [`Session::take_pony`], then call
    /// [`Session::pony_established`].
    StartPony,
    /// Write out what is buffered and close both connections.
    Close,
    /// Wait this long, then call [`Session::delay_over`]: the error limit
    /// slows this client down. Only this session's task waits.
    Delay(Duration),
    /// Write one log record.
    Log(Notice),
}

/// What the session does with the next reply from the backend, or a reply
/// of its own waiting for its turn.
#[derive(Debug)]
pub(super) enum Expect {
    /// The greeting: relay it; in XCLIENT mode, then identify the client.
    Greeting,
    /// Relay the reply as it is.
    Relay,
    /// A reply to the client's EHLO: relay it with its extensions rewritten.
    Ehlo,
    /// The reply to DATA: 354 starts the message.
    Data,
    /// The reply to AUTH or an AUTH response line: 334 asks for another line.
    Auth,
    /// The reply to end-of-data: the backend's verdict on the message.
    EndOfData,
    /// The reply to MAIL: 2xx opens a mail transaction.
    Mail,
    /// The reply to RSET or HELO: 2xx ends any mail transaction.
    Reset,
    /// The reply to QUIT: relay it, then close.
    Quit,
    /// A reply to a command the sidecar sent on its own; not relayed.
    Own(OwnStep),
    /// A reply the sidecar gives itself, in its turn.
    Local(Reply, Then),
    /// The XPONY handshake's message 1, answered in its turn with 334.
    Xpony(Vec<u8>),
    /// The error limit's wait before the next reply; `started` once the I/O
    /// loop was asked to wait ([`Action::Delay`]).
    Pause { started: bool },
}

/// Commands the sidecar sends the backend on its own account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OwnStep {
    /// The greeting of a backend started again after STARTTLS.
    Greeting,
    /// EHLO before the first XCLIENT, to learn its attributes.
    Ehlo,
    /// XCLIENT, answered by a new 220 greeting.
    Xclient,
    /// RSET after STARTTLS: nothing from before TLS survives (RFC 3207 §4.2).
    Rset,
}

impl OwnStep {
    pub(super) fn name(self) -> &'static str {
        match self {
            OwnStep::Greeting => "greeting",
            OwnStep::Ehlo => "ehlo",
            OwnStep::Xclient => "xclient",
            OwnStep::Rset => "rset",
        }
    }
}

/// What happens after a local reply is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Then {
    Continue,
    StartTls,
    /// The hard error limit's 421: log it, send it, close.
    TooManyErrors,
}

/// A message being received after 354.
#[derive(Debug)]
pub(super) struct Message {
    pub(super) scanner: DataScanner,
    /// The trace header is written with the first message bytes, so it
    /// leaves in the same write as they do (not as a write of its own).
    pub(super) trace_pending: bool,
    /// Set once the message is refused; it is read to its end, not
    /// forwarded. (Boxed, as the phases' large states: the phase sits in
    /// every idle session's task.)
    pub(super) refusal: Option<Box<Refusal>>,
}

/// Why a message is refused, and its bytes read but not forwarded.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) reply: Reply,
    pub(super) notice: Notice,
    /// The last chunk of the message, scanned and dropped.
    pub(super) discard: Vec<u8>,
}

/// Where the session is in the client's dialogue. Client input is only
/// parsed as commands in `Commands`; in the other states it is buffered.
#[derive(Debug)]
pub(super) enum Phase {
    /// The backend has not finished opening (greeting, identity handshake).
    Opening,
    Commands,
    /// DATA was forwarded; its reply decides what the next bytes are.
    AwaitingData,
    Message(Message),
    /// AUTH was forwarded; a 334 makes the next line a response, not a command.
    AwaitingAuth,
    AuthResponse,
    /// STARTTLS was accepted once all earlier replies are out.
    StartTlsQueued,
    /// The handshake is running in the I/O loop; it started outside a mail
    /// transaction.
    Handshake(NoTransaction),
    /// XPONY was accepted once all earlier replies are out.
    XponyQueued,
    /// 334 was sent; the next line is message 3 (or `*`). Boxed: the
    /// handshake's state is 150 bytes, needed once.
    XponyAwaitingFinish(Box<ResponderAwaitingFinish>),
    /// Message 3 was read; the I/O loop switches to frames.
    XponySwitch,
    /// QUIT was forwarded.
    Quitting,
    /// The hard error limit was reached: 421 is queued behind the replies
    /// still owed, and nothing more is read.
    TooManyErrors,
    Closed,
}

/// Per-session counters for the closing log line.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Messages the backend accepted.
    pub messages: u64,
    /// Messages the backend or the sidecar refused.
    pub refused: u64,
    /// Message bytes forwarded.
    pub bytes: u64,
    /// The last reply to end-of-data, or to the last command if none.
    pub last_reply: String,
    /// Why the session ended.
    pub end: &'static str,
}

/// One client's relay session. See the module docs.
pub struct Session {
    pub(super) config: Arc<SessionConfig>,
    pub(super) client: SocketAddr,
    pub(super) local: SocketAddr,
    pub(super) phase: Phase,
    pub(super) pending: VecDeque<Expect>,
    pub(super) client_in: Vec<u8>,
    pub(super) backend_in: Vec<u8>,
    /// Skipping the rest of an over-long command line.
    pub(super) skipping_line: bool,
    /// Whether the line being handled ended in CR LF (XPONY's lines must,
    /// proto-spec §3.1; other commands may end in a bare LF).
    pub(super) line_crlf: bool,
    /// EHLO, the mail transaction, and what encryption discarded.
    pub(super) dialogue: Dialogue,
    /// Boxed: only an encrypted session has it, and every idle plain
    /// session's task carries the field.
    pub(super) tls: Option<Box<Encryption>>,
    pub(super) xclient: XclientAttrs,
    pub(super) backend_size: Option<u64>,
    pub(super) actions: VecDeque<Action>,
    /// Bytes for the client; the I/O loop writes and clears it.
    pub to_client: Vec<u8>,
    /// Bytes for the backend; the I/O loop writes and clears it.
    pub to_backend: Vec<u8>,
    /// The plaintext negotiation as the client saw it, for the XPONY
    /// prologue: the greeting, the last EHLO line, our reply to it.
    pub(super) greeting_sent: Vec<u8>,
    pub(super) ehlo_line: Vec<u8>,
    pub(super) ehlo_reply_sent: Vec<u8>,
    /// Whether the last EHLO reply offered XPONY.
    pub(super) xpony_offered: bool,
    /// The client has finished sending (EOF, or an XPONY CLOSE): what it
    /// sent before is still answered, then the session closes.
    pub(super) client_done: bool,
    /// How its connection ended without its clean end (an XPONY channel
    /// without CLOSE, TLS without close_notify), unless it had sent QUIT.
    pub(super) client_truncated: Option<String>,
    pub(super) errors: ErrorCount,
    pub(super) repeats: Repeats,
    /// The established channel and the bytes already read behind message 3
    /// (boxed: needed once, and every idle session's task carries this).
    pub(super) pony_ready: Option<Box<(Transport, Vec<u8>)>>,
    /// The ephemeral key of the next handshake when a test fixes it (the
    /// spec's vectors); otherwise a fresh one is drawn each time (§4.1).
    #[cfg(test)]
    pub(super) fixed_ephemeral: Option<Keypair>,
    pub(super) stats: Stats,
}

impl Session {
    pub(super) fn notice(&mut self, notice: Notice) {
        if self.repeats.first(&notice) {
            self.actions.push_back(Action::Log(notice));
        }
    }

    /// Moves the dialogue on (the transitions consume the old state).
    pub(super) fn step_dialogue(&mut self, step: impl FnOnce(Dialogue) -> Dialogue) {
        let old = std::mem::replace(&mut self.dialogue, Dialogue::Opened);
        self.dialogue = step(old);
    }

    pub(super) fn close(&mut self, why: &'static str) {
        for repeated in self.repeats.summary() {
            self.actions.push_back(Action::Log(repeated));
        }
        self.stats.end = why;
        self.phase = Phase::Closed;
        self.pending.clear();
        self.actions.push_back(Action::Close);
    }

    /// A final reply to the client when the session must end; queued replies
    /// it was owed are lost anyway.
    pub(super) fn fail_to_client(&mut self, reply: Reply) {
        reply.write_to(&mut self.to_client);
        self.stats.last_reply = reply.to_string();
    }

    /// Queues a reply of our own behind the backend replies still owed. A
    /// 4xx/5xx counts as the client's error; at the hard limit the session
    /// ends with 421 (after the replies still owed) and reads no more.
    pub(super) fn local(&mut self, reply: Reply, then: Then) {
        let error = reply.code() >= 400;
        self.pace();
        self.pending.push_back(Expect::Local(reply, then));
        if error && self.errors.record(&self.config.error_limits) == Verdict::TooMany {
            let bye = replies::too_many_errors(&self.config.hostname);
            self.pace();
            self.pending
                .push_back(Expect::Local(bye, Then::TooManyErrors));
            self.phase = Phase::TooManyErrors;
        }
    }

    /// Past the soft error limit, the reply about to be queued waits first.
    pub(super) fn pace(&mut self) {
        if self.errors.slow(&self.config.error_limits) {
            self.pending.push_back(Expect::Pause { started: false });
        }
    }
}
