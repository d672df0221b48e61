//! `blackpony probe DOMAIN`: what a destination supports, and the level
//! blackpony would reach with it under the current policy, from the same
//! code delivery uses (resolver, TLS client, XPONY evidence), without
//! sending mail or changing any state (no pin is stored).
//!
//! Per MX host (its first address): one session that offers XPONY (to see
//! the server's key) and one that asks for STARTTLS (to see the TLS
//! version, cipher, the certificate's subject and its verdict for the MX
//! name, and whether its chain matches the host's TLSA records); both end
//! with QUIT after EHLO. DANE and MTA-STS are decided by delivery's own
//! code (`dane::lookup`/`decide`, `sts_for_host`), so the level shown is
//! the one a delivery would reach.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use rustls_pki_types::UnixTime;

use super::connection::Connection;
use super::dane::{self as dane_policy, DaneStatus, HostTls};
use super::deliver::Deliverer;
use super::dns::{DnsFailure, Dnssec, MxAnswer};
use super::mx_hosts::sts_host_policy;
use super::policy::{SecurityLevel, TlsPolicy};
use super::sts::Mode as StsMode;
use super::sts_fetch::ActivePolicy;
use crate::pony::pins::DnsKeys;
use crate::smtp::client::{ClientSession, HostFailure, SessionOutcome, StartTls};
use crate::transport::{CertVerdict, Encryption, Stream, cert_name};

/// Everything found about one domain.
#[derive(Debug, Clone, Serialize)]
pub struct DomainProbe {
    pub domain: String,
    /// The policy that applies to it here (`--tls-policy`, `[outbound.domains]`).
    pub policy: &'static str,
    /// `listed`, `implicit` (no MX: the domain itself), `null` (RFC 7505),
    /// or `failed`.
    pub mx: &'static str,
    /// The MX RRset's DNSSEC status (`secure`, `insecure`, `bogus`).
    pub mx_dnssec: &'static str,
    /// Why the MX lookup failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mx_error: Option<String>,
    /// The domain's MTA-STS policy, as delivery sees it.
    pub mta_sts: String,
    pub hosts: Vec<HostProbe>,
}

/// One MX host.
#[derive(Debug, Clone, Serialize)]
pub struct HostProbe {
    pub host: String,
    pub preference: u16,
    pub addresses: Vec<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address_error: Option<String>,
    /// The address probed (the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probed: Option<IpAddr>,
    /// Why no session could be had (connect, greeting).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub xpony: XponyProbe,
    pub starttls: StartTlsProbe,
    pub dane: DaneProbe,
    /// Whether the MX matches the domain's MTA-STS policy, or why the
    /// policy does not apply to it (DANE governs it).
    pub mta_sts: String,
    /// The level blackpony would reach with this host under the policy, or
    /// why it would defer.
    pub level: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct XponyProbe {
    pub offered: bool,
    /// `SHA256:…` of the key the server presented.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// `none`, `matches`, `differs` (a pin for this host).
    pub pin: &'static str,
    /// `none`, `matches`, `differs`, `lookup failed` (`_xpony._tcp` key),
    /// with `(DNSSEC)` when validated.
    pub dns_key: String,
    /// How delivery would judge the key (`pinned key`, `DNS key`, `first
    /// contact`, …) or why it refused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StartTlsProbe {
    pub offered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    /// `verified`, or `not verified (REASON)`: PKIX for the MX name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The certificate's subject (`CN=…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// DANE for one MX host.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DaneProbe {
    /// What delivery makes of it (the words of the `dane:` log line):
    /// `usable (…)`, `unusable (…)`, `not used (WHY)`, `failed (WHY)`.
    pub status: String,
    /// The TLSA records published at `_25._tcp.<host>`, whatever their
    /// DNSSEC status.
    pub tlsa: Vec<String>,
    /// The TLSA answer's DNSSEC status (`secure`, `insecure`, `bogus`,
    /// `not validated (--dnssec off)`) or why there is none.
    pub dnssec: String,
    /// Whether the chain of the STARTTLS session matches the usable records
    /// (`matches (DANE-EE 3 1 1 …)`, `does not match: WHY`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
}

/// What the two sessions showed, for [`level_reached`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub reachable: bool,
    /// XPONY came up, and whether its key was authenticated (pin, DNS key).
    pub xpony: Option<bool>,
    /// The host has a pin or a DNS key: delivery requires XPONY from it.
    pub xpony_required: bool,
    /// The key was refused (impostor or key change).
    pub xpony_refused: bool,
    pub starttls_offered: bool,
    /// The handshake's certificate verdict (`None`: no handshake).
    pub tls_verified: Option<bool>,
    pub tls_failed: bool,
    /// Why delivery would not connect to the host at all (DANE failed or
    /// required and absent, not in an enforced MTA-STS policy).
    pub refused: Option<String>,
    /// Usable TLSA records: TLS required, the chain must match them.
    pub dane_required: bool,
    /// Whether the handshake's chain matched them (`None`: no handshake).
    pub dane_matched: Option<bool>,
    /// An MTA-STS policy in mode enforce governs the host.
    pub sts_enforced: bool,
}

