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
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::Deliverer;
use super::deliver::Prepared;
use super::proxy::{MxTransaction, recipient_reply};
use crate::log;
use crate::server::memory::{Held, MessageMemory};
use crate::server::{
    Control, Limits, Listen, Order, Refusal, Settings, Timeouts, Wrote, write_within,
};
use crate::smtp::server::{Protocol, ReceiveEvent, ReceiveSession};
use crate::smtp::{Reply, replies};

/// How long the MTA may stay silent (RFC 5321 §4.5.3.2.7), and how long a
/// reply to it may take to write.
const IDLE: Duration = Duration::from_secs(300);

/// How long the close of a connection may take.
const CLOSE_WRITE: Duration = Duration::from_secs(5);

/// Where the MTA connects.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// The bounds of the MTA-facing server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// MTA connections served at once; more are answered `421 4.3.2` and
    /// closed (the MTA tries again later).
    pub max_connections: usize,
    pub max_message_size: u64,
    /// Message octets held in memory by all sessions at once: over it the
    /// MTA gets `452 4.3.1` (or `421 4.3.1` in the middle of a message)
    /// and sends again later ([`crate::server::memory`]).
    pub max_message_memory: u64,
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Serves MTA connections on `listener` until `shutdown` completes, on the
/// listener harness: at most `limits.max_connections` at once (more are
/// greeted `421 4.3.2` and closed, without a task each), message memory
/// bounded by `limits.max_message_memory`, deadlines on every write. At
/// shutdown nothing new is accepted and every session drains: a
/// transaction whose message went to a remote finishes and gets its reply;
/// one the MTA is still sending, or a session between transactions, is
/// answered `421 4.3.2` at once (the remote never saw an end of data, so
/// the MTA's retry is no duplicate). This returns when the last session
/// has ended (a delivery has its whole deadline to finish; then the
/// harness closes and cuts what is left).
pub async fn run(
    listener: Listener,
    protocol: Protocol,
    deliverer: Arc<Deliverer>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let settings = Settings {
        limits: Limits {
            max_connections: limits.max_connections,
            // The MTA connects from one address: the limit in all is the
            // only one.
            per_client: usize::MAX,
            per_network: usize::MAX,
            // An MTA's session is never evicted for a newcomer: the
            // newcomer is refused and comes back.
            evict_idle: Duration::MAX,
        },
        // The session keeps its own deadlines (`deliverer.limits`); with no
        // eviction the harness never reads these.
        timeouts: Timeouts::default(),
        shutdown_grace: deliverer.limits.deadline,
        hostname: deliverer.helo_name.clone(),
        refusal: Some(Refusal {
            // RFC 5321 §3.8: a 421 greeting; an LMTP or SMTP client
            // defers and retries.
            reply: replies::mta_connections_busy(),
            log: format!(
                "refused=too-many-connections max-connections={}",
                limits.max_connections
            ),
        }),
    };
    let memory = MessageMemory::new(limits.max_message_memory);
    let server = Server {
        protocol,
        deliverer: Arc::clone(&deliverer),
        limits,
        memory,
    };
    match listener {
        Listener::Tcp(l) => server.run(l, settings, shutdown).await,
        Listener::Unix(l) => server.run(l, settings, shutdown).await,
    }
    // The MX sessions kept for reuse end with QUIT, not a dropped socket.
    deliverer.idle.close_all().await;
    log!("shutdown: drained");
}

/// What every session of `blackpony outbound` shares.
#[derive(Clone)]
struct Server {
    protocol: Protocol,
    deliverer: Arc<Deliverer>,
    limits: ServerLimits,
    memory: Arc<MessageMemory>,
}

impl Server {
    async fn run<L>(self, listener: L, settings: Settings, shutdown: impl Future<Output = ()>)
    where
        L: Listen,
        L::Conn: IntoHalves,
    {
        crate::server::run(listener, settings, shutdown, move |conn, peer, control| {
            let server = self.clone();
            async move {
                let id = format!("{:08X}", NEXT_SESSION.fetch_add(1, Ordering::Relaxed));
                crate::log::in_session(&id, server.connection(conn, peer, control)).await;
            }
        })
        .await;
    }

