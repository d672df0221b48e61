//! One-line log records in the style of Postfix's maillog:
//! `blackpony/inbound[1234]: session=1a2b connect client=unknown[192.0.2.7]:51234`.
//!
//! Records are [`tracing`] events: [`log!`](crate::log!) keeps its
//! `format!`-style call sites and emits an INFO event with target
//! [`TARGET`]; a session is a span ([`in_session`]) whose fields
//! (`session=1a2b`) start every record logged inside it. The [`Records`]
//! layer formats each event into the same bytes as the hand-written
//! logger it replaced (a unit test holds the two side by side); events and
//! spans of other crates (hickory, reqwest) are not logged.
//!
//! Where records go is chosen once per process ([`Sink`]): standard error by
//! default (under systemd, which sets `JOURNAL_STREAM`, the journal adds the
//! time; elsewhere each line starts with a UTC timestamp), syslog's mail
//! facility, or a file. One-shot and stdin/stdout modes must never mix log
//! records into what the MTA reads as the protocol or the status line, so
//! they hold records back or move them elsewhere (see the CLI).
//!
//! Logging never holds up a session: a record is formatted by the caller
//! and put on a bounded queue without waiting (no lock is taken); one
//! thread writes the queue out. When the queue is full (standard error is
//! a pipe nobody reads, a slow journal) records are dropped and counted,
//! and `log: dropped N records` is written as soon as writing works again.
//!
//! Under load ([`BUSY_RECORDS`] a second or more) the writer lingers
//! ([`LINGER`]) after each batch before it waits on the queue again:
//! records logged meanwhile are written together instead of each waking the
//! thread. A busy server logs a record or more per message, and a wake-up
//! (a futex call by the sender, a context switch, a write) cost more than
//! the rest of the record. Below that rate every record is written as soon
//! as it is logged, so whoever reads the log after a session sees its
//! lines; a half-full queue, a flush or a change of sink cuts a linger
//! short.

use std::fmt::Write as _;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[doc(hidden)]
pub use tracing as __tracing;

/// The target of blackpony's own events and spans: only these are logged.
pub const TARGET: &str = "blackpony";

/// `blackpony/ROLE`, set by [`init`].
static PROGRAM: OnceLock<String> = OnceLock::new();
/// `blackpony/ROLE[PID]: `, what every record starts with after its
/// framing (blackpony never forks, so the process id stays).
static HEAD: OnceLock<String> = OnceLock::new();
/// The framing records are formatted with now ([`Mode`] as a byte).
static MODE: AtomicU8 = AtomicU8::new(Mode::Unset as u8);
/// Whether the writer holds records for [`flush_held`].
static HELD: AtomicBool = AtomicBool::new(false);
/// The queue to the writer thread, started with the first record or
/// [`init`].
static WRITER: OnceLock<Writer> = OnceLock::new();
static INSTALLED: Once = Once::new();

/// Records waiting for the writer thread, at most (about 1 MiB).
pub const QUEUE_RECORDS: usize = 4096;

/// How long the writer gathers records after a batch before it writes the
/// next one (see the module documentation).
const LINGER: Duration = Duration::from_millis(20);

/// Records per second from which the writer lingers.
const BUSY_RECORDS: u32 = 200;

/// Whether records come fast enough for the writer to linger: at least
/// [`BUSY_RECORDS`] in the last whole second or in this one so far.
#[derive(Debug)]
struct Rate {
    since: Instant,
    this_second: u32,
    last_second: u32,
}

impl Rate {
    fn new(now: Instant) -> Rate {
        Rate {
            since: now,
            this_second: 0,
            last_second: 0,
        }
    }

