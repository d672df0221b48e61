//! The command line's one error type: why the settings cannot be used.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::sysexits::Exit;

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("config file {0}: {1}")]
    Parse(PathBuf, Box<toml::de::Error>),
    #[error("{0}")]
    Missing(&'static str),
    #[error("{0}: {1}")]
    Invalid(String, String),
}

/// A usage mistake is EX_USAGE, anything else about the settings EX_CONFIG.
pub fn exit_for(e: &ConfigError) -> Exit {
    match e {
        ConfigError::Missing(_) | ConfigError::Invalid(..) => Exit::Usage,
        _ => Exit::Config,
    }
}

/// Says why on standard error and exits with `code`.
pub fn fail(code: Exit, message: &str) -> ExitCode {
    eprintln!("blackpony: {message}");
    ExitCode::from(code)
}

/// A start-up failure of `lmtp`: a `421 4.3.0` greeting (RFC 2033 §4.1,
/// RFC 5321 §3.1: the service is not available, try later) carrying the
/// reason, and the reason on stderr too unless stderr is that same pipe.
pub fn fail_lmtp(code: Exit, message: &str) -> ExitCode {
    use std::io::Write;
    let reason: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "421 4.3.0 blackpony: {reason}\r\n");
    let _ = out.flush();
    if !crate::log::stderr_is_stdout() {
        eprintln!("blackpony: {message}");
    }
    ExitCode::from(code)
}
