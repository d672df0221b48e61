//! The trace header that tells the backend (and the recipient) how the
//! message reached blackpony: RFC 5321 §4.4 `Received:` with the TLS version
//! and cipher in a comment, and the RFC 3848 protocol name (ESMTPS when TLS
//! was used; XPONY sessions say ESMTP and name XPONY in the comment). No other front tells the backend that TLS was used
//! (docs/INTEROP-NOTES.md, "Front proxies"), so this is where it is recorded.

use std::io::Write;
use std::net::IpAddr;
use std::time::SystemTime;

use crate::transport::Encryption;

/// Who sent the message, as known when DATA starts.
#[derive(Debug, Clone, Copy)]
pub struct TraceFacts<'a> {
    /// The client's EHLO/HELO argument, if it gave one.
    pub helo: Option<&'a str>,
    pub esmtp: bool,
    pub client_ip: IpAddr,
    /// Our own host name.
    pub by: &'a str,
    pub tls: Option<&'a Encryption>,
}

/// Appends the header, folded, with CRLF line ends, to `out`. Written
/// straight into the buffer: this runs once per message.
pub fn write_received(facts: &TraceFacts<'_>, now: SystemTime, out: &mut Vec<u8>) {
    let helo = facts.helo.map(HostName).filter(|h| !h.is_empty());
    // RFC 3848's ESMTPS means TLS; XPONY is recorded in the comment only
    // (proto-spec §6).
    let proto = match (facts.esmtp, facts.tls.is_some_and(|t| !t.is_pony())) {
        (true, true) => "ESMTPS",
        (true, false) => "ESMTP",
        (false, true) => "SMTPS",
        (false, false) => "SMTP",
    };
    let _ = write!(out, "Received: from ");
    let _ = match helo {
        Some(h) => write!(out, "{h}"),
        None => write!(out, "unknown"),
    };
    let _ = match facts.client_ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => write!(out, " (unknown [{v4}])"),
            None => write!(out, " (unknown [IPv6:{v6}])"),
        },
        IpAddr::V4(v4) => write!(out, " (unknown [{v4}])"),
    };
    let _ = write!(
        out,
        "\r\n\tby {} (blackpony) with {proto} ",
        HostName(facts.by)
    );
    let _ = match facts.tls {
        Some(t) => write!(out, "({} {})", t.protocol(), t.details()),
        None => write!(out, "(without TLS)"),
    };
    let _ = write!(out, ";\r\n\t{}\r\n", crate::log::Rfc5322Date(now));
}

/// Shows only the characters of a name that belong in a host name or an
/// address literal (first word, at most 255), so a hostile HELO cannot add
/// header lines or break the header's syntax.
#[derive(Debug, Clone, Copy)]
struct HostName<'a>(&'a str);

impl HostName<'_> {
    fn chars(&self) -> impl Iterator<Item = char> + '_ {
        self.0
            .split_whitespace()
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || ".-_:[]".contains(*c))
            .take(255)
    }

    fn is_empty(&self) -> bool {
        self.chars().next().is_none()
    }
}

impl std::fmt::Display for HostName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        self.chars().try_for_each(|c| f.write_char(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn received_header() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_428_000);
        let tls = Encryption::Tls {
            version: "TLSv1.3",
            cipher: "TLS_AES_256_GCM_SHA384".into(),
        };
        let mut out = Vec::new();
        let facts = TraceFacts {
            helo: Some("client.example"),
            esmtp: true,
            client_ip: "127.0.0.77".parse().unwrap(),
            by: "mx.example.org",
            tls: Some(&tls),
        };
        write_received(&facts, now, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Received: from client.example (unknown [127.0.0.77])\r\n\tby mx.example.org (blackpony) \
             with ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384);\r\n\tMon, 23 Nov 2026 10:00:00 +0000\r\n"
        );

        // XPONY is not TLS: ESMTP, with the channel in the comment.
        let pony = Encryption::Pony { peer: [1; 32] };
        let mut out = Vec::new();
        write_received(
            &TraceFacts {
                tls: Some(&pony),
                ..facts
            },
            now,
            &mut out,
        );
        assert!(String::from_utf8(out).unwrap().contains(&format!(
            " with ESMTP (XPONY Noise_XX_25519_ChaChaPoly_SHA256 peer={});",
            crate::pony::keys::fingerprint(&[1; 32])
        )),);

        let mut out = Vec::new();
        let facts = TraceFacts {
            helo: Some("evil\u{7f}(x)\tmore"),
            esmtp: false,
            tls: None,
            client_ip: "::ffff:192.0.2.1".parse().unwrap(),
            ..facts
        };
        write_received(&facts, now, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("Received: from evilx (unknown [192.0.2.1])"),
            "{text}"
        );
        assert!(text.contains("with SMTP (without TLS);"), "{text}");
    }
}
