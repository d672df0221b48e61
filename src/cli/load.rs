//! Flags for serving under load (`blackpony inbound`): the accept queue,
//! per-network limits, stress timeouts, the minimum data rate and
//! eviction; and the start-up steps that go with them.

use clap::Args;

use super::error::ConfigError;
use super::values::seconds;

use crate::inbound::InboundConfig;
use crate::log;
use crate::server::{Limits, Timeouts, listener};

/// Flags of `blackpony inbound` for hostile load. Each can also be set in
/// the config file's `[inbound]` section, spelled with underscores.
#[derive(Debug, Args, Default, Clone)]
pub struct LoadArgs {
    /// Length of the listening socket's accept queue [default: the system's
    /// maximum, /proc/sys/net/core/somaxconn]. A socket from systemd keeps
    /// the queue systemd gave it (Backlog= in the .socket unit).
    #[arg(long, value_name = "N")]
    pub listen_backlog: Option<u32>,

    /// Most connections at once from one network, an IPv4 /24 or an IPv6
    /// /64 [default: 100].
    #[arg(long, value_name = "N")]
    pub max_connections_per_network: Option<usize>,

    /// Seconds for a command line (and the base time of a message) when
    /// over 80% of the connection slots are taken [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub stress_client_timeout: Option<u64>,

    /// Octets per second a message must arrive at, at least: it gets the
    /// client timeout plus one second per this many octets [default: 500].
    #[arg(long, value_name = "OCTETS")]
    pub min_data_rate: Option<u64>,

    /// When every slot is taken, a newcomer displaces a session whose
    /// client is this many seconds behind: a command line unanswered that
    /// long since the last reply (bytes of it count for nothing), or a
    /// message that much slower than --min-data-rate (421 4.7.0). Those
    /// that never had a command answered go first, then the network
    /// holding the most slots, then the furthest behind [default: 1].
    #[arg(long, value_name = "SECONDS")]
    pub evict_idle: Option<u64>,
}

impl LoadArgs {
    /// Flags win over the file, field by field.
    pub fn or(self, file: LoadArgs) -> LoadArgs {
        LoadArgs {
            listen_backlog: self.listen_backlog.or(file.listen_backlog),
            max_connections_per_network: self
                .max_connections_per_network
                .or(file.max_connections_per_network),
            stress_client_timeout: self.stress_client_timeout.or(file.stress_client_timeout),
            min_data_rate: self.min_data_rate.or(file.min_data_rate),
            evict_idle: self.evict_idle.or(file.evict_idle),
        }
    }

    /// The times given are ones a clock can add (a year at most).
    pub fn check(&self) -> Result<(), ConfigError> {
        seconds("--stress-client-timeout", self.stress_client_timeout)?;
        seconds("--evict-idle", self.evict_idle)?;
        Ok(())
    }

    /// The harness limits and client deadlines these settings change.
    pub fn apply(&self, limits: &mut Limits, timeouts: &mut Timeouts) {
        if let Some(n) = self.max_connections_per_network {
            limits.per_network = n.max(1);
        }
        if let Some(s) = self.evict_idle {
            limits.evict_idle = std::time::Duration::from_secs(s);
        }
        if let Some(s) = self.stress_client_timeout {
            timeouts.stress_line = std::time::Duration::from_secs(s.max(1));
        }
        if let Some(n) = self.min_data_rate {
            timeouts.min_data_rate = n.max(1);
        }
    }
}

/// Raises the open-file limit and says in the log whether the sessions fit.
pub fn prepare(config: &InboundConfig) {
    prepare_limits(&config.limits, &config.timeouts);
}

/// The same for any role on the listener harness: raises the open-file
/// limit, warns when `limits` cannot fit in it, logs the limits.
pub fn prepare_limits(limits: &Limits, timeouts: &Timeouts) {
    let files = listener::raise_open_files();
    let needed = listener::descriptors_needed(limits.max_connections);
    if !files.holds(needed) {
        log!(
            "warning: open-file limit {files} cannot hold {} sessions (2 descriptors each: {needed} needed); raise LimitNOFILE or lower --max-connections",
            limits.max_connections
        );
    }
    log!(
        "limits: max_connections={} per_client={} per_network={} open_files={files} client_timeout={}s stress_client_timeout={}s min_data_rate={} evict_idle={}s",
        limits.max_connections,
        limits.per_client,
        limits.per_network,
        timeouts.line.as_secs(),
        timeouts.stress_line.as_secs(),
        timeouts.min_data_rate,
        limits.evict_idle.as_secs()
    );
}
