//! One-line log records in the style of Postfix's maillog:
//! `blackpony/inbound[1234]: session=1a2b connect client=unknown[192.0.2.7]:51234`.
//!
//! Where records go is chosen once per process ([`Sink`]): standard error by
//! default (under systemd, which sets `JOURNAL_STREAM`, the journal adds the
//! time; elsewhere each line starts with a UTC timestamp), syslog's mail
//! facility, or a file. One-shot and stdin/stdout modes must never mix log
//! records into what the MTA reads as the protocol or the status line, so
//! they hold records back or move them elsewhere (see the CLI).
//!
//! Logging never holds up a session: a record is formatted by the caller
//! and put on a bounded queue without waiting; one thread writes the queue
//! out. When the queue is full (standard error is a pipe nobody reads, a
//! slow journal) records are dropped and counted, and `log: dropped N
//! records` is written as soon as writing works again.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static PROGRAM: OnceLock<String> = OnceLock::new();
static STATE: Mutex<State> = Mutex::new(State::Unset);

/// Records waiting for the writer thread, at most (about 1 MiB).
pub const QUEUE_RECORDS: usize = 4096;

/// How long [`flush`] waits for the writer at exit.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

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

/// How a record is framed for its sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// One line, a UTC timestamp first.
    Stamped,
    /// One line; the journal adds the time.
    Plain,
    /// An RFC 3164 datagram: facility mail (2), severity info (6).
    Syslog,
}

enum Message {
    Record(String),
    /// Answered once everything before it is written.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The queue to the writer thread.
struct Queue {
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
    framing: Framing,
}

enum State {
    /// No `init` yet (tests, early errors): standard error, started on
    /// the first record.
    Unset,
    Queue(Queue),
    Held(Vec<String>, Framing),
    Discard,
}

fn stderr_framing() -> Framing {
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        Framing::Plain
    } else {
        Framing::Stamped
    }
}

/// Starts a writer thread for `sink` (not Held or Discard).
fn start(sink: Sink) -> State {
    let framing = match &sink {
        Sink::Syslog(_) => Framing::Syslog,
        Sink::File(_) => Framing::Stamped,
        Sink::Stderr | Sink::Held(_) | Sink::Discard => stderr_framing(),
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_RECORDS);
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&dropped);
    let spawned = std::thread::Builder::new()
        .name("log".into())
        .spawn(move || write_out(sink, framing, &rx, &counter));
    match spawned {
        Ok(_) => State::Queue(Queue {
            tx,
            dropped,
            framing,
        }),
        Err(_) => State::Discard,
    }
}

/// The writer thread: writes records as they come, in batches, and says
/// how many were dropped once it can write again.
fn write_out(mut sink: Sink, framing: Framing, rx: &Receiver<Message>, dropped: &AtomicU64) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Ok(first) = rx.recv() {
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(line) => {
                    if let Sink::Syslog(socket) = &sink {
                        let _ = socket.send(line.as_bytes());
                    } else {
                        batch.extend_from_slice(line.as_bytes());
                        batch.push(b'\n');
                    }
                }
                Message::Flush(ack) => acks.push(ack),
            }
            if batch.len() < 64 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        emit(&mut sink, &mut batch);
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let line = frame(
                framing,
                format_args!("log: dropped {lost} records (the log was not read fast enough)"),
            );
            if let Sink::Syslog(socket) = &sink {
                let _ = socket.send(line.as_bytes());
            } else {
                batch.extend_from_slice(line.as_bytes());
                batch.push(b'\n');
                emit(&mut sink, &mut batch);
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

fn emit(sink: &mut Sink, batch: &mut Vec<u8>) {
    if batch.is_empty() {
        return;
    }
    match sink {
        Sink::Stderr => {
            let _ = std::io::stderr().lock().write_all(batch);
        }
        Sink::File(file) => {
            let _ = file.write_all(batch);
        }
        Sink::Syslog(_) | Sink::Held(_) | Sink::Discard => {}
    }
    batch.clear();
}

fn lock() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets the program name shown before each record (`blackpony/inbound`) and
/// where records go.
pub fn init(role: &str, sink: Sink) {
    let _ = PROGRAM.set(format!("blackpony/{role}"));
    let state = match sink {
        Sink::Held(lines) => State::Held(lines, stderr_framing()),
        Sink::Discard => State::Discard,
        sink => start(sink),
    };
    *lock() = state;
}

/// Writes held records to standard error; later records go there directly.
pub fn flush_held() {
    let mut state = lock();
    if let State::Held(lines, _) = std::mem::replace(&mut *state, State::Unset) {
        *state = start(Sink::Stderr);
        if let State::Queue(q) = &*state {
            for line in lines {
                enqueue(q, line);
            }
        }
    }
}

/// Waits (a little, bounded) until the records logged so far are written:
/// before the process exits.
pub fn flush() {
    let deadline = Instant::now() + FLUSH_WAIT;
    let (ack, done) = std::sync::mpsc::channel();
    let mut message = Message::Flush(ack);
    loop {
        let sent = match &*lock() {
            State::Queue(q) => q.tx.try_send(message),
            _ => return,
        };
        match sent {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                message = m;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
    let _ = done.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}

fn enqueue(q: &Queue, line: String) {
    if let Err(TrySendError::Full(_)) = q.tx.try_send(Message::Record(line)) {
        q.dropped.fetch_add(1, Ordering::Relaxed);
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

/// One record as its sink wants it (without the line end).
fn frame(framing: Framing, args: std::fmt::Arguments<'_>) -> String {
    let program = PROGRAM.get().map_or("blackpony", String::as_str);
    let pid = std::process::id();
    let mut line = String::with_capacity(160);
    match framing {
        // RFC 3164: facility mail (2), severity info (6).
        Framing::Syslog => line.push_str("<22>"),
        Framing::Stamped => {
            line.push_str(&timestamp_utc(SystemTime::now()));
            line.push(' ');
        }
        Framing::Plain => {}
    }
    use std::fmt::Write as _;
    let _ = write!(line, "{program}[{pid}]: {args}");
    // Keep one record on one line whatever a peer put in it.
    if line.chars().any(char::is_control) {
        line = line
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
    }
    line
}

/// Writes one record. Use the [`log!`](crate::log!) macro rather than this.
pub fn write(args: std::fmt::Arguments<'_>) {
    // Format outside the lock: the lock only guards taking the queue.
    let queue = {
        let mut state = lock();
        if let State::Unset = &*state {
            *state = start(Sink::Stderr);
        }
        match &mut *state {
            State::Queue(q) => Queue {
                tx: q.tx.clone(),
                dropped: Arc::clone(&q.dropped),
                framing: q.framing,
            },
            State::Held(lines, framing) => {
                let mut line = frame(*framing, args);
                line.push('\n');
                lines.push(line);
                return;
            }
            State::Discard | State::Unset => return,
        }
    };
    let line = frame(queue.framing, args);
    enqueue(&queue, line);
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
