//! One-line log records in the style of Postfix's maillog:
//! `blackpony/inbound[1234]: session=1a2b connect client=unknown[192.0.2.7]:51234`.
//!
//! Records go to standard error. Under systemd (which sets `JOURNAL_STREAM`)
//! the journal adds the time; elsewhere each line starts with a UTC timestamp.

use std::io::Write;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static PROGRAM: OnceLock<String> = OnceLock::new();

/// Records held back until [`flush_held`] (one-shot commands: an MTA such as
/// Postfix's pipe(8) reads the first line of the output as the status, so
/// log records must come after it).
static HELD: std::sync::Mutex<Option<Vec<String>>> = std::sync::Mutex::new(None);

/// Sets the program name shown before each record (`blackpony/inbound`).
pub fn init(role: &str) {
    let _ = PROGRAM.set(format!("blackpony/{role}"));
}

/// Holds records back until [`flush_held`] is called.
pub fn hold() {
    if let Ok(mut held) = HELD.lock() {
        *held = Some(Vec::new());
    }
}

/// Writes the held records to standard error and stops holding.
pub fn flush_held() {
    let lines = HELD
        .lock()
        .ok()
        .and_then(|mut h| h.take())
        .unwrap_or_default();
    let mut err = std::io::stderr().lock();
    for line in lines {
        let _ = err.write_all(line.as_bytes());
    }
}

/// Writes one record. Use the [`log!`](crate::log!) macro rather than this.
pub fn write(args: std::fmt::Arguments<'_>) {
    let program = PROGRAM.get().map_or("blackpony", String::as_str);
    let pid = std::process::id();
    let mut line = String::with_capacity(160);
    if std::env::var_os("JOURNAL_STREAM").is_none() {
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
    line.push('\n');
    if let Ok(mut held) = HELD.lock()
        && let Some(lines) = held.as_mut()
    {
        lines.push(line);
        return;
    }
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
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
