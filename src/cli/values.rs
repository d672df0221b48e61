//! Values that flags and the config file share, so that both the file's
//! sections (`config.rs`) and each subcommand's flags use one definition.

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

/// A file mode in octal (`0660`, `0o660`), for `--socket-mode` and
/// `socket_mode`.
pub fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 0660"))
}
