//! Byte streams that start in plaintext and may be upgraded mid-session
//! (the STARTTLS pattern, RFC 3207), and the TLS configuration they use.

pub mod cert_name;
pub mod dane;
pub mod drive;
pub mod encryption;
pub mod log_words;
pub mod pony;
pub mod server_tls;
pub mod tls;
pub mod verifier;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use drive::ClientDriver;
pub use encryption::Encryption;
pub use tls::{CertVerdict, ClientTls, ServerTls, TlsError};

pub use pony::PonyStream;
pub use server_tls::ServerTlsStream;

/// A connection that is plain TCP until it is upgraded to TLS or to the
/// blackpony channel.
///
/// The upgrade takes the stream by value ([`Stream::into_plain`] then
/// `Stream::ClientTls` or `Stream::ServerTls`), so there is never a moment
/// where both layers could read. Each TLS variant holds one side only: a
/// server stream cannot be built where outbound expects its client's.
#[derive(Debug)]
pub enum Stream<S> {
    Plain(S),
    /// The client side of STARTTLS (outbound).
    ClientTls(Box<tokio_rustls::client::TlsStream<S>>),
    /// The server side of STARTTLS (inbound, seal), after the handshake.
    ServerTls(Box<ServerTlsStream<S>>),
    Pony(Box<PonyStream<S>>),
}

impl<S> Stream<S> {
    /// The underlying plaintext stream, if no TLS layer is on it yet.
    pub fn into_plain(self) -> Result<S, Self> {
        match self {
            Stream::Plain(s) => Ok(s),
            other => Err(other),
        }
    }

    /// The certificate chain the TLS server presented (leaf first); empty
    /// without TLS.
    pub fn peer_certificates(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        match self {
            Stream::ClientTls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Whether the stream is encrypted (TLS or the blackpony channel).
    pub fn is_encrypted(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Pony(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Pony(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Pony(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Pony(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Pony(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::ClientTls(s) => s.is_write_vectored(),
            // rustls takes the slices one at a time anyway.
            Stream::ServerTls(_) => false,
            Stream::Pony(s) => s.is_write_vectored(),
        }
    }
}
