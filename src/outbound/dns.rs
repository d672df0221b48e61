//! DNS for delivery: MX (RFC 5321 §5.1, RFC 7505 null MX), addresses, TXT.
//!
//! Names are always queried fully qualified (a trailing dot), so no search
//! domain is ever appended: `example.org` must never become
//! `example.org.corp.internal`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

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

/// The MX answer for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// (preference, exchange host) pairs, as published.
    Exchangers(Vec<(u16, String)>),
    /// The domain publishes `MX 0 .`: it accepts no mail (RFC 7505).
    NullMx,
    /// No MX records: the domain itself is the implicit MX (RFC 5321 §5.1).
    Implicit,
}

/// A resolver for mail routing, built once and shared by all deliveries.
#[derive(Clone)]
pub struct MailResolver {
    inner: TokioResolver,
}

impl MailResolver {
    /// The system's nameservers (/etc/resolv.conf), without its search list.
    pub fn system() -> Result<Self, DnsFailure> {
        let (config, _) = hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| DnsFailure::Temporary("resolv.conf".into(), e.to_string()))?;
        let (_, _, servers) = config.into_parts();
        Self::from_servers(servers)
    }

    /// One nameserver at `addr` (`--dns 127.0.0.1:5353`: tests, split DNS).
    pub fn at(addr: SocketAddr) -> Result<Self, DnsFailure> {
        let mut udp = ConnectionConfig::udp();
        udp.port = addr.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = addr.port();
        Self::from_servers(vec![NameServerConfig::new(addr.ip(), true, vec![udp, tcp])])
    }

    fn from_servers(servers: Vec<NameServerConfig>) -> Result<Self, DnsFailure> {
        let config = ResolverConfig::from_parts(None, Vec::new(), servers);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.ndots = 0;
        opts.timeout = Duration::from_secs(5);
        opts.attempts = 2;
        opts.use_hosts_file = ResolveHosts::Never;
        let inner = builder
            .build()
            .map_err(|e| DnsFailure::Temporary("resolver".into(), e.to_string()))?;
        Ok(MailResolver { inner })
    }

    /// The MX records of `domain`.
    pub async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsFailure> {
        let name = fqdn(domain)?;
        match self.inner.lookup(name, RecordType::MX).await {
            Ok(lookup) => {
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
                    (false, _) => MxAnswer::Exchangers(exchangers),
                })
            }
            Err(e) => match classify(domain, "MX", &e) {
                DnsFailure::NoRecords(..) => Ok(MxAnswer::Implicit),
                other => Err(other),
            },
        }
    }

    /// The IPv4 and IPv6 addresses of `host`, IPv4 first.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsFailure> {
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(vec![ip]);
        }
        let name = fqdn(host)?;
        let (v4, v6) = tokio::join!(
            self.inner.lookup(name.clone(), RecordType::A),
            self.inner.lookup(name, RecordType::AAAA)
        );
        let mut out = Vec::new();
        let mut failures = Vec::new();
        for (result, kind) in [(v4, "A"), (v6, "AAAA")] {
            match result {
                Ok(lookup) => out.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })),
                Err(e) => failures.push(classify(host, kind, &e)),
            }
        }
        if !out.is_empty() {
            return Ok(out);
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

    /// The TXT strings at `name` (each record's strings concatenated).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsFailure> {
        let fq = fqdn(name)?;
        match self.inner.lookup(fq, RecordType::TXT).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(join_character_strings(&txt.txt_data)),
                    _ => None,
                })
                .collect()),
            Err(e) => match classify(name, "TXT", &e) {
                DnsFailure::NoRecords(..) | DnsFailure::NoSuchDomain(_) => Ok(Vec::new()),
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

fn classify(name: &str, kind: &'static str, e: &NetError) -> DnsFailure {
    if e.is_nx_domain() {
        DnsFailure::NoSuchDomain(name.to_string())
    } else if e.is_no_records_found() {
        DnsFailure::NoRecords(name.to_string(), kind)
    } else {
        DnsFailure::Temporary(name.to_string(), e.to_string())
    }
}
