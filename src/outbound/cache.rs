//! MX sessions kept open between the transactions of the SMTP proxy
//! (`blackpony outbound --protocol smtp`), as Postfix's connection cache
//! does (`smtp_connection_cache_time_limit` = 2 s): the next transaction to
//! the same domain within that time skips the TCP, TLS or XPONY handshake
//! and the EHLO. Keyed by recipient domain, so a session is only reused
//! under the policy it was opened under.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connection::Connection;
use crate::smtp::EhloReply;

/// How long a session may wait for its next transaction.
pub const IDLE_TIME: Duration = Duration::from_secs(2);
/// Transactions per session at most (then it is closed and opened anew).
pub const MAX_USES: u32 = 100;

/// An open session between transactions.
pub(crate) struct IdleSession {
    pub(crate) conn: Connection,
    pub(crate) caps: EhloReply,
    /// Transactions it has carried.
    pub(crate) uses: u32,
    since: Instant,
}

/// The idle sessions, by domain; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct IdleSessions {
    by_domain: Arc<Mutex<HashMap<String, Vec<IdleSession>>>>,
}

impl IdleSessions {
    /// Keeps `conn` for the next transaction to `domain`; it is closed
    /// with QUIT if none comes within [`IDLE_TIME`].
    pub(crate) fn put(&self, domain: &str, conn: Connection, caps: EhloReply, uses: u32) {
        if uses >= MAX_USES {
            tokio::spawn(quit(conn));
            return;
        }
        let idle = IdleSession {
            conn,
            caps,
            uses,
            since: Instant::now(),
        };
        if let Ok(mut map) = self.by_domain.lock() {
            map.entry(domain.to_string()).or_default().push(idle);
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(IDLE_TIME + Duration::from_millis(50)).await;
            this.close_expired().await;
        });
    }

    /// The most recently used idle session to `domain`, if one is still
    /// fresh.
    pub(crate) fn take(&self, domain: &str) -> Option<IdleSession> {
        let mut map = self.by_domain.lock().ok()?;
        let list = map.get_mut(domain)?;
        let idle = list.pop();
        if list.is_empty() {
            map.remove(domain);
        }
        idle.filter(|i| i.since.elapsed() < IDLE_TIME)
    }

    /// Says QUIT to every session that waited too long.
    async fn close_expired(&self) {
        let expired: Vec<IdleSession> = match self.by_domain.lock() {
            Ok(mut map) => {
                let mut out = Vec::new();
                for list in map.values_mut() {
                    let (old, fresh): (Vec<_>, Vec<_>) = std::mem::take(list)
                        .into_iter()
                        .partition(|i| i.since.elapsed() >= IDLE_TIME);
                    *list = fresh;
                    out.extend(old);
                }
                map.retain(|_, list| !list.is_empty());
                out
            }
            Err(_) => Vec::new(),
        };
        for idle in expired {
            quit(idle.conn).await;
        }
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
