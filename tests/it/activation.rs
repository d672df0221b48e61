//! systemd socket activation (sd_listen_fds(3)): the listening socket comes
//! as fd 3 with `LISTEN_PID` and `LISTEN_FDS`. The test plays systemd's part
//! with a shell: the socket arrives on standard input, moves to fd 3, and the
//! shell's pid is the one `exec` keeps.

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::BufReader;
use tokio::net::TcpStream;

use crate::daemon::{Daemon, Start};
use crate::support::{Backend, WAIT, read_reply};

const AS_SYSTEMD: &str = "exec 3<&0 0</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1";

#[tokio::test]
async fn inbound_serves_on_the_socket_systemd_passed() {
    let backend = Backend::start().await;
    let passed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = passed.local_addr().expect("addr");
    let b = backend.addr.to_string();
    let daemon = Daemon::start_with_stdin(
        Start {
            args: &["--backend", &b, "--identity", "proxy-v2"],
            shell: AS_SYSTEMD,
            ..Default::default()
        },
        Some(OwnedFd::from(passed)),
    );
    // It listens where systemd bound, not on its own --listen 127.0.0.1:0.
    assert_eq!(daemon.addr, addr);
    let mut c = BufReader::new(TcpStream::connect(addr).await.expect("connect"));
    assert!(read_reply(&mut c).await.starts_with("220"));
    // Close-on-exec (O_CLOEXEC, 02000000 in fdinfo's octal flags): a backend
    // started per client (--identity exec) must not inherit port 25.
    let fdinfo = std::fs::read_to_string(format!("/proc/{}/fdinfo/3", daemon.pid()))
        .expect("fdinfo of fd 3");
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .expect("flags");
    assert_ne!(
        flags & 0o2000000,
        0,
        "fd 3 is inherited by children: {fdinfo}"
    );
}

#[test]
fn a_passed_socket_that_is_not_tcp_is_an_error() {
    // A Unix stream socket: a TCP listener made of it would accept from the
    // wrong place, silently.
    let dir = std::env::temp_dir().join(format!("blackpony-activation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let passed = std::os::unix::net::UnixListener::bind(dir.join("s")).expect("bind");
    let bin = std::env::var("BLACKPONY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_blackpony").to_string());
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{AS_SYSTEMD}; exec \"$0\" inbound --listen 127.0.0.1:0 --hostname mx.test --backend 127.0.0.1:9 --identity none"
        ))
        .arg(&bin)
        .stdin(Stdio::from(OwnedFd::from(passed)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start blackpony");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("blackpony kept running on a Unix socket as fd 3");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    use std::io::Read;
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status.code(), Some(71), "{stderr}");
    assert!(
        stderr.contains("socket from systemd: fd 3 is not a valid tcp socket"),
        "{stderr}"
    );
}
