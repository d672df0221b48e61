//! MTA-STS, the I/O part: the `_mta-sts` TXT lookup, the HTTPS fetch of
//! the policy file, and the cache, put together as RFC 8461 §3 and §5 say.
//! The decisions are in [`super::sts`] (sans-IO).
//!
//! The HTTPS client is reqwest on rustls with the ring provider, given a
//! configuration built here ([`ClientTls::verifying_config`]): certificates
//! verify against the same roots as MX certificates (Mozilla's plus
//! `--tls-ca-file`); names are resolved by blackpony's own resolver (the
//! `--dns` server, never /etc/hosts or the system's search list); no
//! redirects, no proxy, no HTTP cache, a size and a time limit (§3.3).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::dns::{Dnssec, MailResolver};
use super::outcome::TlsFailure;
use super::sts::{self, Cached, Discovery, MAX_POLICY_SIZE, Next, Policy};
use crate::log;
use crate::state::sts_cache::{StsCache, StsRecord};
use crate::transport::ClientTls;

/// A fetch that failed is not tried again for the same id before this
/// (RFC 8461 §3.3: "limit further attempts to a period of five minutes or
/// longer per version ID"), within one process.
pub const FETCH_RETRY: Duration = Duration::from_secs(300);

/// The time limit of one policy fetch (RFC 8461 §3.3 suggests a minute).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Where MTA-STS applies, and how the policy host is reached.
#[derive(Debug, Clone)]
pub struct StsSettings {
    /// Look for policies of domains without their own switch.
    pub enabled: bool,
    /// Per-domain switches (lower case), over `enabled`.
    pub domains: HashMap<String, bool>,
    /// The HTTPS port of policy hosts: 443, except in tests.
    pub https_port: u16,
    pub fetch_timeout: Duration,
}

impl Default for StsSettings {
    fn default() -> Self {
        StsSettings {
            enabled: true,
            domains: HashMap::new(),
            https_port: 443,
            fetch_timeout: FETCH_TIMEOUT,
        }
    }
}

impl StsSettings {
    /// Whether MTA-STS is looked up for `domain`.
    pub fn applies_to(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.domains.get(&domain).copied().unwrap_or(self.enabled)
    }
}

/// A failed fetch and its reason, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchProblem {
    /// `sts-policy-fetch-error` (not reached, or not 200 with a
    /// `text/plain` body within the limits), `sts-policy-invalid` (not a
    /// valid policy), `sts-webpki-invalid` (its certificate did not verify
    /// for `mta-sts.<domain>`): RFC 8460 §4.3.4.
    pub failure: TlsFailure,
    pub detail: String,
}

/// The HTTPS client for policy files.
#[derive(Clone)]
pub struct StsFetcher {
    client: reqwest::Client,
    port: u16,
}

/// reqwest's name resolution through blackpony's resolver. The port 0 of
/// each address is replaced by the URL's (hyper-util's `set_port`).
struct ViaMailResolver(MailResolver);

impl reqwest::dns::Resolve for ViaMailResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let ips = resolver
                .addresses(&host)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// An HTTPS client as blackpony's HTTP requests need one (MTA-STS
