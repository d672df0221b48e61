//! DNS for delivery: MX (RFC 5321 §5.1, RFC 7505 null MX), addresses, TXT.
//!
//! With DNSSEC validation on ([`Dnssec`]), every answer is checked against
//! trust anchors (RFC 4035 §5) and carries its status: the XPONY key rules
//! (proto-spec §8.3 P1) need to know whether a key and the MX record that
//! named its host were signed.
//!
//! Names are always queried fully qualified (a trailing dot), so no search
//! domain is ever appended: `example.org` must never become
//! `example.org.corp.internal`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

use crate::transport::dane::Tlsa;

/// Why a lookup gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsFailure {
    /// The name does not exist (NXDOMAIN): permanent.
    #[error("{0}: domain does not exist")]
    NoSuchDomain(String),
    /// The name exists but has no records of the type asked.
    #[error("{0}: no {1} records")]
    NoRecords(String, &'static str),
    /// SERVFAIL, timeout, unreachable resolver: temporary.
    #[error("{0}: temporary DNS failure ({1})")]
    Temporary(String, String),
    /// The name cannot be a domain name at all: permanent.
    #[error("{0}: not a valid domain name")]
    BadName(String),
}

/// Whether and how answers are validated with DNSSEC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DnssecMode {
    /// No validation: every answer counts as `insecure` (unsigned).
    #[default]
    Off,
    /// Validate from the IANA root trust anchors (needs a resolver that
    /// passes DNSSEC records on, as any recursive resolver does).
    Root,
    /// Validate from the DNSKEY records in this file (zone-file syntax): a
    /// private or test zone.
    Anchors(PathBuf),
}

/// The DNSSEC status of an answer (RFC 4033 §5, as proto-spec §8.2 names
/// them; failures to get an answer at all are [`DnsFailure::Temporary`]).
///
/// Ordered from worst to best, so the status of several answers together
/// is the `min` of theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dnssec {
    /// Should have been signed, but the signatures do not check out.
    Bogus,
    /// Unsigned, or validation is off.
    Insecure,
    /// Validated from a trust anchor.
    Secure,
}

impl Dnssec {
    /// The status of an RRset: secure only if every record is.
    fn of<'a>(records: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut status = Dnssec::Secure;
        let mut any = false;
        for record in records {
            any = true;
            match record.proof {
                Proof::Secure => {}
                Proof::Bogus => return Dnssec::Bogus,
                _ => status = Dnssec::Insecure,
            }
        }
        if any { status } else { Dnssec::Insecure }
    }
}

/// The MX answer for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// (preference, exchange host) pairs, as published, and whether the
    /// MX RRset was signed.
    Exchangers(Vec<(u16, String)>, Dnssec),
    /// The domain publishes `MX 0 .`: it accepts no mail (RFC 7505).
    NullMx,
    /// No MX records: the domain itself is the implicit MX (RFC 5321 §5.1).
    Implicit,
}

/// A resolver for mail routing, built once and shared by all deliveries.
#[derive(Clone)]
pub struct MailResolver {
    inner: TokioResolver,
    /// Whether answers are validated (`--dnssec` not off): without it
    /// nothing is ever secure, and DANE cannot apply.
    validating: bool,
}

