//! `blackpony inbound`: its flags, merged with the `[inbound]` section, and
//! how it starts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::config::{CommandLine, InboundFile};
use super::error::{ConfigError, exit_for, fail};
use super::values::{BareNewlinesArg, seconds};
use super::{error_limits, load, notify, serving, sys};
use crate::inbound::{BackendTarget, Identity, InboundConfig};
use crate::sysexits::Exit;
use crate::transport::ServerTls;

/// Flags of `blackpony inbound`. Every one can also be set in the config
/// file's `[inbound]` section, spelled with underscores.
#[derive(Debug, Args, Default)]
pub struct InboundArgs {
    /// Address to accept SMTP clients on [default: 0.0.0.0:25]. Ignored when
    /// systemd passes a listening socket (socket activation).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,

    /// Where the local MTA listens: `127.0.0.1:10025` or `unix:/path`. Its
    /// replies are what clients see, and only it accepts mail.
    #[arg(long, value_name = "ADDR:PORT")]
    pub backend: Option<String>,

    /// With `--identity exec`: the SMTP server program to start for each
    /// client, speaking SMTP on its stdin/stdout (e.g. /var/qmail/bin/qmail-smtpd).
    #[arg(long, value_name = "COMMAND")]
    pub backend_command: Option<String>,

    /// How the MTA learns the real client address, so it does not extend its
    /// trust in localhost to the internet:
    /// proxy-v2 / proxy-v1 = PROXY header (Postfix smtpd_upstream_proxy_protocol
    /// = haproxy, Exim hosts_proxy, OpenSMTPD proxy-v2);
    /// xclient = Postfix smtpd_authorized_xclient_hosts;
    /// exec = start --backend-command per client with TCPREMOTEIP etc. (qmail);
    /// none = tell it nothing: ONLY for an MTA configured not to trust the
    /// sidecar's address, otherwise it becomes an open relay.
    #[arg(long, value_enum, value_name = "MODE")]
    pub identity: Option<Identity>,

    /// PEM certificate chain for STARTTLS. Without one a self-signed
    /// certificate for --hostname is made at start. Re-read on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Refuse MAIL, RCPT, DATA and other mail commands before STARTTLS
    /// (530 5.7.0). Only sensible where every client can do TLS.
    #[arg(long)]
    pub require_tls: bool,

    /// The name this host gives in replies and trace headers
    /// [default: the system host name].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// What to do with a bare CR or LF in a message: `normalize` rewrites it
    /// to CRLF, `reject` refuses the message with 550 5.6.11. Either way only
    /// CRLF.CRLF ends a message (SMTP smuggling defence), and a message with
    /// a NUL is refused with 550 5.6.0.
    #[arg(long, value_enum, value_name = "POLICY")]
    pub bare_newlines: Option<BareNewlinesArg>,

    /// Do not add the `Received:` header that records whether TLS was used.
    #[arg(long)]
    pub no_trace_header: bool,

    /// Host key for the blackpony extension (from `blackpony keygen`). With
    /// it, blackpony offers XPONY: another blackpony host then encrypts with
    /// Noise and remembers this host's key.
    #[arg(long, value_name = "FILE")]
    pub host_key: Option<PathBuf>,

    /// How long (seconds) peers should keep this host's key pinned; 0 asks
    /// them not to pin [default: 2592000, 30 days].
    #[arg(long, value_name = "SECONDS")]
    pub xpony_max_age: Option<u32>,

    #[command(flatten)]
    pub serving: serving::ServingArgs,

    /// Seconds the MTA may take to answer before the client gets 421 [default: 600].
    #[arg(long, value_name = "SECONDS")]
    pub backend_timeout: Option<u64>,

    #[command(flatten)]
    pub load: load::LoadArgs,

    #[command(flatten)]
    pub error_limits: error_limits::ErrorLimitArgs,
}

/// `blackpony inbound`: the sidecar, until SIGTERM.
pub fn run(args: InboundArgs, file: InboundFile, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let settings = match merge_inbound(args, file) {
        Ok(s) => s,
        Err(e) => return fail(exit_for(&e), &e.to_string()),
    };
    runtime.block_on(serve(settings))
}

