//! The one walk over a domain's MX hosts: a session kept from an earlier
//! delivery first, then each address in turn (RFC 5321 §5.1), within
//! `max_sessions` sessions that reached a greeting, until one decides the
//! recipients (its replies, or a connection lost in the transaction) or
//! none is left. What each host must get is `mx_hosts.rs`'s; opening and
//! driving the connection is `connection.rs`'s.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use super::cache::Destination;
use super::connection::{Connection, level_of};
use super::dane::HostTls;
use super::deliver::{Deliverer, Prepared};
use super::dns::Dnssec;
use super::mx_hosts::{HostPolicies, kept_host_policy, session_facts, sts_host_policy, sts_reply};
use super::policy::TlsPolicy;
use super::report::{RecipientStatus, host_failure_reply};
use super::sts::TlsSeen;
use crate::log;
use crate::smtp::Reply;
use crate::smtp::client::{ClientSession, HostFailure, SessionOutcome};
use crate::smtp::envelope::Envelope;
use crate::transport::{CertVerdict, Encryption};

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
    pub(super) async fn deliver_domain(
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
        // Sessions are kept and found again under the domain's configured
        // policy, whatever each host then got (DANE makes a host with usable
        // TLSA records `dane-only` under `dane`); what a kept session must
        // reach is checked when it is taken.
        let to = self.destination(domain);
        // A session kept from an earlier delivery to this domain first: no
        // MX lookup, no handshake. It must have reached the level the
        // delivery requires now, and what its host requires now (DANE's
        // decision when it was opened, raised by an MTA-STS policy unless
        // DANE governs the host): one opened when less was required never
        // serves a stricter delivery. One the server closed meanwhile fails
        // at its RSET with nothing decided, and the next kept one or a new
        // session takes over.
        while let Some(idle) = self.idle.take(&to, effective) {
            let host = idle.conn.host.clone();
            let addr = idle.conn.addr;
            let sts_here = self.sts_for_host(sts.as_ref(), &idle.conn.host_tls);
            let level = idle.conn.level();
            let Some(host_policy) = kept_host_policy(&idle.conn.host_tls, &host, level, sts_here)
            else {
                log!(
                    "host {host}[{}]:{} kept session not reused (opened under policy {}, level {level}; the host requires more now)",
                    addr.ip(),
                    addr.port(),
                    idle.conn.host_tls.policy.as_str()
                );
                super::cache::quit(idle.conn).await;
                continue;
            };
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
            let host_policy = sts_host_policy(policy, sts_here);
            let tried_tls = self.tries_tls(host, host_policy);
            let attempt = self
                .attempt(
                    domain,
                    addr,
                    host,
                    (&host_tls, host_policy),
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
            let attempt = match self.decided(attempt, &to, host, addr, rcpts, started) {
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
            let mut conn = match self.connect(addr, host, host_tls.clone()).await {
                Ok(c) => c,
                Err(reply) => {
                    last = Some(reply);
                    continue;
                }
            };
            let tried_tls = self.tries_tls(host, policy);
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
        (host_tls, policy): (&HostTls, TlsPolicy),
        mx: Dnssec,
        rcpts: &[String],
        prepared: &Prepared,
    ) -> Attempt {
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
        let mut conn = match self.connect(addr, host, host_tls.clone()).await {
            Ok(conn) => conn,
            Err(reply) => {
                return Attempt::failed(HostFailure::Refused {
                    stage: "connect",
                    reply,
                });
            }
        };
        let mut session = self.offer_pony(&mut conn, session, pony);
        let end = self.drive(&mut conn, &mut session, policy).await;
        self.conclude(conn, session, end, 0, Some(domain))
    }
}

/// A session opened by [`Deliverer::open_route`], ready for mail commands.
pub(crate) struct OpenRoute {
    pub(crate) conn: Connection,
    pub(crate) caps: crate::smtp::EhloReply,
}
