//! `blackpony seal`: the I/O around the receiving session
//! ([`ReceiveSession`]) for the sealed relay. No SMTP logic here: the
//! session parses, this loop decides what only the relay knows (its
//! domains, its keys, its spool) and moves bytes.
//!
//! - **SMTP** (the MX, port 25): RCPT is answered here (our domains only:
//!   never an open relay), STARTTLS is offered, and the final 250 is given
//!   only after the sealed file is published (fsynced and renamed into the
//!   spool).
//! - **LMTP** (behind an MTA that filtered spam, `mailbox_transport =
//!   lmtp:…`): one reply per recipient; with a Maildir root each recipient
//!   gets its own file, sealed to its own keys, in its own Maildir.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

use super::seal::{SealKeys, seal};
use super::sealed::SealedEnvelope;
use crate::log;
use crate::pony::channel::Channel;
use crate::pony::keys::fingerprint;
use crate::pony::negotiation::ServerIdentity;
use crate::server::memory::{Held, MessageMemory};
use crate::server::{
    Activity, ClientClock, Control, Limits, Listen, Order, Timeouts, Wrote, write_within,
};
use crate::smtp::server::{Protocol, ReceiveEvent, ReceiveOptions, ReceiveSession};
use crate::smtp::{BareNewlines, Envelope, Reply, replies};
use crate::state::{FileSpool, SpoolId, StoreError};
use crate::transport::{Encryption, PonyStream, ServerTls, ServerTlsStream, Stream};

/// Everything `seal` is configured with, after flags and file are merged.
#[derive(Debug, Clone)]
pub struct SealConfig {
    /// Our host name, in the greeting and the EHLO reply.
    pub hostname: String,
    pub keys: Arc<SealKeys>,
    pub max_message_size: u64,
    /// Message octets held in memory by all sessions at once (a message is
    /// sealed from memory): the bound `outbound` has, so that many clients
    /// sending big messages at once cannot exhaust memory.
    pub message_memory: Arc<MessageMemory>,
    pub bare_newlines: BareNewlines,
    /// Connection limits in all, per client and per network, eviction:
    /// the listener harness's, as for `inbound`.
    pub limits: Limits,
    /// Per-line and per-message client deadlines, shorter under stress
    /// (RFC 5321 §4.5.3.2.7, Postfix's `smtpd_min_data_rate`).
    pub timeouts: Timeouts,
    /// After SIGTERM, how long running sessions may take to finish.
    pub shutdown_grace: Duration,
    /// Offer XPONY with this host key (the MX only; proto-spec xpony.md).
    pub pony: Option<Arc<ServerIdentity>>,
}

/// Where sealed messages go.
#[derive(Debug, Clone)]
pub enum Store {
    /// One file per message, sealed to the keys of all its recipients.
    Spool(FileSpool),
    /// LMTP only: one file per recipient in `<root>/<address>/new/`.
    Maildirs(Arc<MaildirRoot>),
}

/// Per-mailbox Maildirs under one root, opened on first use.
#[derive(Debug)]
pub struct MaildirRoot {
    root: PathBuf,
    open: Mutex<HashMap<String, FileSpool>>,
}

impl MaildirRoot {
    /// The root must exist; mailbox directories are made as mail comes.
    pub async fn open(root: PathBuf) -> Result<MaildirRoot, StoreError> {
        match tokio::fs::metadata(&root).await {
            Ok(m) if m.is_dir() => Ok(MaildirRoot {
                root,
                open: Mutex::new(HashMap::new()),
            }),
            _ => Err(StoreError::Unusable {
                path: root.display().to_string(),
                what: "is not an existing directory".into(),
            }),
        }
    }

    async fn spool_for(&self, address: &str) -> Result<FileSpool, StoreError> {
        let name = mailbox_dir_name(address).ok_or_else(|| StoreError::BadId(address.into()))?;
        if let Some(s) = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
        {
            return Ok(s.clone());
        }
        let dir = self.root.join(&name);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| StoreError::io("create mailbox", &dir, e))?;
        let spool = FileSpool::open(&dir).await?;
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, spool.clone());
        Ok(spool)
    }
}

