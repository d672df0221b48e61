//! The listener harness every server role runs on (`inbound`, `outbound`,
//! the sealed relay's `seal` and its fetch server): the accept loop, connection
//! limits per client address, per network and in all, stress, eviction of
//! idle sessions for newcomers, a bounded refusal path, and the drain at
//! shutdown. A role gives it a bound listener, its limits, a shutdown
//! future and a function serving one connection; tests bind port 0.
//!
//! - [`table`]: who holds a slot, stress, and whom to evict (sans-IO);
//! - [`deadline`]: per-line and per-message client deadlines (sans-IO);
//! - [`listener`]: binding with the system's accept queue, the open-file
//!   limit;
//! - [`memory`]: a budget of message octets held by all sessions at once;
//! - `threads`: serving on one single-threaded runtime per core, each
//!   connection handed to the thread serving the fewest sessions;
//! - this module: the accept loop and each session's [`Control`].
//!
//! At shutdown the listener closes, sessions get `shutdown_grace` to end on
//! their own, then each is told [`Order::Close`] (the inbound answers
//! `421 4.3.2` and logs its end), and whatever still runs a few seconds
//! later is cut.

pub mod deadline;
pub mod listener;
pub mod memory;
pub mod table;
mod threads;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

pub use deadline::{ClientClock, Timeouts};
pub use table::{Activity, Limits, Refused, canonical_ip};
pub use threads::run_threads;

use crate::log;
use crate::smtp::{Reply, replies};
use table::{Admission, Entry, Table};

/// After the grace period, how long sessions told to close may take to
/// write their last reply before they are cut.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// `unknown[192.0.2.7]:51234`, as Postfix names a client without a PTR name.
pub fn display_client(addr: SocketAddr) -> String {
    ClientName(addr).to_string()
}

/// A client's name in log lines ([`display_client`]), written out only when
/// a line is: a session keeps the address, not the text.
#[derive(Debug, Clone, Copy)]
pub struct ClientName(pub SocketAddr);

impl std::fmt::Display for ClientName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = canonical_ip(self.0.ip());
        write!(f, "unknown[{ip}]:{}", self.0.port())
    }
}

fn display_peer(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "local".to_string(), display_client)
}

/// A listening socket the harness can accept from.
pub trait Listen: Send + Sync {
    type Conn: Send + 'static;
    /// The next connection and its peer's address (None for a Unix socket).
    fn accept(
        &self,
    ) -> impl Future<Output = std::io::Result<(Self::Conn, Option<SocketAddr>)>> + Send;
    /// Writes `reply` without waiting and closes: a fresh connection's
    /// send buffer is empty, so a short reply always fits, and the refusal
    /// path holds no task and no descriptor however many arrive.
    fn refuse(conn: Self::Conn, reply: &[u8]);
}

impl Listen for TcpListener {
    type Conn = TcpStream;

    async fn accept(&self) -> std::io::Result<(TcpStream, Option<SocketAddr>)> {
        let (tcp, peer) = TcpListener::accept(self).await?;
        let _ = tcp.set_nodelay(true);
        Ok((tcp, Some(peer)))
    }

    fn refuse(conn: TcpStream, reply: &[u8]) {
        use std::io::Write;
        if let Ok(std) = conn.into_std() {
            let _ = (&std).write(reply);
            let _ = std.shutdown(std::net::Shutdown::Write);
        }
    }
}

impl Listen for UnixListener {
    type Conn = UnixStream;

    async fn accept(&self) -> std::io::Result<(UnixStream, Option<SocketAddr>)> {
        let (stream, _) = UnixListener::accept(self).await?;
        Ok((stream, None))
    }

    fn refuse(conn: UnixStream, reply: &[u8]) {
        use std::io::Write;
        if let Ok(std) = conn.into_std() {
            let _ = (&std).write(reply);
            let _ = std.shutdown(std::net::Shutdown::Write);
        }
    }
}

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Running,
    /// No longer accepting; sessions finish on their own.
    Draining,
    /// The grace period is over: sessions must end now.
    Closing,
    /// Sessions that did not end after [`Order::Close`] are cut.
    Cut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Weather {
    stage: Stage,
    stressed: bool,
}

