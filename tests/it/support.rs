//! Helpers for the integration tests: a minimal backend that records what it
//! receives, certificates made on the fly, and a line-oriented SMTP client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Bounds every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// A backend that speaks just enough SMTP for the sidecar, and records every
/// line it receives (including a PROXY header, in hex when binary).
pub struct Backend {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    pub async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move { serve_backend(tcp, log).await });
            }
        });
        Backend { addr, received }
    }

    pub fn lines(&self) -> Vec<String> {
        self.received.lock().expect("lock").clone()
    }
}

async fn serve_backend(tcp: TcpStream, log: Arc<Mutex<Vec<String>>>) {
    let (r, mut w) = tcp.into_split();
    let mut r = BufReader::new(r);
    // A PROXY v2 header has a fixed 16-byte start and a length.
    let mut sig = [0u8; 16];
    if tokio::io::AsyncReadExt::read_exact(&mut r, &mut sig)
        .await
        .is_err()
    {
        return;
    }
    let len = usize::from(u16::from_be_bytes([sig[14], sig[15]]));
    let mut rest = vec![0u8; len];
    if tokio::io::AsyncReadExt::read_exact(&mut r, &mut rest)
        .await
        .is_err()
    {
        return;
    }
    log.lock()
        .expect("lock")
        .push(format!("PROXYv2 {}", hex(&rest)));
    let _ = w.write_all(b"220 backend.test ESMTP\r\n").await;
    let mut in_data = false;
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        log.lock().expect("lock").push(line.clone());
        let reply: &[u8] = if in_data {
            if line == ".\r\n" {
                in_data = false;
                b"250 2.0.0 Ok: queued\r\n"
            } else {
                continue;
            }
        } else {
            match line.get(..4).map(str::to_ascii_uppercase).as_deref() {
                Some("EHLO") => b"250-backend.test\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-XCLIENT ADDR\r\n250 CHUNKING\r\n",
                Some("DATA") => {
                    in_data = true;
                    b"354 go ahead\r\n"
                }
                Some("QUIT") => {
                    let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
                    return;
                }
                _ => b"250 2.0.0 Ok\r\n",
            }
        };
        if w.write_all(reply).await.is_err() {
            return;
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate and key for `name` written to a temporary directory.
pub struct TestCert {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: rustls_pki_types::CertificateDer<'static>,
}

impl TestCert {
    pub fn new(name: &str) -> TestCert {
        let generated = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
        let dir = std::env::temp_dir().join(format!(
            "blackpony-it-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, generated.cert.pem()).expect("write cert");
        std::fs::write(&key, generated.signing_key.serialize_pem()).expect("write key");
        TestCert {
            dir,
            cert,
            key,
            der: generated.cert.der().clone(),
        }
    }

    /// A client config that trusts exactly this certificate.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("add root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Reads one complete (possibly multi-line) reply.
pub async fn read_reply<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> String {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, r.read_line(&mut line))
            .await
            .expect("reply in time")
            .expect("read reply");
        if n == 0 {
            return reply;
        }
        reply.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return reply;
        }
    }
}

/// Sends `line` and returns the reply.
pub async fn command<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    line: &str,
) -> String {
    s.get_mut().write_all(line.as_bytes()).await.expect("write");
    s.get_mut().flush().await.expect("flush");
    read_reply(s).await
}
