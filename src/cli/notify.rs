//! Readiness and shutdown notices to systemd (`Type=notify`, sd_notify(3)):
//! `READY=1` once the listener is bound, so units ordered after this one
//! start only when it accepts connections, and `STOPPING=1` when SIGTERM
//! arrives, so `systemctl status` shows the drain. Outside systemd
//! (`NOTIFY_SOCKET` unset) these do nothing.

use sd_notify::NotifyState;

/// Tells systemd the service is ready, and where it listens.
pub fn ready(listening_on: &str) {
    let status = format!("listening on {listening_on}");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// The address a listener is bound to (a TCP port chosen by the system
/// when `listen` said 0), or the socket path.
pub fn address(listener: &crate::outbound::service::Listener, listen: &str) -> String {
    match listener {
        crate::outbound::service::Listener::Tcp(l) => l
            .local_addr()
            .map_or_else(|_| listen.to_string(), |a| a.to_string()),
        crate::outbound::service::Listener::Unix(_) => listen.to_string(),
    }
}

/// Tells systemd the service is stopping (draining its sessions).
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: letting running sessions finish"),
    ]);
}

fn send(state: &[NotifyState]) {
    // The environment is kept (false): the second notice needs NOTIFY_SOCKET
    // too, and changing the environment of a running multi-threaded process
    // is not safe. A failure to notify must not stop mail: log it once.
    if let Err(e) = sd_notify::notify(false, state) {
        crate::log!("warning: cannot notify systemd: {e}");
    }
}
