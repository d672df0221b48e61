//! The SMTP proxy's side of an MX session (`outbound --protocol smtp`):
//! one transaction of the MTA's, relayed command by command on a
//! [`ClientSession`] kept in the idle-session cache (`cache.rs`), driven by
//! the same loop as every delivery (`connection.rs`, `ClientDriver`). The
//! session applies the rules of every mode (MAIL parameters, SIZE and
//! SMTPUTF8 checks, PIPELINING, the 8BITMIME downgrade; `smtp/client/relay.rs`);
//! the message is prepared as in every mode (lines over 998 octets folded,
//! NUL refused: [`Prepared::new`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::connection::Connection;
use super::deliver::{Deliverer, Prepared};
use super::mx_hosts::sts_host_policy;
use super::mx_walk::OpenRoute;
use super::policy::TlsPolicy;
use super::report::{RecipientStatus, host_failure_reply};
use crate::log;
use crate::smtp::client::{ClientSession, HostFailure, SessionOutcome};
use crate::smtp::envelope::domain_of;
use crate::smtp::{Reply, replies};

/// One transaction of the SMTP proxy on an open MX session.
pub(super) struct MxTransaction {
    domain: String,
    conn: Connection,
    session: ClientSession,
    policy: TlsPolicy,
    started: Instant,
    /// Recipients the remote accepted, for the log.
    accepted: Vec<String>,
    /// Transactions this session carried before this one.
    uses: u32,
}

/// The remote's reply to one RCPT of the SMTP proxy, opening the remote
/// session (and sending MAIL) for the transaction's first recipient.
/// `then_data`: the MTA's DATA follows this RCPT (it pipelines), so DATA
/// goes to the remote with the RCPT when it offers PIPELINING (RFC 2920
/// §3.1), saving a round trip; its reply waits for the MTA's DATA.
pub(super) async fn recipient_reply(
    deliverer: &Deliverer,
    remote: &mut Option<MxTransaction>,
    sender: &str,
    recipient: &str,
    size: Option<u64>,
    then_data: bool,
) -> Reply {
    let Some(domain) = domain_of(recipient) else {
        return replies::bad_recipient_syntax();
    };
    if let Some(r) = remote.as_mut() {
        if r.domain == domain {
            return r.recipient(deliverer, recipient, then_data).await;
        }
        if !r.accepted.is_empty() {
            return replies::one_domain_per_transaction();
        }
        // Nobody was accepted at that domain: the transaction is not bound
        // to it yet, so move on to this recipient's domain.
        if let Some(old) = remote.take() {
            old.quit().await;
        }
    }
    // A session kept from an earlier transaction first, if it may carry
    // this one under the policies in force now (the same check as every
    // mode's, `Deliverer::take_kept`): its RSET goes out with MAIL and RCPT
    // (PIPELINING). One the server closed meanwhile fails at the RSET, with
    // nothing of this transaction counted, and the next kept one or a new
    // session takes over.
    let to = deliverer.destination(&domain);
    let policy = deliverer.policy.for_domain(&domain);
    let sts = deliverer.sts_policy(&domain, policy).await;
    let effective = sts_host_policy(policy, sts.as_ref());
    while let Some((idle, host_policy)) = deliverer.take_kept(&to, sts.as_ref(), effective).await {
        let r = MxTransaction {
            domain: domain.clone(),
            conn: idle.conn,
            session: ClientSession::resume(&deliverer.helo_name, idle.caps),
            policy: host_policy,
            started: Instant::now(),
            accepted: Vec::new(),
            uses: idle.uses,
        };
        match r
            .begin(deliverer, remote, sender, recipient, size, true, then_data)
            .await
        {
            Some(reply) => return reply,
            None => continue,
        }
    }
    let OpenRoute { conn, caps } = match deliverer.open_route(&domain, sts.as_ref()).await {
        Ok(open) => open,
        Err(reply) => {
            log!(
                "{}",
                deliverer
                    .failed(recipient, reply.clone(), Instant::now())
                    .log_line()
            );
            return reply;
        }
    };
    let r = MxTransaction {
        domain,
        conn,
        session: ClientSession::resume(&deliverer.helo_name, caps),
        policy,
        started: Instant::now(),
        accepted: Vec::new(),
        uses: 0,
    };
    r.begin(deliverer, remote, sender, recipient, size, false, then_data)
        .await
        .unwrap_or_else(replies::lost_remote_session)
}

