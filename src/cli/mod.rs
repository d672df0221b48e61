//! The command line: a thin shell that merges flags with the config file and
//! calls a role's `run`. Flags given on the command line win over the file.

pub mod check;
pub mod config;
pub mod docs;
pub mod error;
pub mod error_limits;
pub mod fetch;
pub mod inbound;
pub mod load;
mod notify;
pub mod outbound;
mod privileges;
mod roff;
pub mod seal;
#[cfg(test)]
mod shipped_config;
pub mod stats;
pub mod sts;
mod sys;
pub mod tlsrpt;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::inbound::{BackendTarget, Identity, InboundConfig};
use crate::log;
use crate::smtp::BareNewlines;
use crate::sysexits::Exit;
use crate::transport::ServerTls;
use config::FileConfig;
use error::ConfigError;

#[derive(Debug, Parser)]
#[command(
    name = "blackpony",
    version,
    about = "Opportunistic encryption for mail servers, beside an unpatched MTA",
    long_about = "blackpony stands beside an existing MTA (Postfix, Exim, sendmail, OpenSMTPD, \
                  qmail) and encrypts every SMTP hop it can, without patching the MTA.\n\n\
                  `blackpony inbound` listens on port 25 in front of the MTA, offers STARTTLS \
                  itself and passes the SMTP dialogue through; the MTA still decides about \
                  every message."
)]
pub struct Cli {
    /// Read settings from this TOML file (sections [inbound], …). Flags on
    /// the command line override the file.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where log records go: `stderr`, `syslog` (facility mail, /dev/log),
    /// or a file to append to. Default: stderr; for `deliver`, stderr after
    /// the status line; for `lmtp`, stderr unless it is the same pipe as
    /// stdout (Exim's `command`), then syslog if there is one.
    #[arg(long, global = true, value_name = "DEST")]
    pub log: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Listen for SMTP clients (port 25), offer STARTTLS, and pass the
    /// dialogue through to the local MTA.
    Inbound(InboundArgs),
    /// Deliver one message from standard input to its recipients' MX hosts
    /// now, and exit with a status the MTA understands (75 = try later).
    /// For a sendmail mailer with $u in A=, or a Postfix pipe(8) transport.
    Deliver(DeliverArgs),
    /// Speak LMTP on standard input/output: one reply per recipient after the
    /// data, carrying the remote server's own code and text. For a sendmail
    /// mailer with F=z and no $u, or Exim's lmtp transport with `command`.
    Lmtp(LmtpArgs),
    /// Serve LMTP on a socket for an MTA's transport (Postfix `lmtp:`,
    /// OpenSMTPD `relay host lmtp://`), delivering each message now.
    Outbound(OutboundServerArgs),
    /// Make a host key for the blackpony extension (mode 0600) and print
    /// its public key and the DNS record to publish.
    Keygen(KeygenArgs),
    /// Show or change the keys remembered per MX host (trust on first use).
    Pins(PinsArgs),
    /// Count from blackpony's logs how much mail was encrypted: per day and
    /// per peer, plaintext / TLS / XPONY / authenticated; refusals by reason.
    Stats(stats::StatsArgs),
    /// Check the config file and the environment before the first message:
    /// key permissions, listen addresses, and the backend MTA probed as the
    /// sidecar will talk to it (identity mode, relaying). Exit 0 when fine.
    Check(check::CheckArgs),
    /// Write the man pages (a build step; hidden).
    #[command(hide = true)]
    Man(docs::ManArgs),
    /// Write the bash, zsh and fish completions (a build step; hidden).
    #[command(hide = true)]
    Completions(docs::CompletionsArgs),
    /// At home: pull the sealed messages from a `blackpony seal` relay over
    /// XPONY, decrypt them with the age identity and hand them to the local
    /// MTA (or a Maildir); one run, exit 0 when all was fetched, 75 to retry.
    Fetch(fetch::FetchArgs),
    /// The sealed relay: accept mail for your domains (SMTP on port 25, or
    /// LMTP behind an MTA) and seal each message with age to its owner's
    /// keys before answering 250; the disk holds only ciphertext.
    Seal(seal::SealArgs),
    /// Decrypt sealed messages (a file, a spool or a Maildir) with an age
    /// identity and print them.
    Open(seal::OpenArgs),
    /// Write a domain's daily SMTP TLS report (RFC 8460 JSON) from what
    /// delivery recorded, or mail it (--send) to the domain's
    /// `_smtp._tls` rua= address through the outbound transport.
    Tlsrpt(tlsrpt::TlsrptArgs),
}

