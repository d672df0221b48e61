//! `blackpony inbound` over real sockets, in-process.

use std::sync::Arc;
use std::time::Duration;

use blackpony::inbound::{self, BackendTarget, Identity, InboundConfig, SessionConfig};
use blackpony::smtp::BareNewlines;
use blackpony::transport::ServerTls;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::support::{Backend, TestCert, WAIT, command, read_reply};

pub(crate) struct Sidecar {
    pub(crate) addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sidecar {
    pub(crate) async fn start(
        backend: &Backend,
        tls: Arc<ServerTls>,
        tune: impl FnOnce(&mut InboundConfig),
    ) -> Sidecar {
        let session = SessionConfig {
            hostname: "mx.test".into(),
            identity: Identity::ProxyV2,
            require_tls: false,
            bare_newlines: BareNewlines::Normalize,
            trace_header: true,
            pony: None,
            error_limits: Default::default(),
        };
        let mut config = InboundConfig::new(session, BackendTarget::Tcp(backend.addr.to_string()));
        // Sessions a test leaves open are cut off soon after it stops the sidecar.
        config.shutdown_grace = Duration::from_secs(1);
        tune(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(inbound::run(listener, config, tls, async {
            let _ = stopped.await;
        }));
        Sidecar {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub(crate) async fn connect(&self) -> BufReader<TcpStream> {
        BufReader::new(TcpStream::connect(self.addr).await.expect("connect"))
    }

    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("sidecar stops in time")
            .expect("sidecar task");
    }
}

#[tokio::test]
async fn starttls_delivery_with_pem_certificate() {
    let backend = Backend::start().await;
    let cert = TestCert::new("mx.test");
    let tls = Arc::new(ServerTls::from_pem_files(&cert.cert, &cert.key).expect("load pem"));
    let sidecar = Sidecar::start(&backend, tls, |_| {}).await;

    let mut c = sidecar.connect().await;
    assert!(read_reply(&mut c).await.starts_with("220 backend.test"));
    let ehlo = command(&mut c, "EHLO client.test\r\n").await;
    assert!(ehlo.contains("250 STARTTLS\r\n"), "{ehlo}");
    assert!(
        !ehlo.contains("XCLIENT") && !ehlo.contains("CHUNKING"),
        "{ehlo}"
    );
    assert!(command(&mut c, "STARTTLS\r\n").await.starts_with("220 "));

    let connector = tokio_rustls::TlsConnector::from(cert.client_config());
    let name = rustls_pki_types::ServerName::try_from("mx.test").expect("name");
    let tls = connector
        .connect(name, c.into_inner())
        .await
        .expect("handshake against the PEM certificate");
    let mut c = BufReader::new(tls);
    let ehlo = command(&mut c, "EHLO client.test\r\n").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(
        command(&mut c, "MAIL FROM:<a@client.test>\r\n")
            .await
            .starts_with("250")
    );
    assert!(
        command(&mut c, "RCPT TO:<b@mx.test>\r\n")
            .await
            .starts_with("250")
    );
    assert!(command(&mut c, "DATA\r\n").await.starts_with("354"));
    let reply = command(&mut c, "Subject: hi\r\n\r\nbody\r\n.\r\n").await;
    assert_eq!(reply, "250 2.0.0 Ok: queued\r\n", "the backend's own reply");
    assert!(command(&mut c, "QUIT\r\n").await.starts_with("221"));

    let lines = backend.lines();
    // PROXY v2: family 0x11, 12 bytes, client 127.0.0.1, local 127.0.0.1.
    assert!(
        lines[0].starts_with("PROXYv2 7f0000017f000001"),
        "{lines:?}"
    );
    let received = lines
        .iter()
        .position(|l| l.starts_with("Received: from client.test (unknown [127.0.0.1])"))
        .expect("trace header forwarded");
    assert!(
        lines[received + 1].contains("with ESMTPS (TLSv1.3 TLS_"),
        "{lines:?}"
    );
    assert_eq!(lines[received + 3], "Subject: hi\r\n");
    // Nothing from before TLS survives: the first backend connection was told
    // QUIT and a second one (its own PROXY header) took the client's new EHLO.
    let count = |want: &str| lines.iter().filter(|l| l.as_str() == want).count();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("PROXYv2 ")).count(),
        2,
        "a new backend connection after TLS: {lines:?}"
    );
    assert_eq!(count("EHLO client.test\r\n"), 2, "{lines:?}");
    assert_eq!(
        count("QUIT\r\n"),
        2,
        "the old connection's and the client's: {lines:?}"
    );
    assert_eq!(count("RSET\r\n"), 0, "{lines:?}");
    sidecar.stop().await;
}

#[tokio::test]
async fn injection_after_starttls_is_refused_on_the_wire() {
    let backend = Backend::start().await;
    let tls = Arc::new(ServerTls::self_signed("mx.test").expect("self-signed"));
    let sidecar = Sidecar::start(&backend, tls, |_| {}).await;
    let mut c = sidecar.connect().await;
    read_reply(&mut c).await;
    command(&mut c, "EHLO client.test\r\n").await;
    let reply = command(&mut c, "STARTTLS\r\nRCPT TO:<victim@mx.test>\r\n").await;
    assert!(reply.starts_with("554 5.5.1 "), "{reply}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, c.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(
        n.is_ok() && rest.is_empty(),
        "connection closed after the 554"
    );
    assert!(!backend.lines().iter().any(|l| l.contains("victim")));
    sidecar.stop().await;
}

#[tokio::test]
async fn backend_down_gives_421() {
    // A port that was just free: nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let backend = Backend {
        addr: dead_addr,
        received: Default::default(),
    };
    let tls = Arc::new(ServerTls::self_signed("mx.test").expect("self-signed"));
    let sidecar = Sidecar::start(&backend, tls, |_| {}).await;
    let mut c = sidecar.connect().await;
    assert!(read_reply(&mut c).await.starts_with("421 4.3.2 "));
    sidecar.stop().await;
}

