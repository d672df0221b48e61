//! `blackpony stats`: how much of the mail through this host was encrypted,
//! counted from blackpony's own log lines (sans-IO: lines in, figures out;
//! the CLI reads files or the journal, `report` renders text, JSON or HTML).
//!
//! The lines it reads (src/log.rs, Postfix-style, one event per line):
//!
//! - inbound, one per client session, when it ends:
//!   `session=… disconnect client=unknown[192.0.2.7]:51234 tls=TLSv1.3/… identity=… messages=1 refused=0 …`
//!   (`tls=none`, `tls=TLSv1.x/…` or `tls=XPONY/Noise_… peer=SHA256:…`);
//! - inbound refusals: `session=… refused=starttls-injection …`;
//! - outbound, one per recipient and delivery attempt (deliver, lmtp, outbound):
//!   `to=<bob@example.org> relay=… tls=… verified=… level=encrypted … status=sent (…)`,
//!   under `session=… ` in `blackpony outbound` (its own refusals of the
//!   MTA, `refused=message-memory`, are no inbound refusals).
//!
//! Anything else (start-up lines, other programs' lines in a shared mail log)
//! is skipped. A line's day comes from its own timestamp: blackpony's
//! (`2026-12-03T04:15:13Z`), journalctl's `short-iso`, an RFC 3339 syslog
//! file, or a traditional syslog date (`Dec  3 04:15:13`, whose year the
//! caller gives). Lines without one count under the day `unknown`.

pub mod report;

use std::collections::BTreeMap;

/// How a session or a delivery was carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Plaintext,
    /// TLS after STARTTLS.
    Tls,
    /// The blackpony extension's Noise channel.
    Xpony,
}

impl Channel {
    /// From a log line's `tls=` value.
    fn from_tls_field(value: &str) -> Channel {
        if value == "none" {
            Channel::Plaintext
        } else if value.starts_with("XPONY/") {
            Channel::Xpony
        } else {
            Channel::Tls
        }
    }
}

/// What a delivery attempt ended with (`status=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeliveryStatus {
    Sent,
    Deferred,
    Bounced,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Deferred => "deferred",
            DeliveryStatus::Bounced => "bounced",
        }
    }
}

/// One log line that counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An inbound client session ended.
    InboundSession {
        /// The client's address (the inbound log names no client domain).
        client: String,
        channel: Channel,
        messages: u64,
    },
    /// blackpony refused something a client did (`refused=REASON`).
    InboundRefusal { reason: String },
    /// A delivery attempt for one recipient.
    Delivery {
        /// The recipient's domain, lower case.
        domain: String,
        channel: Channel,
        /// `level=authenticated`: the server's certificate or key was verified.
        authenticated: bool,
        status: DeliveryStatus,
    },
}

/// An event and the day it happened (`YYYY-MM-DD`), if the line said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub day: Option<String>,
    pub event: Event,
}

/// Parses one log line; `None` for lines that are not counted. `year` is
/// used for traditional syslog dates, which have none.
pub fn parse_line(line: &str, year: i32) -> Option<Record> {
    let (prefix, role, message) = split_program(line)?;
    let event = parse_message(role, message)?;
    Some(Record {
        day: day_of(prefix, year),
        event,
    })
}

/// Splits `… blackpony/ROLE[PID]: MESSAGE` into what comes before the
/// program name, the role and the message.
fn split_program(line: &str) -> Option<(&str, &str, &str)> {
    let mut from = 0;
    while let Some(at) = line[from..].find("blackpony/") {
        let start = from + at;
        let rest = &line[start + "blackpony/".len()..];
        let role_end = rest.find('[')?;
        let role = &rest[..role_end];
        if !role.is_empty() && role.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            let after = &rest[role_end + 1..];
            if let Some(close) = after.find("]: ")
                && after[..close].bytes().all(|b| b.is_ascii_digit())
            {
                return Some((&line[..start], role, &after[close + 3..]));
            }
        }
        from = start + "blackpony/".len();
    }
    None
}

