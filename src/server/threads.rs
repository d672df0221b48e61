//! Serving on one single-threaded runtime per core ([`run_threads`]): one
//! accept loop admits each connection and hands it to the thread serving
//! the fewest sessions, whose runtime polls the session from then on.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{
    Control, Settings, Shared, accept_loop, display_peer, finish_sessions, run, supervise,
};
use crate::log;

/// As [`run`], with the sessions on `threads` threads of their own, each
/// with a single-threaded runtime: a session's reads, writes and timers are
/// woken on the thread that polls them, with no wake-ups across threads and
/// no task moving between them. Connections are accepted and admitted (or
/// refused) on the caller's runtime, in the order they come, and each
/// admitted one is handed to the thread serving the fewest sessions:
/// threads taking turns at one shared listening socket took bursts of
/// connections unevenly (all 20 sessions of a benchmark run on one of two
/// threads), and `SO_REUSEPORT` sockets spread them only on average and do
/// not fit a socket from systemd (docs/ARCHITECTURE.md). Limits, stress and
/// eviction are shared by all. Each thread logs how many sessions it
/// served when it stops (`shutdown: thread=serve-N sessions=M`). With fewer
/// than two threads this is [`run`].
pub async fn run_threads<S, F>(
    listener: TcpListener,
    threads: usize,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
    serve: S,
) where
    S: Fn(TcpStream, Option<SocketAddr>, Control) -> F + Clone + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    if threads < 2 {
        return run(listener, settings, shutdown, serve).await;
    }
    let shared = Shared::new(&settings);
    let mut finished = Vec::new();
    let mut workers = Vec::new();
    for n in 0..threads {
        let (handoff, arrivals) = mpsc::unbounded_channel();
        let load = Arc::new(AtomicUsize::new(0));
        let (done, wait) = tokio::sync::oneshot::channel();
        let harness = Arc::clone(&shared);
        let serve = serve.clone();
        let started = std::thread::Builder::new()
            .name(format!("serve-{n}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        // (`arrivals` is dropped: the dispatcher passes
                        // this thread over from then on.)
                        log!("warning: serving thread {n}: cannot start its runtime: {e}");
                        return;
                    }
                };
                let served = runtime.block_on(serve_handed(arrivals, &harness, serve));
                drop(runtime);
                log!("shutdown: thread=serve-{n} sessions={served}");
                let _ = done.send(());
            });
        match started {
            Ok(_) => {
                finished.push(wait);
                workers.push(Worker { handoff, load });
            }
            Err(e) => log!("warning: cannot start serving thread {n}: {e}"),
        }
    }
    if workers.is_empty() {
        log!("warning: no serving thread started; serving on one runtime");
        return run(listener, settings, shutdown, serve).await;
    }
    // The accept loop (with the admission, the refusals and the stop at
    // shutdown) is the one `run` uses; its sessions are handed over.
    let accepting = accept_loop(
        listener,
        Arc::clone(&shared),
        settings.hostname.clone(),
        move |tcp: TcpStream, peer, control| {
            hand_over(&workers, tcp, peer, control);
            std::future::ready(())
        },
    );
    tokio::join!(accepting, supervise(&shared, &settings, shutdown, finished));
}

/// A serving thread's loop: serves each connection handed to it until the
/// accept loop is over (the channel closes), then lets its sessions finish
/// as the server says ([`finish_sessions`]). Returns how many it served.
async fn serve_handed<S, F>(
    mut arrivals: mpsc::UnboundedReceiver<Arrival>,
    shared: &Shared,
    serve: S,
) -> u64
where
    S: Fn(TcpStream, Option<SocketAddr>, Control) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut sessions = JoinSet::new();
    let mut served = 0;
    loop {
        tokio::select! {
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            arrival = arrivals.recv() => {
                let Some(Arrival { tcp, peer, control, load }) = arrival else {
                    break;
                };
                // Into this thread's reactor.
                match TcpStream::from_std(tcp) {
                    Ok(tcp) => {
                        served += 1;
                        // `map`, not an `async` block awaiting the
                        // session: a block keeps the future it captured
                        // beside the one it awaits, twice the task's size
                        // (3 KiB more per idle session, bench/memory.sh).
                        let session = serve(tcp, peer, control).map(move |()| drop(load));
                        sessions.spawn(session);
                    }
                    // (Dropping `control` gives the slot back.)
                    Err(e) => log!("warning: client={} not served: {e}", display_peer(peer)),
                }
            }
        }
    }
    finish_sessions(sessions, shared).await;
    served
}

/// One serving thread, as the dispatcher sees it.
struct Worker {
    handoff: mpsc::UnboundedSender<Arrival>,
    /// Connections handed to it and not yet over (see [`Load`]).
    load: Arc<AtomicUsize>,
}

/// A connection on its way to a serving thread.
struct Arrival {
    tcp: std::net::TcpStream,
    peer: Option<SocketAddr>,
    control: Control,
    load: Load,
}

/// Counts one connection in its thread's load for as long as it lives:
/// from the hand-over to the end of its session.
struct Load(Arc<AtomicUsize>);

impl Load {
    fn new(counter: &Arc<AtomicUsize>) -> Load {
        counter.fetch_add(1, Ordering::Relaxed);
        Load(Arc::clone(counter))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Hands an admitted connection to the least loaded of `workers` (the
/// first of equals), passing over those whose thread has stopped.
fn hand_over(workers: &[Worker], tcp: TcpStream, peer: Option<SocketAddr>, control: Control) {
    // Out of this runtime's reactor, into the chosen thread's.
    let tcp = match tcp.into_std() {
        Ok(tcp) => tcp,
        Err(e) => {
            log!("warning: client={} not served: {e}", display_peer(peer));
            return;
        }
    };
    let mut loads: Vec<usize> = workers
        .iter()
        .map(|w| w.load.load(Ordering::Relaxed))
        .collect();
    let mut held = (tcp, control);
    while let Some(i) = least_loaded(loads.iter().copied()) {
        let (tcp, control) = held;
        let load = Load::new(&workers[i].load);
        match workers[i].handoff.send(Arrival {
            tcp,
            peer,
            control,
            load,
        }) {
            Ok(()) => return,
            Err(mpsc::error::SendError(back)) => {
                held = (back.tcp, back.control);
                loads[i] = usize::MAX;
            }
        }
    }
    // Only when every serving thread failed to start its runtime.
    log!(
        "warning: client={} not served: no serving thread is running",
        display_peer(peer)
    );
}

/// The index of the smallest of `loads`, the first of equals; `usize::MAX`
/// marks a thread that stopped.
fn least_loaded(loads: impl Iterator<Item = usize>) -> Option<usize> {
    loads
        .enumerate()
        .filter(|&(_, load)| load != usize::MAX)
        .min_by_key(|&(i, load)| (load, i))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_loaded_thread_first_of_equals() {
        let cases: &[(&[usize], Option<usize>)] = &[
            (&[], None),
            (&[0, 0], Some(0)),
            (&[1, 0], Some(1)),
            (&[1, 1, 0], Some(2)),
            (&[3, 2, 2], Some(1)),
            (&[usize::MAX, 5], Some(1)),
            (&[usize::MAX, usize::MAX], None),
        ];
        for (loads, least) in cases {
            assert_eq!(least_loaded(loads.iter().copied()), *least, "{loads:?}");
        }
    }
}
