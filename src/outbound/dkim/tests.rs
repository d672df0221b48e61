use super::*;

/// A throwaway 2048-bit key, made for these tests with `openssl genpkey
/// -algorithm RSA -pkeyopt rsa_keygen_bits:2048`; it signs nothing else.
const RSA_PEM: &str = include_str!("test-rsa-2048.pem");

fn rsa_signer() -> DkimSigner {
    let der = PrivateKeyDer::from_pem_slice(RSA_PEM.as_bytes()).expect("test key");
    DkimSigner::from_der(&der, "Example.ORG.", "rpt2026").expect("signer")
}

fn ed25519_signer() -> DkimSigner {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key");
    let der = PrivateKeyDer::Pkcs8(pkcs8.as_ref().to_vec().into());
    DkimSigner::from_der(&der, "example.org", "ed").expect("signer")
}

const MESSAGE: &[u8] = b"From: <postmaster@example.org>\r\n\
To: <reports@example.net>\r\n\
Subject: Report Domain: example.net\r\n Submitter: example.org\r\n\
TLS-Report-Domain: example.net\r\n\
\r\n\
Hello  there \r\n\
\r\n\
\r\n";

/// RFC 6376 §3.4.5, the example of both relaxed algorithms.
#[test]
fn relaxed_canonicalization_as_in_the_rfc_example() {
    assert_eq!(relaxed_header("A", " X"), "a:X\r\n");
    assert_eq!(relaxed_header("B ", " Y\t\r\n\tZ  "), "b:Y Z\r\n");
    assert_eq!(
        relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n"),
        b" C\r\nD E\r\n".to_vec()
    );
}

