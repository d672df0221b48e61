//! The serving flags every listening role shares (`blackpony inbound`,
//! `blackpony seal`): how many connections, how long a client may take,
//! how long the drain after SIGTERM lasts. One definition, so the flag
//! names, defaults and help cannot drift apart between the roles.

use std::time::Duration;

use clap::Args;

use super::error::ConfigError;
use super::values::seconds;
use crate::server::{Limits, Timeouts};

/// Flags for how a listening role serves its clients. Each can also be set
/// in the role's config file section, spelled with underscores.
#[derive(Debug, Args, Default, Clone, PartialEq, Eq)]
pub struct ServingArgs {
    /// Most client connections at once; more get 421 4.3.2 (per-client
    /// limits: 421 4.7.0) [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most connections at once from one client address [default: 50].
    #[arg(long, value_name = "N")]
    pub max_connections_per_client: Option<usize>,

    /// Seconds a client may take for one command line, and the base time of
    /// a message, before 421 4.4.2; bytes trickling in do not extend it
    /// [default: 300, RFC 5321 §4.5.3.2].
    #[arg(long, value_name = "SECONDS")]
    pub client_timeout: Option<u64>,

    /// After SIGTERM, seconds running sessions may take to finish; then each
    /// gets 421 4.3.2 [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub shutdown_timeout: Option<u64>,
}

impl ServingArgs {
    /// Flags win over the file, field by field.
    pub fn or(self, file: ServingArgs) -> ServingArgs {
        ServingArgs {
            max_connections: self.max_connections.or(file.max_connections),
            max_connections_per_client: self
                .max_connections_per_client
                .or(file.max_connections_per_client),
            client_timeout: self.client_timeout.or(file.client_timeout),
            shutdown_timeout: self.shutdown_timeout.or(file.shutdown_timeout),
        }
    }

    /// The times given are ones a clock can add (a year at most).
    pub fn check(&self) -> Result<(), ConfigError> {
        seconds("--client-timeout", self.client_timeout)?;
        seconds("--shutdown-timeout", self.shutdown_timeout)?;
        Ok(())
    }

    /// Sets what was given in the harness settings every serving role
    /// keeps; the rest keeps the role's defaults. A limit or a client
    /// timeout of 0 would refuse everyone: it counts as 1.
    pub fn apply(
        &self,
        limits: &mut Limits,
        timeouts: &mut Timeouts,
        shutdown_grace: &mut Duration,
    ) {
        if let Some(n) = self.max_connections {
            limits.max_connections = n.max(1);
        }
        if let Some(n) = self.max_connections_per_client {
            limits.per_client = n.max(1);
        }
        if let Some(s) = self.client_timeout {
            timeouts.line = Duration::from_secs(s.max(1));
        }
        if let Some(s) = self.shutdown_timeout {
            *shutdown_grace = Duration::from_secs(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(args: &ServingArgs) -> (usize, usize, Duration, Duration) {
        let (mut limits, mut timeouts) = (Limits::default(), Timeouts::default());
        let mut grace = Duration::from_secs(30);
        args.apply(&mut limits, &mut timeouts, &mut grace);
        (
            limits.max_connections,
            limits.per_client,
            timeouts.line,
            grace,
        )
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_defaults() {
        let flags = ServingArgs {
            max_connections: Some(7),
            ..ServingArgs::default()
        };
        let file = ServingArgs {
            max_connections: Some(20),
            client_timeout: Some(60),
            ..ServingArgs::default()
        };
        let merged = flags.or(file);
        let secs = Duration::from_secs;
        assert_eq!(applied(&merged), (7, 50, secs(60), secs(30)));
        assert_eq!(
            applied(&ServingArgs::default()),
            (1000, 50, secs(300), secs(30))
        );
        // Zero limits and a zero client timeout are one; a zero drain is none.
        let zero = ServingArgs {
            max_connections: Some(0),
            max_connections_per_client: Some(0),
            client_timeout: Some(0),
            shutdown_timeout: Some(0),
        };
        assert_eq!(applied(&zero), (1, 1, secs(1), secs(0)));
    }
}
