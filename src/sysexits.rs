//! Exit statuses: sysexits.h's, one table for every role.
//!
//! An MTA reads a mailer's status (Postfix's pipe(8) defers on 75 and 71
//! and bounces on every other non-zero status; sendmail also queues on 74);
//! systemd and cron read the long-running roles' and `fetch`'s. Which
//! outcome maps to which status is decided by each role (one-shot delivery:
//! `outbound::exit`; fetch: `relay::fetch::Report::exit`), with these names.

/// A status from sysexits.h (BSD), or 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// EX_USAGE: the command was used wrongly (a flag).
    Usage = 64,
    /// EX_DATAERR: the input data was refused (a message too large, a
    /// recipient the remote refused for its content).
    DataErr = 65,
    /// EX_NOINPUT: an input file does not exist or is not readable.
    NoInput = 66,
    /// EX_NOUSER: the remote does not know the user.
    NoUser = 67,
    /// EX_NOHOST: the host or domain does not exist.
    NoHost = 68,
    /// EX_UNAVAILABLE: a service or program needed is not available; for a
    /// mailer, a permanent failure of any other kind.
    Unavailable = 69,
    /// EX_OSERR: the system refused (a socket, a thread, an id change).
    OsErr = 71,
    /// EX_CANTCREAT: an output file cannot be created.
    CantCreat = 73,
    /// EX_IOERR: reading or writing failed.
    IoErr = 74,
    /// EX_TEMPFAIL: try again later; the only status every MTA queues on.
    TempFail = 75,
    /// EX_CONFIG: the configuration is wrong (a key file, a directory).
    Config = 78,
}

impl Exit {
    /// The number the process exits with.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn the_numbers_are_sysexits_h() {
        for (exit, code) in [
            (Exit::Ok, 0),
            (Exit::Usage, 64),
            (Exit::DataErr, 65),
            (Exit::NoInput, 66),
            (Exit::NoUser, 67),
            (Exit::NoHost, 68),
            (Exit::Unavailable, 69),
            (Exit::OsErr, 71),
            (Exit::CantCreat, 73),
            (Exit::IoErr, 74),
            (Exit::TempFail, 75),
            (Exit::Config, 78),
        ] {
            assert_eq!(exit.code(), code, "{exit:?}");
        }
    }
}
