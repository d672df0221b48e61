//! The MX hosts of a recipient domain and what each must get: the
//! addresses to try in order (RFC 5321 §5.1, at most `max_addresses`), the
//! MTA-STS policy that filters them (RFC 8461), DANE per host (RFC 7672),
//! STARTTLS after a failed handshake (the plaintext retry), and each
//! session's TLS outcome under whichever policy governed it, for TLS
//! reports (RFC 8460).

use std::net::IpAddr;

use super::connection::Connection;
use super::dane::{self as dane_policy, DaneStatus, HostTls};
use super::deliver::Deliverer;
use super::dns::{DnsFailure, Dnssec, MxAnswer};
use super::outcome::{PolicyOutcome, PolicyType, TlsFailure};
use super::policy::{SecurityLevel, TlsPolicy};
use super::report::dns_reply;
use super::route::{self, MxRoute};
use super::sts::{self, Mode as StsMode, TlsSeen};
use super::sts_fetch::ActivePolicy;
use super::tlsrpt::SessionFacts;
use crate::log;
use crate::smtp::client::{HostFailure, StartTls};
use crate::smtp::envelope::{LiteralError, address_literal, literal_name};
use crate::smtp::{Reply, replies};
use crate::transport::{CertVerdict, Encryption};

impl Deliverer {
    /// The addresses to try for `domain`, in order (RFC 5321 §5.1), at most
    /// `max_addresses`. `Err` is the answer for every recipient when there
    /// is nothing to try (null MX, no such domain, DNS failure).
    pub(crate) async fn candidates(
        &self,
        domain: &str,
        sts: Option<&ActivePolicy>,
    ) -> Result<Candidates, Reply> {
        if let Some(literal) = address_literal(domain) {
            return self.literal_candidate(literal);
        }
        let (routes, mx_dnssec) = match self.resolver.mx(domain).await {
            // RFC 7672 §2.2.1: a bogus MX RRset defers (as when the
            // resolver turns it into an error).
            Ok(MxAnswer::Exchangers(_, Dnssec::Bogus)) => {
                return Err(dns_reply(&DnsFailure::Temporary(
                    domain.to_string(),
                    "DNSSEC validation of its MX records failed (bogus)".into(),
                )));
            }
            Ok(MxAnswer::Exchangers(mx, dnssec)) => (route::plan(mx, seed()), dnssec),
            Ok(MxAnswer::Implicit) => (route::implicit(domain), Dnssec::Insecure),
            Ok(MxAnswer::NullMx) => {
                return Err(replies::null_mx(domain));
            }
            Err(failure) => return Err(dns_reply(&failure)),
        };
        let routes = self.sts_filter(domain, sts, routes, mx_dnssec).await?;
        let mut list = Vec::new();
        let mut address_dnssec = Vec::new();
        let mut dns_failure = None;
        for MxRoute { host, implicit, .. } in &routes {
            if list.len() >= self.limits.max_addresses {
                break;
            }
            match self.resolver.addresses_signed(host).await {
                Ok((addresses, status)) => {
                    address_dnssec.push((host.clone(), status));
                    list.extend(
                        addresses
                            .into_iter()
                            .take(self.limits.max_addresses - list.len())
                            .map(|ip| (host.clone(), ip)),
                    )
                }
                // An implicit MX without address is the domain not existing;
                // a listed MX without address is skipped (and remembered).
                Err(failure) if *implicit => return Err(dns_reply(&failure)),
                Err(failure) => {
                    dns_failure.get_or_insert(replies::mx_lookup_failed(failure));
                }
            }
        }
        if list.is_empty() {
            return Err(dns_failure.unwrap_or_else(|| replies::no_usable_mx(domain)));
        }
        Ok(Candidates {
            list,
            dns_failure,
            mx_dnssec,
            address_dnssec,
        })
    }

