//! Driving a sans-IO [`ClientSession`] over a [`Stream`]: the one loop that
//! writes what the session has to send, reads what the server sends and
//! feeds it in, until the session needs its caller (a server key to judge,
//! a TLS handshake, the switch to the XPONY channel) or is over. Outbound
//! delivery (`outbound/connection.rs`) and `blackpony fetch`
//! (`relay/fetch.rs`) both run their sessions with it; what they decide at
//! each pause stays theirs.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Encryption, PonyStream, Stream};
use crate::pony::channel::Channel;
use crate::smtp::client::{ClientSession, Step};

/// How long the QUIT and the end of the connection may take once the
/// session is over; their replies do not matter.
const GOODBYE: Duration = Duration::from_secs(10);

/// Runs one [`ClientSession`] over one connection.
pub struct ClientDriver {
    buf: Vec<u8>,
    /// The bound of each write and each read (RFC 5321 §4.5.3.2).
    timeout: Duration,
    heard: bool,
}

impl ClientDriver {
    pub fn new(timeout: Duration) -> Self {
        ClientDriver {
            buf: vec![0u8; 16 * 1024],
            timeout,
            heard: false,
        }
    }

    /// Whether the server has sent anything yet: a session that reached a
    /// greeting (Postfix's `smtp_mx_session_limit` counts those).
    pub fn heard(&self) -> bool {
        self.heard
    }

    /// Writes and reads until the session needs its caller, and returns
    /// that step (never [`Step::Continue`]):
    /// - [`Step::Ready`]: an opening-only session is ready for mail commands;
    /// - [`Step::Done`]: the session is over; its QUIT (if any) is written
    ///   and the connection ended (an XPONY channel with CLOSE after the 221,
    ///   proto-spec §5.6; TLS with close_notify);
    /// - [`Step::CheckServerKey`], [`Step::SwitchToPony`] (see
    ///   [`ClientDriver::switch_to_pony`]), [`Step::StartTls`]: the caller's
    ///   to carry out.
    ///
    /// `None`: the connection is gone (closed, failed or timed out, or
    /// `stream` is `None`); [`ClientSession::connection_lost`] was called.
    pub async fn next_step<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut Option<Stream<S>>,
        session: &mut ClientSession,
    ) -> Option<Step> {
        loop {
            let Some(s) = stream.as_mut() else {
                session.connection_lost();
                return None;
            };
            if !session.outgoing.is_empty() {
                let ok = write_all(s, &session.outgoing, self.timeout).await;
                session.outgoing.clear();
                if !ok {
                    session.connection_lost();
                    return None;
                }
            }
            let step = match tokio::time::timeout(self.timeout, s.read(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    self.heard = true;
                    session.receive(&self.buf[..n])
                }
                _ => {
                    session.connection_lost();
                    return None;
                }
            };
            match step {
                Step::Continue => {}
                Step::Done => {
                    let _ = tokio::time::timeout(GOODBYE, async {
                        if !session.outgoing.is_empty() {
                            let _ = s.write_all(&session.outgoing).await;
                        }
                        let _ = s.shutdown().await;
                    })
                    .await;
                    session.outgoing.clear();
                    return Some(Step::Done);
                }
                other => return Some(other),
            }
        }
    }

    /// At [`Step::SwitchToPony`]: writes message 3 in plaintext, wraps the
    /// connection in the XPONY channel and tells the session, which starts
    /// over with EHLO inside it. Returns what the channel is (for the log's
    /// `tls=`); `None`: the connection was lost on the way.
    pub async fn switch_to_pony<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut Option<Stream<S>>,
        session: &mut ClientSession,
    ) -> Option<Encryption> {
        let s = stream.as_mut()?;
        let written = write_all(s, &session.outgoing, self.timeout).await;
        session.outgoing.clear();
        if !written {
            return None;
        }
        let (transport, already_read) = session.take_pony()?;
        let Some(Ok(plain)) = stream.take().map(Stream::into_plain) else {
            return None;
        };
        let info = Encryption::pony(&transport);
        *stream = Some(Stream::Pony(Box::new(PonyStream::new(
            plain,
            Channel::new(transport),
            already_read,
        ))));
        session.pony_established();
        Some(info)
    }
}

