//! The relay's side of XFETCH (`proto-spec/fetch.md`): what `seal` does
//! with an XFETCH command line. The decision is the sans-IO
//! [`xfetch::check`]; this file only reads and removes spool files and
//! writes the reply.
//!
//! A session calls [`FetchServer::serve`] for every command line whose verb
//! is XFETCH ([`xfetch::is_command`]) and writes out what it appended,
//! in order with its other replies. [`FetchSession`] is such a session
//! that serves nothing else (XPONY and XFETCH, no mail), with its I/O loop
//! ([`serve_connection`]) on the listener harness ([`run`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::xfetch::{self, FetchKeys, Offered, Protection, Request, SessionFacts};
use crate::log;
use crate::pony::channel::Channel;
use crate::pony::keys::{PublicKey, fingerprint};
use crate::pony::negotiation::{self, ServerIdentity};
use crate::pony::noise::{PROTOCOL_NAME, ResponderAwaitingFinish, Transport};
use crate::server::{Activity, ClientClock, Control, Listen, Order, Timeouts, Wrote, write_within};
use crate::smtp::command::{NextLine, next_line};
use crate::smtp::xpony_server::{self, Finish};
use crate::smtp::{Command, Reply, Verb, replies};
use crate::state::{Spool, SpoolId, StoreError};
use crate::transport::{PonyStream, Stream};

/// One connection's XFETCH state: the relay's keys and the ids offered so
/// far (§5 "Order").
#[derive(Debug)]
pub struct FetchServer {
    keys: FetchKeys,
    offered: Offered,
}

impl FetchServer {
    pub fn new(keys: FetchKeys) -> Self {
        FetchServer {
            keys,
            offered: Offered::default(),
        }
    }

    /// Whether the EHLO reply of a session so protected lists `XFETCH`.
    pub fn listed_in_ehlo(&self, facts: &SessionFacts) -> bool {
        xfetch::listed_in_ehlo(&self.keys, facts.protection)
    }

    /// Serves one XFETCH command `line` (without its line ending), from
    /// `client` (for the log), appending the reply and any sealed octets to
    /// `out`. Nothing is read from the spool before the key check passed.
    pub async fn serve<S: Spool>(
        &mut self,
        spool: &S,
        facts: &SessionFacts,
        line: &[u8],
        client: &str,
        out: &mut Vec<u8>,
    ) {
        let request = match xfetch::check(&self.keys, facts, line) {
            Ok(request) => request,
            Err(refusal) => {
                if let Some(key) = refusal.unauthorized {
                    log!(
                        "refused=fetch-key key={} client={client} ({})",
                        fingerprint(&key),
                        refusal.reply
                    );
                }
                refusal.reply.write_to(out);
                return;
            }
        };
        let peer = match facts.protection {
            Protection::Xpony(key) => fingerprint(&key),
            _ => String::new(),
        };
        match request {
            Request::Next => self.next(spool, &peer, client, out).await,
            Request::Delete(id) => match id.parse::<SpoolId>() {
                Ok(spool_id) => match spool.remove(&spool_id).await {
                    Ok(()) => {
                        log!("fetch deleted id={id} key={peer} client={client}");
                        replies::fetch_deleted(&id).write_to(out);
                    }
                    Err(e) => {
                        log!("warning: fetch: delete id={id}: {e}");
                        replies::spool_unavailable().write_to(out);
                    }
                },
                // A spool id the spool itself would not name: none such
                // exists, so there is nothing to delete.
                Err(_) => replies::fetch_deleted(&id).write_to(out),
            },
        }
    }

    /// `XFETCH NEXT`: the oldest file not yet offered; one that vanished
    /// since the listing (another session deleted it) is skipped.
    async fn next<S: Spool>(&mut self, spool: &S, peer: &str, client: &str, out: &mut Vec<u8>) {
        let listing: Vec<String> = match spool.list().await {
            Ok(ids) => ids
                .iter()
                .map(SpoolId::as_str)
                .filter(|id| xfetch::valid_id(id))
                .map(str::to_string)
                .collect(),
            Err(e) => {
                log!("warning: fetch: list: {e}");
                replies::spool_unavailable().write_to(out);
                return;
            }
        };
        while let Some(id) = self.offered.pick(&listing) {
            let Ok(spool_id) = id.parse::<SpoolId>() else {
                continue;
            };
            match spool.read(&spool_id).await {
                Ok(sealed) => {
                    log!(
                        "fetch offered id={id} size={} key={peer} client={client}",
                        sealed.len()
                    );
                    xfetch::write_message(&id, &sealed, out);
                    return;
                }
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => {
                    log!("warning: fetch: read id={id}: {e}");
                    replies::spool_unavailable().write_to(out);
                    return;
                }
            }
        }
        replies::fetch_empty().write_to(out);
    }
}

