//! The command line's one error type: why the settings cannot be used.

use std::path::PathBuf;

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
