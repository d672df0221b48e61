//! `blackpony fetch`, the home side of the sealed relay: one run connects
//! to the relay, opens an XPONY channel with both static keys checked,
//! pulls every sealed file with XFETCH (`proto-spec/fetch.md`), decrypts
//! each at home with the age identities, hands it to the local MTA (SMTP)
//! or writes it into a Maildir, and only then lets the relay delete it.
//!
//! The protocol logic is sans-IO ([`ClientSession`] for SMTP and XPONY,
//! [`FetchClient`] for XFETCH); this file moves bytes, keeps time and
//! touches the disk.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::journal::Journal;
use super::maildir::Maildir;
use super::seal::{Identities, OpenError, open};
use super::xfetch::{FetchClient, FetchError, FetchEvent};
use crate::log;
use crate::pony::keys::{PublicKey, fingerprint};
use crate::pony::negotiation::ServerHints;
use crate::pony::noise::Keypair;
use crate::pony::pins::{Pin, PinSource, PinStore};
use crate::smtp::client::{ClientSession, PonyOffer, SessionOutcome, StartTls, Step};
use crate::smtp::{ContentFacts, DotStuffer, EhloReply, Envelope, Reply, replies};
use crate::sysexits::Exit;
use crate::transport::drive::write_all;
use crate::transport::{ClientDriver, Stream};

/// Where fetched mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The local MTA's SMTP listener.
    Smtp(SocketAddr),
    /// An LMTP server on TCP (RFC 2033; e.g. Dovecot's): a reply per
    /// recipient after the message.
    Lmtp(SocketAddr),
    /// An LMTP server on a Unix socket.
    LmtpUnix(PathBuf),
    /// A Maildir.
    Maildir(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Smtp(addr) => write!(f, "smtp:{addr}"),
            Target::Lmtp(addr) => write!(f, "lmtp:{addr}"),
            Target::LmtpUnix(path) => write!(f, "lmtp:unix:{}", path.display()),
            Target::Maildir(path) => write!(f, "maildir:{}", path.display()),
        }
    }
}

/// What to do with a message the local MTA refuses permanently (§6 rule 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPermanentFailure {
    /// Leave it on the relay and say so at every run (default).
    Keep,
    /// Delete it from the relay once every recipient has a final answer.
    Delete,
}

/// Everything one run needs.
pub struct FetchSettings {
    /// The relay's host name, for the pin and the logs.
    pub relay_host: String,
    pub relay_port: u16,
    /// Our XPONY key, one of the relay's `--fetch-key`s.
    pub host_key: Keypair,
    /// The age identities that open the sealed files.
    pub identities: Identities,
    pub target: Target,
    /// The relay's XPONY key, when the operator gave it; else it is pinned
    /// on first use.
    pub relay_key: Option<PublicKey>,
    pub state_dir: PathBuf,
    pub on_permanent_failure: OnPermanentFailure,
    /// Our name in EHLO, to the relay and to the local MTA.
    pub helo_name: String,
    /// The largest sealed file taken (§9).
    pub max_size: u64,
    pub connect_timeout: Duration,
    /// Waiting for any one reply or octet.
    pub reply_timeout: Duration,
}

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Sealed files delivered and deleted from the relay.
    pub fetched: usize,
    /// Left on the relay for a temporary reason (a local 4xx, …).
    pub kept_temporary: usize,
    /// Left on the relay for a permanent reason (§6 rules 5 and 6).
    pub kept_permanent: usize,
    /// Deleted although refused permanently (`--on-permanent-failure delete`).
    pub dropped: usize,
    /// Why the run stopped early, if it did.
    pub failure: Option<RunFailure>,
}

/// Why a run stopped before the relay said EMPTY.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunFailure {
    #[error("{0}")]
    Temporary(String),
    /// The relay or our settings need an operator (our key not accepted,
    /// the relay does not serve fetch).
    #[error("{0}")]
    Config(String),
}

