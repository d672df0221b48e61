//! `blackpony fetch` against the relay's fetch listener over real sockets
//! (proto-spec/fetch.md): sealed files published into a FileSpool are
//! fetched into a Maildir byte for byte and deleted; a key the relay does
//! not know is refused before any spool data; a relay whose key changed is
//! refused by the home side; a delivery recorded in the journal is not
//! repeated.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use age::secrecy::ExposeSecret;
use blackpony::pony::negotiation::{ServerHints, ServerIdentity};
use blackpony::pony::noise::Keypair;
use blackpony::relay::fetch::{FetchSettings, OnPermanentFailure, Target};
use blackpony::relay::fetch_server::{self, ListenerConfig};
use blackpony::relay::sealed::{self, SealedEnvelope};
use blackpony::relay::xfetch::FetchKeys;
use blackpony::state::FileSpool;
use tokio::net::TcpListener;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bp-it-fetch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Seals like `seal` does: the sealed-file format, encrypted with age.
fn seal(to: &age::x25519::Recipient, envelope: &SealedEnvelope, message: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let plain = sealed::format(envelope, message).unwrap();
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(to as &dyn age::Recipient)).unwrap();
    let mut out = Vec::new();
    let mut w = encryptor.wrap_output(&mut out).unwrap();
    w.write_all(&plain).unwrap();
    w.finish().unwrap();
    out
}

/// The home key, a relay that serves it, and the age identity mail is
/// sealed to.
async fn standard_relay(dir: &Path) -> (Keypair, Relay, age::x25519::Identity) {
    let home = Keypair::from_secret([11; 32]);
    let relay = Relay::start(
        &dir.join("spool"),
        Keypair::from_secret([22; 32]),
        vec![home.public()],
    )
    .await;
    (home, relay, age::x25519::Identity::generate())
}

/// Seals a message from `from` to alice and publishes it.
async fn publish(
    spool: &FileSpool,
    identity: &age::x25519::Identity,
    from: &str,
    message: &[u8],
) -> blackpony::state::SpoolId {
    let env = SealedEnvelope {
        mail_from: from.into(),
        rcpt_to: vec!["alice@example.org".into()],
    };
    spool
        .publish(&seal(&identity.to_public(), &env, message))
        .await
        .unwrap()
}

/// The listener harness's settings for a test relay.
fn harness() -> blackpony::server::Settings {
    blackpony::server::Settings {
        limits: Default::default(),
        timeouts: Default::default(),
        shutdown_grace: Duration::from_secs(1),
        hostname: "relay.example.org".into(),
        refusal: None,
    }
}