/// The level delivery would reach with a host, or why it would defer;
/// in the words of the log (`level=`).
pub fn level_reached(policy: TlsPolicy, seen: &Seen) -> String {
    if let Some(why) = &seen.refused {
        return format!("deferred: {why}");
    }
    if !seen.reachable {
        return "unreachable: would try the next MX".into();
    }
    if policy == TlsPolicy::None {
        return "plaintext (policy none)".into();
    }
    if seen.xpony_refused {
        return "deferred: XPONY key refused".into();
    }
    match seen.xpony {
        Some(true) => return "authenticated (XPONY)".into(),
        // Under verify (and DANE), a first contact does not count
        // (proto-spec §9): delivery does not use XPONY with an unknown key.
        Some(false) if policy.required() != SecurityLevel::Authenticated => {
            return "encrypted (XPONY)".into();
        }
        _ => {}
    }
    if seen.xpony_required && seen.xpony.is_none() {
        return "deferred: XPONY expected (pin or DNS key) but not offered".into();
    }
    // RFC 7672 §2.2: usable TLSA records make TLS mandatory and the
    // certificate must match them; never plaintext.
    if seen.dane_required {
        return match (seen.dane_matched, seen.tls_failed) {
            (Some(true), _) => "authenticated (DANE)".into(),
            (Some(false), _) => {
                "deferred: the certificate does not match its TLSA records (DANE)".into()
            }
            (None, true) => "deferred: TLS handshake failed (DANE: never plaintext)".into(),
            (None, false) => {
                "deferred: no STARTTLS, which DANE requires (usable TLSA records)".into()
            }
        };
    }
    let by = if seen.sts_enforced {
        "MTA-STS policy, mode enforce".to_string()
    } else {
        format!("policy {}", policy.as_str())
    };
    match (seen.tls_verified, seen.tls_failed, seen.starttls_offered) {
        (Some(true), _, _) => "authenticated (TLS)".into(),
        (Some(false), _, _) if policy == TlsPolicy::Verify => {
            format!("deferred: certificate not verified ({by})")
        }
        (Some(false), _, _) => "encrypted (TLS)".into(),
        (None, true, _) => "deferred: TLS handshake failed (plaintext only after --tls-backoff, where policy allows)".into(),
        (None, false, false) if policy == TlsPolicy::May => "plaintext (no STARTTLS)".into(),
        (None, false, false) => format!("deferred: no STARTTLS ({by})"),
        (None, false, true) => "unknown: STARTTLS offered but no handshake was made".into(),
    }
}

fn dnssec_name(d: Dnssec) -> &'static str {
    match d {
        Dnssec::Secure => "secure",
        Dnssec::Insecure => "insecure",
        Dnssec::Bogus => "bogus",
    }
}

