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
//! - this module: the settings, and the sidecar on the listener harness
//!   ([`crate::server`]: limits, eviction, deadlines, drain).

pub mod backend;
pub mod connection;
pub mod identity;
pub mod session;
pub mod trace;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use backend::BackendTarget;
pub use identity::Identity;
pub use session::SessionConfig;

use crate::log;
use crate::server::{self, Limits, Timeouts};
use crate::transport::ServerTls;

pub use crate::server::display_client;

/// Everything `blackpony inbound` is configured with, after the command line
/// and the config file have been merged.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    pub session: Arc<SessionConfig>,
    pub backend: BackendTarget,
    /// Connection limits in all, per client and per network, eviction:
    /// the listener harness's, as for `seal`.
    pub limits: Limits,
    /// Per-line and per-message client deadlines, shorter under stress
    /// (RFC 5321 §4.5.3.2.7, Postfix's `smtpd_min_data_rate`).
    pub timeouts: Timeouts,
    /// How long the backend may take to reply, and to take what it is
    /// sent (RFC 5321 §4.5.3.2.6: 10 minutes).
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
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            backend_timeout: crate::smtp::limits::REPLY_TIMEOUT,
            backend_connect_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }

    /// The listener harness settings.
    pub fn harness(&self) -> server::Settings {
        server::Settings {
            limits: self.limits.clone(),
            timeouts: self.timeouts,
            shutdown_grace: self.shutdown_grace,
            hostname: self.session.hostname.clone(),
            refusal: None,
        }
    }
}

/// Runs the sidecar on `listener` until `shutdown` completes, then lets the
/// running sessions finish for up to `shutdown_grace` (see [`server`]).
pub async fn run(
    listener: TcpListener,
    config: InboundConfig,
    tls: Arc<ServerTls>,
    shutdown: impl Future<Output = ()>,
) {
    let harness = config.harness();
    let shared = Arc::new(connection::Shared { config, tls });
    if let Ok(addr) = listener.local_addr() {
        let config = &shared.config;
        log!(
            "listening on {addr} backend={} identity={} require_tls={} {}",
            config.backend,
            config.session.identity.as_str(),
            config.session.require_tls,
            shared.tls.describe()
        );
    }
    // One single-threaded runtime per core (see `server::run_threads`), or
    // as many as tokio's own knob says.
    let threads = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    server::run_threads(
        listener,
        threads,
        harness,
        shutdown,
        // The session's future itself, not an `async` block awaiting it:
        // a block keeps what it captured (the socket, the control) beside
        // the future it awaits, in every session's task.
        move |tcp, peer, control| {
            use futures_util::future::Either;
            let Some(client) = peer else {
                return Either::Left(std::future::ready(()));
            };
            let local = tcp.local_addr().unwrap_or(client);
            Either::Right(connection::serve(
                tcp,
                client,
                local,
                Arc::clone(&shared),
                control,
            ))
        },
    )
    .await;
}
