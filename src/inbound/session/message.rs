//! The message after the backend's 354: scanned by the [`DataScanner`]
//! (dot-stuffing, end of data, bare newlines, NUL), opened by the trace
//! header, refused whole when its content or size must not pass.

use std::time::SystemTime;

use super::notice::Notice;
use super::state::{Expect, Message, Phase, Refusal, Session};
use crate::inbound::trace::{TraceFacts, write_received};
use crate::smtp::{BareNewlines, DataScanner, Reply, replies};

/// How far past the backend's SIZE a message may run before we stop it: the
/// backend itself refuses a message slightly over its limit with a proper
/// 552, so we only cut off a client that keeps sending far beyond it.
pub(super) const SIZE_SLACK: u64 = 64 * 1024;

impl Session {
    /// Enters the message after a 354, starting with the trace header.
    pub(super) fn start_message(&mut self) {
        self.phase = Phase::Message(Message {
            scanner: DataScanner::new(),
            trace_pending: self.config.trace_header,
            refusal: None,
        });
    }

    pub(super) fn handle_message_input(&mut self) -> bool {
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
                tls: self.tls.as_deref(),
            };
            write_received(&facts, SystemTime::now(), &mut self.to_backend);
        }
        let out = if let Some(refusal) = &mut message.refusal {
            refusal.discard.clear();
            &mut refusal.discard
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
            )
            .map(|(reply, notice)| {
                Box::new(Refusal {
                    reply,
                    notice,
                    discard: Vec::new(),
                })
            });
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
            match message.refusal.map(|r| *r) {
                Some(Refusal {
                    reply, mut notice, ..
                }) => {
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
            replies::contains_nul(),
            Notice::Nul {
                count: scanner.nuls(),
            },
        ));
    }
    let bare = scanner.bare_newlines();
    if bare > 0 && bare_newlines == BareNewlines::Reject {
        return Some((replies::bare_newline(), Notice::BareNewline { count: bare }));
    }
    let limit = size_limit?;
    (scanner.written() > limit + SIZE_SLACK).then(|| {
        (
            replies::message_too_big(),
            Notice::MessageTooLarge { limit },
        )
    })
}
