//! The outbound transport (`deliver`, `lmtp`, `outbound`): the flags they
//! share, merged with the `[outbound]` section, and how each runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::net::TcpListener;

use super::config::OutboundFile;
use super::error::{ConfigError, exit_for, fail, fail_lmtp};
use super::{notify, sys};
use crate::log;
use crate::sysexits::Exit;

/// `blackpony lmtp`
#[derive(Debug, Args)]
pub struct LmtpArgs {
    #[command(flatten)]
    pub outbound: OutboundArgs,
}

/// `blackpony outbound --listen … --protocol lmtp`
#[derive(Debug, Args)]
pub struct OutboundServerArgs {
    /// Where the MTA connects: `127.0.0.1:10026` or `unix:/run/blackpony/lmtp`.
    #[arg(long, value_name = "ADDR:PORT|unix:PATH")]
    pub listen: String,

    /// The protocol spoken to the MTA. lmtp gives one result per recipient
    /// after the data (Postfix `lmtp:` transport). smtp works as a
    /// per-transaction proxy (Postfix `relayhost`/`smtp:` transport, Exim
    /// smarthost, OpenSMTPD `relay host`): every RCPT and the end of data are
    /// answered with the remote MX's own reply, one destination domain per
    /// transaction (others get 452 4.5.3 and come in the next one).
    #[arg(long, value_enum, default_value = "lmtp")]
    pub protocol: ServerProtocol,

    /// Permissions of a `unix:` socket, in octal. The MTA's delivery user
    /// (Postfix's `postfix`, Exim's `Debian-exim`) must be able to connect;
    /// restrict access with the directory's permissions or a stricter mode.
    #[arg(long, value_name = "OCTAL", default_value = "0666", value_parser = super::values::parse_octal)]
    pub socket_mode: u32,

    /// MTA connections served at once; more are answered `421 4.3.2` and
    /// closed. With max_message_size it bounds the message bytes in flight
    /// [default: 20].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Octets of messages held in memory by all MTA connections at once
    /// (those being received and those being passed on). Over it the MTA
    /// gets `452 4.3.1` (or `421 4.3.1` in the middle of a message) and
    /// sends again later; a message alone may exceed it [default: 268435456].
    #[arg(long, value_name = "OCTETS")]
    pub max_message_memory: Option<u64>,

    #[command(flatten)]
    pub outbound: OutboundArgs,
}

/// `--protocol` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerProtocol {
    Lmtp,
    Smtp,
}

impl From<ServerProtocol> for crate::smtp::server::Protocol {
    fn from(p: ServerProtocol) -> Self {
        match p {
            ServerProtocol::Lmtp => crate::smtp::server::Protocol::Lmtp,
            ServerProtocol::Smtp => crate::smtp::server::Protocol::Smtp,
        }
    }
}

/// Settings shared by every outbound mode. Each can also be set in the
/// config file's `[outbound]` section.
#[derive(Debug, Args, Default, Clone)]
pub struct OutboundArgs {
    /// Nameserver to ask for MX and address records, instead of those in
    /// /etc/resolv.conf (split DNS, tests). No search domain is ever used.
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns: Option<std::net::SocketAddr>,

    /// Validate DNS answers with DNSSEC: `root` (the IANA root trust
    /// anchors; the nameserver must pass DNSSEC records on), a file of
    /// DNSKEY records to trust (a private zone), or `off` [default: off].
    /// A validated XPONY key, named by a validated MX record, overrides pins
    /// (proto-spec §8.3 P1), TLSA records are used (policy dane); a bogus
    /// answer defers the MX host.
    #[arg(long, value_name = "root|FILE|off")]
    pub dnssec: Option<String>,

    /// TLS policy for destinations without their own: none, may (use
    /// STARTTLS when offered, any certificate), encrypt (require TLS),
    /// verify (require a certificate valid for the MX name), dane (RFC 7672:
    /// MX hosts with usable DNSSEC-validated TLSA records get TLS with a
    /// certificate that matches them, the others may; needs --dnssec),
    /// dane-only (every MX host must have them) [default: may].
    #[arg(long, value_enum, value_name = "POLICY")]
    pub tls_policy: Option<crate::outbound::TlsPolicy>,

    /// Name to give in EHLO [default: the system host name].
    #[arg(long, value_name = "NAME")]
    pub helo_name: Option<String>,

