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
//! content goes through the [`DataScanner`], and where the backend's state
//! depends on a reply (DATA, AUTH) the session waits for that reply before
//! reading on, exactly as the backend does.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use self::dialogue::{Dialogue, Hello, NoTransaction};
pub use self::errors::ErrorLimits;
use self::errors::{ErrorCount, Repeats, Verdict};
use super::identity::{Identity, XclientAttrs, xclient_command};
use super::trace::{TraceFacts, write_received};
use crate::pony::negotiation::{self, ServerIdentity};
use crate::pony::noise::{Keypair, ResponderAwaitingFinish, Transport};
use crate::smtp::command::{NextLine, next_line};
use crate::smtp::xpony_server::Finish;
use crate::smtp::{
    BareNewlines, Command, DataScanner, EhloReply, Reply, ReplyError, ReplyParser, ReplySpan, Verb,
};
use crate::transport::Encryption;

/// Commands pipelined ahead of their replies before we stop reading more.
const MAX_PENDING: usize = 1000;

/// Client bytes buffered while we wait (for a reply, for the handshake).
const MAX_CLIENT_BUFFER: usize = 256 * 1024;

/// How far past the backend's SIZE a message may run before we stop it: the
/// backend itself refuses a message slightly over its limit with a proper
/// 552, so we only cut off a client that keeps sending far beyond it.
const SIZE_SLACK: u64 = 64 * 1024;

/// Extensions a backend may announce that are safe to offer the internet
/// through the sidecar. Everything else is dropped: STARTTLS (the sidecar owns
/// TLS), XCLIENT and XFORWARD (trusted hosts only), CHUNKING and BINARYMIME
/// (the sidecar reads DATA only), and anything it does not know.
const PASSED_EXTENSIONS: &[&str] = &[
    "SIZE",
    "PIPELINING",
    "8BITMIME",
    "DSN",
    "ENHANCEDSTATUSCODES",
    "SMTPUTF8",
    "AUTH",
    "ETRN",
    "VRFY",
    "EXPN",
    "HELP",
    "DELIVERBY",
    "MT-PRIORITY",
    "FUTURERELEASE",
    "RRVS",
    "MTRK",
    "LIMITS",
];

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

/// A log-worthy event: something refused, or a peer misbehaving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    StartTlsInjection {
        bytes: usize,
    },
    XponyInjection {
        bytes: usize,
    },
    XponyFailed {
        stage: &'static str,
        error: String,
    },
    CommandRefused {
        command: &'static str,
    },
    TlsRequired {
        command: &'static str,
    },
    LineTooLong,
    BadSyntax,
    BareNewline {
        count: u64,
    },
    /// NUL octets in a message (refused in every `--bare-newlines` mode).
    Nul {
        count: u64,
    },
    MessageTooLarge {
        limit: u64,
    },
    BackendProtocol(ReplyError),
    BackendUnexpected {
        reply: String,
    },
    BackendRefused {
        step: &'static str,
        reply: String,
    },
    BackendClosed,
    Timeout {
        waiting_for: &'static str,
    },
    TlsFailed {
        error: String,
    },
    /// Reading from the client failed (a broken TLS record or XPONY frame,
    /// a truncated channel, a reset).
    ClientError {
        error: String,
    },
    /// The hard error limit was reached.
    TooManyErrors {
        errors: u32,
    },
    /// A refusal that happened `count` times in the session, logged at its
    /// end (the first one was logged when it happened).
    Repeated {
        first: Box<Notice>,
        count: u64,
    },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::StartTlsInjection { bytes } => write!(
                f,
                "refused=starttls-injection bytes={bytes} (plaintext pipelined after STARTTLS)"
            ),
            Notice::XponyInjection { bytes } => write!(
                f,
                "refused=xpony-injection bytes={bytes} (plaintext pipelined after XPONY)"
            ),
            Notice::ClientError { error } => write!(f, "client-error=\"{error}\""),
            Notice::XponyFailed { stage, error } => {
                write!(f, "xpony-error=\"{error}\" stage={stage}")
            }
            Notice::CommandRefused { command } => write!(f, "refused=command command={command}"),
            Notice::TlsRequired { command } => write!(f, "refused=tls-required command={command}"),
            Notice::LineTooLong => write!(f, "refused=line-too-long"),
            Notice::BadSyntax => write!(f, "refused=bad-syntax"),
            Notice::BareNewline { count } => write!(f, "refused=bare-newline count={count}"),
            Notice::Nul { count } => write!(f, "refused=nul count={count}"),
            Notice::MessageTooLarge { limit } => write!(f, "refused=message-size limit={limit}"),
            Notice::BackendProtocol(e) => write!(f, "backend-error=protocol ({e})"),
            Notice::BackendUnexpected { reply } => {
                write!(f, "backend-error=unexpected-reply reply=\"{reply}\"")
            }
            Notice::BackendRefused { step, reply } => {
                write!(f, "backend-error=refused step={step} reply=\"{reply}\"")
            }
            Notice::BackendClosed => write!(f, "backend-error=closed"),
            Notice::Timeout { waiting_for } => write!(f, "timeout waiting_for={waiting_for}"),
            Notice::TlsFailed { error } => write!(f, "tls-error=\"{error}\""),
            Notice::TooManyErrors { errors } => {
                write!(f, "refused=too-many-errors errors={errors}")
            }
            Notice::Repeated { first, count } => write!(f, "{first} count={count}"),
        }
    }
}

