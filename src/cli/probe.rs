//! `blackpony probe DOMAIN`: the diagnosis a mail operator runs before and
//! after a change (the work is in `crate::outbound::probe`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::config::OutboundFile;
use super::outbound::OutboundArgs;
use crate::outbound::probe::Verdict;
use crate::sysexits::Exit;

/// `blackpony probe DOMAIN [--json]`
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The destination domain (a recipient domain) to look at.
    #[arg(value_name = "DOMAIN")]
    pub domain: String,

    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Seconds for the whole probe; each connection gets 10 s and each
    /// reply 30 s within it.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout: u64,

    #[command(flatten)]
    pub outbound: OutboundArgs,
}

pub fn run(args: ProbeArgs, file: OutboundFile, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let settings = match super::outbound::merge_outbound(args.outbound, file) {
        Ok(s) => s,
        Err(e) => return fail(Exit::Usage, &e.to_string()),
    };
    let mut deliverer = match settings.deliverer() {
        Ok(d) => d,
        Err(e) => return fail(Exit::TempFail, &e),
    };
    // A probe sends no mail and records nothing for TLS reports.
    deliverer.outcomes = None;
    deliverer.limits.connect_timeout = Duration::from_secs(10);
    deliverer.limits.reply_timeout = Duration::from_secs(30);
    let domain = args.domain;
    let probed = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(args.timeout.max(1)),
            deliverer.probe(&domain),
        )
        .await
    });
    let Ok(probe) = probed else {
        return fail(
            Exit::TempFail,
            &format!("{domain}: no answer within {} s", args.timeout),
        );
    };
    if args.json {
        println!("{}", probe.json());
    } else {
        print!("{}", probe.text());
    }
    ExitCode::from(match probe.verdict() {
        Verdict::Deliverable => Exit::Ok,
        Verdict::NoMail => Exit::NoHost,
        Verdict::Temporary => Exit::TempFail,
        Verdict::NotDeliverable => Exit::Unavailable,
    } as u8)
}

fn fail(code: Exit, message: &str) -> ExitCode {
    eprintln!("blackpony probe: {message}");
    ExitCode::from(code as u8)
}
