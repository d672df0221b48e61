//! The I/O loop for one client: moves bytes between the sockets and the
//! sans-IO [`Session`], and carries out its actions. No SMTP logic here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::backend::{BackendConn, ClientFacts};
use super::session::{Action, Session};
use super::{InboundConfig, display_client};
use crate::log;
use crate::smtp::Reply;
use crate::transport::{Encryption, ServerTls, Stream};

/// Read buffers start small, so thousands of idle connections cost little,
/// and grow (up to [`MAX_READ_BUFFER`]) when a read fills them, so a bulk
/// transfer needs few system calls.
const MIN_READ_BUFFER: usize = 2 * 1024;
const MAX_READ_BUFFER: usize = 64 * 1024;

/// A read buffer that doubles when a read fills it.
struct ReadBuffer(Vec<u8>);

impl ReadBuffer {
    fn new() -> Self {
        ReadBuffer(vec![0; MIN_READ_BUFFER])
    }

    fn space(&mut self) -> &mut [u8] {
        &mut self.0
    }

    /// Called after a read of `n` bytes; returns them.
    fn filled(&mut self, n: usize) -> &[u8] {
        if n == self.0.len() && self.0.len() < MAX_READ_BUFFER {
            let grown = self.0.len() * 2;
            let mut bigger = vec![0; grown];
            bigger[..n].copy_from_slice(&self.0[..n]);
            self.0 = bigger;
        }
        &self.0[..n]
    }
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Everything one connection needs, shared by all of them.
pub struct Shared {
    pub config: InboundConfig,
    pub tls: Arc<ServerTls>,
}

/// Serves one client from accept to close.
pub async fn serve(tcp: TcpStream, client: SocketAddr, local: SocketAddr, shared: Arc<Shared>) {
    let id = format!("{:08X}", NEXT_SESSION.fetch_add(1, Ordering::Relaxed));
    let started = Instant::now();
    let config = &shared.config;
    let who = display_client(client);
    log!(
        "session={id} connect client={who} identity={}",
        config.session.identity.as_str()
    );

    let facts = ClientFacts {
        client,
        local,
        hostname: &config.session.hostname,
        identity: config.session.identity,
        tls: None,
    };
    let backend = match BackendConn::open(&config.backend, facts, config.backend_connect_timeout)
        .await
    {
        Ok(b) => b,
        Err(e) => {
            log!("session={id} backend-error=unreachable client={who} ({e})");
            let reply = Reply::new(
                421,
                format!(
                    "4.3.2 {} Service not available, try again later",
                    config.session.hostname
                ),
            );
            let mut tcp = tcp;
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                let _ = tcp.write_all(&reply.to_bytes()).await;
                let _ = tcp.shutdown().await;
            })
            .await;
            log!(
                "session={id} disconnect client={who} tls=none identity={} messages=0 refused=0 bytes=0 end=backend-unreachable reply=\"{reply}\" duration={:.3}s",
                config.session.identity.as_str(),
                started.elapsed().as_secs_f64()
            );
            return;
        }
    };

    let session = Session::new(Arc::clone(&config.session), client, local);
    let mut run = Run {
        id: &id,
        who: &who,
        shared: &shared,
        client_addr: client,
        local,
        session,
    };
    run.drive(Stream::Plain(tcp), backend).await;

    let stats = run.session.stats();
    let tls = run
        .session
        .tls()
        .map_or_else(|| "none".to_string(), Encryption::to_string);
    log!(
        "session={id} disconnect client={who} tls={tls} identity={} messages={} refused={} bytes={} end={} reply=\"{}\" duration={:.3}s",
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
    id: &'a str,
    who: &'a str,
    shared: &'a Shared,
    client_addr: SocketAddr,
    local: SocketAddr,
    session: Session,
}