    /// An address literal (RFC 5321 §4.1.3) is its own and only address: no
    /// MX lookup. Its canonical text stands for the host (pins, TLS-failure
    /// memory, logs), and the TLS rules are those of any host.
    fn literal_candidate(
        &self,
        literal: Result<IpAddr, LiteralError>,
    ) -> Result<Candidates, Reply> {
        let ip = literal.map_err(replies::bad_recipient_syntax_because)?;
        let name = literal_name(ip);
        if self.refuse_address_literals {
            return Err(replies::address_literal_refused(&name));
        }
        Ok(Candidates {
            list: vec![(name, ip)],
            dns_failure: None,
            mx_dnssec: Dnssec::Insecure,
            address_dnssec: Vec::new(),
        })
    }

    /// How to use STARTTLS with `host`: the policy's way, unless an earlier
    /// handshake failed long enough ago and the policy allows plaintext.
    pub(super) fn starttls_for(&self, host: &str, policy: TlsPolicy) -> StartTls {
        if policy.allows_plaintext() && self.memory.plaintext_due(host) {
            StartTls::Never
        } else {
            policy.starttls()
        }
    }

    /// Whether a session with `host` is to use STARTTLS at all (for TLS
    /// reports: policy `none` and the plaintext retry say nothing about
    /// the host's TLS).
    pub(super) fn tries_tls(&self, host: &str, policy: TlsPolicy) -> bool {
        self.starttls_for(host, policy) != StartTls::Never
    }

    /// Records a session's TLS outcome under the local policy (RFC 8460
    /// `no-policy-found`: the domain published no DANE or MTA-STS policy),
    /// when there is one to record. A session judged by DANE or MTA-STS is
    /// recorded by that code under its own policy type, not here.
    pub(super) fn report_tls(
        &self,
        domain: &str,
        host: &str,
        (local, remote): (Option<IpAddr>, IpAddr),
        facts: SessionFacts<'_>,
    ) {
        if let Some((result, detail)) = facts.result() {
            self.record_outcome(&PolicyOutcome {
                policy: PolicyType::NoPolicyFound,
                domain: domain.to_string(),
                policy_strings: Vec::new(),
                mx_host: host.to_string(),
                receiving_ip: Some(remote),
                sending_ip: local,
                result,
                detail,
            });
        }
    }

    /// What `host` must get under `configured`, DANE looked up once per
    /// host of a delivery. `Err`: the host is not tried now, and this is
    /// the reply that stands for it (RFC 7672 §2.2: bogus, or DANE
    /// required and absent).
    pub(crate) async fn host_tls(
        &self,
        hosts: &mut HostPolicies,
        domain: &str,
        host: &str,
        configured: TlsPolicy,
        candidates: &Candidates,
    ) -> Result<HostTls, Reply> {
        if let Some((_, decided)) = hosts.decided.iter().find(|(h, _)| h == host) {
            return decided.clone();
        }
        let decided = if configured.uses_dane() {
            let status = self.dane_status(domain, host, candidates).await;
            log!("dane: {host}: {}", dane_policy::describe(&status));
            let outcome = |result: Result<(), TlsFailure>, detail: Option<String>| PolicyOutcome {
                policy: PolicyType::Tlsa,
                domain: domain.to_string(),
                policy_strings: status.published().iter().map(|r| r.to_string()).collect(),
                mx_host: host.to_string(),
                receiving_ip: None,
                sending_ip: None,
                result,
                detail,
            };
            match dane_policy::decide(configured, &status) {
                Ok(host_tls) => {
                    if let DaneStatus::Unusable { .. } = status {
                        // RFC 8460 §4.3.3: delivered encrypted, but the
                        // TLSA policy failed.
                        self.record_outcome(&outcome(Err(TlsFailure::TlsaInvalid), None));
                    }
                    Ok(host_tls)
                }
                Err(refusal) => {
                    self.record_outcome(&outcome(Err(refusal.failure), Some(refusal.why.clone())));
                    let reply = replies::dane_refused(host, &refusal.why);
                    log!("host {host} failed: {reply}; trying the next one");
                    Err(reply)
                }
            }
        } else {
            Ok(HostTls {
                policy: configured,
                dane: None,
            })
        };
        hosts.decided.push((host.to_string(), decided.clone()));
        decided
    }

