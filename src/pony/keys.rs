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

use std::io::Write;
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
    #[error("{0} exists; not overwriting a host key (use --force to replace it)")]
    Exists(String),
    #[error("cannot get random bytes for a key: {0}")]
    Random(String),
}

const HEADER: &str = "# blackpony host key (X25519). Private: keep it readable only by blackpony.";

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
    let text = Zeroizing::new(format!(
        "{HEADER}\nprivate-key: {}\n",
        B64.encode(pair.secret_bytes().as_ref())
    ));
    let io = |source| KeyError::Io {
        path: shown.clone(),
        source,
    };
    let tmp = path.with_extension("tmp");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(pair)
}

/// Reads a key file.
pub fn load_file(path: &Path) -> Result<Keypair, KeyError> {
    let shown = path.display().to_string();
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: shown.clone(),
            source,
        })?,
    );
    let encoded = text
        .lines()
        .find_map(|l| l.strip_prefix("private-key:"))
        .ok_or_else(|| KeyError::Format(shown.clone()))?;
    let bytes = Zeroizing::new(
        B64.decode(encoded.trim())
            .map_err(|_| KeyError::Format(shown.clone()))?,
    );
    let secret: [u8; KEY_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Format(shown))?;
    Ok(Keypair::from_secret(secret))
}

/// The DNS name of the key record for an MX host.
pub fn dns_name(mx_host: &str) -> String {
    format!("_xpony._tcp.{}", mx_host.trim_end_matches('.'))
}

/// The TXT record text that publishes `key`.
pub fn dns_record(key: &PublicKey) -> String {
    format!("v=XPONY1; k=x25519; p={}", encode_key(key))
}

/// The keys in a set of TXT strings (records that are not XPONY1 records,
/// or are malformed, are skipped: DNS may hold other TXT data there).
pub fn parse_dns_records(records: &[String]) -> Vec<PublicKey> {
    records.iter().filter_map(|r| parse_dns_record(r)).collect()
}

/// One TXT record in tag-value form (RFC 6376 §3.2): `v` must come first
/// and be `XPONY1`; `k` defaults to and must be `x25519`; `p` is the key.
pub fn parse_dns_record(record: &str) -> Option<PublicKey> {
    let mut tags = record
        .split(';')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.split_once('=').map(|(k, v)| (k.trim(), v.trim())));
    match tags.next()?? {
        ("v", "XPONY1") => {}
        _ => return None,
    }
    let mut key = None;
    for tag in tags {
        match tag? {
            ("k", kind) if !kind.eq_ignore_ascii_case("x25519") => return None,
            // Folding white space may split base64 (RFC 6376 §3.2).
            ("p", value) => {
                let joined: String = value.split_whitespace().collect();
                key = Some(decode_key(&joined)?);
            }
            _ => {}
        }
    }
    key
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
        std::fs::write(dir.join("bad.key"), "private-key: not base64!\n").unwrap();
        assert!(matches!(
            load_file(&dir.join("bad.key")),
            Err(KeyError::Format(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn dns_records() {
        let key = [7u8; 32];
        let record = dns_record(&key);
        assert_eq!(parse_dns_record(&record), Some(key));
        let b64 = encode_key(&key);
        let cases: &[(String, Option<PublicKey>)] = &[
            (format!("v=XPONY1;p={b64}"), Some(key)),
            (
                format!("v=XPONY1; k=X25519; p={} {}", &b64[..20], &b64[20..]),
                Some(key),
            ),
            (format!("p={b64}; v=XPONY1"), None),
            (format!("v=XPONY2; p={b64}"), None),
            (format!("v=XPONY1; k=ed25519; p={b64}"), None),
            ("v=XPONY1; p=short".to_string(), None),
            ("v=spf1 -all".to_string(), None),
            ("".to_string(), None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_dns_record(text), *want, "{text}");
        }
        assert_eq!(dns_name("mx.example.org."), "_xpony._tcp.mx.example.org");
        assert!(fingerprint(&key).starts_with("SHA256:"));
    }
}
