//! Host keys and the key records published in DNS.
//!
//! A host key file holds one X25519 private key, is created with mode 0600,
//! and is used for nothing but the blackpony extension (a Noise static key
//! is never reused, for instance as an age key). Public keys are shown in
//! base64 (44 characters); fingerprints are `SHA256:` and the base64 of the
//! SHA-256 of the public key.
//!
//! DNS key records use DKIM's tag-value syntax (RFC 6376 §3.2) in a TXT
//! record at `_xpony._tcp.<mx-host>`: `v=XPONY1; k=x25519; p=<base64 key>`.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::noise::{KEY_LEN, Keypair};

/// A public key as 32 bytes.
pub type PublicKey = [u8; KEY_LEN];

/// Why a key could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: not a blackpony host key file")]
    Format(String),
    /// proto-spec §7: a private key file group or others can read or write
    /// MUST NOT be used (the key may already be another user's).
    #[error(
        "{path}: a private key readable or writable by others (mode {mode:04o}); refusing it (proto-spec §7): chmod 0600 {path}, owned by the user blackpony runs as"
    )]
    Exposed { path: String, mode: u32 },
    #[error("{0} exists; not overwriting a host key (use --force to replace it)")]
    Exists(String),
    #[error("cannot get random bytes for a key: {0}")]
    Random(String),
}

/// The comment `keygen` writes above the key (proto-spec §7 allows `#`
/// comment lines in a key file).
const HEADER: &str = "# blackpony host key (X25519). Private: keep it readable only by blackpony.";

/// The prefix of the key line in files written before proto-spec draft 2,
/// still read.
const OLD_PREFIX: &str = "private-key:";

/// Base64 of a public key.
pub fn encode_key(key: &PublicKey) -> String {
    B64.encode(key)
}

/// A public key from base64 (exactly 32 bytes).
pub fn decode_key(text: &str) -> Option<PublicKey> {
    B64.decode(text.trim()).ok()?.try_into().ok()
}

/// `SHA256:<base64>` of the public key, as logs and `pins` show it.
pub fn fingerprint(key: &PublicKey) -> String {
    format!(
        "SHA256:{}",
        B64.encode(Sha256::digest(key)).trim_end_matches('=')
    )
}

/// Writes a new key file with mode 0600 (never over an existing one unless
/// `force`). Returns the key pair.
pub fn generate_file(path: &Path, force: bool) -> Result<Keypair, KeyError> {
    let shown = path.display().to_string();
    if path.exists() && !force {
        return Err(KeyError::Exists(shown));
    }
    let pair = Keypair::generate().map_err(|e| KeyError::Random(e.to_string()))?;
    let text = key_file_text(&pair);
    let io = |source| KeyError::Io {
        path: shown.clone(),
        source,
    };
    // Only the owner may read the key (mode 0600 from its creation on).
    crate::state::replace::replace(path, text.as_bytes(), 0o600).map_err(io)?;
    Ok(pair)
}

/// A key file's text (proto-spec §7): the base64 of the private key and
/// LF, below a comment; wiped from memory when dropped.
pub fn key_file_text(pair: &Keypair) -> Zeroizing<String> {
    Zeroizing::new(format!(
        "{HEADER}\n{}\n",
        B64.encode(&pair.secret_bytes()[..])
    ))
}

