//! `blackpony inbound` under hostile load, over real sockets: deadlines a
//! trickle cannot extend, write deadlines, stress, eviction, per-network
//! limits, the shutdown 421, the accept queue, the open-file limit, and a
//! log nobody reads.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::daemon::{Daemon, Start};
use crate::inbound::Sidecar;
use crate::support::{Backend, WAIT, command, read_reply};

/// A connection from a chosen loopback address (for per-network rules).
async fn connect_from(from: &str, to: SocketAddr) -> BufReader<TcpStream> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("from"))
        .expect("bind from");
    BufReader::new(socket.connect(to).await.expect("connect"))
}

/// Sends `bytes` one at a time, `every` apart, until a reply comes (or
/// `max` bytes went out); returns the reply and when it came.
async fn trickle(
    c: &mut BufReader<TcpStream>,
    bytes: &[u8],
    every: Duration,
) -> (String, Duration) {
    let started = Instant::now();
    let mut answer = Vec::new();
    for b in bytes.iter().cycle().take(30) {
        if c.get_mut().write_all(&[*b]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(read) = tokio::time::timeout(every, c.read(&mut buf)).await {
            match read {
                Ok(n) if n > 0 => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.ends_with(b"\r\n") {
                        break;
                    }
                }
                _ => break,
            }
        }
    }
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

/// `blackpony inbound` in front of `backend` (PROXY v2), with `more` flags.
fn in_front_of(backend: &Backend, more: &[&str]) -> Daemon {
    let b = backend.addr.to_string();
    let mut args = vec!["--backend", &b, "--identity", "proxy-v2"];
    args.extend_from_slice(more);
    Daemon::start(Start {
        args: &args,
        ..Default::default()
    })
}

#[tokio::test]
async fn a_trickling_command_is_cut_at_the_line_deadline() {
    let backend = Backend::start().await;
    let daemon = in_front_of(&backend, &["--client-timeout", "3"]);
    let mut c = BufReader::new(TcpStream::connect(daemon.addr).await.expect("connect"));
    assert!(read_reply(&mut c).await.starts_with("220"));
    // One byte a second: an idle timer reset by each byte never fires.
    let (reply, after) = trickle(&mut c, b"EHLO trickle.test\r\n", Duration::from_secs(1)).await;
    assert!(
        reply.starts_with("421 4.4.2 mx.test Error: timeout exceeded"),
        "{reply:?} after {after:?}"
    );
    assert!(after < Duration::from_secs(6), "cut after {after:?}");
    daemon.wait_log(&["timeout waiting_for=client"]).await;
    daemon.wait_log(&[" disconnect ", " end=timeout "]).await;
}

#[tokio::test]
async fn a_message_slower_than_the_minimum_rate_is_cut() {
    let backend = Backend::start().await;
    let tls = std::sync::Arc::new(
        blackpony::transport::ServerTls::self_signed("mx.test").expect("self-signed"),
    );
    let sidecar = Sidecar::start(&backend, tls, |c| {
        c.timeouts.line = Duration::from_secs(2);
        c.timeouts.min_data_rate = 100;
    })
    .await;
    let mut c = sidecar.connect().await;
    read_reply(&mut c).await;
    command(&mut c, "EHLO client.test\r\n").await;
    command(&mut c, "MAIL FROM:<a@client.test>\r\n").await;
    command(&mut c, "RCPT TO:<b@mx.test>\r\n").await;
    assert!(command(&mut c, "DATA\r\n").await.starts_with("354"));
    // 20 octets every half second (40/s, under 100/s): the message's time
    // is 2 s plus 1 s per 100 octets, so it ends after about 3.3 s.
    let started = Instant::now();
    let mut reply = String::new();
    for _ in 0..40 {
        if c.get_mut()
            .write_all(b"xxxxxxxxxxxxxxxxxx\r\n")
            .await
            .is_err()
        {
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), c.read(&mut buf)).await
        {
            reply.push_str(&String::from_utf8_lossy(&buf[..n]));
            if n == 0 || reply.ends_with("\r\n") {
                break;
            }
        }
    }
    let after = started.elapsed();
    assert!(reply.starts_with("421 4.4.2 "), "{reply:?} after {after:?}");
    assert!(
        after > Duration::from_millis(2500) && after < Duration::from_secs(6),
        "cut after {after:?}"
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn a_log_nobody_reads_does_not_stop_sessions() {
    let backend = Backend::start().await;
    let b = backend.addr.to_string();
    let mut daemon = Daemon::start(Start {
        args: &["--backend", &b, "--identity", "proxy-v2"],
        stall: true,
        ..Default::default()
    });
    // 3,000 sessions of two records each: far more than the pipe (64 KiB)
    // and the queue hold.
    let addr = daemon.addr;
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..10 {
        workers.spawn(async move {
            for _ in 0..300 {
                let mut c = BufReader::new(TcpStream::connect(addr).await.expect("connect"));
                assert!(read_reply(&mut c).await.starts_with("220"));
                assert!(command(&mut c, "QUIT\r\n").await.starts_with("221"));
            }
        });
    }
    let all = tokio::time::timeout(WAIT * 6, async {
        while let Some(done) = workers.join_next().await {
            done.expect("worker");
        }
    })
    .await;
    assert!(
        all.is_ok(),
        "sessions stalled with the log unread (after {:?})",
        started.elapsed()
    );
    daemon.unstall();
    let line = daemon.wait_log(&["log: dropped ", " records"]).await;
    assert!(line.contains("blackpony/inbound["), "{line}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_the_write_deadline() {
    let backend = Backend::start().await;
    let daemon = in_front_of(&backend, &["--client-timeout", "2"]);
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut c = BufReader::new(socket.connect(daemon.addr).await.expect("connect"));
    assert!(read_reply(&mut c).await.starts_with("220"));
    // NOOPs, pipelined, never reading a reply, until the sidecar stops
    // taking them.
    let noops = "NOOP\r\n".repeat(10_000);
    for _ in 0..1000 {
        let wrote = tokio::time::timeout(
            Duration::from_secs(1),
            c.get_mut().write_all(noops.as_bytes()),
        )
        .await;
        if !matches!(wrote, Ok(Ok(()))) {
            break;
        }
    }
    daemon.wait_log(&["timeout waiting_for=client-write"]).await;
    daemon
        .wait_log(&[" disconnect ", " end=client-write-timeout "])
        .await;
}

/// A backend that answers up to DATA and then reads nothing more.
async fn backend_that_stops_reading() -> SocketAddr {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener: TcpListener = socket.listen(8).expect("listen");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let mut c = BufReader::new(tcp);
            let _ = c.get_mut().write_all(b"220 stuck.test ESMTP\r\n").await;
            loop {
                let mut line = String::new();
                use tokio::io::AsyncBufReadExt;
                match c.read_line(&mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let reply: &[u8] = if line.starts_with("EHLO") {
                    b"250-stuck.test\r\n250 PIPELINING\r\n"
                } else if line.starts_with("DATA") {
                    b"354 go ahead\r\n"
                } else {
                    b"250 2.0.0 Ok\r\n"
                };
                let _ = c.get_mut().write_all(reply).await;
                if line.starts_with("DATA") {
                    held.push(c);
                    break;
                }
            }
        }
    });
    addr
}

#[tokio::test]
async fn a_backend_that_stops_reading_is_cut_at_the_write_deadline() {
    let stuck = backend_that_stops_reading().await.to_string();
    let daemon = Daemon::start(Start {
        args: &[
            "--backend",
            &stuck,
            "--identity",
            "none",
            "--backend-timeout",
            "2",
        ],
        ..Default::default()
    });
    let c = TcpStream::connect(daemon.addr).await.expect("connect");
    let mut c = BufReader::new(c);
    assert!(read_reply(&mut c).await.starts_with("220"));
    command(&mut c, "EHLO client.test\r\n").await;
    command(&mut c, "MAIL FROM:<a@client.test>\r\n").await;
    command(&mut c, "RCPT TO:<b@mx.test>\r\n").await;
    assert!(command(&mut c, "DATA\r\n").await.starts_with("354"));
    let (mut r, mut w) = c.into_inner().into_split();
    // The message flows until the backend's and the sidecar's buffers are
    // full; then the sidecar's write to the backend must time out.
    let writer = tokio::spawn(async move {
        let chunk = "x".repeat(998) + "\r\n";
        let chunk = chunk.repeat(64);
        for _ in 0..2000 {
            let wrote =
                tokio::time::timeout(Duration::from_secs(1), w.write_all(chunk.as_bytes())).await;
            if !matches!(wrote, Ok(Ok(()))) {
                break;
            }
        }
        w
    });
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(WAIT, r.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert!(
        reply.starts_with("421 4.4.1 mx.test Error: mail system timed out"),
        "{reply:?}"
    );
    daemon
        .wait_log(&["timeout waiting_for=backend-write"])
        .await;
    daemon
        .wait_log(&[" disconnect ", " end=backend-write-timeout "])
        .await;
    writer.abort();
}

#[tokio::test]
async fn shutdown_gives_running_sessions_421_and_a_disconnect_line() {
    let backend = Backend::start().await;
    let mut daemon = in_front_of(&backend, &["--shutdown-timeout", "1"]);
    let mut c = BufReader::new(TcpStream::connect(daemon.addr).await.expect("connect"));
    assert!(read_reply(&mut c).await.starts_with("220"));
    assert!(
        command(&mut c, "EHLO client.test\r\n")
            .await
            .starts_with("250")
    );
    daemon.terminate().await;
    let reply = read_reply(&mut c).await;
    assert_eq!(
        reply,
        "421 4.3.2 mx.test Service shutting down\r\n",
        "log:\n{}",
        daemon.log().join("")
    );
    daemon
        .wait_log(&[" disconnect ", " end=shutdown ", "421 4.3.2"])
        .await;
}

/// The accept queue of the socket listening on `port`, as `ss` reports it
/// (Send-Q of a listening socket).
fn backlog_of(port: u16) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let fields: Vec<&str> = text.split_whitespace().collect();
    fields
        .get(2)
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("ss: {text:?}"))
}