fn parse_message(role: &str, message: &str) -> Option<Event> {
    if let Some(rest) = message.strip_prefix("to=<") {
        return parse_delivery(rest);
    }
    let rest = message.strip_prefix("session=")?;
    let (_, rest) = rest.split_once(' ')?;
    if let Some(rest) = rest.strip_prefix("to=<") {
        return parse_delivery(rest);
    }
    // The outbound server's sessions are with the MTA: neither they nor
    // what it refuses the MTA (over its limits) are inbound figures.
    if role == "outbound" {
        return None;
    }
    if let Some(fields) = rest.strip_prefix("disconnect ") {
        let client = field(fields, "client=")?;
        let ip = client
            .rsplit_once('[')
            .and_then(|(_, r)| r.split_once(']'))
            .map_or(client, |(ip, _)| ip);
        return Some(Event::InboundSession {
            client: ip.to_string(),
            channel: Channel::from_tls_field(field(fields, "tls=")?),
            messages: field(fields, "messages=")?.parse().ok()?,
        });
    }
    let reason = rest.strip_prefix("refused=")?;
    let reason = reason.split(' ').next().unwrap_or(reason);
    if reason.is_empty() || reason.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Event::InboundRefusal {
        reason: reason.to_string(),
    })
}

/// `bob@example.org> relay=… tls=… level=… status=sent (…)`.
fn parse_delivery(rest: &str) -> Option<Event> {
    let (recipient, fields) = rest.split_once("> ")?;
    let domain = recipient
        .rsplit_once('@')
        .map_or("", |(_, d)| d)
        .to_ascii_lowercase();
    let status = match field(fields, "status=")? {
        "sent" => DeliveryStatus::Sent,
        "deferred" => DeliveryStatus::Deferred,
        "bounced" => DeliveryStatus::Bounced,
        _ => return None,
    };
    Some(Event::Delivery {
        domain: if domain.is_empty() {
            "(no domain)".into()
        } else {
            domain
        },
        channel: Channel::from_tls_field(field(fields, "tls=")?),
        authenticated: field(fields, "level=")? == "authenticated",
        status,
    })
}

/// The value of `key` (which ends in `=`) among space-separated fields; the
/// key must start a field.
fn field<'a>(fields: &'a str, key: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(at) = fields[from..].find(key) {
        let start = from + at;
        if start == 0 || fields.as_bytes()[start - 1] == b' ' {
            let value = &fields[start + key.len()..];
            return Some(value.split(' ').next().unwrap_or(value));
        }
        from = start + key.len();
    }
    None
}

/// The day in front of the program name: an ISO date anywhere there
/// (blackpony's own timestamp, journalctl -o short-iso, RFC 3339 syslog), or a
/// traditional syslog `Mmm dd` at its start.
fn day_of(prefix: &str, year: i32) -> Option<String> {
    let prefix = prefix.trim_start();
    // Skip a syslog priority (`<22>`).
    let prefix = match prefix.strip_prefix('<').and_then(|p| p.split_once('>')) {
        Some((pri, rest)) if pri.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => prefix,
    };
    let b = prefix.as_bytes();
    let iso = |s: &[u8]| {
        s.len() >= 10
            && s[..4].iter().all(u8::is_ascii_digit)
            && s[4] == b'-'
            && s[5..7].iter().all(u8::is_ascii_digit)
            && s[7] == b'-'
            && s[8..10].iter().all(u8::is_ascii_digit)
    };
    if iso(b) {
        return Some(prefix[..10].to_string());
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| prefix.starts_with(m))? + 1;
    let day: u32 = prefix.get(3..)?.split_whitespace().next()?.parse().ok()?;
    (1..=31)
        .contains(&day)
        .then(|| format!("{year:04}-{month:02}-{day:02}"))
}

/// Counts split by how the mail was carried. `tls + xpony` were encrypted;
/// `authenticated` counts those of them whose peer was verified.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub plaintext: u64,
    pub tls: u64,
    pub xpony: u64,
    pub authenticated: u64,
}

impl Tally {
    fn add(&mut self, channel: Channel, authenticated: bool, n: u64) {
        match channel {
            Channel::Plaintext => self.plaintext += n,
            Channel::Tls => self.tls += n,
            Channel::Xpony => self.xpony += n,
        }
        if authenticated && channel != Channel::Plaintext {
            self.authenticated += n;
        }
    }

    pub fn total(&self) -> u64 {
        self.plaintext + self.tls + self.xpony
    }

    pub fn encrypted(&self) -> u64 {
        self.tls + self.xpony
    }

    /// The encrypted share in percent, `None` when nothing was counted.
    pub fn encrypted_percent(&self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| 100.0 * self.encrypted() as f64 / total as f64)
    }
}

