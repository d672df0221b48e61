//! A session's errors, counted against Postfix's limits, and its repeated
//! refusals, logged once with a count.
//!
//! Postfix (smtpd(8): `smtpd_soft_error_limit = 10`,
//! `smtpd_hard_error_limit = 20`, `smtpd_error_sleep_time = 1s`) counts the
//! client's errors "without delivering mail" (a message it accepts forgives
//! them), sleeps before every reply once the count has reached the soft
//! limit, and answers `421 4.7.0 Error: too many errors` and disconnects when
//! it reaches the hard limit. The sidecar does the same with the errors it
//! answers itself (syntax errors, unknown and refused commands, every 4xx/5xx
//! of its own); the backend counts its own. The sleep is an action for the
//! I/O loop ([`super::Action::Delay`]), so only the one session waits.

use std::time::Duration;

use super::notice::Notice;

/// The limits, from `--soft-error-limit` and `--hard-error-limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorLimits {
    /// From this many errors on, every reply waits `sleep` first.
    pub soft: u32,
    /// At this many errors the session ends with 421.
    pub hard: u32,
    pub sleep: Duration,
}

impl Default for ErrorLimits {
    fn default() -> Self {
        ErrorLimits {
            soft: 10,
            hard: 20,
            sleep: Duration::from_secs(1),
        }
    }
}

/// The errors of one session.
#[derive(Debug, Default)]
pub(super) struct ErrorCount(u32);

/// What one more error means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Continue,
    /// The hard limit is reached: 421 and close.
    TooMany,
}

impl ErrorCount {
    /// Whether the next reply must wait (Postfix's smtpd_chat_reply sleeps
    /// once the count has reached the soft limit, before the reply that
    /// counts the next error).
    pub fn slow(&self, limits: &ErrorLimits) -> bool {
        self.0 >= limits.soft
    }

    pub fn record(&mut self, limits: &ErrorLimits) -> Verdict {
        self.0 = self.0.saturating_add(1);
        if self.0 >= limits.hard {
            Verdict::TooMany
        } else {
            Verdict::Continue
        }
    }

    /// A message was accepted: Postfix forgives earlier errors.
    pub fn forgive(&mut self) {
        self.0 = 0;
    }

    pub fn count(&self) -> u32 {
        self.0
    }
}

/// Refusals a client can provoke on every line. The first of each kind is
/// logged as it happens; the rest are counted and logged once when the
/// session ends (`refused=bad-syntax count=137`), so a client sending
/// garbage costs a few log lines, not one per line.
#[derive(Debug, Default)]
pub(super) struct Repeats(Vec<(Notice, u64)>);

impl Repeats {
    /// Whether `notice` is to be logged now: always for notices that do not
    /// repeat, and for the first of each repeating kind.
    pub fn first(&mut self, notice: &Notice) -> bool {
        if !repeats(notice) {
            return true;
        }
        if let Some((_, count)) = self.0.iter_mut().find(|(n, _)| n == notice) {
            *count += 1;
            return false;
        }
        self.0.push((notice.clone(), 1));
        true
    }

    /// The kinds that happened more than once, with how often in all.
    pub fn summary(&mut self) -> impl Iterator<Item = Notice> + use<> {
        std::mem::take(&mut self.0)
            .into_iter()
            .filter(|(_, count)| *count > 1)
            .map(|(notice, count)| Notice::Repeated {
                first: Box::new(notice),
                count,
            })
    }
}

/// The notices that come from one client line each; their kinds are few
/// (a handful of verbs at most), so the list above stays short.
fn repeats(notice: &Notice) -> bool {
    matches!(
        notice,
        Notice::BadSyntax
            | Notice::LineTooLong
            | Notice::CommandRefused { .. }
            | Notice::TlsRequired { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_as_postfix() {
        let limits = ErrorLimits::default();
        let mut errors = ErrorCount::default();
        // (error number, the reply to it waits, verdict)
        for n in 1..=20u32 {
            let waits = errors.slow(&limits);
            let verdict = errors.record(&limits);
            assert_eq!(waits, n > 10, "error {n}");
            assert_eq!(verdict == Verdict::TooMany, n == 20, "error {n}");
        }
        errors.forgive();
        assert!(!errors.slow(&limits));
        assert_eq!(errors.count(), 0);
    }

    #[test]
    fn repeated_refusals_are_logged_once_with_a_count() {
        let mut r = Repeats::default();
        let xclient = Notice::CommandRefused { command: "XCLIENT" };
        let proxy = Notice::CommandRefused { command: "PROXY" };
        let mut logged = 0;
        for _ in 0..137 {
            logged += usize::from(r.first(&Notice::BadSyntax));
        }
        logged += usize::from(r.first(&xclient));
        logged += usize::from(r.first(&xclient));
        logged += usize::from(r.first(&proxy));
        // Never folded: one per message.
        logged += usize::from(r.first(&Notice::Nul { count: 1 }));
        logged += usize::from(r.first(&Notice::Nul { count: 1 }));
        assert_eq!(logged, 5);
        let summary: Vec<String> = r.summary().map(|n| n.to_string()).collect();
        assert_eq!(
            summary,
            [
                "refused=bad-syntax count=137",
                "refused=command command=XCLIENT count=2"
            ]
        );
        assert_eq!(r.summary().count(), 0, "logged once");
    }
}