/// Writes and flushes `bytes` within `timeout`; false when that failed.
pub async fn write_all<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8], timeout: Duration) -> bool {
    if bytes.is_empty() {
        return true;
    }
    let write = async {
        s.write_all(bytes).await?;
        s.flush().await
    };
    matches!(tokio::time::timeout(timeout, write).await, Ok(Ok(())))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream};

    use super::*;
    use crate::smtp::client::{SessionOutcome, StartTls};
    use crate::smtp::{ContentFacts, DotStuffer, Envelope};

    /// A server that greets, answers every command line with 250 (354 to
    /// DATA, 221 to QUIT) and returns the lines it read, until EOF.
    async fn mta(server: DuplexStream) -> Vec<String> {
        let mut r = BufReader::new(server);
        let mut got = Vec::new();
        let _ = r.get_mut().write_all(b"220 mx.test ESMTP\r\n").await;
        let mut in_data = false;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return got;
            }
            let reply: &[u8] = match (in_data, line.as_str()) {
                (true, ".\r\n") => {
                    in_data = false;
                    b"250 2.0.0 queued\r\n"
                }
                (true, _) => continue,
                (false, l) if l.starts_with("EHLO") => b"250-mx.test\r\n250 PIPELINING\r\n",
                (false, "DATA\r\n") => {
                    in_data = true;
                    b"354 go ahead\r\n"
                }
                (false, "QUIT\r\n") => b"221 2.0.0 bye\r\n",
                _ => b"250 2.0.0 ok\r\n",
            };
            got.push(line);
            let _ = r.get_mut().write_all(reply).await;
        }
    }

    fn session() -> ClientSession {
        let mut wire = Vec::new();
        let mut stuffer = DotStuffer::new();
        stuffer.push(b"Subject: hi\r\n\r\nbody\r\n", &mut wire);
        stuffer.finish(&mut wire);
        let facts = ContentFacts::of(&wire);
        let envelope = Envelope {
            sender: "a@client.test".into(),
            recipients: vec!["b@mx.test".into()],
        };
        ClientSession::new("client.test", StartTls::Never, envelope, facts, wire)
    }

    #[tokio::test]
    async fn delivers_then_quits_and_ends_the_connection() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(mta(server));
        let mut session = session();
        let mut stream = Some(Stream::Plain(client));
        let mut driver = ClientDriver::new(Duration::from_secs(5));
        assert_eq!(
            driver.next_step(&mut stream, &mut session).await,
            Some(Step::Done)
        );
        assert!(driver.heard());
        // The server saw the QUIT last, then the end of the connection
        // (its read returned 0: otherwise this would not finish).
        let got = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("connection ended")
            .expect("server");
        assert_eq!(
            got.first().map(String::as_str),
            Some("EHLO client.test\r\n")
        );
        assert_eq!(got.last().map(String::as_str), Some("QUIT\r\n"));
        match session.take_outcome() {
            Some(SessionOutcome::Replied(r)) => assert_eq!(r[0].reply.code(), 250),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_silent_server_is_a_lost_connection() {
        let (client, _server) = tokio::io::duplex(1024);
        let mut session = session();
        let mut stream = Some(Stream::Plain(client));
        let mut driver = ClientDriver::new(Duration::from_millis(50));
        assert_eq!(driver.next_step(&mut stream, &mut session).await, None);
        assert!(!driver.heard());
        assert!(matches!(
            session.take_outcome(),
            Some(SessionOutcome::Failed(_))
        ));
        // No stream at all is the same.
        let mut session = self::session();
        let mut none: Option<Stream<DuplexStream>> = None;
        assert_eq!(driver.next_step(&mut none, &mut session).await, None);
    }
}