/// Settings of a listener that serves fetch (see [`FetchSession`]).
#[derive(Debug)]
pub struct ListenerConfig {
    /// Our host name, in the greeting and the EHLO reply.
    pub hostname: String,
    /// The relay's XPONY key and hints (the home side pins this key).
    pub identity: Arc<ServerIdentity>,
    pub keys: FetchKeys,
    /// The client's time for each command line (shorter under stress).
    pub timeouts: Timeouts,
}

/// What the I/O loop must do for a [`FetchSession`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionAction {
    /// Serve this XFETCH command line with [`FetchServer::serve`] (its
    /// output goes into [`FetchSession::out`] in turn), then poll again.
    Fetch { line: Vec<u8>, facts: SessionFacts },
    /// Write out what is buffered, switch the connection to the channel
    /// from [`FetchSession::take_pony`], then call
    /// [`FetchSession::pony_established`].
    SwitchToPony,
    /// Write out what is buffered and close.
    Close,
}

#[derive(Debug)]
enum Phase {
    Commands,
    /// The 334 went out; the next line is message 3 or `*`.
    AwaitingFinish(ResponderAwaitingFinish),
    /// Message 3 was good; the I/O loop switches.
    Switch,
    Closed,
}

/// A sans-IO SMTP session that serves XPONY and XFETCH and nothing else
/// (no mail transactions): the fetch half of the relay, on a port of its
/// own (`blackpony seal --fetch-listen`). The XPONY negotiation is the
/// shared [`crate::smtp::xpony_server`]; XFETCH is [`xfetch::check`] via
/// [`FetchServer`].
pub struct FetchSession {
    config: Arc<ListenerConfig>,
    phase: Phase,
    inbuf: Vec<u8>,
    /// Bytes for the client; the I/O loop writes and clears them.
    pub out: Vec<u8>,
    greeting: Vec<u8>,
    ehlo_line: Vec<u8>,
    ehlo_reply: Vec<u8>,
    /// EHLO succeeded since the session (or the channel) began.
    ehlo: bool,
    protection: Protection,
    pony_ready: Option<(Transport, Vec<u8>)>,
    /// Skip the rest of an over-long line.
    skipping: bool,
    /// Whether the line being handled ended in CR LF.
    line_crlf: bool,
}

impl FetchSession {
    /// A new session; the greeting is in [`FetchSession::out`].
    pub fn new(config: Arc<ListenerConfig>) -> Self {
        let greeting = replies::greeting(&config.hostname, "ESMTP").to_bytes();
        FetchSession {
            config,
            phase: Phase::Commands,
            inbuf: Vec::new(),
            out: greeting.clone(),
            greeting,
            ehlo_line: Vec::new(),
            ehlo_reply: Vec::new(),
            ehlo: false,
            protection: Protection::Plain,
            pony_ready: None,
            skipping: false,
            line_crlf: true,
        }
    }

    /// Bytes from the client.
    pub fn input(&mut self, data: &[u8]) {
        self.inbuf.extend_from_slice(data);
    }

    /// The channel after [`SessionAction::SwitchToPony`], with the bytes
    /// that came behind message 3 (the first frames, xpony.md §3.6 rule 3).
    pub fn take_pony(&mut self) -> Option<(Transport, Vec<u8>)> {
        self.pony_ready.take()
    }

    /// The connection runs over the channel: SMTP starts over (xpony.md §6).
    pub fn pony_established(&mut self, peer: PublicKey) {
        if matches!(self.phase, Phase::Switch) {
            self.phase = Phase::Commands;
            self.protection = Protection::Xpony(peer);
            self.ehlo = false;
        }
    }

    fn reply(&mut self, reply: Reply) {
        reply.write_to(&mut self.out);
    }

    fn close(&mut self) -> Option<SessionAction> {
        self.phase = Phase::Closed;
        Some(SessionAction::Close)
    }

