//! What the MTA and the log are told about each recipient: the remote's
//! own reply, or the reply that stands for a failure without one (DNS, a
//! host that failed before any recipient), with where it went and how
//! well the session was protected, as one Postfix-style log line.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::dns::DnsFailure;
use super::policy::{SecurityLevel, TlsPolicy};
use crate::smtp::client::HostFailure;
use crate::smtp::{EnhancedStatus, Reply, replies};
use crate::transport::{CertVerdict, Encryption};

/// Where and how a recipient's message went (or did not).
#[derive(Debug, Clone)]
pub struct RecipientStatus {
    pub recipient: String,
    /// The remote's reply, or one made up for a failure without a reply
    /// (DNS, connection), with an enhanced status code either way.
    pub reply: Reply,
    pub relay: Option<(String, SocketAddr)>,
    pub tls: Option<Encryption>,
    pub verdict: Option<CertVerdict>,
    pub level: SecurityLevel,
    pub delay: Duration,
}

/// Postfix's names for delivery outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Sent,
    Deferred,
    Bounced,
}

impl RecipientStatus {
    pub fn status(&self) -> Status {
        match self.reply.class() {
            2 => Status::Sent,
            5 => Status::Bounced,
            _ => Status::Deferred,
        }
    }

    /// The enhanced status code: the reply's own, or one derived from its
    /// class (RFC 3463).
    pub fn dsn(&self) -> EnhancedStatus {
        self.reply.status()
    }

    /// `to=<a@b> relay=mx[1.2.3.4]:25 tls=TLSv1.3/… verified=no level=encrypted
    /// delay=0.21 dsn=2.0.0 status=sent (250 2.0.0 Ok)`.
    pub fn log_line(&self) -> String {
        let relay = match &self.relay {
            // An address literal shows as Postfix shows it: 192.0.2.8[192.0.2.8]:25.
            Some((host, addr)) if host.starts_with('[') => {
                format!("{}[{}]:{}", addr.ip(), addr.ip(), addr.port())
            }
            Some((host, addr)) => format!("{host}[{}]:{}", addr.ip(), addr.port()),
            None => "none".to_string(),
        };
        let tls = self
            .tls
            .as_ref()
            .map_or_else(|| "none".to_string(), Encryption::to_string);
        let verified = match &self.verdict {
            Some(CertVerdict::Verified) => "yes".to_string(),
            Some(CertVerdict::KeyKnown(basis)) => format!("yes ({basis})"),
            Some(CertVerdict::Dane(usage)) => format!("yes ({usage})"),
            Some(CertVerdict::Untrusted(why)) => format!("no ({why})"),
            None => "no".to_string(),
        };
        let status = match self.status() {
            Status::Sent => "sent",
            Status::Deferred => "deferred",
            Status::Bounced => "bounced",
        };
        format!(
            "to=<{}> relay={relay} tls={tls} verified={verified} level={} delay={:.2} dsn={} status={status} ({})",
            self.recipient,
            self.level,
            self.delay.as_secs_f64(),
            self.dsn(),
            self.reply
        )
    }
}

/// A reply for a DNS failure (RFC 3463 codes as Postfix uses them).
pub(super) fn dns_reply(failure: &DnsFailure) -> Reply {
    match failure {
        DnsFailure::NoSuchDomain(name) => replies::no_such_domain(name),
        DnsFailure::NoRecords(name, _) => replies::domain_has_no_address(name),
        DnsFailure::BadName(name) => replies::bad_destination_domain(name),
        DnsFailure::Temporary(name, why) => replies::dns_lookup_failed(name, why),
    }
}

/// The reply that stands for a session that failed before any recipient.
pub(super) fn host_failure_reply(
    failure: &HostFailure,
    host: &str,
    ip: IpAddr,
    policy: TlsPolicy,
) -> Reply {
    match failure {
        HostFailure::Refused { stage, reply } => {
            if *stage == "connect" || *stage == "STARTTLS" {
                reply.clone()
            } else {
                // Keep the remote's code and text, and say where it came from.
                let text = reply.text();
                let (code_part, rest) = match reply.enhanced_status() {
                    Some(code) => (
                        code.to_string(),
                        text[code.len()..].trim_start().to_string(),
                    ),
                    None => (format!("{}.0.0", reply.class()), text),
                };
                // A 5xx greeting (RFC 5321 §3.1: "no SMTP service here") says
                // nothing about the message, and is most often a busy or
                // blocklisting host: that host is skipped and the mail
                // deferred, never bounced (Postfix's smtp_skip_5xx_greeting,
                // on by default). The remote's own code stays in the text.
                let (code, code_part) = if *stage == "greeting" && reply.is_permanent() {
                    (reply.code() - 100, format!("4{}", &code_part[1..]))
                } else {
                    (reply.code(), code_part)
                };
                Reply::new(
                    code,
                    format!(
                        "{code_part} {host}[{ip}] refused {stage}: {} {rest}",
                        reply.code()
                    ),
                )
            }
        }
        HostFailure::TlsUnavailable { reply } => replies::tls_required(
            &match policy {
                // What DANE made of the host (dane.rs `decide`).
                TlsPolicy::DaneOnly => "DANE (usable TLSA records)".to_string(),
                other => format!("policy {}", other.as_str()),
            },
            host,
            ip,
            &match reply {
                Some(r) => format!("refused STARTTLS: {r}"),
                None => "did not offer STARTTLS".to_string(),
            },
        ),
        HostFailure::Protocol(e) => replies::not_smtp(host, ip, e),
        HostFailure::PonyDowngrade => replies::xpony_downgrade(host, ip),
        HostFailure::PonyRejected { why } => replies::xpony_key_refused(why),
        HostFailure::PonyFailed { why } => replies::xpony_failed(host, ip, why),
        HostFailure::Lost { stage } => replies::lost_waiting_for(host, ip, stage),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reply that stands for a host refusing the session keeps the
    /// remote's words; a 5xx greeting becomes a 4xx (the host is skipped,
    /// the mail deferred), a 5xx later in the session stays permanent.
    #[test]
    fn refused_sessions() {
        let ip: IpAddr = "192.0.2.25".parse().unwrap();
        for (stage, code, text, want) in [
            (
                "greeting",
                554,
                "5.7.1 go away",
                "454 4.7.1 mx.example[192.0.2.25] refused greeting: 554 go away",
            ),
            (
                "greeting",
                554,
                "no service",
                "454 4.0.0 mx.example[192.0.2.25] refused greeting: 554 no service",
            ),
            (
                "greeting",
                421,
                "4.3.2 busy",
                "421 4.3.2 mx.example[192.0.2.25] refused greeting: 421 busy",
            ),
            (
                "MAIL FROM",
                553,
                "5.7.1 sender refused",
                "553 5.7.1 mx.example[192.0.2.25] refused MAIL FROM: 553 sender refused",
            ),
        ] {
            let failure = HostFailure::Refused {
                stage,
                reply: Reply::new(code, text),
            };
            let got = host_failure_reply(&failure, "mx.example", ip, TlsPolicy::May);
            assert_eq!(got.to_string(), want);
        }
    }
}
