//! Sealing: which age keys a message is sealed to, and the sealing itself
//! (age v1, X25519 recipients). Pure functions over bytes: the plaintext
//! exists only in memory, streamed through the encryptor into the
//! ciphertext buffer.

use std::collections::HashMap;
use std::io::Write;

use age::x25519;

use super::sealed::{self, SealedEnvelope};
use crate::smtp::envelope::domain_of;

/// Why the configured keys cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("at least one --domain is needed (the domains this relay accepts mail for)")]
    NoDomain,
    #[error("--domain {0:?} is not a domain name")]
    BadDomain(String),
    #[error("{what} {key:?} is not an age X25519 recipient (age1…): {why}")]
    BadRecipient {
        what: &'static str,
        key: String,
        why: &'static str,
    },
    #[error("--mailbox-key {0:?} must be ADDRESS=age1… (e.g. alice@example.org=age1…)")]
    BadMailboxKey(String),
    #[error("--mailbox-key for {address}: {domain} is not a --domain of this relay")]
    MailboxOutsideDomains { address: String, domain: String },
    #[error("no key to seal to: give --recipient-key (the domain's key) or --mailbox-key")]
    NoKeys,
}

/// Why one message could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("no key for {0}")]
    NoKey(String),
    #[error("sealed format: {0}")]
    Format(#[from] sealed::SealedError),
    #[error("age: {0}")]
    Age(String),
}

/// The domains served and the keys messages are sealed to.
#[derive(Debug, Clone)]
pub struct SealKeys {
    domains: Vec<String>,
    domain_keys: Vec<x25519::Recipient>,
    /// By lower-cased address.
    mailbox_keys: HashMap<String, Vec<x25519::Recipient>>,
}

/// Parses one age recipient (`age1…`).
pub fn parse_recipient(what: &'static str, key: &str) -> Result<x25519::Recipient, KeyError> {
    key.trim().parse().map_err(|why| KeyError::BadRecipient {
        what,
        key: key.to_string(),
        why,
    })
}

