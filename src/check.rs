//! `blackpony check`: what would go wrong, said before the first message
//! does (as `postfix check` does for Postfix). Each check yields
//! [`Finding`]s: files and keys readable with safe permissions, listen
//! addresses free, and for the inbound sidecar the backend MTA probed the
//! way the sidecar will talk to it.
//!
//! The backend probe is split like the rest of the code: [`probe`] only
//! moves bytes and records what the backend said ([`Transcript`]); [`judge`]
//! decides what that means for the configured identity mode, without I/O,
//! and is table-tested.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::inbound::{BackendTarget, Identity};
use crate::smtp::ehlo::EhloReply;
use crate::smtp::reply::{Reply, ReplyParser};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warning,
    Error,
}

/// One thing checked, with the fix when it is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub what: String,
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(what: impl Into<String>) -> Self {
        Finding {
            level: Level::Ok,
            what: what.into(),
            fix: None,
        }
    }
    pub fn warning(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            level: Level::Warning,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
    pub fn error(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            level: Level::Error,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

/// The user the packaged units run as (`User=blackpony`).
pub const SERVICE_USER: &str = "blackpony";

/// A file holding a private key (TLS key, XPONY host key, age identity):
/// a regular file, readable here, private to its owner (the rule every
/// role applies when it loads a host key, [`crate::pony::keys::exposed_mode`]),
/// and, when `check` runs as root on a machine with the service user, owned
/// by that user: a key only root can read passes a check run as root and
/// then stops the service. `unreadable_by_service` is how bad that is: an
/// error for a key only the units read, a warning where an MTA's mailer may
/// read its own copy as its own user (`[outbound]`).
pub fn private_key_file(setting: &str, path: &Path, unreadable_by_service: Level) -> Finding {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return Finding::error(
                format!("{setting} = {shown}: {e}"),
                format!("create it, or correct {setting}"),
            );
        }
    };
    if !meta.is_file() {
        return Finding::error(
            format!("{setting} = {shown} is not a file"),
            format!("correct {setting}"),
        );
    }
    if let Err(e) = std::fs::File::open(path) {
        return Finding::error(
            format!("{setting} = {shown}: {e}"),
            format!("make it readable by the service user: chown {SERVICE_USER} {shown}"),
        );
    }
    if let Some(mode) = crate::pony::keys::exposed_mode(&meta) {
        return Finding::error(
            format!("{setting} = {shown} is a private key readable by others (mode {mode:04o})"),
            format!("chmod 0600 {shown} (owned by the user the service runs as, {SERVICE_USER})"),
        );
    }
    let service = if rustix::process::geteuid().is_root() {
        std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|passwd| service_uid(&passwd))
    } else {
        None
    };
    let owner = KeyOwner {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
    };
    judge_key(
        setting,
        &shown.to_string(),
        owner,
        service,
        unreadable_by_service,
    )
}

/// Who owns a key file, and its mode.
#[derive(Debug, Clone, Copy)]
pub struct KeyOwner {
    pub mode: u32,
    pub uid: u32,
}

/// The service user's uid from an /etc/passwd text.
fn service_uid(passwd: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == SERVICE_USER).then_some(())?;
        let _password = fields.next()?;
        fields.next()?.parse().ok()
    })
}

/// Whether the service user can read a key file that is private to its
/// owner (sans-IO, table-tested). `service`: the service user's uid when it
/// is to be checked.
pub fn judge_key(
    setting: &str,
    shown: &str,
    key: KeyOwner,
    service: Option<u32>,
    unreadable_by_service: Level,
) -> Finding {
    let mode = key.mode & 0o777;
    if let Some(uid) = service {
        let readable = key.uid == uid && mode & 0o400 != 0;
        if !readable && unreadable_by_service != Level::Ok {
            return Finding {
                level: unreadable_by_service,
                what: format!(
                    "{setting} = {shown} (mode {mode:04o}, uid {}) cannot be read by \
                     {SERVICE_USER}, the user the systemd units run as",
                    key.uid
                ),
                fix: Some(format!("chown {SERVICE_USER}: {shown}")),
            };
        }
    }
    Finding::ok(format!("{setting} = {shown} (mode {mode:04o})"))
}

