//! Deadlines a trickle cannot extend. A client gets one deadline for each
//! command line, counted from when the previous one was answered, and one
//! for the whole message, which grows with the bytes received at a minimum
//! rate: Postfix's `smtpd_timeout` under `smtpd_per_request_deadline` with
//! `smtpd_min_data_rate`. A client sending a byte now and then (slowloris)
//! no longer holds its slot for ever; under stress the base time shrinks
//! (Postfix's `${stress?10}${stress:300}`). Sans-IO: the time is passed in.

use std::time::{Duration, Instant};

/// The client-side timeouts of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Time for one command line, and the base time of a message
    /// (RFC 5321 §4.5.3.2.7: 5 minutes).
    pub line: Duration,
    /// The same when slots run short.
    pub stress_line: Duration,
    /// Octets per second a message must arrive at, at least, on top of
    /// the base time (Postfix's default: 500).
    pub min_data_rate: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            line: crate::smtp::limits::SERVER_TIMEOUT,
            stress_line: Duration::from_secs(10),
            min_data_rate: 500,
        }
    }
}

impl Timeouts {
    /// The time for one line (and the base time of a message) now.
    pub fn line(&self, stressed: bool) -> Duration {
        if stressed {
            self.stress_line.min(self.line)
        } else {
            self.line
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Line,
    Message,
}

/// What the client is being waited for, and since when.
#[derive(Debug, Clone)]
pub struct ClientClock {
    waiting: Waiting,
    since: Instant,
    bytes: u64,
}

impl ClientClock {
    /// A session that starts waiting for its first line at `now`.
    pub fn new(now: Instant) -> Self {
        ClientClock {
            waiting: Waiting::Line,
            since: now,
            bytes: 0,
        }
    }

    /// Something was answered: the next line's time starts `now`.
    pub fn next_line(&mut self, now: Instant) {
        self.waiting = Waiting::Line;
        self.since = now;
        self.bytes = 0;
    }

    /// The message (after `354`) started; a no-op while one runs.
    pub fn message(&mut self, now: Instant) {
        if self.waiting != Waiting::Message {
            self.waiting = Waiting::Message;
            self.since = now;
            self.bytes = 0;
        }
    }

    pub fn in_message(&self) -> bool {
        self.waiting == Waiting::Message
    }

    /// `n` octets of the message arrived.
    pub fn received(&mut self, n: usize) {
        if self.waiting == Waiting::Message {
            self.bytes = self.bytes.saturating_add(n as u64);
        }
    }

    /// When the client's time is up. Bytes alone never move a line's
    /// deadline; a message's moves by one second per `min_data_rate` octets.
    pub fn deadline(&self, t: &Timeouts, stressed: bool) -> Instant {
        let base = t.line(stressed);
        match self.waiting {
            Waiting::Line => self.since + base,
            Waiting::Message => {
                let rate = t.min_data_rate.max(1);
                let earned = Duration::from_millis(self.bytes.saturating_mul(1000) / rate);
                self.since + base + earned
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines() {
        let t = Timeouts {
            line: Duration::from_secs(300),
            stress_line: Duration::from_secs(10),
            min_data_rate: 500,
        };
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // (steps, stressed, deadline after t0)
        enum Step {
            Line(u64),
            Message(u64),
            Bytes(usize),
        }
        use Step::*;
        let cases: &[(&[Step], bool, Duration)] = &[
            (&[], false, s(300)),
            (&[], true, s(10)),
            // A trickle of bytes in a command line changes nothing.
            (&[Bytes(1), Bytes(1), Bytes(1)], false, s(300)),
            // Each answered command starts a new line's time.
            (&[Line(200)], false, s(500)),
            (&[Line(200)], true, s(210)),
            // A message: base time plus one second per 500 octets.
            (&[Message(5)], false, s(305)),
            (&[Message(5), Bytes(5000)], false, s(315)),
            (&[Message(5), Bytes(5000)], true, s(25)),
            (&[Message(5), Bytes(250), Bytes(250)], false, s(306)),
            // A second call while the message runs keeps its start.
            (&[Message(5), Bytes(500), Message(50)], false, s(306)),
            // After the message, a line's time again.
            (&[Message(5), Bytes(5000), Line(60)], false, s(360)),
        ];
        for (steps, stressed, want) in cases {
            let mut c = ClientClock::new(t0);
            for step in *steps {
                match step {
                    Line(at) => c.next_line(t0 + s(*at)),
                    Message(at) => c.message(t0 + s(*at)),
                    Bytes(n) => c.received(*n),
                }
            }
            assert_eq!(c.deadline(&t, *stressed), t0 + *want, "{:?}", want);
        }
    }

    #[test]
    fn stress_never_lengthens() {
        let t = Timeouts {
            line: Duration::from_secs(5),
            stress_line: Duration::from_secs(10),
            min_data_rate: 500,
        };
        assert_eq!(t.line(true), Duration::from_secs(5));
    }
}