    /// One MTA connection, from accept to close.
    async fn connection<C: IntoHalves>(self, conn: C, peer: Option<SocketAddr>, control: Control) {
        let started = Instant::now();
        let who = peer.map_or_else(|| "local".to_string(), crate::server::display_client);
        log!("connect client={who} protocol={}", self.protocol.as_str());
        let (reader, writer) = conn.into_halves();
        let end = serve(
            self.protocol,
            reader,
            writer,
            &self.deliverer,
            self.limits.max_message_size,
            Some(control),
            Some(Held::new(&self.memory)),
        )
        .await;
        log!(
            "disconnect client={who} end={} duration={:.3}s",
            end.as_str(),
            started.elapsed().as_secs_f64()
        );
    }
}

type Halves = (
    Box<dyn AsyncRead + Send + Unpin>,
    Box<dyn AsyncWrite + Send + Unpin>,
);

/// A connection as its reading and writing halves (owned: no lock between
/// them).
pub trait IntoHalves: Send + 'static {
    fn into_halves(self) -> Halves;
}

impl IntoHalves for TcpStream {
    fn into_halves(self) -> Halves {
        let (r, w) = self.into_split();
        (Box::new(r), Box::new(w))
    }
}

impl IntoHalves for UnixStream {
    fn into_halves(self) -> Halves {
        let (r, w) = self.into_split();
        (Box::new(r), Box::new(w))
    }
}

/// Why a session ended, for its `disconnect` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Quit,
    ClientClosed,
    ClientLost,
    /// The MTA stayed silent past [`IDLE`].
    Timeout,
    /// The MTA stopped reading our replies.
    WriteTimeout,
    Shutdown,
    /// The message being received did not fit the memory bound.
    MessageMemory,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Quit => "quit",
            End::ClientClosed => "client-closed",
            End::ClientLost => "client-lost",
            End::Timeout => "timeout",
            End::WriteTimeout => "client-write-timeout",
            End::Shutdown => "shutdown",
            End::MessageMemory => "message-memory",
        }
    }
}

/// Holds `bytes` of message in `held`; false (and a log record) when the
/// bound is reached. Without a bound (`lmtp`), always.
fn hold(held: &mut Option<Held>, bytes: u64) -> bool {
    let Some(held) = held else { return true };
    if held.grow_to(bytes) {
        return true;
    }
    log_refusal(held, bytes);
    false
}

fn log_refusal(held: &Held, bytes: u64) {
    log!("{}", held.refusal(bytes));
}

