//! DKIM signing (RFC 6376) of the mail blackpony writes itself: the TLS
//! reports of `blackpony tlsrpt --send`, which a receiver MUST ignore
//! unless they carry a valid DKIM signature of the reporting domain (RFC
//! 8460 §5.3). Sans-IO: a key and a message in, the signed message out.
//!
//! Only what a signer needs: `relaxed/relaxed` canonicalization (RFC 6376
//! §3.4.2, §3.4.4), SHA-256, and the two algorithms receivers verify today,
//! `rsa-sha256` (§3.3.1) and `ed25519-sha256` (RFC 8463). The signature
//! covers the whole body (no `l=`, which RFC 8460 §5.3 forbids).

use std::path::Path;

use base64::Engine;
use ring::signature::{self, Ed25519KeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// Why a key cannot sign, or a message cannot be signed.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("{path}: {why}")]
    KeyFile { path: String, why: String },
    #[error("the DKIM key is neither an RSA key of 2048 to 8192 bits nor an Ed25519 key: {0}")]
    KeyType(String),
    #[error("the DKIM selector {0:?} is not a DNS label sequence")]
    Selector(String),
    #[error("the DKIM domain {0:?} is not a domain name")]
    Domain(String),
    #[error("the message has no header/body separator (an empty line)")]
    NoBody,
    #[error("the message has no From field, which a signature must cover (RFC 6376 §5.4)")]
    NoFrom,
    #[error("the RSA signature could not be made")]
    Sign,
}

/// A private key and the name (`s=`, `d=`) its public half is published
/// under, `<selector>._domainkey.<domain>`.
pub struct DkimSigner {
    key: SigningKey,
    domain: String,
    selector: String,
}

enum SigningKey {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// The header fields signed, when present (RFC 6376 §5.4.1 recommends the
/// ones a reader sees; RFC 8460 §5.3 names the two report headers). `from`
/// twice: a second From added on the way cannot pass (§8.15, oversigning).
pub const SIGNED_HEADERS: &[&str] = &[
    "from",
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "tls-report-domain",
    "tls-report-submitter",
];

impl DkimSigner {
    /// Reads a PEM private key (`openssl genpkey -algorithm RSA -pkeyopt
    /// rsa_keygen_bits:2048`, or `-algorithm ed25519`; PKCS#8 or PKCS#1).
    pub fn load(path: &Path, domain: &str, selector: &str) -> Result<Self, DkimError> {
        let key_file = |why: String| DkimError::KeyFile {
            path: path.display().to_string(),
            why,
        };
        let pem = std::fs::read(path).map_err(|e| key_file(e.to_string()))?;
        let der = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| key_file(format!("no PEM private key ({e})")))?;
        Self::from_der(&der, domain, selector)
    }

    pub fn from_der(der: &PrivateKeyDer, domain: &str, selector: &str) -> Result<Self, DkimError> {
        let key = match der {
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der())
                .map(SigningKey::Rsa)
                .map_err(|e| DkimError::KeyType(e.to_string()))?,
            PrivateKeyDer::Pkcs8(k) => {
                let bytes = k.secret_pkcs8_der();
                match RsaKeyPair::from_pkcs8(bytes) {
                    Ok(rsa) => SigningKey::Rsa(rsa),
                    Err(rsa_err) => Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
                        .map(SigningKey::Ed25519)
                        .map_err(|_| DkimError::KeyType(rsa_err.to_string()))?,
                }
            }
            _ => return Err(DkimError::KeyType("an EC (SEC1) key".into())),
        };
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if !is_dns_name(&domain) {
            return Err(DkimError::Domain(domain));
        }
        if !is_dns_name(selector) {
            return Err(DkimError::Selector(selector.to_string()));
        }
        Ok(DkimSigner {
            key,
            domain,
            selector: selector.to_string(),
        })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// `a=`: the signing algorithm.
    pub fn algorithm(&self) -> &'static str {
        match self.key {
            SigningKey::Rsa(_) => "rsa-sha256",
            SigningKey::Ed25519(_) => "ed25519-sha256",
        }
    }

    /// Where the public key goes, and the TXT record to publish there
    /// (RFC 6376 §3.6.1; `s=tlsrpt` limits the key to reports, RFC 8460
    /// §5.3 — `*` would allow it for any mail).
    pub fn dns_record(&self) -> (String, String) {
        let b64 = base64::engine::general_purpose::STANDARD;
        let (k, p) = match &self.key {
            // The public key as SubjectPublicKeyInfo, as `openssl rsa
            // -pubout` writes it and verifiers expect.
            SigningKey::Rsa(k) => ("rsa", b64.encode(rsa_spki(k.public_key().as_ref()))),
            // RFC 8463 §4.2: the bare 32-octet key.
            SigningKey::Ed25519(k) => ("ed25519", b64.encode(k.public_key().as_ref())),
        };
        (
            format!("{}._domainkey.{}", self.selector, self.domain),
            format!("v=DKIM1; k={k}; s=tlsrpt; p={p}"),
        )
    }

    /// `message` (CRLF line ends, headers, an empty line, the body) with a
    /// `DKIM-Signature` field put in front, signed at `now` (Unix seconds).
    pub fn sign(&self, message: &[u8], now: u64) -> Result<Vec<u8>, DkimError> {
        let (headers, body) = split_message(message).ok_or(DkimError::NoBody)?;
        let fields = header_fields(headers);
        let body_hash = ring::digest::digest(&ring::digest::SHA256, &relaxed_body(body));
        let b64 = base64::engine::general_purpose::STANDARD;

        // §5.4.2: each name takes the last instance not yet taken; a name
        // listed more often than present signs "no such field" (oversigning).
        let mut taken = vec![false; fields.len()];
        let mut signed_input = Vec::new();
        let mut names = Vec::new();
        for name in SIGNED_HEADERS {
            let found = (0..fields.len())
                .rev()
                .find(|&i| !taken[i] && fields[i].0.eq_ignore_ascii_case(name));
            if let Some(i) = found {
                taken[i] = true;
                signed_input.extend_from_slice(relaxed_header(fields[i].0, fields[i].1).as_bytes());
                names.push(*name);
            } else if names.contains(name) {
                names.push(*name);
            }
        }
        if !names.contains(&"from") {
            return Err(DkimError::NoFrom);
        }
        // Folded now, before signing: relaxed canonicalization keeps a
        // space where a fold was, so the signed text must have the folds.
        let value = format!(
            " v=1; a={}; c=relaxed/relaxed; t={now};\r\n\td={}; s={};\r\n\th={};\r\n\tbh={};\r\n\tb=",
            self.algorithm(),
            self.domain,
            self.selector,
            folded_names(&names),
            b64.encode(body_hash.as_ref()),
        );
        // §3.7: the signature field itself, with an empty b=, and no CRLF.
        let own = relaxed_header("DKIM-Signature", &value);
        signed_input.extend_from_slice(own.trim_end_matches("\r\n").as_bytes());
        let signature = match &self.key {
            SigningKey::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &ring::rand::SystemRandom::new(),
                    &signed_input,
                    &mut sig,
                )
                .map_err(|_| DkimError::Sign)?;
                sig
            }
            // RFC 8463 §3: PureEdDSA over the SHA-256 hash of the input.
            SigningKey::Ed25519(k) => k
                .sign(ring::digest::digest(&ring::digest::SHA256, &signed_input).as_ref())
                .as_ref()
                .to_vec(),
        };
        let encoded = b64.encode(signature);
        let mut out = Vec::with_capacity(message.len() + value.len() + encoded.len() + 64);
        out.extend_from_slice(b"DKIM-Signature:");
        out.extend_from_slice(value.as_bytes());
        // Lines stay under 78 octets (RFC 5322 §2.1.1); whitespace in b=
        // is ignored by the verifier (RFC 6376 §3.5).
        for (i, chunk) in encoded.as_bytes().chunks(64).enumerate() {
            if i > 0 {
                out.extend_from_slice(b"\r\n\t ");
            }
            out.extend_from_slice(chunk);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(message);
        Ok(out)
    }
}

