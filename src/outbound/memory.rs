//! What delivery remembers between runs: MX hosts whose TLS handshake failed.
//!
//! Postfix's rule, kept here: when a host offers STARTTLS but the handshake
//! fails, the delivery is deferred; a later attempt to that host goes in
//! plaintext only once a backoff has passed since the failure (and only where
//! policy allows plaintext). One small file per host in the state directory,
//! holding the Unix time of the failure; written atomically
//! (`state::replace`).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The TLS-failure memory. Without a state directory nothing is remembered,
/// so plaintext fallback never happens (the safe side).
#[derive(Debug, Clone)]
pub struct TlsMemory {
    dir: Option<PathBuf>,
    backoff: Duration,
}

impl TlsMemory {
    pub fn new(state_dir: Option<PathBuf>, backoff: Duration) -> Self {
        let dir = state_dir.map(|d| d.join("tls-failures"));
        TlsMemory { dir, backoff }
    }

    fn file(&self, host: &str) -> Option<PathBuf> {
        let name = crate::state::daily::safe_name(host);
        self.dir.as_ref().map(|d| d.join(name))
    }

    /// Records that the handshake with `host` failed now.
    pub fn record_failure(&self, host: &str) -> std::io::Result<()> {
        let Some(file) = self.file(host) else {
            return Ok(());
        };
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Keep the first failure time while failures go on, so the backoff
        // runs from when TLS first broke.
        if file.exists() {
            return Ok(());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        crate::state::replace::replace(&file, format!("{now}\n").as_bytes(), 0o644)
    }

    /// Forgets a failure once TLS to `host` works again.
    pub fn clear(&self, host: &str) {
        if let Some(file) = self.file(host) {
            let _ = std::fs::remove_file(file);
        }
    }

    /// Whether the next attempt to `host` should skip STARTTLS: a recorded
    /// failure at least `backoff` old.
    pub fn plaintext_due(&self, host: &str) -> bool {
        let Some(file) = self.file(host) else {
            return false;
        };
        let Ok(text) = std::fs::read_to_string(file) else {
            return false;
        };
        let Ok(failed_at) = text.trim().parse::<u64>() else {
            return false;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        now.saturating_sub(failed_at) >= self.backoff.as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_failures_across_instances() {
        let dir = std::env::temp_dir().join(format!("bp-mem-{}", std::process::id()));
        let now = TlsMemory::new(Some(dir.clone()), Duration::from_secs(0));
        let later = TlsMemory::new(Some(dir.clone()), Duration::from_secs(3600));
        assert!(!now.plaintext_due("mx.example"));
        now.record_failure("MX.example").unwrap();
        assert!(now.plaintext_due("mx.example"), "backoff 0 has passed");
        assert!(
            !later.plaintext_due("mx.example"),
            "backoff of an hour has not"
        );
        now.clear("mx.example");
        assert!(!now.plaintext_due("mx.example"));
        assert!(!TlsMemory::new(None, Duration::ZERO).plaintext_due("x"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
