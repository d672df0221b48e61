use super::*;

fn reporter() -> Reporter {
    Reporter {
        organization: "sender.example".into(),
        contact: "postmaster@sender.example".into(),
        submitter: "mx.sender.example".into(),
    }
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn record(t: u64, result: &str, mx: &str, reason: Option<&str>) -> SessionRecord {
    SessionRecord {
        t,
        policy_type: "no-policy-found".into(),
        policy_string: Vec::new(),
        result: result.into(),
        sending_mta_ip: ip("192.0.2.1"),
        receiving_mx_hostname: mx.into(),
        receiving_ip: ip("198.51.100.7"),
        reason: reason.map(str::to_string),
    }
}

#[test]
fn days() {
    for (day, unix) in [
        ("1970-01-01", Some(0)),
        ("2026-12-03", Some(1_796_256_000)),
        ("2024-02-29", Some(1_709_164_800)),
        ("2023-02-29", None),
        ("2026-13-01", None),
        ("2026-12-3", None),
        ("26-12-03xx", None),
        ("", None),
    ] {
        assert_eq!(parse_day(day), unix, "{day}");
        if let Some(u) = unix {
            assert_eq!(day_of(u), day);
            assert_eq!(day_of(u + 86_399), day);
        }
    }
}

#[test]
fn certificate_reasons_become_result_types() {
    for (why, result) in [
        ("name mismatch", TlsFailure::CertificateHostMismatch),
        ("expired", TlsFailure::CertificateExpired),
        ("self-signed", TlsFailure::CertificateNotTrusted),
        ("untrusted issuer", TlsFailure::CertificateNotTrusted),
        ("bad signature", TlsFailure::ValidationFailure),
        ("no certificate", TlsFailure::ValidationFailure),
    ] {
        assert_eq!(TlsFailure::of_certificate(why), result, "{why}");
    }
}

#[test]
fn session_results() {
    let untrusted = CertVerdict::Untrusted("self-signed".into());
    let verified = CertVerdict::Verified;
    let base = SessionFacts {
        tried_tls: true,
        ..Default::default()
    };
    let fail = |r, why: &str| Some((Err(r), Some(why.to_string())));
    let success = Some((Ok(()), None));
    let cases: Vec<(&str, SessionFacts, Option<Judged>)> = vec![
        ("policy none: nothing to say", SessionFacts::default(), None),
        (
            "may, TLS with any certificate",
            SessionFacts {
                encrypted: true,
                verdict: Some(&untrusted),
                ..base.clone()
            },
            success.clone(),
        ),
        (
            "verify, verified",
            SessionFacts {
                encrypted: true,
                verdict: Some(&verified),
                verify: true,
                ..base.clone()
            },
            success.clone(),
        ),
        (
            "verify, self-signed",
            SessionFacts {
                encrypted: true,
                verdict: Some(&untrusted),
                verify: true,
                ..base.clone()
            },
            fail(TlsFailure::CertificateNotTrusted, "self-signed"),
        ),
        (
            "handshake failed",
            SessionFacts {
                tls_failed: true,
                handshake: Some("peer sent alert".into()),
                ..base.clone()
            },
            fail(TlsFailure::ValidationFailure, "peer sent alert"),
        ),
        (
            "encrypt, no STARTTLS",
            SessionFacts {
                starttls_missing: true,
                ..base.clone()
            },
            fail(TlsFailure::StarttlsNotSupported, "STARTTLS not offered"),
        ),
        (
            "may, plaintext transaction",
            SessionFacts {
                transacted: true,
                ..base.clone()
            },
            fail(TlsFailure::StarttlsNotSupported, "STARTTLS not offered"),
        ),
        ("connection failed: nothing known", base.clone(), None),
    ];
    for (what, facts, want) in cases {
        assert_eq!(facts.result(), want, "{what}");
    }
}

#[test]
fn report_aggregates_one_day() {
    let day = 1_796_256_000; // 2026-12-03
    let records = vec![
        record(day + 10, "success", "mx1.example.org", None),
        record(day + 20, "success", "mx1.example.org", None),
        record(
            day + 30,
            "starttls-not-supported",
            "mx2.example.org",
            Some("STARTTLS not offered"),
        ),
        record(
            day + 40,
            "starttls-not-supported",
            "mx2.example.org",
            Some("STARTTLS not offered"),
        ),
        record(
            day + 50,
            "certificate-expired",
            "mx1.example.org",
            Some("expired"),
        ),
        // The day before and after: not in this report.
        record(day - 1, "success", "mx1.example.org", None),
        record(day + 86_400, "success", "mx1.example.org", None),
        // A result type this version does not know: left out.
        record(day + 60, "something-new", "mx1.example.org", None),
        SessionRecord {
            policy_type: "sts".into(),
            policy_string: vec![
                "version: STSv1".into(),
                "mode: enforce".into(),
                "mx: *.example.org".into(),
            ],
            ..record(day + 70, "sts-webpki-invalid", "mx3.example.org", None)
        },
        // A policy type this version does not know: left out.
        SessionRecord {
            policy_type: "carrier-pigeon".into(),
            ..record(day + 80, "success", "mx1.example.org", None)
        },
    ];
    let report = Report::build(&reporter(), "Example.ORG.", "2026-12-03", &records).unwrap();
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    let want = serde_json::json!({
        "organization-name": "sender.example",
        "date-range": {
            "start-datetime": "2026-12-03T00:00:00Z",
            "end-datetime": "2026-12-03T23:59:59Z"
        },
        "contact-info": "postmaster@sender.example",
        "report-id": "2026-12-03T00:00:00Z_example.org",
        "policies": [
            {
                "policy": {
                    "policy-type": "no-policy-found",
                    "policy-domain": "example.org"
                },
                "summary": {
                    "total-successful-session-count": 2,
                    "total-failure-session-count": 3
                },
                "failure-details": [
                    {
                        "result-type": "certificate-expired",
                        "sending-mta-ip": "192.0.2.1",
                        "receiving-mx-hostname": "mx1.example.org",
                        "receiving-ip": "198.51.100.7",
                        "failed-session-count": 1,
                        "failure-reason-code": "expired"
                    },
                    {
                        "result-type": "starttls-not-supported",
                        "sending-mta-ip": "192.0.2.1",
                        "receiving-mx-hostname": "mx2.example.org",
                        "receiving-ip": "198.51.100.7",
                        "failed-session-count": 2,
                        "failure-reason-code": "STARTTLS not offered"
                    }
                ]
            },
            {
                "policy": {
                    "policy-type": "sts",
                    "policy-string": ["version: STSv1", "mode: enforce", "mx: *.example.org"],
                    "policy-domain": "example.org",
                    "mx-host": ["*.example.org"]
                },
                "summary": {
                    "total-successful-session-count": 0,
                    "total-failure-session-count": 1
                },
                "failure-details": [{
                    "result-type": "sts-webpki-invalid",
                    "sending-mta-ip": "192.0.2.1",
                    "receiving-mx-hostname": "mx3.example.org",
                    "receiving-ip": "198.51.100.7",
                    "failed-session-count": 1
                }]
            }
        ]
    });
    assert_eq!(json, want);
    assert_eq!(
        report.file_name(&reporter(), "example.org"),
        "mx.sender.example!example.org!1796256000!1796342399.json.gz"
    );
    assert!(
        Report::build(&reporter(), "example.org", "2026-12-03", &[])
            .unwrap()
            .is_empty()
    );
    assert!(Report::build(&reporter(), "example.org", "2026-12-32", &records).is_none());
}

#[test]
fn outcomes_round_trip_through_the_store() {
    let dir = std::env::temp_dir().join(format!("bp-tlsrpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let reports = TlsReports::new(Some(&dir));
    let outcome = PolicyOutcome {
        policy: PolicyType::NoPolicyFound,
        domain: "Example.ORG.".into(),
        policy_strings: Vec::new(),
        mx_host: "MX.Example.org.".into(),
        receiving_ip: ip("127.0.10.3"),
        sending_ip: ip("127.0.0.1"),
        result: Err(TlsFailure::StarttlsNotSupported),
        detail: Some("STARTTLS not offered".into()),
    };
    reports.record(&outcome);
    let day = day_of(unix_now());
    let (read, skipped) = reports.read_day("example.org", &day).unwrap();
    assert_eq!(skipped, 0);
    let [r] = read.as_slice() else {
        panic!("{read:?}")
    };
    assert_eq!(*r, SessionRecord::of(&outcome, r.t));
    assert_eq!(r.receiving_mx_hostname, "mx.example.org");
    assert_eq!(r.result, "starttls-not-supported");
    // Nothing recorded without a state directory.
    let none = TlsReports::new(None);
    none.record(&outcome);
    assert_eq!(none.read_day("example.org", &day).unwrap(), (vec![], 0));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn reporting_policy_records() {
    let rec = |s: &str| vec![s.to_string()];
    assert_eq!(
        parse_policy_record(&rec(
            "v=TLSRPTv1; rua=mailto:tls%2Breports@example.org?subject=x,https://r.example.org/tlsrpt"
        )),
        Ok(vec![
            Rua::Mailto("tls+reports@example.org".into()),
            Rua::Https("https://r.example.org/tlsrpt".into())
        ])
    );
    assert_eq!(
        parse_policy_record(&rec("v=TLSRPTv1;rua=MAILTO:a@b.example")),
        Ok(vec![Rua::Mailto("a@b.example".into())])
    );
    // An unusable mailto: is skipped, the others stay.
    assert_eq!(
        parse_policy_record(&rec(
            "v=TLSRPTv1; rua=mailto:a%0Ab@c.example,mailto:d@e.example"
        )),
        Ok(vec![Rua::Mailto("d@e.example".into())])
    );
    assert_eq!(
        parse_policy_record(&rec("v=TLSRPTv1; rua=ftp://x.example")),
        Ok(vec![Rua::Other("ftp://x.example".into())])
    );
    // Other TXT records at the name do not count.
    assert_eq!(
        parse_policy_record(&[
            "v=spf1 -all".to_string(),
            "v=TLSRPTv1; rua=mailto:a@b.example".to_string()
        ]),
        Ok(vec![Rua::Mailto("a@b.example".into())])
    );
    for bad in [
        vec![],
        rec("v=TLSRPTv10; rua=mailto:a@b.example"),
        rec("v=TLSRPTv1"),
        rec("v=TLSRPTv1; rua="),
        // Found by the dns_txt fuzz check: a mailto: that is no address
        // (empty, no domain, CR LF or brackets percent-encoded into it).
        rec("v=TLSRPTv1; rua=mailto:"),
        rec("v=TLSRPTv1; rua=mailto:?subject=x"),
        rec("v=TLSRPTv1; rua=mailto:postmaster"),
        rec("v=TLSRPTv1; rua=mailto:a%0D%0ARCPT%20TO:%3Cx@y.example%3E@b.example"),
        rec("v=TLSRPTv1; rua=mailto:a%3E@b.example"),
        vec![
            "v=TLSRPTv1; rua=mailto:a@b.example".to_string(),
            "v=TLSRPTv1; rua=mailto:c@d.example".to_string(),
        ],
    ] {
        assert!(parse_policy_record(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn report_mail_has_the_rfc_8460_shape() {
    use base64::Engine;
    use std::io::Read;
    let day = 1_796_256_000;
    let report = Report::build(
        &reporter(),
        "example.org",
        "2026-12-03",
        &[record(day + 1, "success", "mx.example.org", None)],
    )
    .unwrap();
    let mail = report_message(
        &report,
        &reporter(),
        "postmaster@sender.example",
        "tls@example.org",
        UNIX_EPOCH + Duration::from_secs(day + 90_000),
    );
    let text = String::from_utf8(mail).unwrap();
    assert!(text.lines().all(|l| l.len() <= 78), "{text}");
    assert!(!text.replace("\r\n", "").contains('\n'), "CRLF only");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    for h in [
        "TLS-Report-Domain: example.org\r\n",
        "TLS-Report-Submitter: mx.sender.example\r\n",
        "Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n",
        "Subject: Report Domain: example.org Submitter: mx.sender.example Report-ID: <2026-12-03T00:00:00Z_example.org>\r\n",
        "To: <tls@example.org>\r\n",
        "MIME-Version: 1.0\r\n",
    ] {
        let unfolded = format!("{head}\r\n").replace("\r\n ", " ");
        assert!(unfolded.contains(h), "{h} in\n{head}");
    }
    assert!(body.contains("Content-Type: application/tlsrpt+gzip\r\n"));
    assert!(
        body.contains("filename=\"mx.sender.example!example.org!1796256000!1796342399.json.gz\"")
    );
    // The attachment un-gzips to the report.
    let b64: String = body
        .split("Content-Transfer-Encoding: base64\r\n")
        .nth(1)
        .unwrap()
        .split("\r\n\r\n")
        .nth(1)
        .unwrap()
        .split("\r\n--")
        .next()
        .unwrap()
        .replace("\r\n", "");
    let gz = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let mut json = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut json)
        .unwrap();
    assert_eq!(json, report.to_json());
}