struct Relay {
    port: u16,
    spool: FileSpool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Relay {
    async fn start(dir: &Path, key: Keypair, fetch_keys: Vec<[u8; 32]>) -> Relay {
        std::fs::create_dir_all(dir).unwrap();
        let spool = FileSpool::open(dir).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = Arc::new(ListenerConfig {
            hostname: "relay.example.org".into(),
            identity: Arc::new(ServerIdentity {
                key: key.clone(),
                hints: ServerHints {
                    max_age: 86400,
                    ..ServerHints::default()
                },
            }),
            keys: FetchKeys::new(fetch_keys),
            timeouts: Default::default(),
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(fetch_server::run(
            listener,
            harness(),
            config,
            Arc::new(spool.clone()),
            async {
                let _ = rx.await;
            },
        ));
        Relay {
            port,
            spool,
            stop: Some(tx),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn settings(
    port: u16,
    home: &Keypair,
    identity: &age::x25519::Identity,
    target: Target,
    state: &Path,
) -> FetchSettings {
    let parsed: age::x25519::Identity = identity.to_string().expose_secret().parse().unwrap();
    FetchSettings {
        relay_host: "127.0.0.1".into(),
        relay_port: port,
        host_key: home.clone(),
        identities: vec![Box::new(parsed)],
        target,
        relay_key: None,
        state_dir: state.to_path_buf(),
        on_permanent_failure: OnPermanentFailure::Keep,
        helo_name: "home.example.net".into(),
        max_size: 1 << 20,
        connect_timeout: Duration::from_secs(5),
        reply_timeout: Duration::from_secs(10),
    }
}

/// Fetching into `<dir>/Maildir`, state in `<dir>/state`.
fn maildir_settings(
    port: u16,
    home: &Keypair,
    identity: &age::x25519::Identity,
    dir: &Path,
) -> FetchSettings {
    let target = Target::Maildir(dir.join("Maildir"));
    settings(port, home, identity, target, &dir.join("state"))
}

fn maildir_files(root: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("new"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[tokio::test]
async fn fetch_into_a_maildir_then_the_spool_is_empty() {
    let dir = scratch("maildir");
    let (home, relay, identity) = standard_relay(&dir).await;
    let messages: Vec<Vec<u8>> = vec![
        b"Subject: one\r\n\r\nfirst body\r\n.\r\n..dots\r\n".to_vec(),
        // Binary-ish, a large one across many frames and reads.
        (0..200_000u32)
            .map(|i| {
                if i % 80 == 79 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .collect(),
        b"Subject: three\r\n\r\n\xc3\xa9t\xc3\xa9\r\n".to_vec(),
    ];
    for (i, m) in messages.iter().enumerate() {
        let env = SealedEnvelope {
            mail_from: format!("s{i}@example.com"),
            rcpt_to: vec!["alice@example.org".into()],
        };
        relay
            .spool
            .publish(&seal(&identity.to_public(), &env, m))
            .await
            .unwrap();
        // Distinct times, so the order is known.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let md = dir.join("Maildir");
    let s = maildir_settings(relay.port, &home, &identity, &dir);
    let report = blackpony::relay::fetch::run(&s).await;
    assert_eq!(report.exit().code(), 0, "{report:?}");
    assert_eq!(report.fetched, 3);
    assert!(relay.spool.list().await.unwrap().is_empty());
    let mut got = maildir_files(&md);
    let mut want: Vec<Vec<u8>> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut v = format!("Return-Path: <s{i}@example.com>\r\n").into_bytes();
            v.extend_from_slice(m);
            v
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // The relay's key is pinned now: a second run with nothing to fetch.
    let report = blackpony::relay::fetch::run(&s).await;
    assert_eq!((report.exit().code(), report.fetched), (0, 0), "{report:?}");
    drop(relay);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_unknown_key_gets_nothing() {
    let dir = scratch("unknown");
    let stranger = Keypair::from_secret([33; 32]);
    let (_, relay, identity) = standard_relay(&dir).await;
    publish(&relay.spool, &identity, "s@example.com", b"secret\r\n").await;
    let md = dir.join("Maildir");
    let s = maildir_settings(relay.port, &stranger, &identity, &dir);
    let report = blackpony::relay::fetch::run(&s).await;
    // Our key is not one of the relay's: a configuration matter (78).
    assert_eq!(report.exit().code(), 78, "{report:?}");
    assert_eq!(report.fetched, 0);
    assert_eq!(relay.spool.list().await.unwrap().len(), 1);
    assert!(maildir_files(&md).is_empty());
    drop(relay);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_relay_with_another_key_is_refused() {
    let dir = scratch("impostor");
    let md = dir.join("Maildir");
    // First fetch: pins the real relay's key.
    let (home, relay, identity) = standard_relay(&dir).await;
    let s = maildir_settings(relay.port, &home, &identity, &dir);
    assert_eq!(blackpony::relay::fetch::run(&s).await.exit().code(), 0);
    let port = relay.port;
    drop(relay);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // An impostor on the same address, with a spool that has mail.
    std::fs::create_dir_all(dir.join("spool2")).unwrap();
    let spool = FileSpool::open(&dir.join("spool2")).await.unwrap();
    publish(&spool, &identity, "evil@example.com", b"planted\r\n").await;
    let mut bound = None;
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)).await {
            bound = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listener = bound.expect("the relay's port is free again");
    let config = Arc::new(ListenerConfig {
        hostname: "relay.example.org".into(),
        identity: Arc::new(ServerIdentity {
            key: Keypair::from_secret([44; 32]),
            hints: ServerHints::default(),
        }),
        keys: FetchKeys::new(vec![home.public()]),
        timeouts: Default::default(),
    });
    let server = tokio::spawn(fetch_server::run(
        listener,
        harness(),
        config,
        Arc::new(spool.clone()),
        std::future::pending(),
    ));
    let report = blackpony::relay::fetch::run(&s).await;
    assert_eq!(report.exit().code(), 75, "{report:?}");
    assert!(maildir_files(&md).is_empty());
    assert_eq!(spool.list().await.unwrap().len(), 1);
    // The configured key is checked the same way.
    let mut s2 = settings(
        port,
        &home,
        &identity,
        Target::Maildir(md.clone()),
        &dir.join("state2"),
    );
    s2.relay_key = Some(Keypair::from_secret([22; 32]).public());
    assert_eq!(blackpony::relay::fetch::run(&s2).await.exit().code(), 75);
    assert!(maildir_files(&md).is_empty());
    server.abort();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_delivery_in_the_journal_is_not_repeated() {
    let dir = scratch("journal");
    let (home, relay, identity) = standard_relay(&dir).await;
    let id = publish(&relay.spool, &identity, "s@example.com", b"once\r\n").await;
    // As if a run had delivered it and died before the relay's DELETE.
    let state = dir.join("state");
    let journal = blackpony::relay::journal::Journal::open(&state).unwrap();
    journal
        .record(id.as_str(), &["alice@example.org".to_string()].into())
        .unwrap();
    let md = dir.join("Maildir");
    let s = maildir_settings(relay.port, &home, &identity, &dir);
    let report = blackpony::relay::fetch::run(&s).await;
    assert_eq!((report.exit().code(), report.fetched), (0, 1), "{report:?}");
    assert!(maildir_files(&md).is_empty(), "delivered twice");
    assert!(relay.spool.list().await.unwrap().is_empty());
    assert!(journal.delivered(id.as_str()).unwrap().is_empty());
    drop(relay);
    let _ = std::fs::remove_dir_all(dir);
}