struct Inner {
    table: Table,
}

struct Shared {
    inner: Mutex<Inner>,
    /// The stage and stress, for the accept loops; sessions are woken
    /// through their table entries instead (see [`Shared::change_weather`]).
    weather: watch::Sender<Weather>,
    /// Counts the changes of `weather`: a session that saw another count
    /// than this has an order to take ([`Control::poll_order`]). Changed
    /// under the table's lock, which orders it with admissions.
    weather_version: AtomicU64,
    epoch: Instant,
    /// The role's own refusal ([`Settings::refusal`]): the reply's bytes
    /// and the log record.
    refusal: Option<(Vec<u8>, String)>,
    /// Newcomers held at a full table (see [`admit_when_free`]), and their
    /// wake-up when a slot is given back.
    holding: AtomicUsize,
    freed: Notify,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the weather (`change` says whether it did) with the table's
    /// lock held, and wakes every session to look at it. Waking each entry
    /// costs what a watch channel's wake-up of all its receivers did, without
    /// a receiver and a pending `changed()` kept in every session.
    fn change_weather(&self, inner: &Inner, change: impl FnOnce(&mut Weather) -> bool) {
        if self.weather.send_if_modified(change) {
            self.weather_version.fetch_add(1, AtomicOrdering::SeqCst);
            for entry in inner.table.entries() {
                entry.wake();
            }
        }
    }

    fn publish_stress(&self, inner: &Inner) {
        let stressed = inner.table.stressed();
        self.change_weather(inner, |w| {
            let changed = w.stressed != stressed;
            w.stressed = stressed;
            changed
        });
    }

    /// The server's life moves on: every session gets an order (a
    /// [`Order::Recheck`] when draining, [`Order::Close`] after).
    fn set_stage(&self, stage: Stage) {
        let inner = self.lock();
        self.change_weather(&inner, |w| {
            w.stage = stage;
            true
        });
    }
}

/// What a session must do, from [`Control::order`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Leave for a newcomer (`421 4.7.0`): the table is full and this
    /// session's client is `idle` behind (see [`table`]).
    Evict { idle: Duration },
    /// The server is shutting down and the grace period is over.
    Close,
    /// The stress level changed: compute the deadlines again.
    Recheck,
}

/// One session's link to the harness: its slot (released when this is
/// dropped), what it reports for eviction, and the orders it gets.
pub struct Control {
    id: u64,
    /// Shared with the table: the session's reports for eviction, its
    /// eviction order and its wake-up.
    entry: Arc<Entry>,
    shared: Arc<Shared>,
    /// The count of weather changes this session has taken orders for
    /// ([`Shared::weather_version`]).
    seen: u64,
}

impl Control {
    /// Whether the server is shutting down (from the moment it stops
    /// accepting): a role that answers `421` at once to sessions not in
    /// the middle of someone else's work (the outbound server) asks this
    /// at each [`Order::Recheck`], which the start of the drain sends.
    pub fn draining(&self) -> bool {
        self.shared.weather.borrow().stage != Stage::Running
    }

    /// Whether slots run short: use the shorter timeouts.
    pub fn stressed(&self) -> bool {
        self.shared.weather.borrow().stressed
    }

    /// A reply went out: the client's turn starts now (eviction measures
    /// how far behind it falls from here; see [`table`]).
    pub fn answered(&self) {
        self.entry.answered(self.shared.now_ms());
    }

    /// `n` octets came from the client. Inside a message
    /// ([`Activity::Message`]) they earn time at the minimum data rate; in
    /// a command line they earn nothing until it is answered.
    pub fn received(&self, n: usize) {
        self.entry.received(n);
    }

