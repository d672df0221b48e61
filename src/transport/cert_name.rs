//! The subject of an X.509 certificate as text (`CN=mx.example.org, O=…`),
//! for the operator's eyes (`blackpony probe`): a small DER walk over the
//! parts of RFC 5280 §4.1 it needs, sans-IO. Nothing is decided on it;
//! certificates are judged by webpki and the DANE code.

use rustls_pki_types::CertificateDer;

/// One DER element: (tag, contents, the rest after it).
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: 1 to 4 length octets (X.690 §8.1.3.5).
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// `[0] EXPLICIT Version` in a TBSCertificate.
const VERSION: u8 = 0xa0;

/// Short names of the attribute types seen in server certificates
/// (RFC 4514 §3), by their OID's DER contents (2.5.4.x, and email).
fn attribute_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        [0x55, 0x04, 0x05] => "serialNumber".into(),
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress".into(),
        other => other
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(""),
    }
}

/// An attribute value: the string types as text (control characters
/// replaced), anything else as `#hex` (RFC 4514 §2.4).
fn attribute_value(tag: u8, value: &[u8]) -> String {
    match tag {
        // UTF8String, PrintableString, TeletexString, IA5String.
        0x0c | 0x13 | 0x14 | 0x16 => String::from_utf8_lossy(value)
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
        _ => format!(
            "#{}",
            value.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

/// The subject distinguished name of `cert` in the order it is encoded,
/// or `None` when the certificate does not parse that far.
pub fn subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (SEQUENCE, certificate, _) = element(cert.as_ref())? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(certificate)? else {
        return None;
    };
    let (tag, _, mut rest) = element(tbs)?;
    if tag == VERSION {
        rest = element(rest)?.2; // the serial number
    }
    // signature, issuer, validity; then the subject.
    for _ in 0..3 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, mut rdns, _) = element(rest)? else {
        return None;
    };
    let mut parts = Vec::new();
    while !rdns.is_empty() {
        let (SET, mut set, next) = element(rdns)? else {
            return None;
        };
        rdns = next;
        while !set.is_empty() {
            let (SEQUENCE, pair, next) = element(set)? else {
                return None;
            };
            set = next;
            let (OID, oid, value) = element(pair)? else {
                return None;
            };
            let (tag, value, _) = element(value)?;
            parts.push(format!(
                "{}={}",
                attribute_name(oid),
                attribute_value(tag, value)
            ));
        }
    }
    Some(parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert(dn: &[(DnType, &str)]) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["mx.example.org".to_string()]).unwrap();
        let mut name = DistinguishedName::new();
        for (t, v) in dn {
            name.push(t.clone(), *v);
        }
        params.distinguished_name = name;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn subjects() {
        for (dn, want) in [
            (
                vec![(DnType::CommonName, "mx.example.org")],
                "CN=mx.example.org",
            ),
            (
                vec![
                    (DnType::CountryName, "DE"),
                    (DnType::OrganizationName, "Example GmbH"),
                    (DnType::CommonName, "mx.example.org"),
                ],
                "C=DE, O=Example GmbH, CN=mx.example.org",
            ),
            (vec![], ""),
        ] {
            assert_eq!(subject(&cert(&dn)).as_deref(), Some(want), "{dn:?}");
        }
    }

    #[test]
    fn damaged_certificates_have_no_subject() {
        let good = cert(&[(DnType::CommonName, "mx.example.org")]);
        let bytes = good.as_ref();
        for cut in [0, 1, 2, 10, bytes.len() / 2] {
            let der = CertificateDer::from(bytes[..cut].to_vec());
            assert_eq!(subject(&der), None, "cut at {cut}");
        }
        assert_eq!(subject(&CertificateDer::from(vec![0x30, 0x84, 0xff])), None);
        assert_eq!(subject(&CertificateDer::from(vec![0x04, 0x00])), None);
    }
}
