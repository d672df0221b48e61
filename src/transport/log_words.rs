//! A transport error (TLS, the blackpony channel, the socket) in the words a
//! mail operator greps for, for the `client-error="…"` and `tls-error="…"`
//! values of the log lines (one line per event, Postfix-style).
//!
//! rustls' own texts are written for programmers: the end of a connection
//! without `close_notify` carries a docs.rs URL, and tokio-rustls says
//! "tls handshake eof". Postfix says "lost connection after STARTTLS" and
//! "SSL_accept error … lost connection"; these words say the same, short,
//! and always fit between the quotes of a `key="…"` value.

use std::io;

/// The end of a TLS connection without `close_notify` (RFC 8446 §6.1): the
/// data before it arrived, but the client did not end the session itself
/// (a truncation, unless it had sent QUIT).
pub const NO_CLOSE_NOTIFY: &str = "connection closed without TLS close_notify";

/// The connection ended in the middle of the TLS handshake.
pub const LOST_IN_HANDSHAKE: &str = "lost connection during TLS handshake";

/// The connection ended where more bytes were owed (no words of its own).
pub const LOST: &str = "lost connection";

/// The peer reset the connection (a TCP RST: a crashed or killed client,
/// a firewall), whatever the operating system's text for it.
pub const RESET: &str = "connection reset by peer";

/// `e` as log words: the known ends of a connection in mail-operator
/// words, anything else as its own text without a trailing URL, quotes or
/// line breaks (one line per event, and the value stays greppable).
pub fn error_words(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::ConnectionReset {
        return RESET.to_string();
    }
    let text = e.to_string();
    if e.kind() == io::ErrorKind::UnexpectedEof {
        // rustls' reader ("peer closed connection without sending TLS
        // close_notify: https://docs.rs/…") and tokio-rustls' handshake
        // ("tls handshake eof") say it in their own words; an io::Error of
        // the bare kind says "unexpected end of file".
        if text.contains("close_notify") {
            return NO_CLOSE_NOTIFY.to_string();
        }
        if text.contains("handshake") {
            return LOST_IN_HANDSHAKE.to_string();
        }
        if e.get_ref().is_none() {
            return LOST.to_string();
        }
    }
    plain_words(&text)
}

/// `text` without a `: https://…` tail (rustls points at its manual) and
/// with nothing that would end the quoted value or the line.
fn plain_words(text: &str) -> String {
    let text = match text.find(": https://").or_else(|| text.find(": http://")) {
        Some(at) => &text[..at],
        None => text,
    };
    text.chars()
        .map(|c| match c {
            '"' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;

    /// The error rustls itself gives when the socket ends without
    /// close_notify (so a new rustls text is seen here, not in a log).
    fn rustls_truncation() -> io::Error {
        let tls = crate::transport::ServerTls::self_signed("mx.example.test").expect("cert");
        let mut conn = rustls::ServerConnection::new(Arc::clone(&tls.config())).expect("conn");
        let read = conn.read_tls(&mut &b""[..]).expect("end of stream");
        assert_eq!(read, 0);
        conn.reader()
            .read(&mut [0u8; 16])
            .expect_err("an end without close_notify")
    }

    #[test]
    fn the_end_without_close_notify_is_said_in_mail_words() {
        let e = rustls_truncation();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("https://"), "{e}");
        assert_eq!(error_words(&e), NO_CLOSE_NOTIFY);
    }

    #[test]
    fn transport_errors_become_short_words() {
        use io::ErrorKind::*;
        let table: [(io::Error, &str); 9] = [
            (
                io::Error::new(UnexpectedEof, "tls handshake eof"),
                LOST_IN_HANDSHAKE,
            ),
            (UnexpectedEof.into(), LOST),
            // The blackpony channel's own words stay (proto-spec §5.6).
            (
                io::Error::new(
                    UnexpectedEof,
                    "blackpony channel ended without CLOSE (truncated)",
                ),
                "blackpony channel ended without CLOSE (truncated)",
            ),
            // A rustls error (a broken record, an alert) keeps its text.
            (
                io::Error::new(InvalidData, rustls::Error::DecryptError),
                "cannot decrypt peer's message",
            ),
            (
                io::Error::new(
                    InvalidData,
                    rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
                ),
                "received fatal alert: HandshakeFailure",
            ),
            // A URL tail goes, whatever the error.
            (
                io::Error::new(Other, "something odd: https://docs.rs/x#y"),
                "something odd",
            ),
            // Nothing may end the quoted value or the line.
            (
                io::Error::new(InvalidData, "bad \"name\"\r\nnext"),
                "bad 'name'  next",
            ),
            (ConnectionReset.into(), RESET),
            // Not "Connection reset by peer (os error 104)".
            (io::Error::from_raw_os_error(104), RESET),
        ];
        for (e, want) in table {
            assert_eq!(error_words(&e), want, "{e:?}");
        }
    }
}