/// `blackpony keygen`
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the key [default: /etc/blackpony/host.key, with
    /// --age /etc/blackpony/mail.age.key].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Make an age identity for sealed mail instead (X25519, age-keygen's
    /// file format) and print its recipient (age1…) for `seal`. Keep it at
    /// home: the relay needs only the recipient.
    #[arg(long)]
    pub age: bool,
    /// The MX host name the DNS record is for [default: the system host name].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Replace an existing key file (every peer that pinned the old key will
    /// refuse this host until its operator accepts the new one).
    #[arg(long)]
    pub force: bool,
}

/// `blackpony pins …`
#[derive(Debug, Args)]
pub struct PinsArgs {
    /// The state directory holding the pins [default: $STATE_DIRECTORY or /var/lib/blackpony].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub action: PinsAction,
}

#[derive(Debug, Subcommand)]
pub enum PinsAction {
    /// List every pinned host with its key fingerprint and dates.
    List,
    /// Forget a host's key: the next contact pins whatever key it presents.
    Forget {
        /// The MX host name.
        host: String,
    },
    /// Accept a new key for a host (after checking it out of band).
    Accept {
        /// The MX host name.
        host: String,
        /// The host's public key in base64 (as `blackpony keygen` prints it).
        key: String,
    },
}

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
    #[arg(long, value_name = "OCTAL", default_value = "0666", value_parser = parse_octal)]
    pub socket_mode: u32,

    /// MTA connections served at once; more are answered `421 4.3.2` and
    /// closed. With max_message_size it bounds the message bytes in flight
    /// [default: 20].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    #[command(flatten)]
    pub outbound: OutboundArgs,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 0660"))
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
    /// (proto-spec §8.3 P1); a bogus answer defers the MX host.
    #[arg(long, value_name = "root|FILE|off")]
    pub dnssec: Option<String>,

    /// TLS policy for destinations without their own: none, may (use
    /// STARTTLS when offered, any certificate), encrypt (require TLS),
    /// verify (require a certificate valid for the MX name) [default: may].
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
    pub sts: sts::StsArgs,
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

    /// Most client connections at once; more get 421 4.7.0 [default: 1000].
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

    /// Seconds the MTA may take to answer before the client gets 421 [default: 600].
    #[arg(long, value_name = "SECONDS")]
    pub backend_timeout: Option<u64>,

    /// After SIGTERM, seconds running sessions may take to finish; then each
    /// gets 421 4.3.2 [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub shutdown_timeout: Option<u64>,

    #[command(flatten)]
    pub load: load::LoadArgs,

    #[command(flatten)]
    pub error_limits: error_limits::ErrorLimitArgs,
}

/// `--bare-newlines` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareNewlinesArg {
    Normalize,
    Reject,
}

impl From<BareNewlinesArg> for BareNewlines {
    fn from(a: BareNewlinesArg) -> Self {
        match a {
            BareNewlinesArg::Normalize => BareNewlines::Normalize,
            BareNewlinesArg::Reject => BareNewlines::Reject,
        }
    }
}

/// Entry point of the `blackpony` binary.
pub fn main() -> ExitCode {
    let code = run();
    // The log is written by its own thread: let it finish (bounded).
    log::flush();
    code
}