    /// Directory for what delivery remembers between runs (MX hosts whose
    /// TLS handshake failed) [default: $STATE_DIRECTORY or /var/lib/blackpony].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// SMTP port of remote MX hosts. For tests only: mail between servers
    /// uses port 25.
    #[arg(long, value_name = "PORT", hide = true)]
    pub smtp_port: Option<u16>,

    /// Seconds after a failed TLS handshake before the same MX host is tried
    /// in plaintext, where policy allows [default: 300].
    #[arg(long, value_name = "SECONDS")]
    pub tls_backoff: Option<u64>,

    /// CA certificates (PEM) trusted in addition to the Mozilla roots when
    /// judging MX certificates (policy verify): an internal CA.
    #[arg(long, value_name = "FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// Host key for the blackpony extension (from `blackpony keygen`), so
    /// servers can recognise this host. Without one, delivery still uses
    /// XPONY (with a throwaway key per process): with servers that offer it,
    /// preferred over STARTTLS, their keys pinned in the state directory,
    /// deferring when a pinned or DNS-keyed server stops offering it or
    /// changes its key.
    #[arg(long, value_name = "FILE")]
    pub host_key: Option<PathBuf>,

    /// Do not use the blackpony extension (XPONY) at all; pins and DNS keys
    /// are then ignored.
    #[arg(long)]
    pub no_xpony: bool,

    /// Refuse recipients at address literals (`bob@[192.0.2.8]`,
    /// `bob@[IPv6:2001:db8::8]`) with `550 5.7.1` instead of delivering to
    /// that address (RFC 5321 §4.1.3).
    #[arg(long)]
    pub refuse_address_literals: bool,

    #[command(flatten)]
    pub sts: super::sts::StsArgs,
}

/// `blackpony deliver -f SENDER [--] RCPT...`
#[derive(Debug, Args)]
pub struct DeliverArgs {
    /// The envelope sender. "", "<>" and MAILER-DAEMON mean the null sender.
    #[arg(
        short = 'f',
        long = "from",
        value_name = "SENDER",
        allow_hyphen_values = true
    )]
    pub sender: String,

    #[command(flatten)]
    pub outbound: OutboundArgs,

    /// The recipients.
    #[arg(value_name = "RCPT", required = true)]
    pub recipients: Vec<String>,
}

/// `blackpony deliver`: one message from standard input, delivered now;
/// the status line on standard output and the exit status for the MTA.
pub fn run_deliver(
    args: DeliverArgs,
    file: OutboundFile,
    runtime: &tokio::runtime::Runtime,
) -> ExitCode {
    let outbound = match merge_outbound(args.outbound, file) {
        Ok(o) => o,
        Err(e) => return fail(exit_for(&e), &e.to_string()),
    };
    let code = runtime.block_on(deliver(args.sender, args.recipients, outbound));
    log::flush_held();
    ExitCode::from(code)
}

/// `blackpony lmtp`: LMTP on standard input and output. A start-up
/// failure is an LMTP reply there (`error::fail_lmtp`).
pub fn run_lmtp(args: LmtpArgs, file: OutboundFile, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let outbound = match merge_outbound(args.outbound, file) {
        Ok(o) => o,
        Err(e) => return fail_lmtp(exit_for(&e), &e.to_string()),
    };
    runtime.block_on(async {
        let deliverer = match outbound.deliverer() {
            Ok(d) => d,
            Err(e) => return fail_lmtp(Exit::Config, &e),
        };
        crate::outbound::service::serve(
            crate::smtp::server::Protocol::Lmtp,
            tokio::io::stdin(),
            tokio::io::stdout(),
            &deliverer,
            outbound.max_message_size,
            None,
            None,
        )
        .await;
        // The MX sessions kept for a next message end with QUIT.
        deliverer.idle.close_all().await;
        ExitCode::SUCCESS
    })
}

/// `blackpony outbound`: the LMTP or SMTP service on a socket.
pub fn run_server(
    args: OutboundServerArgs,
    file: OutboundFile,
    runtime: &tokio::runtime::Runtime,
) -> ExitCode {
    let outbound = match merge_outbound(args.outbound, file) {
        Ok(o) => o,
        Err(e) => return fail(exit_for(&e), &e.to_string()),
    };
    runtime.block_on(serve(
        args.listen,
        args.protocol.into(),
        args.socket_mode,
        ServerBounds {
            max_connections: args.max_connections,
            max_message_memory: args.max_message_memory,
        },
        outbound,
    ))
}