    /// DANE for `host`, one of `domain`'s MX hosts in `candidates`. What
    /// MTA-STS asks before applying its own policy to the host
    /// ([`DaneStatus::governs`]: DANE wins, RFC 8461 §2).
    pub(crate) async fn dane_status(
        &self,
        domain: &str,
        host: &str,
        candidates: &Candidates,
    ) -> DaneStatus {
        dane_policy::lookup(
            &self.resolver,
            domain,
            host,
            candidates.mx_dnssec,
            candidates.address_dnssec(host),
        )
        .await
    }

    /// Records what DANE made of a session with a host it applied to:
    /// success once the certificate matched, else the failure type (RFC
    /// 8460 §4.3). A session that failed before STARTTLS is no TLS outcome.
    pub(super) fn record_dane_session(
        &self,
        domain: &str,
        conn: &Connection,
        failure: Option<&HostFailure>,
    ) {
        let Some(auth) = &conn.host_tls.dane else {
            return;
        };
        let (result, detail) = match (&conn.verdict, failure, &conn.dane_mismatch) {
            (Some(CertVerdict::Dane(_)), _, _) => (Ok(()), None),
            (_, _, Some(why)) => (Err(dane_policy::failure_of(why)), Some(why.to_string())),
            (_, Some(HostFailure::TlsUnavailable { .. }), _) => {
                (Err(TlsFailure::StarttlsNotSupported), None)
            }
            (_, Some(HostFailure::Refused { stage, reply }), _) if *stage == "STARTTLS" => {
                (Err(TlsFailure::ValidationFailure), Some(reply.to_string()))
            }
            // XPONY with a known key took the place of TLS.
            (Some(_), _, _) => return,
            _ => return,
        };
        self.record_outcome(&PolicyOutcome {
            policy: PolicyType::Tlsa,
            domain: domain.to_string(),
            policy_strings: auth.records().iter().map(|r| r.to_string()).collect(),
            mx_host: conn.host.clone(),
            receiving_ip: Some(conn.addr.ip()),
            sending_ip: conn.local,
            result,
            detail,
        });
    }

    /// A failure that cannot be recorded (state directory not writable)
    /// changes nothing now: this attempt is deferred either way. Without
    /// the record no plaintext retry ever comes due, so the host keeps
    /// being deferred until its TLS works (the safe side), which the log
    /// says.
    pub(super) fn remember_tls_failure(&self, host: &str) {
        if let Err(e) = self.memory.record_failure(host) {
            log!(
                "warning: {host}: tls-failure=not-stored error=\"{e}\" (no plaintext retry will come due after --tls-backoff; the state directory must be writable by the user blackpony runs as)"
            );
        }
    }

    /// The MTA-STS policy in force for `domain` (RFC 8461 §5.1), if it is
    /// to be applied: not for address literals, nor where the operator's
    /// TLS policy is `none` (no TLS at all), nor where MTA-STS is switched
    /// off for the domain. Mode `none` is as no policy.
    pub(super) async fn sts_policy(&self, domain: &str, policy: TlsPolicy) -> Option<ActivePolicy> {
        let sts = self.sts.as_ref()?;
        if address_literal(domain).is_some()
            || policy == TlsPolicy::None
            || !sts.settings.applies_to(domain)
        {
            return None;
        }
        let lookup = sts.lookup(domain).await;
        if let Some(problem) = &lookup.problem {
            // A policy that could not be fetched: the report's failure is
            // the policy's, not a session's (no MX host).
            self.record_outcome(&PolicyOutcome {
                policy: PolicyType::Sts,
                domain: domain.to_ascii_lowercase(),
                policy_strings: lookup.active.as_ref().map_or_else(Vec::new, policy_strings),
                mx_host: String::new(),
                receiving_ip: None,
                sending_ip: None,
                result: Err(problem.failure),
                detail: Some(problem.detail.clone()),
            });
        }
        lookup.active
    }