/// policies, TLS reports): certificates checked against the MX roots
/// ([`ClientTls::verifying_config`]), names resolved by `resolver`, HTTPS
/// only, no redirect followed, no proxy, `timeout` for the whole request.
/// `purpose` names the client in its User-Agent and its errors.
pub(crate) fn https_client(
    resolver: MailResolver,
    tls: &ClientTls,
    timeout: Duration,
    purpose: &str,
) -> Result<reqwest::Client, String> {
    let config = tls.verifying_config().map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(30)))
        .dns_resolver(Arc::new(ViaMailResolver(resolver)))
        .user_agent(format!(
            "blackpony/{} ({purpose})",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .map_err(|e| format!("cannot build the {purpose} HTTPS client: {e}"))
}

impl StsFetcher {
    pub fn new(
        resolver: MailResolver,
        tls: &ClientTls,
        port: u16,
        timeout: Duration,
    ) -> Result<Self, String> {
        // RFC 8461 §3.3: "HTTP 3xx redirects MUST NOT be followed".
        let client = https_client(resolver, tls, timeout, "MTA-STS")?;
        Ok(StsFetcher { client, port })
    }

    /// The policy URL of `domain` (RFC 8461 §3.2).
    pub fn url(&self, domain: &str) -> String {
        let host = format!("mta-sts.{}", domain.trim_end_matches('.'));
        if self.port == 443 {
            format!("https://{host}/.well-known/mta-sts.txt")
        } else {
            format!("https://{host}:{}/.well-known/mta-sts.txt", self.port)
        }
    }

    /// Fetches and parses the policy of `domain`: the policy and the body
    /// as served.
    pub async fn fetch(&self, domain: &str) -> Result<(Policy, String), FetchProblem> {
        let fetch_error = |detail: String| FetchProblem {
            failure: TlsFailure::StsPolicyFetchError,
            detail,
        };
        let url = self.url(domain);
        let mut response = self.client.get(&url).send().await.map_err(|e| {
            let detail = error_chain(&e);
            FetchProblem {
                failure: if is_certificate_error(&e) {
                    TlsFailure::StsWebpkiInvalid
                } else {
                    TlsFailure::StsPolicyFetchError
                },
                detail: format!("GET {url}: {detail}"),
            }
        })?;
        let status = response.status();
        if status.is_redirection() {
            let to = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?");
            return Err(fetch_error(format!(
                "GET {url}: HTTP {status}, a redirect to {to} (not followed, RFC 8461 §3.3)"
            )));
        }
        if status != reqwest::StatusCode::OK {
            return Err(fetch_error(format!("GET {url}: HTTP {status}")));
        }
        // §3.2: "senders SHOULD validate that the media type is text/plain";
        // parameters (charset) are ignored.
        let media_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let essence = media_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("text/plain") {
            return Err(FetchProblem {
                failure: TlsFailure::StsPolicyInvalid,
                detail: format!("GET {url}: media type {media_type:?}, not text/plain"),
            });
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_POLICY_SIZE as u64)
        {
            return Err(fetch_error(format!(
                "GET {url}: larger than {MAX_POLICY_SIZE} bytes"
            )));
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_POLICY_SIZE {
                        return Err(fetch_error(format!(
                            "GET {url}: larger than {MAX_POLICY_SIZE} bytes"
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(fetch_error(format!("GET {url}: {}", error_chain(&e))));
                }
            }
        }
        let policy = sts::parse_policy(&body).map_err(|e| FetchProblem {
            failure: TlsFailure::StsPolicyInvalid,
            detail: format!("{url}: {e}"),
        })?;
        Ok((policy, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// The error and its causes, the way a person reads them.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Whether the fetch failed on the server's certificate (rustls's
/// `InvalidCertificate`, wherever it sits in the chain of causes; an
/// `io::Error` hides its inner error from `source()`, so look inside; and
/// where the connector boxed it beyond reach, its words, which rustls's
/// `Display` for `InvalidCertificate` starts with).
fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    if error_chain(e).contains("invalid peer certificate") {
        return true;
    }
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(rustls::Error::InvalidCertificate(_)) = err.downcast_ref::<rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(rustls::Error::InvalidCertificate(_)) =
                inner.downcast_ref::<rustls::Error>()
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// A policy in force for one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivePolicy {
    pub id: String,
    pub policy: Policy,
    /// The policy file as served (RFC 8460 `policy-string`).
    pub body: String,
}

/// What the lookup found for a domain: the policy to apply (mode enforce or
/// testing; none is as no policy), and a fetch that failed on the way.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    pub active: Option<ActivePolicy>,
    pub problem: Option<FetchProblem>,
}

/// MTA-STS for delivery: settings, resolver, fetcher, cache.
#[derive(Clone)]
pub struct MtaSts {
    pub settings: StsSettings,
    resolver: MailResolver,
    fetcher: StsFetcher,
    cache: StsCache,
    /// (domain, id) of fetches that failed, and when (FETCH_RETRY).
    failed: Arc<Mutex<HashMap<(String, String), Instant>>>,
}

impl MtaSts {
    pub fn new(
        settings: StsSettings,
        resolver: MailResolver,
        tls: &ClientTls,
        cache: StsCache,
    ) -> Result<Self, String> {
        let fetcher = StsFetcher::new(
            resolver.clone(),
            tls,
            settings.https_port,
            settings.fetch_timeout,
        )?;
        Ok(MtaSts {
            settings,
            resolver,
            fetcher,
            cache,
            failed: Arc::default(),
        })
    }

    /// The policy that applies to mail for `domain` now (RFC 8461 §5.1):
    /// the TXT record says whether the cached one is current; a new id is
    /// fetched; a failed fetch leaves a non-expired cached policy in force.
    pub async fn lookup(&self, domain: &str) -> Lookup {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let name = format!("_mta-sts.{domain}");
        let found = match self.resolver.txt(&name).await {
            Ok((_, Dnssec::Bogus)) => Discovery::Failed("DNSSEC validation failed (bogus)".into()),
            Ok((records, _)) => sts::parse_txt(&records),
            Err(e) => Discovery::Failed(e.to_string()),
        };
        match &found {
            Discovery::Invalid(why) => {
                log!("warning: mta-sts: domain={domain} invalid _mta-sts record ignored ({why})")
            }
            Discovery::Failed(why) => {
                log!("warning: mta-sts: domain={domain} _mta-sts lookup failed ({why})")
            }
            _ => {}
        }
        // With no record now, what this process saw of the cache a moment
        // ago will do (state::sts_cache: a burst to a domain without
        // MTA-STS reads no file per message); with one, the file itself.
        let recent = match found {
            Discovery::Absent => self.cache.recent(&domain),
            _ => None,
        };
        let record = match recent {
            Some(record) => Ok(record),
            None => self.cache.get(&domain).await,
        };
        let cached = match record {
            Ok(None) => None,
            Ok(Some(record)) => match sts::parse_policy(record.body.as_bytes()) {
                Ok(policy) => Some(Cached {
                    id: record.id,
                    policy,
                    fetched: record.fetched,
                    body: record.body,
                }),
                Err(e) => {
                    log!("warning: mta-sts: domain={domain} cached policy unusable: {e}");
                    None
                }
            },
            Err(e) => {
                log!("warning: mta-sts: domain={domain} cached policy unusable: {e}");
                None
            }
        };
        let now = unix_now();
        let active_of = |c: &Cached| {
            (c.policy.mode != sts::Mode::None).then(|| ActivePolicy {
                id: c.id.clone(),
                policy: c.policy.clone(),
                body: c.body.clone(),
            })
        };
        let valid_cached = cached.as_ref().filter(|c| c.is_valid(now));
        let id = match sts::next_step(cached.as_ref(), &found, now) {
            Next::NoPolicy => return Lookup::default(),
            Next::UseCached => {
                return Lookup {
                    active: valid_cached.and_then(active_of),
                    problem: None,
                };
            }
            Next::Fetch { id } => id,
        };
        let problem = match self.recent_failure(&domain, &id) {
            Some(problem) => problem,
            None => match self.fetcher.fetch(&domain).await {
                Ok((policy, body)) => {
                    let fresh = Cached {
                        id: id.clone(),
                        policy,
                        fetched: now,
                        body,
                    };
                    log!(
                        "mta-sts: domain={domain} policy=fetched id={id} mode={} max_age={} mx={}",
                        fresh.policy.mode,
                        fresh.policy.max_age,
                        fresh.policy.mx_list()
                    );
                    let record = StsRecord {
                        id: fresh.id.clone(),
                        fetched: fresh.fetched,
                        body: fresh.body.clone(),
                    };
                    if let Err(e) = self.cache.put(&domain, &record).await {
                        log!(
                            "warning: mta-sts: domain={domain} policy=not-cached error=\"{e}\" (applied now, fetched again next time; the state directory must be writable by the user blackpony runs as)"
                        );
                    }
                    return Lookup {
                        active: active_of(&fresh),
                        problem: None,
                    };
                }
                Err(problem) => {
                    if let Ok(mut failed) = self.failed.lock() {
                        failed.insert((domain.clone(), id.clone()), Instant::now());
                    }
                    problem
                }
            },
        };
        let active = valid_cached.and_then(active_of);
        let fallback = match (&active, valid_cached) {
            (Some(a), Some(c)) => format!(
                "using the cached policy id={} mode={} (expires in {} s)",
                a.id,
                a.policy.mode,
                c.expires().saturating_sub(now)
            ),
            (None, Some(c)) => format!("the cached policy id={} is mode none", c.id),
            _ => "no cached policy: delivering as without MTA-STS".into(),
        };
        log!(
            "mta-sts: domain={domain} id={id} result={} ({}); {fallback}",
            problem.failure.as_str(),
            problem.detail
        );
        Lookup {
            active,
            problem: Some(problem),
        }
    }

    /// A fetch of this id that failed less than [`FETCH_RETRY`] ago.
    fn recent_failure(&self, domain: &str, id: &str) -> Option<FetchProblem> {
        let mut failed = self.failed.lock().ok()?;
        failed.retain(|_, at| at.elapsed() < FETCH_RETRY);
        failed
            .get(&(domain.to_string(), id.to_string()))
            .map(|at| FetchProblem {
                failure: TlsFailure::StsPolicyFetchError,
                detail: format!(
                    "the fetch failed {} s ago, not tried again before {} s",
                    at.elapsed().as_secs(),
                    FETCH_RETRY.as_secs()
                ),
            })
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_domain_switches_win_over_the_global_one() {
        let mut s = StsSettings::default();
        s.domains.insert("legacy.example".into(), false);
        assert!(s.applies_to("example.org"));
        assert!(!s.applies_to("Legacy.Example."));
        s.enabled = false;
        s.domains.insert("bank.example".into(), true);
        assert!(!s.applies_to("example.org"));
        assert!(s.applies_to("bank.example"));
    }
}
