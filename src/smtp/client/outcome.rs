//! What a client session ends with: a reply per recipient, exactly as the
//! server gave it ([`SessionOutcome::Replied`]), a failure of the host
//! before any recipient was answered ([`HostFailure`]: the caller may try
//! the next MX, RFC 5321 §5.1), or the uncertainty of a connection lost
//! after the message went out (RFC 1047); and the refusal of a message no
//! server may be sent ([`ContentRefusal`]).

use crate::smtp::{Reply, ReplyError, replies};

/// Where a session failed before any recipient got an answer. The caller
/// may try the next MX host (RFC 5321 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostFailure {
    /// The server refused the session (greeting, EHLO/HELO or MAIL FROM).
    Refused { stage: &'static str, reply: Reply },
    /// The server did not offer STARTTLS (or refused it) and policy requires TLS.
    TlsUnavailable { reply: Option<Reply> },
    /// The server spoke something that is not SMTP.
    Protocol(ReplyError),
    /// The connection broke or timed out in the given stage.
    Lost { stage: &'static str },
    /// A host known to speak XPONY (pinned or DNS key) did not offer it.
    PonyDowngrade,
    /// The server's key was refused (impostor, or a change to accept).
    PonyRejected { why: String },
    /// The XPONY handshake failed.
    PonyFailed { why: String },
}

/// For logs: what went wrong with the host, in words (never `Debug`).
impl std::fmt::Display for HostFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused { stage, reply } => write!(f, "refused at {stage}: {reply}"),
            Self::TlsUnavailable { reply: Some(reply) } => {
                write!(f, "TLS required but unavailable: {reply}")
            }
            Self::TlsUnavailable { reply: None } => {
                write!(f, "TLS required but STARTTLS not offered")
            }
            Self::Protocol(e) => write!(f, "protocol error: {e}"),
            Self::Lost { stage } => write!(f, "connection lost at {stage}"),
            Self::PonyDowngrade => write!(f, "XPONY expected but not offered (downgrade?)"),
            Self::PonyRejected { why } | Self::PonyFailed { why } => write!(f, "{why}"),
        }
    }
}

/// The answer about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientResult {
    pub recipient: String,
    /// The server's reply that decided this recipient's fate: the final reply
    /// to end-of-data if the recipient was accepted, else the RCPT (or MAIL,
    /// or DATA) reply.
    pub reply: Reply,
    /// The command the reply answered, for logs: `RCPT TO`, `end of data`, …
    pub stage: &'static str,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutcome {
    /// Every recipient has a reply from the server.
    Replied(Vec<RecipientResult>),
    /// Nothing was decided for any recipient.
    Failed(HostFailure),
    /// The connection broke after the message was sent but before the final
    /// reply: the message may have been delivered (RFC 1047).
    Uncertain { accepted: Vec<String> },
}

/// A problem with the message itself, found before sending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentRefusal {
    /// Bigger than the server's SIZE (RFC 1870).
    TooBig { limit: u64 },
    /// Non-ASCII addresses and no SMTPUTF8 (RFC 6531 §3.4).
    NeedsSmtpUtf8,
    /// NUL octets in the message (see [`refuse_message`](super::refuse_message)).
    ContainsNul,
}

impl ContentRefusal {
    /// The reply that stands for the refusal, for every recipient.
    pub fn reply(&self) -> Reply {
        match self {
            ContentRefusal::TooBig { limit } => replies::too_big_for_remote(*limit),
            ContentRefusal::NeedsSmtpUtf8 => replies::needs_smtputf8(),
            ContentRefusal::ContainsNul => replies::nul_not_sent(),
        }
    }
}

/// A reply to DATA that no server may give (RFC 5321 §4.3.2: 354, 4xx or
/// 5xx): the session is out of step with the server, and nothing of it can
/// be trusted; above all a 2xx must never stand for the message's fate,
/// which was never sent.
pub(super) fn unexpected_data_reply(reply: &Reply) -> Option<ReplyError> {
    let fits = reply.code() == 354 || reply.is_transient() || reply.is_permanent();
    (!fits).then_some(ReplyError::Unexpected {
        command: "DATA",
        code: reply.code(),
    })
}
