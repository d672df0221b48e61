//! Postfix's error limits in `blackpony inbound`, as a process: a client
//! sending random bytes is slowed down past `--soft-error-limit`, closed with
//! `421 4.7.0` at `--hard-error-limit`, costs a few log lines, and while it
//! waits out its pauses other clients are served.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::{Backend, WAIT, command, read_reply};

/// The sidecar process; killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) until the log has a line matching `want`; returns it.
async fn log_line(log: &Path, want: impl Fn(&str) -> bool) -> String {
    for _ in 0..200 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| want(l)) {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no such line in the log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Bytes from a fixed xorshift sequence: garbage lines of every kind
/// (control characters, non-UTF-8, over-long, empty), the same each run.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn random_bytes_are_cut_off_at_the_hard_limit_with_few_log_lines() {
    let backend = Backend::start().await;
    let dir = std::env::temp_dir().join(format!("blackpony-errors-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("inbound.log");
    let _sidecar = Process(
        Command::new(env!("CARGO_BIN_EXE_blackpony"))
            .args(["--log", log.to_str().expect("utf-8 path")])
            .args([
                "inbound",
                "--listen",
                "127.0.0.1:0",
                "--identity",
                "proxy-v2",
            ])
            .args([
                "--backend",
                &backend.addr.to_string(),
                "--hostname",
                "mx.test",
            ])
            .args(["--soft-error-limit", "3", "--hard-error-limit", "5"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start blackpony inbound"),
    );
    let listening = log_line(&log, |l| l.contains("listening on ")).await;
    let addr = listening
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .expect("address in the listening line")
        .to_string();

    let mut attacker = BufReader::new(TcpStream::connect(&addr).await.expect("connect"));
    let port = attacker.get_ref().local_addr().expect("local addr").port();
    assert!(read_reply(&mut attacker).await.starts_with("220 "));
    attacker
        .get_mut()
        .write_all(&random_bytes(64 * 1024))
        .await
        .expect("send garbage");
    // Errors 1 to 3 are answered at once; the 4th waits its pause.
    for n in 1..=3 {
        let reply = read_reply(&mut attacker).await;
        assert!(reply.starts_with("50"), "error {n}: {reply:?}");
    }

    // Meanwhile another client is served: the pause holds up only its own
    // session (the attacker's 421 is still two pauses away).
    let mut other = BufReader::new(TcpStream::connect(&addr).await.expect("connect"));
    assert!(read_reply(&mut other).await.starts_with("220 "));
    assert!(command(&mut other, "NOOP\r\n").await.starts_with("250"));
    assert!(command(&mut other, "QUIT\r\n").await.starts_with("221"));

    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, attacker.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("read to the end");
    let rest = String::from_utf8_lossy(&rest);
    let replies: Vec<&str> = rest.lines().collect();
    assert_eq!(replies.len(), 3, "errors 4 and 5, then 421: {rest}");
    assert!(replies[..2].iter().all(|r| r.starts_with("50")), "{rest}");
    assert_eq!(replies[2], "421 4.7.0 mx.test Error: too many errors");

    let me = format!("client=unknown[127.0.0.1]:{port}");
    let end = log_line(&log, |l| l.contains(&me) && l.contains(" disconnect ")).await;
    assert!(end.contains(" end=too-many-errors "), "{end}");
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(&me)).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("refused=too-many-errors errors=5")),
        "{lines:#?}"
    );
    // connect, the first of each refusal kind, the limit, the counts,
    // disconnect: a handful, however much garbage came.
    assert!(lines.len() <= 8, "{lines:#?}");
    let forwarded = backend.lines();
    assert!(
        forwarded
            .iter()
            .all(|l| l.starts_with("PROXYv2 ") || l == "NOOP\r\n" || l == "QUIT\r\n"),
        "none of the garbage reached the backend: {forwarded:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
