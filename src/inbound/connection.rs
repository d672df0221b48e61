//! The I/O loop for one client: moves bytes between the sockets and the
//! sans-IO [`Session`], and carries out its actions. No SMTP logic here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::InboundConfig;
use super::backend::{BackendConn, ClientFacts};
use super::session::{Action, Session};
use crate::log;
use crate::server::{
    Activity, ClientClock, ClientName, Control, Order, Timeouts, Wrote, write_within,
};
use crate::smtp::replies;
use crate::transport::{Encryption, ServerTls, ServerTlsStream, Stream};

/// Every read (client or backend) goes into one buffer per thread and is
/// handed to the session before the task yields: the session copies what it
/// keeps (a partial line, message bytes on their way out), so a connection
/// owns no read buffer, and thousands of idle ones cost little. 64 KiB lets
/// a bulk transfer take what the socket holds in one system call.
const READ_BUFFER: usize = 64 * 1024;

thread_local! {
    static READ_BUF: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_BUFFER].into_boxed_slice());
}

/// Polls one read from `reader` into the thread's read buffer and, if it
/// completed, hands the outcome to `take` (bytes; `Ok(&[])` at EOF).
fn poll_read_into<R: AsyncRead + Unpin + ?Sized, T>(
    reader: &mut R,
    cx: &mut Context<'_>,
    take: impl FnOnce(std::io::Result<&[u8]>) -> T,
) -> Poll<T> {
    READ_BUF.with(|cell| {
        let mut space = cell.borrow_mut();
        let mut buf = ReadBuf::new(&mut space[..]);
        match Pin::new(reader).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(take(Ok(buf.filled()))),
            Poll::Ready(Err(e)) => Poll::Ready(take(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    })
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// How long the last reply (a 221, a 421) may take to go out before the
/// connection is closed anyway.
const LAST_WRITE: Duration = Duration::from_secs(5);

/// Everything one connection needs, shared by all of them.
pub struct Shared {
    pub config: InboundConfig,
    pub tls: Arc<ServerTls>,
}

/// Waits until the harness orders the session to end (ignoring stress
/// changes): for waits that are not the client's, such as connecting.
async fn told_to_end(control: &mut Control) -> Order {
    loop {
        match control.order().await {
            Order::Recheck => {}
            order => return order,
        }
    }
}

/// Serves one client from accept to close, in a span whose
/// `session=ID` starts every record the session logs. (Not an `async fn`:
/// the span holds the ID, so the task does not keep it too.)
pub fn serve(
    tcp: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
    shared: Arc<Shared>,
    control: Control,
) -> impl Future<Output = ()> + Send + 'static {
    let id = format!("{:08X}", NEXT_SESSION.fetch_add(1, Ordering::Relaxed));
    log::in_session(&id, serve_session(tcp, client, local, shared, control))
}

async fn serve_session(
    tcp: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
    shared: Arc<Shared>,
    mut control: Control,
) {
    let started = Instant::now();
    let config = &shared.config;
    let who = ClientName(client);
    log!(
        "connect client={who} identity={}",
        config.session.identity.as_str()
    );

    let facts = ClientFacts {
        client,
        local,
        hostname: &config.session.hostname,
        identity: config.session.identity,
        tls: None,
    };
    control.set_activity(Activity::Busy);
    let opened = tokio::select! {
        // Boxed, as below: a connection attempt's state (a timer, the
        // address lookup) is not kept in every session's task.
        opened = Box::pin(BackendConn::open(&config.backend, facts, config.backend_connect_timeout)) => {
            opened.map_err(|e| e.to_string())
        }
        _ = told_to_end(&mut control) => Err("shutting down".to_string()),
    };
    let backend = match opened {
        Ok(b) => b,
        Err(e) => {
            log!("backend-error=unreachable client={who} ({e})");
            let reply = replies::service_unavailable(&config.session.hostname);
            let mut tcp = tcp;
            let _ = tokio::time::timeout(LAST_WRITE, async {
                let _ = tcp.write_all(&reply.to_bytes()).await;
                let _ = tcp.shutdown().await;
            })
            .await;
            // The slot is free before the line says so (see below).
            drop(control);
            log!(
                "disconnect client={who} tls=none identity={} messages=0 refused=0 bytes=0 end=backend-unreachable reply=\"{reply}\" duration={:.3}s",
                config.session.identity.as_str(),
                started.elapsed().as_secs_f64()
            );
            return;
        }
    };

    let session = Session::new(Arc::clone(&config.session), client, local);
    let mut run = Run {
        who,
        shared: &shared,
        session,
        clock: ClientClock::new(Instant::now()),
        control,
    };
    run.drive(Stream::Plain(tcp), backend).await;

    // The session's slot in the harness's table (limits per client, per
    // network, in all) is given back before the disconnect line is logged:
    // once an operator, or a client's own retry logic, sees that line, a
    // new connection from the same address is not refused for this one.
    let Run {
        session, control, ..
    } = run;
    drop(control);
    let stats = session.stats();
    let tls = session
        .tls()
        .map_or_else(|| "none".to_string(), Encryption::to_string);
    log!(
        "disconnect client={who} tls={tls} identity={} messages={} refused={} bytes={} end={} reply=\"{}\" duration={:.3}s",
        config.session.identity.as_str(),
        stats.messages,
        stats.refused,
        stats.bytes,
        if stats.end.is_empty() {
            "aborted"
        } else {
            stats.end
        },
        stats.last_reply,
        started.elapsed().as_secs_f64()
    );
}

struct Run<'a> {
    who: ClientName,
    shared: &'a Shared,
    session: Session,
    /// The client's deadline: per command line, per message.
    clock: ClientClock,
    control: Control,
}

impl Run<'_> {
    fn timeouts(&self) -> Timeouts {
        self.shared.config.timeouts
    }

    /// The time for a line, and for a write to the client, now.
    fn line_time(&self) -> Duration {
        self.timeouts().line(self.control.stressed())
    }

    /// Carries out an order from the harness. `replying` is whether a reply
    /// to the client is half written (then no 421 can follow it).
    fn obey(&mut self, order: Order, replying: bool) {
        let hostname = &self.shared.config.session.hostname;
        let (reply, why) = match order {
            Order::Recheck => return,
            Order::Evict { idle } => {
                log!(
                    "evicted behind={:.1}s client={} (all slots taken)",
                    idle.as_secs_f64(),
                    self.who
                );
                (replies::evicted(hostname), "evicted")
            }
            Order::Close => (replies::shutting_down(hostname), "shutdown"),
        };
        self.session.to_client.clear();
        self.session.end((!replying).then_some(reply), why);
    }

    async fn drive(&mut self, mut client: Stream<TcpStream>, mut backend: BackendConn) {
        let config = &self.shared.config;
        // One timer for the session, armed lazily: it is moved only when
        // the deadline comes earlier than it is set for; when it fires
        // early (the deadline moved later meanwhile, as it does with every
        // reply) it is set again. Re-arming it at every read would cost a
        // timer-wheel removal and insertion per read.
        let sleep = tokio::time::sleep(config.timeouts.line);
        tokio::pin!(sleep);
        let mut message_3_deadline: Option<Instant> = None;

        loop {
            // Write out everything the session produced, each write with
            // its deadline, then act.
            if !self.session.to_backend.is_empty() {
                let deadline = Instant::now() + config.backend_timeout;
                let wrote = write_within(
                    &mut backend.writer,
                    &self.session.to_backend,
                    deadline,
                    &mut self.control,
                )
                .await;
                self.session.to_backend.clear();
                match wrote {
                    Wrote::Done => {}
                    Wrote::Failed => self.session.backend_eof(),
                    Wrote::Late => {
                        log!("timeout waiting_for=backend-write client={}", self.who);
                        let reply = replies::backend_timed_out(&config.session.hostname);
                        self.session.end(Some(reply), "backend-write-timeout");
                    }
                    Wrote::Told(order) => self.obey(order, false),
                }
            }
            if !self.session.to_client.is_empty() {
                // Something was answered: the client's next line (or the
                // message, after a 354) has its own time from now.
                let now = Instant::now();
                if self.session.receiving_message() {
                    self.clock.message(now);
                } else {
                    self.clock.next_line(now);
                }
                self.control.answered();
                let deadline = now + self.line_time();
                let wrote = write_within(
                    &mut client,
                    &self.session.to_client,
                    deadline,
                    &mut self.control,
                )
                .await;
                self.session.to_client.clear();
                match wrote {
                    Wrote::Done => {}
                    Wrote::Failed => self.session.client_lost(),
                    Wrote::Late => {
                        log!("timeout waiting_for=client-write client={}", self.who);
                        self.session.end(None, "client-write-timeout");
                    }
                    Wrote::Told(order) => self.obey(order, true),
                }
            }
            let mut acted = false;
            while let Some(action) = self.session.poll_action() {
                acted = true;
                match action {
                    Action::Log(notice) => {
                        log!("{notice} client={}", self.who)
                    }
                    Action::Close => {
                        let deadline = Instant::now() + LAST_WRITE.min(self.line_time());
                        let bytes = std::mem::take(&mut self.session.to_client);
                        if let Wrote::Done =
                            write_within(&mut client, &bytes, deadline, &mut self.control).await
                        {
                            let _ =
                                tokio::time::timeout_at(deadline.into(), client.shutdown()).await;
                        }
                        return;
                    }
                    Action::Delay(pause) => {
                        // The error limit slows this client down; only this
                        // session's task sleeps. What the delay held back is
                        // written before any further action.
                        tokio::time::sleep(pause).await;
                        self.session.delay_over();
                        break;
                    }
                    // Boxed: the handshake's state is large and needed once.
                    Action::StartTls => match Box::pin(self.handshake(client)).await {
                        Some(tls) => client = tls,
                        None => {
                            // The plaintext stream went into the failed
                            // handshake; only the log line is left to write.
                            while let Some(Action::Log(n)) = self.session.poll_action() {
                                log!("{n} client={}", self.who);
                            }
                            return;
                        }
                    },
                    Action::StartPony => match self.switch_to_pony(client) {
                        Some(pony) => client = pony,
                        None => return,
                    },
                    Action::RestartBackend => {
                        // The old backend's last words (its QUIT), bounded:
                        // it is dropped below however this goes.
                        if !self.session.to_backend.is_empty() {
                            let _ = tokio::time::timeout(
                                LAST_WRITE,
                                backend.writer.write_all(&self.session.to_backend),
                            )
                            .await;
                            self.session.to_backend.clear();
                        }
                        let facts = ClientFacts {
                            client: self.session.client_addr(),
                            local: self.session.local_addr(),
                            hostname: &config.session.hostname,
                            identity: config.session.identity,
                            tls: self.session.tls(),
                        };
                        // Dropping the old connection kills the old program.
                        let opened = tokio::select! {
                            opened = Box::pin(BackendConn::open(
                                &config.backend,
                                facts,
                                config.backend_connect_timeout,
                            )) => opened,
                            order = told_to_end(&mut self.control) => {
                                self.obey(order, false);
                                continue;
                            }
                        };
                        match opened {
                            Ok(new) => {
                                backend = new;
                                self.session.backend_restarted();
                            }
                            Err(e) => {
                                log!("backend-error=unreachable client={} ({e})", self.who);
                                self.session.backend_eof();
                            }
                        }
                    }
                }
            }
            if acted {
                continue;
            }

            let now = Instant::now();
            let receiving = self.session.receiving_message();
            if receiving {
                self.clock.message(now);
            }
            // Message 3 has one deadline from the 334 on; a line has one
            // from the last reply, a message one that grows at the minimum
            // rate: a byte now and then extends none of them.
            let deadline = if self.session.awaiting_message_3() {
                *message_3_deadline.get_or_insert(now + config.timeouts.line)
            } else if self.session.awaiting_backend() {
                message_3_deadline = None;
                self.control.set_activity(Activity::Busy);
                now + config.backend_timeout
            } else {
                message_3_deadline = None;
                self.control.set_activity(if receiving {
                    Activity::Message
                } else {
                    Activity::Client
                });
                self.clock
                    .deadline(&self.timeouts(), self.control.stressed())
            };
            if deadline < sleep.deadline().into_std() {
                sleep.as_mut().reset(deadline.into());
            }
            let wants_client = self.session.wants_client_input();
            std::future::poll_fn(|cx| {
                // Orders first: an evicted or closing session reads no more.
                if let Poll::Ready(order) = self.control.poll_order(cx) {
                    self.obey(order, false);
                    return Poll::Ready(());
                }
                let mut ready = false;
                if wants_client
                    && let Poll::Ready(()) = poll_read_into(&mut client, cx, |read| {
                        if let Ok(data) = &read
                            && self.clock.in_message()
                        {
                            self.clock.received(data.len());
                            self.control.received(data.len());
                        }
                        self.session.client_read(read);
                    })
                {
                    ready = true;
                }
                // The backend is read even when the client was: a reply
                // and the client's next command may both be waiting.
                if !self.session.is_closed()
                    && let Poll::Ready(()) =
                        poll_read_into(&mut *backend.reader, cx, |read| match read {
                            Ok([]) | Err(_) => self.session.backend_eof(),
                            Ok(data) => self.session.backend_input(data),
                        })
                {
                    ready = true;
                }
                // The timer is polled even after a read: a client that
                // keeps the socket full must still meet its deadline.
                // It never fires later than the deadline (it is moved
                // earlier when the deadline is); when it fires early, it
                // is set again.
                if sleep.as_mut().poll(cx).is_ready() {
                    if Instant::now() >= deadline {
                        if !self.session.is_closed() {
                            self.control.timed_out();
                            self.session.timeout();
                        }
                        return Poll::Ready(());
                    }
                    sleep.as_mut().reset(deadline.into());
                    if sleep.as_mut().poll(cx).is_ready() && !self.session.is_closed() {
                        self.control.timed_out();
                        self.session.timeout();
                        return Poll::Ready(());
                    }
                }
                if ready {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }

    /// Wraps the plaintext stream in the blackpony channel the session
    /// established (XPONY), carrying over the bytes read behind message 3.
    fn switch_to_pony(&mut self, client: Stream<TcpStream>) -> Option<Stream<TcpStream>> {
        let Some((transport, already_read)) = self.session.take_pony() else {
            self.session
                .tls_failed("no XPONY channel to switch to".into());
            return Some(client);
        };
        let tcp = match client.into_plain() {
            Ok(tcp) => tcp,
            Err(encrypted) => {
                self.session
                    .tls_failed("XPONY on an encrypted connection".into());
                return Some(encrypted);
            }
        };
        let info = Encryption::pony(&transport);
        log!("xpony client={} {info}", self.who);
        let channel = crate::pony::channel::Channel::new(transport);
        let stream = Stream::Pony(Box::new(crate::transport::PonyStream::new(
            tcp,
            channel,
            already_read,
        )));
        self.session.pony_established(info);
        Some(stream)
    }

    /// Runs the server side of the TLS handshake on the plaintext stream.
    async fn handshake(&mut self, client: Stream<TcpStream>) -> Option<Stream<TcpStream>> {
        let tcp = match client.into_plain() {
            Ok(tcp) => tcp,
            Err(already) => {
                self.session.tls_failed("TLS already active".into());
                return Some(already);
            }
        };
        let acceptor = TlsAcceptor::from(self.shared.tls.config());
        // One deadline for the whole handshake, as for a line.
        let timeout = self.line_time();
        let accepted = tokio::select! {
            accepted = tokio::time::timeout(timeout, acceptor.accept(tcp)) => accepted,
            order = told_to_end(&mut self.control) => {
                self.obey(order, true);
                return None;
            }
        };
        match accepted {
            Ok(Ok(tls)) => {
                let info = Encryption::from_tls(tls.get_ref().1);
                log!("starttls client={} tls={info}", self.who);
                self.session.tls_established(info);
                Some(Stream::ServerTls(Box::new(ServerTlsStream::new(tls))))
            }
            Ok(Err(e)) => {
                self.session
                    .tls_failed(crate::transport::log_words::error_words(&e));
                None
            }
            Err(_) => {
                self.session.tls_failed("handshake timed out".into());
                None
            }
        }
    }
}
