//! XFETCH, the command set by which a home machine pulls sealed files from
//! a blackpony relay inside an authenticated XPONY channel
//! (`proto-spec/fetch.md`), sans-IO: the wire grammar, the relay's decision
//! on each command ([`check`], [`Offered`]) and the home side's machine
//! ([`FetchClient`]).
//!
//! Neither half touches a socket or the spool: the relay's I/O is in
//! [`super::fetch_server`], the home side's in [`super::fetch`].

use std::collections::{HashSet, VecDeque};

use crate::pony::keys::{PublicKey, fingerprint};
use crate::smtp::{EhloReply, Reply, ReplyParser, replies};
use crate::state::SpoolId;

/// The EHLO keyword and the verb (proto-spec/fetch.md §4).
pub const KEYWORD: &str = "XFETCH";

/// The longest spool id (§4).
pub const MAX_ID: usize = crate::state::spool::MAX_ID_LEN;

/// The port of the relay's fetch listener unless configured otherwise
/// (`seal --fetch-listen`, `fetch --from HOST[:PORT]`). Not 25: the fetch
/// listener serves no mail, and residential lines often block outgoing 25.
pub const DEFAULT_PORT: u16 = 2525;

/// The largest sealed file the home side takes by default (§9): bigger
/// ones stay on the relay with a log line.
pub const DEFAULT_MAX_SIZE: u64 = 256 * 1024 * 1024;

/// Whether `id` is a spool id (§4): 1 to 128 octets of letters, digits,
/// `-`, `_` and `.`, beginning with a letter or digit, without `..`; so it
/// can name a file in one directory and never leave it. The spool's own
/// rule, so that every file it lists can be offered and deleted.
pub fn valid_id(id: &str) -> bool {
    SpoolId::is_valid(id)
}

/// Whether a command line (without its line ending) is an XFETCH command,
/// for a session that dispatches on the verb.
pub fn is_command(line: &[u8]) -> bool {
    let verb = line
        .split(|&b| b == b' ' || b == b'\t')
        .next()
        .unwrap_or_default();
    verb.eq_ignore_ascii_case(KEYWORD.as_bytes())
}

/// A command the relay serves (§4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `XFETCH NEXT`: the oldest sealed file not yet offered in this session.
    Next,
    /// `XFETCH DELETE id`: remove it (idempotent).
    Delete(String),
}

impl Request {
    /// The command line, CRLF included.
    pub fn to_line(&self) -> String {
        match self {
            Request::Next => format!("{KEYWORD} NEXT\r\n"),
            Request::Delete(id) => format!("{KEYWORD} DELETE {id}\r\n"),
        }
    }
}

/// Parses a command line without its line ending (§4): exactly one SP
/// between the words, verb and subcommand in any case, the id as written.
pub fn parse(line: &[u8]) -> Option<Request> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split(' ');
    if !words.next()?.eq_ignore_ascii_case(KEYWORD) {
        return None;
    }
    let sub = words.next()?;
    let request = if sub.eq_ignore_ascii_case("NEXT") {
        Request::Next
    } else if sub.eq_ignore_ascii_case("DELETE") {
        let id = words.next()?;
        if !valid_id(id) {
            return None;
        }
        Request::Delete(id.to_string())
    } else {
        return None;
    };
    words.next().is_none().then_some(request)
}

/// The home keys the relay serves (`--fetch-key`, repeatable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchKeys(Vec<PublicKey>);

impl FetchKeys {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        FetchKeys(keys)
    }

    /// No key: the relay does not serve XFETCH at all (F1).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `key` is one of them. Every key is compared in full, so the
    /// time taken does not tell how much of a guess was right.
    pub fn authorizes(&self, key: &PublicKey) -> bool {
        self.0.iter().fold(false, |found, k| {
            let diff = k.iter().zip(key).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            found | (diff == 0)
        })
    }
}

/// How the session that received the command is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    Plain,
    Tls,
    /// The XPONY channel, with the client's static key from message 3.
    Xpony(PublicKey),
}

/// What the relay's SMTP session knows when an XFETCH command arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionFacts {
    pub protection: Protection,
    /// EHLO (or HELO) succeeded since the session (or the channel) began.
    pub hello: bool,
    /// A mail transaction is open (MAIL accepted, not yet ended).
    pub in_transaction: bool,
}

/// A refused command: the reply, and for a key that is not a fetch key
/// the key, which the relay logs (§3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reply: Reply,
    pub unauthorized: Option<PublicKey>,
}

