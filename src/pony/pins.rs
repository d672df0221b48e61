//! Keys remembered per MX host (trust on first use), and the decision what
//! a server's key, or its missing extension, means.
//!
//! One small file per host under `<state-dir>/pins/`, written atomically and
//! synced (file and directory), so a crash never leaves half a pin.

use std::path::{Path, PathBuf};

use super::keys::{PublicKey, decode_key, encode_key, fingerprint};

/// What we remember about one host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub key: PublicKey,
    /// Unix seconds.
    pub first_seen: u64,
    pub last_seen: u64,
    /// Seconds the server asked us to keep the pin after `last_seen`
    /// (0: until an operator forgets it).
    pub max_age: u64,
    /// A key the server announced it will move to.
    pub successor: Option<PublicKey>,
    /// How the pin came about (informational, shown by `pins list`).
    pub source: PinSource,
}

/// How a pin was created (proto-spec §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinSource {
    /// Trust on first use.
    Tofu,
    /// The key matched a DNS key at first contact.
    Dns,
    /// `blackpony pins accept`.
    Operator,
}

impl PinSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PinSource::Tofu => "tofu",
            PinSource::Dns => "dns",
            PinSource::Operator => "operator",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [PinSource::Tofu, PinSource::Dns, PinSource::Operator]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

impl Pin {
    /// Whether the pin has run out (it is then treated as absent).
    pub fn expired(&self, now: u64) -> bool {
        self.max_age > 0 && now > self.last_seen.saturating_add(self.max_age)
    }

    /// Whether `key` is the pinned key or its announced successor.
    pub fn accepts(&self, key: &PublicKey) -> bool {
        *key == self.key || self.successor.as_ref() == Some(key)
    }
}

/// Why the pin store failed. Pins are security state: a store that cannot
/// be read makes the delivery fail temporarily rather than trust blindly.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("pin store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("pin file {0} is damaged")]
    Damaged(String),
}

/// The pin store.
#[derive(Debug, Clone)]
pub struct PinStore {
    dir: PathBuf,
}

/// A host name as a file name: lower case, and nothing but what host names
/// contain (anything else would be an attempt to escape the directory).
fn file_name(host: &str) -> String {
    host.trim_end_matches('.')
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '-') => c,
            _ => '_',
        })
        .collect()
}

impl PinStore {
    pub fn new(state_dir: &Path) -> Self {
        PinStore {
            dir: state_dir.join("pins"),
        }
    }

    fn io(&self, source: std::io::Error) -> PinError {
        PinError::Io {
            path: self.dir.display().to_string(),
            source,
        }
    }

    /// The pin for `host`, if any.
    pub fn get(&self, host: &str) -> Result<Option<Pin>, PinError> {
        let path = self.dir.join(file_name(host));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        parse(&text)
            .map(Some)
            .ok_or_else(|| PinError::Damaged(path.display().to_string()))
    }

    /// Stores (or replaces) the pin for `host`, durably.
    pub fn put(&self, host: &str, pin: &Pin) -> Result<(), PinError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        let path = self.dir.join(file_name(host));
        let text = encode(host, pin);
        // A temporary name of its own (not `path.with_extension`, which
        // gave mx.example.com and mx.example.org one mx.example.tmp).
        crate::state::replace::replace(&path, text.as_bytes(), 0o644).map_err(|e| self.io(e))
    }

    /// Forgets the pin for `host`; true if there was one.
    pub fn forget(&self, host: &str) -> Result<bool, PinError> {
        match std::fs::remove_file(self.dir.join(file_name(host))) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Every pin, by host name.
    pub fn list(&self) -> Result<Vec<(String, Pin)>, PinError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Temporary files, and those of older versions (`host.tmp`).
            if crate::state::replace::is_temporary(&name) || name.ends_with(".tmp") {
                continue;
            }
            if let Some(pin) = self.get(&name)? {
                out.push((name, pin));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// A pin file's text (what [`PinStore::put`] writes and [`parse`] reads).
pub(crate) fn encode(host: &str, pin: &Pin) -> String {
    let mut text = format!(
        "host: {}\nkey: {}\nfingerprint: {}\nfirst-seen: {}\nlast-seen: {}\nmax-age: {}\nsource: {}\n",
        host.trim_end_matches('.').to_ascii_lowercase(),
        encode_key(&pin.key),
        fingerprint(&pin.key),
        pin.first_seen,
        pin.last_seen,
        pin.max_age,
        pin.source.as_str()
    );
    if let Some(s) = &pin.successor {
        text.push_str(&format!("successor: {}\n", encode_key(s)));
    }
    text
}

/// A pin file's text as a pin; `None` when damaged.
pub(crate) fn parse(text: &str) -> Option<Pin> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    Some(Pin {
        key: decode_key(field("key")?)?,
        first_seen: field("first-seen")?.parse().ok()?,
        last_seen: field("last-seen")?.parse().ok()?,
        max_age: field("max-age")?.parse().ok()?,
        successor: match field("successor") {
            Some(s) => Some(decode_key(s)?),
            None => None,
        },
        // Pins written before the field existed were all first-use pins.
        source: match field("source") {
            Some(s) => PinSource::parse(s)?,
            None => PinSource::Tofu,
        },
    })
}

/// What DNS said about a host's published keys (proto-spec §8.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DnsKeys {
    /// No record (NXDOMAIN, NODATA, or no valid enforced record).
    #[default]
    Absent,
    /// The valid enforced keys (at least one), and whether they (and the
    /// MX record that named the host) were DNSSEC-validated.
    Published { keys: Vec<PublicKey>, dnssec: bool },
    /// The lookup failed (SERVFAIL, timeout): go on without a DNS key, but
    /// create no pin from this contact (§8.4), since the key that DNS would
    /// have named is unknown.
    Indeterminate,
}