fn run() -> ExitCode {
    let cli = Cli::parse();
    // Under `lmtp` standard output is the LMTP channel, and an MTA may hand
    // the mailer one pipe for stdout and stderr (sendmail does): a start-up
    // error must then be an LMTP reply, not a line of prose in the greeting's
    // place, so the MTA keeps the message queued with the reason.
    let lmtp = matches!(cli.command, Command::Lmtp(_));
    let fail = |code: Exit, message: &str| {
        if lmtp {
            fail_lmtp(code, message)
        } else {
            fail(code, message)
        }
    };
    let dropped = match privileges::drop_real_ids() {
        Ok(d) => d,
        Err(e) => return fail(Exit::OsErr, &format!("cannot drop the real user id: {e}")),
    };
    // Before any thread starts: this edits the environment.
    sys::take_passed_sockets();
    let file = match &cli.config {
        Some(path) => match FileConfig::load(path) {
            Ok(f) => f,
            Err(e) => return fail(Exit::Config, &e.to_string()),
        },
        None => FileConfig::default(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(Exit::OsErr, &format!("cannot start the runtime: {e}")),
    };
    let sink = |default: fn() -> log::Sink| -> Result<log::Sink, String> {
        match cli.log.as_deref() {
            None => Ok(default()),
            Some("stderr") => Ok(log::Sink::Stderr),
            Some("syslog") => log::Sink::syslog()
                .ok_or_else(|| "--log syslog: nothing listens on /dev/log".to_string()),
            Some(path) => log::Sink::file(std::path::Path::new(path))
                .map_err(|e| format!("--log {path}: {e}")),
        }
    };
    let role = match &cli.command {
        Command::Deliver(_) => "deliver",
        Command::Lmtp(_) => "lmtp",
        Command::Outbound(_) => "outbound",
        Command::Inbound(_) => "inbound",
        Command::Keygen(_) => "keygen",
        Command::Pins(_) => "pins",
        Command::Stats(_) => "stats",
        Command::Man(_) | Command::Completions(_) => "docs",
        Command::Check(_) => "check",
        Command::Fetch(_) => "fetch",
        Command::Seal(_) => "seal",
        Command::Open(_) => "open",
        Command::Tlsrpt(_) => "tlsrpt",
    };
    let default_sink: fn() -> log::Sink = match &cli.command {
        Command::Deliver(_) => || log::Sink::Held(Vec::new()),
        Command::Lmtp(_) => || {
            if log::stderr_is_stdout() {
                log::Sink::syslog().unwrap_or(log::Sink::Discard)
            } else {
                log::Sink::Stderr
            }
        },
        _ => || log::Sink::Stderr,
    };
    match sink(default_sink) {
        Ok(s) => log::init(role, s),
        Err(e) => return fail(Exit::Usage, &e),
    }
    if let Some(d) = dropped {
        log!(
            "started with real uid {} gid {}: now uid {} gid {} only",
            d.real_uid,
            d.real_gid,
            d.uid,
            d.gid
        );
    }
    match cli.command {
        Command::Keygen(args) => keygen(args),
        Command::Pins(args) => pins(args),
        Command::Stats(args) => stats::run(args),
        Command::Man(args) => docs::run_man(args),
        Command::Check(args) => check::run(args, cli.config.as_deref()),
        Command::Completions(args) => docs::run_completions(args),
        Command::Fetch(args) => fetch::run(args, file.fetch.unwrap_or_default(), &runtime),
        Command::Seal(args) => seal::run(args, file.seal.unwrap_or_default(), &runtime),
        Command::Open(args) => seal::open(args),
        Command::Tlsrpt(args) => tlsrpt::run(args, file.outbound.unwrap_or_default(), &runtime),
        Command::Deliver(args) => {
            let outbound =
                match outbound::merge_outbound(args.outbound, file.outbound.unwrap_or_default()) {
                    Ok(o) => o,
                    Err(e) => return fail(exit_for(&e), &e.to_string()),
                };
            let code = runtime.block_on(run_deliver(args.sender, args.recipients, outbound));
            log::flush_held();
            ExitCode::from(code)
        }
        Command::Lmtp(args) => {
            let outbound =
                match outbound::merge_outbound(args.outbound, file.outbound.unwrap_or_default()) {
                    Ok(o) => o,
                    Err(e) => return fail(exit_for(&e), &e.to_string()),
                };
            runtime.block_on(async {
                let deliverer = match outbound.deliverer() {
                    Ok(d) => d,
                    Err(e) => return fail(Exit::Config, &e),
                };
                crate::outbound::service::serve(
                    crate::smtp::server::Protocol::Lmtp,
                    tokio::io::stdin(),
                    tokio::io::stdout(),
                    &deliverer,
                    outbound.max_message_size,
                    crate::outbound::service::never_stopping(),
                )
                .await;
                ExitCode::SUCCESS
            })
        }
        Command::Outbound(args) => {
            let outbound =
                match outbound::merge_outbound(args.outbound, file.outbound.unwrap_or_default()) {
                    Ok(o) => o,
                    Err(e) => return fail(exit_for(&e), &e.to_string()),
                };
            runtime.block_on(run_outbound_server(
                args.listen,
                args.protocol.into(),
                args.socket_mode,
                args.max_connections,
                outbound,
            ))
        }
        Command::Inbound(args) => {
            let settings = match inbound::merge_inbound(args, file.inbound.unwrap_or_default()) {
                Ok(s) => s,
                Err(e) => return fail(exit_for(&e), &e.to_string()),
            };
            runtime.block_on(run_inbound(settings))
        }
    }
}

fn exit_for(e: &ConfigError) -> Exit {
    match e {
        ConfigError::Missing(_) | ConfigError::Invalid(..) => Exit::Usage,
        _ => Exit::Config,
    }
}

fn fail(code: Exit, message: &str) -> ExitCode {
    eprintln!("blackpony: {message}");
    ExitCode::from(code)
}

/// A start-up failure of `lmtp`: a `421 4.3.0` greeting (RFC 2033 §4.1,
/// RFC 5321 §3.1: the service is not available, try later) carrying the
/// reason, and the reason on stderr too unless stderr is that same pipe.
fn fail_lmtp(code: Exit, message: &str) -> ExitCode {
    use std::io::Write;
    let reason: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "421 4.3.0 blackpony: {reason}\r\n");
    let _ = out.flush();
    if !log::stderr_is_stdout() {
        eprintln!("blackpony: {message}");
    }
    ExitCode::from(code)
}