/// A directory a service keeps its state or spool in: it must be a
/// directory this process can write (probed by creating and removing a
/// file), and not writable by everyone. A missing one is a warning when
/// the role creates it at start (`created_at_start`), else an error.
pub fn writable_dir(setting: &str, path: &Path, created_at_start: bool) -> Finding {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !created_at_start => {
            return Finding::error(
                format!("{setting} = {shown} does not exist"),
                format!("install -d -o blackpony -g blackpony -m 0750 {shown}"),
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Finding::warning(
                format!("{setting} = {shown} does not exist yet"),
                format!(
                    "it is created at start if the parent is writable; or: \
                     install -d -o blackpony -g blackpony -m 0750 {shown}"
                ),
            );
        }
        Err(e) => {
            return Finding::error(
                format!("{setting} = {shown}: {e}"),
                format!("correct {setting}"),
            );
        }
    };
    if !meta.is_dir() {
        return Finding::error(
            format!("{setting} = {shown} is not a directory"),
            format!("correct {setting}"),
        );
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Finding::error(
            format!("{setting} = {shown} is writable by everyone (mode {mode:04o})"),
            format!("chmod 0750 {shown}"),
        );
    }
    let probe = path.join(format!(".blackpony-check.{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Finding::ok(format!("{setting} = {shown} (mode {mode:04o})"))
        }
        Err(e) => Finding::error(
            format!("{setting} = {shown} cannot be written: {e}"),
            format!("chown blackpony:blackpony {shown} (the user the service runs as)"),
        ),
    }
}

/// A file that must only be readable (a certificate, CA file).
pub fn readable_file(setting: &str, path: &Path) -> Finding {
    match std::fs::File::open(path) {
        Ok(_) => Finding::ok(format!("{setting} = {}", path.display())),
        Err(e) => Finding::error(
            format!("{setting} = {}: {e}", path.display()),
            format!("correct {setting}, or make the file readable"),
        ),
    }
}

/// Whether the address can be listened on now.
pub fn listen_address(setting: &str, addr: &str) -> Finding {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Finding::ok(format!("{setting} = {addr} is free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Finding::error(
            format!("{setting} = {addr}: something already listens there"),
            "stop it (the MTA still on port 25? blackpony itself already running?), \
             or choose another address",
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Finding::warning(
            format!("{setting} = {addr}: this user may not bind it ({e})"),
            "the systemd unit grants CAP_NET_BIND_SERVICE, or use blackpony-inbound.socket",
        ),
        Err(e) => Finding::error(
            format!("{setting} = {addr}: {e}"),
            format!("correct {setting}"),
        ),
    }
}

/// The client the probe claims to be in a PROXY header or XCLIENT: an
/// address of the documentation range (RFC 5737), foreign to every MTA.
pub const PROBE_CLIENT: &str = "192.0.2.1:40000";
/// The recipient of the relay probe: a domain no MTA is the destination for
/// (RFC 2606 `.invalid`).
pub const PROBE_RECIPIENT: &str = "blackpony-check@relay-test.invalid";

/// What the backend said to the probe, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transcript {
    /// Connecting failed, or the backend went silent or away: why.
    pub failure: Option<String>,
    pub greeting: Option<Reply>,
    /// Replies between the greeting and the answer to EHLO: answers to
    /// something the backend read as a command (a PROXY header).
    pub unexpected: Vec<Reply>,
    pub ehlo: Option<Reply>,
    pub xclient: Option<Reply>,
    pub mail: Option<Reply>,
    pub rcpt: Option<Reply>,
}