#[tokio::test]
async fn listens_with_the_system_accept_queue_or_the_one_asked_for() {
    let backend = Backend::start().await;
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("somaxconn")
        .trim()
        .parse()
        .expect("number");
    let daemon = in_front_of(&backend, &[]);
    assert_eq!(backlog_of(daemon.addr.port()), somaxconn);
    let daemon = in_front_of(&backend, &["--listen-backlog", "77"]);
    assert_eq!(backlog_of(daemon.addr.port()), 77);
}

#[tokio::test]
async fn raises_the_open_file_limit_and_warns_when_it_is_short() {
    let backend = Backend::start().await;
    let b = backend.addr.to_string();
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .map_or("unlimited".to_string(), |n| n.to_string());
    let daemon = Daemon::start(Start {
        args: &["--backend", &b, "--identity", "proxy-v2"],
        shell: "ulimit -Sn 256",
        stall: false,
    });
    let line = daemon.wait_log(&["limits: "]).await;
    assert!(line.contains(&format!(" open_files={hard} ")), "{line}");
    assert!(
        !daemon
            .log()
            .iter()
            .any(|l| l.contains("warning: open-file"))
    );
    let daemon = Daemon::start(Start {
        args: &[
            "--backend",
            &b,
            "--identity",
            "proxy-v2",
            "--max-connections",
            "1000",
        ],
        shell: "ulimit -n 512",
        stall: false,
    });
    daemon
        .wait_log(&["warning: open-file limit 512 cannot hold 1000 sessions"])
        .await;
}

