//! The outbound transport (`deliver`, `lmtp`, `outbound`): its flags merged
//! with the `[outbound]` section.

use std::path::PathBuf;

use super::config::OutboundFile;
use super::error::ConfigError;

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