/// Flags win over the file; the file wins over the defaults.
pub fn merge_outbound(
    args: OutboundArgs,
    file: OutboundFile,
) -> Result<OutboundSettings, ConfigError> {
    let helo_name = super::values::host_name(
        "--helo-name",
        args.helo_name
            .or(file.helo_name)
            .unwrap_or_else(sys::system_hostname),
        b"[]:",
    )?;
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
    Ok(OutboundSettings {
        dns: args.dns.or(file.dns),
        dnssec,
        policy,
        helo_name,
        state_dir: Some(state_dir),
        smtp_port: args.smtp_port.unwrap_or(25),
        tls_backoff: Duration::from_secs(
            super::values::seconds("--tls-backoff", args.tls_backoff.or(file.tls_backoff))?
                .unwrap_or(300),
        ),
        tls_ca_file: args.tls_ca_file.or(file.tls_ca_file),
        host_key: args.host_key.or(file.host_key),
        xpony: !args.no_xpony && file.xpony.unwrap_or(true),
        max_message_size: file.max_message_size.unwrap_or(64 * 1024 * 1024),
        refuse_address_literals: args.refuse_address_literals
            || file.refuse_address_literals.unwrap_or(false),
        max_connections: file.max_connections.unwrap_or(20),
        max_message_memory: file.max_message_memory.unwrap_or(256 * 1024 * 1024),
        sts: super::sts::settings(&args.sts, file.mta_sts, file.mta_sts_domains),
    })
}

/// Reads the message, delivers it, prints the status line; returns the exit status.
async fn deliver(sender: String, recipients: Vec<String>, settings: OutboundSettings) -> Exit {
    use tokio::io::AsyncReadExt;
    let deliverer = match settings.deliverer() {
        Ok(d) => d,
        Err(e) => {
            println!("4.3.5 blackpony: {e}");
            return Exit::TempFail;
        }
    };
    let mut message = Vec::new();
    let mut stdin = tokio::io::stdin().take(settings.max_message_size + 1);
    if let Err(e) = stdin.read_to_end(&mut message).await {
        println!("4.3.0 blackpony: cannot read the message: {e}");
        return Exit::TempFail;
    }
    if message.len() as u64 > settings.max_message_size {
        println!(
            "5.3.4 blackpony: message larger than {} octets",
            settings.max_message_size
        );
        return Exit::DataErr;
    }
    let envelope = crate::smtp::Envelope {
        sender: crate::smtp::Envelope::sender_from_arg(&sender),
        recipients,
    };
    let results = deliverer.deliver(&envelope, &message).await;
    // The session delivery kept open for a next message that will not come.
    deliverer.idle.close_all().await;
    let (code, line) = crate::outbound::exit::summarize(&results);
    println!("{line}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    code
}

/// `blackpony outbound`'s own flags (they win over the file).
struct ServerBounds {
    max_connections: Option<usize>,
    max_message_memory: Option<u64>,
}

/// `blackpony outbound`: binds the listener (TCP or Unix socket) and runs
/// the service until SIGTERM.
async fn serve(
    listen: String,
    protocol: crate::smtp::server::Protocol,
    socket_mode: u32,
    bounds: ServerBounds,
    settings: OutboundSettings,
) -> ExitCode {
    use crate::outbound::service::{self, Listener};
    let deliverer = match settings.deliverer() {
        Ok(d) => Arc::new(d),
        Err(e) => return fail(Exit::Config, &e),
    };
    let listener = if let Some(path) = listen.strip_prefix("unix:") {
        // A socket left by an earlier run would make bind fail.
        let _ = std::fs::remove_file(path);
        let listener = match tokio::net::UnixListener::bind(path) {
            Ok(l) => l,
            Err(e) => return fail(Exit::OsErr, &format!("cannot listen on {listen}: {e}")),
        };
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode))
        {
            return fail(Exit::OsErr, &format!("cannot set the mode of {path}: {e}"));
        }
        Listener::Unix(listener)
    } else {
        match TcpListener::bind(&listen).await {
            Ok(l) => Listener::Tcp(l),
            Err(e) => return fail(Exit::OsErr, &format!("cannot listen on {listen}: {e}")),
        }
    };
    // The address bound (the port the system chose for `:0`).
    let listening_on = notify::address(&listener, &listen);
    log!("listening on {listening_on} protocol={}", protocol.as_str());
    let shutdown = sys::shutdown_signal();
    sys::spawn_note_hup("outbound");
    notify::ready(&listening_on);
    let limits = service::ServerLimits {
        max_connections: bounds
            .max_connections
            .unwrap_or(settings.max_connections)
            .max(1),
        max_message_size: settings.max_message_size,
        max_message_memory: bounds
            .max_message_memory
            .unwrap_or(settings.max_message_memory),
    };
    service::run(listener, protocol, deliverer, limits, shutdown).await;
    if let Some(path) = listen.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
    }
    ExitCode::SUCCESS
}