    /// Under `enforce`, only MX hosts the policy lists are tried (RFC 8461
    /// §4.1); none at all is a temporary failure, never plaintext elsewhere.
    /// Under `testing` every host stays (a session with one the policy does
    /// not list is judged as a failure in [`Self::note_sts_session`]).
    ///
    /// A host DANE governs stays whatever the policy lists (RFC 8461 §2:
    /// DANE wins where both apply): its name came from a DNSSEC-signed MX
    /// RRset (the only way DANE is used here), which is what the policy's
    /// `mx:` list stands in for, and its TLS is judged by its TLSA records
    /// alone ([`Self::sts_for_host`]).
    async fn sts_filter(
        &self,
        domain: &str,
        sts: Option<&ActivePolicy>,
        routes: Vec<MxRoute>,
        mx_dnssec: Dnssec,
    ) -> Result<Vec<MxRoute>, Reply> {
        let Some(active) = sts.filter(|a| a.policy.mode == StsMode::Enforce) else {
            return Ok(routes);
        };
        let configured = self.policy.for_domain(domain);
        let mut matching = Vec::new();
        let mut other = Vec::new();
        for route in routes {
            if active.policy.mx_matches(&route.host) {
                matching.push(route);
            } else if self
                .dane_governs(domain, &route.host, configured, mx_dnssec)
                .await
            {
                log!(
                    "mta-sts: domain={domain} sts=enforce id={} mx={} mx_match=no; DANE governs this host (RFC 8461 §2): kept",
                    active.id,
                    route.host
                );
                matching.push(route);
            } else {
                other.push(route);
            }
        }
        for route in &other {
            let why = format!("not in the policy's mx: {}", active.policy.mx_list());
            log!(
                "mta-sts: domain={domain} sts=enforce id={} mx={} mx_match=no result={} ({why}); skipped",
                active.id,
                route.host,
                TlsFailure::ValidationFailure
            );
            self.record_outcome(&sts_outcome(
                domain,
                active,
                &route.host,
                None,
                Err(TlsFailure::ValidationFailure),
                Some(why),
            ));
        }
        if matching.is_empty() {
            let hosts: Vec<&str> = other.iter().map(|r| r.host.as_str()).collect();
            return Err(replies::sts_lists_no_mx(
                domain,
                &active.id,
                &hosts.join(", "),
                &active.policy.mx_list(),
            ));
        }
        Ok(matching)
    }

    /// Logs and records how one MX session fared under an MTA-STS policy
    /// (one line per session, with the RFC 8460 result type): an MX host
    /// the policy does not list (mode testing) fails whatever its TLS.
    pub(super) fn note_sts_session(
        &self,
        domain: &str,
        active: &ActivePolicy,
        host: &str,
        (local, ip): (Option<IpAddr>, IpAddr),
        level: SecurityLevel,
        seen: TlsSeen<'_>,
    ) {
        let mode = active.policy.mode;
        let listed = active.policy.mx_matches(host);
        let result = match sts::judge_session(seen) {
            None => return,
            Some(_) if !listed => Err((
                TlsFailure::ValidationFailure,
                format!("not in the policy's mx: {}", active.policy.mx_list()),
            )),
            Some(result) => result,
        };
        let prefix = format!(
            "mta-sts: domain={domain} sts={mode} id={} mx={host}[{ip}] mx_match={} level={level}",
            active.id,
            if listed { "yes" } else { "no" }
        );
        let (result, detail) = match result {
            Ok(()) => {
                log!("{prefix} result=success");
                (Ok(()), None)
            }
            Err((failure, why)) => {
                let then = match mode {
                    StsMode::Enforce => "not delivered to this host",
                    _ => "testing: delivering as without a policy",
                };
                log!("{prefix} result={failure} ({why}); {then}");
                (Err(failure), Some(why))
            }
        };
        self.record_outcome(&PolicyOutcome {
            sending_ip: local,
            ..sts_outcome(domain, active, host, Some(ip), result, detail)
        });
    }

