//! Delivering one message now: resolve each recipient domain, walk its MX
//! hosts, run the sans-IO [`ClientSession`] over TCP (upgraded to TLS when
//! the policy says so), and return the remote's own reply per recipient.
//!
//! Nothing here keeps a queue: the MTA that handed us the message retries
//! whatever we report as temporary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::cache::Destination;
use super::connection::{Connection, Dialer};
use super::dane::HostTls;
use super::dns::{Dnssec, MailResolver};
use super::memory::TlsMemory;
use super::policy::{PolicyTable, SecurityLevel, TlsPolicy};
use super::report::RecipientStatus;
pub use super::xpony::PonyClient;
use super::xpony::PonyContext;
use crate::log;
use crate::smtp::client::{ClientSession, ContentRefusal, HostFailure};
use crate::smtp::envelope::{ContentFacts, Envelope, address_is_sane, domain_of};
use crate::smtp::{DotStuffer, Reply, replies};
use crate::transport::ClientTls;

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

/// The message prepared once for every attempt.
pub(super) struct Prepared {
    pub(super) envelope_sender: String,
    pub(super) wire: Arc<Vec<u8>>,
    pub(super) facts: ContentFacts,
}

impl Prepared {
    /// The message (DATA form) as every mode sends it: lines over 998
    /// octets folded (RFC 5321 §4.5.3.1.6), and what the session needs to
    /// know of it. `Err`: what no server may get (NUL octets, see
    /// [`refuse_message`](crate::smtp::client::refuse_message)).
    pub(super) fn new(envelope_sender: &str, wire: Vec<u8>) -> Result<Prepared, ContentRefusal> {
        let wire = crate::smtp::data::fold_long_lines(&wire).unwrap_or(wire);
        // The size the server sees, without the terminating ".\r\n" (RFC 1870).
        let facts = ContentFacts {
            size: wire.len().saturating_sub(3) as u64,
            ..ContentFacts::of(&wire)
        };
        if let Some(refusal) = crate::smtp::client::refuse_message(&facts) {
            return Err(refusal);
        }
        Ok(Prepared {
            envelope_sender: envelope_sender.to_string(),
            wire: Arc::new(wire),
            facts,
        })
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
        // A message no server may get is refused before any connection.
        let prepared = match Prepared::new(&envelope.sender, wire) {
            Ok(prepared) => prepared,
            Err(refusal) => {
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
                None => results.push(self.failed(rcpt, replies::bad_recipient_syntax(), started)),
            }
        }
        if !address_is_sane(&envelope.sender) {
            return envelope
                .recipients
                .iter()
                .map(|r| self.failed(r, replies::bad_sender_syntax(), started))
                .collect();
        }
        // Domains are delivered side by side (a few at a time), so one slow
        // or unreachable domain does not hold up the others' deadline.
        let budget = self.limits.deadline.saturating_sub(started.elapsed());
        let prepared = &prepared;
        let by_domain_count = by_domain.len();
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
                    .map(|r| self.failed(r, replies::delivery_time_limit(), started))
                    .collect(),
            }
        });
        if by_domain_count == 1 {
            // One domain (the usual message): no stream to run it in.
            for delivery in per_domain {
                results.extend(delivery.await);
            }
        } else {
            let mut domains = futures_util::stream::iter(per_domain)
                .buffer_unordered(self.limits.parallel_domains.max(1));
            while let Some(statuses) = domains.next().await {
                results.extend(statuses);
            }
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

    pub(super) fn failed(&self, rcpt: &str, reply: Reply, started: Instant) -> RecipientStatus {
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

    /// Opens and drives connections with this deliverer's TLS
    /// configuration and time limits.
    pub(crate) fn dialer(&self) -> Dialer<'_> {
        Dialer {
            tls: &self.tls,
            connect_timeout: self.limits.connect_timeout,
            reply_timeout: self.limits.reply_timeout,
        }
    }

    /// A TCP connection to one MX address, for a session under `host_tls`.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        host: &str,
        host_tls: HostTls,
    ) -> Result<Connection, Reply> {
        self.dialer().connect(addr, host, host_tls).await
    }

    /// Runs `session` on `conn` (see [`Dialer::drive`]).
    pub(crate) async fn drive(
        &self,
        conn: &mut Connection,
        session: &mut ClientSession,
        policy: TlsPolicy,
    ) -> Result<(), HostFailure> {
        self.dialer().drive(conn, session, policy).await
    }

    /// What is known about `host`'s XPONY key before connecting (see
    /// [`PonyClient::context`]); `None` without the extension.
    pub(super) async fn pony_context(
        &self,
        host: &str,
        mx: Dnssec,
        policy: TlsPolicy,
    ) -> Result<Option<PonyContext>, HostFailure> {
        match &self.pony {
            Some(pony) => pony.context(&self.resolver, host, mx, policy).await,
            None => Ok(None),
        }
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

    /// Remembers or refreshes the key of a session's server (see
    /// [`PonyClient::update_pin`]).
    pub(super) fn update_pin(&self, conn: &mut Connection) {
        if let (Some(pony), Some(context)) = (&self.pony, &conn.pony) {
            pony.update_pin(context, &conn.host, conn.addr.ip(), &mut conn.verdict);
        }
    }
}

/// The state directory: `$STATE_DIRECTORY` (systemd), else /var/lib/blackpony.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/blackpony"))
}
