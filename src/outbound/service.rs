//! The MTA-facing service of the outbound transport: the I/O loop around a
//! [`ReceiveSession`]. One loop serves standard input/output (`blackpony
//! lmtp`) and each connection of `blackpony outbound`.
//!
//! - LMTP: the whole message is received, delivered, and answered with one
//!   reply per recipient.
//! - SMTP: a per-transaction proxy. The first RCPT opens a session with the
//!   recipient domain's MX and sends MAIL there; every RCPT, DATA and the
//!   end of data are answered with the remote's own reply, so the MTA never
//!   hears 250 before the remote said it. Recipients of a second domain get
//!   `452 4.5.3` and come back in the MTA's next transaction.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::connection::Connection;
use super::mx_walk::OpenRoute;
use super::{Deliverer, RecipientStatus};
use crate::log;
use crate::smtp::envelope::domain_of;
use crate::smtp::server::{Protocol, ReceiveEvent, ReceiveSession};
use crate::smtp::{EhloReply, Reply, ReplyParser};

/// How long the MTA may stay silent (RFC 5321 §4.5.3.2.7).
const IDLE: Duration = Duration::from_secs(300);

/// Where the MTA connects.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// The bounds of the MTA-facing server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// MTA connections served at once; more are answered `421 4.3.2` and
    /// closed (the MTA tries again later). With `max_message_size` this
    /// bounds the message bytes held in flight: at most
    /// `max_connections × max_message_size` received.
    pub max_connections: usize,
    pub max_message_size: u64,
}

/// What an MTA connection over the limit is told (RFC 5321 §3.8: a 421
/// greeting; an LMTP or SMTP client defers and retries).
const TOO_MANY: &[u8] = b"421 4.3.2 Too many connections, try again later\r\n";

/// Serves MTA connections on `listener` until `shutdown` completes; each
/// connection runs [`serve`] in its own task, at most
/// `limits.max_connections` at once. At shutdown nothing new is accepted
/// and every session drains: a transaction whose message went to a remote
/// finishes and gets its reply; one the MTA is still sending, or a session
/// between transactions, is answered `421 4.3.2` (the remote never saw an
/// end of data, so the MTA's retry is no duplicate). This returns when the
/// last session has ended.
///
/// (The accept loop, limit and drain are this role's own until a shared
/// listener harness exists; `serve` only needs the shutdown signal.)
pub async fn run(
    listener: Listener,
    protocol: Protocol,
    deliverer: Arc<Deliverer>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        let accepted: std::io::Result<Halves> = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener) => accepted,
        };
        let (r, mut w) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off.
                log!("accept-error=\"{e}\"");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Reap finished sessions, so the count is of live ones.
        while sessions.try_join_next().is_some() {}
        if sessions.len() >= limits.max_connections {
            log!(
                "refused=too-many-connections max-connections={}",
                limits.max_connections
            );
            // A new socket's send buffer takes the line at once; a bounded
            // write keeps the accept loop from ever waiting on a client.
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                let _ = w.write_all(TOO_MANY).await;
                let _ = w.shutdown().await;
            })
            .await;
            continue;
        }
        let d = Arc::clone(&deliverer);
        let stopping = stopping.clone();
        sessions.spawn(async move {
            serve(protocol, r, w, &d, limits.max_message_size, stopping).await
        });
    }
    let _ = stop.send(true);
    log!(
        "shutdown: no longer accepting; draining sessions={}",
        sessions.len()
    );
    while sessions.join_next().await.is_some() {}
    // The MX sessions kept for reuse end with QUIT, not a dropped socket.
    deliverer.idle.close_all().await;
    log!("shutdown: drained");
}

/// A shutdown signal that never comes (`blackpony lmtp` on stdin/stdout:
/// the MTA ends the session).
pub fn never_stopping() -> tokio::sync::watch::Receiver<bool> {
    let (stop, stopping) = tokio::sync::watch::channel(false);
    // Kept alive so `changed()` never completes with an error.
    std::mem::forget(stop);
    stopping
}

type Halves = (
    Box<dyn AsyncRead + Send + Unpin>,
    Box<dyn AsyncWrite + Send + Unpin>,
);

