//! The TOML config file (`--config /etc/blackpony/blackpony.toml`): one
//! section per role. Unknown keys are errors: a typo in a mail server's
//! config should stop it, not be ignored. Each role's merge with its flags
//! is in the role's own file (`inbound.rs`, `outbound.rs`, `fetch.rs`,
//! `seal.rs`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::ConfigError;
use super::values::BareNewlinesArg;
use crate::inbound::Identity;

/// The whole file: one section per role.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub inbound: Option<InboundFile>,
    pub outbound: Option<OutboundFile>,
    pub fetch: Option<super::fetch::FetchFile>,
    pub seal: Option<super::seal::SealFile>,
    pub tlsrpt: Option<TlsrptFile>,
}

/// The `[outbound]` section, and `[outbound.domains]` with a TLS policy per
/// destination domain (`"bank.example" = "verify"`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundFile {
    pub dns: Option<std::net::SocketAddr>,
    pub dnssec: Option<String>,
    pub tls_policy: Option<crate::outbound::TlsPolicy>,
    pub helo_name: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub tls_backoff: Option<u64>,
    pub tls_ca_file: Option<PathBuf>,
    pub host_key: Option<PathBuf>,
    pub xpony: Option<bool>,
    pub max_message_size: Option<u64>,
    pub refuse_address_literals: Option<bool>,
    /// `blackpony outbound` only (`--max-connections`).
    pub max_connections: Option<usize>,
    /// `blackpony outbound` only (`--max-message-memory`).
    pub max_message_memory: Option<u64>,
    /// MTA-STS lookups (`--no-mta-sts`: false).
    pub mta_sts: Option<bool>,
    #[serde(default)]
    pub domains: std::collections::HashMap<String, crate::outbound::TlsPolicy>,
    /// `[outbound.mta_sts_domains]`: MTA-STS on or off per domain.
    #[serde(default)]
    pub mta_sts_domains: std::collections::HashMap<String, bool>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        Self::parse(&text).map_err(|e| ConfigError::Parse(path.to_path_buf(), Box::new(e)))
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

/// A command given as one string (split on white space) or as a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CommandLine {
    Line(String),
    Argv(Vec<String>),
}

impl CommandLine {
    pub fn argv(self) -> Vec<String> {
        match self {
            CommandLine::Line(s) => s.split_whitespace().map(String::from).collect(),
            CommandLine::Argv(v) => v,
        }
    }
}

/// The `[inbound]` section: the same names as the flags, with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundFile {
    pub listen: Option<String>,
    pub backend: Option<String>,
    pub backend_command: Option<CommandLine>,
    pub identity: Option<Identity>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub require_tls: Option<bool>,
    pub hostname: Option<String>,
    pub bare_newlines: Option<BareNewlinesArg>,
    pub trace_header: Option<bool>,
    pub host_key: Option<PathBuf>,
    pub xpony_max_age: Option<u32>,
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub client_timeout: Option<u64>,
    pub backend_timeout: Option<u64>,
    pub shutdown_timeout: Option<u64>,
    pub listen_backlog: Option<u32>,
    pub max_connections_per_network: Option<usize>,
    pub stress_client_timeout: Option<u64>,
    pub min_data_rate: Option<u64>,
    pub evict_idle: Option<u64>,
    pub soft_error_limit: Option<u32>,
    pub hard_error_limit: Option<u32>,
}

impl InboundFile {
    /// The serving settings of this section, as flags would give them.
    pub fn serving(&self) -> super::serving::ServingArgs {
        super::serving::ServingArgs {
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            client_timeout: self.client_timeout,
            shutdown_timeout: self.shutdown_timeout,
        }
    }
}

/// The `[tlsrpt]` section: what stays the same from one day's run to the
/// next (who reports, and the key that signs the mail).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsrptFile {
    pub organization: Option<String>,
    pub contact: Option<String>,
    pub dkim_key: Option<PathBuf>,
    pub dkim_selector: Option<String>,
    pub dkim_domain: Option<String>,
}