/// The directory name of a mailbox: the address in lower case, when it is
/// safe as one path component.
fn mailbox_dir_name(address: &str) -> Option<String> {
    let name = address.to_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains("..")
        && !name.chars().any(|c| c == '/' || c.is_control());
    ok.then_some(name)
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Serves clients on `listener` with the shared listener harness
/// ([`crate::server`]: connection limits in all, per client and per
/// network, eviction, stress, the refusal path, the drain at shutdown)
/// until `shutdown`. `tls` makes STARTTLS offered (the MX); LMTP runs
/// without it.
pub async fn run<L>(
    listener: L,
    protocol: Protocol,
    config: Arc<SealConfig>,
    store: Store,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()>,
) where
    L: Listen,
    L::Conn: AsyncRead + AsyncWrite + Unpin + Send,
{
    let settings = crate::server::Settings {
        limits: config.limits.clone(),
        timeouts: config.timeouts,
        shutdown_grace: config.shutdown_grace,
        hostname: config.hostname.clone(),
        refusal: None,
    };
    crate::server::run(listener, settings, shutdown, move |io, client, control| {
        let (config, store, tls) = (Arc::clone(&config), store.clone(), tls.clone());
        async move { serve(io, client, protocol, &config, &store, tls, control).await }
    })
    .await;
}

/// Counters for the closing log line.
#[derive(Default)]
struct Stats {
    sealed: u64,
    refused: u64,
}

/// What the session asked the I/O loop to switch to.
enum Switch {
    Tls,
    Pony,
}

/// Serves one client from greeting to close.
async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
    io: S,
    client: Option<SocketAddr>,
    protocol: Protocol,
    config: &SealConfig,
    store: &Store,
    tls: Option<Arc<ServerTls>>,
    mut control: Control,
) {
    let id = format!("{:08X}", NEXT_SESSION.fetch_add(1, Ordering::Relaxed));
    let who = client.map_or_else(|| "local".to_string(), crate::server::display_client);
    let started = Instant::now();
    log!(
        "session={id} connect client={who} protocol={}",
        protocol.as_str()
    );
    let options = ReceiveOptions {
        starttls: tls.is_some(),
        bare_newlines: config.bare_newlines,
        refuse_nul: true,
    };
    let mut session = ReceiveSession::new(protocol, &config.hostname, config.max_message_size)
        .with_options(options);
    if let (Protocol::Smtp, Some(identity)) = (protocol, &config.pony) {
        session = session.with_pony(Arc::clone(identity));
    }
    let mut stream = Stream::Plain(io);
    let mut encryption: Option<Encryption> = None;
    let mut stats = Stats::default();
    let mut buf = vec![0u8; 64 * 1024];
    let ctx = Ctx {
        id: &id,
        who: &who,
        config,
        store,
    };
    let timeouts = &config.timeouts;
    // The client's deadline: per command line, per message; message 3 of
    // XPONY has one from the 334 on (xpony.md R17).
    let mut clock = ClientClock::new(started);
    let mut message_3_deadline: Option<Instant> = None;
    // This session's share of the message memory (see SealConfig).
    let mut held = Held::new(&config.message_memory);
    // How the session ends when it closes itself (QUIT, or the memory bound).
    let mut closing = "quit";
    let end = loop {
        let mut switch = None;
        while let Some(event) = session.poll_event() {
            match event {
                ReceiveEvent::Recipient { recipient, .. } => {
                    // A declared size (RFC 1870) that the memory left cannot
                    // hold is refused before the message is sent (§6.1: 452).
                    let reply = match session.declared_size() {
                        Some(n) if !held.could_grow_to(n) => {
                            log!("session={id} {} client={who}", held.refusal(n));
                            replies::insufficient_storage()
                        }
                        _ => ctx.recipient_reply(&recipient),
                    };
                    if !reply.is_success() {
                        stats.refused += 1;
                    }
                    session.answer(&reply);
                }
                ReceiveEvent::Data => {
                    session.answer(&replies::start_mail_input());
                }
                ReceiveEvent::EndOfData { envelope, wire } => {
                    // Sealing and fsync are our time, not the client's:
                    // never evicted meanwhile.
                    control.set_activity(Activity::Busy);
                    let reply = ctx.seal_one(envelope, wire).await;
                    if reply.is_success() {
                        stats.sealed += 1;
                    }
                    session.answer(&reply);
                }
                ReceiveEvent::Deliver { envelope, wire } => {
                    control.set_activity(Activity::Busy);
                    let replies = ctx.deliver_lmtp(envelope, wire).await;
                    stats.sealed += replies.iter().filter(|r| r.is_success()).count() as u64;
                    session.delivered(&replies);
                }
                ReceiveEvent::StartTls => switch = Some(Switch::Tls),
                ReceiveEvent::StartPony => switch = Some(Switch::Pony),
                ReceiveEvent::XponyFailed { stage, error } => {
                    log!("session={id} xpony-error=\"{error}\" stage={stage} client={who}");
                }
                ReceiveEvent::Reset | ReceiveEvent::Close => {}
            }
        }
        // Every message handed out above was answered: only one still
        // arriving is held.
        if !session.receiving_message() {
            held.release();
        }
        if !session.output.is_empty() {
            // Something was answered: the next line (or the message, after
            // a 354) has its own time from now.
            let now = Instant::now();
            if session.receiving_message() {
                clock.message(now);
            } else {
                clock.next_line(now);
            }
            control.answered();
            let deadline = now + timeouts.line(control.stressed());
            let wrote = write_within(&mut stream, &session.output, deadline, &mut control).await;
            session.output.clear();
            match wrote {
                Wrote::Done => {}
                Wrote::Failed => break "client-lost",
                Wrote::Late => {
                    log!("session={id} timeout waiting_for=client-write client={who}");
                    break "client-write-timeout";
                }
                // A reply may be half written: no 421 after it.
                Wrote::Told(Order::Evict { .. }) => break "evicted",
                Wrote::Told(_) => break "shutdown",
            }
            control.answered();
        }
        if session.is_closed() {
            let _ = tokio::time::timeout(CLOSE_WRITE, stream.shutdown()).await;
            break closing;
        }
        match switch {
            Some(Switch::Tls) => {
                let (Some(tls), Ok(plain)) = (tls.as_ref(), stream.into_plain()) else {
                    break "tls-failed";
                };
                let acceptor = TlsAcceptor::from(tls.config());
                let limit = timeouts.line(control.stressed());
                match tokio::time::timeout(limit, acceptor.accept(plain)).await {
                    Ok(Ok(t)) => {
                        let info = Encryption::from_tls(t.get_ref().1);
                        log!("session={id} starttls client={who} tls={info}");
                        encryption = Some(info);
                        // The inbound sidecar's stream (transport/server_tls.rs):
                        // one server-side TLS path for every role.
                        stream = Stream::ServerTls(Box::new(ServerTlsStream::new(t)));
                        session.tls_established();
                        clock.next_line(Instant::now());
                        continue;
                    }
                    Ok(Err(e)) => {
                        let e = crate::transport::log_words::error_words(&e);
                        log!("session={id} tls-error=\"{e}\" client={who}");
                        break "tls-failed";
                    }
                    Err(_) => {
                        log!("session={id} tls-error=\"handshake timed out\" client={who}");
                        break "tls-failed";
                    }
                }
            }
            Some(Switch::Pony) => {
                // Message 3 is in; the client's first frames may be too.
                let (Some((transport, already)), Ok(plain)) =
                    (session.take_pony(), stream.into_plain())
                else {
                    break "xpony-failed";
                };
                let info = Encryption::pony(&transport);
                log!(
                    "session={id} xpony client={who} key={} {info}",
                    fingerprint(&transport.remote_static())
                );
                encryption = Some(info);
                stream = Stream::Pony(Box::new(PonyStream::new(
                    plain,
                    Channel::new(transport),
                    already,
                )));
                session.pony_established();
                clock.next_line(Instant::now());
                continue;
            }
            None => {}
        }
        let now = Instant::now();
        let receiving = session.receiving_message();
        if receiving {
            clock.message(now);
        }
        // A byte now and then extends neither a line's deadline nor a
        // message's beyond the minimum data rate.
        let deadline = if session.awaiting_message_3() {
            *message_3_deadline.get_or_insert(now + timeouts.line)
        } else {
            message_3_deadline = None;
            clock.deadline(timeouts, control.stressed())
        };
        control.set_activity(if receiving {
            Activity::Message
        } else {
            Activity::Client
        });
        let read = tokio::select! {
            read = stream.read(&mut buf) => Ok(read),
            () = tokio::time::sleep_until(deadline.into()) => Err(None),
            // Shutdown or eviction, only ever between commands: a message
            // being sealed is finished and answered first.
            order = control.order() => match order {
                Order::Recheck => continue,
                order => Err(Some(order)),
            },
        };
        let (reply, why) = match read {
            Ok(Ok(n)) if n > 0 => {
                if clock.in_message() {
                    clock.received(n);
                }
                control.received(n);
                session.input(&buf[..n]);
                // The message being received is held as it arrives; past
                // the bound, the client is told to come back later and
                // the message is dropped (RFC 3463 X.3.1, mail system full).
                if session.receiving_message() && !held.grow_to(session.message_bytes()) {
                    log!(
                        "session={id} {} client={who}",
                        held.refusal(session.message_bytes())
                    );
                    stats.refused += 1;
                    closing = "message-memory";
                    session.close_with(&replies::insufficient_storage_closing(&config.hostname));
                }
                continue;
            }
            Ok(Ok(_)) => {
                session.eof();
                break "client-closed";
            }
            Ok(Err(e)) => {
                let e = crate::transport::log_words::error_words(&e);
                log!("session={id} client-error=\"{e}\" client={who}");
                break "client-lost";
            }
            Err(None) if session.awaiting_message_3() => (replies::xpony_timeout(), "timeout"),
            Err(None) => {
                let waiting = if receiving {
                    "client-message"
                } else {
                    "client"
                };
                log!("session={id} timeout waiting_for={waiting} client={who}");
                (replies::timeout(&config.hostname), "timeout")
            }
            Err(Some(Order::Evict { idle })) => {
                log!(
                    "session={id} evicted idle={:.1}s client={who} (all slots taken)",
                    idle.as_secs_f64()
                );
                (replies::evicted(&config.hostname), "evicted")
            }
            Err(Some(_)) => (replies::shutting_down(&config.hostname), "shutdown"),
        };
        let _ = tokio::time::timeout(CLOSE_WRITE, async {
            let _ = stream.write_all(&reply.to_bytes()).await;
            let _ = stream.flush().await;
            let _ = stream.shutdown().await;
        })
        .await;
        break why;
    };
    let tls = encryption.map_or_else(|| "none".to_string(), |e| e.to_string());
    log!(
        "session={id} disconnect client={who} tls={tls} sealed={} refused={} end={end} duration={:.3}s",
        stats.sealed,
        stats.refused,
        started.elapsed().as_secs_f64()
    );
}

