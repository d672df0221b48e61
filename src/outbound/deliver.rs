//! Delivering one message now: resolve each recipient domain, walk its MX
//! hosts, run the sans-IO [`ClientSession`] over TCP (upgraded to TLS when
//! the policy says so), and return the remote's own reply per recipient.
//!
//! Nothing here keeps a queue: the MTA that handed us the message retries
//! whatever we report as temporary.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::cache::Destination;
use super::connection::{Connection, PonyContext, level_of};
use super::dane::{self as dane_policy, DaneStatus, HostTls};
use super::dns::{DnsFailure, Dnssec, MailResolver, MxAnswer};
use super::memory::TlsMemory;
use super::outcome::{PolicyOutcome, PolicyType, TlsFailure};
use super::policy::{PolicyTable, SecurityLevel, TlsPolicy};
use super::route::{self, MxRoute};
use super::sts::{self, Mode as StsMode, TlsSeen};
use super::sts_fetch::ActivePolicy;
use super::tlsrpt::SessionFacts;
use crate::log;
use crate::pony::pins::{DnsKeys, Evidence, KeyVerdict};
use crate::smtp::client::{ClientSession, HostFailure, SessionOutcome, StartTls, Step};
use crate::smtp::envelope::{
    ContentFacts, Envelope, LiteralError, address_is_sane, address_literal, domain_of, literal_name,
};
use crate::smtp::{DotStuffer, EnhancedStatus, Reply};
use crate::transport::{CertVerdict, ClientDriver, ClientTls, Encryption, Stream};

/// Bounds of one delivery, after Postfix's smtp(8) defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Addresses tried per domain (`smtp_mx_address_limit` = 5).
    pub max_addresses: usize,
    /// Sessions that reached a greeting, per domain (`smtp_mx_session_limit` = 2).
    pub max_sessions: usize,
    pub connect_timeout: Duration,
    /// Waiting for any one reply (RFC 5321 §4.5.3.2; 10 minutes for the
    /// final one is the RFC's, we use one bound below pipe(8)'s 1000 s).
    pub reply_timeout: Duration,
    /// The whole delivery of one message, below pipe(8)'s `command_time_limit`.
    pub deadline: Duration,
    /// After a failed TLS handshake, how long before plaintext is tried.
    pub tls_backoff: Duration,
    /// Recipient domains of one message delivered at the same time.
    pub parallel_domains: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_addresses: 5,
            max_sessions: 2,
            connect_timeout: Duration::from_secs(30),
            reply_timeout: Duration::from_secs(300),
            deadline: Duration::from_secs(900),
            tls_backoff: Duration::from_secs(300),
            parallel_domains: 4,
        }
    }
}

/// Everything delivery needs, built once per process.
#[derive(Clone)]
pub struct Deliverer {
    pub resolver: MailResolver,
    pub tls: ClientTls,
    pub policy: PolicyTable,
    /// Our name in EHLO.
    pub helo_name: String,
    /// 25, except in tests.
    pub smtp_port: u16,
    pub memory: TlsMemory,
    pub limits: Limits,
    /// The blackpony extension (None: `--no-xpony`).
    pub pony: Option<PonyClient>,
    /// MX sessions between the SMTP proxy's transactions.
    pub idle: super::cache::IdleSessions,
    /// Refuse recipients whose domain is an address literal
    /// (`--refuse-address-literals`) instead of delivering to the address.
    pub refuse_address_literals: bool,
    /// Where each MX session's policy outcome goes (TLS reporting, RFC
    /// 8460); `None`: not recorded.
    pub outcomes: Option<Arc<dyn super::outcome::OutcomeSink>>,
    /// MTA-STS (RFC 8461); None: off everywhere (`--no-mta-sts`).
    pub sts: Option<super::sts_fetch::MtaSts>,
}

/// What the client side of the blackpony extension needs.
#[derive(Debug, Clone)]
pub struct PonyClient {
    pub key: crate::pony::noise::Keypair,
    pub pins: crate::pony::pins::PinStore,
}

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

/// The message prepared once for every attempt.
struct Prepared {
    envelope_sender: String,
    wire: Arc<Vec<u8>>,
    facts: ContentFacts,
}

/// What a session with one address ended with, plus what was learnt.
struct Attempt {
    outcome: SessionOutcome,
    tls: Option<Encryption>,
    verdict: Option<CertVerdict>,
    greeted: bool,
    tls_failed: bool,
    /// Our address on the connection (`sending-mta-ip` of a TLS report).
    local: Option<IpAddr>,
    /// The session, still open and ready for another transaction (with
    /// the server's capabilities and the transactions it carried).
    keep: Option<(Connection, crate::smtp::EhloReply, u32)>,
}

impl Attempt {
    fn failed(failure: HostFailure) -> Self {
        Attempt {
            outcome: SessionOutcome::Failed(failure),
            tls: None,
            verdict: None,
            greeted: false,
            tls_failed: false,
            local: None,
            keep: None,
        }
    }
}

impl Deliverer {
    /// Delivers `message` (the raw message; any line ending) to every
    /// recipient of `envelope`, one domain after another.
    pub async fn deliver(&self, envelope: &Envelope, message: &[u8]) -> Vec<RecipientStatus> {
        let mut wire = Vec::with_capacity(message.len() + message.len() / 50 + 8);
        let mut stuffer = DotStuffer::new();
        stuffer.push(message, &mut wire);
        stuffer.finish(&mut wire);
        self.deliver_wire(envelope, wire).await
    }