/// Whether probing this domain found nothing delivery could use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// At least one host would take mail at the policy's level.
    Deliverable,
    /// The domain accepts no mail (null MX) or does not exist.
    NoMail,
    /// A temporary DNS failure.
    Temporary,
    /// Hosts exist, but none would be delivered to now.
    NotDeliverable,
}

impl DomainProbe {
    pub fn verdict(&self) -> Verdict {
        match self.mx {
            "null" => Verdict::NoMail,
            "failed"
                if self
                    .mx_error
                    .as_deref()
                    .is_some_and(|e| e.contains("temporary")) =>
            {
                Verdict::Temporary
            }
            "failed" => Verdict::NoMail,
            _ if self.hosts.iter().any(|h| {
                !h.level.starts_with("deferred")
                    && !h.level.starts_with("unreachable")
                    && !h.level.starts_with("unknown")
            }) =>
            {
                Verdict::Deliverable
            }
            _ => Verdict::NotDeliverable,
        }
    }

    /// The readable table.
    pub fn text(&self) -> String {
        let mut out = format!(
            "domain   {}\npolicy   {}\nMX       {} (DNSSEC {})\nMTA-STS  {}\n",
            self.domain, self.policy, self.mx, self.mx_dnssec, self.mta_sts
        );
        if let Some(e) = &self.mx_error {
            out.push_str(&format!("         {e}\n"));
        }
        for h in &self.hosts {
            out.push_str(&format!("\n{} (preference {})\n", h.host, h.preference));
            let addresses: Vec<String> = h.addresses.iter().map(|a| a.to_string()).collect();
            out.push_str(&format!(
                "  addresses  {}{}\n",
                if addresses.is_empty() {
                    "none".into()
                } else {
                    addresses.join(" ")
                },
                h.address_error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
            if let Some(e) = &h.error {
                out.push_str(&format!("  session    {e}\n"));
            }
            let x = &h.xpony;
            out.push_str(&format!(
                "  XPONY      {}{} pin={} dns-key={}{}\n",
                if x.offered { "offered" } else { "not offered" },
                x.fingerprint
                    .as_ref()
                    .map(|f| format!(" key={f}"))
                    .unwrap_or_default(),
                x.pin,
                x.dns_key,
                x.verdict
                    .as_ref()
                    .map(|v| format!(" ({v})"))
                    .unwrap_or_default()
            ));
            let t = &h.starttls;
            let tls = match (&t.protocol, &t.error) {
                (Some(p), _) => format!(
                    "{p} {} certificate {}{}",
                    t.cipher.as_deref().unwrap_or("?"),
                    t.certificate.as_deref().unwrap_or("?"),
                    t.subject
                        .as_ref()
                        .map(|s| format!(", subject {s}"))
                        .unwrap_or_default()
                ),
                (None, Some(e)) => e.clone(),
                (None, None) if t.offered => "offered".into(),
                (None, None) => "not offered".into(),
            };
            out.push_str(&format!("  STARTTLS   {tls}\n"));
            let d = &h.dane;
            out.push_str(&format!("  DANE       {}\n", d.status));
            out.push_str(&format!(
                "  TLSA       {} (DNSSEC {})\n",
                if d.tlsa.is_empty() {
                    "none".to_string()
                } else {
                    d.tlsa.join("; ")
                },
                d.dnssec
            ));
            if let Some(m) = &d.matches {
                out.push_str(&format!("  DANE match {m}\n"));
            }
            out.push_str(&format!("  MTA-STS    {}\n", h.mta_sts));
            out.push_str(&format!("  level      {}\n", h.level));
        }
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

impl Deliverer {
    /// Probes `domain` as described in the module docs.
    pub async fn probe(&self, domain: &str) -> DomainProbe {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let policy = self.policy.for_domain(&domain);
        let mut probe = DomainProbe {
            domain: domain.clone(),
            policy: policy.as_str(),
            mx: "listed",
            mx_dnssec: "insecure",
            mx_error: None,
            mta_sts: "not checked".into(),
            hosts: Vec::new(),
        };
        let sts = match &self.sts {
            Some(sts) => {
                let lookup = sts.lookup(&domain).await;
                let applied = policy != TlsPolicy::None && sts.settings.applies_to(&domain);
                probe.mta_sts = match (&lookup.active, &lookup.problem) {
                    (Some(a), _) => format!(
                        "mode {} id {} mx {} max_age {}",
                        a.policy.mode.as_str(),
                        a.id,
                        a.policy.mx_list(),
                        a.policy.max_age
                    ),
                    (None, Some(p)) => format!("none ({p:?})"),
                    (None, None) => "none published".into(),
                };
                if !applied && lookup.active.is_some() {
                    probe
                        .mta_sts
                        .push_str(" (not applied here: policy none or switched off)");
                }
                lookup.active.filter(|_| applied)
            }
            None => None,
        };
        let (exchangers, mx_dnssec) = match self.resolver.mx(&domain).await {
            Ok(MxAnswer::Exchangers(mut list, dnssec)) => {
                list.sort();
                (list, dnssec)
            }
            Ok(MxAnswer::Implicit) => {
                probe.mx = "implicit";
                (vec![(0, domain.clone())], Dnssec::Insecure)
            }
            Ok(MxAnswer::NullMx) => {
                probe.mx = "null";
                probe.mx_error = Some("the domain accepts no mail (null MX, RFC 7505)".into());
                return probe;
            }
            Err(e) => {
                probe.mx = "failed";
                probe.mx_error = Some(match &e {
                    DnsFailure::Temporary(..) => format!("temporary: {e}"),
                    _ => e.to_string(),
                });
                return probe;
            }
        };
        probe.mx_dnssec = dnssec_name(mx_dnssec);
        for (preference, host) in exchangers {
            let mut h = self
                .probe_host(&domain, &host, mx_dnssec, policy, sts.as_ref())
                .await;
            h.preference = preference;
            probe.hosts.push(h);
        }
        probe
    }

    async fn probe_host(
        &self,
        domain: &str,
        host: &str,
        mx: Dnssec,
        policy: TlsPolicy,
        sts: Option<&ActivePolicy>,
    ) -> HostProbe {
        let mut h = HostProbe {
            host: host.to_string(),
            preference: 0,
            addresses: Vec::new(),
            address_error: None,
            probed: None,
            error: None,
            xpony: XponyProbe {
                pin: "none",
                dns_key: "none".into(),
                ..Default::default()
            },
            starttls: StartTlsProbe::default(),
            dane: DaneProbe::default(),
            mta_sts: "no policy".into(),
            level: String::new(),
        };
        let mut addresses_dnssec = Dnssec::Insecure;
        match self.resolver.addresses_signed(host).await {
            Ok((list, status)) => {
                h.addresses = list;
                addresses_dnssec = status;
            }
            Err(e) => h.address_error = Some(e.to_string()),
        }
        let mut seen = Seen::default();
        // DANE and MTA-STS as delivery decides them for this host.
        let dane = dane_policy::lookup(&self.resolver, domain, host, mx, addresses_dnssec).await;
        h.dane.status = dane_policy::describe(&dane);
        (h.dane.tlsa, h.dane.dnssec) = self.tlsa_published(host).await;
        let mut effective = policy;
        match dane_policy::decide(policy, &dane) {
            Err(refusal) => {
                seen.refused = Some(format!("DANE: {}", refusal.why));
                h.mta_sts = describe_sts(host, sts, !dane.governs());
            }
            Ok(host_tls) => {
                let sts_here = self.sts_for_host(sts, &host_tls);
                h.mta_sts = describe_sts(host, sts, sts_here.is_some());
                if let Some(active) = sts_here.filter(|a| a.policy.mode == StsMode::Enforce) {
                    seen.sts_enforced = true;
                    if !active.policy.mx_matches(host) {
                        seen.refused = Some(format!(
                            "not in the MTA-STS policy's mx: {} (mode enforce)",
                            active.policy.mx_list()
                        ));
                    }
                }
                seen.dane_required = host_tls.dane.is_some();
                effective = sts_host_policy(host_tls.policy, sts_here);
            }
        }
        let Some(ip) = h.addresses.first().copied() else {
            h.level = level_reached(policy, &seen);
            return h;
        };
        h.probed = Some(ip);
        let addr = SocketAddr::new(ip, self.smtp_port);

        // 1. XPONY (and whether the host answers at all).
        if self.pony.is_some() {
            match self.pony_context(host, mx, TlsPolicy::May).await {
                Ok(context) => {
                    if let Some(c) = &context {
                        h.xpony.pin = if c.pin.is_some() { "pinned" } else { "none" };
                        h.xpony.dns_key = describe_dns(&c.dns);
                        seen.xpony_required = c.required;
                    }
                    match self
                        .connect(addr, host, HostTls::plain(TlsPolicy::May))
                        .await
                    {
                        Ok(mut conn) => {
                            let session = ClientSession::opening(&self.helo_name, StartTls::Never);
                            let mut session = self.offer_pony(&mut conn, session, context);
                            let end = self.drive(&mut conn, &mut session, TlsPolicy::May).await;
                            seen.reachable = conn_greeted(&conn);
                            let failure = failure_of(end, &mut session);
                            self.note_xpony(&conn, failure.as_ref(), &mut h.xpony, &mut seen);
                            if session.is_ready() {
                                super::cache::quit(conn).await;
                            }
                            if let Some(f) = failure
                                && !seen.reachable
                            {
                                h.error = Some(f.to_string());
                            }
                        }
                        Err(reply) => h.error = Some(reply.to_string()),
                    }
                }
                Err(f) => h.xpony.verdict = Some(f.to_string()),
            }
        }

        // 2. STARTTLS, with the certificate judged for the MX name.
        if h.error.is_none() || self.pony.is_none() {
            match self
                .connect(addr, host, HostTls::plain(TlsPolicy::Encrypt))
                .await
            {
                Ok(mut conn) => {
                    let mut session = ClientSession::opening(&self.helo_name, StartTls::Required);
                    let end = self
                        .drive(&mut conn, &mut session, TlsPolicy::Encrypt)
                        .await;
                    seen.reachable |= conn_greeted(&conn);
                    let failure = failure_of(end, &mut session);
                    let t = &mut h.starttls;
                    if let Some(Encryption::Tls { version, cipher }) = &conn.tls {
                        t.offered = true;
                        t.protocol = Some((*version).to_string());
                        t.cipher = Some(cipher.clone());
                        let verified = conn.verdict.as_ref().is_some_and(CertVerdict::is_verified);
                        t.certificate = Some(match &conn.verdict {
                            Some(CertVerdict::Untrusted(why)) => format!("not verified ({why})"),
                            _ if verified => "verified".into(),
                            _ => "not verified".into(),
                        });
                        seen.tls_verified = Some(verified);
                        let chain = conn
                            .stream
                            .as_ref()
                            .map(Stream::peer_certificates)
                            .unwrap_or_default();
                        t.subject = chain.first().and_then(cert_name::subject);
                        if let DaneStatus::Usable { auth, .. } = &dane {
                            let matched = auth.check(&chain, UnixTime::now());
                            h.dane.matches = Some(match &matched {
                                Ok(m) => {
                                    format!("matches ({} {})", m.record().usage_name(), m.record())
                                }
                                Err(why) => format!("does not match: {why}"),
                            });
                            seen.dane_matched = Some(matched.is_ok());
                        }
                    } else if conn.tls_failed {
                        t.offered = true;
                        seen.tls_failed = true;
                        t.error = failure.as_ref().map(|f| f.to_string());
                    } else if let Some(HostFailure::TlsUnavailable { reply }) = &failure {
                        t.error = Some(match reply {
                            Some(r) => format!("refused: {r}"),
                            None => "not offered".into(),
                        });
                    } else if let Some(f) = &failure {
                        t.error = Some(f.to_string());
                        if !seen.reachable {
                            h.error.get_or_insert_with(|| f.to_string());
                        }
                    }
                    seen.starttls_offered = t.offered;
                    if session.is_ready() {
                        super::cache::quit(conn).await;
                    }
                }
                Err(reply) => {
                    h.error.get_or_insert_with(|| reply.to_string());
                }
            }
        }
        if seen.reachable {
            h.error = None;
        }
        h.level = level_reached(effective, &seen);
        h
    }

    /// The TLSA records at `_25._tcp.<host>` as published, and the
    /// answer's DNSSEC status, for the table (delivery's verdict on them is
    /// [`dane_policy::describe`]).
    async fn tlsa_published(&self, host: &str) -> (Vec<String>, String) {
        if crate::smtp::envelope::address_literal(host).is_some() {
            return (Vec::new(), "none (an address literal)".into());
        }
        match self.resolver.tlsa(host).await {
            Ok((records, status)) => (
                records.iter().map(|r| r.to_string()).collect(),
                if self.resolver.validates() {
                    dnssec_name(status).to_string()
                } else {
                    "not validated (--dnssec off)".to_string()
                },
            ),
            Err(e) => (Vec::new(), format!("lookup failed: {e}")),
        }
    }

    /// What the XPONY session showed.
    fn note_xpony(
        &self,
        conn: &Connection,
        failure: Option<&HostFailure>,
        x: &mut XponyProbe,
        seen: &mut Seen,
    ) {
        let Some(context) = conn.pony.as_ref() else {
            return;
        };
        if let Some(key) = context.presented.as_ref() {
            x.offered = true;
            x.fingerprint = Some(crate::pony::keys::fingerprint(key));
            if let Some(pin) = context.pin.as_ref() {
                x.pin = if pin.key == *key || pin.successor.as_ref() == Some(key) {
                    "matches"
                } else {
                    "differs"
                };
            }
            if let DnsKeys::Published { keys, dnssec } = &context.dns {
                let ok = if keys.contains(key) {
                    "matches"
                } else {
                    "differs"
                };
                x.dns_key = format!("{ok}{}", if *dnssec { " (DNSSEC)" } else { "" });
            }
        }
        match (context.seen.as_ref().map(|(_, b, _)| *b), failure) {
            (Some(basis), _) => {
                x.verdict = Some(basis.as_str().to_string());
                seen.xpony = Some(basis.authenticated());
            }
            (None, Some(HostFailure::PonyRejected { why })) => {
                x.verdict = Some(format!("refused: {why}"));
                seen.xpony_refused = true;
            }
            (None, Some(HostFailure::PonyFailed { why })) => {
                x.verdict = Some(format!("failed: {why}"));
            }
            _ => {}
        }
    }
}

/// The MTA-STS column: whether the host matches the policy, or that DANE
/// governs it instead (RFC 8461 §2).
fn describe_sts(host: &str, sts: Option<&ActivePolicy>, applies: bool) -> String {
    let Some(active) = sts else {
        return "no policy".into();
    };
    let listed = if active.policy.mx_matches(host) {
        "matches the policy"
    } else {
        "does not match the policy"
    };
    if applies {
        format!("{listed} (mode {})", active.policy.mode.as_str())
    } else {
        format!("not applied: DANE governs this host (RFC 8461 §2); it {listed}")
    }
}

fn describe_dns(dns: &DnsKeys) -> String {
    match dns {
        DnsKeys::Absent => "none".into(),
        DnsKeys::Published { dnssec, .. } => {
            format!("published{}", if *dnssec { " (DNSSEC)" } else { "" })
        }
        DnsKeys::Indeterminate => "lookup failed".into(),
    }
}

fn conn_greeted(conn: &Connection) -> bool {
    conn.greeted
}

fn failure_of(end: Result<(), HostFailure>, session: &mut ClientSession) -> Option<HostFailure> {
    match end {
        Err(f) => Some(f),
        Ok(()) if session.is_ready() => None,
        Ok(()) => Some(match session.take_outcome() {
            Some(SessionOutcome::Failed(f)) => f,
            _ => HostFailure::Lost { stage: "greeting" },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        let up = Seen {
            reachable: true,
            ..Default::default()
        };
        let tls = |verified| Seen {
            starttls_offered: true,
            tls_verified: Some(verified),
            ..up.clone()
        };
        let cases = [
            (TlsPolicy::May, Seen::default(), "unreachable"),
            (TlsPolicy::May, up.clone(), "plaintext (no STARTTLS)"),
            (
                TlsPolicy::Encrypt,
                up.clone(),
                "deferred: no STARTTLS (policy encrypt)",
            ),
            (TlsPolicy::None, tls(true), "plaintext (policy none)"),
            (TlsPolicy::May, tls(false), "encrypted (TLS)"),
            (
                TlsPolicy::Verify,
                tls(false),
                "deferred: certificate not verified",
            ),
            (TlsPolicy::Verify, tls(true), "authenticated (TLS)"),
            (
                TlsPolicy::May,
                Seen {
                    xpony: Some(false),
                    ..tls(false)
                },
                "encrypted (XPONY)",
            ),
            (
                TlsPolicy::Verify,
                Seen {
                    xpony: Some(false),
                    ..tls(true)
                },
                "authenticated (TLS)",
            ),
            (
                TlsPolicy::May,
                Seen {
                    xpony: Some(true),
                    ..up.clone()
                },
                "authenticated (XPONY)",
            ),
            (
                TlsPolicy::May,
                Seen {
                    xpony_required: true,
                    ..tls(true)
                },
                "deferred: XPONY expected",
            ),
            (
                TlsPolicy::May,
                Seen {
                    xpony_refused: true,
                    ..tls(true)
                },
                "deferred: XPONY key refused",
            ),
            (
                TlsPolicy::May,
                Seen {
                    starttls_offered: true,
                    tls_failed: true,
                    ..up.clone()
                },
                "deferred: TLS handshake failed",
            ),
        ];
        let dane = |matched| Seen {
            dane_required: true,
            dane_matched: matched,
            starttls_offered: true,
            tls_verified: Some(false),
            ..up.clone()
        };
        let more = [
            (
                TlsPolicy::DaneOnly,
                dane(Some(true)),
                "authenticated (DANE)",
            ),
            (
                TlsPolicy::DaneOnly,
                dane(Some(false)),
                "deferred: the certificate does not match its TLSA records",
            ),
            (
                TlsPolicy::DaneOnly,
                Seen {
                    dane_required: true,
                    ..up.clone()
                },
                "deferred: no STARTTLS, which DANE requires",
            ),
            (
                TlsPolicy::DaneOnly,
                Seen {
                    dane_required: true,
                    tls_failed: true,
                    ..up.clone()
                },
                "deferred: TLS handshake failed (DANE",
            ),
            // DANE-EE: the certificate matches though PKIX says no.
            (
                TlsPolicy::DaneOnly,
                dane(Some(true)),
                "authenticated (DANE)",
            ),
            // A first-contact XPONY key does not stand in for DANE.
            (
                TlsPolicy::DaneOnly,
                Seen {
                    xpony: Some(false),
                    ..dane(Some(true))
                },
                "authenticated (DANE)",
            ),
            (
                TlsPolicy::May,
                Seen {
                    refused: Some("DANE: the TLSA records are bogus".into()),
                    ..Seen::default()
                },
                "deferred: DANE: the TLSA records are bogus",
            ),
            (
                TlsPolicy::Verify,
                Seen {
                    sts_enforced: true,
                    ..tls(false)
                },
                "deferred: certificate not verified (MTA-STS policy, mode enforce)",
            ),
            (
                TlsPolicy::Verify,
                Seen {
                    sts_enforced: true,
                    ..up.clone()
                },
                "deferred: no STARTTLS (MTA-STS policy, mode enforce)",
            ),
        ];
        for (policy, seen, want) in cases.into_iter().chain(more) {
            let got = level_reached(policy, &seen);
            assert!(got.starts_with(want), "{policy:?} {seen:?}: {got}");
        }
    }
}