impl DnsKeys {
    /// From the result of a TXT lookup.
    pub fn from_records(records: &[String], dnssec: bool) -> Self {
        let keys = super::keys::parse_dns_records(records);
        if keys.is_empty() {
            DnsKeys::Absent
        } else {
            DnsKeys::Published { keys, dnssec }
        }
    }

    fn keys(&self) -> &[PublicKey] {
        match self {
            DnsKeys::Published { keys, .. } => keys,
            _ => &[],
        }
    }
}

/// What the client knows about a host before its EHLO.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// Keys published in DNS for the host.
    pub dns: &'a DnsKeys,
    /// The pin, if any and not expired.
    pub pin: Option<&'a Pin>,
}

/// Why a server key was accepted: the basis of proto-spec §8.3, logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// P1: a key in DNSSEC-signed DNS; overrides pins. Authenticated.
    Dnssec,
    /// P2: the pinned key or its announced successor. Authenticated.
    Pin,
    /// P3: a key published in DNS. Authenticated (§9 explains the trust
    /// this rests on, the same as a certificate checked against an MX name
    /// from the same DNS).
    Dns,
    /// P4: nothing known; encrypted, and pinned now if the server asks.
    FirstContact,
}

impl Basis {
    /// Whether the key was checked against something known beforehand.
    pub fn authenticated(self) -> bool {
        !matches!(self, Basis::FirstContact)
    }

    /// How the log names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Dnssec => "DNSSEC key",
            Basis::Pin => "pinned key",
            Basis::Dns => "DNS key",
            Basis::FirstContact => "first contact",
        }
    }
}

/// The verdict on a server's key (proto-spec §8.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict {
    Accepted(Basis),
    /// The key matches neither the pin nor DNS: an impostor, or a key
    /// change the operator has to accept.
    Mismatch {
        expected: String,
    },
}

impl Evidence<'_> {
    /// Judges the static key the server presented in message 2: the first
    /// rule of §8.3 that applies decides. A valid pin comes before DNS, so
    /// that one forged DNS answer cannot undo what earlier sessions showed;
    /// keys move on through the successor the server announces, or an
    /// operator's `pins accept`.
    pub fn judge_key(&self, key: &PublicKey) -> KeyVerdict {
        let expected = |what: &str, keys: &[PublicKey]| {
            let names: Vec<String> = keys.iter().map(fingerprint).collect();
            KeyVerdict::Mismatch {
                expected: format!("{what} {}", names.join(" or ")),
            }
        };
        // P1: signed DNS is the host's own word, and beats any pin.
        if let DnsKeys::Published { keys, dnssec: true } = self.dns {
            return if keys.contains(key) {
                KeyVerdict::Accepted(Basis::Dnssec)
            } else {
                expected("the DNSSEC-signed DNS key", keys)
            };
        }
        if let Some(pin) = self.pin {
            return if pin.accepts(key) {
                KeyVerdict::Accepted(Basis::Pin)
            } else {
                KeyVerdict::Mismatch {
                    expected: format!("the pinned key {}", fingerprint(&pin.key)),
                }
            };
        }
        let dns = self.dns.keys();
        if dns.is_empty() {
            KeyVerdict::Accepted(Basis::FirstContact)
        } else if dns.contains(key) {
            KeyVerdict::Accepted(Basis::Dns)
        } else {
            expected("the DNS key", dns)
        }
    }

    /// Whether the server must offer the extension: a host with a DNS key
    /// or a pin that stops offering it is being downgraded (or changed, and
    /// an operator has to say so).
    pub fn requires_extension(&self) -> bool {
        !self.dns.keys().is_empty() || self.pin.is_some()
    }
}

