//! `blackpony fetch`: flags, the `[fetch]` section of the config file, and
//! the one-shot run (a systemd timer starts it; exit 0 when everything was
//! fetched, 75 to try again later, proto-spec/fetch.md §7.2).

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use super::error::ConfigError;
use crate::relay::fetch::{FetchSettings, OnPermanentFailure, Target};

/// `blackpony fetch`
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The fetch listener of the relay running `blackpony seal`:
    /// HOST[:PORT] (port 2525 if none, seal's --fetch-listen default).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub from: Option<String>,
    /// Our XPONY key, whose public half is one of the relay's --fetch-key
    /// [default: /etc/blackpony/home.key].
    #[arg(long, value_name = "FILE")]
    pub host_key: Option<PathBuf>,
    /// The age identity file that opens the sealed files (age-keygen's
    /// format; several keys in one file are all tried). Repeatable.
    #[arg(long, value_name = "FILE")]
    pub age_identity: Vec<PathBuf>,
    /// Hand each message to the local MTA: its SMTP listener at HOST:PORT,
    /// or an LMTP server (lmtp:HOST:PORT, lmtp:unix:PATH; e.g. Dovecot's),
    /// which answers for each recipient on its own.
    #[arg(
        long,
        value_name = "HOST:PORT|lmtp:HOST:PORT|lmtp:unix:PATH",
        conflicts_with = "maildir"
    )]
    pub deliver_to: Option<String>,
    /// Write each message into this Maildir instead (made if missing).
    #[arg(long, value_name = "DIR")]
    pub maildir: Option<PathBuf>,
    /// The relay's XPONY public key (base64). Without it the key the relay
    /// shows at the first fetch is pinned and required from then on.
    #[arg(long, value_name = "KEY")]
    pub relay_key: Option<String>,
    /// Where the relay's pin and the delivery journal live
    /// [default: $STATE_DIRECTORY or /var/lib/blackpony].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// What to do with a message the local MTA refuses permanently
    /// [default: keep].
    #[arg(long, value_enum, value_name = "WHAT")]
    pub on_permanent_failure: Option<PermanentArg>,
    /// Our name in EHLO [default: the system host name].
    #[arg(long, value_name = "NAME")]
    pub helo_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PermanentArg {
    /// Leave it on the relay and log it at every run.
    Keep,
    /// Delete it from the relay (it is lost; the log says so).
    Delete,
}

/// A file name, or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl FetchFile {
    /// The age identity files the section names (one or a list).
    pub fn age_identities(&self) -> Vec<PathBuf> {
        match &self.age_identity {
            Some(OneOrMany::One(p)) => vec![p.clone()],
            Some(OneOrMany::Many(v)) => v.clone(),
            None => Vec::new(),
        }
    }
}