impl MailResolver {
    /// The system's nameservers (/etc/resolv.conf), without its search list.
    pub fn system(dnssec: &DnssecMode) -> Result<Self, DnsFailure> {
        let (config, _) = hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| DnsFailure::Temporary("resolv.conf".into(), e.to_string()))?;
        let (_, _, servers) = config.into_parts();
        Self::from_servers(servers, dnssec)
    }

    /// One nameserver at `addr` (`--dns 127.0.0.1:5353`: tests, split DNS).
    pub fn at(addr: SocketAddr, dnssec: &DnssecMode) -> Result<Self, DnsFailure> {
        let mut udp = ConnectionConfig::udp();
        udp.port = addr.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = addr.port();
        Self::from_servers(
            vec![NameServerConfig::new(addr.ip(), true, vec![udp, tcp])],
            dnssec,
        )
    }

    fn from_servers(
        servers: Vec<NameServerConfig>,
        dnssec: &DnssecMode,
    ) -> Result<Self, DnsFailure> {
        let config = ResolverConfig::from_parts(None, Vec::new(), servers);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        match dnssec {
            DnssecMode::Off => {}
            DnssecMode::Root => builder.options_mut().validate = true,
            DnssecMode::Anchors(path) => {
                let anchors = TrustAnchors::from_file(path).map_err(|e| {
                    DnsFailure::Temporary(
                        format!("trust anchors {}", path.display()),
                        e.to_string(),
                    )
                })?;
                builder = builder.with_trust_anchor(Arc::new(anchors));
            }
        }
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.ndots = 0;
        opts.timeout = Duration::from_secs(5);
        opts.attempts = 2;
        opts.use_hosts_file = ResolveHosts::Never;
        let inner = builder
            .build()
            .map_err(|e| DnsFailure::Temporary("resolver".into(), e.to_string()))?;
        Ok(MailResolver {
            inner,
            validating: *dnssec != DnssecMode::Off,
        })
    }

    /// Whether answers are DNSSEC-validated at all.
    pub fn validates(&self) -> bool {
        self.validating
    }

    /// The MX records of `domain`.
    pub async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsFailure> {
        let name = fqdn(domain)?;
        match self.inner.lookup(name, RecordType::MX).await {
            Ok(lookup) => {
                let dnssec = Dnssec::of(lookup.answers());
                let mut exchangers = Vec::new();
                let mut null = false;
                for record in lookup.answers() {
                    if let RData::MX(mx) = &record.data {
                        if mx.exchange.is_root() {
                            null = true;
                        } else {
                            exchangers.push((mx.preference, host_text(&mx.exchange)));
                        }
                    }
                }
                // RFC 7505 §3: a null MX must stand alone; if it does not,
                // the real exchangers win.
                Ok(match (exchangers.is_empty(), null) {
                    (true, true) => MxAnswer::NullMx,
                    (true, false) => MxAnswer::Implicit,
                    (false, _) => MxAnswer::Exchangers(exchangers, dnssec),
                })
            }
            // RFC 7672 §2.2.1: a bogus MX RRset defers the delivery.
            Err(e) if is_bogus(&e) => Err(DnsFailure::Temporary(
                domain.to_string(),
                "DNSSEC validation of its MX records failed (bogus)".into(),
            )),
            Err(e) => match classify(domain, "MX", &e) {
                DnsFailure::NoRecords(..) => Ok(MxAnswer::Implicit),
                other => Err(other),
            },
        }
    }

    /// The IPv4 and IPv6 addresses of `host`, IPv4 first.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsFailure> {
        self.addresses_signed(host).await.map(|(ips, _)| ips)
    }

    /// The addresses of `host` and the DNSSEC status of the answers that
    /// gave them: secure only if every address came signed (DANE needs a
    /// signed address lookup, RFC 7672 §2.2.2). An address literal is
    /// insecure: no DNS vouched for it.
    pub async fn addresses_signed(&self, host: &str) -> Result<(Vec<IpAddr>, Dnssec), DnsFailure> {
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok((vec![ip], Dnssec::Insecure));
        }
        let name = fqdn(host)?;
        let (v4, v6) = tokio::join!(
            self.inner.lookup(name.clone(), RecordType::A),
            self.inner.lookup(name, RecordType::AAAA)
        );
        let mut out = Vec::new();
        let mut failures = Vec::new();
        let mut status = Dnssec::Secure;
        for (result, kind) in [(v4, "A"), (v6, "AAAA")] {
            match result {
                Ok(lookup) => {
                    let found: Vec<&Record> = lookup
                        .answers()
                        .iter()
                        .filter(|r| matches!(r.data, RData::A(_) | RData::AAAA(_)))
                        .collect();
                    if !found.is_empty() {
                        status = status.min(Dnssec::of(lookup.answers()));
                    }
                    out.extend(found.iter().filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    }));
                }
                // A bogus AAAA beside a good A still taints the host.
                Err(e) if is_bogus(&e) => {
                    status = Dnssec::Bogus;
                    failures.push(DnsFailure::Temporary(
                        host.to_string(),
                        format!("DNSSEC validation of its {kind} records failed (bogus)"),
                    ));
                }
                Err(e) => failures.push(classify(host, kind, &e)),
            }
        }
        if !out.is_empty() {
            return Ok((out, status));
        }
        // Temporary beats "no such host": a later try may succeed.
        if let Some(t) = failures
            .iter()
            .find(|f| matches!(f, DnsFailure::Temporary(..)))
        {
            return Err(t.clone());
        }
        Err(failures
            .into_iter()
            .next()
            .unwrap_or_else(|| DnsFailure::NoRecords(host.to_string(), "A/AAAA")))
    }

    /// The TXT strings at `name` (each record's strings concatenated), and
    /// the answer's DNSSEC status. No such name or no TXT records is an
    /// empty list; a validation failure is an empty list marked bogus.
    pub async fn txt(&self, name: &str) -> Result<(Vec<String>, Dnssec), DnsFailure> {
        let fq = fqdn(name)?;
        match self.inner.lookup(fq, RecordType::TXT).await {
            Ok(lookup) => {
                let txt = lookup
                    .answers()
                    .iter()
                    .filter(|r| matches!(r.data, RData::TXT(_)));
                let strings = txt
                    .clone()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(join_character_strings(&txt.txt_data)),
                        _ => None,
                    })
                    .collect();
                Ok((strings, Dnssec::of(txt)))
            }
            Err(e) if is_bogus(&e) => Ok((Vec::new(), Dnssec::Bogus)),
            Err(e) => match classify(name, "TXT", &e) {
                DnsFailure::NoRecords(..) | DnsFailure::NoSuchDomain(_) => {
                    Ok((Vec::new(), Dnssec::Insecure))
                }
                other => Err(other),
            },
        }
    }

    /// The TLSA records for SMTP at `host` (`_25._tcp.<host>`, RFC 7672
    /// §2.2.3: port 25 whatever port is used to reach it) and their DNSSEC
    /// status. No such name or no TLSA records is an empty list; a
    /// validation failure is an empty list marked bogus; records that are
    /// not TLSA (a CNAME on the way) do not count.
    pub async fn tlsa(&self, host: &str) -> Result<(Vec<Tlsa>, Dnssec), DnsFailure> {
        let name = format!("_25._tcp.{}", host.trim_end_matches('.'));
        let fq = fqdn(&name)?;
        match self.inner.lookup(fq, RecordType::TLSA).await {
            Ok(lookup) => {
                let records = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TLSA(t) => Some(Tlsa::new(
                            t.cert_usage.into(),
                            t.selector.into(),
                            t.matching.into(),
                            t.cert_data.clone(),
                        )),
                        _ => None,
                    })
                    .collect();
                // The whole answer counts: a CNAME leading to the records
                // must be signed as well (RFC 7672 §2.2.3).
                Ok((records, Dnssec::of(lookup.answers())))
            }
            Err(e) if is_bogus(&e) => Ok((Vec::new(), Dnssec::Bogus)),
            Err(e) => match classify(&name, "TLSA", &e) {
                DnsFailure::NoRecords(..) | DnsFailure::NoSuchDomain(_) => {
                    Ok((Vec::new(), Dnssec::Insecure))
                }
                other => Err(other),
            },
        }
    }
}

