//! `blackpony pins`: list, forget and accept the XPONY keys pinned for MX
//! hosts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::error::fail;
use crate::log;
use crate::sysexits::Exit;

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

pub fn run(args: PinsArgs) -> ExitCode {
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