/// Flags win over the file; the file wins over the defaults.
pub fn merge_inbound(args: InboundArgs, file: InboundFile) -> Result<InboundSettings, ConfigError> {
    let file_load = load_from_file(&file);
    let serving = args.serving.clone().or(file.serving());
    serving.check()?;
    args.load.clone().or(file_load.clone()).check()?;
    let backend_timeout = seconds(
        "--backend-timeout",
        args.backend_timeout.or(file.backend_timeout),
    )?;
    let error_limits = args.error_limits.merge(&file)?;
    let identity = args.identity.or(file.identity).ok_or(ConfigError::Missing(
        "--identity is required: how the MTA learns the real client address \
         (proxy-v2, proxy-v1, xclient, exec, or none; see --help)",
    ))?;
    let command = args
        .backend_command
        .map(|s| s.split_whitespace().map(String::from).collect())
        .or(file.backend_command.map(CommandLine::argv));
    let backend = backend_target(identity, args.backend.or(file.backend), command)?;

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
    let hostname = super::values::host_name(
        "--hostname",
        args.hostname
            .or(file.hostname)
            .unwrap_or_else(sys::system_hostname),
        b"",
    )?;
    let bare = args
        .bare_newlines
        .or(file.bare_newlines)
        .unwrap_or(BareNewlinesArg::Normalize);
    let pony = match args.host_key.or(file.host_key) {
        Some(path) => Some(
            super::values::server_identity(
                &path,
                args.xpony_max_age.or(file.xpony_max_age),
                &hostname,
            )
            .map_err(|e| ConfigError::Invalid("--host-key".into(), e))?,
        ),
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
    serving.apply(
        &mut config.limits,
        &mut config.timeouts,
        &mut config.shutdown_grace,
    );
    if let Some(s) = backend_timeout {
        config.backend_timeout = Duration::from_secs(s.max(1));
    }
    let load = args.load.or(file_load);
    load.apply(&mut config.limits, &mut config.timeouts);
    let listen_backlog = load.listen_backlog.map(|n| n.max(1));
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

/// Settings of `blackpony inbound` after merging flags and file.
#[derive(Debug)]
pub struct InboundSettings {
    pub listen: String,
    /// The accept queue (None: the system's maximum).
    pub listen_backlog: Option<u32>,
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    pub config: InboundConfig,
}

async fn serve(settings: InboundSettings) -> ExitCode {
    let hostname = settings.config.session.hostname.clone();
    let tls = match &settings.tls_cert {
        Some((cert, key)) => ServerTls::from_pem_files(cert, key),
        None => ServerTls::self_signed(&hostname),
    };
    let tls = match tls {
        Ok(t) => Arc::new(t),
        Err(e) => return fail(Exit::Config, &e.to_string()),
    };
    load::prepare(&settings.config);
    let listener = match sys::listener(&settings.listen, settings.listen_backlog).await {
        Ok(l) => l,
        Err(e) => return fail(Exit::OsErr, &e),
    };

    // SIGHUP reloads the certificate; SIGTERM and SIGINT stop gracefully.
    sys::spawn_reload_on_hup(Arc::clone(&tls));
    let shutdown = sys::shutdown_signal();
    notify::ready(
        &listener
            .local_addr()
            .map_or(settings.listen, |a| a.to_string()),
    );
    crate::inbound::run(listener, settings.config, tls, shutdown).await;
    ExitCode::SUCCESS
}

fn backend_target(
    identity: Identity,
    backend: Option<String>,
    command: Option<Vec<String>>,
) -> Result<BackendTarget, ConfigError> {
    if identity == Identity::Exec {
        let argv = command.ok_or(ConfigError::Missing(
            "--identity exec needs --backend-command (the SMTP server program to start per client)",
        ))?;
        if argv.is_empty() {
            return Err(ConfigError::Missing("--backend-command is empty"));
        }
        return Ok(BackendTarget::Exec(argv));
    }
    if command.is_some() {
        return Err(ConfigError::Invalid(
            "--backend-command".into(),
            "only used with --identity exec".into(),
        ));
    }
    let backend = backend.ok_or(ConfigError::Missing(
        "--backend is required (where the local MTA listens, e.g. 127.0.0.1:10025)",
    ))?;
    Ok(match backend.strip_prefix("unix:") {
        Some(path) => BackendTarget::Unix(PathBuf::from(path)),
        None => BackendTarget::Tcp(backend),
    })
}

/// The harness settings of the config file's `[inbound]` section, as flags
/// (here, not in load.rs: the load settings stay below the file's sections).
fn load_from_file(file: &super::config::InboundFile) -> super::load::LoadArgs {
    super::load::LoadArgs {
        listen_backlog: file.listen_backlog,
        max_connections_per_network: file.max_connections_per_network,
        stress_client_timeout: file.stress_client_timeout,
        min_data_rate: file.min_data_rate,
        evict_idle: file.evict_idle,
    }
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
            serving: serving::ServingArgs {
                max_connections: Some(20),
                ..Default::default()
            },
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
        assert_eq!(s.config.limits.max_connections, 20);
        assert!(s.config.session.trace_header);
        assert_eq!(
            s.config.backend,
            BackendTarget::Tcp("127.0.0.1:10025".into())
        );
    }

    /// A time no clock can add (2^63 seconds) is refused with the
    /// setting's name when the settings are read, not met as a panic at
    /// the first session that waits; a year is the most.
    #[test]
    fn times_over_a_year_are_refused() {
        for (key, flag) in [
            ("client_timeout", "--client-timeout"),
            ("shutdown_timeout", "--shutdown-timeout"),
            ("backend_timeout", "--backend-timeout"),
            ("stress_client_timeout", "--stress-client-timeout"),
            ("evict_idle", "--evict-idle"),
        ] {
            for (value, ok) in [
                ("31536000", true),
                ("31536001", false),
                ("9223372036854775807", false),
            ] {
                let file = FileConfig::parse(&format!(
                    "[inbound]\nidentity = \"xclient\"\nbackend = \"127.0.0.1:10025\"\n{key} = {value}\n"
                ))
                .unwrap();
                match merge_inbound(InboundArgs::default(), file.inbound.unwrap()) {
                    Ok(_) => assert!(ok, "{key} = {value} taken"),
                    Err(ConfigError::Invalid(name, why)) => {
                        assert!(!ok, "{key} = {value}: {why}");
                        assert_eq!(name, flag);
                    }
                    Err(e) => panic!("{key} = {value}: {e}"),
                }
            }
        }
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