    /// Delivers a message already in DATA form (dot-stuffed, CRLF line ends,
    /// ending with CRLF.CRLF), as an SMTP or LMTP server received it.
    pub async fn deliver_wire(&self, envelope: &Envelope, wire: Vec<u8>) -> Vec<RecipientStatus> {
        let started = Instant::now();
        let wire = crate::smtp::data::fold_long_lines(&wire).unwrap_or(wire);
        // The size the server sees, without the terminating ".\r\n" (RFC 1870).
        let facts = ContentFacts {
            size: wire.len().saturating_sub(3) as u64,
            ..ContentFacts::of(&wire)
        };
        // A message no server may get is refused before any connection.
        if let Some(refusal) = crate::smtp::client::refuse_message(&facts) {
            let reply = refusal.reply();
            let results: Vec<_> = envelope
                .recipients
                .iter()
                .map(|r| self.failed(r, reply.clone(), started))
                .collect();
            for s in &results {
                log!("{}", s.log_line());
            }
            return results;
        }
        let prepared = Prepared {
            envelope_sender: envelope.sender.clone(),
            wire: Arc::new(wire),
            facts,
        };

        let mut results = Vec::with_capacity(envelope.recipients.len());
        let mut by_domain: Vec<(String, Vec<String>)> = Vec::new();
        for rcpt in &envelope.recipients {
            let domain = domain_of(rcpt).filter(|_| address_is_sane(rcpt));
            match domain {
                Some(d) => match by_domain.iter_mut().find(|(k, _)| *k == d) {
                    Some((_, list)) => list.push(rcpt.clone()),
                    None => by_domain.push((d, vec![rcpt.clone()])),
                },
                None => results.push(self.failed(
                    rcpt,
                    Reply::new(501, "5.1.3 Bad recipient address syntax"),
                    started,
                )),
            }
        }
        if !address_is_sane(&envelope.sender) {
            return envelope
                .recipients
                .iter()
                .map(|r| {
                    self.failed(
                        r,
                        Reply::new(501, "5.1.7 Bad sender address syntax"),
                        started,
                    )
                })
                .collect();
        }
        // Domains are delivered side by side (a few at a time), so one slow
        // or unreachable domain does not hold up the others' deadline.
        let budget = self.limits.deadline.saturating_sub(started.elapsed());
        let prepared = &prepared;
        let per_domain = by_domain.into_iter().map(|(domain, rcpts)| async move {
            let delivered = tokio::time::timeout(
                budget,
                self.deliver_domain(&domain, &rcpts, prepared, started),
            )
            .await;
            match delivered {
                Ok(statuses) => statuses,
                Err(_) => rcpts
                    .iter()
                    .map(|r| {
                        self.failed(
                            r,
                            Reply::new(
                                451,
                                "4.4.7 Delivery time limit exceeded; the MTA will retry",
                            ),
                            started,
                        )
                    })
                    .collect(),
            }
        });
        let mut domains = futures_util::stream::iter(per_domain)
            .buffer_unordered(self.limits.parallel_domains.max(1));
        while let Some(statuses) = domains.next().await {
            results.extend(statuses);
        }
        // Report in the order the MTA gave the recipients.
        results.sort_by_key(|s| {
            envelope
                .recipients
                .iter()
                .position(|r| *r == s.recipient)
                .unwrap_or(usize::MAX)
        });
        for s in &results {
            log!("{}", s.log_line());
        }
        results
    }

    /// Hands `outcome` to the TLS reporting store, if there is one.
    pub fn record_outcome(&self, outcome: &super::outcome::PolicyOutcome) {
        if let Some(sink) = &self.outcomes {
            sink.record(outcome);
        }
    }

    /// Where a session for `domain` may be kept and found again (the
    /// domain under its TLS policy; see `cache`).
    pub(crate) fn destination(&self, domain: &str) -> Destination {
        Destination::new(domain, self.policy.for_domain(domain))
    }