/// The longest a client keeps a pin after the last session, whatever the
/// server asks (proto-spec §8.4: at most 365 days).
pub const MAX_PIN_AGE: u64 = 365 * 24 * 3600;

/// The pin after a session that was accepted under `basis` and got as far as
/// the server's first frame (§8.4); `None`: no pin (delete any).
pub fn updated_pin(
    old: Option<&Pin>,
    key: &PublicKey,
    basis: Basis,
    hints: &super::negotiation::ServerHints,
    dns: &DnsKeys,
    now: u64,
) -> Option<Pin> {
    let max_age = u64::from(hints.max_age).min(MAX_PIN_AGE);
    if max_age == 0 {
        return None;
    }
    // A successor equal to the key itself is none.
    let successor = hints.successor.filter(|s| s != key);
    let first_seen = match old {
        Some(old) if old.key == *key => old.first_seen,
        _ => now,
    };
    let source = match (basis, old) {
        (Basis::Pin, Some(old)) => old.source,
        (Basis::Dns | Basis::Dnssec, _) => PinSource::Dns,
        _ => PinSource::Tofu,
    };
    // Nothing to learn from a first contact whose DNS answer is unknown.
    if basis == Basis::FirstContact && *dns == DnsKeys::Indeterminate {
        return None;
    }
    Some(Pin {
        key: *key,
        first_seen,
        last_seen: now,
        max_age,
        successor,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_round_trip() {
        let dir = std::env::temp_dir().join(format!("bp-pins-{}", std::process::id()));
        let store = PinStore::new(&dir);
        assert_eq!(store.get("mx.example").unwrap(), None);
        let pin = Pin {
            key: [1; 32],
            first_seen: 100,
            last_seen: 200,
            max_age: 86400,
            successor: Some([2; 32]),
            source: PinSource::Dns,
        };
        store.put("MX.Example.", &pin).unwrap();
        assert_eq!(store.get("mx.example").unwrap(), Some(pin.clone()));
        assert_eq!(store.list().unwrap(), vec![("mx.example".to_string(), pin)]);
        // A hostile name cannot leave the directory.
        assert_eq!(file_name("../../etc/passwd"), ".._.._etc_passwd");
        assert!(store.forget("mx.example").unwrap());
        assert!(!store.forget("mx.example").unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Two hosts whose names differ only after the last dot, pinned at the
    /// same time (two deliveries): each keeps its own pin, every write
    /// succeeds, and no temporary file is left.
    #[test]
    fn concurrent_pins_of_hosts_differing_after_the_last_dot() {
        let dir = std::env::temp_dir().join(format!("bp-pins-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = PinStore::new(&dir);
        let writers: Vec<_> = [("mx.example.com", 1u8), ("mx.example.org", 2u8)]
            .into_iter()
            .map(|(host, key)| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for round in 0..300u64 {
                        let mine = Pin {
                            last_seen: round,
                            ..pin(key, None)
                        };
                        store.put(host, &mine).map_err(|e| format!("{host}: {e}"))?;
                        let got = store.get(host).map_err(|e| e.to_string())?;
                        if got.as_ref().map(|p| p.key) != Some([key; 32]) {
                            return Err(format!("{host}: round {round}: found {got:?}"));
                        }
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
        let names: Vec<String> = store.list().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["mx.example.com", "mx.example.org"]);
        assert_eq!(std::fs::read_dir(dir.join("pins")).unwrap().count(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn pin(key: u8, successor: Option<u8>) -> Pin {
        Pin {
            key: [key; 32],
            first_seen: 0,
            last_seen: 0,
            max_age: 10,
            successor: successor.map(|s| [s; 32]),
            source: PinSource::Tofu,
        }
    }

    /// proto-spec §8.3, one row per rule and outcome.
    #[test]
    fn verdicts() {
        use Basis::{Dns, Dnssec, FirstContact};
        const PIN: Basis = Basis::Pin;
        let pinned = pin(1, Some(2));
        let dns5 = DnsKeys::Published {
            keys: vec![[5; 32], [6; 32]],
            dnssec: false,
        };
        let signed5 = DnsKeys::Published {
            keys: vec![[5; 32]],
            dnssec: true,
        };
        let mismatch = None;
        // (DNS, pin, presented key, verdict (None = mismatch), XPONY required)
        type Case<'a> = (&'a DnsKeys, Option<&'a Pin>, u8, Option<Basis>, bool);
        let cases: &[Case] = &[
            (&DnsKeys::Absent, None, 9, Some(FirstContact), false),
            (&DnsKeys::Indeterminate, None, 9, Some(FirstContact), false),
            (&DnsKeys::Absent, Some(&pinned), 1, Some(PIN), true),
            (&DnsKeys::Absent, Some(&pinned), 2, Some(PIN), true),
            (&DnsKeys::Absent, Some(&pinned), 3, mismatch, true),
            (&dns5, None, 5, Some(Dns), true),
            (&dns5, None, 6, Some(Dns), true),
            (&dns5, None, 1, mismatch, true),
            // A valid pin comes first: DNS alone cannot replace it...
            (&dns5, Some(&pinned), 5, mismatch, true),
            // ...nor refuse what it vouches for.
            (&dns5, Some(&pinned), 1, Some(PIN), true),
            // Signed DNS beats the pin, both ways.
            (&signed5, Some(&pinned), 5, Some(Dnssec), true),
            (&signed5, Some(&pinned), 1, mismatch, true),
            (&signed5, None, 6, mismatch, true),
        ];
        for (i, (dns, pin, key, want, required)) in cases.iter().enumerate() {
            let evidence = Evidence { dns, pin: *pin };
            let got = evidence.judge_key(&[*key; 32]);
            match want {
                Some(basis) => assert_eq!(got, KeyVerdict::Accepted(*basis), "case {i}"),
                None => assert!(matches!(got, KeyVerdict::Mismatch { .. }), "case {i}"),
            }
            assert_eq!(evidence.requires_extension(), *required, "case {i}");
        }
        assert!(pinned.expired(11) && !pinned.expired(10));
    }

    /// proto-spec §8.4.
    #[test]
    fn pin_updates() {
        use crate::pony::negotiation::ServerHints;
        let hints = |max_age: u32, successor: Option<u8>| ServerHints {
            max_age,
            successor: successor.map(|s| [s; 32]),
            ..ServerHints::default()
        };
        let none = DnsKeys::Absent;
        let old = pin(1, Some(2));
        let now = 1000;

        // First contact: pinned with what the server asked, capped.
        let p = updated_pin(
            None,
            &[9; 32],
            Basis::FirstContact,
            &hints(u32::MAX, None),
            &none,
            now,
        )
        .unwrap();
        assert_eq!((p.key, p.first_seen, p.last_seen), ([9; 32], now, now));
        assert_eq!((p.max_age, p.source), (MAX_PIN_AGE, PinSource::Tofu));
        // ... but not when DNS could not be asked, nor when max-age is 0.
        let unknown = DnsKeys::Indeterminate;
        assert_eq!(
            updated_pin(
                None,
                &[9; 32],
                Basis::FirstContact,
                &hints(60, None),
                &unknown,
                now
            ),
            None
        );
        assert_eq!(
            updated_pin(
                Some(&old),
                &[1; 32],
                Basis::Pin,
                &hints(0, None),
                &none,
                now
            ),
            None
        );
        // The same key again: first_seen kept, successor replaced.
        let p = updated_pin(
            Some(&old),
            &[1; 32],
            Basis::Pin,
            &hints(60, Some(7)),
            &none,
            now,
        )
        .unwrap();
        assert_eq!((p.first_seen, p.last_seen, p.max_age), (0, now, 60));
        assert_eq!(p.successor, Some([7; 32]));
        // The successor took over: it is the key now, first seen now.
        let p = updated_pin(
            Some(&old),
            &[2; 32],
            Basis::Pin,
            &hints(60, Some(2)),
            &none,
            now,
        )
        .unwrap();
        assert_eq!((p.key, p.first_seen, p.successor), ([2; 32], now, None));
        // A DNS-matched first contact says so.
        let dns = DnsKeys::Published {
            keys: vec![[5; 32]],
            dnssec: false,
        };
        let p = updated_pin(None, &[5; 32], Basis::Dns, &hints(60, None), &dns, now).unwrap();
        assert_eq!(p.source, PinSource::Dns);
    }

    #[test]
    fn old_pin_files_still_read() {
        let text = format!(
            "host: mx.example\nkey: {}\nfirst-seen: 1\nlast-seen: 2\nmax-age: 3\n",
            encode_key(&[4; 32])
        );
        let p = parse(&text).unwrap();
        assert_eq!((p.key, p.source), ([4; 32], PinSource::Tofu));
        assert_eq!(parse(&format!("{text}source: gossip\n")), None);
    }
}