/// One TXT record's text: its character-strings joined without a
/// separator, as DKIM does (RFC 6376 §3.6.2.2; proto-spec §8.2).
pub fn join_character_strings(strings: &[impl AsRef<[u8]>]) -> String {
    strings
        .iter()
        .map(|s| String::from_utf8_lossy(s.as_ref()))
        .collect()
}

fn fqdn(domain: &str) -> Result<Name, DnsFailure> {
    let trimmed = domain.trim_end_matches('.');
    if trimmed.is_empty() {
        return Err(DnsFailure::BadName(domain.to_string()));
    }
    Name::from_utf8(format!("{trimmed}.")).map_err(|_| DnsFailure::BadName(domain.to_string()))
}

fn host_text(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a lookup failed DNSSEC validation (rather than the network).
fn is_bogus(e: &NetError) -> bool {
    matches!(
        e,
        NetError::Dns(DnsError::DnssecBogus)
            | NetError::Dns(DnsError::Nsec {
                proof: Proof::Bogus,
                ..
            })
    )
}

fn classify(name: &str, kind: &'static str, e: &NetError) -> DnsFailure {
    if e.is_nx_domain() {
        DnsFailure::NoSuchDomain(name.to_string())
    } else if e.is_no_records_found() {
        DnsFailure::NoRecords(name.to_string(), kind)
    } else {
        DnsFailure::Temporary(name.to_string(), e.to_string())
    }
}
