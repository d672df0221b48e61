//! Keys remembered per MX host (trust on first use), and the decision what
//! a server's key, or its missing extension, means.
//!
//! One small file per host under `<state-dir>/pins/`, written atomically and
//! synced (file and directory), so a crash never leaves half a pin.

use std::io::Write;
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
        let tmp = path.with_extension("tmp");
        let mut text = format!(
            "host: {}\nkey: {}\nfingerprint: {}\nfirst-seen: {}\nlast-seen: {}\nmax-age: {}\n",
            host.trim_end_matches('.').to_ascii_lowercase(),
            encode_key(&pin.key),
            fingerprint(&pin.key),
            pin.first_seen,
            pin.last_seen,
            pin.max_age
        );
        if let Some(s) = &pin.successor {
            text.push_str(&format!("successor: {}\n", encode_key(s)));
        }
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| self.io(e))
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
            if name.ends_with(".tmp") {
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

fn parse(text: &str) -> Option<Pin> {
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
    })
}

/// What the client knows about a host before and after its EHLO.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// Keys published in DNS for the host.
    pub dns_keys: &'a [PublicKey],
    /// The pin, if any and not expired.
    pub pin: Option<&'a Pin>,
}

/// The verdict on a server's key (or on its not offering the extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict {
    /// The key matches a DNS key: authenticated.
    DnsMatch,
    /// The key matches the pin (or its successor): authenticated.
    PinMatch,
    /// No DNS key, no pin: first contact; encrypted, and pinned now.
    FirstContact,
    /// The key matches neither DNS nor the pin: an impostor, or a key change
    /// the operator has to accept.
    Mismatch { expected: String },
}

impl Evidence<'_> {
    /// Judges the static key the server presented in message 2.
    pub fn judge_key(&self, key: &PublicKey) -> KeyVerdict {
        if !self.dns_keys.is_empty() {
            return if self.dns_keys.contains(key) {
                KeyVerdict::DnsMatch
            } else {
                KeyVerdict::Mismatch {
                    expected: format!("a DNS key ({})", fingerprint(&self.dns_keys[0])),
                }
            };
        }
        match self.pin {
            Some(pin) if pin.accepts(key) => KeyVerdict::PinMatch,
            Some(pin) => KeyVerdict::Mismatch {
                expected: format!("the pinned key {}", fingerprint(&pin.key)),
            },
            None => KeyVerdict::FirstContact,
        }
    }

    /// Whether the server must offer the extension: a host with a DNS key
    /// or a pin that stops offering it is being downgraded (or changed, and
    /// an operator has to say so).
    pub fn requires_extension(&self) -> bool {
        !self.dns_keys.is_empty() || self.pin.is_some()
    }
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

    #[test]
    fn verdicts() {
        let pin = Pin {
            key: [1; 32],
            first_seen: 0,
            last_seen: 0,
            max_age: 10,
            successor: Some([2; 32]),
        };
        let none = Evidence {
            dns_keys: &[],
            pin: None,
        };
        assert_eq!(none.judge_key(&[9; 32]), KeyVerdict::FirstContact);
        assert!(!none.requires_extension());
        let pinned = Evidence {
            dns_keys: &[],
            pin: Some(&pin),
        };
        assert_eq!(pinned.judge_key(&[1; 32]), KeyVerdict::PinMatch);
        assert_eq!(pinned.judge_key(&[2; 32]), KeyVerdict::PinMatch);
        assert!(matches!(
            pinned.judge_key(&[3; 32]),
            KeyVerdict::Mismatch { .. }
        ));
        assert!(pinned.requires_extension());
        let dns = Evidence {
            dns_keys: &[[5; 32]],
            pin: Some(&pin),
        };
        assert_eq!(dns.judge_key(&[5; 32]), KeyVerdict::DnsMatch);
        assert!(
            matches!(dns.judge_key(&[1; 32]), KeyVerdict::Mismatch { .. }),
            "DNS wins over the pin"
        );
        assert!(pin.expired(11) && !pin.expired(10));
    }
}