    /// Whether DANE decides the fate of `host` under `configured` (usable
    /// TLSA records, or a failed lookup: [`DaneStatus::governs`]), so that
    /// an MTA-STS policy must not: only under the `dane` policies, through
    /// a signed MX RRset.
    async fn dane_governs(
        &self,
        domain: &str,
        host: &str,
        configured: TlsPolicy,
        mx_dnssec: Dnssec,
    ) -> bool {
        if !configured.uses_dane() || mx_dnssec != Dnssec::Secure {
            return false;
        }
        let addresses = match self.resolver.addresses_signed(host).await {
            Ok((_, status)) => status,
            // No address: the host is not tried whoever governs it.
            Err(_) => return false,
        };
        dane_policy::lookup(&self.resolver, domain, host, mx_dnssec, addresses)
            .await
            .governs()
    }

    /// The MTA-STS policy that governs `host`: the domain's, unless DANE
    /// does. RFC 8461 §2: where an MX host has usable DANE TLSA records
    /// (RFC 7672), DANE governs it and the MTA-STS policy does not (neither
    /// its certificate rule here nor its `mx:` list in [`Self::sts_filter`]).
    ///
    /// DANE is looked up under the `dane` and `dane-only` policies
    /// ([`Deliverer::host_tls`]); a host it authenticates (usable TLSA
    /// records) is DANE's alone. A host whose DANE lookup failed never gets
    /// here: it is deferred, and MTA-STS cannot override that.
    pub(super) fn sts_for_host<'a>(
        &self,
        sts: Option<&'a ActivePolicy>,
        host_tls: &HostTls,
    ) -> Option<&'a ActivePolicy> {
        sts.filter(|_| host_tls.dane.is_none())
    }
}

/// Addresses to try for one domain.
pub(crate) struct Candidates {
    pub(crate) list: Vec<(String, IpAddr)>,
    /// A listed MX host whose address lookup failed, for the final reply.
    pub(crate) dns_failure: Option<Reply>,
    /// Whether the MX records were DNSSEC-signed (implicit MX: insecure).
    pub(crate) mx_dnssec: Dnssec,
    /// Whether each host's address records were (DANE, RFC 7672 §2.2.2).
    pub(crate) address_dnssec: Vec<(String, Dnssec)>,
}

impl Candidates {
    /// The DNSSEC status of `host`'s address records.
    pub(crate) fn address_dnssec(&self, host: &str) -> Dnssec {
        self.address_dnssec
            .iter()
            .find(|(h, _)| h == host)
            .map_or(Dnssec::Insecure, |(_, s)| *s)
    }
}

/// What each MX host of one delivery must get, decided once per host.
#[derive(Default)]
pub(crate) struct HostPolicies {
    decided: Vec<(String, Result<HostTls, Reply>)>,
}

/// What a session showed about TLS, for its TLS report record.
pub(super) fn session_facts<'a>(
    policy: TlsPolicy,
    tried_tls: bool,
    (tls, verdict): (Option<&'a Encryption>, Option<&'a CertVerdict>),
    failure: Option<&'a HostFailure>,
    tls_failed: bool,
) -> SessionFacts<'a> {
    let handshake = match failure {
        Some(HostFailure::Refused {
            stage: "STARTTLS",
            reply,
        }) => {
            let text = reply.text();
            // `4.7.5 TLS handshake with mx[ip] failed: WHY`: WHY.
            Some(match text.split_once("failed: ") {
                Some((_, why)) => why.to_string(),
                None => text,
            })
        }
        _ => None,
    };
    SessionFacts {
        tried_tls,
        encrypted: tls.is_some(),
        verdict,
        verify: policy == TlsPolicy::Verify,
        tls_failed,
        handshake,
        starttls_missing: matches!(failure, Some(HostFailure::TlsUnavailable { .. })),
        transacted: failure.is_none(),
    }
}