    fn failed(&self, rcpt: &str, reply: Reply, started: Instant) -> RecipientStatus {
        RecipientStatus {
            recipient: rcpt.to_string(),
            reply,
            relay: None,
            tls: None,
            verdict: None,
            level: SecurityLevel::Plaintext,
            delay: started.elapsed(),
        }
    }

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
                return Err(Reply::new(
                    556,
                    format!("5.1.10 Domain {domain} does not accept mail (null MX, RFC 7505)"),
                ));
            }
            Err(failure) => return Err(dns_reply(&failure)),
        };
        let routes = self.sts_filter(domain, sts, routes)?;
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
                    dns_failure.get_or_insert(Reply::new(451, format!("4.4.3 {failure}")));
                }
            }
        }
        if list.is_empty() {
            return Err(dns_failure.unwrap_or_else(|| {
                Reply::new(451, format!("4.4.4 No usable mail exchanger for {domain}"))
            }));
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
        let ip = literal
            .map_err(|e| Reply::new(501, format!("5.1.3 Bad recipient address syntax: {e}")))?;
        let name = literal_name(ip);
        if self.refuse_address_literals {
            return Err(Reply::new(
                550,
                format!(
                    "5.7.1 Delivery to address literal {name} refused by local policy (refuse_address_literals)"
                ),
            ));
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
    fn starttls_for(&self, host: &str, policy: TlsPolicy) -> StartTls {
        if policy.allows_plaintext() && self.memory.plaintext_due(host) {
            StartTls::Never
        } else {
            policy.starttls()
        }
    }

    /// Whether a session with `host` is to use STARTTLS at all (for TLS
    /// reports: policy `none` and the plaintext retry say nothing about
    /// the host's TLS).
    fn tries_tls(&self, host: &str, policy: TlsPolicy) -> bool {
        self.starttls_for(host, policy) != StartTls::Never
    }

    /// Records a session's TLS outcome under the local policy (RFC 8460
    /// `no-policy-found`: the domain published no DANE or MTA-STS policy),
    /// when there is one to record. A session judged by DANE or MTA-STS is
    /// recorded by that code under its own policy type, not here.
    fn report_tls(
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
                    let reply = Reply::new(451, format!("4.7.5 {host}: DANE: {}", refusal.why));
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
    fn record_dane_session(&self, domain: &str, conn: &Connection, failure: Option<&HostFailure>) {
        let Some(auth) = &conn.dane else {
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
    fn remember_tls_failure(&self, host: &str) {
        if let Err(e) = self.memory.record_failure(host) {
            log!(
                "warning: {host}: tls-failure=not-stored error=\"{e}\" (no plaintext retry will come due after --tls-backoff; the state directory must be writable by the user blackpony runs as)"
            );
        }
    }

    async fn deliver_domain(
        &self,
        domain: &str,
        rcpts: &[String],
        prepared: &Prepared,
        started: Instant,
    ) -> Vec<RecipientStatus> {
        let all = |reply: Reply, relay: Option<(String, SocketAddr)>| -> Vec<RecipientStatus> {
            rcpts
                .iter()
                .map(|r| {
                    let mut s = self.failed(r, reply.clone(), started);
                    s.relay = relay.clone();
                    s
                })
                .collect()
        };
        let policy = self.policy.for_domain(domain);
        let sts = self.sts_policy(domain, policy).await;
        // The policy a session for this domain must have been opened under:
        // MTA-STS in enforce mode makes it `verify` (RFC 8461 §4.2).
        let effective = sts_host_policy(policy, sts.as_ref());
        let to = Destination::new(domain, effective);
        // A session kept from an earlier delivery to this domain under this
        // policy first: no MX lookup, no handshake. One the server closed
        // meanwhile fails at its RSET with nothing decided, and the next
        // kept one or a new session takes over. A session whose host is
        // governed otherwise now (a per-host policy) is not reused.
        while let Some(idle) = self.idle.take(&to, effective) {
            let host = idle.conn.host.clone();
            let addr = idle.conn.addr;
            // A session DANE authenticated when it was opened stays DANE's.
            let kept = HostTls {
                policy,
                dane: idle.conn.dane.clone(),
            };
            let host_policy = sts_host_policy(policy, self.sts_for_host(sts.as_ref(), &kept));
            if host_policy != effective {
                super::cache::quit(idle.conn).await;
                continue;
            }
            let attempt = self.reuse(idle, host_policy, rcpts, prepared).await;
            match self.decided(attempt, &to, &host, addr, rcpts, started) {
                Ok(statuses) => return statuses,
                Err(attempt) => {
                    if let SessionOutcome::Failed(failure) = &attempt.outcome {
                        log!(
                            "host {host}[{}]:{} kept session unusable ({failure}); opening a new one",
                            addr.ip(),
                            addr.port()
                        );
                    }
                }
            }
        }
        let candidates = match self.candidates(domain, sts.as_ref()).await {
            Ok(c) => c,
            Err(reply) => return all(reply, None),
        };
        let mut last = candidates.dns_failure.clone().map(|r| (r, None));
        let mut last_security: (Option<Encryption>, Option<CertVerdict>) = (None, None);
        let mut sessions = 0;
        let mut hosts = HostPolicies::default();
        for (host, ip) in &candidates.list {
            if sessions >= self.limits.max_sessions {
                break;
            }
            let addr = SocketAddr::new(*ip, self.smtp_port);
            let relay = Some((host.clone(), addr));
            let host_tls = match self
                .host_tls(&mut hosts, domain, host, policy, &candidates)
                .await
            {
                Ok(h) => h,
                Err(reply) => {
                    last = Some((reply, relay.clone()));
                    continue;
                }
            };
            let sts_here = self.sts_for_host(sts.as_ref(), &host_tls);
            // What the host gets without MTA-STS, to tell whether it raised it.
            let policy = host_tls.policy;
            let host_tls = HostTls {
                policy: sts_host_policy(policy, sts_here),
                ..host_tls
            };
            let host_policy = host_tls.policy;
            let tried_tls = self.tries_tls(host, host_policy);
            let attempt = self
                .attempt(
                    domain,
                    addr,
                    host,
                    &host_tls,
                    candidates.mx_dnssec,
                    rcpts,
                    prepared,
                )
                .await;
            if let Some(active) = sts_here {
                let seen = match &attempt.outcome {
                    _ if attempt.tls.is_some() => TlsSeen::Established(attempt.verdict.as_ref()),
                    _ if attempt.tls_failed => TlsSeen::HandshakeFailed,
                    SessionOutcome::Failed(HostFailure::TlsUnavailable { .. }) => {
                        TlsSeen::NoStartTls
                    }
                    SessionOutcome::Failed(_) => TlsSeen::NotReached,
                    SessionOutcome::Replied(_) | SessionOutcome::Uncertain { .. } => {
                        TlsSeen::NoStartTls
                    }
                };
                let level = level_of(attempt.tls.as_ref(), attempt.verdict.as_ref());
                self.note_sts_session(domain, active, host, (attempt.local, *ip), level, seen);
            } else {
                let failure = match &attempt.outcome {
                    SessionOutcome::Failed(f) => Some(f),
                    _ => None,
                };
                self.report_tls(
                    domain,
                    host,
                    (attempt.local, *ip),
                    session_facts(
                        host_policy,
                        tried_tls,
                        (attempt.tls.as_ref(), attempt.verdict.as_ref()),
                        failure,
                        attempt.tls_failed,
                    ),
                );
            }
            if attempt.greeted {
                sessions += 1;
            }
            if attempt.tls.is_some() {
                self.memory.clear(host);
            }
            let kept_as = Destination::new(domain, host_policy);
            let attempt = match self.decided(attempt, &kept_as, host, addr, rcpts, started) {
                Ok(statuses) => return statuses,
                Err(attempt) => *attempt,
            };
            if let SessionOutcome::Failed(failure) = &attempt.outcome {
                if attempt.tls_failed {
                    self.remember_tls_failure(host);
                }
                let reply = sts_reply(
                    host_failure_reply(failure, host, *ip, host_policy),
                    domain,
                    sts_here,
                    policy != host_policy,
                );
                log!(
                    "host {host}[{ip}]:{} failed: {reply}; trying the next one",
                    self.smtp_port
                );
                last = Some((reply, relay.clone()));
                // What the last session reached (a TLS handshake that a
                // policy then refused is not plaintext), for the log.
                last_security = (attempt.tls.clone(), attempt.verdict.clone());
            }
        }
        let (reply, relay) = last.unwrap_or_else(|| {
            (
                Reply::new(451, format!("4.4.4 No usable mail exchanger for {domain}")),
                None,
            )
        });
        let (tls, verdict) = last_security;
        let level = level_of(tls.as_ref(), verdict.as_ref());
        all(reply, relay)
            .into_iter()
            .map(|mut s| {
                s.tls = tls.clone();
                s.verdict = verdict.clone();
                s.level = level;
                s
            })
            .collect()
    }

    /// The recipients' statuses when the attempt decided them (replies, or
    /// a connection lost in the transaction), keeping its session for the
    /// next delivery to `to` when it is still open; `Err` gives a failed
    /// attempt back (nothing decided: the next host, or a new session).
    fn decided(
        &self,
        mut attempt: Attempt,
        to: &Destination,
        host: &str,
        addr: SocketAddr,
        rcpts: &[String],
        started: Instant,
    ) -> Result<Vec<RecipientStatus>, Box<Attempt>> {
        let relay = Some((host.to_string(), addr));
        let level = level_of(attempt.tls.as_ref(), attempt.verdict.as_ref());
        let statuses = match &attempt.outcome {
            SessionOutcome::Failed(_) => return Err(Box::new(attempt)),
            SessionOutcome::Replied(results) => results
                .iter()
                .map(|result| RecipientStatus {
                    recipient: result.recipient.clone(),
                    reply: result.reply.clone(),
                    relay: relay.clone(),
                    tls: attempt.tls.clone(),
                    verdict: attempt.verdict.clone(),
                    level,
                    delay: started.elapsed(),
                })
                .collect(),
            SessionOutcome::Uncertain { accepted } => {
                let ip = addr.ip();
                rcpts
                    .iter()
                    .map(|r| {
                        let text = if accepted.contains(r) {
                            format!(
                                "4.4.2 Lost connection with {host}[{ip}] after end of data; the message may already be delivered"
                            )
                        } else {
                            format!(
                                "4.4.2 Lost connection with {host}[{ip}] during the transaction"
                            )
                        };
                        let mut s = self.failed(r, Reply::new(451, text), started);
                        s.relay = relay.clone();
                        s.tls = attempt.tls.clone();
                        s.level = level;
                        s
                    })
                    .collect()
            }
        };
        if let Some((conn, caps, uses)) = attempt.keep.take() {
            self.idle.put(to.clone(), conn, caps, uses + 1);
        }
        Ok(statuses)
    }

    /// The next transaction on a session kept from an earlier delivery.
    async fn reuse(
        &self,
        idle: super::cache::IdleSession,
        policy: TlsPolicy,
        rcpts: &[String],
        prepared: &Prepared,
    ) -> Attempt {
        let mut conn = idle.conn;
        let mut session = ClientSession::resume(&self.helo_name, idle.caps);
        session.next_transaction(
            Envelope {
                sender: prepared.envelope_sender.clone(),
                recipients: rcpts.to_vec(),
            },
            prepared.facts,
            Arc::clone(&prepared.wire),
        );
        let end = self.drive(&mut conn, &mut session, policy).await;
        self.conclude(conn, session, end, idle.uses, None)
    }

    /// What a driven session came to; a session still open and ready is
    /// handed back to be kept. `fresh`: the session was opened for this
    /// attempt (its XPONY pin is committed now, §8.4; a kept session's
    /// was committed when it was opened).
    fn conclude(
        &self,
        mut conn: Connection,
        mut session: ClientSession,
        end: Result<(), HostFailure>,
        uses: u32,
        fresh: Option<&str>,
    ) -> Attempt {
        let outcome = match end {
            Err(failure) => SessionOutcome::Failed(failure),
            Ok(()) => session
                .take_outcome()
                .unwrap_or(SessionOutcome::Failed(HostFailure::Lost {
                    stage: "connect",
                })),
        };
        // A new session (with its recipient domain): DANE's outcome, once
        // per handshake.
        if let Some(domain) = fresh {
            let failure = match &outcome {
                SessionOutcome::Failed(f) => Some(f),
                _ => None,
            };
            self.record_dane_session(domain, &conn, failure);
        }
        let fresh = fresh.is_some();
        if fresh && matches!(outcome, SessionOutcome::Replied(_)) {
            self.update_pin(&mut conn);
        }
        let mut attempt = Attempt {
            outcome,
            tls: conn.tls.clone(),
            verdict: conn.verdict.clone(),
            greeted: conn.greeted,
            tls_failed: conn.tls_failed,
            local: conn.local,
            keep: None,
        };
        if session.is_ready()
            && matches!(attempt.outcome, SessionOutcome::Replied(_))
            && let Some(caps) = session.capabilities().cloned()
        {
            attempt.keep = Some((conn, caps, uses));
        }
        attempt
    }

    /// Opens a session with the first MX host of `domain` that works, up to
    /// the point where mail commands can be sent (greeting, EHLO, STARTTLS
    /// as policy says). `Err` is the reply that stands for the failure.
    pub(crate) async fn open_route(&self, domain: &str) -> Result<OpenRoute, Reply> {
        let configured = self.policy.for_domain(domain);
        let sts = self.sts_policy(domain, configured).await;
        let candidates = self.candidates(domain, sts.as_ref()).await?;
        let mut last = candidates.dns_failure.clone();
        let mut sessions = 0;
        let mut hosts = HostPolicies::default();
        for (host, ip) in &candidates.list {
            if sessions >= self.limits.max_sessions {
                break;
            }
            let host_tls = match self
                .host_tls(&mut hosts, domain, host, configured, &candidates)
                .await
            {
                Ok(h) => h,
                Err(reply) => {
                    last = Some(reply);
                    continue;
                }
            };
            let sts_here = self.sts_for_host(sts.as_ref(), &host_tls);
            let policy = sts_host_policy(host_tls.policy, sts_here);
            let raised = policy != host_tls.policy;
            let addr = SocketAddr::new(*ip, self.smtp_port);
            let pony = match self.pony_context(host, candidates.mx_dnssec, policy).await {
                Ok(pony) => pony,
                Err(f) => {
                    last = Some(host_failure_reply(&f, host, *ip, policy));
                    continue;
                }
            };
            let mut conn = match self.connect(addr, host).await {
                Ok(c) => c,
                Err(reply) => {
                    last = Some(reply);
                    continue;
                }
            };
            let tried_tls = self.tries_tls(host, policy);
            conn.dane = host_tls.dane.clone();
            let session = ClientSession::opening(&self.helo_name, self.starttls_for(host, policy));
            let mut session = self.offer_pony(&mut conn, session, pony);
            let end = self.drive(&mut conn, &mut session, policy).await;
            if conn.greeted {
                sessions += 1;
            }
            if conn.tls.is_some() {
                self.memory.clear(host);
            }
            if conn.tls_failed {
                self.remember_tls_failure(host);
            }
            let failure = match end {
                Err(f) => Some(f),
                Ok(()) if session.is_ready() => None,
                Ok(()) => Some(match session.take_outcome() {
                    Some(SessionOutcome::Failed(f)) => f,
                    _ => HostFailure::Lost { stage: "greeting" },
                }),
            };
            if let Some(active) = sts_here {
                let seen = match &failure {
                    _ if conn.tls.is_some() => TlsSeen::Established(conn.verdict.as_ref()),
                    _ if conn.tls_failed => TlsSeen::HandshakeFailed,
                    Some(HostFailure::TlsUnavailable { .. }) | None => TlsSeen::NoStartTls,
                    Some(_) => TlsSeen::NotReached,
                };
                self.note_sts_session(domain, active, host, (conn.local, *ip), conn.level(), seen);
            } else {
                self.report_tls(
                    domain,
                    host,
                    (conn.local, *ip),
                    session_facts(
                        policy,
                        tried_tls,
                        (conn.tls.as_ref(), conn.verdict.as_ref()),
                        failure.as_ref(),
                        conn.tls_failed,
                    ),
                );
            }
            self.record_dane_session(domain, &conn, failure.as_ref());
            match failure {
                None => {
                    // The EHLO reply came over the channel: the server's
                    // first valid frame, where pins are committed (§8.4).
                    self.update_pin(&mut conn);
                    let caps = session
                        .capabilities()
                        .cloned()
                        .unwrap_or(crate::smtp::EhloReply {
                            greeting: String::new(),
                            capabilities: Vec::new(),
                        });
                    return Ok(OpenRoute { conn, caps });
                }
                Some(f) => {
                    let reply = sts_reply(
                        host_failure_reply(&f, host, *ip, policy),
                        domain,
                        sts_here,
                        raised,
                    );
                    log!(
                        "host {host}[{ip}]:{} failed: {reply}; trying the next one",
                        self.smtp_port
                    );
                    last = Some(reply);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            Reply::new(451, format!("4.4.4 No usable mail exchanger for {domain}"))
        }))
    }

    /// The MTA-STS policy in force for `domain` (RFC 8461 §5.1), if it is
    /// to be applied: not for address literals, nor where the operator's
    /// TLS policy is `none` (no TLS at all), nor where MTA-STS is switched
    /// off for the domain. Mode `none` is as no policy.
    async fn sts_policy(&self, domain: &str, policy: TlsPolicy) -> Option<ActivePolicy> {
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
    fn sts_filter(
        &self,
        domain: &str,
        sts: Option<&ActivePolicy>,
        routes: Vec<MxRoute>,
    ) -> Result<Vec<MxRoute>, Reply> {
        let Some(active) = sts.filter(|a| a.policy.mode == StsMode::Enforce) else {
            return Ok(routes);
        };
        let (matching, other): (Vec<MxRoute>, Vec<MxRoute>) = routes
            .into_iter()
            .partition(|r| active.policy.mx_matches(&r.host));
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
            return Err(Reply::new(
                451,
                format!(
                    "4.7.5 MTA-STS policy of {domain} (mode enforce, id {}) lists none of its MX hosts ({}; the policy allows {})",
                    active.id,
                    hosts.join(", "),
                    active.policy.mx_list()
                ),
            ));
        }
        Ok(matching)
    }

    /// Logs and records how one MX session fared under an MTA-STS policy
    /// (one line per session, with the RFC 8460 result type): an MX host
    /// the policy does not list (mode testing) fails whatever its TLS.
    fn note_sts_session(
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

    /// The MTA-STS policy that governs `host`: the domain's, unless DANE
    /// does. RFC 8461 §2: where an MX host has usable DANE TLSA records
    /// (RFC 7672), DANE governs it and the MTA-STS policy does not; this is
    /// the one place where that check goes once DANE is in.
    ///
    /// DANE is looked up under the `dane` and `dane-only` policies
    /// ([`Deliverer::host_tls`]); a host it authenticates (usable TLSA
    /// records) is DANE's alone. A host whose DANE lookup failed never gets
    /// here: it is deferred, and MTA-STS cannot override that.
    fn sts_for_host<'a>(
        &self,
        sts: Option<&'a ActivePolicy>,
        host_tls: &HostTls,
    ) -> Option<&'a ActivePolicy> {
        sts.filter(|_| host_tls.dane.is_none())
    }

    /// One SMTP session with one address, delivering the whole transaction
    /// and kept open after it (see `cache`).
    // Each argument is one fact of a different kind (where, what TLS, what
    // DNS said, for whom, what); a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        domain: &str,
        addr: SocketAddr,
        host: &str,
        host_tls: &HostTls,
        mx: Dnssec,
        rcpts: &[String],
        prepared: &Prepared,
    ) -> Attempt {
        let policy = host_tls.policy;
        let envelope = Envelope {
            sender: prepared.envelope_sender.clone(),
            recipients: rcpts.to_vec(),
        };
        // The message is shared, not copied, by every attempt.
        let session = ClientSession::new(
            &self.helo_name,
            self.starttls_for(host, policy),
            envelope,
            prepared.facts,
            Arc::clone(&prepared.wire),
        )
        .keep_open();
        let pony = match self.pony_context(host, mx, policy).await {
            Ok(pony) => pony,
            Err(failure) => return Attempt::failed(failure),
        };
        let mut conn = match self.connect(addr, host).await {
            Ok(conn) => conn,
            Err(reply) => {
                return Attempt::failed(HostFailure::Refused {
                    stage: "connect",
                    reply,
                });
            }
        };
        conn.dane = host_tls.dane.clone();
        let mut session = self.offer_pony(&mut conn, session, pony);
        let end = self.drive(&mut conn, &mut session, policy).await;
        self.conclude(conn, session, end, 0, Some(domain))
    }

    /// Looks up what is known about `host` (DNS key, pin) before connecting
    /// (proto-spec §8.3 "before the session"): `None` when the extension is
    /// not to be used with it, `Err` when the host must not be tried now (a
    /// DNSSEC-bogus key record).
    ///
    /// Policy `none` means no encryption of any kind for the destination.
    /// Under `verify` a first contact could only reach `encrypted`, so the
    /// extension is used only for hosts with a pin or a DNS key, and other
    /// hosts must show a verified certificate (proto-spec §9).
    pub(super) async fn pony_context(
        &self,
        host: &str,
        mx: Dnssec,
        policy: TlsPolicy,
    ) -> Result<Option<PonyContext>, HostFailure> {
        let Some(pony) = &self.pony else {
            return Ok(None);
        };
        if policy == TlsPolicy::None {
            return Ok(None);
        }
        let name = crate::pony::keys::dns_name(host);
        let mut testing = Vec::new();
        // An address literal has no name to publish a key under (§8.2):
        // only a pin can be known about it.
        let txt = if address_literal(host).is_some() {
            Ok((Vec::new(), Dnssec::Insecure))
        } else {
            self.resolver.txt(&name).await
        };
        let dns = match txt {
            Ok((_, Dnssec::Bogus)) => {
                let why = format!("the DNSSEC validation of {name} failed (bogus answer)");
                log!("xpony: {host}: {why}");
                return Err(HostFailure::PonyRejected { why });
            }
            // A key counts as DNSSEC-signed only if the MX record that
            // named its host was signed too (as for DANE, RFC 7672 §2.2.1).
            Ok((records, status)) => {
                testing = note_dns_records(&name, &records);
                DnsKeys::from_records(&records, status == Dnssec::Secure && mx == Dnssec::Secure)
            }
            Err(e) => {
                log!("warning: XPONY key lookup for {host}: {e}");
                DnsKeys::Indeterminate
            }
        };
        let now = unix_now();
        let (pin, pins_unreadable) = match pony.pins.get(host) {
            Ok(pin) => (pin.filter(|p| !p.expired(now)), false),
            Err(e) => {
                // Unreadable pins must not mean "no pin": require XPONY.
                log!("warning: {e}; requiring XPONY from {host}");
                (None, true)
            }
        };
        let required = Evidence {
            dns: &dns,
            pin: pin.as_ref(),
        }
        .requires_extension()
            || pins_unreadable;
        // The same for DANE: a first contact would not be authenticated.
        if policy.required() == SecurityLevel::Authenticated && !required {
            return Ok(None);
        }
        Ok(Some(PonyContext {
            dns,
            testing,
            pin,
            required,
            seen: None,
            presented: None,
        }))
    }

    /// Lets `session` use the extension on `conn`, required if the host is
    /// known to speak it.
    pub(super) fn offer_pony(
        &self,
        conn: &mut Connection,
        session: ClientSession,
        context: Option<PonyContext>,
    ) -> ClientSession {
        let (Some(pony), Some(context)) = (&self.pony, context) else {
            return session;
        };
        let offer = crate::smtp::client::PonyOffer {
            key: pony.key.clone(),
            required: context.required,
        };
        conn.pony = Some(context);
        session.with_pony(offer)
    }

    /// After a session that got as far as a transaction over the channel,
    /// remembers the key (first contact) or refreshes the pin (§8.4).
    ///
    /// A pin that cannot be stored (a state directory the mailer's user may
    /// not write) does not defer: the session was encrypted all the same,
    /// only the next contact will not recognise the key. It is logged
    /// loudly, and the verdict says `pin=not-stored`, never "pinned now".
    fn update_pin(&self, conn: &mut Connection) {
        let (Some(pony), Some(context)) = (&self.pony, &conn.pony) else {
            return;
        };
        let Some((key, basis, hints)) = &context.seen else {
            return;
        };
        let updated = crate::pony::pins::updated_pin(
            context.pin.as_ref(),
            key,
            *basis,
            hints,
            &context.dns,
            unix_now(),
        );
        let result = match updated {
            Some(pin) => pony.pins.put(&conn.host, &pin),
            // The server asks not to be pinned (any more).
            None => pony.pins.forget(&conn.host).map(|_| ()),
        };
        let first_contact =
            matches!(&conn.verdict, Some(CertVerdict::Untrusted(why)) if why == FIRST_CONTACT);
        match result {
            Ok(()) if first_contact => {
                conn.verdict = Some(CertVerdict::Untrusted(format!(
                    "{FIRST_CONTACT}, key pinned now"
                )));
            }
            Ok(()) => {}
            Err(e) => {
                log!(
                    "warning: xpony: {}[{}] pin=not-stored error=\"{e}\" (delivering anyway: the session is encrypted; the state directory must be writable by the user blackpony runs as, or this key is not recognised next time)",
                    conn.host,
                    conn.addr.ip()
                );
                if first_contact {
                    conn.verdict = Some(CertVerdict::Untrusted(format!(
                        "{FIRST_CONTACT}, pin=not-stored"
                    )));
                }
            }
        }
    }

    /// A TCP connection to one MX address.
    pub(crate) async fn connect(&self, addr: SocketAddr, host: &str) -> Result<Connection, Reply> {
        let connect =
            tokio::time::timeout(self.limits.connect_timeout, TcpStream::connect(addr)).await;
        let why = match connect {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                let local = tcp.local_addr().ok().map(|a| a.ip());
                return Ok(Connection {
                    local,
                    stream: Some(Stream::Plain(tcp)),
                    host: host.to_string(),
                    addr,
                    tls: None,
                    verdict: None,
                    greeted: false,
                    tls_failed: false,
                    inbuf: Vec::new(),
                    pony: None,
                    dane: None,
                    dane_mismatch: None,
                });
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        Err(Reply::new(
            451,
            format!(
                "4.4.1 Connect to {host}[{}]:{}: {why}",
                addr.ip(),
                addr.port()
            ),
        ))
    }

    /// Runs `session` on `conn` until it is done (a delivering session) or
    /// ready (an opening one), upgrading to TLS when it asks. `Err` is a
    /// failure the session itself could not see (TLS, policy).
    pub(crate) async fn drive(
        &self,
        conn: &mut Connection,
        session: &mut ClientSession,
        policy: TlsPolicy,
    ) -> Result<(), HostFailure> {
        let mut driver = ClientDriver::new(self.limits.reply_timeout);
        loop {
            let step = driver.next_step(&mut conn.stream, session).await;
            conn.greeted |= driver.heard();
            let Some(step) = step else {
                return Ok(());
            };
            match step {
                Step::Continue | Step::Ready | Step::Done => return Ok(()),
                Step::CheckServerKey { key, hints } => {
                    if let Some(c) = conn.pony.as_mut() {
                        c.presented = Some(key);
                    }
                    let no_evidence = (DnsKeys::Absent, None);
                    let (dns, pin) = match &conn.pony {
                        Some(c) => (&c.dns, c.pin.as_ref()),
                        None => (&no_evidence.0, no_evidence.1),
                    };
                    match (Evidence { dns, pin }).judge_key(&key) {
                        KeyVerdict::Mismatch { expected } => {
                            let why = format!(
                                "{}[{}] presented key {}, expected {expected}: impostor, or a key change to accept with 'blackpony pins accept {} KEY'",
                                conn.host,
                                conn.addr.ip(),
                                crate::pony::keys::fingerprint(&key),
                                conn.host
                            );
                            log!("xpony: {why}");
                            session.xpony_reject(why);
                            continue;
                        }
                        KeyVerdict::Accepted(basis)
                            if policy.required() == SecurityLevel::Authenticated
                                && !basis.authenticated() =>
                        {
                            let why = format!(
                                "{}[{}] presented key {} on first contact, but policy {} needs a known key or a verified certificate",
                                conn.host,
                                conn.addr.ip(),
                                crate::pony::keys::fingerprint(&key),
                                policy.as_str(),
                            );
                            log!("xpony: {why}");
                            session.xpony_reject(why);
                            continue;
                        }
                        KeyVerdict::Accepted(basis) => {
                            if let Some(c) = conn.pony.as_ref()
                                && !c.testing.is_empty()
                                && !c.testing.contains(&key)
                            {
                                // proto-spec §8.2: what the operator is testing
                                // would have failed.
                                log!(
                                    "xpony: {}[{}] presented key {}, not the testing key published in DNS (t=y, not enforced)",
                                    conn.host,
                                    conn.addr.ip(),
                                    crate::pony::keys::fingerprint(&key)
                                );
                            }
                            if let Some(c) = conn.pony.as_mut() {
                                c.seen = Some((key, basis, hints));
                            }
                        }
                    }
                    if session.xpony_accept() == Step::SwitchToPony {
                        self.switch_to_pony(&driver, conn, session).await?;
                    }
                }
                Step::SwitchToPony => self.switch_to_pony(&driver, conn, session).await?,
                Step::StartTls => {
                    if session.injected_after_starttls > 0 {
                        log!(
                            "warning: {}[{}] sent {} bytes after its 220 to STARTTLS (response injection); discarded",
                            conn.host,
                            conn.addr.ip(),
                            session.injected_after_starttls
                        );
                    }
                    self.upgrade(conn, policy).await?;
                    session.tls_established();
                }
            }
        }
    }

    /// Writes message 3 in plaintext, then wraps the connection in the
    /// blackpony channel and lets the session start over with EHLO.
    async fn switch_to_pony(
        &self,
        driver: &ClientDriver,
        conn: &mut Connection,
        session: &mut ClientSession,
    ) -> Result<(), HostFailure> {
        let info = driver
            .switch_to_pony(&mut conn.stream, session)
            .await
            .ok_or(HostFailure::Lost { stage: "XPONY" })?;
        let verdict = match conn.pony.as_ref().and_then(|c| c.seen.as_ref()) {
            Some((_, basis, _)) if basis.authenticated() => CertVerdict::KeyKnown(basis.as_str()),
            Some((_, _, hints)) if hints.max_age == 0 => {
                CertVerdict::Untrusted("first contact, the server asks not to be pinned".into())
            }
            _ if conn.pony.as_ref().map(|c| &c.dns) == Some(&DnsKeys::Indeterminate) => {
                CertVerdict::Untrusted(
                    "first contact, not pinned: the DNS key lookup failed".into(),
                )
            }
            // Said "pinned now" only once the pin is stored (update_pin).
            _ => CertVerdict::Untrusted(FIRST_CONTACT.into()),
        };
        conn.tls = Some(info);
        conn.verdict = Some(verdict);
        Ok(())
    }

    /// The TLS handshake on `conn`, and the policy check of its result.
    async fn upgrade(&self, conn: &mut Connection, policy: TlsPolicy) -> Result<(), HostFailure> {
        let host = conn.host.clone();
        let ip = conn.addr.ip();
        let failed = |why: String| HostFailure::Refused {
            stage: "STARTTLS",
            reply: Reply::new(
                454,
                format!("4.7.5 TLS handshake with {host}[{ip}] failed: {why}"),
            ),
        };
        let Some(Ok(tcp)) = conn.stream.take().map(Stream::into_plain) else {
            return Err(failed("not a plaintext connection".into()));
        };
        let name = crate::transport::tls::server_name(&host).map_err(failed)?;
        let (config, dane) = match &conn.dane {
            Some(auth) => {
                let (config, verifier) = self
                    .tls
                    .dane_config(auth)
                    .map_err(|e| failed(e.to_string()))?;
                (config, Some(verifier))
            }
            None => (self.tls.config(), None),
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let handshake =
            tokio::time::timeout(self.limits.connect_timeout, connector.connect(name, tcp)).await;
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                // A certificate that does not match the TLSA records is
                // no TLS trouble: plaintext never follows DANE (§2.2).
                if let Some(why) = dane.as_ref().and_then(|v| v.failure()) {
                    conn.dane_mismatch = Some(why.clone());
                    return Err(HostFailure::Refused {
                        stage: "STARTTLS",
                        reply: Reply::new(
                            454,
                            format!(
                                "4.7.5 Server certificate of {host}[{ip}] does not match its TLSA records (DANE): {why}"
                            ),
                        ),
                    });
                }
                conn.tls_failed = true;
                return Err(failed(e.to_string()));
            }
            Err(_) => {
                conn.tls_failed = true;
                return Err(failed("timed out".into()));
            }
        };
        // Postfix's smtpd sends a session ticket right after the handshake
        // and holds its EHLO reply back (Nagle) until that ticket is
        // acknowledged; a delayed ACK here would cost ~40 ms per session.
        let _ = tls.get_ref().0.set_quickack(true);
        let (_, state) = tls.get_ref();
        let info = Encryption::from_tls(state);
        let verdict = match &conn.dane {
            Some(auth) => self.tls.dane_verdict(state, auth),
            None => self.tls.verdict(state, &host),
        };
        conn.tls = Some(info);
        conn.verdict = Some(verdict.clone());
        let mut stream = Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls)));
        if policy == TlsPolicy::Verify
            && let CertVerdict::Untrusted(why) = verdict
        {
            let _ = stream.write_all(b"QUIT\r\n").await;
            return Err(HostFailure::Refused {
                stage: "STARTTLS",
                reply: Reply::new(
                    454,
                    format!("4.7.5 Server certificate of {host} not verified: {why}"),
                ),
            });
        }
        conn.stream = Some(stream);
        Ok(())
    }
}

