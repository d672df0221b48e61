//! MX sessions kept open between transactions, in every outbound mode
//! (`outbound --protocol smtp` and `--protocol lmtp`, `lmtp`), as Postfix's
//! connection cache does (`smtp_connection_cache_time_limit` = 2 s): the
//! next transaction to the same destination within that time skips the DNS
//! lookups, the TCP, TLS or XPONY handshake and the EHLO, and starts with
//! RSET (the probe that finds a session the server closed meanwhile).
//!
//! A kept session is only reused for a delivery whose TLS policy it
//! satisfies. The key is the recipient domain *and* its configured policy
//! ([`Destination`]), the same for the delivery that keeps a session and
//! the one that looks for it: a session opened under `may` is never found
//! by a delivery under `encrypt`, `verify` or a stricter level. What each
//! host then got (DANE's decision per MX host, `dane-only` for usable TLSA
//! records; MTA-STS raising a host to `verify`) is the session's own
//! (`Connection::host_tls`), and when the session is taken the level it
//! reached is checked against the delivery's policy ([`IdleSessions::take`])
//! and against what its host requires now (`mx_hosts::kept_host_policy`).
//! Sessions are not shared between domains that use the same MX host: that
//! would need the MX lookup first, and a per-host policy (DANE's TLSA
//! records are per MX host) compared as well.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connection::Connection;
use super::policy::TlsPolicy;
use crate::smtp::EhloReply;

/// How long a session may wait for its next transaction.
pub const IDLE_TIME: Duration = Duration::from_secs(2);
/// Transactions per session at most (then it is closed and opened anew).
pub const MAX_USES: u32 = 100;

/// What a kept session may be reused for: the same recipient domain under
/// the same configured TLS policy (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Destination {
    domain: String,
    policy: &'static str,
}

impl Destination {
    pub(crate) fn new(domain: &str, policy: TlsPolicy) -> Self {
        Destination {
            domain: domain.to_ascii_lowercase(),
            policy: policy.as_str(),
        }
    }
}

/// An open session between transactions.
pub(crate) struct IdleSession {
    pub(crate) conn: Connection,
    pub(crate) caps: EhloReply,
    /// Transactions it has carried.
    pub(crate) uses: u32,
    since: Instant,
}

/// The idle sessions, by destination; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct IdleSessions {
    inner: Arc<Mutex<Idle>>,
}

#[derive(Default)]
struct Idle {
    by_destination: HashMap<Destination, Vec<IdleSession>>,
    /// A task closes expired sessions while any are kept (one task, not
    /// one per kept session: a busy server keeps one per message).
    sweeping: bool,
}

impl IdleSessions {
    /// Keeps `conn` for the next transaction to `to`; it is closed with
    /// QUIT if none comes within [`IDLE_TIME`], or at once when it has
    /// carried [`MAX_USES`] transactions.
    pub(crate) fn put(&self, to: Destination, conn: Connection, caps: EhloReply, uses: u32) {
        if uses >= MAX_USES || conn.stream.is_none() {
            tokio::spawn(quit(conn));
            return;
        }
        let idle = IdleSession {
            conn,
            caps,
            uses,
            since: Instant::now(),
        };
        let start_sweeper = match self.inner.lock() {
            Ok(mut idle_map) => {
                idle_map.by_destination.entry(to).or_default().push(idle);
                !std::mem::replace(&mut idle_map.sweeping, true)
            }
            Err(_) => false,
        };
        if start_sweeper {
            let this = self.clone();
            tokio::spawn(async move { this.sweep().await });
        }
    }

    /// Closes sessions as they expire, until none is kept.
    async fn sweep(&self) {
        loop {
            let oldest = match self.inner.lock() {
                Ok(mut idle_map) => {
                    let oldest = idle_map
                        .by_destination
                        .values()
                        .flatten()
                        .map(|i| i.since)
                        .min();
                    if oldest.is_none() {
                        idle_map.sweeping = false;
                        return;
                    }
                    oldest
                }
                Err(_) => return,
            };
            if let Some(since) = oldest {
                let due = since + IDLE_TIME + Duration::from_millis(50);
                tokio::time::sleep_until(due.into()).await;
            }
            self.close_expired().await;
        }
    }

    /// The most recently used idle session to `to`, if one is still fresh
    /// and reached the level `policy` requires. Stale ones found on the
    /// way are closed with QUIT, not dropped.
    pub(crate) fn take(&self, to: &Destination, policy: TlsPolicy) -> Option<IdleSession> {
        let (found, stale) = {
            let mut idle_map = self.inner.lock().ok()?;
            let map = &mut idle_map.by_destination;
            let list = map.get_mut(to)?;
            let mut stale = Vec::new();
            let mut found = None;
            while let Some(idle) = list.pop() {
                if idle.since.elapsed() < IDLE_TIME && idle.conn.level() >= policy.required() {
                    found = Some(idle);
                    break;
                }
                stale.push(idle);
            }
            if list.is_empty() {
                map.remove(to);
            }
            (found, stale)
        };
        for idle in stale {
            tokio::spawn(quit(idle.conn));
        }
        found
    }

    /// Says QUIT to every session that waited too long.
    async fn close_expired(&self) {
        let expired = self.remove(|i| i.since.elapsed() >= IDLE_TIME);
        for idle in expired {
            quit(idle.conn).await;
        }
    }

    /// Says QUIT to every kept session (the process is about to end).
    pub async fn close_all(&self) {
        let all = self.remove(|_| true);
        futures_util::future::join_all(all.into_iter().map(|idle| quit(idle.conn))).await;
    }

    fn remove(&self, which: impl Fn(&IdleSession) -> bool) -> Vec<IdleSession> {
        let Ok(mut idle_map) = self.inner.lock() else {
            return Vec::new();
        };
        let map = &mut idle_map.by_destination;
        let mut out = Vec::new();
        for list in map.values_mut() {
            let (gone, kept): (Vec<_>, Vec<_>) =
                std::mem::take(list).into_iter().partition(|i| which(i));
            *list = kept;
            out.extend(gone);
        }
        map.retain(|_, list| !list.is_empty());
        out
    }
}

/// Ends a session politely (bounded; errors do not matter): QUIT, its
/// reply, then the end of the connection (an XPONY channel's CLOSE after
/// the 221, proto-spec §5.6; TLS's close_notify).
pub(crate) async fn quit(mut conn: Connection) {
    if let Some(stream) = conn.stream.as_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            let _ = stream.write_all(b"QUIT\r\n").await;
            let _ = stream.flush().await;
            let mut buf = [0u8; 512];
            let _ = stream.read(&mut buf).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }
}