    /// The client missed its deadline and the session ends: its network
    /// may not evict others for a while ([`table::STRUCK_FOR`]). Nothing
    /// happens when the session was waiting for someone else.
    pub fn timed_out(&self) {
        let now = self.shared.now_ms();
        self.shared.lock().table.timed_out(self.id, now);
    }

    pub fn set_activity(&self, activity: Activity) {
        self.entry.set_activity(activity);
    }

    /// The next order, if one came; else the task is woken when one does.
    /// (A session's task polls this with its own waker every time.)
    ///
    /// The waker is registered before the orders are looked at, on every
    /// poll: an order given after the look wakes the task, and no
    /// cooperative budget can skip the registration (a watch channel's
    /// `changed()` once did, and the shutdown order was lost under load:
    /// tests/it/load.rs).
    pub fn poll_order(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Order> {
        self.entry.register(cx.waker());
        if let Some(idle) = self.entry.take_eviction() {
            return Poll::Ready(Order::Evict { idle });
        }
        let version = self.shared.weather_version.load(AtomicOrdering::SeqCst);
        if version == self.seen {
            return Poll::Pending;
        }
        self.seen = version;
        let stage = self.shared.weather.borrow().stage;
        Poll::Ready(if matches!(stage, Stage::Closing | Stage::Cut) {
            Order::Close
        } else {
            Order::Recheck
        })
    }

    /// Waits for the next order. Cancel-safe: use it in `select!`.
    pub async fn order(&mut self) -> Order {
        std::future::poll_fn(|cx| self.poll_order(cx)).await
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.table.release(self.id);
        self.shared.publish_stress(&inner);
        drop(inner);
        // A newcomer held at the full table takes the slot (the count is
        // raised before it looks at the table: see `admit_when_free`).
        if self.shared.holding.load(AtomicOrdering::SeqCst) > 0 {
            self.shared.freed.notify_waiters();
        }
    }
}

/// How a bounded write went.
pub enum Wrote {
    Done,
    Failed,
    /// The deadline passed: the peer stopped reading.
    Late,
    /// The harness ordered the session to end.
    Told(Order),
}

/// Writes all of `bytes` (and flushes: TLS buffers records until flushed)
/// before `deadline`, unless the harness orders the session to end first.
pub async fn write_within<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    bytes: &[u8],
    deadline: Instant,
    control: &mut Control,
) -> Wrote {
    if bytes.is_empty() {
        return Wrote::Done;
    }
    // Most writes fit the socket's buffer at once: try that first, without
    // arming the deadline or waiting for orders.
    let mut written = 0;
    let now = std::future::poll_fn(|cx| {
        Poll::Ready(try_write_now(
            Pin::new(&mut *writer),
            cx,
            bytes,
            &mut written,
        ))
    })
    .await;
    match now {
        Some(Ok(())) => Wrote::Done,
        Some(Err(_)) => Wrote::Failed,
        // Boxed: the waiting half's state (a timer, the order) then takes
        // room in a session's task only while it waits.
        None => Box::pin(write_rest(writer, &bytes[written..], deadline, control)).await,
    }
}

/// The rest of a [`write_within`] that had to wait.
async fn write_rest<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    rest: &[u8],
    deadline: Instant,
    control: &mut Control,
) -> Wrote {
    let write = async {
        writer.write_all(rest).await?;
        writer.flush().await
    };
    tokio::pin!(write);
    let late = tokio::time::sleep_until(deadline.into());
    tokio::pin!(late);
    loop {
        tokio::select! {
            done = &mut write => return if done.is_ok() { Wrote::Done } else { Wrote::Failed },
            () = &mut late => return Wrote::Late,
            order = control.order() => match order {
                Order::Recheck => {}
                order => return Wrote::Told(order),
            },
        }
    }
}