impl Report {
    /// The exit status (proto-spec/fetch.md §7.2): what needs an operator
    /// first, then what a later run may fix.
    pub fn exit(&self) -> Exit {
        match (&self.failure, self.kept_permanent, self.kept_temporary) {
            (Some(RunFailure::Config(_)), _, _) => Exit::Config,
            (_, p, _) if p > 0 => Exit::DataErr,
            (Some(RunFailure::Temporary(_)), _, _) => Exit::TempFail,
            (None, _, t) if t > 0 => Exit::TempFail,
            _ => Exit::Ok,
        }
    }
}

/// What becomes of one sealed file after its delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Delete,
    /// Every recipient was refused permanently and the policy is delete.
    Drop,
    KeepTemporary,
    KeepPermanent,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The pin name of the relay (xpony.md §8.1): the host, with `:port` when
/// it is not 25.
fn pin_name(host: &str, port: u16) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if port == 25 {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// One run (see the module docs). Never panics on what the network or the
/// disk gives; every problem ends up in the report and the log.
pub async fn run(settings: &FetchSettings) -> Report {
    let mut report = Report::default();
    let journal = match Journal::open(&settings.state_dir) {
        Ok(j) => j,
        Err(e) => {
            report.failure = Some(RunFailure::Temporary(e.to_string()));
            return report;
        }
    };
    let maildir = match &settings.target {
        Target::Maildir(root) => match Maildir::open(root, &settings.helo_name) {
            Ok(m) => Some(m),
            Err(e) => {
                report.failure = Some(RunFailure::Temporary(e.to_string()));
                return report;
            }
        },
        Target::Smtp(_) | Target::Lmtp(_) | Target::LmtpUnix(_) => None,
    };
    let relay = format!("{}:{}", settings.relay_host, settings.relay_port);
    let (mut stream, caps) = match open_relay(settings).await {
        Ok(opened) => opened,
        Err(failure) => {
            log!("fetch: relay={relay} status=failed ({failure})");
            report.failure = Some(failure);
            return report;
        }
    };
    let target = Target::clone(&settings.target);
    let local = Local {
        settings,
        journal: &journal,
        maildir: maildir.as_ref(),
    };
    if let Err(e) = pull(&mut stream, &caps, &local, &mut report).await {
        let failure = match &e {
            FetchError::NotOffered => {
                RunFailure::Config(format!("{relay} is not a fetch port: {e}"))
            }
            FetchError::KeyRefused(_) => RunFailure::Config(e.to_string()),
            _ => RunFailure::Temporary(e.to_string()),
        };
        log!("fetch: relay={relay} status=failed ({failure})");
        report.failure = Some(failure);
    }
    // CLOSE after QUIT (xpony.md §5.6); the relay's CLOSE is not waited for.
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.shutdown()).await;
    log!(
        "fetch: relay={relay} to={target} fetched={} kept={} kept-permanent={} dropped={} exit={}",
        report.fetched,
        report.kept_temporary,
        report.kept_permanent,
        report.dropped,
        report.exit().code()
    );
    report
}

