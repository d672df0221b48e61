//! What a receiving session holds: where it is in the dialogue ([`Phase`]),
//! what it offers, the events for its driver; and the steps every part of
//! it takes (reply, close, tell the driver a transaction ended).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::pony::negotiation::ServerIdentity;
use crate::pony::noise::{ResponderAwaitingFinish, Transport};
use crate::smtp::envelope::Envelope;
use crate::smtp::{BareNewlines, DataScanner, Reply};

/// Which protocol the session speaks to the MTA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Lmtp,
    Smtp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Lmtp => "lmtp",
            Protocol::Smtp => "smtp",
        }
    }
}

/// What a receiving session offers and refuses beyond plain LMTP/SMTP.
/// The default is what an MTA on the same host needs (the outbound
/// transport's service); the sealed relay, facing the internet, turns on
/// more.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReceiveOptions {
    /// Offer STARTTLS (RFC 3207) until TLS is up.
    pub starttls: bool,
    /// Refuse a message with a bare CR or LF (RFC 5321 §2.3.8) instead of
    /// normalising it to CRLF.
    pub bare_newlines: BareNewlines,
    /// Refuse a message with a NUL octet (RFC 5322 §2.3 and RFC 6152 §3:
    /// neither 7bit nor 8bit content may hold one).
    pub refuse_nul: bool,
}

/// What the I/O loop must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiveEvent {
    /// LMTP: a complete message; deliver it, then call
    /// [`ReceiveSession::delivered`].
    Deliver { envelope: Envelope, wire: Vec<u8> },
    /// SMTP: a recipient for the transaction from `sender`; answer with the
    /// remote's RCPT reply (or a refusal) through [`ReceiveSession::answer`].
    Recipient { sender: String, recipient: String },
    /// SMTP: the client sent DATA; answer with the remote's reply (354 starts
    /// the message).
    Data,
    /// SMTP: the message in DATA form; answer with the remote's final reply.
    /// `envelope` holds the sender and the recipients that were accepted.
    EndOfData { envelope: Envelope, wire: Vec<u8> },
    /// SMTP: the client asked for TLS and got 220; run the handshake, then
    /// call [`ReceiveSession::tls_established`] (or drop the connection).
    StartTls,
    /// SMTP: XPONY's message 3 was good (xpony.md §3.2 step 4): write out
    /// what is buffered, wrap the connection in the channel from
    /// [`ReceiveSession::take_pony`], then call
    /// [`ReceiveSession::pony_established`]. No reply is sent.
    StartPony,
    /// SMTP: an XPONY attempt failed (`stage`: message 1, message 3, or
    /// injection); the reply is in the output. For the log only.
    XponyFailed { stage: &'static str, error: String },
    /// SMTP: the transaction was reset (RSET, or a new MAIL after one).
    Reset,
    /// The client said QUIT (its reply is in the output) or must be dropped.
    Close,
}

#[derive(Debug)]
pub(super) enum Phase {
    /// Waiting for LHLO (LMTP) or EHLO/HELO (SMTP).
    Greeted,
    Ready,
    Mail {
        sender: String,
    },
    /// MAIL and at least one RCPT.
    Rcpt {
        sender: String,
        recipients: Vec<String>,
    },
    Data {
        sender: String,
        recipients: Vec<String>,
        scanner: DataScanner,
        wire: Vec<u8>,
        too_big: bool,
    },
    /// The message is being delivered; input waits.
    Delivering {
        count: usize,
    },
    /// SMTP: waiting for the driver's answer to RCPT.
    AwaitingRcpt {
        sender: String,
        recipients: Vec<String>,
        recipient: String,
    },
    /// SMTP: waiting for the answer to DATA.
    AwaitingData {
        sender: String,
        recipients: Vec<String>,
    },
    /// SMTP: waiting for the final reply to the message.
    AwaitingEnd,
    /// STARTTLS was answered 220; the I/O loop runs the handshake.
    Handshake,
    /// XPONY was answered 334; the next line is message 3 or `*`.
    XponyAwaitingFinish(ResponderAwaitingFinish),
    /// Message 3 was good; the I/O loop switches to the channel.
    XponySwitch,
    Closed,
}

/// One receiving session. See the module docs.
pub struct ReceiveSession {
    pub(super) protocol: Protocol,
    pub(super) hostname: String,
    pub(super) max_message_size: u64,
    pub(super) options: ReceiveOptions,
    /// TLS is up (STARTTLS is no longer offered).
    pub(super) tls: bool,
    /// Offer XPONY with this host key (proto-spec xpony.md).
    pub(super) pony: Option<Arc<ServerIdentity>>,
    /// The XPONY channel is up.
    pub(super) pony_up: bool,
    /// The channel and the octets that came behind message 3, for the I/O
    /// loop after [`ReceiveEvent::StartPony`].
    pub(super) pony_ready: Option<(Transport, Vec<u8>)>,
    /// The prologue's parts (xpony.md §4.2): the greeting, the EHLO line in
    /// effect and our reply to it, as they crossed the wire. `ehlo_line` is
    /// empty while no EHLO is in effect (none yet, or HELO after it: R1).
    pub(super) greeting: Vec<u8>,
    pub(super) ehlo_line: Vec<u8>,
    pub(super) ehlo_reply: Vec<u8>,
    /// Whether the line being handled ended in CR LF (XPONY's lines must).
    pub(super) line_crlf: bool,
    pub(super) phase: Phase,
    pub(super) input: Vec<u8>,
    /// Skipping the rest of an over-long command line.
    pub(super) skipping_line: bool,
    /// Message bytes read but not kept (a message over the size limit).
    pub(super) discard: Vec<u8>,
    /// The `SIZE=` of the current transaction's MAIL (RFC 1870), for the
    /// SMTP proxy to pass on.
    pub(super) declared_size: Option<u64>,
    /// Bytes to write to the client.
    pub output: Vec<u8>,
    pub(super) events: VecDeque<ReceiveEvent>,
}

impl ReceiveSession {
    pub(super) fn reply(&mut self, reply: Reply) {
        reply.write_to(&mut self.output);
    }

    pub(super) fn close(&mut self) {
        self.phase = Phase::Closed;
        self.events.push_back(ReceiveEvent::Close);
    }

    /// In SMTP mode, tells the driver to end the remote transaction when the
    /// client starts over (RSET, EHLO) with one open.
    pub(super) fn reset_transaction(&mut self) {
        if self.protocol == Protocol::Smtp
            && matches!(self.phase, Phase::Mail { .. } | Phase::Rcpt { .. })
        {
            self.events.push_back(ReceiveEvent::Reset);
        }
    }

    pub(super) fn offers_starttls(&self) -> bool {
        self.options.starttls && !self.tls && !self.pony_up && self.protocol == Protocol::Smtp
    }

    /// XPONY is listed until the session is encrypted (either way).
    pub(super) fn offers_xpony(&self) -> bool {
        self.pony.is_some() && !self.tls && !self.pony_up && self.protocol == Protocol::Smtp
    }
}