/// Writes and flushes as much of `bytes` (from `written` on) as goes
/// without waiting: `Some` when done or failed, `None` when the rest must
/// wait (`written` then says how far it got).
fn try_write_now<W: AsyncWrite + ?Sized>(
    mut writer: Pin<&mut W>,
    cx: &mut Context<'_>,
    bytes: &[u8],
    written: &mut usize,
) -> Option<std::io::Result<()>> {
    while *written < bytes.len() {
        match writer.as_mut().poll_write(cx, &bytes[*written..]) {
            Poll::Ready(Ok(0)) => return Some(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => *written += n,
            Poll::Ready(Err(e)) => return Some(Err(e)),
            Poll::Pending => return None,
        }
    }
    match writer.poll_flush(cx) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
}

/// The harness settings of one listener.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: Limits,
    /// The client deadlines; the harness takes the minimum data rate from
    /// them, so eviction and the deadline judge a message by one rate.
    pub timeouts: Timeouts,
    /// After shutdown, how long sessions may take to finish on their own.
    pub shutdown_grace: Duration,
    /// Our host name, for refusals.
    pub hostname: String,
    /// What a connection over the limits is told, and the log record;
    /// None: `421 4.7.0 HOST Error: too many connections…` and
    /// `refused=connection-limit client=…` (a server facing the internet).
    pub refusal: Option<Refusal>,
}

/// A role's own refusal of a connection over the limits.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Written without waiting, then the connection closes (a `421`
    /// greeting, RFC 5321 §3.8).
    pub reply: Reply,
    /// The log record, the same for every refusal.
    pub log: String,
}

/// Accepts connections on `listener` until `shutdown` completes, each
/// served by `serve` in its own task, then drains (see the module docs).
pub async fn run<L, S, F>(
    listener: L,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
    serve: S,
) where
    L: Listen,
    S: Fn(L::Conn, Option<SocketAddr>, Control) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let shared = Shared::new(&settings);
    let (done, finished) = tokio::sync::oneshot::channel();
    let accepting = async {
        accept_loop(
            listener,
            Arc::clone(&shared),
            settings.hostname.clone(),
            serve,
        )
        .await;
        let _ = done.send(());
    };
    tokio::join!(
        accepting,
        supervise(&shared, &settings, shutdown, vec![finished])
    );
}