fn keygen(args: KeygenArgs) -> ExitCode {
    use crate::pony::keys;
    if args.age {
        let out = args
            .out
            .unwrap_or_else(|| PathBuf::from("/etc/blackpony/mail.age.key"));
        return seal::keygen_age(&out, args.force);
    }
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("/etc/blackpony/host.key"));
    let pair = match keys::generate_file(&out, args.force) {
        Ok(p) => p,
        Err(e) => return fail(Exit::Config, &e.to_string()),
    };
    let host = args.hostname.unwrap_or_else(sys::system_hostname);
    let public = pair.public();
    println!("wrote {} (mode 0600)", out.display());
    println!("public key:  {}", keys::encode_key(&public));
    println!("fingerprint: {}", keys::fingerprint(&public));
    println!("DNS record to publish (lets first contacts authenticate this host):");
    println!(
        "{}. IN TXT \"{}\"",
        keys::dns_name(&host),
        keys::dns_record(&public)
    );
    ExitCode::SUCCESS
}

fn pins(args: PinsArgs) -> ExitCode {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    use crate::pony::keys;
    use crate::pony::pins::{Pin, PinStore};
    let dir = args
        .state_dir
        .unwrap_or_else(crate::outbound::deliver::default_state_dir);
    let store = PinStore::new(&dir);
    let result = match args.action {
        PinsAction::List => store.list().map(|all| {
            if all.is_empty() {
                println!("no pins in {}", dir.display());
            }
            for (host, pin) in all {
                let at = |secs: u64| {
                    log::timestamp_utc(std::time::UNIX_EPOCH + Duration::from_secs(secs))
                };
                println!(
                    "{host} {} source={} first-seen={} last-seen={} max-age={} expires={}{}{}",
                    keys::fingerprint(&pin.key),
                    pin.source.as_str(),
                    at(pin.first_seen),
                    at(pin.last_seen),
                    pin.max_age,
                    at(pin.last_seen.saturating_add(pin.max_age)),
                    if pin.expired(now()) { " (expired)" } else { "" },
                    pin.successor
                        .map(|s| format!(" successor={}", keys::fingerprint(&s)))
                        .unwrap_or_default()
                );
            }
        }),
        PinsAction::Forget { host } => store.forget(&host).map(|had| {
            if had {
                println!("forgot the key of {host}; its next key is pinned on first use");
            } else {
                println!("{host} had no pin");
            }
        }),
        PinsAction::Accept { host, key } => {
            let Some(key) = keys::decode_key(&key) else {
                return fail(Exit::Usage, "the key must be 32 bytes in base64");
            };
            let now = now();
            // proto-spec §8.5: kept as long as any pin may be; the next
            // session refreshes it with what the server asks.
            let pin = Pin {
                key,
                first_seen: now,
                last_seen: now,
                max_age: crate::pony::pins::MAX_PIN_AGE,
                successor: None,
                source: crate::pony::pins::PinSource::Operator,
            };
            store.put(&host, &pin).map(|()| {
                println!("{host} is now pinned to {}", keys::fingerprint(&key));
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(Exit::OsErr, &e.to_string()),
    }
}

/// Reads the message, delivers it, prints the status line; returns the exit status.
async fn run_deliver(sender: String, recipients: Vec<String>, settings: OutboundSettings) -> Exit {
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
    let (code, line) = crate::outbound::exit::summarize(&results);
    println!("{line}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    code
}

/// `blackpony outbound`: binds the listener (TCP or Unix socket) and runs
/// the service until SIGTERM.
async fn run_outbound_server(
    listen: String,
    protocol: crate::smtp::server::Protocol,
    socket_mode: u32,
    max_connections: Option<usize>,
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
    log!("listening on {listen} protocol={}", protocol.as_str());
    let shutdown = shutdown_signal();
    notify::ready(&notify::address(&listener, &listen));
    let limits = service::ServerLimits {
        max_connections: max_connections.unwrap_or(settings.max_connections).max(1),
        max_message_size: settings.max_message_size,
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

/// Settings of `blackpony inbound` after merging flags and file.
#[derive(Debug)]
pub struct InboundSettings {
    pub listen: String,
    /// The accept queue (None: the system's maximum).
    pub listen_backlog: Option<u32>,
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    pub config: InboundConfig,
}

async fn run_inbound(settings: InboundSettings) -> ExitCode {
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
    spawn_reload_on_hup(Arc::clone(&tls));
    let shutdown = shutdown_signal();
    notify::ready(
        &listener
            .local_addr()
            .map_or(settings.listen, |a| a.to_string()),
    );
    crate::inbound::run(listener, settings.config, tls, shutdown).await;
    ExitCode::SUCCESS
}

fn spawn_reload_on_hup(tls: Arc<ServerTls>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        log!("warning: cannot catch SIGHUP; certificate reload disabled");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(true) => log!("reload: certificate re-read ({})", tls.describe()),
                Ok(false) => log!("reload: self-signed certificate, nothing to re-read"),
                Err(e) => log!("reload: failed, keeping the old certificate ({e})"),
            }
        }
    });
}

/// Completes at SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled: a SIGTERM right after
/// READY=1 (systemd's stop, a test) must start the drain, not kill the
/// process with the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            // Without signal handling, run until killed.
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => log!("shutdown: SIGTERM"),
            _ = int.recv() => log!("shutdown: SIGINT"),
        }
        notify::stopping();
    }
}

pub(crate) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub(crate) fn backend_target(
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