/// One day's figures.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Day {
    /// Inbound client sessions.
    pub inbound_sessions: Tally,
    /// Messages those sessions passed to the MTA.
    pub inbound_messages: Tally,
    /// Outbound recipients delivered (`status=sent`), by how they travelled.
    pub outbound_delivered: Tally,
}

/// One peer's figures: an inbound client (by address) or an outbound
/// recipient domain.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Inbound: sessions; outbound: zero (no session lines are logged).
    pub sessions: Tally,
    /// Inbound: messages; outbound: recipients delivered.
    pub messages: Tally,
}

/// Everything counted.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    /// Lines read and lines that counted.
    pub lines: u64,
    pub records: u64,
    pub days: BTreeMap<String, Day>,
    /// Inbound clients by address.
    pub senders: BTreeMap<String, Peer>,
    /// Outbound recipient domains.
    pub receivers: BTreeMap<String, Peer>,
    /// Inbound refusals by reason.
    pub refusals: BTreeMap<String, u64>,
    /// Outbound delivery attempts by result.
    pub results: BTreeMap<DeliveryStatus, u64>,
}

/// The day lines without a date count under.
pub const UNKNOWN_DAY: &str = "unknown";

impl Stats {
    /// Counts one line (any line: those that do not count are only counted
    /// as read).
    pub fn add_line(&mut self, line: &str, year: i32) {
        self.lines += 1;
        if let Some(record) = parse_line(line, year) {
            self.add(record);
        }
    }

    pub fn add(&mut self, record: Record) {
        self.records += 1;
        let day = self
            .days
            .entry(record.day.unwrap_or_else(|| UNKNOWN_DAY.to_string()))
            .or_default();
        match record.event {
            Event::InboundSession {
                client,
                channel,
                messages,
            } => {
                day.inbound_sessions.add(channel, false, 1);
                day.inbound_messages.add(channel, false, messages);
                let peer = self.senders.entry(client).or_default();
                peer.sessions.add(channel, false, 1);
                peer.messages.add(channel, false, messages);
            }
            Event::InboundRefusal { reason } => {
                *self.refusals.entry(reason).or_default() += 1;
            }
            Event::Delivery {
                domain,
                channel,
                authenticated,
                status,
            } => {
                *self.results.entry(status).or_default() += 1;
                if status == DeliveryStatus::Sent {
                    day.outbound_delivered.add(channel, authenticated, 1);
                    self.receivers.entry(domain).or_default().messages.add(
                        channel,
                        authenticated,
                        1,
                    );
                }
            }
        }
    }

    /// Inbound clients that sent in plaintext, most plaintext sessions first
    /// (then by address), at most `n`.
    pub fn top_plaintext_senders(&self, n: usize) -> Vec<(&str, &Peer)> {
        top_plaintext(&self.senders, n, |p| p.sessions.plaintext)
    }

    /// Recipient domains that received in plaintext, most first, at most `n`.
    pub fn top_plaintext_receivers(&self, n: usize) -> Vec<(&str, &Peer)> {
        top_plaintext(&self.receivers, n, |p| p.messages.plaintext)
    }
}

