//! A budget of message octets held in memory by all the sessions of one
//! server at once (`outbound --max-message-memory`): each session holds
//! what it received of the message it is taking in or passing on, and
//! asks the budget before it holds more. Over the budget the client is
//! told `452 4.3.1` or `421 4.3.1` (RFC 3463 §3.4: mail system full) and
//! sends again later; memory stays bounded however many clients send big
//! messages at once.
//!
//! A session that holds everything the budget holds may always grow (to
//! its own size limit): a message larger than the budget still goes
//! through on its own, instead of being deferred for ever.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The octets held by all sessions, and the most they may hold.
#[derive(Debug)]
pub struct MessageMemory {
    limit: u64,
    used: AtomicU64,
}

impl MessageMemory {
    pub fn new(limit: u64) -> Arc<MessageMemory> {
        Arc::new(MessageMemory {
            limit,
            used: AtomicU64::new(0),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Octets held now by all sessions.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether a session holding `mine` of the `used` octets may hold
    /// `more`: within the limit, or alone (see the module docs).
    fn fits(&self, used: u64, mine: u64, more: u64) -> bool {
        used.checked_add(more)
            .is_some_and(|after| after <= self.limit)
            || used == mine
    }
}

/// What one session holds of the budget; given back when dropped.
#[derive(Debug)]
pub struct Held {
    memory: Arc<MessageMemory>,
    bytes: u64,
}

impl Held {
    /// A session's share, empty at first.
    pub fn new(memory: &Arc<MessageMemory>) -> Held {
        Held {
            memory: Arc::clone(memory),
            bytes: 0,
        }
    }

    /// Octets this session holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The budget this is a share of.
    pub fn budget(&self) -> &MessageMemory {
        &self.memory
    }

    /// Holds `bytes` in all (never less than now). False when the budget
    /// cannot give the rest: what was held stays held.
    pub fn grow_to(&mut self, bytes: u64) -> bool {
        if bytes <= self.bytes {
            return true;
        }
        let (more, mine) = (bytes - self.bytes, self.bytes);
        let granted = self
            .memory
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                self.memory
                    .fits(used, mine, more)
                    .then(|| used.saturating_add(more))
            });
        if granted.is_ok() {
            self.bytes = bytes;
        }
        granted.is_ok()
    }

    /// Whether [`Held::grow_to`] would give `bytes` now (nothing is held):
    /// for a message whose size is declared before it is sent.
    pub fn could_grow_to(&self, bytes: u64) -> bool {
        bytes <= self.bytes
            || self
                .memory
                .fits(self.memory.used(), self.bytes, bytes - self.bytes)
    }

    /// The log words for a refusal of `bytes` (every role says the same).
    pub fn refusal(&self, bytes: u64) -> String {
        format!(
            "refused=message-memory size={bytes} in-flight={} max-message-memory={}",
            self.memory.used(),
            self.memory.limit()
        )
    }

    /// Gives back everything held (the message was answered or dropped).
    pub fn release(&mut self) {
        if self.bytes > 0 {
            self.memory.used.fetch_sub(self.bytes, Ordering::AcqRel);
            self.bytes = 0;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget() {
        // (session, grow to, granted, used after); sessions 0..3 share a
        // budget of 100; a `None` target releases.
        let steps: &[(usize, Option<u64>, bool, u64)] = &[
            (0, Some(60), true, 60),
            // Growing is by the difference.
            (0, Some(70), true, 70),
            // Never shrinks by asking for less.
            (0, Some(10), true, 70),
            (1, Some(30), true, 100),
            // Full: refused, nothing changes.
            (2, Some(1), false, 100),
            (1, Some(31), false, 100),
            (0, None, true, 30),
            (2, Some(50), true, 80),
            (0, None, true, 80),
            (1, None, true, 50),
            // Alone in the budget, a session may pass the limit.
            (2, Some(500), true, 500),
            (0, Some(1), false, 500),
            (2, None, true, 0),
            // Alone and empty: a single message larger than the budget.
            (0, Some(150), true, 150),
        ];
        let memory = MessageMemory::new(100);
        let mut held: Vec<Held> = (0..3).map(|_| Held::new(&memory)).collect();
        for (i, (who, to, granted, used)) in steps.iter().enumerate() {
            let got = match to {
                Some(n) => {
                    let could = held[*who].could_grow_to(*n);
                    let got = held[*who].grow_to(*n);
                    assert_eq!(could, got, "step {i}: could_grow_to agrees");
                    got
                }
                None => {
                    held[*who].release();
                    true
                }
            };
            assert_eq!(got, *granted, "step {i}");
            assert_eq!(memory.used(), *used, "step {i}");
        }
        drop(held);
        assert_eq!(memory.used(), 0, "dropping gives everything back");
    }
}