/// Connects to the relay and opens the XPONY channel, checking its key
/// (proto-spec/fetch.md §3); returns the channel and the EHLO reply in it.
async fn open_relay(
    settings: &FetchSettings,
) -> Result<(Stream<TcpStream>, EhloReply), RunFailure> {
    let relay = format!("{}:{}", settings.relay_host, settings.relay_port);
    let temporary = |why: String| RunFailure::Temporary(format!("relay {relay}: {why}"));
    let connect = tokio::time::timeout(
        settings.connect_timeout,
        TcpStream::connect((settings.relay_host.as_str(), settings.relay_port)),
    )
    .await;
    let tcp = match connect {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(temporary(format!("connect: {e}"))),
        Err(_) => return Err(temporary("connect: timed out".into())),
    };
    let _ = tcp.set_nodelay(true);
    let pins = PinStore::new(&settings.state_dir.join("fetch"));
    let name = pin_name(&settings.relay_host, settings.relay_port);
    let mut seen: Option<(PublicKey, ServerHints, Option<Pin>)> = None;
    let mut judge = |key: &PublicKey, hints: &ServerHints| -> Result<(), String> {
        let pin = match &settings.relay_key {
            Some(expected) if expected == key => None,
            Some(expected) => {
                return Err(format!(
                    "relay {relay} presented key {}, expected the configured --relay-key {}",
                    fingerprint(key),
                    fingerprint(expected)
                ));
            }
            None => match pins.get(&name) {
                // Unreadable pins must not mean "first contact".
                Err(e) => return Err(format!("{e}; not trusting relay {relay}")),
                Ok(Some(pin)) if !pin.accepts(key) => {
                    return Err(format!(
                        "relay {relay} presented key {}, expected the pinned key {}: impostor, or a key change (remove {} or give --relay-key)",
                        fingerprint(key),
                        fingerprint(&pin.key),
                        settings.state_dir.join("fetch/pins").display()
                    ));
                }
                Ok(pin) => pin,
            },
        };
        seen = Some((*key, hints.clone(), pin));
        Ok(())
    };
    let session =
        ClientSession::opening(&settings.helo_name, StartTls::Never).with_pony(PonyOffer {
            key: settings.host_key.clone(),
            required: true,
        });
    let mut stream = Some(Stream::Plain(tcp));
    let mut session = session;
    drive(
        &mut stream,
        &mut session,
        settings.reply_timeout,
        &mut judge,
    )
    .await?;
    let stream = stream.ok_or_else(|| temporary("connection lost".into()))?;
    if !session.is_ready() || !stream.is_encrypted() {
        let why = match session.take_outcome() {
            Some(SessionOutcome::Failed(f)) => f.to_string(),
            _ => "session ended before the channel was open".into(),
        };
        log!("xpony: {why}");
        return Err(temporary(why));
    }
    let caps = session.capabilities().cloned().unwrap_or(EhloReply {
        greeting: String::new(),
        capabilities: Vec::new(),
    });
    // The EHLO reply came in the channel: the relay's first valid frame,
    // where a pin is committed (xpony.md §3.7).
    if settings.relay_key.is_none()
        && let Some((key, hints, pin)) = seen
    {
        commit_pin(&pins, &name, &key, &hints, pin.as_ref());
    }
    Ok((stream, caps))
}

/// First fetch: pin the relay's key for good; a key that moved to the
/// announced successor replaces the pin (proto-spec/fetch.md §3).
fn commit_pin(
    pins: &PinStore,
    name: &str,
    key: &PublicKey,
    hints: &ServerHints,
    old: Option<&Pin>,
) {
    if old.is_some_and(|p| p.key == *key && p.successor == hints.successor) {
        return;
    }
    let t = now();
    let pin = Pin {
        key: *key,
        first_seen: old.filter(|p| p.key == *key).map_or(t, |p| p.first_seen),
        last_seen: t,
        // 0: kept until an operator removes it, whatever max-age says.
        max_age: 0,
        successor: hints.successor.filter(|s| s != key),
        source: PinSource::Tofu,
    };
    match pins.put(name, &pin) {
        Ok(()) if old.is_none() => log!(
            "fetch: relay={name} key={} pinned (first fetch)",
            fingerprint(key)
        ),
        Ok(()) => log!("fetch: relay={name} key={} pin updated", fingerprint(key)),
        Err(e) => log!("warning: fetch: cannot pin the key of {name}: {e}"),
    }
}