/// The TLS policy for one MX host under an MTA-STS policy: `enforce`
/// requires TLS with a certificate valid for the MX name (RFC 8461 §4.2),
/// which is what `verify` means; `testing` changes nothing.
pub(super) fn sts_host_policy(policy: TlsPolicy, sts: Option<&ActivePolicy>) -> TlsPolicy {
    match sts {
        Some(active) if active.policy.mode == StsMode::Enforce => TlsPolicy::Verify,
        _ => policy,
    }
}

/// The policy a session kept from an earlier delivery (`cache.rs`) carries
/// another one under, or `None` when it must not carry it. `opened`: what its
/// host had to get when it was opened (the configured policy, or DANE's
/// decision: `dane-only` for usable TLSA records); `sts_here`: the MTA-STS
/// policy that governs the host now ([`Deliverer::sts_for_host`]: none where
/// DANE does, RFC 8461 §2). The host's requirement now is `opened` raised by
/// that policy, and the session must have reached its level: a session DANE
/// authenticated serves every later delivery to the domain under `dane`;
/// one opened when less was required (plaintext or unauthenticated TLS)
/// never serves a stricter one. A host an `enforce` policy does not list is
/// never used (RFC 8461 §4.1), kept or not.
pub(super) fn kept_host_policy(
    opened: &HostTls,
    host: &str,
    level: SecurityLevel,
    sts_here: Option<&ActivePolicy>,
) -> Option<TlsPolicy> {
    if let Some(active) = sts_here
        && active.policy.mode == StsMode::Enforce
        && !active.policy.mx_matches(host)
    {
        return None;
    }
    let now = sts_host_policy(opened.policy, sts_here);
    (level >= now.required()).then_some(now)
}