/// The verdict of an XPONY first contact before its pin is stored.
const FIRST_CONTACT: &str = "first contact";

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

/// A session opened by [`Deliverer::open_route`], ready for mail commands.
pub(crate) struct OpenRoute {
    pub(crate) conn: Connection,
    pub(crate) caps: crate::smtp::EhloReply,
}

/// What a session showed about TLS, for its TLS report record.
fn session_facts<'a>(
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
fn sts_host_policy(policy: TlsPolicy, sts: Option<&ActivePolicy>) -> TlsPolicy {
    match sts {
        Some(active) if active.policy.mode == StsMode::Enforce => TlsPolicy::Verify,
        _ => policy,
    }
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
fn sts_reply(reply: Reply, domain: &str, sts: Option<&ActivePolicy>, raised: bool) -> Reply {
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

/// A reply for a DNS failure (RFC 3463 codes as Postfix uses them).
fn dns_reply(failure: &DnsFailure) -> Reply {
    match failure {
        DnsFailure::NoSuchDomain(name) => Reply::new(
            550,
            format!("5.1.2 Host or domain name not found: {name} does not exist"),
        ),
        DnsFailure::NoRecords(name, _) => Reply::new(
            550,
            format!("5.1.2 Host or domain name not found: {name} has no address"),
        ),
        DnsFailure::BadName(name) => {
            Reply::new(501, format!("5.1.2 Bad destination domain name {name:?}"))
        }
        DnsFailure::Temporary(name, why) => Reply::new(
            451,
            format!("4.4.3 Host or domain name lookup failed for {name}: {why}"),
        ),
    }
}

/// The reply that stands for a session that failed before any recipient.
fn host_failure_reply(failure: &HostFailure, host: &str, ip: IpAddr, policy: TlsPolicy) -> Reply {
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
                Reply::new(
                    reply.code(),
                    format!(
                        "{code_part} {host}[{ip}] refused {stage}: {} {rest}",
                        reply.code()
                    ),
                )
            }
        }
        HostFailure::TlsUnavailable { reply } => Reply::new(
            451,
            format!(
                "4.7.4 TLS is required by {} but {host}[{ip}] {}",
                match policy {
                    // What DANE made of the host (dane.rs `decide`).
                    TlsPolicy::DaneOnly => "DANE (usable TLSA records)".to_string(),
                    other => format!("policy {}", other.as_str()),
                },
                match reply {
                    Some(r) => format!("refused STARTTLS: {r}"),
                    None => "did not offer STARTTLS".to_string(),
                }
            ),
        ),
        HostFailure::Protocol(e) => {
            Reply::new(451, format!("4.5.0 {host}[{ip}] does not speak SMTP: {e}"))
        }
        HostFailure::PonyDowngrade => Reply::new(
            451,
            format!(
                "4.7.5 {host}[{ip}] is known to speak XPONY (pin or DNS key) but did not offer it: a downgrade? 'blackpony pins forget {host}' if this is intended"
            ),
        ),
        HostFailure::PonyRejected { why } => {
            Reply::new(451, format!("4.7.5 XPONY key refused: {why}"))
        }
        HostFailure::PonyFailed { why } => Reply::new(
            451,
            format!("4.7.5 XPONY handshake with {host}[{ip}] failed: {why}"),
        ),
        HostFailure::Lost { stage } => Reply::new(
            451,
            format!(
                "4.4.2 Lost connection with {host}[{ip}] while waiting for the reply to {stage}"
            ),
        ),
    }
}