/// Runs `session` until it is done or ready, switching to the XPONY
/// channel when it asks; `judge` decides on the server's key.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut Option<Stream<S>>,
    session: &mut ClientSession,
    timeout: Duration,
    judge: &mut dyn FnMut(&PublicKey, &ServerHints) -> Result<(), String>,
) -> Result<(), RunFailure> {
    let mut driver = ClientDriver::new(timeout);
    let lost = || RunFailure::Temporary("connection lost during XPONY".into());
    while let Some(step) = driver.next_step(stream, session).await {
        match step {
            Step::Continue | Step::Ready | Step::Done => return Ok(()),
            Step::CheckServerKey { key, hints } => match judge(&key, &hints) {
                Ok(()) => {
                    if session.xpony_accept() == Step::SwitchToPony {
                        driver
                            .switch_to_pony(stream, session)
                            .await
                            .ok_or_else(lost)?;
                    }
                }
                Err(why) => {
                    log!("xpony: {why}");
                    session.xpony_reject(why);
                }
            },
            Step::SwitchToPony => {
                driver
                    .switch_to_pony(stream, session)
                    .await
                    .ok_or_else(lost)?;
            }
            Step::StartTls => {
                return Err(RunFailure::Temporary("unexpected STARTTLS step".into()));
            }
        }
    }
    Ok(())
}

/// What a message's local delivery needs.
struct Local<'a> {
    settings: &'a FetchSettings,
    journal: &'a Journal,
    maildir: Option<&'a Maildir>,
}

/// The XFETCH loop: NEXT until EMPTY, DELETE after each safe delivery.
async fn pull(
    stream: &mut Stream<TcpStream>,
    caps: &EhloReply,
    local: &Local<'_>,
    report: &mut Report,
) -> Result<(), FetchError> {
    let timeout = local.settings.reply_timeout;
    let mut client = FetchClient::new(caps, local.settings.max_size)?;
    client.next();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !write_all(stream, &client.outgoing, timeout).await {
            return Err(FetchError::Protocol("connection lost while writing".into()));
        }
        client.outgoing.clear();
        let event = match client.poll() {
            Ok(Some(event)) => event,
            Ok(None) => {
                match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => client.receive(&buf[..n]),
                    Ok(Ok(_)) => {
                        return Err(FetchError::Protocol("the relay closed the session".into()));
                    }
                    Ok(Err(e)) => return Err(FetchError::Protocol(e.to_string())),
                    Err(_) => {
                        return Err(FetchError::Protocol(
                            "timed out waiting for the relay".into(),
                        ));
                    }
                }
                continue;
            }
            Err(e) => {
                // Still in step after a refusal: say goodbye properly.
                if matches!(e, FetchError::Refused { .. } | FetchError::KeyRefused(_)) {
                    let _ = write_all(stream, b"QUIT\r\n", Duration::from_secs(5)).await;
                }
                return Err(e);
            }
        };
        match event {
            FetchEvent::Message { id, sealed } => match take(local, &id, &sealed).await {
                Verdict::Delete => {
                    report.fetched += 1;
                    client.delete(&id);
                    client.next();
                }
                Verdict::Drop => {
                    report.dropped += 1;
                    client.delete(&id);
                    client.next();
                }
                Verdict::KeepTemporary => {
                    report.kept_temporary += 1;
                    client.next();
                }
                Verdict::KeepPermanent => {
                    report.kept_permanent += 1;
                    client.next();
                }
            },
            FetchEvent::Deleted { id } => {
                log!("fetch: id={id} status=deleted-on-relay");
                if let Err(e) = local.journal.forget(&id) {
                    log!("warning: fetch: {e}");
                }
            }
            FetchEvent::Empty => client.quit(),
            FetchEvent::Bye => return Ok(()),
        }
    }
}