/// What the transcript means for `identity` (sans-IO; table-tested).
pub fn judge(identity: Identity, backend: &str, t: &Transcript) -> Vec<Finding> {
    let mut out = Vec::new();
    let proxy = matches!(identity, Identity::ProxyV1 | Identity::ProxyV2);
    let mode = identity.as_str();
    let Some(greeting) = &t.greeting else {
        let why = t.failure.as_deref().unwrap_or("no greeting");
        out.push(if proxy || why.starts_with("cannot connect") {
            Finding::error(
                format!("backend {backend}: {why}"),
                "start the MTA, or correct `backend`",
            )
        } else {
            Finding::error(
                format!("backend {backend}: {why}; it may be waiting for a PROXY header"),
                format!(
                    "with identity = {mode} the MTA must not expect one (Postfix: remove \
                     smtpd_upstream_proxy_protocol from this listener), or set identity = proxy-v2"
                ),
            )
        });
        return out;
    };
    if greeting.code() != 220 {
        out.push(Finding::error(
            format!(
                "backend {backend} refuses the sidecar: {}",
                first_line(greeting)
            ),
            "allow connections from the sidecar's address in the MTA",
        ));
        return out;
    }
    if proxy && (!t.unexpected.is_empty() || t.ehlo.is_none()) {
        let said = t
            .unexpected
            .first()
            .map(first_line)
            .or_else(|| t.failure.clone())
            .unwrap_or_default();
        out.push(Finding::error(
            format!(
                "backend {backend} answers the PROXY header as an SMTP command ({said}): \
                 it does not expect one, and every client would get 421"
            ),
            "tell the MTA to expect it on this listener (Postfix: -o \
             smtpd_upstream_proxy_protocol=haproxy; Exim: hosts_proxy = 127.0.0.1; \
             OpenSMTPD: listen on … proxy-v2), or choose the identity mode it understands",
        ));
        return out;
    }
    let Some(ehlo) = t.ehlo.as_ref().filter(|r| r.code() == 250) else {
        out.push(Finding::error(
            format!(
                "backend {backend} does not accept EHLO: {}",
                t.ehlo
                    .as_ref()
                    .map(first_line)
                    .or_else(|| t.failure.clone())
                    .unwrap_or_default()
            ),
            "check the MTA's log for why",
        ));
        return out;
    };
    let caps = EhloReply::parse(ehlo);
    let keywords: Vec<&str> = caps
        .capabilities
        .iter()
        .map(|c| c.keyword.as_str())
        .collect();
    out.push(Finding::ok(format!(
        "backend {backend} ({}) offers {}",
        first_line(greeting),
        keywords.join(" ")
    )));
    if identity == Identity::Xclient {
        if !caps.has("XCLIENT") {
            out.push(Finding::error(
                format!("backend {backend} does not offer XCLIENT to the sidecar"),
                "Postfix: -o smtpd_authorized_xclient_hosts=127.0.0.1 on this listener",
            ));
            return out;
        }
        match &t.xclient {
            Some(r) if r.code() == 220 => {}
            other => {
                out.push(Finding::error(
                    format!(
                        "backend {backend} refuses XCLIENT: {}",
                        other.as_ref().map(first_line).unwrap_or_default()
                    ),
                    "Postfix: -o smtpd_authorized_xclient_hosts=127.0.0.1 on this listener",
                ));
                return out;
            }
        }
    }
    match &t.rcpt {
        Some(r) if r.is_success() => out.push(if identity == Identity::None {
            Finding::error(
                format!(
                    "backend {backend} relays for the sidecar's own address with identity = none \
                     (RCPT TO:<{PROBE_RECIPIENT}>: {}): every internet client would inherit that \
                     trust — an OPEN RELAY",
                    first_line(r)
                ),
                "use identity = proxy-v2 or xclient so the MTA sees the real client, or give the \
                 sidecar a listener that relays for nobody (Postfix: -o mynetworks= \
                 -o smtpd_relay_restrictions=reject_unauth_destination; sendmail: \
                 docs/recipes/sendmail.md)",
            )
        } else {
            Finding::error(
                format!(
                    "backend {backend} relays for a foreign client ({PROBE_CLIENT} told by \
                     identity = {mode}; RCPT TO:<{PROBE_RECIPIENT}>: {}): an OPEN RELAY",
                    first_line(r)
                ),
                "check the MTA's relay rules (Postfix: mynetworks, smtpd_relay_restrictions)",
            )
        }),
        Some(r) => out.push(Finding::ok(format!(
            "backend {backend} refuses to relay for a foreign client ({})",
            first_line(r)
        ))),
        None => out.push(Finding::warning(
            format!(
                "backend {backend}: relaying not probed ({})",
                t.mail
                    .as_ref()
                    .map(first_line)
                    .or_else(|| t.failure.clone())
                    .unwrap_or_else(|| "no answer".into())
            ),
            "check by hand that the MTA refuses relaying through the sidecar",
        )),
    }
    out
}

