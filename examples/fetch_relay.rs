//! A test driver for `interop/test_fetch.py`: serves XFETCH (XPONY, then
//! `XFETCH NEXT` / `XFETCH DELETE`) from a spool directory, with the
//! relay's own code (`relay::fetch_server`), until `blackpony seal` takes
//! XFETCH itself.
//!
//! ```text
//! fetch_relay LISTEN SPOOL HOST_KEY FETCH_KEY...
//! ```
//!
//! Prints `listening on ADDR` when ready; stops on SIGTERM.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use blackpony::pony::keys::{decode_key, load_file};
use blackpony::pony::negotiation::{ServerHints, ServerIdentity};
use blackpony::relay::fetch_server::{self, ListenerConfig};
use blackpony::relay::xfetch::FetchKeys;
use blackpony::state::FileSpool;

fn fail(why: &str) -> ExitCode {
    eprintln!("fetch_relay: {why}");
    ExitCode::from(64)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, spool, host_key, keys @ ..] = args.as_slice() else {
        return fail("usage: fetch_relay LISTEN SPOOL HOST_KEY FETCH_KEY...");
    };
    let key = match load_file(&PathBuf::from(host_key)) {
        Ok(k) => k,
        Err(e) => return fail(&e.to_string()),
    };
    let mut fetch_keys = Vec::new();
    for k in keys {
        match decode_key(k) {
            Some(k) => fetch_keys.push(k),
            None => return fail(&format!("{k}: not a public key")),
        }
    }
    let spool = match FileSpool::open(&PathBuf::from(spool)).await {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => return fail(&format!("{listen}: {e}")),
    };
    let config = Arc::new(ListenerConfig {
        hostname: "relay.test".into(),
        identity: Arc::new(ServerIdentity {
            key,
            hints: ServerHints {
                max_age: 86400,
                ..ServerHints::default()
            },
        }),
        keys: FetchKeys::new(fetch_keys),
    });
    println!("listening on {listen}");
    let stop = async {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        }
    };
    fetch_server::run(listener, config, Arc::new(spool), stop).await;
    ExitCode::SUCCESS
}