/// Settings of the outbound modes after merging flags and file.
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    pub dns: Option<std::net::SocketAddr>,
    pub dnssec: crate::outbound::dns::DnssecMode,
    pub policy: crate::outbound::PolicyTable,
    pub helo_name: String,
    pub state_dir: Option<PathBuf>,
    pub smtp_port: u16,
    pub tls_backoff: Duration,
    pub tls_ca_file: Option<PathBuf>,
    pub host_key: Option<PathBuf>,
    /// Use XPONY where offered (`--no-xpony`, `xpony = false`: never).
    pub xpony: bool,
    pub max_message_size: u64,
    /// Refuse address-literal recipients (`--refuse-address-literals`).
    pub refuse_address_literals: bool,
    /// `blackpony outbound`: MTA connections at once (from the file; the
    /// flag wins).
    pub max_connections: usize,
    /// `blackpony outbound`: message octets held in memory at once (from
    /// the file; the flag wins).
    pub max_message_memory: u64,
    /// MTA-STS (RFC 8461): where it applies.
    pub sts: crate::outbound::sts_fetch::StsSettings,
}

impl OutboundSettings {
    /// Builds the resolver, TLS client and limits once.
    pub fn deliverer(&self) -> Result<crate::outbound::Deliverer, String> {
        let resolver = match self.dns {
            Some(addr) => crate::outbound::MailResolver::at(addr, &self.dnssec),
            None => crate::outbound::MailResolver::system(&self.dnssec),
        }
        .map_err(|e| e.to_string())?;
        let tls = match &self.tls_ca_file {
            Some(path) => crate::transport::ClientTls::with_ca_file(path),
            None => crate::transport::ClientTls::new(),
        }
        .map_err(|e| e.to_string())?;
        let limits = crate::outbound::Limits {
            tls_backoff: self.tls_backoff,
            ..Default::default()
        };
        let pony = if self.xpony {
            // proto-spec §4.5: a client without a host key of its own is
            // anonymous, with a throwaway static key.
            let key = match &self.host_key {
                Some(path) => crate::pony::keys::load_file(path).map_err(|e| e.to_string())?,
                None => crate::pony::noise::Keypair::generate().map_err(|e| e.to_string())?,
            };
            Some(crate::outbound::deliver::PonyClient {
                key,
                pins: crate::pony::pins::PinStore::new(
                    &self
                        .state_dir
                        .clone()
                        .unwrap_or_else(crate::outbound::deliver::default_state_dir),
                ),
            })
        } else {
            None
        };
        // MTA-STS policies are fetched with the same resolver and roots as
        // MX hosts are judged by, and cached beside the pins.
        let sts = if self.sts.enabled || self.sts.domains.values().any(|on| *on) {
            let state_dir = self
                .state_dir
                .clone()
                .unwrap_or_else(crate::outbound::deliver::default_state_dir);
            Some(crate::outbound::sts_fetch::MtaSts::new(
                self.sts.clone(),
                resolver.clone(),
                &tls,
                crate::state::sts_cache::StsCache::new(&state_dir),
            )?)
        } else {
            None
        };
        Ok(crate::outbound::Deliverer {
            resolver,
            tls,
            policy: self.policy.clone(),
            helo_name: self.helo_name.clone(),
            smtp_port: self.smtp_port,
            memory: crate::outbound::memory::TlsMemory::new(
                self.state_dir.clone(),
                self.tls_backoff,
            ),
            limits,
            pony,
            idle: Default::default(),
            refuse_address_literals: self.refuse_address_literals,
            outcomes: Some(Arc::new(crate::outbound::tlsrpt::TlsReports::new(Some(
                &self
                    .state_dir
                    .clone()
                    .unwrap_or_else(crate::outbound::deliver::default_state_dir),
            )))),
            sts,
        })
    }
}
