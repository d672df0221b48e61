//! Opening a listening socket with a deep accept queue, and making room
//! for the descriptors the sessions need.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Where the kernel keeps its cap on accept queues.
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

/// The accept queue to ask for: the system's maximum, as haproxy and nginx
/// do. A burst of connections then waits in the queue instead of being
/// dropped (or answered with SYN cookies) while slots are free. The
/// kernel caps any larger value at `net.core.somaxconn` anyway.
pub fn system_backlog() -> u32 {
    std::fs::read_to_string(SOMAXCONN)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(4096)
}

/// Binds `listen` (`ADDR:PORT`, a name is resolved) with an accept queue of
/// `backlog` (None: [`system_backlog`]).
pub async fn bind(listen: &str, backlog: Option<u32>) -> std::io::Result<TcpListener> {
    let backlog = backlog.unwrap_or_else(system_backlog);
    let mut last = None;
    for addr in tokio::net::lookup_host(listen).await? {
        match bind_one(addr, backlog) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

fn bind_one(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As std and tokio do: a restart need not wait for TIME_WAIT to pass.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The open-file limit after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit now in force (None: unlimited).
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

impl OpenFiles {
    /// Whether `needed` descriptors fit.
    pub fn holds(&self, needed: u64) -> bool {
        self.soft.is_none_or(|s| s >= needed)
    }
}

impl std::fmt::Display for OpenFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.soft {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "unlimited"),
        }
    }
}

/// Raises the soft limit on open files to the hard limit: the common
/// default soft limit of 1024 holds only ~500 sessions of two descriptors
/// each. Returns the limits in force afterwards.
pub fn raise_open_files() -> OpenFiles {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            let now = getrlimit(Resource::Nofile);
            return OpenFiles {
                soft: now.current,
                hard: now.maximum,
            };
        }
    }
    OpenFiles {
        soft: limit.current,
        hard: limit.maximum,
    }
}

/// Descriptors a server with `max_connections` sessions needs: two per
/// session (client and backend or remote) and some for the process itself.
pub fn descriptors_needed(max_connections: usize) -> u64 {
    (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_with_the_backlog_asked_for() {
        let l = bind("127.0.0.1:0", Some(7)).await.expect("bind");
        assert!(l.local_addr().expect("addr").port() != 0);
        assert!(system_backlog() >= 128);
    }

    #[test]
    fn open_files() {
        let raised = raise_open_files();
        assert_eq!(raised.soft, raised.hard, "soft raised to hard");
        let some = OpenFiles {
            soft: Some(1024),
            hard: Some(4096),
        };
        assert!(some.holds(1024) && !some.holds(descriptors_needed(1000)));
        assert!(
            OpenFiles {
                soft: None,
                hard: None
            }
            .holds(u64::MAX)
        );
    }
}