async fn accept(listener: &Listener) -> std::io::Result<Halves> {
    match listener {
        Listener::Tcp(l) => {
            let (stream, _) = l.accept().await?;
            let _ = stream.set_nodelay(true);
            let (r, w) = stream.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
        Listener::Unix(l) => {
            let (stream, _) = l.accept().await?;
            let (r, w) = stream.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
    }
}

/// Serves one MTA connection until it quits or goes away.
pub async fn serve<R, W>(
    protocol: Protocol,
    mut reader: R,
    mut writer: W,
    deliverer: &Deliverer,
    max_message_size: u64,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut session = ReceiveSession::new(protocol, &deliverer.helo_name, max_message_size);
    let mut remote: Option<Remote> = None;
    // The remote answered 354 and waits for the message: it must never get
    // anything from us but the message and its end (not even QUIT, which
    // it would take as message text).
    let mut remote_in_data = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                ReceiveEvent::Deliver { envelope, wire } => {
                    let results = deliverer.deliver_wire(&envelope, wire).await;
                    let replies: Vec<_> = results.into_iter().map(|r| r.reply).collect();
                    session.delivered(&replies);
                }
                ReceiveEvent::Recipient { sender, recipient } => {
                    let size = session.declared_size();
                    let reply =
                        recipient_reply(deliverer, &mut remote, &sender, &recipient, size).await;
                    session.answer(&reply);
                }
                ReceiveEvent::Data => {
                    let reply = match remote.as_mut() {
                        Some(r) => r.command(deliverer, "DATA").await,
                        None => Reply::new(503, "5.5.1 Error: no valid recipients"),
                    };
                    remote_in_data = reply.code() == 354;
                    session.answer(&reply);
                }
                ReceiveEvent::EndOfData { wire, .. } => {
                    remote_in_data = false;
                    let refusal = crate::smtp::client::refuse_message(
                        &crate::smtp::envelope::ContentFacts::of(&wire),
                    );
                    let reply = match (remote.take(), refusal) {
                        // The remote said 354 and waits for the message: a
                        // lone end of data would deliver an empty one, so
                        // the connection is dropped instead (a server
                        // discards a transaction cut before its end, RFC
                        // 5321 §4.1.1.4).
                        (Some(r), Some(refusal)) => {
                            let reply = refusal.reply();
                            r.log_results(&reply);
                            drop(r);
                            reply
                        }
                        (Some(mut r), None) => {
                            // As in every mode: lines over 998 octets are
                            // broken (RFC 5321 §4.5.3.1.6).
                            let wire = crate::smtp::data::fold_long_lines(&wire).unwrap_or(wire);
                            let reply = r.send_message(deliverer, &wire).await;
                            r.log_results(&reply);
                            r.release(deliverer, &reply).await;
                            reply
                        }
                        (None, _) => Reply::new(451, "4.3.0 Error: lost the remote session"),
                    };
                    session.answer(&reply);
                }
                // Not offered to an MTA (ReceiveOptions::default(), no
                // host key).
                ReceiveEvent::StartTls | ReceiveEvent::StartPony => session.eof(),
                ReceiveEvent::XponyFailed { .. } => {}
                ReceiveEvent::Reset | ReceiveEvent::Close => {
                    if let Some(r) = remote.take() {
                        if std::mem::take(&mut remote_in_data) {
                            // Cut the connection: the remote discards a
                            // message without its end (RFC 5321 §4.1.1.4).
                            drop(r);
                        } else {
                            r.quit().await;
                        }
                    }
                }
            }
        }
        if !session.output.is_empty() {
            // A deadline on the write too: an MTA that stops reading does
            // not hold the session (and a drain) forever.
            let written = tokio::time::timeout(IDLE, async {
                writer.write_all(&session.output).await?;
                writer.flush().await
            })
            .await;
            if !matches!(written, Ok(Ok(()))) {
                break;
            }
            session.output.clear();
        }
        if session.is_closed() {
            let _ = writer.shutdown().await;
            break;
        }
        // Shutdown is only heard here, between the MTA's input: a message
        // that reached a remote is finished above and its reply written
        // first. Whatever the MTA has not finished sending is answered 421
        // and never reaches a remote's end of data.
        let read = tokio::select! {
            read = tokio::time::timeout(IDLE, reader.read(&mut buf)) => Some(read),
            _ = stopping.wait_for(|stop| *stop) => None,
        };
        match read {
            Some(Ok(Ok(n))) if n > 0 => session.input(&buf[..n]),
            Some(_) => {
                session.eof();
                break;
            }
            None => {
                session.shutting_down();
                continue;
            }
        }
    }
    if let Some(r) = remote.take() {
        if remote_in_data {
            drop(r);
        } else {
            r.quit().await;
        }
    }
}