/// Decrypts, reads the envelope, delivers to the recipients not yet
/// delivered, records them, and says what the relay should do.
async fn take(local: &Local<'_>, id: &str, sealed: &[u8]) -> Verdict {
    let (envelope, message) = match open(&local.settings.identities, sealed) {
        Ok(opened) => opened,
        Err(OpenError::Format(e)) => {
            log!("fetch: id={id} status=kept-permanent (not a sealed message: {e})");
            return Verdict::KeepPermanent;
        }
        Err(why) => {
            log!(
                "fetch: id={id} size={} status=kept-permanent (cannot decrypt: {why})",
                sealed.len()
            );
            return Verdict::KeepPermanent;
        }
    };
    let message = message.as_slice();
    let done = match local.journal.delivered(id) {
        Ok(d) => d,
        Err(e) => {
            log!("fetch: id={id} status=kept ({e})");
            return Verdict::KeepTemporary;
        }
    };
    let remaining: Vec<String> = envelope
        .rcpt_to
        .iter()
        .filter(|r| !done.contains(*r))
        .cloned()
        .collect();
    if remaining.is_empty() {
        log!("fetch: id={id} status=already-delivered (deleting on the relay)");
        return Verdict::Delete;
    }
    let results = match (&local.settings.target, local.maildir) {
        (_, Some(maildir)) => {
            deliver_maildir(maildir, &envelope.mail_from, message, &remaining).await
        }
        (target @ (Target::Smtp(_) | Target::Lmtp(_) | Target::LmtpUnix(_)), None) => {
            deliver_mta(
                local.settings,
                target,
                &envelope.mail_from,
                message,
                &remaining,
            )
            .await
        }
        (Target::Maildir(_), None) => remaining
            .iter()
            .map(|r| (r.clone(), replies::maildir_not_open()))
            .collect(),
    };
    let mut delivered = done;
    let (mut temporary, mut permanent) = (0, 0);
    for (rcpt, reply) in &results {
        let status = if reply.is_success() {
            delivered.insert(rcpt.clone());
            "delivered"
        } else if reply.is_permanent() {
            permanent += 1;
            "refused"
        } else {
            temporary += 1;
            "deferred"
        };
        log!(
            "fetch: id={id} from=<{}> to=<{rcpt}> target={} status={status} ({reply})",
            envelope.mail_from,
            local.settings.target
        );
    }
    let newly = results.iter().any(|(_, r)| r.is_success());
    if newly && let Err(e) = local.journal.record(id, &delivered) {
        // The mail is safe at home; only a duplicate is at stake.
        log!("warning: fetch: {e}");
    }
    if temporary > 0 {
        log!("fetch: id={id} status=kept (temporary local failure; next run retries)");
        Verdict::KeepTemporary
    } else if permanent > 0 {
        match local.settings.on_permanent_failure {
            OnPermanentFailure::Keep => {
                log!(
                    "fetch: id={id} status=kept-permanent ({permanent} recipient(s) refused by the local MTA; fix it, or set on-permanent-failure = delete)"
                );
                Verdict::KeepPermanent
            }
            OnPermanentFailure::Delete => {
                log!(
                    "warning: fetch: id={id} status=dropped ({permanent} recipient(s) refused permanently by the local MTA)"
                );
                Verdict::Drop
            }
        }
    } else {
        Verdict::Delete
    }
}

/// One Maildir delivery serves every recipient.
async fn deliver_maildir(
    maildir: &Maildir,
    sender: &str,
    message: &[u8],
    recipients: &[String],
) -> Vec<(String, Reply)> {
    let (md, sender, message) = (maildir.clone(), sender.to_string(), message.to_vec());
    let written = tokio::task::spawn_blocking(move || md.deliver(&sender, &message)).await;
    let reply = match written {
        Ok(Ok(path)) => replies::maildir_delivered(
            &path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        ),
        Ok(Err(e)) => replies::local_store_failed(e),
        Err(e) => replies::local_store_failed(e),
    };
    recipients
        .iter()
        .map(|r| (r.clone(), reply.clone()))
        .collect()
}