    /// Counts `records` written at `now`; true when the writer should linger.
    fn busy_after(&mut self, records: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= Duration::from_secs(2) {
            // A quiet second in between: nothing carries over.
            *self = Rate::new(now);
        } else if elapsed >= Duration::from_secs(1) {
            self.last_second = self.this_second;
            self.this_second = 0;
            self.since += Duration::from_secs(1);
        }
        self.this_second = self
            .this_second
            .saturating_add(u32::try_from(records).unwrap_or(u32::MAX));
        self.this_second.max(self.last_second) >= BUSY_RECORDS
    }
}

/// How long [`flush`] (and a change of sink) waits for the writer.
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

/// [`Framing`], or no record at all, as kept in [`MODE`].
#[derive(Clone, Copy)]
#[repr(u8)]
enum Mode {
    /// No `init` yet (tests, early errors): standard error.
    Unset,
    Stamped,
    Plain,
    Syslog,
    Discard,
}

impl Mode {
    fn of(framing: Framing) -> Mode {
        match framing {
            Framing::Stamped => Mode::Stamped,
            Framing::Plain => Mode::Plain,
            Framing::Syslog => Mode::Syslog,
        }
    }
}

/// The framing for records now; `None` when they are discarded.
fn framing() -> Option<Framing> {
    match MODE.load(Ordering::Relaxed) {
        m if m == Mode::Stamped as u8 => Some(Framing::Stamped),
        m if m == Mode::Plain as u8 => Some(Framing::Plain),
        m if m == Mode::Syslog as u8 => Some(Framing::Syslog),
        m if m == Mode::Discard as u8 => None,
        _ => {
            let framing = stderr_framing();
            let _ = MODE.compare_exchange(
                Mode::Unset as u8,
                Mode::of(framing) as u8,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            Some(framing)
        }
    }
}

enum Message {
    Record(String),
    /// Answered once everything before it is written.
    Flush(std::sync::mpsc::Sender<()>),
    /// Records from now on go here (held records are written there first).
    Sink(Sink),
}

/// The queue to the writer thread.
struct Writer {
    tx: SyncSender<Message>,
    dropped: AtomicU64,
    /// Records on the queue now, to end the writer's linger before the
    /// queue fills.
    queued: AtomicUsize,
    /// The writer thread, to end its linger; `None` if it did not start.
    thread: Option<std::thread::Thread>,
}

impl Writer {
    fn enqueue(&self, line: String) {
        // Counted before the record is on the queue, so the writer, which
        // subtracts what it took, never takes the count below zero.
        let queued = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
        match self.tx.try_send(Message::Record(line)) {
            Ok(()) => {
                if queued >= QUEUE_RECORDS / 2 {
                    self.wake();
                }
            }
            Err(TrySendError::Full(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.wake();
            }
            Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Ends the writer's linger (nothing if it waits on the queue).
    fn wake(&self) {
        if let Some(thread) = &self.thread {
            thread.unpark();
        }
    }

    /// Puts `message` on the queue, waiting (a little, bounded) for room:
    /// for the rare messages that must not be dropped.
    fn send(&self, mut message: Message) -> bool {
        let deadline = Instant::now() + FLUSH_WAIT;
        loop {
            match self.tx.try_send(message) {
                Ok(()) => {
                    self.wake();
                    return true;
                }
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    message = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
    }
}

fn stderr_framing() -> Framing {
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        Framing::Plain
    } else {
        Framing::Stamped
    }
}

/// Starts the writer thread with `sink`. If no thread can be started,
/// records are dropped (the queue has no reader).
fn start(sink: Sink) -> Writer {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_RECORDS);
    let thread = std::thread::Builder::new()
        .name("log".into())
        .spawn(move || write_out(sink, &rx))
        .ok()
        .map(|handle| handle.thread().clone());
    Writer {
        tx,
        dropped: AtomicU64::new(0),
        queued: AtomicUsize::new(0),
        thread,
    }
}

fn writer() -> &'static Writer {
    WRITER.get_or_init(|| start(Sink::Stderr))
}

/// The writer thread: writes records as they come, in batches, and says
/// how many were dropped once it can write again.
fn write_out(mut sink: Sink, rx: &Receiver<Message>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut rate = Rate::new(Instant::now());
    while let Ok(first) = rx.recv() {
        let mut acks = Vec::new();
        let mut records = 0;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(line) => {
                    records += 1;
                    put(&mut sink, &mut batch, line);
                }
                Message::Flush(ack) => acks.push(ack),
                Message::Sink(new) => {
                    emit(&mut sink, &mut batch);
                    if let Sink::Held(lines) = std::mem::replace(&mut sink, new) {
                        for line in lines {
                            put(&mut sink, &mut batch, line);
                        }
                    }
                }
            }
            if batch.len() < 64 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        emit(&mut sink, &mut batch);
        let writer = WRITER.get();
        if let Some(w) = writer {
            w.queued.fetch_sub(records, Ordering::Relaxed);
        }
        let lost = writer.map_or(0, |w| w.dropped.swap(0, Ordering::Relaxed));
        if lost > 0
            && let Some(framing) = framing()
        {
            let mut line = String::with_capacity(120);
            start_line(&mut line, framing, SystemTime::now());
            let _ = write!(
                line,
                "log: dropped {lost} records (the log was not read fast enough)"
            );
            put(&mut sink, &mut batch, line);
            emit(&mut sink, &mut batch);
        }
        for ack in acks {
            let _ = ack.send(());
        }
        if records > 0 && rate.busy_after(records, Instant::now()) {
            std::thread::park_timeout(LINGER);
        }
    }
}

/// Adds one record (without its line end) to what goes to `sink`.
fn put(sink: &mut Sink, batch: &mut Vec<u8>, line: String) {
    match sink {
        Sink::Syslog(socket) => {
            let _ = socket.send(line.as_bytes());
        }
        Sink::Held(lines) => lines.push(line),
        Sink::Discard => {}
        Sink::Stderr | Sink::File(_) => {
            batch.extend_from_slice(line.as_bytes());
            batch.push(b'\n');
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

/// Installs the [`Records`] layer as the process's tracing subscriber
/// (once; [`log!`](crate::log!) calls it, so records logged before [`init`]
/// go to standard error as well).
pub fn install() {
    INSTALLED.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(Records { to: To::Queue });
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// Sets the program name shown before each record (`blackpony/inbound`) and
/// where records go.
pub fn init(role: &str, sink: Sink) {
    install();
    let program = format!("blackpony/{role}");
    let _ = HEAD.set(format!("{program}[{}]: ", std::process::id()));
    let _ = PROGRAM.set(program);
    let mode = match &sink {
        Sink::Syslog(_) => Mode::Syslog,
        Sink::File(_) => Mode::Stamped,
        Sink::Discard => Mode::Discard,
        Sink::Stderr | Sink::Held(_) => Mode::of(stderr_framing()),
    };
    HELD.store(matches!(sink, Sink::Held(_)), Ordering::Relaxed);
    MODE.store(mode as u8, Ordering::Relaxed);
    let mut fresh = Some(sink);
    let w = WRITER.get_or_init(|| start(fresh.take().unwrap_or(Sink::Stderr)));
    if let Some(sink) = fresh {
        w.send(Message::Sink(sink));
    }
}

/// Writes held records to standard error; later records go there directly.
pub fn flush_held() {
    if HELD.swap(false, Ordering::Relaxed) {
        writer().send(Message::Sink(Sink::Stderr));
    }
}

/// Waits (a little, bounded) until the records logged so far are written:
/// before the process exits.
pub fn flush() {
    let Some(w) = WRITER.get() else { return };
    let deadline = Instant::now() + FLUSH_WAIT;
    let (ack, done) = std::sync::mpsc::channel();
    if w.send(Message::Flush(ack)) {
        let _ = done.recv_timeout(deadline.saturating_duration_since(Instant::now()));
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

/// The start of a record, up to its text: the framing, then
/// `blackpony/ROLE[PID]: `.
fn start_line(line: &mut String, framing: Framing, now: SystemTime) {
    match framing {
        // RFC 3164: facility mail (2), severity info (6).
        Framing::Syslog => line.push_str("<22>"),
        Framing::Stamped => {
            write_timestamp(line, now);
            line.push(' ');
        }
        Framing::Plain => {}
    }
    match HEAD.get() {
        Some(head) => line.push_str(head),
        None => {
            let _ = write!(line, "blackpony[{}]: ", std::process::id());
        }
    }
}

/// Keeps one record on one line whatever a peer put in it (every control
/// character becomes `?`); also for other lines an MTA reads, such as the
/// status line of `deliver`.
pub(crate) fn one_line(line: &mut String) {
    if line.chars().any(char::is_control) {
        *line = line
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
    }
}

/// The tracing layer that turns blackpony's events into records.
struct Records {
    to: To,
}

enum To {
    /// The writer thread's queue, framed as [`MODE`] says.
    Queue,
    /// Kept, framed as given at a fixed time: for the tests.
    #[cfg(test)]
    Kept {
        framing: Framing,
        at: SystemTime,
        lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    },
}

/// A span's fields as they start a record: `session=1a2b `.
struct Prefix(String);

/// Writes fields as `name=value ` (the message field aside).
struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() != "message" {
            let _ = write!(self.0, "{}={value} ", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() != "message" {
            let _ = write!(self.0, "{}={value:?} ", field.name());
        }
    }
}

/// Writes the message field: the `format_args!` of [`log!`](crate::log!),
/// whose `Debug` is its `Display`.
struct Text<'a>(&'a mut String);

impl Visit for Text<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

impl Records {
    fn framing_now(&self) -> Option<(Framing, SystemTime)> {
        match &self.to {
            To::Queue => framing().map(|f| (f, SystemTime::now())),
            #[cfg(test)]
            To::Kept { framing, at, .. } => Some((*framing, *at)),
        }
    }
}

fn ours(metadata: &Metadata<'_>) -> bool {
    metadata.target() == TARGET
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Records {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if ours(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        ours(metadata)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut prefix = String::new();
        attrs.record(&mut Fields(&mut prefix));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Prefix(prefix));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(prefix) = span.extensions_mut().get_mut::<Prefix>()
        {
            values.record(&mut Fields(&mut prefix.0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some((framing, now)) = self.framing_now() else {
            return;
        };
        let mut line = String::with_capacity(160);
        start_line(&mut line, framing, now);
        // The spans' fields, outermost first; a session has one span, so
        // the common case needs no list.
        let mut scope = ctx.event_scope(event).into_iter().flatten();
        if let Some(inner) = scope.next() {
            let mut outer: Vec<_> = scope.collect();
            outer.reverse();
            for span in outer.iter().chain(std::iter::once(&inner)) {
                if let Some(prefix) = span.extensions().get::<Prefix>() {
                    line.push_str(&prefix.0);
                }
            }
        }
        event.record(&mut Fields(&mut line));
        event.record(&mut Text(&mut line));
        one_line(&mut line);
        match &self.to {
            To::Queue => writer().enqueue(line),
            #[cfg(test)]
            To::Kept { lines, .. } => lines.lock().unwrap_or_else(|p| p.into_inner()).push(line),
        }
    }
}

/// Runs `session` inside a span whose fields start every record it logs:
/// `in_session(&id, serve(..))` logs `session=ID connect ...` for
/// `log!("connect ...")`.
pub fn in_session<F: std::future::Future>(
    id: &str,
    session: F,
) -> tracing::instrument::Instrumented<F> {
    use tracing::Instrument;
    session.instrument(tracing::info_span!(target: TARGET, "session", session = id))
}

/// Logs one record: `log!("session={id} connect client={client}")`.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        $crate::log::install();
        $crate::log::__tracing::event!(
            target: $crate::log::TARGET,
            $crate::log::__tracing::Level::INFO,
            $($arg)*
        )
    }};
}

/// `2026-11-23T10:00:00Z`.
pub fn timestamp_utc(t: SystemTime) -> String {
    let mut out = String::with_capacity(20);
    write_timestamp(&mut out, t);
    out
}

fn write_timestamp(out: &mut String, t: SystemTime) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, mo, d) = civil_from_days((secs / 86400) as i64);
    let s = secs % 86400;
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    );
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

    #[test]
    fn the_writer_lingers_only_under_load() {
        let t0 = Instant::now();
        let s = Duration::from_millis;
        let mut rate = Rate::new(t0);
        // A session's few records: each written at once.
        assert!(!rate.busy_after(4, t0));
        assert!(!rate.busy_after(1, t0 + s(5)));
        // 200 in one second: busy from the 200th on, and through the next second.
        assert!(rate.busy_after(195, t0 + s(500)));
        assert!(rate.busy_after(1, t0 + s(1500)));
        // A second with few records after a busy one: busy still (the last second was).
        assert!(!Rate::new(t0).busy_after(199, t0));
        // Two quiet seconds later nothing carries over.
        assert!(!rate.busy_after(1, t0 + s(3600)));
    }
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// The formatter of the hand-written logger this module replaced,
    /// verbatim but for the time, which it took from the clock: the
    /// records must stay byte for byte what it wrote (the interop tests
    /// and `blackpony stats` read them).
    fn frame_before_tracing(
        framing: Framing,
        now: SystemTime,
        args: std::fmt::Arguments<'_>,
    ) -> String {
        let program = PROGRAM.get().map_or("blackpony", String::as_str);
        let pid = std::process::id();
        let mut line = String::with_capacity(160);
        match framing {
            // RFC 3164: facility mail (2), severity info (6).
            Framing::Syslog => line.push_str("<22>"),
            Framing::Stamped => {
                line.push_str(&timestamp_utc(now));
                line.push(' ');
            }
            Framing::Plain => {}
        }
        use std::fmt::Write as _;
        let _ = write!(line, "{program}[{pid}]: {args}");
        one_line(&mut line);
        line
    }

    /// What `log` wrote through the [`Records`] layer, framed as given.
    fn recorded(framing: Framing, at: SystemTime, log: impl FnOnce()) -> Vec<String> {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let layer = Records {
            to: To::Kept {
                framing,
                at,
                lines: Arc::clone(&lines),
            },
        };
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log);
        lines.lock().expect("lines").clone()
    }

    #[test]
    fn records_are_byte_for_byte_those_of_the_logger_before_tracing() {
        let at = UNIX_EPOCH + Duration::from_secs(1_795_428_000);
        let who = "unknown[192.0.2.7]:51234";
        let reply = Reply("250 2.0.0 Ok: queued as 4XyZ");
        let secs = 0.012_345_f64;
        for framing in [Framing::Stamped, Framing::Plain, Framing::Syslog] {
            let mut expected = Vec::new();
            let mut expect = |args: std::fmt::Arguments<'_>| {
                expected.push(frame_before_tracing(framing, at, args));
            };
            // The same records, as today's call sites write them: outside
            // a session, then inside one (the span gives `session=ID `).
            expect(format_args!(
                "listening on 127.0.0.1:25 backend=127.0.0.1:10025 identity=proxy-v2 require_tls=false"
            ));
            expect(format_args!(
                "log: {{braces}} {:>5}|{:<3}|{:08X}",
                "r", "l", 42
            ));
            expect(format_args!(
                "peer said \"a\tb\r\nc\u{1b}[31m\u{85}\" é ✉ {:?}",
                "q\"x"
            ));
            expect(format_args!(""));
            expect(format_args!(
                "session=0000002A connect client={who} identity={}",
                "proxy-v2"
            ));
            expect(format_args!(
                "session=0000002A disconnect client={who} tls=none identity=proxy-v2 messages=1 refused=0 bytes=1024 end=quit reply=\"{reply}\" duration={secs:.3}s"
            ));
            expect(format_args!(
                "session=0000002A refused=bad-syntax line=\"\u{0}\u{7f}x\" client={who}"
            ));
            expect(format_args!(
                "session=0000002A evicted behind={:.1}s client={} (all slots taken)",
                1.25, who
            ));
            expect(format_args!("shutdown: done"));
            let got = recorded(framing, at, || {
                crate::log!(
                    "listening on 127.0.0.1:25 backend=127.0.0.1:10025 identity=proxy-v2 require_tls=false"
                );
                crate::log!("log: {{braces}} {:>5}|{:<3}|{:08X}", "r", "l", 42);
                crate::log!("peer said \"a\tb\r\nc\u{1b}[31m\u{85}\" é ✉ {:?}", "q\"x");
                crate::log!("");
                let session = async {
                    crate::log!("connect client={who} identity={}", "proxy-v2");
                    crate::log!(
                        "disconnect client={who} tls=none identity=proxy-v2 messages=1 refused=0 bytes=1024 end=quit reply=\"{reply}\" duration={secs:.3}s"
                    );
                    crate::log!("refused=bad-syntax line=\"\u{0}\u{7f}x\" client={who}");
                    crate::log!(
                        "evicted behind={:.1}s client={} (all slots taken)",
                        1.25,
                        who
                    );
                };
                use futures_util::FutureExt as _;
                assert_eq!(in_session("0000002A", session).now_or_never(), Some(()));
                crate::log!("shutdown: done");
                // Other crates' events are not blackpony's records.
                tracing::info!(target: "hickory_proto::xfer", "sending query");
                tracing::warn!("an event without blackpony's target");
            });
            assert_eq!(got, expected, "{framing:?}");
        }
    }

    /// Held records (`deliver`'s, until its status line is out) are written
    /// one per line where records go next, in order, with the records after
    /// them (the logger before tracing wrote an empty line after each).
    #[test]
    fn held_records_go_out_one_line_each_at_the_change_of_sink() {
        let dir = std::env::temp_dir().join(format!("blackpony-log-held-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("log");
        let file = Sink::file(&path).expect("log file");
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_RECORDS);
        let thread = std::thread::spawn(move || write_out(Sink::Held(Vec::new()), &rx));
        let (ack, done) = std::sync::mpsc::channel();
        for message in [
            Message::Record("a held".into()),
            Message::Record("b held".into()),
            Message::Sink(file),
            Message::Record("c after".into()),
            Message::Flush(ack),
        ] {
            tx.send(message).expect("writer");
        }
        done.recv_timeout(Duration::from_secs(10)).expect("flushed");
        drop(tx);
        thread.join().expect("writer thread");
        let written = std::fs::read_to_string(&path).expect("read log");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(written, "a held\nb held\nc after\n");
    }

    /// Displays as a reply does (the records embed replies with `{}`).
    struct Reply(&'static str);

    impl std::fmt::Display for Reply {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    #[test]
    fn span_fields_start_records_outermost_first() {
        let at = UNIX_EPOCH;
        let got = recorded(Framing::Plain, at, || {
            let outer = tracing::info_span!(target: TARGET, "listener", port = 25_u16);
            outer.in_scope(|| {
                // A span's parent is the span current where it is made.
                let inner = tracing::info_span!(target: TARGET, "session", session = "01");
                inner.in_scope(|| crate::log!("connect"));
            });
            // A span of another crate adds nothing.
            let theirs = tracing::info_span!(target: "hyper", "conn", id = 7);
            theirs.in_scope(|| crate::log!("fetched"));
        });
        let pid = std::process::id();
        let program = PROGRAM.get().map_or("blackpony", String::as_str);
        assert_eq!(
            got,
            [
                format!("{program}[{pid}]: port=25 session=01 connect"),
                format!("{program}[{pid}]: fetched"),
            ]
        );
    }

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