impl SealKeys {
    /// Checks everything an operator can get wrong, at start.
    /// `mailbox_keys` are `address=age1…` as given to `--mailbox-key`; one
    /// address may have several.
    pub fn new(
        domains: &[String],
        domain_keys: &[String],
        mailbox_keys: &[String],
    ) -> Result<SealKeys, KeyError> {
        if domains.is_empty() {
            return Err(KeyError::NoDomain);
        }
        let mut served = Vec::new();
        for d in domains {
            let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
            let ok = !d.is_empty()
                && !d.starts_with('.')
                && d.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b >= 0x80);
            if !ok {
                return Err(KeyError::BadDomain(d));
            }
            served.push(d);
        }
        let domain_keys = domain_keys
            .iter()
            .map(|k| parse_recipient("--recipient-key", k))
            .collect::<Result<Vec<_>, _>>()?;
        let mut by_mailbox: HashMap<String, Vec<x25519::Recipient>> = HashMap::new();
        for entry in mailbox_keys {
            let (address, key) = entry
                .rsplit_once('=')
                .filter(|(a, _)| a.contains('@'))
                .ok_or_else(|| KeyError::BadMailboxKey(entry.clone()))?;
            let address = address.trim().to_lowercase();
            let domain =
                domain_of(&address).ok_or_else(|| KeyError::BadMailboxKey(entry.clone()))?;
            if !served.contains(&domain) {
                return Err(KeyError::MailboxOutsideDomains { address, domain });
            }
            let key = parse_recipient("--mailbox-key", key)?;
            by_mailbox.entry(address).or_default().push(key);
        }
        if domain_keys.is_empty() && by_mailbox.is_empty() {
            return Err(KeyError::NoKeys);
        }
        Ok(SealKeys {
            domains: served,
            domain_keys,
            mailbox_keys: by_mailbox,
        })
    }

    /// The domains served, lower-cased.
    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// Whether `recipient`'s domain is one of ours.
    pub fn serves(&self, recipient: &str) -> bool {
        domain_of(&self.mailbox(recipient)).is_some_and(|d| self.domains.contains(&d))
    }

    /// The mailbox `recipient` names, lower-cased. RFC 5321 §4.5.1: an MX
    /// MUST accept `RCPT TO:<Postmaster>` without a domain; it is the
    /// postmaster of the first domain served.
    fn mailbox(&self, recipient: &str) -> String {
        if recipient.eq_ignore_ascii_case("postmaster") {
            let first = self.domains.first().map_or("", String::as_str);
            return format!("postmaster@{first}");
        }
        recipient.to_lowercase()
    }

    /// The keys one recipient's mail is sealed to: its mailbox's own keys,
    /// else the domain's (none: the recipient cannot be accepted).
    pub fn keys_of(&self, recipient: &str) -> &[x25519::Recipient] {
        match self.mailbox_keys.get(&self.mailbox(recipient)) {
            Some(keys) => keys,
            None => &self.domain_keys,
        }
    }

    /// The union of the recipients' keys, each once, in a stable order.
    pub fn keys_for(&self, recipients: &[String]) -> Result<Vec<x25519::Recipient>, SealError> {
        let mut keys: Vec<x25519::Recipient> = Vec::new();
        for rcpt in recipients {
            let own = self.keys_of(rcpt);
            if own.is_empty() {
                return Err(SealError::NoKey(rcpt.clone()));
            }
            for k in own {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
        Ok(keys)
    }
}

/// Seals one message (DATA form, as the receiving session hands it over)
/// with its envelope to `keys`: an age v1 file, binary.
pub fn seal(
    keys: &[x25519::Recipient],
    envelope: &SealedEnvelope,
    wire: &[u8],
) -> Result<Vec<u8>, SealError> {
    let age_err = |e: &dyn std::fmt::Display| SealError::Age(e.to_string());
    // Checked before any key material is touched.
    sealed::format(envelope, b"")?;
    let encryptor = age::Encryptor::with_recipients(keys.iter().map(|k| k as &dyn age::Recipient))
        .map_err(|e| age_err(&e))?;
    // age adds a header (~100 octets a key) and 16 octets a 64 KiB chunk.
    let mut out = Vec::with_capacity(wire.len() + 256 + 128 * keys.len() + wire.len() / 4096);
    let mut writer = encryptor.wrap_output(&mut out).map_err(|e| age_err(&e))?;
    sealed::write_header(envelope, &mut writer).map_err(|e| age_err(&e))?;
    crate::smtp::data::unstuff_to(wire, &mut writer).map_err(|e| age_err(&e))?;
    writer.flush().map_err(|e| age_err(&e))?;
    writer.finish().map_err(|e| age_err(&e))?;
    Ok(out)
}

/// Age identities as read from key files (`AGE-SECRET-KEY-1…` lines).
pub type Identities = Vec<Box<dyn age::Identity + Send + Sync>>;

/// Opens a sealed file with `identities`: the envelope and the message.
/// The one decryption of the relay's files: `blackpony open` and `fetch`
/// both come here.
pub fn open(
    identities: &[Box<dyn age::Identity + Send + Sync>],
    file: &[u8],
) -> Result<(SealedEnvelope, Vec<u8>), OpenError> {
    use std::io::Read;
    let decryptor =
        age::Decryptor::new_buffered(file).map_err(|e| OpenError::Age(e.to_string()))?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => OpenError::NotForThisKey,
            other => OpenError::Age(other.to_string()),
        })?;
    let mut plain = Vec::with_capacity(file.len());
    reader
        .read_to_end(&mut plain)
        .map_err(|e| OpenError::Age(e.to_string()))?;
    let (envelope, message) = sealed::parse(&plain)?;
    // The message is the tail of the plaintext: drop the header in place
    // rather than copy a message that may be large.
    let header = plain.len() - message.len();
    plain.drain(..header);
    Ok((envelope, plain))
}

/// Why a sealed file cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("not sealed to this key")]
    NotForThisKey,
    #[error("age: {0}")]
    Age(String),
    #[error("{0}")]
    Format(#[from] sealed::SealedError),
}

/// Reads the age identities of one key file (`age-keygen` or `blackpony
/// keygen --age` format: `AGE-SECRET-KEY-1…` lines, `#` comments). The
/// text is wiped from memory once parsed.
pub fn load_identities(path: &std::path::Path) -> Result<Identities, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| format!("{shown}: {e}"))?;
    parse_identities(&text).map_err(|e| format!("{shown}: {e}"))
}

