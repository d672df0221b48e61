//! The one walk over a domain's MX hosts (`Deliverer::walk`): each
//! address in turn (RFC 5321 §5.1), within `max_sessions` sessions that
//! reached a greeting, until one decides the recipients (its replies, or a
//! connection lost in the transaction) or, for the SMTP proxy
//! (`Deliverer::open_route`), is ready for mail commands; or none is
//! left. A delivery first tries a session kept from an earlier one. What
//! each host must get is `mx_hosts.rs`'s; opening and driving the
//! connection is `connection.rs`'s.

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
use super::sts_fetch::ActivePolicy;
use crate::log;
use crate::smtp::client::{ClientSession, HostFailure, SessionOutcome};
use crate::smtp::envelope::Envelope;
use crate::smtp::{Reply, replies};
use crate::transport::{CertVerdict, Encryption};

/// What a walk over the MX hosts opens sessions for.
#[derive(Clone, Copy)]
enum Errand<'a> {
    /// The whole transaction in each session, kept open after it.
    Deliver {
        rcpts: &'a [String],
        prepared: &'a Prepared,
    },
    /// A session up to where mail commands can be sent (greeting, EHLO,
    /// STARTTLS or XPONY as policy says): the SMTP proxy's.
    Open,
}

/// How a session with one address ended.
enum Ended {
    /// Nothing was decided: the next address, or a new session.
    Failed(HostFailure),
    /// The transaction decided the recipients: their replies, or a
    /// connection lost in it ([`SessionOutcome::Replied`] or
    /// [`SessionOutcome::Uncertain`]).
    Decided(SessionOutcome),
    /// Ready for mail commands ([`Errand::Open`]).
    Ready,
}

/// What a session with one address ended with, plus what was learnt.
struct Attempt {
    ended: Ended,
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
            ended: Ended::Failed(failure),
            tls: None,
            verdict: None,
            greeted: false,
            tls_failed: false,
            local: None,
            keep: None,
        }
    }

    fn failure(&self) -> Option<&HostFailure> {
        match &self.ended {
            Ended::Failed(f) => Some(f),
            _ => None,
        }
    }
}

/// Why no address took the errand: the reply that stands for every
/// recipient, the last host tried, and what its session reached.
struct GaveUp {
    reply: Reply,
    relay: Option<(String, SocketAddr)>,
    tls: Option<Encryption>,
    verdict: Option<CertVerdict>,
}

