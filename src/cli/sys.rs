//! Process glue with the operating system, without `unsafe`: the system host
//! name, the listening socket systemd may pass (socket activation), and the
//! signals (SIGHUP re-reads the certificate, SIGTERM and SIGINT drain).

use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;

use super::notify;
use crate::log;
use crate::transport::ServerTls;

/// The sockets systemd passed (sd_listen_fds(3): `LISTEN_FDS` fds from 3 on,
/// for the process `LISTEN_PID` names), taken once by [`take_passed_sockets`].
static PASSED: Mutex<Option<listenfd::ListenFd>> = Mutex::new(None);

/// Takes note of the sockets systemd passed and removes `LISTEN_PID` and
/// `LISTEN_FDS` from the environment, so a child (`--identity exec`) does not
/// take them for its own. Called first thing in `main`: changing the
/// environment is only sound while no other thread can read it (the log
/// thread reads `JOURNAL_STREAM`).
pub fn take_passed_sockets() {
    let fds = listenfd::ListenFd::from_env();
    if let Ok(mut passed) = PASSED.lock() {
        *passed = Some(fds);
    }
}

/// The first socket systemd passed, if any: checked to be a TCP stream
/// socket (a Unix or UDP socket is an error, not a listener that fails at
/// every accept), and close-on-exec so a child does not inherit it.
fn passed_listener() -> std::io::Result<Option<std::net::TcpListener>> {
    let Ok(mut passed) = PASSED.lock() else {
        return Ok(None);
    };
    match passed.as_mut() {
        Some(fds) => fds.take_tcp_listener(0),
        None => Ok(None),
    }
}

/// The listening socket: from systemd (socket activation), or bound here.
pub async fn listener(listen: &str, backlog: Option<u32>) -> Result<TcpListener, String> {
    let passed = passed_listener().map_err(|e| format!("socket from systemd: {e}"))?;
    if let Some(std_listener) = passed {
        std_listener
            .set_nonblocking(true)
            .map_err(|e| format!("socket from systemd: {e}"))?;
        return TcpListener::from_std(std_listener)
            .map_err(|e| format!("socket from systemd: {e}"));
    }
    crate::server::listener::bind(listen, backlog)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => format!(
                "cannot listen on {listen}: {e} (ports below 1024 need CAP_NET_BIND_SERVICE or systemd socket activation; see README)"
            ),
            _ => format!("cannot listen on {listen}: {e}"),
        })
}

/// The system host name (uname(2)'s node name), for `--hostname`'s default.
pub fn system_hostname() -> String {
    let uname = rustix::system::uname();
    match uname.nodename().to_str() {
        Ok(name) if !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
    }
}

/// SIGHUP re-reads the certificate files (a self-signed one stays).
pub fn spawn_reload_on_hup(tls: Arc<ServerTls>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        log!("warning: cannot catch SIGHUP; certificate reload disabled");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(true) => log!("reload: certificate re-read ({})", tls.describe()),
                Ok(false) => log!("reload: self-signed certificate, nothing to re-read"),
                Err(e) => log!("reload: failed, keeping the old certificate ({e})"),
            }
        }
    });
}

/// SIGHUP for a role with nothing to re-read (`blackpony outbound`): the
/// units' `ExecReload=` sends it, and its default action would end the
/// process, which systemd counts as a clean exit and does not restart.
/// Settings are read at start; the log says so.
pub fn spawn_note_hup(role: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        log!("warning: cannot catch SIGHUP; systemctl reload would stop {role}");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            log!("reload: {role} has nothing to re-read; restart it to apply config changes");
        }
    });
}

/// Completes at SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled: a SIGTERM right after
/// READY=1 (systemd's stop, a test) must start the drain, not kill the
/// process with the default action.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            // Without signal handling, run until killed.
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => log!("shutdown: SIGTERM"),
            _ = int.recv() => log!("shutdown: SIGINT"),
        }
        notify::stopping();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_name_is_the_kernels() {
        let name = system_hostname();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        assert_eq!(name, kernel.trim_end());
    }
}