/// What the session does with the next reply from the backend, or a reply
/// of its own waiting for its turn.
#[derive(Debug)]
enum Expect {
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
enum OwnStep {
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
    fn name(self) -> &'static str {
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
enum Then {
    Continue,
    StartTls,
    /// The hard error limit's 421: log it, send it, close.
    TooManyErrors,
}

/// A message being received after 354.
#[derive(Debug)]
struct Message {
    scanner: DataScanner,
    /// The trace header is written with the first message bytes, so it
    /// leaves in the same write as they do (not as a write of its own).
    trace_pending: bool,
    /// Set once the message is refused; it is read to its end, not forwarded.
    refusal: Option<(Reply, Notice)>,
}

/// Where the session is in the client's dialogue. Client input is only
/// parsed as commands in `Commands`; in the other states it is buffered.
#[derive(Debug)]
enum Phase {
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
    /// 334 was sent; the next line is message 3 (or `*`).
    XponyAwaitingFinish(ResponderAwaitingFinish),
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
    config: Arc<SessionConfig>,
    client: SocketAddr,
    local: SocketAddr,
    phase: Phase,
    pending: VecDeque<Expect>,
    client_in: Vec<u8>,
    backend_in: Vec<u8>,
    /// Skipping the rest of an over-long command line.
    skipping_line: bool,
    /// Whether the line being handled ended in CR LF (XPONY's lines must,
    /// proto-spec §3.1; other commands may end in a bare LF).
    line_crlf: bool,
    /// EHLO, the mail transaction, and what encryption discarded.
    dialogue: Dialogue,
    tls: Option<Encryption>,
    xclient: XclientAttrs,
    backend_size: Option<u64>,
    actions: VecDeque<Action>,
    /// Bytes for the client; the I/O loop writes and clears it.
    pub to_client: Vec<u8>,
    /// Bytes for the backend; the I/O loop writes and clears it.
    pub to_backend: Vec<u8>,
    /// Message bytes that are read but not forwarded (a refused message).
    discard: Vec<u8>,
    /// The plaintext negotiation as the client saw it, for the XPONY
    /// prologue: the greeting, the last EHLO line, our reply to it.
    greeting_sent: Vec<u8>,
    ehlo_line: Vec<u8>,
    ehlo_reply_sent: Vec<u8>,
    /// Whether the last EHLO reply offered XPONY.
    xpony_offered: bool,
    /// The client has finished sending (EOF, or an XPONY CLOSE): what it
    /// sent before is still answered, then the session closes.
    client_done: bool,
    /// How its connection ended without its clean end (an XPONY channel
    /// without CLOSE, TLS without close_notify), unless it had sent QUIT.
    client_truncated: Option<String>,
    errors: ErrorCount,
    repeats: Repeats,
    /// The established channel and the bytes already read behind message 3.
    pony_ready: Option<(Transport, Vec<u8>)>,
    /// The ephemeral key of the next handshake when a test fixes it (the
    /// spec's vectors); otherwise a fresh one is drawn each time (§4.1).
    fixed_ephemeral: Option<Keypair>,
    stats: Stats,
}

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
            discard: Vec::new(),
            greeting_sent: Vec::new(),
            ehlo_line: Vec::new(),
            ehlo_reply_sent: Vec::new(),
            xpony_offered: false,
            errors: ErrorCount::default(),
            repeats: Repeats::default(),
            client_done: false,
            client_truncated: None,
            pony_ready: None,
            fixed_ephemeral: None,
            stats: Stats::default(),
        }
    }

    /// Fixes the ephemeral key of the next XPONY handshake, so the spec's
    /// test vectors can be replayed against this session.
    #[cfg(test)]
    pub(crate) fn fix_ephemeral(&mut self, key: Keypair) {
        self.fixed_ephemeral = Some(key);
    }

    /// The next thing the I/O loop must do, after writing out the buffers.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn tls(&self) -> Option<&Encryption> {
        self.tls.as_ref()
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
        use std::io::ErrorKind;
        match read {
            Ok([]) => self.client_eof(),
            Ok(data) => self.client_input(data),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => self.client_truncated(e.to_string()),
            // A reset is an ordinary way to go; a broken record or frame is
            // worth its own log line.
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                self.client_lost()
            }
            Err(e) => self.client_error(e.to_string()),
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
        self.fail_to_client(Reply::new(
            421,
            format!(
                "4.3.2 {} Service not available, closing connection",
                self.config.hostname
            ),
        ));
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
            self.fail_to_client(Reply::new(
                421,
                format!(
                    "4.4.1 {} Error: mail system timed out",
                    self.config.hostname
                ),
            ));
        } else if matches!(self.phase, Phase::XponyAwaitingFinish(_)) {
            // proto-spec §3.3 R17.
            self.notice(Notice::Timeout {
                waiting_for: "XPONY message 3",
            });
            self.fail_to_client(Reply::new(421, "4.4.2 Timeout waiting for XPONY"));
        } else {
            self.notice(Notice::Timeout {
                waiting_for: "client",
            });
            self.fail_to_client(Reply::new(
                421,
                format!("4.4.2 {} Error: timeout exceeded", self.config.hostname),
            ));
        }
        self.close("timeout");
    }

    /// The TLS handshake with the client finished.
    pub fn tls_established(&mut self, info: Encryption) {
        let Phase::Handshake(outside) = std::mem::replace(&mut self.phase, Phase::Commands) else {
            return;
        };
        self.encrypted(info, outside);
    }

    /// The channel from [`Action::StartPony`]: the transport and the bytes
    /// that came in behind message 3 (the client's first frames).
    pub fn take_pony(&mut self) -> Option<(Transport, Vec<u8>)> {
        self.pony_ready.take()
    }

    /// The client connection now runs over the blackpony channel.
    pub fn pony_established(&mut self, info: Encryption) {
        if !matches!(self.phase, Phase::XponySwitch) {
            return;
        }
        // XPONY was refused inside a transaction (R2) and nothing was read
        // since, so none can be open here.
        let Some(outside) = self.dialogue.no_transaction() else {
            self.tls_failed("XPONY inside a mail transaction".into());
            return;
        };
        self.encrypted(info, outside);
    }

    /// After STARTTLS or XPONY: the session starts over (RFC 3207 §4.2).
    fn encrypted(&mut self, info: Encryption, outside: NoTransaction) {
        self.tls = Some(info);
        self.xpony_offered = false;
        // RFC 3207 §4.2: the client starts over with EHLO, and nothing it (or
        // a man in the middle) said before TLS may carry over.
        self.step_dialogue(|d| d.encrypted(outside));
        self.backend_in.clear();
        if self.config.identity == Identity::Xclient {
            // XCLIENT is Postfix's, and Postfix takes EHLO again after RSET;
            // a new connection would need its EHLO and XCLIENT again.
            self.phase = Phase::Commands;
            self.to_backend.extend_from_slice(b"RSET\r\n");
            self.pending.push_back(Expect::Own(OwnStep::Rset));
        } else {
            // A new backend connection (a new PROXY header, a new exec
            // program with the TLS facts), on which the client's EHLO is the
            // first. Not RSET and the client's EHLO on the old one: RFC 5321
            // §4.1.4 lets a server refuse a second EHLO ("if ... the EHLO
            // command is acceptable to the SMTP server"), and OpenSMTPD does
            // ("503 5.5.1 Invalid command: Already identified"), so a client
            // could not go on after STARTTLS at all. The old connection is
            // told QUIT: the I/O loop writes what the session left for it
            // before it opens the new one.
            self.to_backend.extend_from_slice(b"QUIT\r\n");
            self.phase = Phase::Opening;
            self.pending.push_back(Expect::Own(OwnStep::Greeting));
            self.actions.push_back(Action::RestartBackend);
        }
        self.advance();
    }

    /// The TLS handshake failed; the connection cannot continue.
    pub fn tls_failed(&mut self, error: String) {
        self.notice(Notice::TlsFailed { error });
        self.close("tls-failed");
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

    fn notice(&mut self, notice: Notice) {
        if self.repeats.first(&notice) {
            self.actions.push_back(Action::Log(notice));
        }
    }

    /// Moves the dialogue on (the transitions consume the old state).
    fn step_dialogue(&mut self, step: impl FnOnce(Dialogue) -> Dialogue) {
        let old = std::mem::replace(&mut self.dialogue, Dialogue::Opened);
        self.dialogue = step(old);
    }

    /// The error limit's wait was served (see [`Action::Delay`]).
    pub fn delay_over(&mut self) {
        if let Some(Expect::Pause { started: true }) = self.pending.front() {
            self.pending.pop_front();
            self.advance();
        }
    }

    fn close(&mut self, why: &'static str) {
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
    fn fail_to_client(&mut self, reply: Reply) {
        reply.write_to(&mut self.to_client);
        self.stats.last_reply = reply.to_string();
    }

    /// Queues a reply of our own behind the backend replies still owed. A
    /// 4xx/5xx counts as the client's error; at the hard limit the session
    /// ends with 421 (after the replies still owed) and reads no more.
    fn local(&mut self, reply: Reply, then: Then) {
        let error = reply.code() >= 400;
        self.pace();
        self.pending.push_back(Expect::Local(reply, then));
        if error && self.errors.record(&self.config.error_limits) == Verdict::TooMany {
            let bye = Reply::new(
                421,
                format!("4.7.0 {} Error: too many errors", self.config.hostname),
            );
            self.pace();
            self.pending
                .push_back(Expect::Local(bye, Then::TooManyErrors));
            self.phase = Phase::TooManyErrors;
        }
    }

    /// Past the soft error limit, the reply about to be queued waits first.
    fn pace(&mut self) {
        if self.errors.slow(&self.config.error_limits) {
            self.pending.push_back(Expect::Pause { started: false });
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
                        self.local(
                            Reply::new(503, "5.5.1 Error: MAIL transaction in progress"),
                            Then::Continue,
                        );
                        continue;
                    };
                    // CVE-2011-0411 class: anything the client sent after
                    // STARTTLS and before our 220 was sent in plaintext and
                    // must not be executed inside TLS.
                    if !self.client_in.is_empty() {
                        let bytes = self.client_in.len();
                        self.client_in.clear();
                        self.notice(Notice::StartTlsInjection { bytes });
                        self.fail_to_client(Reply::new(
                            554,
                            "5.5.1 Error: command pipelined after STARTTLS, closing connection",
                        ));
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

    /// Handles every complete reply in the backend buffer.
    fn handle_backend_replies(&mut self) -> bool {
        let mut consumed = 0;
        let mut progressed = false;
        while !matches!(self.phase, Phase::Closed) {
            let span = match ReplyParser::next_span(&self.backend_in[consumed..]) {
                Ok(Some(span)) => span,
                Ok(None) => break,
                Err(e) => {
                    self.notice(Notice::BackendProtocol(e));
                    self.fail_to_client(Reply::new(
                        421,
                        format!("4.3.0 {} Error: mail system problem", self.config.hostname),
                    ));
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
    fn handle_reply(&mut self, start: usize, span: ReplySpan) {
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
                self.fail_to_client(Reply::new(
                    421,
                    format!("4.3.0 {} Error: mail system problem", self.config.hostname),
                ));
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
    fn relay(&mut self, raw: std::ops::Range<usize>) {
        let bytes = &self.backend_in[raw];
        self.to_client.extend_from_slice(bytes);
        self.stats.last_reply.clear();
        let first_line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
        let first_line = first_line.strip_suffix(b"\r").unwrap_or(first_line);
        self.stats
            .last_reply
            .push_str(&String::from_utf8_lossy(first_line));
    }

    fn backend_refused(&mut self, step: OwnStep, reply: &Reply) {
        self.notice(Notice::BackendRefused {
            step: step.name(),
            reply: reply.to_string(),
        });
        self.fail_to_client(Reply::new(
            421,
            format!(
                "4.3.0 {} Error: mail system configuration problem",
                self.config.hostname
            ),
        ));
        self.close("backend-refused");
    }

    /// Identifies the client to the backend, once per backend connection:
    /// after XCLIENT, Postfix checks its authorization against the new
    /// client address, so a second XCLIENT would be refused. The client's
    /// own EHLO/HELO then sets the HELO name and protocol at the backend.
    fn send_xclient(&mut self) {
        let line = xclient_command(&self.xclient, self.client, self.local);
        self.to_backend.extend_from_slice(line.as_bytes());
        self.to_backend.extend_from_slice(b"\r\n");
        self.pending.push_back(Expect::Own(OwnStep::Xclient));
    }

    /// Relays a 250 EHLO reply with only the extensions that are safe to
    /// offer through the sidecar, plus STARTTLS until TLS is up.
    fn rewrite_ehlo(&mut self, reply: &Reply) {
        let mut ehlo = EhloReply::parse(reply);
        self.backend_size = ehlo.size_limit();
        let tls_up = self.tls.is_some();
        ehlo.capabilities.retain(|c| {
            PASSED_EXTENSIONS.contains(&c.keyword.as_str())
                // RFC 8689 §4.1: REQUIRETLS is only offered inside TLS.
                || (c.keyword == "REQUIRETLS" && tls_up)
        });
        if !tls_up {
            ehlo.capabilities
                .push(crate::smtp::Capability::new("STARTTLS", ""));
        }
        // Neither extension is offered once the session is encrypted.
        self.xpony_offered = !tls_up && self.config.pony.is_some();
        if self.xpony_offered {
            ehlo.capabilities.push(crate::smtp::Capability::xpony());
        }
        let rewritten = ehlo.to_reply();
        let start = self.to_client.len();
        rewritten.write_to(&mut self.to_client);
        self.ehlo_reply_sent = self.to_client[start..].to_vec();
        self.stats.last_reply = format!("250 {}", ehlo.greeting);
    }

    /// Enters the message after a 354, starting with the trace header.
    fn start_message(&mut self) {
        self.phase = Phase::Message(Message {
            scanner: DataScanner::new(),
            trace_pending: self.config.trace_header,
            refusal: None,
        });
    }

    /// Parses buffered client input as far as the phase allows.
    fn handle_client_input(&mut self) -> bool {
        match self.phase {
            Phase::Message(_) => self.handle_message_input(),
            Phase::Commands | Phase::AuthResponse | Phase::XponyAwaitingFinish(_) => {
                self.handle_command_lines()
            }
            _ => false,
        }
    }

    fn handle_message_input(&mut self) -> bool {
        let Phase::Message(message) = &mut self.phase else {
            return false;
        };
        if self.client_in.is_empty() {
            return false;
        }
        if message.trace_pending {
            message.trace_pending = false;
            let hello = self.dialogue.hello();
            let facts = TraceFacts {
                helo: hello.map(|h| h.name.as_str()),
                esmtp: hello.is_some_and(|h| h.esmtp),
                client_ip: self.client.ip(),
                by: &self.config.hostname,
                tls: self.tls.as_ref(),
            };
            write_received(&facts, SystemTime::now(), &mut self.to_backend);
        }
        let out = if message.refusal.is_some() {
            self.discard.clear();
            &mut self.discard
        } else {
            &mut self.to_backend
        };
        let mark = out.len();
        let scan = message.scanner.scan(&self.client_in, out);
        let forwarded = (out.len() - mark) as u64;
        self.client_in.drain(..scan.consumed);

        if message.refusal.is_none() {
            message.refusal = content_refusal(
                &message.scanner,
                self.config.bare_newlines,
                self.backend_size,
            );
            if message.refusal.is_some() {
                // Nothing of this chunk goes out; the backend never gets an
                // end-of-data for this message (its connection is closed).
                self.to_backend.truncate(mark);
            } else {
                self.stats.bytes += forwarded;
            }
        }
        if scan.end {
            let Phase::Message(message) = std::mem::replace(&mut self.phase, Phase::Commands)
            else {
                return true;
            };
            match message.refusal {
                Some((reply, mut notice)) => {
                    // The counts as of the end of the message.
                    match &mut notice {
                        Notice::BareNewline { count } => *count = message.scanner.bare_newlines(),
                        Notice::Nul { count } => *count = message.scanner.nuls(),
                        _ => {}
                    }
                    self.stats.refused += 1;
                    self.notice(notice);
                    // The backend holds part of the message: closing its
                    // connection mid-DATA makes it discard that part.
                    self.fail_to_client(reply);
                    self.close("message-refused");
                }
                None => {
                    self.pace();
                    self.pending.push_back(Expect::EndOfData);
                }
            }
        }
        true
    }

    /// Parses and handles complete command lines (or AUTH response lines).
    fn handle_command_lines(&mut self) -> bool {
        // Taken out for the loop so lines can be borrowed while `self`
        // changes; put back (minus what was used) below.
        let input = std::mem::take(&mut self.client_in);
        let mut consumed = 0;
        let mut progressed = false;
        while matches!(
            self.phase,
            Phase::Commands | Phase::AuthResponse | Phase::XponyAwaitingFinish(_)
        ) && self.pending.len() < MAX_PENDING
        {
            let buf = &input[consumed..];
            if self.skipping_line {
                match memchr::memchr(b'\n', buf) {
                    Some(nl) => {
                        consumed += nl + 1;
                        self.skipping_line = false;
                        progressed = true;
                        continue;
                    }
                    None => {
                        consumed += buf.len();
                        break;
                    }
                }
            }
            match next_line(buf) {
                NextLine::Incomplete => break,
                NextLine::TooLong { consumed: n } => {
                    consumed += n;
                    progressed = true;
                    self.skipping_line = !buf[..n].ends_with(b"\n");
                    self.notice(Notice::LineTooLong);
                    if matches!(self.phase, Phase::AuthResponse) {
                        // The backend still waits for the response line.
                        self.phase = Phase::Commands;
                        self.forward_line(b"*", Expect::Relay);
                    } else if matches!(self.phase, Phase::XponyAwaitingFinish(_)) {
                        // proto-spec §3.3 R16: no message 3 is that long.
                        self.phase = Phase::Commands;
                        self.notice(Notice::XponyFailed {
                            stage: "message 3",
                            error: "line too long".into(),
                        });
                        self.fail_to_client(Reply::new(500, "5.5.6 Line too long"));
                        self.close("xpony-failed");
                    } else if buf
                        .get(..6)
                        .is_some_and(|v| v.eq_ignore_ascii_case(b"XPONY "))
                    {
                        // proto-spec §3.3 R5: as AUTH's (RFC 4954 §4).
                        self.local(Reply::new(500, "5.5.6 Line too long"), Then::Continue);
                    } else {
                        self.local(
                            Reply::new(500, "5.5.2 Error: line too long"),
                            Then::Continue,
                        );
                    }
                }
                NextLine::Line {
                    line_len,
                    consumed: n,
                } => {
                    progressed = true;
                    self.line_crlf = n == line_len + 2;
                    self.handle_line(&buf[..line_len]);
                    consumed += n;
                }
            }
        }
        self.client_in = input;
        self.client_in.drain(..consumed);
        if matches!(self.phase, Phase::XponySwitch)
            && let Some((_, leftover)) = self.pony_ready.as_mut()
        {
            // Bytes behind message 3 are the client's first frames.
            *leftover = std::mem::take(&mut self.client_in);
            self.actions.push_back(Action::StartPony);
        }
        progressed
    }

    /// Handles one client line (without its line ending).
    fn handle_line(&mut self, line: &[u8]) {
        if matches!(self.phase, Phase::XponyAwaitingFinish(_)) {
            self.xpony_finish(line);
            return;
        }
        if matches!(self.phase, Phase::AuthResponse) {
            // RFC 4954 §4: a base64 response or `*`. Forward it verbatim if
            // it is a clean line; the backend judges its content.
            let clean = line.iter().all(|&b| b.is_ascii_graphic());
            self.forward_line(if clean { line } else { b"*" }, Expect::Auth);
            self.phase = Phase::AwaitingAuth;
            return;
        }
        let command = match Command::parse(line) {
            Ok(c) => c,
            Err(_) => {
                self.notice(Notice::BadSyntax);
                self.local(Reply::new(500, "5.5.2 Error: bad syntax"), Then::Continue);
                return;
            }
        };
        let verb = command.verb;
        if self.config.require_tls && self.tls.is_none() && !allowed_before_tls(verb) {
            self.notice(Notice::TlsRequired {
                command: verb.as_str(),
            });
            self.local(
                Reply::new(530, "5.7.0 Must issue a STARTTLS command first"),
                Then::Continue,
            );
            return;
        }
        if self.dialogue.needs_ehlo() && needs_identity(verb) {
            // RFC 3207 §4.2 (proto-spec §6 for XPONY): after encryption the
            // client starts over with EHLO; the backend is not asked, as it
            // may not insist (Postfix does not by default).
            self.local(Reply::new(503, "5.5.1 Send EHLO first"), Then::Continue);
            return;
        }
        match verb {
            Verb::Ehlo | Verb::Helo => {
                let hello = Hello {
                    name: command.args.to_string(),
                    esmtp: verb == Verb::Ehlo,
                };
                self.step_dialogue(|d| d.greeted(hello));
                // XPONY is only offered in (and bound to) an EHLO reply.
                self.ehlo_line = line.to_vec();
                self.xpony_offered = false;
                let expect = if verb == Verb::Ehlo {
                    Expect::Ehlo
                } else {
                    Expect::Reset
                };
                self.forward_line(line, expect);
            }
            Verb::StartTls => {
                if self.tls.as_ref().is_some_and(Encryption::is_pony) {
                    // proto-spec §6.
                    self.local(Reply::new(503, "5.5.1 Already encrypted"), Then::Continue);
                } else if self.tls.is_some() {
                    self.local(
                        Reply::new(554, "5.5.1 Error: TLS already active"),
                        Then::Continue,
                    );
                } else if !command.args.is_empty() {
                    self.local(Reply::new(501, "5.5.4 Syntax: STARTTLS"), Then::Continue);
                } else {
                    self.local(Reply::new(220, "2.0.0 Ready to start TLS"), Then::StartTls);
                    self.phase = Phase::StartTlsQueued;
                }
            }
            Verb::Xpony => self.xpony_command(line),
            Verb::Data => {
                if !command.args.is_empty() {
                    self.local(Reply::new(501, "5.5.4 Syntax: DATA"), Then::Continue);
                    return;
                }
                self.forward_line(line, Expect::Data);
                self.phase = Phase::AwaitingData;
            }
            Verb::Auth => {
                self.forward_line(line, Expect::Auth);
                self.phase = Phase::AwaitingAuth;
            }
            Verb::Quit => {
                self.forward_line(line, Expect::Quit);
                self.phase = Phase::Quitting;
            }
            Verb::Xclient | Verb::Xforward | Verb::Proxy => {
                self.notice(Notice::CommandRefused {
                    command: verb.as_str(),
                });
                self.local(
                    Reply::new(550, "5.7.0 Error: insufficient authorization"),
                    Then::Continue,
                );
            }
            Verb::Bdat => {
                // CHUNKING is not offered: the sidecar reads DATA only.
                self.notice(Notice::CommandRefused { command: "BDAT" });
                self.local(
                    Reply::new(502, "5.5.1 Error: command not implemented"),
                    Then::Continue,
                );
            }
            Verb::Unknown => {
                self.local(
                    Reply::new(502, "5.5.2 Error: command not recognized"),
                    Then::Continue,
                );
            }
            Verb::Mail => self.forward_line(line, Expect::Mail),
            Verb::Rset => self.forward_line(line, Expect::Reset),
            Verb::Rcpt | Verb::Noop | Verb::Vrfy | Verb::Expn | Verb::Help | Verb::Etrn => {
                self.forward_line(line, Expect::Relay)
            }
        }
    }

    /// `XPONY <protocol> <base64 message 1>` (proto-spec §3).
    fn xpony_command(&mut self, line: &[u8]) {
        let reply = |code, text: &str| (Reply::new(code, text), Then::Continue);
        let refusal = if self.config.pony.is_none() {
            Some(reply(502, "5.5.1 Error: command not recognized"))
        } else if self.tls.is_some() {
            Some(reply(503, "5.5.1 Already encrypted"))
        } else if !self.xpony_offered {
            Some(reply(503, "5.5.1 Send EHLO first"))
        } else {
            None
        };
        if let Some((r, then)) = refusal {
            self.local(r, then);
            return;
        }
        // R6–R8: syntax, protocol name, base64 (proto-spec §3.1, §3.3).
        let message_1 = match crate::smtp::xpony_server::parse_command(line, self.line_crlf) {
            Ok(m) => m,
            Err(reply) => {
                self.local(reply, Then::Continue);
                return;
            }
        };
        self.pending.push_back(Expect::Xpony(message_1));
        self.phase = Phase::XponyQueued;
    }

    /// XPONY's turn has come: process message 1, refuse injected
    /// plaintext, else answer 334 with message 2. proto-spec §3.3 orders
    /// the checks: a failing message 1 gets R10 (and the octets behind it
    /// are ordinary pipelined commands, Appendix B D6); the injection check
    /// (R11) comes only when the 334 is about to go out.
    fn xpony_respond(&mut self, message_1: &[u8]) {
        let Some(identity) = self.config.pony.clone() else {
            self.phase = Phase::Commands;
            return;
        };
        // R2, decided in turn: only now are the replies to every command
        // pipelined before XPONY (a MAIL among them) known.
        if self.dialogue.in_transaction() {
            Reply::new(503, "5.5.1 Not permitted during a mail transaction")
                .write_to(&mut self.to_client);
            self.phase = Phase::Commands;
            return;
        }
        let prologue =
            negotiation::prologue(&self.greeting_sent, &self.ehlo_line, &self.ehlo_reply_sent);
        let responded = crate::smtp::xpony_server::respond(
            &identity,
            &prologue,
            message_1,
            self.fixed_ephemeral.take(),
        );
        let (state, line) = match responded {
            Ok(done) => done,
            Err(failed) => {
                self.notice(Notice::XponyFailed {
                    stage: "message 1",
                    error: failed.error,
                });
                failed.reply.write_to(&mut self.to_client);
                self.phase = Phase::Commands;
                return;
            }
        };
        if !self.client_in.is_empty() {
            let bytes = self.client_in.len();
            self.client_in.clear();
            self.notice(Notice::XponyInjection { bytes });
            self.fail_to_client(Reply::new(
                554,
                "5.5.1 Error: command pipelined after XPONY, closing connection",
            ));
            self.close("xpony-injection");
            return;
        }
        self.to_client.extend_from_slice(&line);
        self.phase = Phase::XponyAwaitingFinish(state);
    }

    /// The line after our 334: message 3, or `*` to give up.
    fn xpony_finish(&mut self, line: &[u8]) {
        let Phase::XponyAwaitingFinish(state) = std::mem::replace(&mut self.phase, Phase::Commands)
        else {
            return;
        };
        match crate::smtp::xpony_server::finish(state, line, self.line_crlf) {
            Finish::Aborted(reply) => self.local(reply, Then::Continue),
            Finish::Established(transport) => {
                self.pony_ready = Some((transport, Vec::new()));
                self.phase = Phase::XponySwitch;
            }
            Finish::Failed { reply, error } => {
                self.notice(Notice::XponyFailed {
                    stage: "message 3",
                    error,
                });
                self.fail_to_client(reply);
                self.close("xpony-failed");
            }
        }
    }

    fn forward_line(&mut self, line: &[u8], expect: Expect) {
        self.pace();
        self.to_backend.extend_from_slice(line);
        self.to_backend.extend_from_slice(b"\r\n");
        self.pending.push_back(expect);
    }
}

/// Why a message must be refused, judged on what the scanner has read so
/// far; checked after every chunk, so the chunk that brings the offence is
/// never forwarded. The backend then gets no end of data for the message:
/// the session reads the message to its end, answers, and closes the
/// backend connection mid-DATA, which makes the backend discard it.
///
/// - NUL, in every `--bare-newlines` mode: a next hop that drops NULs would
///   see an end of data where this one saw none (see [`crate::smtp::data`]
///   for RFC 5321 §4.1.1.4, RFC 5322 §3.5 and RFC 6152 §3). `5.6.0` (RFC 3463:
///   other or undefined media error), as no more specific code exists.
/// - a bare CR or LF under `--bare-newlines reject` (RFC 5321 §2.3.8).
/// - a message running [`SIZE_SLACK`] past the backend's SIZE.
fn content_refusal(
    scanner: &DataScanner,
    bare_newlines: BareNewlines,
    size_limit: Option<u64>,
) -> Option<(Reply, Notice)> {
    if scanner.nuls() > 0 {
        return Some((
            Reply::new(
                550,
                "5.6.0 Message refused: message contains NUL characters (RFC 5322 section 3.5)",
            ),
            Notice::Nul {
                count: scanner.nuls(),
            },
        ));
    }
    let bare = scanner.bare_newlines();
    if bare > 0 && bare_newlines == BareNewlines::Reject {
        return Some((
            Reply::new(
                550,
                "5.6.11 Message refused: bare CR or LF in message content (RFC 5321 section 2.3.8)",
            ),
            Notice::BareNewline { count: bare },
        ));
    }
    let limit = size_limit?;
    (scanner.written() > limit + SIZE_SLACK).then(|| {
        (
            Reply::new(552, "5.3.4 Message size exceeds fixed maximum message size"),
            Notice::MessageTooLarge { limit },
        )
    })
}

/// Commands that act on the session's identity (the EHLO/HELO the client
/// gave, a transaction): after encryption they wait for a new EHLO/HELO.
/// Postfix answers MAIL, AUTH and ETRN before HELO with 503 as well.
fn needs_identity(verb: Verb) -> bool {
    matches!(
        verb,
        Verb::Mail | Verb::Rcpt | Verb::Data | Verb::Bdat | Verb::Auth | Verb::Etrn
    )
}

/// RFC 3207 §4 and Postfix's `smtpd_tls_security_level = encrypt`: before
/// TLS only these commands work.
fn allowed_before_tls(verb: Verb) -> bool {
    matches!(
        verb,
        Verb::Ehlo | Verb::Helo | Verb::Noop | Verb::Rset | Verb::Quit | Verb::StartTls
    )
}

mod dialogue;
mod errors;
#[cfg(test)]
mod tests;
