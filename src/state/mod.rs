//! The state-store seam: everything blackpony keeps between runs goes
//! through a small async interface here, so the on-disk layout and the
//! fsync rules live in one place and no runtime thread ever blocks on a
//! disk (each operation runs its system calls on tokio's blocking pool).
//!
//! # The sealed spool ([`spool`])
//!
//! A spool is a directory in the shape of a Maildir (the same layout
//! serves `seal --maildir-root`, one spool per mailbox):
//!
//! ```text
//! <dir>/tmp/<id>   being written; never read; removed at open (a crash's leftovers)
//! <dir>/new/<id>   published: complete, fsynced, readable by list/read/remove
//! <dir>/cur/       empty; there only so a Maildir reader accepts the directory
//! ```
//!
//! Names are [`spool::SpoolId`]s: `<unix-seconds>.<microseconds>.<random>.age`,
//! listed oldest first.
//!
//! # Durability rules (one place, here)
//!
//! 1. **Publish** writes the whole file under `tmp/` (created exclusively),
//!    `fsync`s the file, `rename`s it into `new/` and `fsync`s `new/`. Only
//!    then does `publish` return, and only then may a caller acknowledge
//!    (a 250 to SMTP, a deletion on the relay). `rename(2)` within one file
//!    system is atomic: a crash at any instant leaves either a complete
//!    file in `new/` or none (a partial file can only be in `tmp/`).
//! 2. **Remove** unlinks from `new/` and `fsync`s `new/`, so an
//!    acknowledged removal does not come back after a crash. Removing what
//!    is not there is success (a resumed transfer removes again).
//! 3. **Open** removes everything in `tmp/`: no writer of a previous
//!    process can still be running (one process per spool).
//!
//! # The MTA-STS policy cache ([`sts_cache`])
//!
//! One small file per policy domain under `<state_dir>/mta-sts/`, replaced
//! by the same write-fsync-rename-fsync rule as a publish (rule 1 above).
//!
//! # Small files replaced whole ([`replace`])
//!
//! The MTA-STS cache, XPONY pins (`<state_dir>/pins/<host>`), the TLS
//! failure memory (`<state_dir>/tls-failures/<host>`) and key files are all
//! written by [`replace::replace`]: rule 1 under a temporary name unique to
//! the file, the process and the write (`.<name>.tmp.<pid>.<n>`).
//!
//! # Room to grow
//!
//! Callers use only [`spool::Spool`]'s operations (publish, list, read,
//! remove) and treat ids as opaque names. An object store (an
//! S3-compatible service) can implement the same trait: a PUT is atomic
//! and durable when acknowledged, LIST gives the names, DELETE is
//! idempotent. Nothing outside `state/` knows about `tmp/` or `new/`.
//!
//! # Per-day records ([`daily`])
//!
//! Statistics that many processes add to at once (TLS reports, RFC 8460):
//! one file per key and UTC day, one record per line, each appended with a
//! single `write(2)` under `O_APPEND`. Not fsynced: losing the last records
//! in a crash costs a report's precision, never mail.

pub mod daily;
pub mod replace;
pub mod spool;
pub mod sts_cache;

pub use spool::{FileSpool, Spool, SpoolId};

/// What can go wrong in a state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {what}")]
    Unusable { path: String, what: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a valid spool file name: {0:?}")]
    BadId(String),
    #[error("no such spool file: {0}")]
    NotFound(String),
    #[error("the storage task failed: {0}")]
    Task(String),
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}

/// Runs blocking file-system work off the runtime's worker threads.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(StoreError::Task(e.to_string())),
    }
}

/// `fsync(2)` on a directory, so a rename or unlink in it is durable.
pub(crate) fn sync_dir(dir: &std::path::Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync directory", dir, e))
}