impl Shared {
    fn new(settings: &Settings) -> Arc<Shared> {
        let (weather, _) = watch::channel(Weather {
            stage: Stage::Running,
            stressed: false,
        });
        Arc::new(Shared {
            inner: Mutex::new(Inner {
                table: Table::new(settings.limits.clone(), settings.timeouts.min_data_rate),
            }),
            weather,
            weather_version: AtomicU64::new(0),
            epoch: Instant::now(),
            refusal: settings
                .refusal
                .as_ref()
                .map(|r| (r.reply.to_bytes(), r.log.clone())),
            holding: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Sessions running now.
    fn sessions(&self) -> usize {
        self.lock().table.sessions()
    }
}

/// Waits for `shutdown`, then for the accept loops (whose ends `finished`
/// reports) to drain their sessions: `shutdown_grace` for them to end on
/// their own, then [`Order::Close`], then the cut.
async fn supervise(
    shared: &Shared,
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
    finished: Vec<tokio::sync::oneshot::Receiver<()>>,
) {
    let all_finished = async {
        for f in finished {
            let _ = f.await;
        }
    };
    tokio::pin!(all_finished);
    tokio::select! {
        () = shutdown => {}
        // Every accept loop ended on its own (cannot happen while the
        // listener is open).
        () = &mut all_finished => return,
    }
    shared.set_stage(Stage::Draining);
    log!(
        "shutdown: no longer accepting; waiting up to {}s for {} session(s)",
        settings.shutdown_grace.as_secs(),
        shared.sessions()
    );
    if tokio::time::timeout(settings.shutdown_grace, &mut all_finished)
        .await
        .is_err()
    {
        log!(
            "shutdown: closing {} session(s) still running",
            shared.sessions()
        );
        shared.set_stage(Stage::Closing);
        if tokio::time::timeout(CLOSE_GRACE, &mut all_finished)
            .await
            .is_err()
        {
            log!("shutdown: cutting {} session(s)", shared.sessions());
            shared.set_stage(Stage::Cut);
            all_finished.await;
        }
    }
    log!("shutdown: done");
}

/// Accepts on `listener`, each connection served in a task of its own on
/// this runtime, until the server stops running; then waits for those
/// sessions to end, cutting them if told to.
async fn accept_loop<L, S, F>(listener: L, shared: Arc<Shared>, hostname: String, serve: S)
where
    L: Listen,
    S: Fn(L::Conn, Option<SocketAddr>, Control) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut sessions = JoinSet::new();
    let mut weather = shared.weather.subscribe();
    loop {
        // The stage is read before every wait, not only when it changes: a
        // serving thread that starts after the shutdown began (a busy
        // machine schedules it late) subscribes to a channel already at
        // `Draining`, whose `changed()` would then wait for the next stage
        // while this loop went on accepting (seen in tests/it/inbound.rs:
        // the listener stayed open through the whole grace period).
        if weather.borrow_and_update().stage != Stage::Running {
            break;
        }
        tokio::select! {
            changed = weather.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => {
                let (conn, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning.
                        log!("accept-error=\"{e}\"");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let admitted = match admit(&shared, peer) {
                    Err(Refused::Full) => admit_when_free(&shared, peer, &mut weather).await,
                    admitted => admitted,
                };
                match admitted {
                    Ok(control) => {
                        sessions.spawn(serve(conn, peer, control));
                    }
                    Err(_) if shared.refusal.is_some() => {
                        if let Some((reply, record)) = &shared.refusal {
                            log!("{record}");
                            L::refuse(conn, reply);
                        }
                    }
                    Err(why) => {
                        log!(
                            "refused=connection-limit client={} ({})",
                            display_peer(peer),
                            why.as_str()
                        );
                        L::refuse(conn, &refusal(&hostname, why).to_bytes());
                    }
                }
            }
        }
    }
    drop(listener);
    finish_sessions(sessions, &shared).await;
}

/// Waits for `sessions` to end after their accept loop stopped, cutting
/// them when the server says so.
async fn finish_sessions(mut sessions: JoinSet<()>, shared: &Shared) {
    let mut weather = shared.weather.subscribe();
    loop {
        if weather.borrow_and_update().stage == Stage::Cut {
            sessions.shutdown().await;
            return;
        }
        tokio::select! {
            joined = sessions.join_next() => if joined.is_none() { return },
            changed = weather.changed() => if changed.is_err() {
                sessions.shutdown().await;
                return;
            },
        }
    }
}

/// How long a newcomer is held at a full table before its `421`.
pub const FULL_WAIT: Duration = Duration::from_millis(500);

/// While held, how often the table is looked at again for a session that
/// fell behind far enough to be evicted.
const FULL_RECHECK: Duration = Duration::from_millis(100);

/// A newcomer that found every slot taken and nobody to evict is held, not
/// greeted, for up to [`FULL_WAIT`], and takes the first slot that is given
/// back or the first session that falls behind far enough to evict. This
/// accept loop takes nobody else meanwhile: the connections behind it wait
/// in the kernel's accept queue, as at a Postfix whose smtpd processes are
/// all busy. A burst of short sessions (5,000 connections at once, each
/// greeted and gone in milliseconds) is so served in turn, and a normal
/// client among them is served too, where refusing at once answered it
/// `421` as long as the burst lasted (bench/hostile.sh "burst"). A network
/// struck for a session that fell behind is not held. A table
/// kept full by sessions that neither end nor fall behind still refuses,
/// once per [`FULL_WAIT`] per serving thread.
async fn admit_when_free(
    shared: &Arc<Shared>,
    peer: Option<SocketAddr>,
    weather: &mut watch::Receiver<Weather>,
) -> Result<Control, Refused> {
    // A network that just lost a session for falling behind (a slowloris
    // crowd reconnecting as fast as it is cut) is refused at once: holding
    // it would stall this accept loop, and everyone queued behind it, for
    // the wait.
    if shared
        .lock()
        .table
        .struck(peer.map(|p| p.ip()), shared.now_ms())
    {
        return Err(Refused::Full);
    }
    let deadline = tokio::time::Instant::now() + FULL_WAIT;
    // Raised before the table is looked at: a slot given back after that
    // look sees the count and wakes us (the table's lock orders the two).
    shared.holding.fetch_add(1, AtomicOrdering::SeqCst);
    let admitted = loop {
        let freed = shared.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        match admit(shared, peer) {
            Err(Refused::Full) => {}
            admitted => break admitted,
        }
        tokio::select! {
            () = &mut freed => {}
            // Sessions fall behind as time passes: one may be evictable.
            () = tokio::time::sleep(FULL_RECHECK) => {}
            () = tokio::time::sleep_until(deadline) => break Err(Refused::Full),
            changed = weather.changed() => {
                if changed.is_err() || weather.borrow().stage != Stage::Running {
                    break Err(Refused::Full);
                }
            }
        }
    };
    shared.holding.fetch_sub(1, AtomicOrdering::SeqCst);
    admitted
}

/// Takes a slot for a client at `peer`, telling the session that must make
/// room (if any) to leave.
/// The 421 for a connection the table refused: a full server is load
/// (RFC 3463 X.3.2), a per-client limit is policy (X.7.0).
pub fn refusal(hostname: &str, why: Refused) -> Reply {
    match why {
        Refused::Full => replies::too_many_connections(hostname),
        Refused::Client => replies::too_many_connections_from(hostname, "your address"),
        Refused::Network => replies::too_many_connections_from(hostname, "your network"),
    }
}

fn admit(shared: &Arc<Shared>, peer: Option<SocketAddr>) -> Result<Control, Refused> {
    let now = shared.now_ms();
    let mut inner = shared.lock();
    let (id, entry) = match inner.table.admit(peer.map(|p| p.ip()), now) {
        Admission::Refused(why) => return Err(why),
        Admission::Admitted { id, entry, evict } => {
            if let Some((victim, idle)) = evict
                && let Some(victim) = inner.table.entry(victim)
            {
                victim.order_eviction(idle);
            }
            (id, entry)
        }
    };
    shared.publish_stress(&inner);
    // The orders start from the stage as it is, not only from the next
    // change: a session admitted as the server turns to closing (just
    // after the change) must still be told.
    let version = shared.weather_version.load(AtomicOrdering::SeqCst);
    let seen = if matches!(shared.weather.borrow().stage, Stage::Closing | Stage::Cut) {
        version.wrapping_sub(1)
    } else {
        version
    };
    drop(inner);
    Ok(Control {
        id,
        entry,
        shared: Arc::clone(shared),
        seen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A shutdown that comes before the serving threads are up (a busy
    /// machine schedules them late) still closes the listener at once: a
    /// thread that starts during the drain accepts nothing, and the server
    /// stops without waiting out the grace period.
    #[tokio::test]
    async fn a_thread_that_starts_after_the_shutdown_accepts_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let settings = Settings {
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            shutdown_grace: Duration::from_secs(60),
            hostname: "mx.test".into(),
            refusal: None,
        };
        let served = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&served);
        let serve = move |_tcp: TcpStream, _peer: Option<SocketAddr>, _control: Control| {
            let count = Arc::clone(&count);
            async move {
                count.fetch_add(1, Ordering::Relaxed);
            }
        };
        // The shutdown is already complete when the threads start.
        let stopped = tokio::time::timeout(
            Duration::from_secs(20),
            run_threads(listener, 4, settings, std::future::ready(()), serve),
        )
        .await;
        assert!(
            stopped.is_ok(),
            "a serving thread kept accepting in the grace period"
        );
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
        assert_eq!(served.load(Ordering::Relaxed), 0);
    }
}
