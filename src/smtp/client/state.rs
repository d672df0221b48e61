//! What a client session holds: where it is in the dialogue ([`State`]),
//! the replies it is owed, the negotiation kept for the XPONY prologue; and
//! the steps every part of it takes (send a line, fail, QUIT).

use std::collections::VecDeque;
use std::sync::Arc;

use super::outcome::{ContentRefusal, HostFailure, SessionOutcome};
use crate::pony::negotiation::ServerHints;
use crate::pony::noise::{
    InitiatorAwaitingConfirm, InitiatorAwaitingResponse, KEY_LEN, Keypair, Transport,
};
use crate::smtp::envelope::{ContentFacts, Envelope};
use crate::smtp::{EhloReply, Reply};

/// Whether to use STARTTLS when the server offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    /// Never (policy `none`, or the plaintext retry after a failed handshake).
    Never,
    /// When offered; carry on in plaintext when not (policy `may`).
    IfOffered,
    /// When offered; fail the session when not (policies `encrypt`, `verify`).
    Required,
}

/// What the session needs from the I/O loop next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write out [`ClientSession::outgoing`] (if any) and read more.
    Continue,
    /// Run the TLS handshake, then call [`ClientSession::tls_established`].
    StartTls,
    /// The session is over; see [`ClientSession::outcome`].
    Done,
    /// An opening-only session ([`ClientSession::opening`]) is ready for
    /// mail commands: greeting, EHLO and STARTTLS are done.
    Ready,
    /// XPONY message 2 arrived: judge the server's static key, then call
    /// [`ClientSession::xpony_accept`] or [`ClientSession::xpony_reject`].
    CheckServerKey {
        key: [u8; KEY_LEN],
        hints: ServerHints,
    },
    /// Message 3 is in the outgoing buffer: write it, switch the connection
    /// to the channel from [`ClientSession::take_pony`], then call
    /// [`ClientSession::pony_established`].
    SwitchToPony,
}

/// How the session uses the blackpony extension.
#[derive(Debug, Clone)]
pub struct PonyOffer {
    /// Our static key.
    pub key: Keypair,
    /// The server must offer XPONY (it has a pin or a DNS key): a server
    /// that does not is being downgraded.
    pub required: bool,
}

/// What the session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Deliver the message given to [`ClientSession::new`].
    Deliver,
    /// Only open the session, for a caller that then sends its own commands.
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pending {
    /// RSET before the next transaction on a kept session.
    Rset,
    Mail,
    Rcpt(usize),
    Data,
}

#[derive(Debug)]
pub(super) enum State {
    Greeting,
    Ehlo {
        after_tls: bool,
    },
    Helo,
    StartTls,
    Handshake,
    /// Opened and waiting for the caller's commands (opening-only sessions).
    Ready,
    /// XPONY with message 1 was sent; the 334 with message 2 is owed.
    XponySent(InitiatorAwaitingResponse),
    /// Message 2 was read; the caller judges the server's key.
    XponyConfirm(InitiatorAwaitingConfirm),
    /// `*` was sent after the 334 (key refused, or message 2 bad); the
    /// 501 is owed, then the session fails with `failure`.
    XponyAborting {
        failure: HostFailure,
    },
    /// Message 3 was sent; the caller switches to frames.
    XponySwitch,
    /// MAIL, RCPT and DATA replies still owed (several when pipelining).
    Transaction {
        owed: VecDeque<Pending>,
    },
    /// The message went out; the final reply is owed (LMTP: one per
    /// accepted recipient, those already read in `lmtp_replies`).
    EndOfData,
    Quit,
    Done,
}

/// One SMTP client session. See the module docs.
pub struct ClientSession {
    pub(super) purpose: Purpose,
    pub(super) state: State,
    pub(super) helo_name: String,
    pub(super) starttls: StartTls,
    pub(super) envelope: Envelope,
    pub(super) content: ContentFacts,
    /// The message in DATA form (dot-stuffed, ending with CRLF.CRLF),
    /// shared with the caller: every MX attempt sends the same bytes.
    pub(super) wire_message: Option<Arc<Vec<u8>>>,
    /// After the transaction, stay open for the next one instead of QUIT.
    pub(super) keep_open: bool,
    /// LMTP (RFC 2033): LHLO, and one reply per accepted recipient after
    /// the message.
    pub(super) lmtp: bool,
    /// LMTP: the replies after the message read so far, in the order of
    /// the accepted recipients.
    pub(super) lmtp_replies: Vec<Reply>,
    pub(super) caps: Option<EhloReply>,
    pub(super) tls_up: bool,
    pub(super) inbuf: Vec<u8>,
    /// Bytes to send; the I/O loop writes and clears them.
    pub outgoing: Vec<u8>,
    pub(super) mail_reply: Option<Reply>,
    pub(super) rcpt_replies: Vec<Option<Reply>>,
    pub(super) outcome: Option<SessionOutcome>,
    /// Bytes the server sent after its 220 to STARTTLS, before the handshake,
    /// discarded (response injection); for the log.
    pub injected_after_starttls: usize,
    /// The content refusal, when the session ended because of one.
    pub content_refusal: Option<ContentRefusal>,
    pub(super) pony: Option<PonyOffer>,
    /// The plaintext negotiation, for the XPONY prologue.
    pub(super) greeting_raw: Vec<u8>,
    pub(super) ehlo_line: String,
    pub(super) ehlo_raw: Vec<u8>,
    pub(super) last_raw: Vec<u8>,
    pub(super) pony_ready: Option<(Transport, Vec<u8>)>,
    /// The ephemeral key of the next handshake when a test fixes it (the
    /// spec's vectors); otherwise a fresh one is drawn each time (§4.1).
    pub(super) fixed_ephemeral: Option<Keypair>,
    /// A transaction relayed command by command (`relay.rs`), if one runs.
    pub(super) relay: Option<super::relay::Relay>,
}

impl ClientSession {
    pub(super) fn fail(&mut self, failure: HostFailure) {
        self.outcome = Some(SessionOutcome::Failed(failure));
        self.quit();
    }

    pub(super) fn quit(&mut self) {
        self.send_line("QUIT");
        self.state = State::Quit;
    }

    pub(super) fn send_line(&mut self, line: &str) {
        self.outgoing.extend_from_slice(line.as_bytes());
        self.outgoing.extend_from_slice(b"\r\n");
    }

    /// Ends without writing anything more (proto-spec §3.6: after bytes
    /// injected behind the 334, nothing may go back in plaintext).
    pub(super) fn fail_silently(&mut self, failure: HostFailure) {
        self.outcome = Some(SessionOutcome::Failed(failure));
        self.state = State::Done;
    }

    /// The transaction has its outcome: QUIT, or wait for the next one.
    pub(super) fn end_transaction(&mut self) {
        if self.keep_open {
            self.state = State::Ready;
        } else {
            self.quit();
        }
    }
}
