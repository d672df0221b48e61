//! `blackpony check`: reads the config file the services use and checks it
//! and the environment (the logic is in [`crate::check`]). Prints one line
//! per finding, errors in red on a terminal, each with its fix; exits 0
//! when nothing is wrong, 1 otherwise (as `postfix check`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::config::FileConfig;
use crate::check::{self, Finding, Level};

/// `blackpony check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Seconds to wait for each answer of the backend MTA.
    #[arg(long, value_name = "SECONDS", default_value = "10")]
    pub timeout: u64,
    /// Do not connect to the backend MTA (files and addresses only).
    #[arg(long)]
    pub no_probe: bool,
}

/// The file the packaged services read.
const DEFAULT_CONFIG: &str = "/etc/blackpony/blackpony.toml";

pub fn run(args: CheckArgs, config_path: Option<&Path>) -> ExitCode {
    let path = config_path.map_or_else(|| PathBuf::from(DEFAULT_CONFIG), Path::to_path_buf);
    let mut findings = Vec::new();
    match FileConfig::load(&path) {
        Ok(file) => {
            findings.push(Finding::ok(format!("config file {}", path.display())));
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(check_file(file, &args, &mut findings)),
                Err(e) => findings.push(Finding::error(
                    format!("cannot start the runtime: {e}"),
                    "report this",
                )),
            }
        }
        Err(e) => findings.push(Finding::error(
            e.to_string(),
            "correct the file (every key is documented in the shipped one)",
        )),
    }
    print(&findings);
    if findings.iter().any(|f| f.level == Level::Error) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

async fn check_file(file: FileConfig, args: &CheckArgs, out: &mut Vec<Finding>) {
    if let Some(inbound) = file.inbound {
        let (tls_key, tls_cert, host_key) = (
            inbound.tls_key.clone(),
            inbound.tls_cert.clone(),
            inbound.host_key.clone(),
        );
        if let Some(p) = &tls_cert {
            out.push(check::readable_file("[inbound] tls_cert", p));
        }
        if let Some(p) = &tls_key {
            out.push(check::private_key_file(
                "[inbound] tls_key",
                p,
                Level::Error,
            ));
        }
        if let Some(p) = &host_key {
            out.push(check::private_key_file(
                "[inbound] host_key",
                p,
                Level::Error,
            ));
        }
        // The host key was judged above on its own line; a key the service
        // would refuse must not hide the listen address and backend checks.
        let mut inbound = inbound;
        inbound.host_key = None;
        match super::inbound::merge_inbound(super::inbound::InboundArgs::default(), inbound) {
            Err(e) => out.push(Finding::error(
                format!("[inbound] {e}"),
                "correct [inbound]",
            )),
            Ok(settings) => {
                out.push(check::listen_address("[inbound] listen", &settings.listen));
                if !args.no_probe {
                    let identity = settings.config.session.identity;
                    let backend = &settings.config.backend;
                    let shown = match backend {
                        crate::inbound::BackendTarget::Tcp(a) => a.clone(),
                        crate::inbound::BackendTarget::Unix(p) => format!("unix:{}", p.display()),
                        crate::inbound::BackendTarget::Exec(argv) => argv.join(" "),
                    };
                    let t =
                        check::probe(backend, identity, Duration::from_secs(args.timeout.max(1)))
                            .await;
                    out.extend(check::judge(identity, &shown, &t));
                }
            }
        }
    }
    if let Some(outbound) = file.outbound {
        if let Some(p) = &outbound.host_key {
            out.push(check::private_key_file(
                "[outbound] host_key",
                p,
                Level::Warning,
            ));
        }
        if let Some(p) = &outbound.tls_ca_file {
            out.push(check::readable_file("[outbound] tls_ca_file", p));
        }
        // Pins and the TLS-failure memory live here: a directory the
        // mailer's user cannot write makes every first contact unpinned.
        let state_dir = outbound
            .state_dir
            .clone()
            .unwrap_or_else(crate::outbound::deliver::default_state_dir);
        out.push(check::writable_dir(
            "[outbound] state_dir",
            &state_dir,
            true,
        ));
    }
    if let Some(fetch) = &file.fetch {
        if let Some(p) = &fetch.host_key {
            out.push(check::private_key_file("[fetch] host_key", p, Level::Error));
        }
        for p in fetch.age_identities() {
            out.push(check::private_key_file(
                "[fetch] age_identity",
                &p,
                Level::Error,
            ));
        }
        if let Some(p) = &fetch.state_dir {
            out.push(check::writable_dir("[fetch] state_dir", p, true));
        }
    }
    if let Some(seal) = &file.seal {
        if let Some(p) = &seal.spool {
            out.push(check::writable_dir("[seal] spool", p, false));
        }
        if let Some(p) = &seal.tls_key {
            out.push(check::private_key_file("[seal] tls_key", p, Level::Error));
        }
        if let Some(p) = &seal.host_key {
            out.push(check::private_key_file("[seal] host_key", p, Level::Error));
        }
    }
}

fn print(findings: &[Finding]) {
    let color = std::io::stdout().is_terminal();
    for f in findings {
        let (tag, on, off) = match f.level {
            Level::Ok => ("ok", "", ""),
            Level::Warning => ("warning", if color { "\x1b[33m" } else { "" }, ""),
            Level::Error => ("error", if color { "\x1b[1;31m" } else { "" }, ""),
        };
        let off = if color && !on.is_empty() {
            "\x1b[0m"
        } else {
            off
        };
        println!("blackpony check: {on}{tag}: {}{off}", f.what);
        if let Some(fix) = &f.fix {
            println!("    fix: {fix}");
        }
    }
}