fn top_plaintext(
    peers: &BTreeMap<String, Peer>,
    n: usize,
    plaintext: fn(&Peer) -> u64,
) -> Vec<(&str, &Peer)> {
    let mut list: Vec<(&str, &Peer)> = peers
        .iter()
        .filter(|(_, p)| plaintext(p) > 0)
        .map(|(k, p)| (k.as_str(), p))
        .collect();
    // Stable sort on a BTreeMap's order: ties stay alphabetical.
    list.sort_by_key(|(_, p)| std::cmp::Reverse(plaintext(p)));
    list.truncate(n);
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: &str = "2026-12-03";

    fn rec(day: Option<&str>, event: Event) -> Option<Record> {
        Some(Record {
            day: day.map(str::to_string),
            event,
        })
    }

    fn session(client: &str, channel: Channel, messages: u64) -> Event {
        Event::InboundSession {
            client: client.into(),
            channel,
            messages,
        }
    }

    fn delivery(domain: &str, channel: Channel, auth: bool, status: DeliveryStatus) -> Event {
        Event::Delivery {
            domain: domain.into(),
            channel,
            authenticated: auth,
            status,
        }
    }

    #[test]
    fn lines() {
        use Channel::*;
        use DeliveryStatus::*;
        let table: &[(&str, Option<Record>)] = &[
            // Inbound, as written to stderr (blackpony's own timestamp).
            (
                "2026-12-03T04:15:15Z blackpony/inbound[26078]: session=00000001 disconnect client=unknown[127.0.0.77]:57570 tls=TLSv1.3/TLS_AES_256_GCM_SHA384 identity=none messages=1 refused=0 bytes=257 end=quit reply=\"250 2.0.0 Ok\" duration=0.336s",
                rec(Some(DAY), session("127.0.0.77", Tls, 1)),
            ),
            (
                "2026-12-03T04:15:15Z blackpony/inbound[26078]: session=00000002 disconnect client=unknown[2001:db8::7]:43170 tls=none identity=proxy-v2 messages=0 refused=0 bytes=0 end=quit reply=\"550 5.7.1 no\" duration=0.024s",
                rec(Some(DAY), session("2001:db8::7", Plaintext, 0)),
            ),
            (
                "2026-12-03T04:15:15Z blackpony/inbound[1]: session=0000000C disconnect client=unknown[192.0.2.7]:1 tls=XPONY/Noise_XX_25519_ChaChaPoly_SHA256 peer=SHA256:abc identity=proxy-v2 messages=3 refused=0 bytes=9 end=quit reply=\"221 bye\" duration=1.000s",
                rec(Some(DAY), session("192.0.2.7", Xpony, 3)),
            ),
            // A refusal notice; the disconnect line's numeric refused= is not one.
            (
                "2026-12-03T04:15:15Z blackpony/inbound[1]: session=0000002B refused=starttls-injection bytes=18 (plaintext pipelined after STARTTLS) client=unknown[198.51.100.3]:40022",
                rec(
                    Some(DAY),
                    Event::InboundRefusal {
                        reason: "starttls-injection".into(),
                    },
                ),
            ),
            // Outbound via the journal (short-iso) and via syslog (no year).
            (
                "2026-12-04T10:00:00+0000 mx blackpony[4711]: blackpony/deliver[4711]: to=<bob@Example.ORG> relay=mx.example.org[192.0.2.25]:25 tls=TLSv1.3/TLS_AES_256_GCM_SHA384 verified=no (untrusted issuer) level=encrypted delay=0.21 dsn=2.0.0 status=sent (250 2.0.0 Ok: queued as 4XyZ)",
                rec(
                    Some("2026-12-04"),
                    delivery("example.org", Tls, false, Sent),
                ),
            ),
            (
                "Dec  5 10:00:00 mx blackpony/lmtp[16704]: to=<a@b.example> relay=mx.b.example[192.0.2.9]:25 tls=XPONY/Noise_XX_25519_ChaChaPoly_SHA256 peer=SHA256:x verified=yes (pinned key) level=authenticated delay=0.18 dsn=2.0.0 status=sent (250 ok)",
                rec(Some("2026-12-05"), delivery("b.example", Xpony, true, Sent)),
            ),
            (
                "<22>blackpony/lmtp[16716]: to=<later@tempfail.test> relay=mx.tempfail.test[127.0.10.4]:25 tls=none verified=no level=plaintext delay=0.00 dsn=4.3.0 status=deferred (450 4.3.0 Error: command failed)",
                rec(None, delivery("tempfail.test", Plaintext, false, Deferred)),
            ),
            (
                "2026-12-03T04:15:15Z blackpony/outbound[9]: to=<x@nullmx.test> relay=none tls=none verified=no level=plaintext delay=0.01 dsn=5.1.10 status=bounced (556 5.1.10 null MX)",
                rec(
                    Some(DAY),
                    delivery("nullmx.test", Plaintext, false, Bounced),
                ),
            ),
            // The outbound server's records, under a session.
            (
                "2026-12-03T04:15:15Z blackpony/outbound[9]: session=0000000A to=<y@Plain.test> relay=mx.plain.test[127.0.10.3]:25 tls=none verified=no level=plaintext delay=0.01 dsn=2.0.0 status=sent (250 2.0.0 Ok)",
                rec(Some(DAY), delivery("plain.test", Plaintext, false, Sent)),
            ),
            (
                "2026-12-03T04:15:15Z blackpony/outbound[9]: session=0000000B refused=message-memory size=70000 in-flight=60000 max-message-memory=100000",
                None,
            ),
            (
                "2026-12-03T04:15:15Z blackpony/outbound[9]: session=0000000B disconnect client=unknown[127.0.0.1]:4 end=quit duration=0.1s",
                None,
            ),
            // Not counted: other events, other programs, broken lines.
            (
                "2026-12-03T04:15:13Z blackpony/inbound[26078]: listening on 127.0.0.1:2600 backend=127.0.0.1:10025",
                None,
            ),
            (
                "2026-12-03T04:15:14Z blackpony/inbound[26078]: session=00000001 connect client=unknown[127.0.0.1]:57570 identity=none",
                None,
            ),
            (
                "Dec  3 04:15:15 vm sendmail[26097]: 6B34FFEY026097: to=<a@b>, stat=Sent",
                None,
            ),
            (
                "2026-12-03T04:15:15Z blackpony/inbound[1]: session=1 disconnect client=unknown[1.2.3.4]:1 tls=none messages=lots",
                None,
            ),
            ("blackpony/inbound[x]: session=1 refused=bad-syntax", None),
            ("", None),
        ];
        for (line, want) in table {
            assert_eq!(&parse_line(line, 2026), want, "{line}");
        }
    }

    #[test]
    fn counting() {
        let mut s = Stats::default();
        for line in [
            "2026-12-03T01:00:00Z blackpony/inbound[1]: session=1 disconnect client=unknown[192.0.2.1]:1 tls=none identity=none messages=2 refused=0",
            "2026-12-03T01:00:00Z blackpony/inbound[1]: session=2 disconnect client=unknown[192.0.2.1]:2 tls=TLSv1.3/X identity=none messages=1 refused=0",
            "2026-12-03T01:00:00Z blackpony/inbound[1]: session=3 disconnect client=unknown[192.0.2.2]:1 tls=none identity=none messages=0 refused=1",
            "2026-12-03T01:00:00Z blackpony/inbound[1]: session=3 refused=command command=XCLIENT client=unknown[192.0.2.2]:1",
            "2026-12-04T01:00:00Z blackpony/deliver[2]: to=<a@plain.test> relay=x[1.1.1.1]:25 tls=none verified=no level=plaintext delay=0 dsn=2.0.0 status=sent (250 ok)",
            "2026-12-04T01:00:00Z blackpony/deliver[2]: to=<b@tls.test> relay=x[1.1.1.1]:25 tls=TLSv1.3/X verified=yes level=authenticated delay=0 dsn=2.0.0 status=sent (250 ok)",
            "2026-12-04T01:00:00Z blackpony/deliver[2]: to=<c@tls.test> relay=x[1.1.1.1]:25 tls=TLSv1.3/X verified=no level=encrypted delay=0 dsn=4.0.0 status=deferred (450 no)",
            "some other line",
        ] {
            s.add_line(line, 2026);
        }
        assert_eq!((s.lines, s.records), (8, 7));
        let d3 = &s.days["2026-12-03"];
        assert_eq!(
            d3.inbound_sessions,
            Tally {
                plaintext: 2,
                tls: 1,
                xpony: 0,
                authenticated: 0
            }
        );
        assert_eq!(d3.inbound_messages.total(), 3);
        assert_eq!(d3.inbound_messages.plaintext, 2);
        let d4 = &s.days["2026-12-04"];
        assert_eq!(
            d4.outbound_delivered,
            Tally {
                plaintext: 1,
                tls: 1,
                xpony: 0,
                authenticated: 1
            }
        );
        assert_eq!(d4.outbound_delivered.encrypted_percent(), Some(50.0));
        assert_eq!(s.refusals["command"], 1);
        assert_eq!(s.results[&DeliveryStatus::Sent], 2);
        assert_eq!(s.results[&DeliveryStatus::Deferred], 1);
        let senders: Vec<&str> = s.top_plaintext_senders(10).iter().map(|p| p.0).collect();
        assert_eq!(senders, ["192.0.2.1", "192.0.2.2"]);
        let receivers: Vec<&str> = s.top_plaintext_receivers(10).iter().map(|p| p.0).collect();
        assert_eq!(receivers, ["plain.test"]);
        assert_eq!(s.top_plaintext_senders(1).len(), 1);
        assert_eq!(Tally::default().encrypted_percent(), None);
    }
}
