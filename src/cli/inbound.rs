//! `blackpony inbound`: its flags merged with the `[inbound]` section.

use super::config::{CommandLine, InboundFile};
use super::error::ConfigError;
use super::{BareNewlinesArg, InboundArgs, InboundSettings};
use crate::inbound::InboundConfig;

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
    use crate::cli::config::FileConfig;
    use crate::inbound::BackendTarget;
    use crate::inbound::Identity;

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