#[tokio::test]
async fn per_client_limit_gives_421_and_frees_slots() {
    let backend = Backend::start().await;
    let tls = Arc::new(ServerTls::self_signed("mx.test").expect("self-signed"));
    let sidecar = Sidecar::start(&backend, tls, |c| c.limits.per_client = 2).await;
    let mut a = sidecar.connect().await;
    let mut b = sidecar.connect().await;
    assert!(read_reply(&mut a).await.starts_with("220"));
    assert!(read_reply(&mut b).await.starts_with("220"));
    let mut third = sidecar.connect().await;
    assert!(read_reply(&mut third).await.starts_with("421 4.7.0 "));
    assert!(command(&mut a, "QUIT\r\n").await.starts_with("221"));
    drop(a);
    // The slot comes back once the first session has ended.
    let mut ok = None;
    for _ in 0..50 {
        let mut again = sidecar.connect().await;
        if read_reply(&mut again).await.starts_with("220") {
            ok = Some(again);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok.is_some(), "slot freed after QUIT");
    sidecar.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_session_finish() {
    let backend = Backend::start().await;
    let tls = Arc::new(ServerTls::self_signed("mx.test").expect("self-signed"));
    let sidecar =
        Sidecar::start(&backend, tls, |c| c.shutdown_grace = Duration::from_secs(5)).await;
    let mut c = sidecar.connect().await;
    read_reply(&mut c).await;
    let addr = sidecar.addr;
    let stopping = tokio::spawn(sidecar.stop());
    // No new connections are accepted (the listener is closed by each
    // serving thread as it stops accepting: give a busy machine a moment)...
    let mut closed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed, "listener closed");
    // ...but the running session still works.
    assert!(
        command(&mut c, "EHLO client.test\r\n")
            .await
            .starts_with("250")
    );
    assert!(command(&mut c, "QUIT\r\n").await.starts_with("221"));
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("stopped")
        .expect("task");
}

#[tokio::test]
async fn pipelined_burst_keeps_reply_order() {
    let backend = Backend::start().await;
    let tls = Arc::new(ServerTls::self_signed("mx.test").expect("self-signed"));
    // 200 refused XFORWARDs are 200 errors: above the error limits, whose
    // pauses and 421 are tested on their own (error_limits.rs).
    let sidecar = Sidecar::start(&backend, tls, |c| {
        let mut session = (*c.session).clone();
        session.error_limits.soft = 1000;
        session.error_limits.hard = 1000;
        c.session = Arc::new(session);
    })
    .await;
    let mut c = sidecar.connect().await;
    read_reply(&mut c).await;
    command(&mut c, "EHLO client.test\r\n").await;
    let mut burst = String::new();
    for i in 0..200 {
        burst.push_str(&format!(
            "MAIL FROM:<a{i}@client.test>\r\nXFORWARD ADDR=1.2.3.4\r\nRSET\r\n"
        ));
    }
    c.get_mut()
        .write_all(burst.as_bytes())
        .await
        .expect("write burst");
    for i in 0..200 {
        assert!(read_reply(&mut c).await.starts_with("250"), "MAIL {i}");
        assert!(
            read_reply(&mut c).await.starts_with("550 5.7.0"),
            "XFORWARD {i}"
        );
        assert!(read_reply(&mut c).await.starts_with("250"), "RSET {i}");
    }
    assert!(!backend.lines().iter().any(|l| l.contains("XFORWARD")));
    sidecar.stop().await;
}

/// proto-spec §3.8: the wait for XPONY message 3 has one deadline from the
/// 334 on; a byte now and then does not extend it (slowloris).
#[tokio::test]
async fn message_3_deadline_is_not_extended_by_trickling_bytes() {
    use blackpony::pony::negotiation::{ServerHints, ServerIdentity, encode_line};
    use blackpony::pony::noise::{Initiator, Keypair};
    let backend = Backend::start().await;
    let tls = Arc::new(ServerTls::self_signed("mx.test").expect("self-signed"));
    let sidecar = Sidecar::start(&backend, tls, |c| {
        c.timeouts.line = Duration::from_millis(1500);
        let mut session = (*c.session).clone();
        session.pony = Some(Arc::new(ServerIdentity {
            key: Keypair::generate().expect("key"),
            hints: ServerHints::default(),
        }));
        c.session = Arc::new(session);
    })
    .await;
    let mut c = sidecar.connect().await;
    assert!(read_reply(&mut c).await.starts_with("220"));
    let ehlo = command(&mut c, "EHLO client.test\r\n").await;
    assert!(ehlo.contains("XPONY"), "{ehlo}");
    let k = || Keypair::generate().expect("key");
    let (_, m1) = Initiator::new(b"x", k(), k())
        .write_message_1(&[])
        .expect("message 1");
    let reply = command(
        &mut c,
        &format!(
            "XPONY Noise_XX_25519_ChaChaPoly_SHA256 {}\r\n",
            encode_line(&m1)
        ),
    )
    .await;
    assert!(reply.starts_with("334 "), "{reply}");
    let started = std::time::Instant::now();
    // One byte every 300 ms: without one deadline this would never end.
    let mut answer = String::new();
    for _ in 0..20 {
        if c.get_mut().write_all(b"A").await.is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf)).await
        {
            answer.push_str(&String::from_utf8_lossy(&buf[..n]));
            if n == 0 || answer.contains("\r\n") {
                break;
            }
        }
    }
    assert!(
        answer.starts_with("421 4.4.2 Timeout waiting for XPONY"),
        "{answer:?} after {:?}",
        started.elapsed()
    );
    sidecar.stop().await;
}
