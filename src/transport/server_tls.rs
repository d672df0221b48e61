//! The server side of TLS once the STARTTLS handshake is over (RFC 3207):
//! the rustls connection driven straight over the socket.
//!
//! tokio-rustls runs the handshake; its stream then gives way to this one
//! (`tokio_rustls::server::TlsStream::into_inner`, so nothing the client
//! sent behind its Finished message is lost). Per relayed message this does
//! what tokio-rustls' stream did with less around it (bench/README.md,
//! "Where the time goes on the STARTTLS path"): a reply batch goes out as
//! one `send` of its record rather than a `writev` of one buffer; a read
//! hands over the plaintext of every record the socket read brought, not
//! one record per call; and a poll that finds the socket empty returns
//! without building an error on the way. What rustls decides stays its own:
//! the record layer, alerts, `close_notify` and the end of the connection
//! are rustls' answers, passed on as they come.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::ServerConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A TLS connection after the handshake, server side.
#[derive(Debug)]
pub struct ServerTlsStream<S> {
    io: S,
    conn: ServerConnection,
    /// `close_notify` has been queued (the write side is shut).
    write_closed: bool,
}

impl<S> ServerTlsStream<S> {
    /// Takes over a finished handshake from tokio-rustls.
    pub fn new(tls: tokio_rustls::server::TlsStream<S>) -> Self {
        let (io, conn) = tls.into_inner();
        ServerTlsStream {
            io,
            conn,
            write_closed: false,
        }
    }

    /// The rustls connection (negotiated version, suite, …).
    pub fn connection(&self) -> &ServerConnection {
        &self.conn
    }
}