/// Serves one MTA connection until it quits or goes away. `control` links
/// it to the listener harness (None: `blackpony lmtp` on standard input
/// and output, which the MTA ends); `held` is its share of the server's
/// message memory (None: unbounded).
pub async fn serve<R, W>(
    protocol: Protocol,
    mut reader: R,
    mut writer: W,
    deliverer: &Deliverer,
    max_message_size: u64,
    mut control: Option<Control>,
    mut held: Option<Held>,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut session = ReceiveSession::new(protocol, &deliverer.helo_name, max_message_size);
    let mut remote: Option<MxTransaction> = None;
    // The remote answered 354 and waits for the message: it must never get
    // anything from us but the message and its end (not even QUIT, which
    // it would take as message text).
    let mut remote_in_data = false;
    // Why the session is closing, when we close it.
    let mut closing = End::Quit;
    let mut buf = vec![0u8; 64 * 1024];
    // Since when the MTA's silence counts: its last input or our last
    // reply. A wait woken by the harness (a stress change) goes on with the
    // time left, not a fresh [`IDLE`].
    let mut heard = Instant::now();
    let end = loop {
        while let Some(event) = session.poll_event() {
            match event {
                ReceiveEvent::Deliver { envelope, wire } => {
                    // The whole message is held until it is answered.
                    let replies: Vec<Reply> = if hold(&mut held, wire.len() as u64) {
                        let results = deliverer.deliver_wire(&envelope, wire).await;
                        results.into_iter().map(|r| r.reply).collect()
                    } else {
                        vec![replies::insufficient_storage(); envelope.recipients.len()]
                    };
                    session.delivered(&replies);
                }
                ReceiveEvent::Recipient { sender, recipient } => {
                    let size = session.declared_size();
                    let then_data = session.data_next();
                    // A message declared larger than the memory left is
                    // refused before it is sent (RFC 1870 §6.1: 452).
                    let too_big = match (size, held.as_ref()) {
                        (Some(n), Some(h)) if !h.could_grow_to(n) => {
                            log_refusal(h, n);
                            true
                        }
                        _ => false,
                    };
                    let reply = if too_big {
                        replies::insufficient_storage()
                    } else {
                        recipient_reply(
                            deliverer,
                            &mut remote,
                            &sender,
                            &recipient,
                            size,
                            then_data,
                        )
                        .await
                    };
                    session.answer(&reply);
                }
                ReceiveEvent::Data => {
                    let reply = match remote.as_mut() {
                        Some(r) => r.data(deliverer).await,
                        None => replies::no_valid_recipients(),
                    };
                    remote_in_data = reply.code() == 354;
                    session.answer(&reply);
                }
                ReceiveEvent::EndOfData { envelope, wire } => {
                    remote_in_data = false;
                    let reply = if !hold(&mut held, wire.len() as u64) {
                        // The remote waits for the message after its 354:
                        // it never sees an end of data (see below).
                        let reply = replies::insufficient_storage();
                        if let Some(r) = remote.take() {
                            r.refuse(&reply);
                        }
                        reply
                    } else {
                        // Prepared as in every mode (lines over 998 octets
                        // folded, NUL refused).
                        match (remote.take(), Prepared::new(&envelope.sender, wire)) {
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
                            (None, _) => replies::lost_remote_session(),
                        }
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
        // Every message handed out above was answered: only one still
        // arriving is held.
        if !session.receiving_message()
            && let Some(h) = held.as_mut()
        {
            h.release();
        }
        if !session.output.is_empty() {
            // A deadline on the write too: an MTA that stops reading does
            // not hold the session (and a drain) forever.
            let deadline = Instant::now() + IDLE;
            let wrote = match control.as_mut() {
                Some(c) => write_within(&mut writer, &session.output, deadline, c).await,
                None => write_alone(&mut writer, &session.output).await,
            };
            session.output.clear();
            heard = Instant::now();
            match wrote {
                Wrote::Done => {}
                Wrote::Failed => break End::ClientLost,
                Wrote::Late => {
                    log!("timeout waiting_for=client-write");
                    break End::WriteTimeout;
                }
                // The harness's close, long after the drain began: a
                // reply may be half written, nothing more goes out.
                Wrote::Told(_) => break End::Shutdown,
            }
        }
        if session.is_closed() {
            let _ = tokio::time::timeout(CLOSE_WRITE, writer.shutdown()).await;
            break closing;
        }
        // Shutdown is only heard here, between the MTA's input: a message
        // that reached a remote is finished above and its reply written
        // first. Whatever the MTA has not finished sending is answered 421
        // and never reaches a remote's end of data.
        if control.as_ref().is_some_and(Control::draining) {
            closing = End::Shutdown;
            session.shutting_down();
            continue;
        }
        let told = async {
            match control.as_mut() {
                Some(c) => c.order().await,
                None => std::future::pending().await,
            }
        };
        let read = tokio::select! {
            read = tokio::time::timeout_at((heard + IDLE).into(), reader.read(&mut buf)) => Ok(read),
            order = told => Err(order),
        };
        match read {
            Ok(Ok(Ok(n))) if n > 0 => {
                heard = Instant::now();
                session.input(&buf[..n]);
                // The message being received is held as it arrives; past
                // the bound the MTA is told at once, not after sending
                // the rest (RFC 5321 §3.8: a 421 at any time).
                if session.receiving_message() && !hold(&mut held, session.message_bytes()) {
                    closing = End::MessageMemory;
                    session
                        .close_with(&replies::insufficient_storage_closing(&deliverer.helo_name));
                }
            }
            Ok(Ok(Ok(_))) => {
                session.eof();
                break End::ClientClosed;
            }
            Ok(Ok(Err(e))) => {
                // The disconnect record says client-lost; this says why
                // (a reset, a TLS alert) in the words an operator greps for.
                log!(
                    "client-error=\"{}\"",
                    crate::transport::log_words::error_words(&e)
                );
                session.eof();
                break End::ClientLost;
            }
            Ok(Err(_)) => {
                session.eof();
                break End::Timeout;
            }
            // The stress level changed, or the drain began (seen above).
            Err(Order::Recheck) => {}
            Err(_) => {
                closing = End::Shutdown;
                session.shutting_down();
            }
        }
    };
    if let Some(r) = remote.take() {
        if remote_in_data {
            drop(r);
        } else {
            r.quit().await;
        }
    }
    end
}

/// A write to standard output (`blackpony lmtp`), with the same deadline.
async fn write_alone<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> Wrote {
    let written = tokio::time::timeout(IDLE, async {
        writer.write_all(bytes).await?;
        writer.flush().await
    })
    .await;
    match written {
        Ok(Ok(())) => Wrote::Done,
        Ok(Err(_)) => Wrote::Failed,
        Err(_) => Wrote::Late,
    }
}
