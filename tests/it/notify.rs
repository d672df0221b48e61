//! `Type=notify` readiness: the server roles tell systemd `READY=1` (with
//! the address they listen on) once the listener is bound, and `STOPPING=1`
//! when SIGTERM arrives; then they exit 0. The test plays systemd's part:
//! a datagram socket named in `NOTIFY_SOCKET`, as sd_notify(3) describes.
//! Between the two, SIGHUP (`ExecReload=` of every unit in packaging/systemd)
//! must leave the server running: its default action would end the process,
//! and systemd does not restart a service that died of SIGHUP.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Reads one notification (bounded wait).
fn next_notice(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the read timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Runs `blackpony ARGS` as systemd would, checks READY=1 arrives with a
/// listening address that accepts connections, SIGHUP (systemctl reload)
/// leaves it serving, then SIGTERM -> STOPPING=1 and exit status 0.
fn ready_then_stopping(args: &[&str]) {
    let dir = std::env::temp_dir().join(format!(
        "blackpony-notify-{}-{}",
        std::process::id(),
        args[0]
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_blackpony"))
        .args(args)
        .env("NOTIFY_SOCKET", &path)
        .env("STATE_DIRECTORY", &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = next_notice(&socket);
    // The closure polls the child (try_wait needs it mutably); a panic in it
    // only leaves the child to be killed below.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
        let addr = ready
            .lines()
            .find_map(|l| l.strip_prefix("STATUS=listening on "))
            .unwrap_or_else(|| panic!("no listening address in {ready:?}"));
        // Ready means bound: a connection is accepted at once.
        std::net::TcpStream::connect(addr).unwrap();
        let reloaded = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(reloaded.success());
        // Still there and still accepting after the signal was handled.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "SIGHUP ended the process"
        );
        std::net::TcpStream::connect(addr).unwrap();
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let stopping = next_notice(&socket);
        assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    }));
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert!(status.success(), "exit status {status}");
}

#[test]
fn inbound_notifies_ready_and_stopping() {
    ready_then_stopping(&[
        "inbound",
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "127.0.0.1:9",
        "--identity",
        "proxy-v2",
        "--hostname",
        "mx.test",
        "--shutdown-timeout",
        "1",
    ]);
}

#[test]
fn outbound_notifies_ready_and_stopping() {
    ready_then_stopping(&[
        "outbound",
        "--listen",
        "127.0.0.1:0",
        "--protocol",
        "lmtp",
        "--helo-name",
        "mx.test",
        "--no-xpony",
    ]);
}

#[test]
fn seal_notifies_ready_and_stopping() {
    let spool = std::env::temp_dir().join(format!("blackpony-notify-spool-{}", std::process::id()));
    std::fs::create_dir_all(&spool).unwrap();
    let spool_arg = spool.to_string_lossy().into_owned();
    let result = std::panic::catch_unwind(|| {
        ready_then_stopping(&[
            "seal",
            "--listen",
            "127.0.0.1:0",
            "--domain",
            "example.org",
            // age's own example recipient (any valid X25519 recipient serves).
            "--recipient-key",
            "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
            "--spool",
            &spool_arg,
            "--hostname",
            "relay.test",
            "--shutdown-timeout",
            "1",
        ])
    });
    let _ = std::fs::remove_dir_all(&spool);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