/// The permission bits that make a private key file unsafe to use: any
/// access for group or others (proto-spec §7 says read or write; execute
/// on a key file is as wrong, and `ssh` refuses the same mask). `None` when
/// the file is private. `blackpony check` applies the same rule to every
/// private key it is given.
pub fn exposed_mode(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Reads a key file, refusing one others can read or write (proto-spec §7).
pub fn load_file(path: &Path) -> Result<Keypair, KeyError> {
    let shown = path.display().to_string();
    let io = |source| KeyError::Io {
        path: shown.clone(),
        source,
    };
    // The mode of the file opened, not of the path looked up again.
    let mut file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if let Some(mode) = exposed_mode(&meta) {
        return Err(KeyError::Exposed { path: shown, mode });
    }
    let mut text = Zeroizing::new(String::new());
    std::io::Read::read_to_string(&mut file, &mut text).map_err(io)?;
    parse_key_file(&text).ok_or(KeyError::Format(shown))
}

/// The private key in a key file's text (proto-spec §7): lines beginning
/// with `#` and empty lines are ignored; exactly one other line holds the
/// canonical base64 of the 32-octet key, alone or (files written before
/// draft 2) after `private-key:`. White space around it is ignored.
pub fn parse_key_file(text: &str) -> Option<Keypair> {
    let mut keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = keys.next()?;
    if keys.next().is_some() {
        return None;
    }
    let encoded = line.strip_prefix(OLD_PREFIX).map_or(line, str::trim_start);
    let bytes = Zeroizing::new(B64.decode(encoded).ok()?);
    let secret: [u8; KEY_LEN] = bytes.as_slice().try_into().ok()?;
    Some(Keypair::from_secret(secret))
}

/// The DNS name of the key record for an MX host.
pub fn dns_name(mx_host: &str) -> String {
    format!("_xpony._tcp.{}", mx_host.trim_end_matches('.'))
}

/// The TXT record text that publishes `key`.
pub fn dns_record(key: &PublicKey) -> String {
    format!("v=XPONY1; k=x25519; p={}", encode_key(key))
}

/// What one TXT record at `_xpony._tcp.<mx-host>` says (proto-spec §8.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsRecord {
    /// Not an XPONY record (its first tag is not `v=XPONY1`): other TXT
    /// data may live there too, so it is ignored without a word.
    NotXpony,
    /// An XPONY record that breaks §8.2: ignored, and worth a log line.
    Invalid(DnsRecordError),
    /// A key; `testing` (flag `t=y`) keys are never enforced.
    Key { key: PublicKey, testing: bool },
}

/// Why an XPONY record is invalid (proto-spec §8.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsRecordError {
    #[error("not a tag list (RFC 6376 §3.2 syntax)")]
    Syntax,
    #[error("tag {0} appears twice")]
    Duplicate(String),
    #[error("unknown key type k={0}")]
    KeyType(String),
    #[error("no p= tag")]
    NoKey,
    #[error("empty p= tag")]
    EmptyKey,
    #[error("p= is not the base64 of 32 octets")]
    BadKey,
    #[error("t= is not a list of flags separated by ':'")]
    BadFlags,
}

/// The enforced keys (the set D of proto-spec §8.2) among a set of TXT
/// records: records that are not XPONY1 records, invalid ones and testing
/// ones (`t=y`) are left out.
pub fn parse_dns_records(records: &[String]) -> Vec<PublicKey> {
    records
        .iter()
        .filter_map(|r| match parse_dns_record(r) {
            DnsRecord::Key {
                key,
                testing: false,
            } => Some(key),
            _ => None,
        })
        .collect()
}

/// Folding white space inside a tag list (RFC 6376 §2.8, §3.2).
fn is_fws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// One `tag-spec`: `[FWS] tag-name [FWS] "=" [FWS] tag-value [FWS]`, with
/// `tag-name = ALPHA *(ALPHA / DIGIT / "_")` and a value of VALCHARs
/// (%x21-3A / %x3C-7E) and inner white space.
fn tag_spec(spec: &str) -> Option<(&str, &str)> {
    let (name, value) = spec.split_once('=')?;
    let (name, value) = (name.trim_matches(is_fws), value.trim_matches(is_fws));
    let mut chars = name.chars();
    let name_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    let value_ok = value
        .chars()
        .all(|c| is_fws(c) || (c.is_ascii_graphic() && c != ';'));
    (name_ok && value_ok).then_some((name, value))
}