impl MxTransaction {
    /// MAIL and the first RCPT (after RSET on a kept session). The reply
    /// for the MTA, the transaction kept in `remote` when MAIL was
    /// accepted; `None`: a kept session that no longer serves (closed).
    #[allow(clippy::too_many_arguments)]
    async fn begin(
        mut self,
        deliverer: &Deliverer,
        remote: &mut Option<MxTransaction>,
        sender: &str,
        recipient: &str,
        size: Option<u64>,
        reset: bool,
        then_data: bool,
    ) -> Option<Reply> {
        match self
            .session
            .relay_begin(sender, size, recipient, reset, then_data)
        {
            Err(refusal) => {
                let reply = refusal.reply();
                log!("{}", self.status(recipient, &reply).log_line());
                // Nothing was sent: the session serves the next one.
                self.release(deliverer, None).await;
                return Some(reply);
            }
            Ok(false) => {
                self.quit().await;
                return (!reset).then(replies::lost_remote_session);
            }
            Ok(true) => {}
        }
        let reply = self.exchange(deliverer).await;
        if reset
            && matches!(
                self.session.outcome(),
                Some(SessionOutcome::Failed(HostFailure::Lost { stage: "RSET" }))
            )
        {
            log!(
                "host {}[{}]:{} kept session unusable (connection lost at RSET); opening a new one",
                self.conn.host,
                self.conn.addr.ip(),
                self.conn.addr.port()
            );
            self.quit().await;
            return None;
        }
        if !self.session.relay_mail_accepted() {
            // The remote refused the sender (or the session broke): that is
            // this recipient's answer.
            log!("{}", self.status(recipient, &reply).log_line());
            self.quit().await;
            return Some(reply);
        }
        self.note_recipient(recipient, &reply);
        *remote = Some(self);
        Some(reply)
    }

    /// Sends RCPT and returns the remote's reply.
    pub(super) async fn recipient(
        &mut self,
        deliverer: &Deliverer,
        recipient: &str,
        then_data: bool,
    ) -> Reply {
        if !self.session.relay_recipient(recipient, then_data) {
            return self.gone();
        }
        let reply = self.exchange(deliverer).await;
        self.note_recipient(recipient, &reply);
        reply
    }

    /// A refusal is logged at once (the MTA will log it deferred or
    /// bounced too); an accepted recipient when the transaction ends.
    fn note_recipient(&mut self, recipient: &str, reply: &Reply) {
        if reply.is_success() {
            self.accepted.push(recipient.to_string());
        } else {
            log!("{}", self.status(recipient, reply).log_line());
        }
    }

    /// Sends DATA and returns the remote's reply (354: it waits for the
    /// message).
    pub(super) async fn data(&mut self, deliverer: &Deliverer) -> Reply {
        // DATA went out with the last RCPT: its reply is in already.
        let reply = match self.session.take_relay_data_reply() {
            Some(reply) => reply,
            None if !self.session.relay_data() => self.gone(),
            None => self.exchange(deliverer).await,
        };
        // A DATA refused (or a session lost or out of step there) ends
        // the transaction: each accepted recipient's line says so, as the
        // end of data's would.
        if reply.code() != 354 {
            self.log_results(&reply);
        }
        reply
    }

