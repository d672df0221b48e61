//! `--soft-error-limit` and `--hard-error-limit` of `blackpony inbound`
//! (config keys `soft_error_limit`, `hard_error_limit`): Postfix's
//! `smtpd_soft_error_limit` and `smtpd_hard_error_limit`.

use clap::Args;

use super::config::InboundFile;
use super::error::ConfigError;
use crate::inbound::session::ErrorLimits;

#[derive(Debug, Args, Default)]
pub struct ErrorLimitArgs {
    /// Errors a client may make (syntax errors, unknown or refused commands,
    /// without delivering a message) before every reply to it waits 1 s
    /// [default: 10].
    #[arg(long, value_name = "N")]
    pub soft_error_limit: Option<u32>,

    /// Errors after which the client gets `421 4.7.0 Error: too many errors`
    /// and is disconnected [default: 20].
    #[arg(long, value_name = "N")]
    pub hard_error_limit: Option<u32>,
}

impl ErrorLimitArgs {
    /// Flags win over the file; the file wins over the defaults.
    pub fn merge(&self, file: &InboundFile) -> Result<ErrorLimits, ConfigError> {
        let mut limits = ErrorLimits::default();
        if let Some(n) = self.soft_error_limit.or(file.soft_error_limit) {
            limits.soft = n;
        }
        if let Some(n) = self.hard_error_limit.or(file.hard_error_limit) {
            if n == 0 {
                return Err(ConfigError::Invalid(
                    "--hard-error-limit".into(),
                    "must be at least 1".into(),
                ));
            }
            limits.hard = n;
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_over_file_over_defaults() {
        let file = InboundFile {
            soft_error_limit: Some(3),
            hard_error_limit: Some(5),
            ..Default::default()
        };
        let none = ErrorLimitArgs::default();
        assert_eq!(
            none.merge(&InboundFile::default()).unwrap(),
            ErrorLimits::default()
        );
        let from_file = none.merge(&file).unwrap();
        assert_eq!((from_file.soft, from_file.hard), (3, 5));
        let flags = ErrorLimitArgs {
            soft_error_limit: Some(1),
            hard_error_limit: Some(2),
        };
        let merged = flags.merge(&file).unwrap();
        assert_eq!((merged.soft, merged.hard), (1, 2));
        let zero = ErrorLimitArgs {
            hard_error_limit: Some(0),
            ..Default::default()
        };
        assert!(zero.merge(&file).is_err());
    }
}