/// The identities in a key file's text.
fn parse_identities(text: &str) -> Result<Identities, String> {
    let identities = age::IdentityFile::from_buffer(text.as_bytes())
        .map_err(|e| e.to_string())?
        .into_identities()
        .map_err(|e| e.to_string())?;
    if identities.is_empty() {
        return Err("no identity in it (no AGE-SECRET-KEY-1… line)".into());
    }
    Ok(identities)
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    fn keypair() -> (x25519::Identity, String) {
        let id = x25519::Identity::generate();
        let public = id.to_public().to_string();
        (id, public)
    }

    fn env(to: &[&str]) -> SealedEnvelope {
        SealedEnvelope {
            mail_from: "s@x.example".into(),
            rcpt_to: to.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn configuration_errors() {
        let (_, k) = keypair();
        let d = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (domains, domain keys, mailbox keys, error wanted)
        type Case<'a> = (Vec<String>, Vec<String>, Vec<String>, &'a str);
        let cases: Vec<Case> = vec![
            (d(&[]), d(&[&k]), d(&[]), "at least one --domain"),
            (d(&["a b"]), d(&[&k]), d(&[]), "not a domain name"),
            (
                d(&["example.org"]),
                d(&["age1nope"]),
                d(&[]),
                "not an age X25519 recipient",
            ),
            (d(&["example.org"]), d(&[]), d(&[]), "no key to seal to"),
            (
                d(&["example.org"]),
                d(&[&k]),
                d(&["alice@example.org"]),
                "must be ADDRESS=age1",
            ),
            (
                d(&["example.org"]),
                d(&[&k]),
                d(&[&format!("alice@other.example={k}")]),
                "other.example is not a --domain",
            ),
            (
                d(&["example.org"]),
                d(&[&k]),
                d(&["alice@example.org=AGE-SECRET-KEY-1XYZ"]),
                "not an age X25519 recipient",
            ),
        ];
        for (domains, dk, mk, want) in cases {
            let err = SealKeys::new(&domains, &dk, &mk).unwrap_err().to_string();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
    }

    #[test]
    fn per_mailbox_keys_and_the_domain_key() {
        let (domain_id, domain_pub) = keypair();
        let (alice_id, alice_pub) = keypair();
        let (bob_id, bob_pub) = keypair();
        let keys = SealKeys::new(
            &["Example.ORG.".into()],
            &[domain_pub],
            &[
                format!("Alice@example.org={alice_pub}"),
                format!("bob@example.org={bob_pub}"),
            ],
        )
        .unwrap();
        assert!(keys.serves("carol@EXAMPLE.org"));
        assert!(!keys.serves("carol@example.net"));
        let wire = b"Subject: t\r\n\r\n..dot line\r\nbody\r\n.\r\n";
        // (recipients, identity, can open)
        let cases: Vec<(&[&str], &x25519::Identity, bool)> = vec![
            (&["alice@example.org"], &alice_id, true),
            (&["alice@example.org"], &domain_id, false),
            (&["alice@example.org"], &bob_id, false),
            (&["alice@example.org", "bob@example.org"], &alice_id, true),
            (&["alice@example.org", "bob@example.org"], &bob_id, true),
            (&["alice@example.org", "bob@example.org"], &domain_id, false),
            (&["carol@example.org"], &domain_id, true),
            (&["carol@example.org"], &alice_id, false),
            (&["carol@example.org", "ALICE@example.org"], &alice_id, true),
        ];
        for (to, id, opens) in cases {
            let e = env(to);
            let file = seal(&keys.keys_for(&e.rcpt_to).unwrap(), &e, wire).unwrap();
            assert!(file.starts_with(b"age-encryption.org/v1\n"));
            assert!(memchr::memmem::find(&file, b"dot line").is_none());
            let boxed: Identities = vec![Box::new(id.clone())];
            match open(&boxed, &file) {
                Ok((back, message)) => {
                    assert!(opens, "{to:?} opened with the wrong key");
                    assert_eq!(back, e);
                    assert_eq!(message, b"Subject: t\r\n\r\n.dot line\r\nbody\r\n");
                }
                Err(OpenError::NotForThisKey) => assert!(!opens, "{to:?} did not open"),
                Err(other) => panic!("{other}"),
            }
        }
    }

    #[test]
    fn domain_without_key_takes_only_mailboxes_with_keys() {
        let (_, alice_pub) = keypair();
        let keys = SealKeys::new(
            &["example.org".into()],
            &[],
            &[format!("alice@example.org={alice_pub}")],
        )
        .unwrap();
        assert!(keys.keys_of("carol@example.org").is_empty());
        assert!(keys.keys_for(&["carol@example.org".into()]).is_err());
        // RFC 5321 §4.5.1: `<Postmaster>` without a domain is the first
        // domain's postmaster, with its keys (here none: refused as such).
        assert!(keys.serves("Postmaster"));
        assert!(keys.keys_of("postmaster").is_empty());
        let with_postmaster = SealKeys::new(
            &["example.org".into(), "example.net".into()],
            &[],
            &[format!("postmaster@example.org={alice_pub}")],
        )
        .unwrap();
        assert!(with_postmaster.serves("POSTMASTER"));
        assert_eq!(with_postmaster.keys_of("PostMaster").len(), 1);
        assert!(!with_postmaster.serves("postmistress"));
        assert_eq!(
            keys.keys_for(&["alice@example.org".into()]).unwrap().len(),
            1
        );
    }

    #[test]
    fn identity_files() {
        let (id, _) = keypair();
        let text = format!(
            "# created: now\n# public key: x\n{}\n",
            id.to_string().expose_secret()
        );
        assert_eq!(parse_identities(&text).unwrap().len(), 1);
        assert!(parse_identities("# nothing\n").is_err());
        assert!(parse_identities("age1notasecret\n").is_err());
        let path = std::env::temp_dir().join(format!("bp-seal-ids-{}", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        assert_eq!(load_identities(&path).unwrap().len(), 1);
        let _ = std::fs::remove_file(&path);
        let err = load_identities(&path).err().unwrap_or_default();
        assert!(err.contains("bp-seal-ids"), "{err}");
    }
}