    /// Sends the message after the remote's 354, logs the outcome of each
    /// accepted recipient, keeps the session for the next transaction and
    /// returns the remote's final reply.
    pub(super) async fn message(mut self, deliverer: &Deliverer, prepared: &Prepared) -> Reply {
        let reply = if self
            .session
            .relay_message(Arc::clone(&prepared.wire), prepared.facts)
        {
            self.exchange(deliverer).await
        } else {
            self.gone()
        };
        self.log_results(&reply);
        self.release(deliverer, Some(&reply)).await;
        reply
    }

    /// A message no server may get (see [`Prepared::new`]): the remote,
    /// which said 354 and waits for it, must not see an end of data; the
    /// connection is dropped (a server discards a transaction cut before
    /// its end, RFC 5321 §4.1.1.4).
    pub(super) fn refuse(self, reply: &Reply) {
        self.log_results(reply);
    }

    /// Drives the session until the remote answered the command; a session
    /// that ended instead gives the reply that stands for it (a lost
    /// connection is a 451: the MTA retries).
    async fn exchange(&mut self, deliverer: &Deliverer) -> Reply {
        let end = deliverer
            .drive(&mut self.conn, &mut self.session, self.policy)
            .await;
        if self.session.is_ready()
            && let Some(reply) = self.session.take_relay_reply()
        {
            return reply;
        }
        // The session is over (its connection was ended by the driver).
        self.conn.stream = None;
        let (host, ip) = (self.conn.host.clone(), self.conn.addr.ip());
        match end
            .err()
            .map(SessionOutcome::Failed)
            .or_else(|| self.session.outcome().cloned())
        {
            Some(SessionOutcome::Failed(failure)) => {
                host_failure_reply(&failure, &host, ip, self.policy)
            }
            Some(SessionOutcome::Uncertain { .. }) => {
                replies::lost_waiting_for(&host, ip, "end of data")
            }
            _ => self.gone(),
        }
    }

    /// The reply when the session cannot take the command.
    fn gone(&self) -> Reply {
        replies::lost_connection(&self.conn.host, self.conn.addr.ip())
    }

    /// Keeps the session for the next transaction to the same domain, or
    /// closes it: a 421 means the server is closing, a lost connection has
    /// no stream left. `reply`: the transaction's final reply (`None`: it
    /// never started).
    async fn release(self, deliverer: &Deliverer, reply: Option<&Reply>) {
        let carried = u32::from(reply.is_some());
        let caps = self.session.capabilities().cloned();
        match caps {
            Some(caps)
                if self.session.is_ready()
                    && !self.session.relay_waits_for_message()
                    && self.conn.stream.is_some()
                    && reply.is_none_or(|r| r.code() != 421) =>
            {
                deliverer.idle.put(
                    deliverer.destination(&self.domain),
                    self.conn,
                    caps,
                    self.uses + carried,
                );
            }
            _ => self.quit().await,
        }
    }

    fn status(&self, recipient: &str, reply: &Reply) -> RecipientStatus {
        RecipientStatus {
            recipient: recipient.to_string(),
            reply: reply.clone(),
            relay: Some(self.relay()),
            tls: self.conn.tls.clone(),
            verdict: self.conn.verdict.clone(),
            level: self.conn.level(),
            delay: self.started.elapsed(),
        }
    }

    fn relay(&self) -> (String, SocketAddr) {
        (self.conn.host.clone(), self.conn.addr)
    }

    /// One log line per recipient the remote accepted, with its final reply.
    fn log_results(&self, reply: &Reply) {
        for rcpt in &self.accepted {
            log!("{}", self.status(rcpt, reply).log_line());
        }
    }

    /// Ends the remote session politely (bounded; errors do not matter);
    /// one that said 354 to DATA sent ahead and waits for a message that
    /// will not come (the MTA's DATA was answered here: no recipient) is
    /// cut instead, as QUIT would be message text there (RFC 5321
    /// §4.1.1.4: a server discards a transaction cut before its end).
    pub(super) async fn quit(self) {
        if self.session.relay_waits_for_message() {
            drop(self.conn);
            return;
        }
        super::cache::quit(self.conn).await;
    }
}