/// Logs the XPONY records at `name` that are invalid (they are ignored, and
/// the operator who published them should know: proto-spec §8.2), and
/// returns the testing keys.
fn note_dns_records(name: &str, records: &[String]) -> Vec<crate::pony::keys::PublicKey> {
    use crate::pony::keys::{DnsRecord, parse_dns_record};
    let mut testing = Vec::new();
    for record in records {
        match parse_dns_record(record) {
            DnsRecord::Invalid(why) => {
                log!("warning: {name}: invalid XPONY key record ignored ({why}): {record:?}")
            }
            DnsRecord::Key { key, testing: true } => testing.push(key),
            _ => {}
        }
    }
    testing
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id())
}

/// The state directory: `$STATE_DIRECTORY` (systemd), else /var/lib/blackpony.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/blackpony"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

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

    #[test]
    fn enforce_keeps_only_listed_mx_hosts_and_reports_the_others() {
        let sink = Arc::new(Recorded::default());
        let d = deliverer(Arc::clone(&sink));
        let enforce = active("enforce");
        let testing = active("testing");
        let all = ["mx.example.org", "evil.example.net", "a.backup.example.org"];
        // enforce: the listed ones, in order; the other reported, not connected to.
        let kept = d
            .sts_filter("example.org", Some(&enforce), routes(&all))
            .unwrap();
        assert_eq!(hosts(&kept), ["mx.example.org", "a.backup.example.org"]);
        // testing, or no policy: every host.
        let kept = d
            .sts_filter("example.org", Some(&testing), routes(&all))
            .unwrap();
        assert_eq!(hosts(&kept), all);
        assert_eq!(
            hosts(&d.sts_filter("example.org", None, routes(&all)).unwrap()),
            all
        );
        // None listed: a temporary failure.
        let none = d
            .sts_filter("example.org", Some(&enforce), routes(&["x.example.net"]))
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
