//! The command line: a thin shell that merges flags with the config file and
//! calls a role's `run`. Flags given on the command line win over the file.
//!
//! This file holds the `Command` enum and the dispatch only. Each
//! subcommand's flags, their merge with its section of the file and how it
//! runs are in its own file (`inbound.rs`, `outbound.rs`, `fetch.rs`, …):
//! a new subcommand adds a file, a variant and a dispatch line.

pub mod check;
pub mod config;
pub mod docs;
pub mod error;
pub mod error_limits;
pub mod fetch;
pub mod inbound;
pub mod keygen;
pub mod load;
mod notify;
pub mod outbound;
pub mod pins;
mod privileges;
pub mod probe;
mod roff;
pub mod seal;
pub mod serving;
#[cfg(test)]
mod shipped_config;
pub mod stats;
pub mod sts;
mod sys;
pub mod tlsrpt;
pub mod values;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::log;
use crate::sysexits::Exit;
use config::FileConfig;
use error::{fail, fail_lmtp};

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
    Inbound(inbound::InboundArgs),
    /// Deliver one message from standard input to its recipients' MX hosts
    /// now, and exit with a status the MTA understands (75 = try later).
    /// For a sendmail mailer with $u in A=, or a Postfix pipe(8) transport.
    Deliver(outbound::DeliverArgs),
    /// Speak LMTP on standard input/output: one reply per recipient after the
    /// data, carrying the remote server's own code and text. For a sendmail
    /// mailer with F=z and no $u, or Exim's lmtp transport with `command`.
    Lmtp(outbound::LmtpArgs),
    /// Serve LMTP on a socket for an MTA's transport (Postfix `lmtp:`,
    /// OpenSMTPD `relay host lmtp://`), delivering each message now.
    Outbound(outbound::OutboundServerArgs),
    /// Make a host key for the blackpony extension (mode 0600) and print
    /// its public key and the DNS record to publish.
    Keygen(keygen::KeygenArgs),
    /// Show or change the keys remembered per MX host (trust on first use).
    Pins(pins::PinsArgs),
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
    /// Show what a destination domain supports: its MX hosts (DNSSEC),
    /// per host XPONY (key, pin, DNS key), STARTTLS (version, cipher,
    /// certificate subject and verdict), DANE (TLSA records, DNSSEC
    /// status, whether the certificate matches), MTA-STS (policy, mode,
    /// match, or DANE governing the host), and the level blackpony would
    /// reach under the current policy. Sends no mail, stores no pin.
    Probe(probe::ProbeArgs),
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
        Command::Probe(_) => "probe",
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
        Command::Keygen(args) => keygen::run(args),
        Command::Pins(args) => pins::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Man(args) => docs::run_man(args),
        Command::Check(args) => check::run(args, cli.config.as_deref()),
        Command::Completions(args) => docs::run_completions(args),
        Command::Fetch(args) => fetch::run(args, file.fetch.unwrap_or_default(), &runtime),
        Command::Seal(args) => seal::run(args, file.seal.unwrap_or_default(), &runtime),
        Command::Open(args) => seal::open(args),
        Command::Tlsrpt(args) => tlsrpt::run(
            args,
            file.outbound.unwrap_or_default(),
            file.tlsrpt.unwrap_or_default(),
            &runtime,
        ),
        Command::Probe(args) => probe::run(args, file.outbound.unwrap_or_default(), &runtime),
        Command::Deliver(args) => {
            outbound::run_deliver(args, file.outbound.unwrap_or_default(), &runtime)
        }
        Command::Lmtp(args) => {
            outbound::run_lmtp(args, file.outbound.unwrap_or_default(), &runtime)
        }
        Command::Outbound(args) => {
            outbound::run_server(args, file.outbound.unwrap_or_default(), &runtime)
        }
        Command::Inbound(args) => inbound::run(args, file.inbound.unwrap_or_default(), &runtime),
    }
}