/// The remote's reply to one RCPT of the SMTP proxy, opening the remote
/// session (and sending MAIL) for the transaction's first recipient.
async fn recipient_reply(
    deliverer: &Deliverer,
    remote: &mut Option<Remote>,
    sender: &str,
    recipient: &str,
    size: Option<u64>,
) -> Reply {
    let Some(domain) = domain_of(recipient) else {
        return Reply::new(501, "5.1.3 Bad recipient address syntax");
    };
    if let Some(r) = remote.as_mut() {
        if r.domain == domain {
            return r.recipient(deliverer, recipient).await;
        }
        if !r.accepted.is_empty() {
            return Reply::new(
                452,
                "4.5.3 One destination domain per transaction: send the other recipients in a new transaction",
            );
        }
        // Nobody was accepted at that domain: the transaction is not bound
        // to it yet, so move on to this recipient's domain.
        if let Some(old) = remote.take() {
            old.quit().await;
        }
    }
    let mut r = match reuse(deliverer, &domain).await {
        Some(r) => r,
        None => {
            let OpenRoute { conn, caps } = match deliverer.open_route(&domain).await {
                Ok(open) => open,
                Err(reply) => {
                    log_status(deliverer, recipient, &reply, None, Instant::now());
                    return reply;
                }
            };
            Remote {
                domain,
                conn,
                caps,
                started: Instant::now(),
                accepted: Vec::new(),
                uses: 0,
            }
        }
    };
    use crate::smtp::client::{ContentRefusal, mail_command};
    let utf8 = !sender.is_ascii() || !recipient.is_ascii();
    // The content is not known yet: the MTA's declared SIZE= stands for it
    // (RFC 1870 §4), and 8-bit content is assumed (converted at the end of
    // data for a server without 8BITMIME).
    let refusal = match r.caps.size_limit() {
        Some(limit) if size.is_some_and(|n| n > limit) => Some(ContentRefusal::TooBig { limit }),
        _ if utf8 && !r.caps.has("SMTPUTF8") => Some(ContentRefusal::NeedsSmtpUtf8),
        _ => None,
    };
    if let Some(refusal) = refusal {
        let reply = refusal.reply();
        log!("{}", r.status(recipient, &reply).log_line());
        release_unused(deliverer, r).await;
        return reply;
    }
    let mail = mail_command(sender, size, true, utf8, &r.caps);
    let mail_reply = r.command(deliverer, &mail).await;
    if !mail_reply.is_success() {
        // The remote refused the sender: that is this recipient's answer.
        log!("{}", r.status(recipient, &mail_reply).log_line());
        r.quit().await;
        return mail_reply;
    }
    let reply = r.recipient(deliverer, recipient).await;
    *remote = Some(r);
    reply
}

/// A session that carried no transaction (refused before MAIL): kept for
/// the next transaction like any other.
async fn release_unused(deliverer: &Deliverer, r: Remote) {
    if r.conn.stream.is_none() {
        return r.quit().await;
    }
    deliverer
        .idle
        .put(deliverer.destination(&r.domain), r.conn, r.caps, r.uses);
}

/// An idle session to `domain` from an earlier transaction, if one is
/// still open and answers RSET (RFC 5321 §4.1.1.5): a server may have
/// closed it meanwhile.
async fn reuse(deliverer: &Deliverer, domain: &str) -> Option<Remote> {
    let to = deliverer.destination(domain);
    let policy = deliverer.policy.for_domain(domain);
    while let Some(idle) = deliverer.idle.take(&to, policy) {
        let mut r = Remote {
            domain: domain.to_string(),
            conn: idle.conn,
            caps: idle.caps,
            started: Instant::now(),
            accepted: Vec::new(),
            uses: idle.uses,
        };
        if r.command(deliverer, "RSET").await.code() == 250 {
            return Some(r);
        }
        r.quit().await;
    }
    None
}

/// An open session with a remote MX for one transaction of the SMTP proxy.
struct Remote {
    domain: String,
    conn: Connection,
    caps: EhloReply,
    started: Instant,
    /// Recipients the remote accepted, for the log.
    accepted: Vec<String>,
    /// Transactions this session carried before this one.
    uses: u32,
}

