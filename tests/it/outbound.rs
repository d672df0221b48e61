//! `blackpony outbound` on the listener harness, as a process: its limit
//! on MTA connections, its bound on message memory, its drain at SIGTERM,
//! and its log (the address bound, each session's records under
//! `session=ID`). Nothing here reaches the end of a message, so no MX is
//! needed (delivery against real MX hosts: interop/test_outbound*.py).

use std::path::PathBuf;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::daemon::{Daemon, Start};
use crate::support::{command, read_reply};

/// A state directory of its own for each test.
fn state_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "blackpony-it-outbound-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("state dir");
    dir
}

fn outbound(state: &std::path::Path, args: &[&str]) -> Daemon {
    let mut all = vec![
        "--state-dir",
        state.to_str().expect("path"),
        // Nothing is delivered; no nameserver is asked.
        "--dns",
        "127.0.0.1:9",
    ];
    all.extend_from_slice(args);
    Daemon::start_role(
        "outbound --listen 127.0.0.1:0 --protocol lmtp --helo-name mx.test --no-xpony",
        Start {
            args: &all,
            ..Start::default()
        },
        None,
    )
}

/// A connection that was greeted and is inside a message, after its 354.
async fn in_message(daemon: &Daemon, to: &str) -> BufReader<TcpStream> {
    let mut c = BufReader::new(TcpStream::connect(daemon.addr).await.expect("connect"));
    assert!(read_reply(&mut c).await.starts_with("220 "));
    for (line, code) in [
        ("LHLO client.test\r\n".to_string(), "250"),
        ("MAIL FROM:<sender@client.test>\r\n".to_string(), "250"),
        (format!("RCPT TO:<{to}>\r\n"), "250"),
        ("DATA\r\n".to_string(), "354"),
    ] {
        let reply = command(&mut c, &line).await;
        assert!(reply.starts_with(code), "{line:?}: {reply:?}");
    }
    c
}

/// `n` octets of message text (lines of 100).
fn text(n: usize) -> Vec<u8> {
    let line = format!("{}\r\n", "x".repeat(98));
    line.as_bytes().iter().copied().cycle().take(n).collect()
}

/// Sends message text, then waits a moment so the server has read it.
async fn send(c: &mut BufReader<TcpStream>, bytes: &[u8]) {
    c.get_mut().write_all(bytes).await.expect("write");
    c.get_mut().flush().await.expect("flush");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
}

/// The connection limit and the memory bound, then SIGTERM in the middle of
/// a message: each answered with its 4xx, each session's records under its
/// `session=ID`, the listening address the one bound.
#[tokio::test]
async fn connection_limit_memory_bound_and_drain() {
    let state = state_dir("limits");
    let mut daemon = outbound(
        &state,
        &["--max-connections", "2", "--max-message-memory", "100000"],
    );
    assert_ne!(daemon.addr.port(), 0, "the bound port is logged, not :0");
    let listening = daemon.wait_log(&["listening on "]).await;
    assert!(
        listening.contains(&format!("listening on {} protocol=lmtp", daemon.addr)),
        "{listening}"
    );

    // A holds 60 000 octets of a message.
    let mut a = in_message(&daemon, "a@example.test").await;
    send(&mut a, &text(60_000)).await;
    // B has room for 30 000 more, not for 20 000 after that: 421 4.3.1 at
    // once (RFC 5321 §3.8), not after the rest of the message.
    let mut b = in_message(&daemon, "b@example.test").await;
    send(&mut b, &text(30_000)).await;
    send(&mut b, &text(20_000)).await;
    assert_eq!(
        read_reply(&mut b).await,
        "421 4.3.1 mx.test Insufficient system storage, closing connection\r\n",
        "log:\n{}",
        daemon.log().join("")
    );
    assert_eq!(read_reply(&mut b).await, "", "closed after the 421");
    let refused = daemon
        .wait_log(&["refused=message-memory ", "max-message-memory=100000"])
        .await;
    let b_session = session_of(&refused);
    daemon
        .wait_log(&[
            &b_session,
            " disconnect client=unknown[127.0.0.1]:",
            " end=message-memory ",
        ])
        .await;

    // B's slot and memory are free again: C fits, a third is refused.
    let mut c = in_message(&daemon, "c@example.test").await;
    send(&mut c, &text(30_000)).await;
    let mut over = BufReader::new(TcpStream::connect(daemon.addr).await.expect("connect"));
    assert_eq!(
        read_reply(&mut over).await,
        "421 4.3.2 Too many connections, try again later\r\n"
    );
    assert_eq!(read_reply(&mut over).await, "", "closed after the 421");
    daemon
        .wait_log(&["refused=too-many-connections max-connections=2"])
        .await;

    // SIGTERM while A and C are in their messages: 421 4.3.2 at once to
    // both (nothing reached a remote), then the process exits.
    daemon.terminate().await;
    for s in [&mut a, &mut c] {
        assert_eq!(
            read_reply(s).await,
            "421 4.3.2 mx.test Service shutting down\r\n",
            "log:\n{}",
            daemon.log().join("")
        );
    }
    daemon.wait_log(&["shutdown: drained"]).await;
    let log = daemon.log();
    let connects: Vec<&String> = log
        .iter()
        .filter(|l| l.contains(" connect client="))
        .collect();
    assert_eq!(connects.len(), 3, "{log:?}");
    for line in connects {
        assert!(
            line.contains("]: session=") && line.contains(" protocol=lmtp"),
            "{line}"
        );
        let id = session_of(line);
        let ends: Vec<&String> = log
            .iter()
            .filter(|l| l.contains(&id) && l.contains(" disconnect "))
            .collect();
        assert_eq!(ends.len(), 1, "{id}: {log:?}");
    }
    assert_eq!(
        log.iter().filter(|l| l.contains(" end=shutdown ")).count(),
        2,
        "{log:?}"
    );
    let _ = std::fs::remove_dir_all(&state);
}

/// `session=ID ` from a log record.
fn session_of(line: &str) -> String {
    let id = line
        .split("session=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no session=ID in {line:?}"));
    format!("session={id} ")
}