/// One TXT record (its character-strings already joined, proto-spec
/// §8.2) in tag-value form (RFC 6376 §3.2): `v=XPONY1` first, `k`
/// (default and only value `x25519`), `p` the key with white space
/// removed, `t` flags separated by `:` (`y`: testing); other tags are
/// ignored, a tag given twice makes the record invalid.
pub fn parse_dns_record(record: &str) -> DnsRecord {
    let mut specs: Vec<&str> = record.split(';').collect();
    // `tag-list = tag-spec *(";" tag-spec) [";"]`: one trailing ";" (with
    // white space after it) ends the list.
    if specs.len() > 1
        && specs
            .last()
            .is_some_and(|s| s.trim_matches(is_fws).is_empty())
    {
        specs.pop();
    }
    if specs.first().and_then(|s| tag_spec(s)) != Some(("v", "XPONY1")) {
        return DnsRecord::NotXpony;
    }
    let mut tags: Vec<(&str, &str)> = Vec::new();
    for spec in specs {
        let Some((name, value)) = tag_spec(spec) else {
            return DnsRecord::Invalid(DnsRecordError::Syntax);
        };
        if tags.iter().any(|(n, _)| *n == name) {
            return DnsRecord::Invalid(DnsRecordError::Duplicate(name.into()));
        }
        tags.push((name, value));
    }
    let tag = |name: &str| tags.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    if let Some(kind) = tag("k")
        && !kind.eq_ignore_ascii_case("x25519")
    {
        return DnsRecord::Invalid(DnsRecordError::KeyType(kind.into()));
    }
    let Some(p) = tag("p") else {
        return DnsRecord::Invalid(DnsRecordError::NoKey);
    };
    // §8.2: white space inside the value is removed before decoding.
    let joined: String = p.chars().filter(|&c| !is_fws(c)).collect();
    if joined.is_empty() {
        return DnsRecord::Invalid(DnsRecordError::EmptyKey);
    }
    let Some(key) = decode_key(&joined) else {
        return DnsRecord::Invalid(DnsRecordError::BadKey);
    };
    // §8.2: `t = flag *([FWS] ":" [FWS] flag)`, a flag of letters, digits
    // and hyphens (white space around the colons only).
    let mut testing = false;
    if let Some(t) = tag("t") {
        for flag in t.split(':').map(|f| f.trim_matches(is_fws)) {
            if flag.is_empty() || !flag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return DnsRecord::Invalid(DnsRecordError::BadFlags);
            }
            testing |= flag == "y";
        }
    }
    DnsRecord::Key { key, testing }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_and_mode() {
        let dir = std::env::temp_dir().join(format!("bp-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("host.key");
        let pair = generate_file(&path, false).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            generate_file(&path, false),
            Err(KeyError::Exists(_))
        ));
        let loaded = load_file(&path).unwrap();
        assert_eq!(loaded.public(), pair.public());
        // What keygen writes: the §7 form (base64 and LF) below a comment.
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("# ") && text.ends_with("=\n"),
            "{text}"
        );
        assert_eq!(B64.decode(lines[1]).unwrap().len(), 32);
        // Readable or writable by group or others: refused, whatever the
        // text (proto-spec §7 MUST); 0400 is as private as 0600.
        for (mode, refused) in [(0o640, true), (0o604, true), (0o620, true), (0o400, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let got = load_file(&path);
            assert_eq!(
                matches!(got, Err(KeyError::Exposed { mode: m, .. }) if m == mode),
                refused,
                "{mode:o}: {got:?}"
            );
        }
        let bad = dir.join("bad.key");
        std::fs::write(&bad, "private-key: not base64!\n").unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load_file(&bad), Err(KeyError::Format(_))));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// proto-spec §7: the base64 of the key and LF, with `#` comments and
    /// empty lines around it, and the `private-key:` form of earlier files.
    #[test]
    fn key_file_forms() {
        let secret = [0x42u8; 32];
        let b64 = B64.encode(secret);
        let public = Keypair::from_secret(secret).public();
        let read = |text: &str| parse_key_file(text).map(|k| k.public());
        for text in [
            format!("{b64}\n"),
            b64.clone(),
            format!("# blackpony host key\n{b64}\n"),
            format!("\n# one\n# two\n\n  {b64}  \r\n\n"),
            format!("# blackpony host key (X25519).\nprivate-key: {b64}\n"),
            format!("private-key:{b64}"),
        ] {
            assert_eq!(read(&text), Some(public), "{text:?}");
        }
        let mut non_canonical = b64.clone();
        non_canonical.replace_range(42..43, "J");
        for text in [
            String::new(),
            "# only a comment\n".to_string(),
            format!("{b64}\n{b64}\n"),
            format!("{}\n", &b64[..43]),
            format!("{non_canonical}\n"),
            format!("{}\n", B64.encode([1u8; 31])),
            format!("secret: {b64}\n"),
            format!("{b64} # comment\n"),
        ] {
            assert_eq!(read(&text), None, "{text:?}");
        }
    }

    #[test]
    fn dns_records() {
        let key = [7u8; 32];
        let record = dns_record(&key);
        let valid = |testing| DnsRecord::Key { key, testing };
        assert_eq!(parse_dns_record(&record), valid(false));
        let b64 = encode_key(&key);
        let invalid = DnsRecord::Invalid;
        let cases: &[(String, DnsRecord)] = &[
            (format!("v=XPONY1;p={b64}"), valid(false)),
            (
                format!("v=XPONY1; k=X25519; p={} {}", &b64[..20], &b64[20..]),
                valid(false),
            ),
            (format!(" v = XPONY1 ; p = {b64} ; "), valid(false)),
            (format!("v=XPONY1; p={b64}; t=y"), valid(true)),
            (format!("v=XPONY1; p={b64}; t=s : y"), valid(true)),
            (format!("v=XPONY1; p={b64}; t=s"), valid(false)),
            (format!("v=XPONY1; x_1=two words; p={b64}"), valid(false)),
            (format!("p={b64}; v=XPONY1"), DnsRecord::NotXpony),
            (format!("v=XPONY2; p={b64}"), DnsRecord::NotXpony),
            (format!("v=xpony1; p={b64}"), DnsRecord::NotXpony),
            ("v=spf1 -all".to_string(), DnsRecord::NotXpony),
            ("".to_string(), DnsRecord::NotXpony),
            (
                format!("v=XPONY1; k=ed25519; p={b64}"),
                invalid(DnsRecordError::KeyType("ed25519".into())),
            ),
            (
                "v=XPONY1; p=short".to_string(),
                invalid(DnsRecordError::BadKey),
            ),
            (
                "v=XPONY1; p=".to_string(),
                invalid(DnsRecordError::EmptyKey),
            ),
            (
                "v=XPONY1; k=x25519".to_string(),
                invalid(DnsRecordError::NoKey),
            ),
            (
                format!("v=XPONY1; p={b64}; p={b64}"),
                invalid(DnsRecordError::Duplicate("p".into())),
            ),
            (
                format!("v=XPONY1; v=XPONY1; p={b64}"),
                invalid(DnsRecordError::Duplicate("v".into())),
            ),
            (
                format!("v=XPONY1;; p={b64}"),
                invalid(DnsRecordError::Syntax),
            ),
            (
                format!("v=XPONY1; p {b64}"),
                invalid(DnsRecordError::Syntax),
            ),
            (
                format!("v=XPONY1; 1p={b64}"),
                invalid(DnsRecordError::Syntax),
            ),
            (
                format!("v=XPONY1; p=\u{e9}{b64}"),
                invalid(DnsRecordError::Syntax),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_dns_record(text), *want, "{text}");
        }
        // Testing keys are never enforced (§8.2: D_test).
        let other = [8u8; 32];
        let records = [
            format!("v=XPONY1; p={b64}"),
            format!("v=XPONY1; p={}; t=y", encode_key(&other)),
            "v=spf1 -all".to_string(),
        ];
        assert_eq!(parse_dns_records(&records), vec![key]);
        assert_eq!(dns_name("mx.example.org."), "_xpony._tcp.mx.example.org");
        assert!(fingerprint(&key).starts_with("SHA256:"));
    }
}