impl Remote {
    /// After a transaction that got its final reply: kept for the next one
    /// to the same domain (or closed, when the connection is gone).
    async fn release(self, deliverer: &Deliverer, reply: &Reply) {
        // A 421 means the server is closing; a lost connection was made a
        // 451 by `exchange` and has no stream left.
        if reply.code() == 421 || self.conn.stream.is_none() {
            self.quit().await;
            return;
        }
        deliverer.idle.put(
            deliverer.destination(&self.domain),
            self.conn,
            self.caps,
            self.uses + 1,
        );
    }

    /// Sends RCPT and returns the remote's reply; a refusal is logged at
    /// once (the MTA will log it deferred or bounced too).
    async fn recipient(&mut self, deliverer: &Deliverer, recipient: &str) -> Reply {
        let reply = self
            .command(deliverer, &format!("RCPT TO:<{recipient}>"))
            .await;
        if reply.is_success() {
            self.accepted.push(recipient.to_string());
        } else {
            log!("{}", self.status(recipient, &reply).log_line());
        }
        reply
    }

    fn relay(&self) -> (String, SocketAddr) {
        (self.conn.host.clone(), self.conn.addr)
    }

    /// Sends one command and returns the remote's reply; a broken
    /// connection becomes a 451 (the MTA retries).
    async fn command(&mut self, deliverer: &Deliverer, line: &str) -> Reply {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.exchange(deliverer, &bytes, line).await
    }

    /// Sends the message (DATA form, with its terminator) and returns the
    /// remote's final reply.
    async fn send_message(&mut self, deliverer: &Deliverer, wire: &[u8]) -> Reply {
        // RFC 6152 §3: no 8-bit octets to a server without 8BITMIME.
        if !self.caps.has("8BITMIME")
            && let Some(converted) = crate::smtp::mime::downgrade_8bit(wire)
        {
            return self.exchange(deliverer, &converted, "end of data").await;
        }
        self.exchange(deliverer, wire, "end of data").await
    }

    async fn exchange(&mut self, deliverer: &Deliverer, bytes: &[u8], what: &str) -> Reply {
        let timeout = deliverer.limits.reply_timeout;
        let lost = |host: &str, addr: SocketAddr| {
            Reply::new(
                451,
                format!(
                    "4.4.2 Lost connection with {host}[{}] while waiting for the reply to {what}",
                    addr.ip()
                ),
            )
        };
        let (host, addr) = self.relay();
        let Some(stream) = self.conn.stream.as_mut() else {
            return lost(&host, addr);
        };
        let sent = tokio::time::timeout(timeout, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            self.conn.stream = None;
            return lost(&host, addr);
        }
        let mut buf = [0u8; 4096];
        loop {
            match ReplyParser::next_span(&self.conn.inbuf) {
                Ok(Some(span)) => {
                    let reply = Reply::from_span(&self.conn.inbuf, span);
                    self.conn.inbuf.drain(..span.len);
                    return reply;
                }
                Ok(None) => {}
                Err(e) => {
                    self.conn.stream = None;
                    return Reply::new(
                        451,
                        format!("4.5.0 {host}[{}] does not speak SMTP: {e}", addr.ip()),
                    );
                }
            }
            let Some(stream) = self.conn.stream.as_mut() else {
                return lost(&host, addr);
            };
            match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.conn.inbuf.extend_from_slice(&buf[..n]),
                _ => {
                    self.conn.stream = None;
                    return lost(&host, addr);
                }
            }
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

    /// One log line per recipient the remote accepted, with its final reply.
    fn log_results(&self, reply: &Reply) {
        for rcpt in &self.accepted {
            log!("{}", self.status(rcpt, reply).log_line());
        }
    }

    /// Ends the remote session politely (bounded; errors do not matter).
    async fn quit(self) {
        super::cache::quit(self.conn).await;
    }
}

fn log_status(
    _deliverer: &Deliverer,
    recipient: &str,
    reply: &Reply,
    relay: Option<(String, SocketAddr)>,
    started: Instant,
) {
    let status = RecipientStatus {
        recipient: recipient.to_string(),
        reply: reply.clone(),
        relay,
        tls: None,
        verdict: None,
        level: super::SecurityLevel::Plaintext,
        delay: started.elapsed(),
    };
    log!("{}", status.log_line());
}