fn refuse(reply: Reply) -> Refusal {
    Refusal {
        reply,
        unauthorized: None,
    }
}

/// Whether the EHLO reply of a session should list `XFETCH` (§4): only
/// inside the channel, and only when the relay serves fetch at all.
pub fn listed_in_ehlo(keys: &FetchKeys, protection: Protection) -> bool {
    !keys.is_empty() && matches!(protection, Protection::Xpony(_))
}

/// The relay's decision on one XFETCH command line (without its line
/// ending), in the order of proto-spec/fetch.md §5: F1 to F6 refuse; a
/// request passes only for a fetch key in the channel, so no spool data is
/// touched before that.
pub fn check(keys: &FetchKeys, facts: &SessionFacts, line: &[u8]) -> Result<Request, Refusal> {
    if keys.is_empty() {
        return Err(refuse(replies::command_not_implemented()));
    }
    let Protection::Xpony(peer) = facts.protection else {
        return Err(refuse(replies::fetch_needs_xpony()));
    };
    if !facts.hello {
        return Err(refuse(replies::send_ehlo_first()));
    }
    if !keys.authorizes(&peer) {
        return Err(Refusal {
            reply: replies::fetch_key_not_authorized(&fingerprint(&peer)),
            unauthorized: Some(peer),
        });
    }
    if facts.in_transaction {
        return Err(refuse(replies::not_in_transaction()));
    }
    parse(line).ok_or_else(|| refuse(replies::syntax("XFETCH NEXT / XFETCH DELETE spool-id")))
}

/// F8: the reply line and the sealed file's octets behind it.
pub fn write_message(id: &str, sealed: &[u8], out: &mut Vec<u8>) {
    replies::fetch_message(id, sealed.len()).write_to(out);
    out.extend_from_slice(sealed);
}

/// The ids one session has offered (§5 "Order"): `NEXT` gives the oldest
/// listed id not among them.
#[derive(Debug, Default)]
pub struct Offered(HashSet<String>);

impl Offered {
    /// The next id to offer from `listing` (oldest first), now counted as
    /// offered; `None` when every one has been.
    pub fn pick(&mut self, listing: &[String]) -> Option<String> {
        let id = listing.iter().find(|id| !self.0.contains(*id))?.clone();
        self.0.insert(id.clone());
        Some(id)
    }
}

