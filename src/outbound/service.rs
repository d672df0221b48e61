//! The MTA-facing service of the outbound transport: the I/O loop around a
//! [`ReceiveSession`]. One loop serves standard input/output (`blackpony
//! lmtp`) and each connection of `blackpony outbound`.
//!
//! - LMTP: the whole message is received, delivered, and answered with one
//!   reply per recipient.
//! - SMTP: a per-transaction proxy. The first RCPT opens a session with the
//!   recipient domain's MX and sends MAIL there (`proxy.rs`, the same
//!   `ClientSession` as every mode); every RCPT, DATA and the
//!   end of data are answered with the remote's own reply, so the MTA never
//!   hears 250 before the remote said it. Recipients of a second domain get
//!   `452 4.5.3` and come back in the MTA's next transaction.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Deliverer;
use super::deliver::Prepared;
use super::proxy::{MxTransaction, recipient_reply};
use crate::log;
use crate::smtp::Reply;
use crate::smtp::server::{Protocol, ReceiveEvent, ReceiveSession};

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
    let mut remote: Option<MxTransaction> = None;
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
                        Some(r) => r.data(deliverer).await,
                        None => Reply::new(503, "5.5.1 Error: no valid recipients"),
                    };
                    remote_in_data = reply.code() == 354;
                    session.answer(&reply);
                }
                ReceiveEvent::EndOfData { envelope, wire } => {
                    remote_in_data = false;
                    // Prepared as in every mode (lines over 998 octets
                    // folded, NUL refused).
                    let reply = match (remote.take(), Prepared::new(&envelope.sender, wire)) {
                        (Some(r), Ok(prepared)) => r.message(deliverer, &prepared).await,
                        // The remote said 354 and waits for the message: a
                        // lone end of data would deliver an empty one, so
                        // the connection is dropped instead (a server
                        // discards a transaction cut before its end, RFC
                        // 5321 §4.1.1.4).
                        (Some(r), Err(refusal)) => {
                            let reply = refusal.reply();
                            r.refuse(&reply);
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
