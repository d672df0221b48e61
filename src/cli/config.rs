//! The TOML config file (`--config /etc/blackpony/blackpony.toml`) and its
//! merge with command-line flags. Unknown keys are errors: a typo in a mail
//! server's config should stop it, not be ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{BareNewlinesArg, InboundArgs, InboundSettings};
use crate::inbound::{Identity, InboundConfig};

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("config file {0}: {1}")]
    Parse(PathBuf, Box<toml::de::Error>),
    #[error("{0}")]
    Missing(&'static str),
    #[error("{0}: {1}")]
    Invalid(String, String),
}

/// The whole file: one section per role.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub inbound: Option<InboundFile>,
    pub outbound: Option<OutboundFile>,
    pub fetch: Option<super::fetch::FetchFile>,
    pub seal: Option<super::seal::SealFile>,
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
    /// MTA-STS lookups (`--no-mta-sts`: false).
    pub mta_sts: Option<bool>,
    #[serde(default)]
    pub domains: std::collections::HashMap<String, crate::outbound::TlsPolicy>,
    /// `[outbound.mta_sts_domains]`: MTA-STS on or off per domain.
    #[serde(default)]
    pub mta_sts_domains: std::collections::HashMap<String, bool>,
}

/// Flags win over the file; the file wins over the defaults.
pub fn merge_outbound(
    args: super::OutboundArgs,
    file: OutboundFile,
) -> Result<super::OutboundSettings, ConfigError> {
    let helo_name = args
        .helo_name
        .or(file.helo_name)
        .unwrap_or_else(super::sys::system_hostname);
    if helo_name.is_empty()
        || helo_name
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b"-._[]:".contains(&b)))
    {
        return Err(ConfigError::Invalid(
            "--helo-name".into(),
            format!("{helo_name:?} is not a host name"),
        ));
    }
    let policy = crate::outbound::PolicyTable {
        default: args
            .tls_policy
            .or(file.tls_policy)
            .unwrap_or(crate::outbound::TlsPolicy::May),
        domains: file
            .domains
            .into_iter()
            .map(|(d, p)| (d.to_ascii_lowercase(), p))
            .collect(),
    };
    let state_dir = args
        .state_dir
        .or(file.state_dir)
        .unwrap_or_else(crate::outbound::deliver::default_state_dir);
    let dnssec = match args.dnssec.or(file.dnssec).as_deref() {
        None | Some("off") => crate::outbound::dns::DnssecMode::Off,
        Some("root") => crate::outbound::dns::DnssecMode::Root,
        Some(path) => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(ConfigError::Invalid(
                    "--dnssec".into(),
                    format!(
                        "{} is not a file of trust anchors (or root, off)",
                        path.display()
                    ),
                ));
            }
            crate::outbound::dns::DnssecMode::Anchors(path)
        }
    };
    Ok(super::OutboundSettings {
        dns: args.dns.or(file.dns),
        dnssec,
        policy,
        helo_name,
        state_dir: Some(state_dir),
        smtp_port: args.smtp_port.unwrap_or(25),
        tls_backoff: super::secs(args.tls_backoff.or(file.tls_backoff).unwrap_or(300)),
        tls_ca_file: args.tls_ca_file.or(file.tls_ca_file),
        host_key: args.host_key.or(file.host_key),
        xpony: !args.no_xpony && file.xpony.unwrap_or(true),
        max_message_size: file.max_message_size.unwrap_or(64 * 1024 * 1024),
        refuse_address_literals: args.refuse_address_literals
            || file.refuse_address_literals.unwrap_or(false),
        max_connections: file.max_connections.unwrap_or(20),
        sts: super::sts::settings(&args.sts, file.mta_sts, file.mta_sts_domains),
    })
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
    fn argv(self) -> Vec<String> {
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

/// Flags win over the file; the file wins over the defaults.
pub fn merge_inbound(args: InboundArgs, file: InboundFile) -> Result<InboundSettings, ConfigError> {
    let file_load = super::load::LoadArgs::from_file(&file);
    let error_limits = args.error_limits.merge(&file)?;
    let identity = args.identity.or(file.identity).ok_or(ConfigError::Missing(
        "--identity is required: how the MTA learns the real client address \
         (proxy-v2, proxy-v1, xclient, exec, or none; see --help)",
    ))?;
    let command = args
        .backend_command
        .map(|s| s.split_whitespace().map(String::from).collect())
        .or(file.backend_command.map(CommandLine::argv));
    let backend = super::backend_target(identity, args.backend.or(file.backend), command)?;

    let tls_cert = match (
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(ConfigError::Missing(
                "tls_cert and tls_key go together: give both or neither",
            ));
        }
    };
    let hostname = args
        .hostname
        .or(file.hostname)
        .unwrap_or_else(super::sys::system_hostname);
    if hostname.is_empty()
        || hostname
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b"-._".contains(&b)))
    {
        return Err(ConfigError::Invalid(
            "--hostname".into(),
            format!("{hostname:?} is not a host name"),
        ));
    }
    let bare = args
        .bare_newlines
        .or(file.bare_newlines)
        .unwrap_or(BareNewlinesArg::Normalize);
    let pony = match args.host_key.or(file.host_key) {
        Some(path) => {
            let key = crate::pony::keys::load_file(&path)
                .map_err(|e| ConfigError::Invalid("--host-key".into(), e.to_string()))?;
            Some(std::sync::Arc::new(
                crate::pony::negotiation::ServerIdentity {
                    key,
                    hints: crate::pony::negotiation::ServerHints {
                        max_age: args
                            .xpony_max_age
                            .or(file.xpony_max_age)
                            .unwrap_or(2_592_000),
                        successor: None,
                        hostname: Some(hostname.clone()),
                    },
                },
            ))
        }
        None => None,
    };
    let session = crate::inbound::SessionConfig {
        hostname,
        identity,
        require_tls: args.require_tls || file.require_tls.unwrap_or(false),
        bare_newlines: bare.into(),
        trace_header: !args.no_trace_header && file.trace_header.unwrap_or(true),
        pony,
        error_limits,
    };
    let mut config = InboundConfig::new(session, backend);
    if let Some(n) = args.max_connections.or(file.max_connections) {
        config.max_connections = n.max(1);
    }
    if let Some(n) = args
        .max_connections_per_client
        .or(file.max_connections_per_client)
    {
        config.max_connections_per_client = n.max(1);
    }
    if let Some(s) = args.client_timeout.or(file.client_timeout) {
        config.client_timeout = super::secs(s.max(1));
    }
    if let Some(s) = args.backend_timeout.or(file.backend_timeout) {
        config.backend_timeout = super::secs(s.max(1));
    }
    if let Some(s) = args.shutdown_timeout.or(file.shutdown_timeout) {
        config.shutdown_grace = super::secs(s);
    }
    let listen_backlog = super::load::merge(args.load, file_load, &mut config);
    Ok(InboundSettings {
        listen_backlog,
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "0.0.0.0:25".to_string()),
        tls_cert,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::BackendTarget;

    #[test]
    fn file_then_flags() {
        let file = FileConfig::parse(
            r#"
            [inbound]
            listen = "127.0.0.1:2525"
            backend = "127.0.0.1:10025"
            identity = "xclient"
            hostname = "mx.example.org"
            bare_newlines = "reject"
            max_connections = 10
            "#,
        )
        .unwrap();
        let args = InboundArgs {
            identity: Some(Identity::ProxyV2),
            max_connections: Some(20),
            ..Default::default()
        };
        let s = merge_inbound(args, file.inbound.unwrap()).unwrap();
        assert_eq!(s.listen, "127.0.0.1:2525");
        assert_eq!(s.config.session.identity, Identity::ProxyV2);
        assert_eq!(s.config.session.hostname, "mx.example.org");
        assert_eq!(
            s.config.session.bare_newlines,
            crate::smtp::BareNewlines::Reject
        );
        assert_eq!(s.config.max_connections, 20);
        assert!(s.config.session.trace_header);
        assert_eq!(
            s.config.backend,
            BackendTarget::Tcp("127.0.0.1:10025".into())
        );
    }

    #[test]
    fn mistakes_are_errors() {
        assert!(FileConfig::parse("[inbound]\nlisten_addr = \"x\"\n").is_err());
        assert!(FileConfig::parse("[inbound]\nidentity = \"proxy-v3\"\n").is_err());
        let no_identity = InboundArgs {
            backend: Some("127.0.0.1:1".into()),
            ..Default::default()
        };
        assert!(matches!(
            merge_inbound(no_identity, InboundFile::default()),
            Err(ConfigError::Missing(_))
        ));
        let exec_without_command = InboundArgs {
            identity: Some(Identity::Exec),
            ..Default::default()
        };
        assert!(merge_inbound(exec_without_command, InboundFile::default()).is_err());
        let exec = FileConfig::parse(
            "[inbound]\nidentity = \"exec\"\nbackend_command = [\"/bin/qmail-smtpd\", \"-x\"]\n",
        )
        .unwrap();
        let s = merge_inbound(InboundArgs::default(), exec.inbound.unwrap()).unwrap();
        assert_eq!(
            s.config.backend,
            BackendTarget::Exec(vec!["/bin/qmail-smtpd".into(), "-x".into()])
        );
    }
}
