//! Values that flags and the config file share, so that both the file's
//! sections (`config.rs`) and each subcommand's flags use one definition.

use super::error::ConfigError;
use crate::smtp::BareNewlines;

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

/// The longest time a setting may give: a year, in seconds. Longer is a
/// mistake, and 2^63 seconds is past what a clock can add: the first
/// session that waited would panic.
pub const MAX_SECONDS: u64 = 365 * 24 * 3600;

/// A time in seconds from a flag or the file, refused over [`MAX_SECONDS`].
pub fn seconds(flag: &str, value: Option<u64>) -> Result<Option<u64>, ConfigError> {
    match value {
        Some(s) if s > MAX_SECONDS => Err(ConfigError::Invalid(
            flag.into(),
            format!("{s} seconds is more than a year ({MAX_SECONDS} seconds)"),
        )),
        other => Ok(other),
    }
}

/// A host name from a flag or the file (`--hostname`, `--helo-name`): not
/// empty, letters, digits and `-._` only, plus `extra` (the HELO name may be
/// an address literal, RFC 5321 §4.1.3: `[]:` too). It goes into replies
/// and headers, so nothing else is let through.
pub fn host_name(flag: &str, name: String, extra: &[u8]) -> Result<String, ConfigError> {
    if name.is_empty()
        || name
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b"-._".contains(&b) || extra.contains(&b)))
    {
        return Err(ConfigError::Invalid(
            flag.into(),
            format!("{name:?} is not a host name"),
        ));
    }
    Ok(name)
}

/// The XPONY identity of a server role (`inbound`, `seal`): its host key
/// file and the hints it sends (xpony.md §4.4: how long to pin, 30 days
/// unless configured; our host name).
pub fn server_identity(
    path: &std::path::Path,
    max_age: Option<u32>,
    hostname: &str,
) -> Result<std::sync::Arc<crate::pony::negotiation::ServerIdentity>, String> {
    let key = crate::pony::keys::load_file(path).map_err(|e| e.to_string())?;
    Ok(std::sync::Arc::new(
        crate::pony::negotiation::ServerIdentity {
            key,
            hints: crate::pony::negotiation::ServerHints {
                max_age: max_age.unwrap_or(2_592_000),
                successor: None,
                hostname: Some(hostname.to_string()),
            },
        },
    ))
}

/// A file mode in octal (`0660`, `0o660`), for `--socket-mode` and
/// `socket_mode`.
pub fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 0660"))
}