    /// Processes buffered lines until the I/O loop has to act, or more
    /// input is needed (`None`).
    pub fn poll(&mut self) -> Option<SessionAction> {
        loop {
            match self.phase {
                Phase::Closed => return Some(SessionAction::Close),
                Phase::Switch => return Some(SessionAction::SwitchToPony),
                _ => {}
            }
            let (line_len, consumed) = match next_line(&self.inbuf) {
                NextLine::Incomplete => return None,
                NextLine::TooLong { consumed } => {
                    self.inbuf.drain(..consumed);
                    if !self.skipping {
                        self.skipping = true;
                        if matches!(self.phase, Phase::AwaitingFinish(_)) {
                            // R16.
                            self.reply(replies::xpony_line_too_long());
                            return self.close();
                        }
                        self.reply(replies::xpony_line_too_long());
                    }
                    continue;
                }
                NextLine::Line { line_len, consumed } => (line_len, consumed),
            };
            let line: Vec<u8> = self.inbuf[..line_len].to_vec();
            // XPONY's lines end in CR LF (proto-spec xpony.md §3.1).
            self.line_crlf = consumed == line_len + 2;
            self.inbuf.drain(..consumed);
            if std::mem::take(&mut self.skipping) {
                continue;
            }
            if let Phase::AwaitingFinish(_) = self.phase {
                let Phase::AwaitingFinish(state) =
                    std::mem::replace(&mut self.phase, Phase::Commands)
                else {
                    continue;
                };
                match xpony_server::finish(state, &line, self.line_crlf) {
                    Finish::Aborted(reply) => reply.write_to(&mut self.out),
                    Finish::Established(transport) => {
                        self.pony_ready = Some((transport, std::mem::take(&mut self.inbuf)));
                        self.phase = Phase::Switch;
                    }
                    Finish::Failed { reply, error } => {
                        log!("xpony-error=\"{error}\" stage=message 3");
                        reply.write_to(&mut self.out);
                        return self.close();
                    }
                }
                continue;
            }
            if let Some(action) = self.command(&line) {
                return Some(action);
            }
        }
    }

    fn command(&mut self, line: &[u8]) -> Option<SessionAction> {
        if xfetch::is_command(line) {
            let facts = SessionFacts {
                protection: self.protection,
                hello: self.ehlo,
                in_transaction: false,
            };
            return Some(SessionAction::Fetch {
                line: line.to_vec(),
                facts,
            });
        }
        let Ok(command) = Command::parse(line) else {
            self.reply(replies::bad_syntax());
            return None;
        };
        let encrypted = !matches!(self.protection, Protection::Plain);
        match command.verb {
            Verb::Ehlo | Verb::Helo if command.args.is_empty() => {
                self.reply(replies::syntax("EHLO hostname"));
            }
            Verb::Ehlo => {
                let mut lines = vec![
                    self.config.hostname.clone(),
                    "PIPELINING".to_string(),
                    "ENHANCEDSTATUSCODES".to_string(),
                ];
                if !encrypted {
                    lines.push(format!("{} {}", negotiation::KEYWORD, PROTOCOL_NAME));
                }
                if xfetch::listed_in_ehlo(&self.config.keys, self.protection) {
                    lines.push(xfetch::KEYWORD.to_string());
                }
                let reply = Reply::multiline(250, lines).to_bytes();
                self.out.extend_from_slice(&reply);
                self.ehlo_line = line.to_vec();
                self.ehlo_reply = reply;
                self.ehlo = true;
            }
            Verb::Helo => {
                self.reply(replies::helo(&self.config.hostname));
                self.ehlo = false;
            }
            Verb::Xpony if encrypted => self.reply(replies::already_encrypted()),
            Verb::Xpony if !self.ehlo => self.reply(replies::send_ehlo_first()),
            Verb::Xpony => return self.xpony(line),
            Verb::Noop => self.reply(replies::ok()),
            Verb::Rset => self.reply(replies::ok()),
            Verb::Quit => {
                self.reply(replies::bye());
                return self.close();
            }
            Verb::Mail | Verb::Rcpt | Verb::Data | Verb::Bdat => {
                self.reply(replies::fetch_only());
            }
            _ => self.reply(replies::command_not_recognized()),
        }
        None
    }

    /// XPONY with message 1 (xpony.md §3.2, checks in the order of §3.3).
    fn xpony(&mut self, line: &[u8]) -> Option<SessionAction> {
        let message_1 = match xpony_server::parse_command(line, self.line_crlf) {
            Ok(m) => m,
            Err(reply) => {
                reply.write_to(&mut self.out);
                return None;
            }
        };
        let prologue = negotiation::prologue(&self.greeting, &self.ehlo_line, &self.ehlo_reply);
        match xpony_server::respond(&self.config.identity, &prologue, &message_1, None) {
            Err(failed) => {
                log!("xpony-error=\"{}\" stage=message 1", failed.error);
                failed.reply.write_to(&mut self.out);
                None
            }
            // R11: plaintext behind the XPONY line.
            Ok(_) if !self.inbuf.is_empty() => {
                log!(
                    "refused=xpony-injection bytes={} (plaintext pipelined after XPONY)",
                    self.inbuf.len()
                );
                self.reply(replies::pipelined_after("XPONY"));
                self.close()
            }
            Ok((state, line)) => {
                self.out.extend_from_slice(&line);
                self.phase = Phase::AwaitingFinish(state);
                None
            }
        }
    }
}

