//! The cost of a log record at its call site: RECORDS (1,000,000) `log!`
//! calls of an inbound session's disconnect line from THREADS (2) threads
//! into the file LOG (the writer thread keeps up or drops and counts).
//! Prints the callers' nanoseconds per record; `bench/log.sh` builds this
//! from the tree and from a baseline and runs both in one go.
//!
//! The part between the `span` markers needs `log::in_session` (records
//! inside a session span); `bench/log.sh` cuts it for a baseline without it.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `each(i)` `per` times on each of `threads` threads; the wall time.
fn timed(threads: u64, per: u64, each: fn(u64)) -> Duration {
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| std::thread::spawn(move || (0..per).for_each(each)))
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    started.elapsed()
}

fn report(what: &str, records: u64, took: Duration) {
    println!(
        "{what} records={records} ns_per_record={:.1}",
        took.as_nanos() as f64 / records as f64
    );
}

fn main() {
    let records = env("RECORDS", 1_000_000);
    let threads = env("THREADS", 2).max(1);
    let path = std::env::var("LOG").unwrap_or_else(|_| "/dev/null".into());
    let sink = blackpony::log::Sink::file(std::path::Path::new(&path)).expect("log file");
    blackpony::log::init("inbound", sink);
    let per = records / threads;

    let took = timed(threads, per, |i| {
        blackpony::log!(
            "session={:08X} disconnect client=unknown[192.0.2.7]:51234 tls=none identity=proxy-v2 messages=1 refused=0 bytes=1024 end=quit reply=\"250 2.0.0 Ok: queued as 4XyZ\" duration={:.3}s",
            i,
            0.0123
        )
    });
    blackpony::log::flush();
    report("explicit", per * threads, took);

    // BEGIN span
    let took = timed(threads, per, |i| {
        use futures_util::FutureExt as _;
        let id = format!("{i:08X}");
        let session = async {
            blackpony::log!(
                "disconnect client=unknown[192.0.2.7]:51234 tls=none identity=proxy-v2 messages=1 refused=0 bytes=1024 end=quit reply=\"250 2.0.0 Ok: queued as 4XyZ\" duration={:.3}s",
                0.0123
            )
        };
        let _ = blackpony::log::in_session(&id, session).now_or_never();
    });
    blackpony::log::flush();
    report("span", per * threads, took);
    // END span
}
