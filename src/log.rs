//! One-line log records in the style of Postfix's maillog:
//! `blackpony/inbound[1234]: session=1a2b connect client=unknown[192.0.2.7]:51234`.
//!
//! Where records go is chosen once per process ([`Sink`]): standard error by
//! default (under systemd, which sets `JOURNAL_STREAM`, the journal adds the
//! time; elsewhere each line starts with a UTC timestamp), syslog's mail
//! facility, or a file. One-shot and stdin/stdout modes must never mix log
//! records into what the MTA reads as the protocol or the status line, so
//! they hold records back or move them elsewhere (see the CLI).

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

static PROGRAM: OnceLock<String> = OnceLock::new();
static SINK: Mutex<Sink> = Mutex::new(Sink::Stderr);

/// Where log records go.
#[derive(Debug)]
pub enum Sink {
    Stderr,
    /// The local syslog socket, facility mail (as Postfix logs).
    Syslog(UnixDatagram),
    File(std::fs::File),
    /// Kept in memory until [`flush_held`] writes them to standard error:
    /// for `deliver`, whose first output line is read by the MTA.
    Held(Vec<String>),
    /// Nowhere: only when no other place is safe.
    Discard,
}

impl Sink {
    /// The local syslog socket, if a syslog daemon listens on /dev/log.
    pub fn syslog() -> Option<Sink> {
        let socket = UnixDatagram::unbound().ok()?;
        socket.connect("/dev/log").ok()?;
        Some(Sink::Syslog(socket))
    }

    /// A file, appended to.
    pub fn file(path: &std::path::Path) -> std::io::Result<Sink> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Sink::File)
    }
}

/// Sets the program name shown before each record (`blackpony/inbound`) and
/// where records go.
pub fn init(role: &str, sink: Sink) {
    let _ = PROGRAM.set(format!("blackpony/{role}"));
    if let Ok(mut current) = SINK.lock() {
        *current = sink;
    }
}

/// Writes held records to standard error; later records go there directly.
pub fn flush_held() {
    let Ok(mut sink) = SINK.lock() else {
        return;
    };
    if let Sink::Held(lines) = std::mem::replace(&mut *sink, Sink::Stderr) {
        let mut err = std::io::stderr().lock();
        for line in lines {
            let _ = err.write_all(line.as_bytes());
        }
    }
}

/// Whether standard error is the same open file as standard output (an MTA
/// that gives its child one pipe for both, as Exim's pipe/lmtp `command`).
pub fn stderr_is_stdout() -> bool {
    use std::os::fd::AsFd;
    let same = |a: std::io::Stdout, b: std::io::Stderr| -> Option<bool> {
        let fa = a.as_fd().try_clone_to_owned().ok()?;
        let fb = b.as_fd().try_clone_to_owned().ok()?;
        let ma = std::fs::File::from(fa).metadata().ok()?;
        let mb = std::fs::File::from(fb).metadata().ok()?;
        use std::os::unix::fs::MetadataExt;
        Some(ma.dev() == mb.dev() && ma.ino() == mb.ino())
    };
    same(std::io::stdout(), std::io::stderr()).unwrap_or(false)
}

/// Writes one record. Use the [`log!`](crate::log!) macro rather than this.
pub fn write(args: std::fmt::Arguments<'_>) {
    let program = PROGRAM.get().map_or("blackpony", String::as_str);
    let pid = std::process::id();
    let Ok(mut sink) = SINK.lock() else {
        return;
    };
    let timestamp = match &*sink {
        Sink::Syslog(_) | Sink::Discard => false,
        Sink::Stderr | Sink::Held(_) => std::env::var_os("JOURNAL_STREAM").is_none(),
        Sink::File(_) => true,
    };
    let mut line = String::with_capacity(160);
    if let Sink::Syslog(_) = &*sink {
        // RFC 3164: facility mail (2), severity info (6).
        line.push_str("<22>");
    }
    if timestamp {
        line.push_str(&timestamp_utc(SystemTime::now()));
        line.push(' ');
    }
    use std::fmt::Write as _;
    let _ = write!(line, "{program}[{pid}]: {args}");
    // Keep one record on one line whatever a peer put in it.
    let mut line: String = line
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    match &mut *sink {
        Sink::Stderr => {
            line.push('\n');
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
        Sink::Syslog(socket) => {
            let _ = socket.send(line.as_bytes());
        }
        Sink::File(file) => {
            line.push('\n');
            let _ = file.write_all(line.as_bytes());
        }
        Sink::Held(lines) => {
            line.push('\n');
            lines.push(line);
        }
        Sink::Discard => {}
    }
}

/// Logs one record: `log!("session={id} connect client={client}")`.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::log::write(format_args!($($arg)*)) };
}

/// `2026-11-23T10:00:00Z`.
pub fn timestamp_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, mo, d) = civil_from_days((secs / 86400) as i64);
    let s = secs % 86400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// RFC 5322 §3.3 date, in UTC: `Mon, 23 Nov 2026 10:00:00 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    Rfc5322Date(t).to_string()
}

/// Formats as an RFC 5322 date without allocating (for trace headers).
#[derive(Debug, Clone, Copy)]
pub struct Rfc5322Date(pub SystemTime);

impl std::fmt::Display for Rfc5322Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let secs = self.0.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let days = (secs / 86400) as i64;
        let (y, mo, d) = civil_from_days(days);
        let s = secs % 86400;
        write!(
            f,
            "{}, {d} {} {y:04} {:02}:{:02}:{:02} +0000",
            DAYS[(days % 7) as usize],
            MONTHS[(mo - 1) as usize],
            s / 3600,
            s / 60 % 60,
            s % 60
        )
    }
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_428_000); // 2026-11-23 10:00:00 UTC
        assert_eq!(timestamp_utc(t), "2026-11-23T10:00:00Z");
        assert_eq!(rfc5322_date(t), "Mon, 23 Nov 2026 10:00:00 +0000");
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp_utc(leap), "2000-02-29T00:00:00Z");
    }
}