/// `h=`'s names joined by colons, folded after a colon where a line would
/// pass 70 octets (FWS is allowed there, RFC 6376 §3.5).
fn folded_names(names: &[&str]) -> String {
    let mut out = String::new();
    let mut line = 0;
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push(':');
            line += 1;
            if line + name.len() > 70 {
                out.push_str("\r\n\t ");
                line = 1;
            }
        }
        out.push_str(name);
        line += name.len();
    }
    out
}

/// The header block (with its last CRLF) and the body after the empty line.
fn split_message(message: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = message.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((&message[..at + 2], &message[at + 4..]))
}

/// Header fields as (name, value) with the value's folds kept, in order.
fn header_fields(headers: &[u8]) -> Vec<(&str, &str)> {
    let text = std::str::from_utf8(headers).unwrap_or_default();
    let mut fields: Vec<(&str, &str)> = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // A field ends at a CRLF not followed by WSP (RFC 5322 §2.2.3).
        if bytes[i] == b'\r'
            && bytes.get(i + 1) == Some(&b'\n')
            && !matches!(bytes.get(i + 2), Some(b' ' | b'\t'))
        {
            if let Some((name, value)) = text[start..i].split_once(':') {
                fields.push((name, value));
            }
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    fields
}

/// RFC 6376 §3.4.2: name lower-cased, folds removed, runs of WSP one
/// space, no WSP at the value's ends or around the colon.
pub fn relaxed_header(name: &str, value: &str) -> String {
    let unfolded = value.replace("\r\n", "");
    let mut out = name.trim_end_matches([' ', '\t']).to_ascii_lowercase();
    out.push(':');
    let value = squeeze(unfolded.trim_start_matches([' ', '\t']).as_bytes());
    out.push_str(&String::from_utf8_lossy(&value));
    out.push_str("\r\n");
    out
}

/// Runs of WSP made one space, and none at the end (both relaxed forms).
fn squeeze(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    let mut space = false;
    for &b in line {
        if b == b' ' || b == b'\t' {
            space = true;
        } else {
            if space {
                out.push(b' ');
            }
            space = false;
            out.push(b);
        }
    }
    out
}

/// RFC 6376 §3.4.4: runs of WSP one space, none at line ends, no empty
/// lines at the end; a body that is not empty ends in CRLF.
pub fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut blank_lines = 0usize;
    let mut lines = body.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if last && line.is_empty() {
            break;
        }
        let canon = squeeze(line);
        if canon.is_empty() {
            blank_lines += 1;
            continue;
        }
        for _ in 0..blank_lines {
            out.extend_from_slice(b"\r\n");
        }
        blank_lines = 0;
        out.extend_from_slice(&canon);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// An RSAPublicKey (PKCS#1) wrapped as SubjectPublicKeyInfo (RFC 5280
/// §4.1.2.7, algorithm rsaEncryption, RFC 3279 §2.3.1).
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    const ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    let mut inner = ALGORITHM.to_vec();
    inner.push(0x03);
    der_length(&mut inner, bits.len());
    inner.extend_from_slice(&bits);
    let mut out = vec![0x30];
    der_length(&mut out, inner.len());
    out.extend_from_slice(&inner);
    out
}

fn der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
}

#[cfg(test)]
mod tests;