/// Why a fetch session failed, on the home side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Most often fetch pointed at the relay's MX port (25), which serves
    /// mail only; the words name the fix.
    #[error(
        "it does not offer XFETCH in the XPONY channel. blackpony seal serves fetch on a port \
         of its own, set by seal --fetch-listen (default 2525), never on its MX port 25: run \
         fetch --from RELAY:2525 (or the --fetch-listen port; open it in the relay's firewall \
         for your home address), and give the relay --fetch-key with this machine's key"
    )]
    NotOffered,
    #[error("the relay refused our key: {0} (add our key to the relay's --fetch-key)")]
    KeyRefused(Reply),
    #[error("the relay answered XFETCH {command} with {reply}")]
    Refused { command: &'static str, reply: Reply },
    #[error("sealed file {id} has {size} octets, over the limit of {limit}")]
    TooBig { id: String, size: u64, limit: u64 },
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl FetchError {
    /// Whether a later run may succeed without anyone changing anything.
    pub fn is_temporary(&self) -> bool {
        match self {
            FetchError::Refused { reply, .. } => reply.is_transient(),
            FetchError::TooBig { .. } | FetchError::Protocol(_) => true,
            FetchError::NotOffered | FetchError::KeyRefused(_) => false,
        }
    }
}

/// What the relay said, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEvent {
    /// F8: one sealed file.
    Message { id: String, sealed: Vec<u8> },
    /// F9: nothing more to offer.
    Empty,
    /// F10.
    Deleted { id: String },
    /// The reply to QUIT.
    Bye,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owed {
    Next,
    Delete(String),
    Quit,
}

/// The home side of XFETCH, after the channel's EHLO. Each call queues a
/// command in [`FetchClient::outgoing`]; [`FetchClient::receive`] takes the
/// relay's bytes and [`FetchClient::poll`] returns the answers in order.
#[derive(Debug)]
pub struct FetchClient {
    inbuf: Vec<u8>,
    owed: VecDeque<Owed>,
    /// An F8 line was read: the octets of this id and size are owed.
    octets: Option<(String, usize)>,
    limit: u64,
    /// Bytes to send; the I/O loop writes and clears them.
    pub outgoing: Vec<u8>,
}

impl FetchClient {
    /// A client for a relay whose EHLO reply in the channel is `caps`;
    /// sealed files over `limit` octets end the session (§9).
    pub fn new(caps: &EhloReply, limit: u64) -> Result<FetchClient, FetchError> {
        if !caps.has(KEYWORD) {
            return Err(FetchError::NotOffered);
        }
        Ok(FetchClient {
            inbuf: Vec::new(),
            owed: VecDeque::new(),
            octets: None,
            limit,
            outgoing: Vec::new(),
        })
    }

    pub fn next(&mut self) {
        self.outgoing
            .extend_from_slice(Request::Next.to_line().as_bytes());
        self.owed.push_back(Owed::Next);
    }

    pub fn delete(&mut self, id: &str) {
        self.outgoing
            .extend_from_slice(Request::Delete(id.to_string()).to_line().as_bytes());
        self.owed.push_back(Owed::Delete(id.to_string()));
    }

    pub fn quit(&mut self) {
        self.outgoing.extend_from_slice(b"QUIT\r\n");
        self.owed.push_back(Owed::Quit);
    }

    /// Whether a reply is still owed.
    pub fn waiting(&self) -> bool {
        !self.owed.is_empty()
    }

    /// Bytes from the relay.
    pub fn receive(&mut self, data: &[u8]) {
        self.inbuf.extend_from_slice(data);
    }

    /// The next complete answer, `Ok(None)` when more bytes are needed. An
    /// error ends the session: the caller closes (and sends QUIT where the
    /// session is still in step, see [`FetchError`]).
    pub fn poll(&mut self) -> Result<Option<FetchEvent>, FetchError> {
        if let Some((id, size)) = &self.octets {
            if self.inbuf.len() < *size {
                return Ok(None);
            }
            let rest = self.inbuf.split_off(*size);
            let sealed = std::mem::replace(&mut self.inbuf, rest);
            let id = id.clone();
            self.octets = None;
            return Ok(Some(FetchEvent::Message { id, sealed }));
        }
        let span = match ReplyParser::next_span(&self.inbuf) {
            Ok(Some(span)) => span,
            Ok(None) => return Ok(None),
            Err(e) => return Err(FetchError::Protocol(e.to_string())),
        };
        let reply = Reply::from_span(&self.inbuf, span);
        self.inbuf.drain(..span.len);
        let Some(owed) = self.owed.pop_front() else {
            return Err(FetchError::Protocol(format!(
                "reply nobody asked for: {reply}"
            )));
        };
        self.on_reply(owed, reply)
    }

    fn on_reply(&mut self, owed: Owed, reply: Reply) -> Result<Option<FetchEvent>, FetchError> {
        let command = match owed {
            Owed::Next => "NEXT",
            Owed::Delete(_) => "DELETE",
            Owed::Quit => return Ok(Some(FetchEvent::Bye)),
        };
        if reply.code() == 535 {
            return Err(FetchError::KeyRefused(reply));
        }
        if reply.code() != 250 {
            return Err(FetchError::Refused { command, reply });
        }
        let [line] = reply.lines() else {
            return Err(FetchError::Protocol(format!(
                "multi-line reply to XFETCH {command}: {reply}"
            )));
        };
        let words: Vec<&str> = line.split(' ').collect();
        let unexpected =
            || FetchError::Protocol(format!("unexpected reply to XFETCH {command}: {reply}"));
        match (owed, words.as_slice()) {
            (Owed::Next, ["2.0.0", "EMPTY"]) => Ok(Some(FetchEvent::Empty)),
            (Owed::Next, ["2.0.0", "MESSAGE", id, size]) => {
                let size = parse_size(size).ok_or_else(unexpected)?;
                if !valid_id(id) {
                    return Err(unexpected());
                }
                if size > self.limit {
                    return Err(FetchError::TooBig {
                        id: id.to_string(),
                        size,
                        limit: self.limit,
                    });
                }
                let size = usize::try_from(size).map_err(|_| unexpected())?;
                self.octets = Some((id.to_string(), size));
                self.poll()
            }
            (Owed::Delete(asked), ["2.0.0", "Deleted", id]) if *id == asked => {
                Ok(Some(FetchEvent::Deleted { id: asked }))
            }
            _ => Err(unexpected()),
        }
    }
}

/// `size = 1*20DIGIT`, no leading zeros but "0" (§5).
fn parse_size(text: &str) -> Option<u64> {
    let ok = !text.is_empty()
        && text.len() <= 20
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if ok { text.parse().ok() } else { None }
}

#[cfg(test)]
mod tests;