/// The policy file's lines, for a report's `policy-string` (RFC 8460 §4.4).
fn policy_strings(active: &ActivePolicy) -> Vec<String> {
    active
        .body
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// One MX host's outcome under an MTA-STS policy.
fn sts_outcome(
    domain: &str,
    active: &ActivePolicy,
    host: &str,
    ip: Option<IpAddr>,
    result: Result<(), TlsFailure>,
    detail: Option<String>,
) -> PolicyOutcome {
    PolicyOutcome {
        policy: PolicyType::Sts,
        domain: domain.to_ascii_lowercase(),
        policy_strings: policy_strings(active),
        mx_host: host.to_string(),
        receiving_ip: ip,
        sending_ip: None,
        result,
        detail,
    }
}

/// Under an `enforce` policy that raised the TLS requirement, a deferral
/// says which policy required it.
pub(super) fn sts_reply(
    reply: Reply,
    domain: &str,
    sts: Option<&ActivePolicy>,
    raised: bool,
) -> Reply {
    match sts {
        Some(active) if raised && reply.class() == 4 => Reply::new(
            reply.code(),
            format!(
                "{} (MTA-STS policy of {domain}: mode enforce, id {})",
                reply.text(),
                active.id
            ),
        ),
        _ => reply,
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::outbound::deliver::Limits;
    use crate::outbound::dns::MailResolver;
    use crate::outbound::memory::TlsMemory;
    use crate::outbound::policy::PolicyTable;
    use crate::transport::ClientTls;

    /// Keeps what delivery hands to TLS reporting.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<PolicyOutcome>>);

    impl super::super::outcome::OutcomeSink for Recorded {
        fn record(&self, outcome: &PolicyOutcome) {
            self.0.lock().unwrap().push(outcome.clone());
        }
    }

    fn deliverer(sink: Arc<Recorded>) -> Deliverer {
        let resolver = MailResolver::at(
            "127.0.0.1:9".parse().unwrap(),
            &super::super::dns::DnssecMode::Off,
        )
        .unwrap();
        Deliverer {
            resolver,
            tls: ClientTls::new().unwrap(),
            policy: PolicyTable::default(),
            helo_name: "client.test".into(),
            smtp_port: 25,
            memory: TlsMemory::new(None, Duration::from_secs(300)),
            limits: Limits::default(),
            pony: None,
            idle: Default::default(),
            refuse_address_literals: false,
            outcomes: Some(sink),
            sts: None,
        }
    }

    fn active(mode: &str) -> ActivePolicy {
        let body = format!(
            "version: STSv1\r\nmode: {mode}\r\nmx: mx.example.org\r\nmx: *.backup.example.org\r\nmax_age: 600\r\n"
        );
        ActivePolicy {
            id: "7".into(),
            policy: sts::parse_policy(body.as_bytes()).unwrap(),
            body,
        }
    }

    fn routes(hosts: &[&str]) -> Vec<MxRoute> {
        hosts
            .iter()
            .map(|h| MxRoute {
                host: h.to_string(),
                preference: 10,
                implicit: false,
            })
            .collect()
    }

    fn hosts(routes: &[MxRoute]) -> Vec<&str> {
        routes.iter().map(|r| r.host.as_str()).collect()
    }

    #[tokio::test]
    async fn enforce_keeps_only_listed_mx_hosts_and_reports_the_others() {
        let sink = Arc::new(Recorded::default());
        let d = deliverer(Arc::clone(&sink));
        let enforce = active("enforce");
        let testing = active("testing");
        let all = ["mx.example.org", "evil.example.net", "a.backup.example.org"];
        // enforce: the listed ones, in order; the other reported, not connected to.
        let kept = d
            .sts_filter("example.org", Some(&enforce), routes(&all), Dnssec::Secure)
            .await
            .unwrap();
        assert_eq!(hosts(&kept), ["mx.example.org", "a.backup.example.org"]);
        // testing, or no policy: every host.
        let kept = d
            .sts_filter("example.org", Some(&testing), routes(&all), Dnssec::Secure)
            .await
            .unwrap();
        assert_eq!(hosts(&kept), all);
        assert_eq!(
            hosts(
                &d.sts_filter("example.org", None, routes(&all), Dnssec::Secure)
                    .await
                    .unwrap()
            ),
            all
        );
        // None listed: a temporary failure.
        let none = d
            .sts_filter(
                "example.org",
                Some(&enforce),
                routes(&["x.example.net"]),
                Dnssec::Secure,
            )
            .await
            .unwrap_err();
        assert_eq!(none.code(), 451);
        assert!(
            none.text()
                .contains("lists none of its MX hosts (x.example.net;")
        );
        let got = sink.0.lock().unwrap().clone();
        let summary: Vec<_> = got
            .iter()
            .map(|o| (o.mx_host.as_str(), o.result, o.receiving_ip))
            .collect();
        assert_eq!(
            summary,
            [
                ("evil.example.net", Err(TlsFailure::ValidationFailure), None),
                ("x.example.net", Err(TlsFailure::ValidationFailure), None),
            ]
        );
        assert_eq!(got[0].policy, PolicyType::Sts);
        assert_eq!(got[0].domain, "example.org");
        assert_eq!(got[0].policy_strings[1], "mode: enforce");
        assert_eq!(got[0].policy_strings.len(), 5);
    }

    /// Which kept sessions may carry the next delivery to their domain
    /// (issue 12: a session DANE authenticated is kept under the domain's
    /// `dane` and must serve the next `dane` delivery; nothing opened under
    /// a lower requirement serves a stricter one).
    #[test]
    fn kept_sessions_serve_only_what_they_reached() {
        use crate::transport::dane::{DaneAuth, Tlsa};
        use SecurityLevel::{Authenticated, Encrypted, Plaintext};
        let d = deliverer(Arc::new(Recorded::default()));
        let auth = DaneAuth::new(&[Tlsa::new(3, 1, 1, vec![7; 32])], vec!["mx".into()]);
        let dane = HostTls {
            policy: TlsPolicy::DaneOnly,
            dane: auth.map(Arc::new),
        };
        assert!(dane.dane.is_some());
        let plain = HostTls::plain;
        let (enforce, testing) = (active("enforce"), active("testing"));
        let listed = "mx.example.org";
        let other = "other.example.net";
        // (opened under, host, level reached, domain's MTA-STS policy now) -> reused under
        for (opened, host, level, sts, want) in [
            // DANE: served under dane whatever MTA-STS says (DANE governs).
            (
                &dane,
                listed,
                Authenticated,
                None,
                Some(TlsPolicy::DaneOnly),
            ),
            (
                &dane,
                other,
                Authenticated,
                Some(&enforce),
                Some(TlsPolicy::DaneOnly),
            ),
            // A DANE host's session that did not authenticate: never.
            (&dane, listed, Encrypted, None, None),
            // dane fell back to may (no TLSA records), encrypt (unusable ones).
            (
                &plain(TlsPolicy::May),
                listed,
                Plaintext,
                None,
                Some(TlsPolicy::May),
            ),
            (
                &plain(TlsPolicy::Encrypt),
                listed,
                Encrypted,
                None,
                Some(TlsPolicy::Encrypt),
            ),
            // An MTA-STS policy in enforce now: verify, and only listed hosts.
            (
                &plain(TlsPolicy::May),
                listed,
                Plaintext,
                Some(&enforce),
                None,
            ),
            (
                &plain(TlsPolicy::Encrypt),
                listed,
                Encrypted,
                Some(&enforce),
                None,
            ),
            (
                &plain(TlsPolicy::May),
                listed,
                Authenticated,
                Some(&enforce),
                Some(TlsPolicy::Verify),
            ),
            (
                &plain(TlsPolicy::Verify),
                other,
                Authenticated,
                Some(&enforce),
                None,
            ),
            // testing changes nothing.
            (
                &plain(TlsPolicy::May),
                other,
                Plaintext,
                Some(&testing),
                Some(TlsPolicy::May),
            ),
            (&plain(TlsPolicy::Verify), listed, Encrypted, None, None),
        ] {
            let sts_here = d.sts_for_host(sts, opened);
            assert_eq!(
                kept_host_policy(opened, host, level, sts_here),
                want,
                "{:?} {host} {level} {:?}",
                opened.policy,
                sts.map(|a| a.policy.mode)
            );
        }
    }

    #[test]
    fn sessions_under_a_policy_are_reported() {
        let sink = Arc::new(Recorded::default());
        let d = deliverer(Arc::clone(&sink));
        let ip: IpAddr = "192.0.2.25".parse().unwrap();
        let verified = CertVerdict::Verified;
        let mismatch = CertVerdict::Untrusted("name mismatch".into());
        for (mode, host, seen) in [
            (
                "enforce",
                "mx.example.org",
                TlsSeen::Established(Some(&verified)),
            ),
            ("enforce", "mx.example.org", TlsSeen::NoStartTls),
            (
                "testing",
                "mx.example.org",
                TlsSeen::Established(Some(&mismatch)),
            ),
            // testing: a host the policy does not list fails whatever its TLS.
            (
                "testing",
                "other.example.net",
                TlsSeen::Established(Some(&verified)),
            ),
            // Nothing to judge: no outcome.
            ("enforce", "mx.example.org", TlsSeen::NotReached),
        ] {
            let level = SecurityLevel::Authenticated;
            d.note_sts_session("example.org", &active(mode), host, (None, ip), level, seen);
        }
        let got: Vec<_> = sink
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|o| (o.mx_host.clone(), o.result, o.receiving_ip))
            .collect();
        let mx = |h: &str| h.to_string();
        assert_eq!(
            got,
            [
                (mx("mx.example.org"), Ok(()), Some(ip)),
                (
                    mx("mx.example.org"),
                    Err(TlsFailure::StarttlsNotSupported),
                    Some(ip)
                ),
                (
                    mx("mx.example.org"),
                    Err(TlsFailure::CertificateHostMismatch),
                    Some(ip)
                ),
                (
                    mx("other.example.net"),
                    Err(TlsFailure::ValidationFailure),
                    Some(ip)
                ),
            ]
        );
    }
}