/// Serves one connection of a fetch listener, from accept to close, under
/// the listener harness's deadlines and orders (as every server role).
pub async fn serve_connection<S, IO>(
    io: IO,
    client: Option<SocketAddr>,
    config: Arc<ListenerConfig>,
    spool: Arc<S>,
    mut control: Control,
) where
    S: Spool,
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let who = client.map_or_else(|| "local".to_string(), crate::server::display_client);
    log!("fetch: connect client={who}");
    let mut session = FetchSession::new(config.clone());
    let mut fetch = FetchServer::new(config.keys.clone());
    let mut stream = Some(Stream::Plain(io));
    let mut buf = vec![0u8; 16 * 1024];
    let timeouts = config.timeouts;
    // One deadline per command line, from the last reply; XPONY's message
    // 3 has the same time from the 334 on. Fetch has no message phase.
    let mut clock = ClientClock::new(Instant::now());
    let why = loop {
        let Some(s) = stream.as_mut() else {
            break "lost";
        };
        let action = session.poll();
        if let Some(SessionAction::Fetch { line, facts }) = &action {
            control.set_activity(Activity::Busy);
            fetch
                .serve(spool.as_ref(), facts, line, &who, &mut session.out)
                .await;
        }
        if !session.out.is_empty() {
            let now = Instant::now();
            clock.next_line(now);
            control.answered();
            let deadline = now + timeouts.line(control.stressed());
            let wrote = write_within(s, &session.out, deadline, &mut control).await;
            session.out.clear();
            match wrote {
                Wrote::Done => {}
                Wrote::Failed => break "write-failed",
                Wrote::Late => break "write-timeout",
                // Sealed octets may be half written: no reply after them.
                Wrote::Told(_) => break "shutdown",
            }
        }
        match action {
            Some(SessionAction::Fetch { .. }) => continue,
            Some(SessionAction::Close) => break "closed",
            Some(SessionAction::SwitchToPony) => {
                let Some((transport, already)) = session.take_pony() else {
                    break "lost";
                };
                let peer = transport.remote_static();
                let Some(Ok(plain)) = stream.take().map(Stream::into_plain) else {
                    break "lost";
                };
                stream = Some(Stream::Pony(Box::new(PonyStream::new(
                    plain,
                    Channel::new(transport),
                    already,
                ))));
                session.pony_established(peer);
                log!("fetch: client={who} xpony key={}", fingerprint(&peer));
                continue;
            }
            None => {}
        }
        control.set_activity(Activity::Client);
        let deadline = clock.deadline(&timeouts, control.stressed());
        let read = tokio::select! {
            read = s.read(&mut buf) => Ok(read),
            () = tokio::time::sleep_until(deadline.into()) => Err(None),
            order = control.order() => match order {
                Order::Recheck => continue,
                order => Err(Some(order)),
            },
        };
        let (reply, why) = match read {
            Ok(Ok(n)) if n > 0 => {
                control.received(n);
                session.input(&buf[..n]);
                continue;
            }
            Ok(Ok(_)) => break "client-closed",
            Ok(Err(e)) => {
                let e = crate::transport::log_words::error_words(&e);
                log!("fetch: client={who} client-error=\"{e}\"");
                break "client-error";
            }
            Err(None) => {
                control.timed_out();
                (replies::timeout(&config.hostname), "timeout")
            }
            Err(Some(Order::Evict { .. })) => (replies::evicted(&config.hostname), "evicted"),
            Err(Some(_)) => (replies::shutting_down(&config.hostname), "shutdown"),
        };
        session.reply(reply);
        let _ = tokio::time::timeout(CLOSE_WRITE, async {
            let _ = s.write_all(&session.out).await;
            let _ = s.flush().await;
        })
        .await;
        break why;
    };
    if let Some(mut s) = stream {
        let _ = tokio::time::timeout(CLOSE_WRITE, s.shutdown()).await;
    }
    log!("fetch: disconnect client={who} end={why}");
}

/// How long a last reply and the close may take.
const CLOSE_WRITE: Duration = Duration::from_secs(5);

/// Serves fetch connections on `listener` with the listener harness
/// (limits, eviction, stress, the drain) until `shutdown` completes.
pub async fn run<L, S>(
    listener: L,
    settings: crate::server::Settings,
    config: Arc<ListenerConfig>,
    spool: Arc<S>,
    shutdown: impl Future<Output = ()>,
) where
    L: Listen,
    L::Conn: AsyncRead + AsyncWrite + Unpin + Send,
    S: Spool + 'static,
{
    crate::server::run(listener, settings, shutdown, move |io, client, control| {
        serve_connection(io, client, Arc::clone(&config), Arc::clone(&spool), control)
    })
    .await;
}
