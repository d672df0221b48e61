//! One open connection to an MX address and what it has shown so far: the
//! stream (plain, TLS or the XPONY channel), the certificate verdict, the
//! blackpony key evidence; and the [`Dialer`] that opens it and drives a
//! [`ClientSession`] over it, carrying out the session's STARTTLS (with the
//! policy's check of the certificate) and XPONY steps. The delivery loop
//! (`mx_walk.rs`) opens and drives it; the idle sessions (`cache.rs`) keep it
//! between transactions.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::dane::HostTls;
use super::policy::{SecurityLevel, TlsPolicy};
use super::xpony::{self, PonyContext};
use crate::log;
use crate::smtp::client::{ClientSession, HostFailure, Step};
use crate::smtp::{Reply, replies};
use crate::transport::dane::DaneMismatch;
use crate::transport::{CertVerdict, ClientDriver, ClientTls, Encryption, Stream};

/// An open connection to one MX address, plain or TLS.
pub(crate) struct Connection {
    /// `None` only while the TLS upgrade holds it.
    pub(crate) stream: Option<Stream<TcpStream>>,
    pub(crate) host: String,
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Option<Encryption>,
    pub(crate) verdict: Option<CertVerdict>,
    pub(crate) greeted: bool,
    pub(crate) tls_failed: bool,
    /// The blackpony extension's evidence and outcome for this host.
    pub(crate) pony: Option<PonyContext>,
    /// Our own address on the connection (TLS reports' `sending-mta-ip`).
    pub(crate) local: Option<std::net::IpAddr>,
    /// What this host must get, as decided when the session was opened
    /// (the configured policy or DANE's verdict on it, before MTA-STS
    /// raised it), and the TLSA records the certificate must match where
    /// DANE applies. A kept session is judged by it again before it carries
    /// another delivery (`mx_hosts::kept_host_policy`).
    pub(crate) host_tls: HostTls,
    /// Why the certificate did not match them, if it did not.
    pub(crate) dane_mismatch: Option<DaneMismatch>,
}

impl Connection {
    /// The security level this connection reached.
    pub(crate) fn level(&self) -> SecurityLevel {
        level_of(self.tls.as_ref(), self.verdict.as_ref())
    }
}

/// plaintext < encrypted < authenticated, from what the handshake showed.
pub(super) fn level_of(tls: Option<&Encryption>, verdict: Option<&CertVerdict>) -> SecurityLevel {
    match (tls, verdict) {
        (Some(_), Some(v)) if v.is_verified() => SecurityLevel::Authenticated,
        (Some(_), _) => SecurityLevel::Encrypted,
        _ => SecurityLevel::Plaintext,
    }
}

/// What opening and driving a connection needs (the deliverer's TLS
/// configuration and time limits).
pub(crate) struct Dialer<'a> {
    pub(crate) tls: &'a ClientTls,
    pub(crate) connect_timeout: Duration,
    /// The bound of each write and each reply (RFC 5321 §4.5.3.2).
    pub(crate) reply_timeout: Duration,
}

impl Dialer<'_> {
    /// A TCP connection to one MX address.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        host: &str,
        host_tls: HostTls,
    ) -> Result<Connection, Reply> {
        let connect = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await;
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
                    pony: None,
                    host_tls,
                    dane_mismatch: None,
                });
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        Err(replies::connect_failed(host, addr.ip(), addr.port(), why))
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
        let mut driver = ClientDriver::new(self.reply_timeout);
        loop {
            let step = driver.next_step(&mut conn.stream, session).await;
            conn.greeted |= driver.heard();
            let Some(step) = step else {
                return Ok(());
            };
            match step {
                Step::Continue | Step::Ready | Step::Done => return Ok(()),
                Step::CheckServerKey { key, hints } => {
                    let judged = xpony::judge_server_key(
                        conn.pony.as_mut(),
                        &conn.host,
                        conn.addr.ip(),
                        key,
                        hints,
                        policy,
                    );
                    if let Err(why) = judged {
                        session.xpony_reject(why);
                        continue;
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
        let verdict = xpony::channel_verdict(conn.pony.as_ref());
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
            reply: replies::tls_handshake_failed(&host, ip, why),
        };
        let Some(Ok(tcp)) = conn.stream.take().map(Stream::into_plain) else {
            return Err(failed("not a plaintext connection".into()));
        };
        let name = crate::transport::tls::server_name(&host).map_err(failed)?;
        let (config, dane) = match &conn.host_tls.dane {
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
            tokio::time::timeout(self.connect_timeout, connector.connect(name, tcp)).await;
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                // A certificate that does not match the TLSA records is
                // no TLS trouble: plaintext never follows DANE (§2.2).
                if let Some(why) = dane.as_ref().and_then(|v| v.failure()) {
                    conn.dane_mismatch = Some(why.clone());
                    return Err(HostFailure::Refused {
                        stage: "STARTTLS",
                        reply: replies::dane_mismatch(&host, ip, why),
                    });
                }
                conn.tls_failed = true;
                return Err(failed(crate::transport::log_words::error_words(&e)));
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
        let verdict = match &conn.host_tls.dane {
            Some(auth) => self.tls.dane_verdict(state, auth),
            None => self.tls.verdict(state, &host),
        };
        conn.tls = Some(info);
        conn.verdict = Some(verdict.clone());
        let mut stream = Stream::ClientTls(Box::new(tls));
        if policy == TlsPolicy::Verify
            && let CertVerdict::Untrusted(why) = verdict
        {
            let _ = stream.write_all(b"QUIT\r\n").await;
            return Err(HostFailure::Refused {
                stage: "STARTTLS",
                reply: replies::certificate_not_verified(&host, why),
            });
        }
        conn.stream = Some(stream);
        Ok(())
    }
}