impl OneOrMany {
    fn into_vec(self) -> Vec<PathBuf> {
        match self {
            OneOrMany::One(p) => vec![p],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The `[fetch]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchFile {
    pub from: Option<String>,
    pub host_key: Option<PathBuf>,
    pub age_identity: Option<OneOrMany>,
    pub deliver_to: Option<String>,
    pub maildir: Option<PathBuf>,
    pub relay_key: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub on_permanent_failure: Option<PermanentArg>,
    pub helo_name: Option<String>,
    /// The largest sealed file taken, in octets [default: 256 MiB].
    pub max_size: Option<u64>,
}

fn invalid(flag: &str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(flag.to_string(), why.into())
}

/// `HOST[:PORT]` (an IPv6 literal in brackets).
fn host_port(text: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host.to_string(), port.parse().ok()?)),
        Some(_) => None,
        None => Some((text.to_string(), default_port)),
    }
    .filter(|(host, _)| !host.is_empty())
}

/// Flags win over the file; keys and identities are read here, so a bad
/// one is a configuration error before any connection.
pub fn settings(args: FetchArgs, file: FetchFile) -> Result<FetchSettings, ConfigError> {
    let from = args.from.or(file.from).ok_or(ConfigError::Missing(
        "fetch needs --from HOST[:PORT] (the relay running blackpony seal)",
    ))?;
    let (relay_host, relay_port) = host_port(&from, crate::relay::xfetch::DEFAULT_PORT)
        .ok_or_else(|| invalid("--from", format!("{from:?} is not HOST[:PORT]")))?;
    let key_path = args
        .host_key
        .or(file.host_key)
        .unwrap_or_else(|| PathBuf::from("/etc/blackpony/home.key"));
    let host_key = crate::pony::keys::load_file(&key_path)
        .map_err(|e| invalid("--host-key", e.to_string()))?;
    let identity_files = if args.age_identity.is_empty() {
        file.age_identity
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
    } else {
        args.age_identity
    };
    if identity_files.is_empty() {
        return Err(ConfigError::Missing(
            "fetch needs --age-identity FILE (the age key the relay seals to)",
        ));
    }
    let mut identities = Vec::new();
    for path in &identity_files {
        identities.extend(
            crate::relay::seal::load_identities(path).map_err(|e| invalid("--age-identity", e))?,
        );
    }
    let target = match (
        args.deliver_to.or(file.deliver_to),
        args.maildir.or(file.maildir),
    ) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "--deliver-to",
                "give --deliver-to or --maildir, not both",
            ));
        }
        (None, None) => {
            return Err(ConfigError::Missing(
                "fetch needs --deliver-to HOST:PORT (the local MTA) or --maildir DIR",
            ));
        }
        (None, Some(dir)) => Target::Maildir(dir),
        (Some(to), None) => deliver_target(&to).map_err(|e| invalid("--deliver-to", e))?,
    };
    let relay_key = match args.relay_key.or(file.relay_key) {
        None => None,
        Some(text) => Some(crate::pony::keys::decode_key(text.trim()).ok_or_else(|| {
            invalid(
                "--relay-key",
                "not a base64 X25519 public key (44 characters)",
            )
        })?),
    };
    let helo_name = args
        .helo_name
        .or(file.helo_name)
        .unwrap_or_else(super::sys::system_hostname);
    let on_permanent_failure = match args.on_permanent_failure.or(file.on_permanent_failure) {
        Some(PermanentArg::Delete) => OnPermanentFailure::Delete,
        _ => OnPermanentFailure::Keep,
    };
    Ok(FetchSettings {
        relay_host,
        relay_port,
        host_key,
        identities,
        target,
        relay_key,
        state_dir: args
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(crate::outbound::deliver::default_state_dir),
        on_permanent_failure,
        helo_name,
        max_size: file
            .max_size
            .unwrap_or(crate::relay::xfetch::DEFAULT_MAX_SIZE),
        connect_timeout: Duration::from_secs(30),
        reply_timeout: crate::smtp::limits::SERVER_TIMEOUT,
    })
}

/// `--deliver-to`: HOST:PORT (SMTP), lmtp:HOST:PORT or lmtp:unix:PATH.
fn deliver_target(to: &str) -> Result<Target, String> {
    if let Some(path) = to.strip_prefix("lmtp:unix:") {
        if path.is_empty() {
            return Err("lmtp:unix: needs the socket's path".into());
        }
        return Ok(Target::LmtpUnix(PathBuf::from(path)));
    }
    let (lmtp, addr) = match to.strip_prefix("lmtp:") {
        Some(addr) => (true, addr),
        None => (false, to),
    };
    let addr = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("{to:?} is not HOST:PORT, lmtp:HOST:PORT or lmtp:unix:PATH"))?;
    Ok(if lmtp {
        Target::Lmtp(addr)
    } else {
        Target::Smtp(addr)
    })
}

/// The one-shot run; its exit status says how it went.
pub fn run(args: FetchArgs, file: FetchFile, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let settings = match settings(args, file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("blackpony: {e}");
            return ExitCode::from(crate::sysexits::Exit::Config);
        }
    };
    let report = runtime.block_on(crate::relay::fetch::run(&settings));
    ExitCode::from(report.exit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fetch_section() {
        let one: FetchFile = toml::from_str("age_identity = \"/k\"\nfrom = \"r\"").unwrap();
        assert_eq!(
            one.age_identity.map(OneOrMany::into_vec),
            Some(vec![PathBuf::from("/k")])
        );
        let many: FetchFile = toml::from_str("age_identity = [\"/a\", \"/b\"]").unwrap();
        assert_eq!(
            many.age_identity.map(OneOrMany::into_vec).map(|v| v.len()),
            Some(2)
        );
        assert!(toml::from_str::<FetchFile>("typo = 1").is_err());
        let example = include_str!("../../packaging/etc/blackpony.toml");
        let section: String = example
            .lines()
            .skip_while(|l| !l.starts_with("# [fetch]"))
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .filter(|l| l.contains(" = ") && !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: FetchFile = toml::from_str(&section).unwrap();
        assert_eq!(parsed.from.as_deref(), Some("relay.example.org"));
    }

    #[test]
    fn local_targets() {
        let tcp = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        // (--deliver-to, target, or a piece of the error)
        let cases: Vec<(&str, Result<Target, &str>)> = vec![
            ("127.0.0.1:25", Ok(Target::Smtp(tcp("127.0.0.1:25")))),
            ("lmtp:127.0.0.1:24", Ok(Target::Lmtp(tcp("127.0.0.1:24")))),
            ("lmtp:[::1]:24", Ok(Target::Lmtp(tcp("[::1]:24")))),
            (
                "lmtp:unix:/run/dovecot/lmtp",
                Ok(Target::LmtpUnix(PathBuf::from("/run/dovecot/lmtp"))),
            ),
            ("lmtp:unix:", Err("needs the socket's path")),
            ("lmtp:127.0.0.1", Err("is not HOST:PORT, lmtp:HOST:PORT")),
            ("127.0.0.1", Err("is not HOST:PORT")),
            ("smtp:127.0.0.1:25", Err("is not HOST:PORT")),
        ];
        for (given, want) in cases {
            match (deliver_target(given), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{given}"),
                (Err(e), Err(piece)) => assert!(e.contains(piece), "{given}: {e}"),
                (got, want) => panic!("{given}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn relay_addresses() {
        assert_eq!(
            host_port("relay.example.org", 25),
            Some(("relay.example.org".into(), 25))
        );
        assert_eq!(
            host_port("relay.example.org:2525", 25),
            Some(("relay.example.org".into(), 2525))
        );
        assert_eq!(
            host_port("127.0.0.1:2525", 25),
            Some(("127.0.0.1".into(), 2525))
        );
        assert_eq!(host_port("[::1]:26", 25), Some(("::1".into(), 26)));
        assert_eq!(host_port("[::1]", 25), Some(("::1".into(), 25)));
        for bad in ["", ":25", "host:port", "::1", "[::1]x", "h:99999"] {
            assert_eq!(host_port(bad, 25), None, "{bad}");
        }
    }
}