impl GaveUp {
    fn before_any_host(reply: Reply) -> Self {
        GaveUp {
            reply,
            relay: None,
            tls: None,
            verdict: None,
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
        // MX lookup, no handshake (see [`Self::take_kept`]). One the server
        // closed meanwhile fails at its RSET with nothing decided, and the
        // next kept one or a new session takes over.
        while let Some((idle, host_policy)) = self.take_kept(&to, sts.as_ref(), effective).await {
            let host = idle.conn.host.clone();
            let addr = idle.conn.addr;
            let attempt = self.reuse(idle, host_policy, rcpts, prepared).await;
            match self.decided(attempt, &to, &host, addr, rcpts, started) {
                Ok(statuses) => return statuses,
                Err(attempt) => {
                    if let Some(failure) = attempt.failure() {
                        log!(
                            "host {host}[{}]:{} kept session unusable ({failure}); opening a new one",
                            addr.ip(),
                            addr.port()
                        );
                    }
                }
            }
        }
        let errand = Errand::Deliver { rcpts, prepared };
        let walked = self
            .walk(
                domain,
                (policy, sts.as_ref()),
                errand,
                |attempt, host, addr| self.decided(attempt, &to, host, addr, rcpts, started),
            )
            .await;
        let gave_up = match walked {
            Ok(statuses) => return statuses,
            Err(gave_up) => gave_up,
        };
        let level = level_of(gave_up.tls.as_ref(), gave_up.verdict.as_ref());
        rcpts
            .iter()
            .map(|r| {
                let mut s = self.failed(r, gave_up.reply.clone(), started);
                s.relay = gave_up.relay.clone();
                s.tls = gave_up.tls.clone();
                s.verdict = gave_up.verdict.clone();
                s.level = level;
                s
            })
            .collect()
    }

    /// A session kept from an earlier transaction to `to` (the domain
    /// under its configured policy) that may carry the next one now, and
    /// the policy it then runs under; every mode takes kept sessions here.
    /// It must have reached the level the delivery requires now
    /// (`effective`: the configured policy, raised by MTA-STS in enforce
    /// mode) and what its host requires now (DANE's decision when it was
    /// opened, raised by the MTA-STS policy `sts` in force now unless DANE
    /// governs the host: `kept_host_policy`): one opened when less was
    /// required, or before a policy appeared, never serves a stricter
    /// transaction; it is closed with QUIT and the next one is looked at.
    pub(super) async fn take_kept(
        &self,
        to: &Destination,
        sts: Option<&ActivePolicy>,
        effective: TlsPolicy,
    ) -> Option<(super::cache::IdleSession, TlsPolicy)> {
        while let Some(idle) = self.idle.take(to, effective) {
            let sts_here = self.sts_for_host(sts, &idle.conn.host_tls);
            let level = idle.conn.level();
            if let Some(host_policy) =
                kept_host_policy(&idle.conn.host_tls, &idle.conn.host, level, sts_here)
            {
                return Some((idle, host_policy));
            }
            log!(
                "host {}[{}]:{} kept session not reused (opened under policy {}, level {level}; the host requires more now)",
                idle.conn.host,
                idle.conn.addr.ip(),
                idle.conn.addr.port(),
                idle.conn.host_tls.policy.as_str()
            );
            super::cache::quit(idle.conn).await;
        }
        None
    }

    /// Opens a session with the first MX host of `domain` that works, up to
    /// the point where mail commands can be sent (greeting, EHLO, STARTTLS
    /// as policy says), under the domain's configured policy and `sts`, the
    /// MTA-STS policy in force for it ([`Self::sts_policy`]). `Err` is the
    /// reply that stands for the failure.
    pub(crate) async fn open_route(
        &self,
        domain: &str,
        sts: Option<&ActivePolicy>,
    ) -> Result<OpenRoute, Reply> {
        let configured = self.policy.for_domain(domain);
        self.walk(
            domain,
            (configured, sts),
            Errand::Open,
            |mut attempt, _, _| match attempt.keep.take() {
                Some((conn, caps, _)) => Ok(OpenRoute { conn, caps }),
                None => Err(Box::new(attempt)),
            },
        )
        .await
        .map_err(|gave_up| gave_up.reply)
    }

    /// The one walk over `domain`'s MX addresses (RFC 5321 §5.1), each
    /// with what its host must get (DANE, MTA-STS), within `max_sessions`
    /// sessions that reached a greeting: a session per address for
    /// `errand`, each recorded for TLS reports, until `finish` takes one
    /// (`Err` gives it back: on to the next address).
    async fn walk<T>(
        &self,
        domain: &str,
        (configured, sts): (TlsPolicy, Option<&ActivePolicy>),
        errand: Errand<'_>,
        mut finish: impl FnMut(Attempt, &str, SocketAddr) -> Result<T, Box<Attempt>>,
    ) -> Result<T, GaveUp> {
        let candidates = self
            .candidates(domain, sts)
            .await
            .map_err(GaveUp::before_any_host)?;
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
                .host_tls(&mut hosts, domain, host, configured, &candidates)
                .await
            {
                Ok(h) => h,
                Err(reply) => {
                    last = Some((reply, relay.clone()));
                    continue;
                }
            };
            let sts_here = self.sts_for_host(sts, &host_tls);
            // What the host gets without MTA-STS, to tell whether it raised it.
            let policy = host_tls.policy;
            let host_policy = sts_host_policy(policy, sts_here);
            let tried_tls = self.tries_tls(host, host_policy);
            let attempt = self
                .attempt(
                    domain,
                    (addr, host),
                    (&host_tls, host_policy),
                    candidates.mx_dnssec,
                    errand,
                )
                .await;
            if let Some(active) = sts_here {
                let seen = match &attempt.ended {
                    _ if attempt.tls.is_some() => TlsSeen::Established(attempt.verdict.as_ref()),
                    _ if attempt.tls_failed => TlsSeen::HandshakeFailed,
                    Ended::Failed(HostFailure::TlsUnavailable { .. }) => TlsSeen::NoStartTls,
                    Ended::Failed(_) => TlsSeen::NotReached,
                    Ended::Decided(_) | Ended::Ready => TlsSeen::NoStartTls,
                };
                let level = level_of(attempt.tls.as_ref(), attempt.verdict.as_ref());
                self.note_sts_session(domain, active, host, (attempt.local, *ip), level, seen);
            } else if host_tls.dane.is_none() {
                // A host DANE judged is recorded once, under `tlsa`, when
                // its session concludes (`record_dane_session`), not also
                // as `no-policy-found` (RFC 8460 §4.4: a session's policy).
                self.report_tls(
                    domain,
                    host,
                    (attempt.local, *ip),
                    session_facts(
                        host_policy,
                        tried_tls,
                        (attempt.tls.as_ref(), attempt.verdict.as_ref()),
                        attempt.failure(),
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
            let attempt = match finish(attempt, host, addr) {
                Ok(done) => return Ok(done),
                Err(attempt) => *attempt,
            };
            if let Some(failure) = attempt.failure() {
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
        let (reply, relay) = last.unwrap_or_else(|| (replies::no_usable_mx(domain), None));
        let (tls, verdict) = last_security;
        Err(GaveUp {
            reply,
            relay,
            tls,
            verdict,
        })
    }

    /// The recipients' statuses when the attempt decided them (replies, or
    /// a connection lost in the transaction), keeping its session for the
    /// next delivery to `to` when it is still open; `Err` gives the attempt
    /// back when it decided nothing (the next host, or a new session).
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
        let statuses = match &attempt.ended {
            Ended::Decided(SessionOutcome::Replied(results)) => results
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
            Ended::Decided(SessionOutcome::Uncertain { accepted }) => {
                let ip = addr.ip();
                rcpts
                    .iter()
                    .map(|r| {
                        let reply = if accepted.contains(r) {
                            replies::lost_after_end_of_data(host, ip)
                        } else {
                            replies::lost_during_transaction(host, ip)
                        };
                        let mut s = self.failed(r, reply, started);
                        s.relay = relay.clone();
                        s.tls = attempt.tls.clone();
                        s.level = level;
                        s
                    })
                    .collect()
            }
            Ended::Decided(SessionOutcome::Failed(_)) | Ended::Failed(_) | Ended::Ready => {
                return Err(Box::new(attempt));
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
            envelope(rcpts, prepared),
            prepared.facts,
            Arc::clone(&prepared.wire),
        );
        let end = self.drive(&mut conn, &mut session, policy).await;
        let errand = Errand::Deliver { rcpts, prepared };
        self.conclude(conn, session, end, (idle.uses, None), errand)
    }

    /// What a driven session came to; a session still open and ready is
    /// handed back to be kept. `fresh`: the session was opened for this
    /// attempt, for this recipient domain (DANE's outcome is recorded once
    /// per handshake, and its XPONY pin is committed now, §8.4; a kept
    /// session's were when it was opened).
    fn conclude(
        &self,
        mut conn: Connection,
        mut session: ClientSession,
        end: Result<(), HostFailure>,
        (uses, fresh): (u32, Option<&str>),
        errand: Errand<'_>,
    ) -> Attempt {
        let ended = match (end, session.take_outcome()) {
            (Err(failure), _) | (Ok(()), Some(SessionOutcome::Failed(failure))) => {
                Ended::Failed(failure)
            }
            (Ok(()), Some(outcome)) => Ended::Decided(outcome),
            (Ok(()), None) if session.is_ready() && matches!(errand, Errand::Open) => Ended::Ready,
            // The driver stops at an end it did not see otherwise.
            (Ok(()), None) => Ended::Failed(HostFailure::Lost {
                stage: match errand {
                    Errand::Deliver { .. } => "connect",
                    Errand::Open => "greeting",
                },
            }),
        };
        let usable = matches!(
            ended,
            Ended::Decided(SessionOutcome::Replied(_)) | Ended::Ready
        );
        if let Some(domain) = fresh {
            let failure = match &ended {
                Ended::Failed(f) => Some(f),
                _ => None,
            };
            self.record_dane_session(domain, &conn, failure);
            if usable {
                // The EHLO reply came over the channel: the server's first
                // valid frame, where pins are committed (§8.4).
                self.update_pin(&mut conn);
            }
        }
        let mut attempt = Attempt {
            ended,
            tls: conn.tls.clone(),
            verdict: conn.verdict.clone(),
            greeted: conn.greeted,
            tls_failed: conn.tls_failed,
            local: conn.local,
            keep: None,
        };
        if usable && session.is_ready() {
            let caps = session
                .capabilities()
                .cloned()
                .unwrap_or_else(|| crate::smtp::EhloReply {
                    greeting: String::new(),
                    capabilities: Vec::new(),
                });
            attempt.keep = Some((conn, caps, uses));
        }
        attempt
    }

    /// One SMTP session with one address for `errand`: the whole
    /// transaction, kept open after it (see `cache`), or the session up to
    /// its first mail command. `host_tls`: what the host gets before
    /// MTA-STS (kept with the session); `policy`: what it gets now.
    async fn attempt(
        &self,
        domain: &str,
        (addr, host): (SocketAddr, &str),
        (host_tls, policy): (&HostTls, TlsPolicy),
        mx: Dnssec,
        errand: Errand<'_>,
    ) -> Attempt {
        let starttls = self.starttls_for(host, policy);
        let session = match errand {
            // The message is shared, not copied, by every attempt.
            Errand::Deliver { rcpts, prepared } => ClientSession::new(
                &self.helo_name,
                starttls,
                envelope(rcpts, prepared),
                prepared.facts,
                Arc::clone(&prepared.wire),
            )
            .keep_open(),
            Errand::Open => ClientSession::opening(&self.helo_name, starttls),
        };
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
        self.conclude(conn, session, end, (0, Some(domain)), errand)
    }
}

/// The envelope of one transaction: the message's sender, these recipients.
fn envelope(rcpts: &[String], prepared: &Prepared) -> Envelope {
    Envelope {
        sender: prepared.envelope_sender.clone(),
        recipients: rcpts.to_vec(),
    }
}

/// A session opened by [`Deliverer::open_route`], ready for mail commands.
pub(crate) struct OpenRoute {
    pub(crate) conn: Connection,
    pub(crate) caps: crate::smtp::EhloReply,
}