#[test]
fn relaxed_body_table() {
    let table: &[(&[u8], &[u8])] = &[
        (b"", b""),
        (b"\r\n", b""),
        (b"\r\n\r\n", b""),
        (b"a", b"a\r\n"),
        (b"a\r\n", b"a\r\n"),
        (b"a\r\n \t \r\n", b"a\r\n"),
        (b"a\r\n\r\nb\r\n", b"a\r\n\r\nb\r\n"),
        (b"a\r\n  \r\nb", b"a\r\n\r\nb\r\n"),
        (b"x\t\ty  z\r\n", b"x y z\r\n"),
    ];
    for (body, want) in table {
        assert_eq!(
            relaxed_body(body),
            want.to_vec(),
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn header_fields_keep_folds_and_order() {
    let (headers, body) = split_message(MESSAGE).expect("split");
    assert!(body.starts_with(b"Hello"));
    let fields = header_fields(headers);
    let names: Vec<_> = fields.iter().map(|f| f.0).collect();
    assert_eq!(names, ["From", "To", "Subject", "TLS-Report-Domain"]);
    assert_eq!(
        fields[2].1,
        " Report Domain: example.net\r\n Submitter: example.org"
    );
}

/// What a verifier does (RFC 6376 §6.1.3), for the tests only: the
/// signed input rebuilt from the signed message.
fn verify(signed: &[u8], public: &[u8], ed25519: bool) -> Result<String, String> {
    let (headers, body) = split_message(signed).ok_or("no body")?;
    let fields = header_fields(headers);
    let (_, value) = fields
        .iter()
        .find(|f| f.0.eq_ignore_ascii_case("dkim-signature"))
        .ok_or("no signature")?;
    let tags: Vec<(String, String)> = value
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| {
            let v: String = v.chars().filter(|c| !c.is_whitespace()).collect();
            (k.trim().to_string(), v)
        })
        .collect();
    let tag = |name: &str| {
        tags.iter()
            .find(|t| t.0 == name)
            .map(|t| t.1.clone())
            .unwrap_or_default()
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let bh = ring::digest::digest(&ring::digest::SHA256, &relaxed_body(body));
    if tag("bh") != b64.encode(bh.as_ref()) {
        return Err("body hash".into());
    }
    let mut input = Vec::new();
    let mut taken = vec![false; fields.len()];
    for name in tag("h").split(':') {
        if let Some(i) = (0..fields.len())
            .rev()
            .find(|&i| !taken[i] && fields[i].0.eq_ignore_ascii_case(name))
        {
            taken[i] = true;
            input.extend_from_slice(relaxed_header(fields[i].0, fields[i].1).as_bytes());
        }
    }
    let at = value.find("b=").map(|i| i + 2).ok_or("no b=")?;
    // b= is the last tag here; "bh=" comes before and does not match "b=" at
    // a tag start because of the preceding "\tb".
    let at = value.rfind("\tb=").map(|i| i + 3).unwrap_or(at);
    let own = relaxed_header("DKIM-Signature", &value[..at]);
    input.extend_from_slice(own.trim_end_matches("\r\n").as_bytes());
    let sig = b64.decode(tag("b")).map_err(|e| e.to_string())?;
    let ok = if ed25519 {
        let hash = ring::digest::digest(&ring::digest::SHA256, &input);
        signature::UnparsedPublicKey::new(&signature::ED25519, public).verify(hash.as_ref(), &sig)
    } else {
        signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, public)
            .verify(&input, &sig)
    };
    ok.map_err(|_| "signature".to_string())?;
    Ok(tag("h"))
}

#[test]
fn rsa_signature_verifies_and_breaks_when_the_message_changes() {
    let signer = rsa_signer();
    let signed = signer.sign(MESSAGE, 1_764_720_000).expect("sign");
    let SigningKey::Rsa(k) = &signer.key else {
        panic!("not RSA")
    };
    let public = k.public_key().as_ref().to_vec();
    let h = verify(&signed, &public, false).expect("verifies");
    // Present fields signed; From oversigned; absent ones not named.
    assert_eq!(h, "from:from:to:subject:tls-report-domain");
    // Every name present in a message is signed, h= folded under 78 octets.
    let all = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: s\r\nDate: d\r\n\
Message-ID: <m@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\
TLS-Report-Domain: example.net\r\nTLS-Report-Submitter: example.org\r\n\r\nx\r\n";
    let signed_all = signer.sign(all, 2).expect("sign");
    let h = verify(&signed_all, &public, false).expect("verifies");
    assert_eq!(h, SIGNED_HEADERS.join(":"));
    for line in signed_all.split(|&b| b == b'\n') {
        assert!(line.strip_suffix(b"\r").unwrap_or(line).len() <= 78);
    }
    assert!(signed.starts_with(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; t=1764720000;\r\n\td=example.org; s=rpt2026;\r\n"));
    assert!(signed.ends_with(MESSAGE));
    for line in signed.split(|&b| b == b'\n') {
        assert!(
            line.strip_suffix(b"\r").unwrap_or(line).len() <= 78,
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
    // Whitespace changes survive relaxed canonicalization; content does not.
    let respaced = String::from_utf8_lossy(&signed).replace("Hello  there", "Hello there");
    verify(respaced.as_bytes(), &public, false).expect("relaxed");
    let changed = String::from_utf8_lossy(&signed).replace("Hello", "Hallo");
    assert_eq!(
        verify(changed.as_bytes(), &public, false),
        Err("body hash".into())
    );
    let changed = String::from_utf8_lossy(&signed).replace("To: <reports", "To: <other");
    assert_eq!(
        verify(changed.as_bytes(), &public, false),
        Err("signature".into())
    );
    // A second From put on top is not the one signed: the oversigned
    // "from" then names a field the verifier now finds.
    let mut added = b"From: <mallory@example.com>\r\n".to_vec();
    added.extend_from_slice(&signed);
    assert!(verify(&added, &public, false).is_err());
}

#[test]
fn ed25519_signature_verifies() {
    let signer = ed25519_signer();
    assert_eq!(signer.algorithm(), "ed25519-sha256");
    let signed = signer.sign(MESSAGE, 1).expect("sign");
    let SigningKey::Ed25519(k) = &signer.key else {
        panic!("not Ed25519")
    };
    verify(&signed, k.public_key().as_ref(), true).expect("verifies");
    let (name, record) = signer.dns_record();
    assert_eq!(name, "ed._domainkey.example.org");
    let p = record.rsplit_once("p=").expect("p=").1;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(p)
        .expect("base64");
    assert_eq!(raw, k.public_key().as_ref());
    assert!(record.starts_with("v=DKIM1; k=ed25519; s=tlsrpt; p="));
}

#[test]
fn rsa_record_is_the_subject_public_key_info_openssl_writes() {
    let (name, record) = rsa_signer().dns_record();
    assert_eq!(name, "rpt2026._domainkey.example.org");
    let p = record.rsplit_once("p=").expect("p=").1;
    let spki = base64::engine::general_purpose::STANDARD
        .decode(p)
        .expect("base64");
    // 2048-bit key: SEQUENCE of 290 octets with the rsaEncryption OID.
    assert_eq!(&spki[..4], &[0x30, 0x82, 0x01, 0x22]);
    assert_eq!(
        &spki[6..17],
        &[
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01
        ]
    );
    assert_eq!(spki.len(), 294);
}

#[test]
fn bad_keys_and_names_are_refused() {
    let der = PrivateKeyDer::from_pem_slice(RSA_PEM.as_bytes()).expect("test key");
    assert!(matches!(
        DkimSigner::from_der(&der, "exa mple.org", "s"),
        Err(DkimError::Domain(_))
    ));
    assert!(matches!(
        DkimSigner::from_der(&der, "example.org", ""),
        Err(DkimError::Selector(_))
    ));
    let junk = PrivateKeyDer::Pkcs8(vec![0x30, 0x03, 0x02, 0x01, 0x00].into());
    assert!(matches!(
        DkimSigner::from_der(&junk, "example.org", "s"),
        Err(DkimError::KeyType(_))
    ));
    assert!(matches!(
        rsa_signer().sign(b"From: a\r\nno body separator", 0),
        Err(DkimError::NoBody)
    ));
    assert!(matches!(
        rsa_signer().sign(b"To: a@example.org\r\n\r\nbody\r\n", 0),
        Err(DkimError::NoFrom)
    ));
    let missing = DkimSigner::load(Path::new("/nonexistent/dkim.pem"), "example.org", "s");
    assert!(matches!(missing, Err(DkimError::KeyFile { .. })));
}