impl Run<'_> {
    async fn drive(&mut self, mut client: Stream<TcpStream>, mut backend: BackendConn) {
        let config = &self.shared.config;
        let mut client_buf = ReadBuffer::new();
        let mut backend_buf = ReadBuffer::new();
        let sleep = tokio::time::sleep(config.client_timeout);
        tokio::pin!(sleep);
        let mut message_3_deadline: Option<tokio::time::Instant> = None;

        loop {
            // Write out everything the session produced, then act.
            if !self.session.to_backend.is_empty() {
                if backend
                    .writer
                    .write_all(&self.session.to_backend)
                    .await
                    .is_err()
                {
                    self.session.to_backend.clear();
                    self.session.backend_eof();
                } else {
                    self.session.to_backend.clear();
                }
            }
            if !self.session.to_client.is_empty() {
                let ok = write_flush(&mut client, &self.session.to_client).await;
                self.session.to_client.clear();
                if !ok {
                    self.session.client_lost();
                }
            }
            let mut acted = false;
            while let Some(action) = self.session.poll_action() {
                acted = true;
                match action {
                    Action::Log(notice) => {
                        log!("session={} {notice} client={}", self.id, self.who)
                    }
                    Action::Close => {
                        let _ = write_flush(&mut client, &self.session.to_client).await;
                        let _ =
                            tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await;
                        return;
                    }
                    Action::StartTls => match self.handshake(client).await {
                        Some(tls) => client = tls,
                        None => {
                            // The plaintext stream went into the failed
                            // handshake; only the log line is left to write.
                            while let Some(Action::Log(n)) = self.session.poll_action() {
                                log!("session={} {n} client={}", self.id, self.who);
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
                                Duration::from_secs(5),
                                backend.writer.write_all(&self.session.to_backend),
                            )
                            .await;
                            self.session.to_backend.clear();
                        }
                        let facts = ClientFacts {
                            client: self.client_addr,
                            local: self.local,
                            hostname: &config.session.hostname,
                            identity: config.session.identity,
                            tls: self.session.tls(),
                        };
                        // Dropping the old connection kills the old program.
                        match BackendConn::open(
                            &config.backend,
                            facts,
                            config.backend_connect_timeout,
                        )
                        .await
                        {
                            Ok(new) => {
                                backend = new;
                                self.session.backend_restarted();
                            }
                            Err(e) => {
                                log!(
                                    "session={} backend-error=unreachable client={} ({e})",
                                    self.id,
                                    self.who
                                );
                                self.session.backend_eof();
                            }
                        }
                    }
                }
            }
            if acted {
                continue;
            }

            let wait = if self.session.awaiting_backend() {
                config.backend_timeout
            } else {
                config.client_timeout
            };
            let now = tokio::time::Instant::now();
            // Message 3 has one deadline from the 334 on: a byte now and
            // then must not hold a handshake open for ever.
            let deadline = if self.session.awaiting_message_3() {
                *message_3_deadline.get_or_insert(now + config.client_timeout)
            } else {
                message_3_deadline = None;
                now + wait
            };
            sleep.as_mut().reset(deadline);
            tokio::select! {
                read = client.read(client_buf.space()), if self.session.wants_client_input() => {
                    self.session.client_read(read.map(|n| client_buf.filled(n)));
                }
                read = backend.reader.read(backend_buf.space()) => {
                    match read {
                        Ok(0) | Err(_) => self.session.backend_eof(),
                        Ok(n) => self.session.backend_input(backend_buf.filled(n)),
                    }
                }
                () = &mut sleep => self.session.timeout(),
            }
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
        log!("session={} xpony client={} {info}", self.id, self.who);
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
        let timeout = self.shared.config.client_timeout;
        match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                let info = Encryption::from_tls(tls.get_ref().1);
                log!(
                    "session={} starttls client={} tls={info}",
                    self.id,
                    self.who
                );
                self.session.tls_established(info);
                Some(Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))))
            }
            Ok(Err(e)) => {
                self.session.tls_failed(e.to_string());
                None
            }
            Err(_) => {
                self.session.tls_failed("handshake timed out".into());
                None
            }
        }
    }
}

/// Writes all of `bytes` and flushes (TLS buffers records until flushed).
async fn write_flush<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut Stream<S>,
    bytes: &[u8],
) -> bool {
    if bytes.is_empty() {
        return true;
    }
    stream.write_all(bytes).await.is_ok() && stream.flush().await.is_ok()
}
