//! `blackpony inbound`: the sidecar on port 25.
//!
//! It passes each client's SMTP dialogue through to the local MTA (the
//! backend), offers STARTTLS itself, tells the backend who the client really
//! is ([`identity`]), and never answers for the backend: every reply to a
//! mail command, and above all to end-of-data, is the backend's own.
//!
//! - [`session`]: the sans-IO relay state machine (all the SMTP logic);
//! - [`connection`]: the tokio loop that drives one session;
//! - [`backend`]: opening the connection to the MTA;
//! - [`identity`]: PROXY v1/v2, XCLIENT, UCSPI environment;
//! - [`trace`]: the `Received:` header naming the TLS use;
//! - this module: the accept loop, connection limits and graceful shutdown.

pub mod backend;
pub mod connection;
pub mod identity;
pub mod session;
pub mod trace;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub use backend::BackendTarget;
pub use identity::Identity;
pub use session::SessionConfig;

use crate::log;
use crate::smtp::Reply;
use crate::transport::ServerTls;

/// Everything `blackpony inbound` is configured with, after the command line
/// and the config file have been merged.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    pub session: Arc<SessionConfig>,
    pub backend: BackendTarget,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Most connections at once from one client address.
    pub max_connections_per_client: usize,
    /// How long a client may stay silent (RFC 5321 §4.5.3.2.7: 5 minutes).
    pub client_timeout: Duration,
    /// How long the backend may take to reply (RFC 5321 §4.5.3.2.6: 10 minutes).
    pub backend_timeout: Duration,
    pub backend_connect_timeout: Duration,
    /// After SIGTERM, how long running sessions may take to finish.
    pub shutdown_grace: Duration,
}

impl InboundConfig {
    pub fn new(session: SessionConfig, backend: BackendTarget) -> Self {
        InboundConfig {
            session: Arc::new(session),
            backend,
            max_connections: 1000,
            max_connections_per_client: 50,
            client_timeout: crate::smtp::limits::SERVER_TIMEOUT,
            backend_timeout: crate::smtp::limits::REPLY_TIMEOUT,
            backend_connect_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// `unknown[192.0.2.7]:51234`, as Postfix names a client without a PTR name.
pub fn display_client(addr: SocketAddr) -> String {
    let ip = canonical_ip(addr.ip());
    format!("unknown[{ip}]:{}", addr.port())
}

/// An IPv4 client on a dual-stack socket counts as its IPv4 address.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Connections per client address; an entry leaves with its last connection.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

struct Slot {
    table: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    fn take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<Slot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = map.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            table: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Runs the sidecar on `listener` until `shutdown` completes, then lets the
/// running sessions finish for up to `shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    config: InboundConfig,
    tls: Arc<ServerTls>,
    shutdown: impl Future<Output = ()>,
) {
    let shared = Arc::new(connection::Shared { config, tls });
    let config = &shared.config;
    let per_client = Arc::new(PerClient::default());
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);

    if let Ok(addr) = listener.local_addr() {
        log!(
            "listening on {addr} backend={} identity={} require_tls={} {}",
            config.backend,
            config.session.identity.as_str(),
            config.session.require_tls,
            shared.tls.describe()
        );
    }
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, client) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning.
                        log!("accept-error=\"{e}\"");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let local = tcp.local_addr().unwrap_or(client);
                let ip = canonical_ip(client.ip());
                if sessions.len() >= config.max_connections {
                    refuse(tcp, client, &config.session.hostname, "too many connections");
                    continue;
                }
                let Some(slot) = per_client.take(ip, config.max_connections_per_client) else {
                    refuse(tcp, client, &config.session.hostname, "too many connections from your address");
                    continue;
                };
                let shared = Arc::clone(&shared);
                sessions.spawn(async move {
                    let _slot = slot;
                    connection::serve(tcp, client, local, shared).await;
                });
            }
        }
    }
    drop(listener);
    log!(
        "shutdown: no longer accepting; waiting up to {}s for {} session(s)",
        config.shutdown_grace.as_secs(),
        sessions.len()
    );
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log!(
            "shutdown: closing {} session(s) still running",
            sessions.len()
        );
        sessions.shutdown().await;
    }
    log!("shutdown: done");
}

/// Turns a client away with `421 4.7.0` (RFC 5321 §3.8), without blocking
/// the accept loop.
fn refuse(mut tcp: TcpStream, client: SocketAddr, hostname: &str, why: &'static str) {
    log!(
        "refused=connection-limit client={} ({why})",
        display_client(client)
    );
    let reply = Reply::new(421, format!("4.7.0 {hostname} Error: {why}")).to_bytes();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            let _ = tcp.write_all(&reply).await;
            let _ = tcp.shutdown().await;
        })
        .await;
    });
}
