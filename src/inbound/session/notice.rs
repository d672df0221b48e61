//! What a relay session logs: the refusals it makes and the ways a peer
//! misbehaves, one [`Notice`] per event, written as Postfix-style
//! `key=value` words (the interop tests grep them).

use std::fmt;

use crate::smtp::ReplyError;

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