/// `std::io` over a polled socket, for rustls' `read_tls`/`write_tls`:
/// `Pending` becomes `WouldBlock`.
struct Polled<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncRead + Unpin> Read for Polled<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Write for Polled<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// rustls hands over its queued records as slices; one record (a
    /// reply batch) goes out with a plain `send`.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        let (Some(first), None) = (filled.next(), filled.next()) else {
            return match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
                Poll::Ready(r) => r,
                Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
            };
        };
        self.write(first)
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ServerTlsStream<S> {
    /// Writes queued records to the socket: `Ready(Ok(n))` with n > 0 when
    /// some went out.
    fn poll_send_records(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut socket = Polled {
            io: &mut self.io,
            cx,
        };
        match self.conn.write_tls(&mut socket) {
            Ok(0) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Writes every queued record, or says why not yet.
    fn poll_send_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            std::task::ready!(self.poll_send_records(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerTlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Bounded: each turn either returns or reads bytes (or the end)
        // from the socket into rustls, and after the end rustls' reader
        // answers (Ok(0) after close_notify, UnexpectedEof without).
        loop {
            // Plaintext already decrypted comes first, across records.
            match this.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            let mut socket = Polled {
                io: &mut this.io,
                cx,
            };
            match this.conn.read_tls(&mut socket) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = this.conn.process_new_packets() {
                // rustls queued an alert for the client: one try to send
                // it, as tokio-rustls does, then the error.
                let _ = this.poll_send_records(cx);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerTlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut taken = 0;
        // Bounded: a turn that takes nothing and sends nothing returns.
        loop {
            // rustls takes what fits under its buffer limit, encrypted
            // into records at once.
            taken += this.conn.writer().write(&buf[taken..])?;
            let mut blocked = false;
            while this.conn.wants_write() {
                match this.poll_send_records(cx) {
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        blocked = true;
                        break;
                    }
                }
            }
            if taken == buf.len() || (blocked && taken > 0) {
                return Poll::Ready(Ok(taken));
            }
            if blocked {
                return Poll::Pending;
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_send_all(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.conn.send_close_notify();
            this.write_closed = true;
        }
        std::task::ready!(this.poll_send_all(cx))?;
        Poll::Ready(
            match std::task::ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
                // Not connected any more: shut already, as far as we care.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                other => other,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::transport::{ClientTls, ServerTls};

    type Client = tokio_rustls::client::TlsStream<DuplexStream>;

    /// A finished handshake over an in-memory pipe of `capacity` bytes each
    /// way: the client's stream, and the server's handed to ours.
    async fn pair(capacity: usize) -> (Client, ServerTlsStream<DuplexStream>) {
        let (client_io, server_io) = tokio::io::duplex(capacity);
        let server = ServerTls::self_signed("mx.test").expect("server config");
        let acceptor = TlsAcceptor::from(server.config());
        let connector = TlsConnector::from(ClientTls::new().expect("client config").config());
        let name = rustls_pki_types::ServerName::try_from("mx.test").expect("name");
        let (client, server) = tokio::join!(
            connector.connect(name, client_io),
            acceptor.accept(server_io)
        );
        (
            client.expect("client handshake"),
            ServerTlsStream::new(server.expect("server handshake")),
        )
    }

    /// One read of whatever is there, as the inbound loop does it.
    async fn read_once(server: &mut ServerTlsStream<DuplexStream>) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 64 * 1024];
        let n = server.read(&mut buf).await?;
        buf.truncate(n);
        Ok(buf)
    }

    #[tokio::test]
    async fn records_read_together_come_out_in_one_read_and_replies_go_back() {
        let (mut client, mut server) = pair(64 * 1024).await;
        // Three records, all on the pipe before the server reads.
        for line in [
            &b"MAIL FROM:<a@b.test>\r\n"[..],
            b"RCPT TO:<c@d.test>\r\n",
            b"DATA\r\n",
        ] {
            client.write_all(line).await.expect("write");
            client.flush().await.expect("flush");
        }
        let got = read_once(&mut server).await.expect("read");
        assert_eq!(
            got,
            b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n".to_vec()
        );
        server.write_all(b"250 2.1.0 ok\r\n").await.expect("reply");
        server.flush().await.expect("flush");
        let mut reply = [0u8; 14];
        client.read_exact(&mut reply).await.expect("client read");
        assert_eq!(&reply, b"250 2.1.0 ok\r\n");
    }

    #[tokio::test]
    async fn the_end_of_the_connection_is_what_rustls_says_it_is() {
        // close_notify, then the end: data, then a clean end of stream.
        let (mut client, mut server) = pair(64 * 1024).await;
        client.write_all(b"QUIT\r\n").await.expect("write");
        client.shutdown().await.expect("close_notify");
        let mut all = Vec::new();
        server.read_to_end(&mut all).await.expect("clean end");
        assert_eq!(all, b"QUIT\r\n".to_vec());

        // The socket closed without close_notify: the data, then
        // UnexpectedEof (a truncation the session must not take for a
        // clean end).
        let (mut client, mut server) = pair(64 * 1024).await;
        client.write_all(b"DATA\r\n").await.expect("write");
        client.flush().await.expect("flush");
        drop(client.into_inner().0);
        assert_eq!(read_once(&mut server).await.expect("data"), b"DATA\r\n");
        let err = read_once(&mut server).await.expect_err("truncated");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_forged_record_is_an_error_and_the_client_gets_an_alert() {
        let (client, mut server) = pair(64 * 1024).await;
        let (mut raw, mut conn) = client.into_inner();
        // An application-data record that no key made.
        raw.write_all(b"\x17\x03\x03\x00\x14MAIL FROM:<forged>\r\n")
            .await
            .expect("write");
        let err = read_once(&mut server).await.expect_err("forged");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // The client's side of the connection reads what the server sent
        // after the handshake (tickets, then the alert; encrypted, as TLS
        // 1.3 sends alerts) and finds the alert.
        drop(server);
        let mut wire = Vec::new();
        raw.read_to_end(&mut wire).await.expect("read");
        let mut rest = &wire[..];
        let mut alert = None;
        while !rest.is_empty() && alert.is_none() {
            conn.read_tls(&mut rest).expect("read_tls");
            if let Err(e) = conn.process_new_packets() {
                alert = Some(e);
            }
        }
        assert_eq!(
            alert,
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::BadRecordMac
            ))
        );
    }

    #[tokio::test]
    async fn a_write_larger_than_the_pipe_goes_out_whole_in_order() {
        // 300 KiB through a 4 KiB pipe: rustls' buffer limit and the full
        // socket both make the writes partial; flush finishes them.
        let (mut client, mut server) = pair(4096).await;
        let body: Arc<Vec<u8>> = Arc::new((0..300 * 1024).map(|i| (i % 251) as u8).collect());
        let sent = Arc::clone(&body);
        let writer = tokio::spawn(async move {
            server.write_all(&sent).await.expect("write");
            server.flush().await.expect("flush");
            server.shutdown().await.expect("shutdown");
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        writer.await.expect("writer");
        assert!(got == *body, "{} bytes of {}", got.len(), body.len());
    }
}