/// How long a last reply (421) and the close may take.
const CLOSE_WRITE: Duration = Duration::from_secs(5);

/// What one session's decisions need.
struct Ctx<'a> {
    id: &'a str,
    who: &'a str,
    config: &'a SealConfig,
    store: &'a Store,
}

impl Ctx<'_> {
    /// RCPT: our domains only, and only mailboxes we have a key for.
    fn recipient_reply(&self, recipient: &str) -> Reply {
        match self.refusal(recipient) {
            Some(reply) => {
                log!(
                    "session={} refused=rcpt client={} to=<{recipient}> reply=\"{reply}\"",
                    self.id,
                    self.who
                );
                reply
            }
            None => replies::recipient_ok(),
        }
    }

    fn refusal(&self, recipient: &str) -> Option<Reply> {
        let keys = &self.config.keys;
        if !keys.serves(recipient) {
            // Never an open relay: mail for other domains is not ours.
            return Some(replies::relay_access_denied(recipient));
        }
        if keys.keys_of(recipient).is_empty() {
            return Some(replies::no_such_mailbox(recipient));
        }
        None
    }

    /// SMTP end of data: seal to every recipient's keys, publish, then 250.
    async fn seal_one(&self, envelope: Envelope, wire: Vec<u8>) -> Reply {
        let Store::Spool(spool) = self.store else {
            return replies::no_spool();
        };
        match self
            .seal_publish(spool, envelope.sender, envelope.recipients, wire)
            .await
        {
            Ok(id) => replies::sealed_as(id),
            Err(reply) => reply,
        }
    }

    /// LMTP: one reply per recipient (RFC 2033 §4.2).
    async fn deliver_lmtp(&self, envelope: Envelope, wire: Vec<u8>) -> Vec<Reply> {
        let refusals: Vec<Option<Reply>> = envelope
            .recipients
            .iter()
            .map(|r| self.refusal(r))
            .collect();
        let accepted: Vec<String> = envelope
            .recipients
            .iter()
            .zip(&refusals)
            .filter(|(_, refusal)| refusal.is_none())
            .map(|(r, _)| r.clone())
            .collect();
        let mut results: HashMap<String, Reply> = HashMap::new();
        match self.store {
            Store::Spool(spool) if !accepted.is_empty() => {
                let reply = match self
                    .seal_publish(spool, envelope.sender.clone(), accepted.clone(), wire)
                    .await
                {
                    Ok(id) => replies::sealed_as(id),
                    Err(reply) => reply,
                };
                for r in accepted {
                    results.insert(r, reply.clone());
                }
            }
            Store::Spool(_) => {}
            Store::Maildirs(root) => {
                // Each mailbox its own file, sealed to its own keys, with
                // only its own address in the envelope (no Bcc leaks).
                for r in accepted {
                    let reply = match root.spool_for(&r).await {
                        Ok(spool) => match self
                            .seal_publish(
                                &spool,
                                envelope.sender.clone(),
                                vec![r.clone()],
                                wire.clone(),
                            )
                            .await
                        {
                            Ok(id) => replies::sealed_for(&r, id),
                            Err(reply) => reply,
                        },
                        Err(e) => {
                            log!("session={} store-error=\"{e}\" to=<{r}>", self.id);
                            replies::cannot_store()
                        }
                    };
                    results.insert(r, reply);
                }
            }
        }
        envelope
            .recipients
            .iter()
            .zip(refusals)
            .map(|(r, refusal)| {
                refusal
                    .or_else(|| results.get(r).cloned())
                    .unwrap_or_else(replies::no_result_for_recipient)
            })
            .collect()
    }

    /// Seals off the runtime threads, publishes, logs; the error is the
    /// reply to give (4xx: the client keeps the message and retries).
    async fn seal_publish(
        &self,
        spool: &FileSpool,
        sender: String,
        recipients: Vec<String>,
        wire: Vec<u8>,
    ) -> Result<SpoolId, Reply> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            log!(
                "session={} seal-error=\"{what}: {e}\" client={}",
                self.id,
                self.who
            );
            replies::cannot_store()
        };
        let keys = self
            .config
            .keys
            .keys_for(&recipients)
            .map_err(|e| fail("keys", &e))?;
        let nkeys = keys.len();
        let size = wire.len();
        let envelope = SealedEnvelope {
            mail_from: sender,
            rcpt_to: recipients,
        };
        let (envelope, sealed) = tokio::task::spawn_blocking(move || {
            let sealed = seal(&keys, &envelope, &wire);
            (envelope, sealed)
        })
        .await
        .map_err(|e| fail("task", &e))?;
        let sealed = sealed.map_err(|e| fail("seal", &e))?;
        let id = spool
            .publish(&sealed)
            .await
            .map_err(|e| fail("spool", &e))?;
        log!(
            "seal: session={} client={} from=<{}> nrcpt={} size={size} sealed={id} recipients={} keys={nkeys}",
            self.id,
            self.who,
            envelope.mail_from,
            envelope.rcpt_to.len(),
            envelope.rcpt_to.join(",")
        );
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_directory_names() {
        for (address, want) in [
            ("Alice@Example.org", Some("alice@example.org")),
            ("../etc@x", None),
            (".hidden@x", None),
            ("a/b@x", None),
            ("a\nb@x", None),
            ("", None),
        ] {
            assert_eq!(mailbox_dir_name(address).as_deref(), want, "{address:?}");
        }
    }
}