#[tokio::test]
async fn stress_shortens_the_line_deadline() {
    let backend = Backend::start().await;
    let tls = std::sync::Arc::new(
        blackpony::transport::ServerTls::self_signed("mx.test").expect("self-signed"),
    );
    let sidecar = Sidecar::start(&backend, tls, |c| {
        c.limits.max_connections = 5;
        c.timeouts.line = Duration::from_secs(60);
        c.timeouts.stress_line = Duration::from_secs(1);
    })
    .await;
    let mut first = sidecar.connect().await;
    assert!(read_reply(&mut first).await.starts_with("220"));
    let started = Instant::now();
    let mut others = Vec::new();
    // Four of five slots (80%) taken: stress.
    for _ in 0..3 {
        let mut c = sidecar.connect().await;
        assert!(read_reply(&mut c).await.starts_with("220"));
        others.push(c);
    }
    // The others keep busy (a NOOP every 300 ms), so the stress lasts
    // until the first, idle one is cut.
    loop {
        use tokio::io::AsyncBufReadExt;
        let ready = tokio::time::timeout(Duration::from_millis(300), first.fill_buf()).await;
        if ready.is_ok() {
            break;
        }
        for c in &mut others {
            assert!(command(c, "NOOP\r\n").await.starts_with("250"));
        }
        assert!(started.elapsed() < WAIT, "no 421 under stress");
    }
    let reply = read_reply(&mut first).await;
    assert!(reply.starts_with("421 4.4.2 "), "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    sidecar.stop().await;
}

#[tokio::test]
async fn a_newcomer_at_a_full_table_evicts_the_longest_idle_session() {
    let backend = Backend::start().await;
    let tls = std::sync::Arc::new(
        blackpony::transport::ServerTls::self_signed("mx.test").expect("self-signed"),
    );
    let sidecar = Sidecar::start(&backend, tls, |c| {
        c.limits.max_connections = 2;
        c.limits.evict_idle = Duration::from_secs(1);
    })
    .await;
    // Networks of their own: 127.0.1.0/24, 127.0.2.0/24, 127.0.3.0/24.
    let mut idle = connect_from("127.0.1.1", sidecar.addr).await;
    assert!(read_reply(&mut idle).await.starts_with("220"));
    let mut busy = connect_from("127.0.2.1", sidecar.addr).await;
    assert!(read_reply(&mut busy).await.starts_with("220"));
    // Too early: nobody idle long enough, the newcomer is refused.
    let mut early = connect_from("127.0.3.1", sidecar.addr).await;
    assert!(
        read_reply(&mut early)
            .await
            .starts_with("421 4.3.2 mx.test Error: too many connections\r\n")
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        command(&mut busy, "EHLO busy.test\r\n")
            .await
            .starts_with("250")
    );
    let mut newcomer = connect_from("127.0.3.1", sidecar.addr).await;
    assert!(read_reply(&mut newcomer).await.starts_with("220"));
    assert_eq!(
        read_reply(&mut idle).await,
        "421 4.7.0 mx.test Error: too many connections, closing idle session\r\n"
    );
    assert!(command(&mut busy, "NOOP\r\n").await.starts_with("250"));
    assert!(
        command(&mut newcomer, "EHLO new.test\r\n")
            .await
            .starts_with("250")
    );
    // The evicted session's network is struck: its next connection at the
    // full table is refused at once, not held (holding it would stall the
    // accept loop, and every client queued behind it, for the wait).
    let started = Instant::now();
    let mut again = connect_from("127.0.1.2", sidecar.addr).await;
    assert!(
        read_reply(&mut again)
            .await
            .starts_with("421 4.3.2 mx.test Error: too many connections\r\n")
    );
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn a_newcomer_at_a_full_table_takes_a_slot_freed_within_the_wait() {
    let backend = Backend::start().await;
    let tls = std::sync::Arc::new(
        blackpony::transport::ServerTls::self_signed("mx.test").expect("self-signed"),
    );
    let sidecar = Sidecar::start(&backend, tls, |c| c.limits.max_connections = 1).await;
    let mut first = connect_from("127.0.5.1", sidecar.addr).await;
    assert!(read_reply(&mut first).await.starts_with("220"));
    // The table is full and nobody is evictable: the newcomer is held, not
    // refused, and gets the slot the first session gives back.
    let mut newcomer = connect_from("127.0.6.1", sidecar.addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(command(&mut first, "QUIT\r\n").await.starts_with("221"));
    let greeting = read_reply(&mut newcomer).await;
    assert!(greeting.starts_with("220"), "{greeting:?}");
    // Held past the wait with the table still full: refused.
    let started = Instant::now();
    let mut late = connect_from("127.0.7.1", sidecar.addr).await;
    let refused = read_reply(&mut late).await;
    assert_eq!(refused, "421 4.3.2 mx.test Error: too many connections\r\n");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert!(command(&mut newcomer, "QUIT\r\n").await.starts_with("221"));
    sidecar.stop().await;
}

#[tokio::test]
async fn per_network_limit() {
    let backend = Backend::start().await;
    let tls = std::sync::Arc::new(
        blackpony::transport::ServerTls::self_signed("mx.test").expect("self-signed"),
    );
    let sidecar = Sidecar::start(&backend, tls, |c| c.limits.per_network = 2).await;
    let mut a = connect_from("127.0.4.1", sidecar.addr).await;
    let mut b = connect_from("127.0.4.2", sidecar.addr).await;
    assert!(read_reply(&mut a).await.starts_with("220"));
    assert!(read_reply(&mut b).await.starts_with("220"));
    let mut c = connect_from("127.0.4.3", sidecar.addr).await;
    assert_eq!(
        read_reply(&mut c).await,
        "421 4.7.0 mx.test Error: too many connections from your network\r\n"
    );
    let mut other = connect_from("127.0.5.1", sidecar.addr).await;
    assert!(read_reply(&mut other).await.starts_with("220"));
    sidecar.stop().await;
}

/// A slowloris from `from`: greeted, then one byte every `every` of a
/// command line that never ends (`in_message` false), or of a message
/// after EHLO, MAIL, RCPT and DATA (`in_message` true); connecting again
/// when cut or refused, until `until`. Returns how often it was evicted
/// (`421 4.7.0 … closing idle session`).
async fn slowloris(from: String, to: SocketAddr, in_message: bool, until: Instant) -> usize {
    let every = Duration::from_millis(200);
    let mut evicted = 0;
    while Instant::now() < until {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{from}:0").parse().expect("from"))
            .expect("bind from");
        let Ok(Ok(tcp)) = tokio::time::timeout(WAIT, socket.connect(to)).await else {
            tokio::time::sleep(every).await;
            continue;
        };
        let mut c = BufReader::new(tcp);
        if !read_reply(&mut c).await.starts_with("220") {
            tokio::time::sleep(every).await;
            continue;
        }
        if in_message {
            let mut ready = true;
            for (line, want) in [
                ("EHLO trickle.test\r\n", "250"),
                ("MAIL FROM:<t@trickle.test>\r\n", "250"),
                ("RCPT TO:<b@mx.test>\r\n", "250"),
                ("DATA\r\n", "354"),
            ] {
                ready = ready && command(&mut c, line).await.starts_with(want);
            }
            if !ready {
                continue;
            }
        } else {
            let _ = c.get_mut().write_all(b"EHLO ").await;
        }
        let mut answer = Vec::new();
        while Instant::now() < until {
            if c.get_mut().write_all(b"x").await.is_err() {
                break;
            }
            let mut buf = [0u8; 512];
            match tokio::time::timeout(every, c.read(&mut buf)).await {
                Err(_) => {}
                Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
                Ok(_) => break,
            }
        }
        if answer
            .starts_with(b"421 4.7.0 mx.test Error: too many connections, closing idle session")
        {
            evicted += 1;
        }
    }
    evicted
}

/// One message from 127.0.0.1, one connection; how long it took.
async fn normal_message(to: SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    let mut c = connect_from("127.0.0.1", to).await;
    let greeting = read_reply(&mut c).await;
    if !greeting.starts_with("220") {
        return Err(format!("greeting {greeting:?}"));
    }
    for (line, want) in [
        ("EHLO client.test\r\n", "250"),
        ("MAIL FROM:<a@client.test>\r\n", "250"),
        ("RCPT TO:<b@mx.test>\r\n", "250"),
        ("DATA\r\n", "354"),
        ("Subject: hi\r\n\r\nhello\r\n.\r\n", "250"),
        ("QUIT\r\n", "221"),
    ] {
        let reply = command(&mut c, line).await;
        if !reply.starts_with(want) {
            return Err(format!("{line:?}: {reply:?}"));
        }
    }
    Ok(started.elapsed())
}

/// Issue 8's slowloris, small: tricklers fill every slot and reconnect as
/// soon as they are cut, half of them trickling a command line, half a
/// message (each byte used to count as progress); a normal client still
/// gets each of its messages through at once, and it is the tricklers who
/// make room.
#[tokio::test]
async fn tricklers_in_every_slot_do_not_keep_a_normal_client_out() {
    let backend = Backend::start().await;
    // The stress deadline is out of reach of this test: only eviction can
    // make room.
    let daemon = in_front_of(
        &backend,
        &["--max-connections", "8", "--stress-client-timeout", "60"],
    );
    let until = Instant::now() + Duration::from_secs(12);
    let mut tricklers = tokio::task::JoinSet::new();
    for n in 0..8 {
        // Four networks, two tricklers each.
        let from = format!("127.0.{}.{}", 20 + n / 2, 1 + n % 2);
        tricklers.spawn(slowloris(from, daemon.addr, n % 2 == 1, until));
    }
    // Every slot taken, every trickler well into its line or message.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut took = Vec::new();
    for n in 0..5 {
        match normal_message(daemon.addr).await {
            Ok(t) => took.push(t),
            Err(e) => panic!("message {n}: {e}; log: {:#?}", daemon.log()),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(took.iter().all(|t| *t < Duration::from_secs(1)), "{took:?}");
    let mut evicted = 0;
    while let Some(n) = tricklers.join_next().await {
        evicted += n.expect("trickler");
    }
    assert!(evicted >= 5, "{evicted} tricklers evicted");
    let line = daemon.wait_log(&[" evicted behind="]).await;
    assert!(line.contains("client=unknown[127.0.2"), "{line}");
}