/// One SMTP or LMTP transaction with the local MTA; a reply per recipient
/// (LMTP: each recipient's own, RFC 2033 §4.2). A session that breaks or
/// ends uncertain is temporary for everyone without a reply (the next run
/// tries again).
async fn deliver_mta(
    settings: &FetchSettings,
    target: &Target,
    sender: &str,
    message: &[u8],
    recipients: &[String],
) -> Vec<(String, Reply)> {
    let all = |reply: Reply| -> Vec<(String, Reply)> {
        recipients
            .iter()
            .map(|r| (r.clone(), reply.clone()))
            .collect()
    };
    let mut wire = Vec::with_capacity(message.len() + message.len() / 50 + 8);
    let mut stuffer = DotStuffer::new();
    stuffer.push(message, &mut wire);
    stuffer.finish(&mut wire);
    // The size the server sees, without the terminating ".\r\n" (RFC 1870).
    let facts = ContentFacts {
        size: wire.len().saturating_sub(3) as u64,
        ..ContentFacts::of(&wire)
    };
    let envelope = Envelope {
        sender: sender.to_string(),
        recipients: recipients.to_vec(),
    };
    let session = ClientSession::new(&settings.helo_name, StartTls::Never, envelope, facts, wire);
    let within = settings.connect_timeout;
    let timed_out = || replies::local_connect_failed(target, "timed out");
    let refused = |e: std::io::Error| replies::local_connect_failed(target, e);
    let outcome = match target {
        Target::Smtp(addr) | Target::Lmtp(addr) => {
            match tokio::time::timeout(within, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    let session = match target {
                        Target::Lmtp(_) => session.lmtp(),
                        _ => session,
                    };
                    exchange(settings, tcp, session).await
                }
                Ok(Err(e)) => return all(refused(e)),
                Err(_) => return all(timed_out()),
            }
        }
        Target::LmtpUnix(path) => {
            match tokio::time::timeout(within, tokio::net::UnixStream::connect(path)).await {
                Ok(Ok(unix)) => exchange(settings, unix, session.lmtp()).await,
                Ok(Err(e)) => return all(refused(e)),
                Err(_) => return all(timed_out()),
            }
        }
        Target::Maildir(_) => return all(replies::not_an_mta()),
    };
    match outcome {
        Ok(Some(SessionOutcome::Replied(results))) => results
            .into_iter()
            .map(|r| (r.recipient, r.reply))
            .collect(),
        Ok(Some(SessionOutcome::Failed(f))) => all(replies::local_delivery_failed(f)),
        // The message may have arrived (RFC 1047): the same reply as for
        // an LMTP session lost between its per-recipient replies.
        Ok(Some(SessionOutcome::Uncertain { .. }) | None) => all(replies::lost_after_message()),
        Err(e) => all(replies::local_delivery_failed(e)),
    }
}

/// Runs `session` over `io` to its end; its outcome.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    settings: &FetchSettings,
    io: S,
    mut session: ClientSession,
) -> Result<Option<SessionOutcome>, RunFailure> {
    let mut stream = Some(Stream::Plain(io));
    let mut no_pony = |_: &PublicKey, _: &ServerHints| Err("not expected".to_string());
    drive(
        &mut stream,
        &mut session,
        settings.reply_timeout,
        &mut no_pony,
    )
    .await?;
    if let Some(s) = stream.as_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(5), s.shutdown()).await;
    }
    Ok(session.take_outcome())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let mut r = Report::default();
        assert_eq!(r.exit(), Exit::Ok);
        r.kept_temporary = 1;
        assert_eq!(r.exit(), Exit::TempFail);
        r.kept_permanent = 1;
        assert_eq!(r.exit(), Exit::DataErr);
        r.failure = Some(RunFailure::Config("key".into()));
        assert_eq!(r.exit(), Exit::Config);
        let r = Report {
            failure: Some(RunFailure::Temporary("x".into())),
            ..Report::default()
        };
        assert_eq!(r.exit(), Exit::TempFail);
    }

    #[test]
    fn pin_names() {
        assert_eq!(pin_name("Relay.Example.org.", 25), "relay.example.org");
        assert_eq!(
            pin_name("relay.example.org", 2525),
            "relay.example.org:2525"
        );
    }
}
