//! The message after 354: scanned by the [`DataScanner`] (dot-stuffing,
//! end of data, bare newlines), held to the size limit while it arrives,
//! refused for its content at its end, else handed to the driver.

use super::state::{Phase, Protocol, ReceiveEvent, ReceiveSession};
use crate::smtp::envelope::Envelope;
use crate::smtp::{BareNewlines, DataScanner, Reply, replies};

impl ReceiveSession {
    /// Scans message input; false when more input is needed or delivery began.
    pub(super) fn scan_data(&mut self) -> bool {
        let Phase::Data {
            scanner,
            wire,
            too_big,
            ..
        } = &mut self.phase
        else {
            return false;
        };
        if self.input.is_empty() {
            return false;
        }
        let out = if *too_big {
            self.discard.clear();
            &mut self.discard
        } else {
            &mut *wire
        };
        let scan = scanner.scan(&self.input, out);
        self.input.drain(..scan.consumed);
        if scanner.written() > self.max_message_size && !*too_big {
            *too_big = true;
            wire.clear();
        }
        if !scan.end {
            return false;
        }
        let Phase::Data {
            sender,
            recipients,
            wire,
            too_big,
            scanner,
        } = std::mem::replace(&mut self.phase, Phase::Ready)
        else {
            return false;
        };
        let refusal = if too_big {
            Some(replies::message_too_big())
        } else {
            self.content_refusal(&scanner, &wire)
        };
        match (self.protocol, refusal) {
            (Protocol::Lmtp, Some(refusal)) => {
                for _ in &recipients {
                    refusal.write_to(&mut self.output);
                }
                true
            }
            (Protocol::Smtp, Some(refusal)) => {
                // The remote already said 354: end its transaction.
                self.events.push_back(ReceiveEvent::Reset);
                refusal.write_to(&mut self.output);
                true
            }
            (Protocol::Lmtp, None) => {
                self.phase = Phase::Delivering {
                    count: recipients.len(),
                };
                self.events.push_back(ReceiveEvent::Deliver {
                    envelope: Envelope { sender, recipients },
                    wire,
                });
                false
            }
            (Protocol::Smtp, None) => {
                self.phase = Phase::AwaitingEnd;
                self.events.push_back(ReceiveEvent::EndOfData {
                    envelope: Envelope { sender, recipients },
                    wire,
                });
                false
            }
        }
    }

    /// A refusal of a complete message for what it contains, per the
    /// options (the size is checked while it arrives).
    pub(super) fn content_refusal(&self, scanner: &DataScanner, wire: &[u8]) -> Option<Reply> {
        if self.options.bare_newlines == BareNewlines::Reject && scanner.bare_newlines() > 0 {
            return Some(replies::bare_newline());
        }
        if self.options.refuse_nul && memchr::memchr(0, wire).is_some() {
            return Some(replies::contains_nul());
        }
        None
    }
}