fn first_line(r: &Reply) -> String {
    format!(
        "{} {}",
        r.code(),
        r.lines().first().cloned().unwrap_or_default()
    )
}

/// Talks to the backend as the sidecar would (PROXY header or XCLIENT for
/// the probe client), then tries to relay in a transaction it resets.
pub async fn probe(target: &BackendTarget, identity: Identity, timeout: Duration) -> Transcript {
    let mut t = Transcript::default();
    let result = match target {
        BackendTarget::Tcp(addr) => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr.as_str())).await
            {
                Ok(Ok(s)) => dialogue(s, identity, timeout, &mut t).await,
                Ok(Err(e)) => Err(format!("cannot connect: {e}")),
                Err(_) => Err("cannot connect: timed out".into()),
            }
        }
        BackendTarget::Unix(path) => match tokio::net::UnixStream::connect(path).await {
            Ok(s) => dialogue(s, identity, timeout, &mut t).await,
            Err(e) => Err(format!("cannot connect: {e}")),
        },
        BackendTarget::Exec(_) => Err("a program per client (identity = exec): not probed".into()),
    };
    if let Err(why) = result {
        t.failure = Some(why);
    }
    t
}

async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    identity: Identity,
    timeout: Duration,
    t: &mut Transcript,
) -> Result<(), String> {
    let client: SocketAddr = PROBE_CLIENT.parse().map_err(|_| "probe address")?;
    let local: SocketAddr = "127.0.0.1:25".parse().map_err(|_| "probe address")?;
    let mut conn = Conn {
        buf: Vec::new(),
        timeout,
    };
    let preamble = crate::inbound::identity::connection_preamble(identity, client, local);
    if !preamble.is_empty() {
        send(&mut s, &preamble).await?;
    }
    t.greeting = Some(conn.reply(&mut s).await?);
    send(&mut s, b"EHLO blackpony-check.invalid\r\n").await?;
    t.ehlo = loop {
        let r = conn.reply(&mut s).await?;
        if r.code() == 250 {
            break Some(r);
        }
        t.unexpected.push(r);
        if t.unexpected.len() > 16 {
            return Err("too many replies".into());
        }
    };
    if identity == Identity::Xclient {
        if !t
            .ehlo
            .as_ref()
            .is_some_and(|r| EhloReply::parse(r).has("XCLIENT"))
        {
            return Ok(());
        }
        send(&mut s, b"XCLIENT ADDR=192.0.2.1 NAME=[UNAVAILABLE]\r\n").await?;
        let r = conn.reply(&mut s).await?;
        let accepted = r.code() == 220;
        t.xclient = Some(r);
        if !accepted {
            return Ok(());
        }
        send(&mut s, b"EHLO blackpony-check.invalid\r\n").await?;
        conn.reply(&mut s).await?;
    }
    send(&mut s, b"MAIL FROM:<>\r\n").await?;
    let mail = conn.reply(&mut s).await?;
    let go_on = mail.is_success();
    t.mail = Some(mail);
    if go_on {
        send(
            &mut s,
            format!("RCPT TO:<{PROBE_RECIPIENT}>\r\n").as_bytes(),
        )
        .await?;
        t.rcpt = Some(conn.reply(&mut s).await?);
    }
    // The transaction is reset, never sent: nothing is queued.
    send(&mut s, b"RSET\r\nQUIT\r\n").await?;
    Ok(())
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> Result<(), String> {
    s.write_all(bytes)
        .await
        .map_err(|e| format!("connection lost: {e}"))
}

struct Conn {
    buf: Vec<u8>,
    timeout: Duration,
}

impl Conn {
    /// The next complete reply, within the timeout.
    async fn reply<S: AsyncRead + Unpin>(&mut self, s: &mut S) -> Result<Reply, String> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match ReplyParser::next_span(&self.buf) {
                Ok(Some(span)) => {
                    let reply = Reply::from_span(&self.buf, span);
                    self.buf.drain(..span.len);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("not SMTP: {e}")),
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
                Ok(Ok(0)) => return Err("closed the connection".into()),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(format!("connection lost: {e}")),
                Err(_) => {
                    return Err(format!("no reply within {} s", self.timeout.as_secs_f32()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(code: u16, text: &str) -> Option<Reply> {
        Some(Reply::new(code, text))
    }

    fn ehlo(keywords: &[&str]) -> Option<Reply> {
        let mut lines = vec!["mx.test".to_string()];
        lines.extend(keywords.iter().map(|k| k.to_string()));
        Some(Reply::multiline(250, lines))
    }

    /// A backend that does everything right for the mode, refusing to relay.
    fn good() -> Transcript {
        Transcript {
            greeting: r(220, "mx.test ESMTP Postfix"),
            ehlo: ehlo(&["PIPELINING", "SIZE 10240000", "XCLIENT NAME ADDR"]),
            xclient: r(220, "mx.test ESMTP Postfix"),
            mail: r(250, "2.1.0 Ok"),
            rcpt: r(454, "4.7.1 <x@relay-test.invalid>: Relay access denied"),
            ..Default::default()
        }
    }

    fn worst(findings: &[Finding]) -> (Level, String) {
        let f = findings.iter().max_by_key(|f| f.level).unwrap();
        (f.level, f.what.clone())
    }

    #[test]
    fn judge_table() {
        let relays = Transcript {
            rcpt: r(250, "2.1.5 Ok"),
            ..good()
        };
        let proxy_as_command = Transcript {
            unexpected: vec![Reply::new(500, "5.5.2 Error: command not recognized")],
            ..good()
        };
        let proxy_v2_quit = Transcript {
            unexpected: vec![Reply::new(221, "2.0.0 Bye")],
            ehlo: None,
            failure: Some("closed the connection".into()),
            ..good()
        };
        let silent = Transcript {
            greeting: None,
            failure: Some("no reply within 5 s".into()),
            ..Default::default()
        };
        let refused = Transcript {
            failure: Some("cannot connect: Connection refused".into()),
            ..Default::default()
        };
        let no_xclient = Transcript {
            ehlo: ehlo(&["PIPELINING"]),
            ..good()
        };
        use Identity::{ProxyV1, ProxyV2, Xclient};
        let cases: &[(Identity, &Transcript, Level, &str)] = &[
            (ProxyV2, &good(), Level::Ok, "refuses to relay"),
            (Xclient, &good(), Level::Ok, "refuses to relay"),
            (Identity::None, &good(), Level::Ok, "refuses to relay"),
            (Identity::None, &relays, Level::Error, "OPEN RELAY"),
            (
                ProxyV2,
                &relays,
                Level::Error,
                "relays for a foreign client",
            ),
            (
                ProxyV2,
                &proxy_as_command,
                Level::Error,
                "as an SMTP command",
            ),
            (
                ProxyV1,
                &proxy_as_command,
                Level::Error,
                "as an SMTP command",
            ),
            (ProxyV2, &proxy_v2_quit, Level::Error, "as an SMTP command"),
            (
                Identity::None,
                &silent,
                Level::Error,
                "waiting for a PROXY header",
            ),
            (Xclient, &silent, Level::Error, "waiting for a PROXY header"),
            (ProxyV2, &refused, Level::Error, "cannot connect"),
            (Identity::None, &refused, Level::Error, "cannot connect"),
            (Xclient, &no_xclient, Level::Error, "does not offer XCLIENT"),
        ];
        for (identity, t, level, says) in cases {
            let (got, what) = worst(&judge(*identity, "127.0.0.1:10025", t));
            assert_eq!(got, *level, "{identity:?}: {what}");
            assert!(
                what.contains(says),
                "{identity:?}: {what:?} should say {says:?}"
            );
        }
    }

    #[test]
    fn private_keys_must_not_be_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("blackpony-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("host.key");
        std::fs::write(&key, "secret").unwrap();
        for (mode, level) in [
            (0o600, Level::Ok),
            (0o400, Level::Ok),
            (0o640, Level::Error),
            (0o604, Level::Error),
        ] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            // Level::Ok: whoever runs this test, the service user is not judged.
            assert_eq!(
                private_key_file("host_key", &key, Level::Ok).level,
                level,
                "{mode:o}"
            );
        }
        assert_eq!(
            private_key_file("host_key", &dir.join("missing"), Level::Error).level,
            Level::Error
        );
        assert_eq!(
            private_key_file("host_key", &dir, Level::Error).level,
            Level::Error
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_owner_table() {
        const ROOT: u32 = 0;
        const SVC: u32 = 108;
        let key = |mode, uid| KeyOwner { mode, uid };
        for (owner, service, if_unreadable, want) in [
            // Root's own key (keygen run as root): the service user cannot read it.
            (key(0o600, ROOT), Some(SVC), Level::Error, Level::Error),
            (key(0o600, ROOT), Some(SVC), Level::Warning, Level::Warning),
            // Not run as root, or no service user: not judged.
            (key(0o600, ROOT), None, Level::Error, Level::Ok),
            (key(0o600, ROOT), Some(SVC), Level::Ok, Level::Ok),
            // The service user owns it.
            (key(0o600, SVC), Some(SVC), Level::Error, Level::Ok),
            (key(0o400, SVC), Some(SVC), Level::Error, Level::Ok),
            // Owned by the service user without a read bit for it.
            (key(0o200, SVC), Some(SVC), Level::Error, Level::Error),
        ] {
            let got = judge_key("host_key", "/k", owner, service, if_unreadable);
            assert_eq!(got.level, want, "{owner:?} {service:?}: {got:?}");
            if want != Level::Ok {
                assert_eq!(got.fix.as_deref(), Some("chown blackpony: /k"));
            }
        }
        let passwd = "root:x:0:0::/root:/bin/sh\n\
                      blackpony:x:108:112:bp,,,:/var/lib/blackpony:/usr/sbin/nologin\n";
        assert_eq!(service_uid(passwd), Some(SVC));
        assert_eq!(service_uid("root:x:0:0::/root:/bin/sh\n"), None);
        assert_eq!(service_uid("blackpony:x:oops:112::/:/bin/false\n"), None);
    }

    #[test]
    fn state_directories_must_be_writable_and_not_by_everyone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("blackpony-check-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            writable_dir("d", &dir, true).level,
            Level::Warning,
            "missing"
        );
        assert_eq!(
            writable_dir("d", &dir, false).level,
            Level::Error,
            "missing spool"
        );
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(writable_dir("d", &dir, true).level, Level::Ok);
        assert!(
            std::fs::read_dir(&dir).unwrap().next().is_none(),
            "probe removed"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(
            writable_dir("d", &dir, true).level,
            Level::Error,
            "world-writable"
        );
        let file = dir.join("f");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(writable_dir("d", &file, true).level, Level::Error, "a file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_listen_address_in_use_is_an_error() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap().to_string();
        assert_eq!(listen_address("listen", &addr).level, Level::Error);
        drop(held);
        assert_eq!(listen_address("listen", "127.0.0.1:0").level, Level::Ok);
    }
}
