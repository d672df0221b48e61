//! The blackpony channel as an async byte stream: the I/O half of
//! [`Channel`](crate::pony::channel::Channel), which does all the framing.
//!
//! Writes are sealed into frames at once and pushed out as far as the
//! socket takes them; `flush` pushes the rest. `shutdown` sends CLOSE. A
//! read returns 0 (EOF) only after the peer's CLOSE; a connection that ends
//! without one is an error (truncation).

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::pony::channel::{Channel, MAX_BODY};

/// Ciphertext waiting to be written before new writes are refused.
const MAX_PENDING: usize = 4 * 65537;

/// The least room a read from the socket is given.
const READ_CHUNK: usize = 16 * 1024;

pub struct PonyStream<S> {
    inner: S,
    channel: Channel,
    /// Bytes read from the socket: `rx_wire[rx_start..rx_end]` is not yet
    /// opened. The socket reads straight into the space behind `rx_end`,
    /// which is zeroed once when the buffer grows, never per read. Frames
    /// are opened where they lie, so the plaintext is copied once, into
    /// the reader's buffer.
    rx_wire: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    /// The opened DATA body in `rx_wire` not yet returned (it lies before
    /// `rx_start`).
    rx_body: Range<usize>,
    /// Sealed frames not yet written.
    tx_wire: Vec<u8>,
    tx_pos: usize,
    close_sent: bool,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl<S> std::fmt::Debug for PonyStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PonyStream")
            .field("buffered_in", &(self.rx_end - self.rx_start))
            .field("pending_out", &(self.tx_wire.len() - self.tx_pos))
            .finish_non_exhaustive()
    }
}

impl<S> PonyStream<S> {
    /// Wraps `inner` after the handshake. `already_read` holds bytes that
    /// came in behind the last handshake message: the first frames.
    pub fn new(inner: S, channel: Channel, already_read: Vec<u8>) -> Self {
        PonyStream {
            inner,
            channel,
            rx_start: 0,
            rx_end: already_read.len(),
            rx_wire: already_read,
            rx_body: 0..0,
            tx_wire: Vec::new(),
            tx_pos: 0,
            close_sent: false,
        }
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> PonyStream<S> {
    /// Writes out sealed frames until none are left (or the socket is full).
    fn poll_write_wire(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tx_pos < self.tx_wire.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.tx_wire[self.tx_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tx_pos += n;
        }
        self.tx_wire.clear();
        self.tx_pos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S> PonyStream<S> {
    /// Leaves at least [`READ_CHUNK`] bytes behind `rx_end` for the next
    /// read (once the opened body is all returned): moves the unopened
    /// bytes (a partial frame) to the front, and
    /// grows the buffer only if that is not enough.
    fn make_read_room(&mut self) {
        if self.rx_start == self.rx_end {
            self.rx_start = 0;
            self.rx_end = 0;
        }
        if self.rx_wire.len() - self.rx_end >= READ_CHUNK {
            return;
        }
        if self.rx_start > 0 {
            self.rx_wire.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        if self.rx_wire.len() - self.rx_end < READ_CHUNK {
            self.rx_wire.resize(self.rx_end + READ_CHUNK, 0);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PonyStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.rx_body.is_empty() {
                let body = &this.rx_wire[this.rx_body.clone()];
                let n = buf.remaining().min(body.len());
                buf.put_slice(&body[..n]);
                this.rx_body.start += n;
                return Poll::Ready(Ok(()));
            }
            if this.channel.peer_closed() {
                return Poll::Ready(Ok(()));
            }
            let frame = this
                .channel
                .open_in_place(&mut this.rx_wire[this.rx_start..this.rx_end])
                .map_err(invalid)?;
            if let Some(frame) = frame {
                let at = this.rx_start;
                this.rx_body = at + frame.body.start..at + frame.body.end;
                this.rx_start += frame.consumed;
                continue;
            }
            this.make_read_room();
            let mut read = ReadBuf::new(&mut this.rx_wire[this.rx_end..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blackpony channel ended without CLOSE (truncated)",
                )));
            }
            this.rx_end += n;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PonyStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tx_wire.len() - this.tx_pos >= MAX_PENDING {
            ready!(this.poll_write_wire(cx))?;
        }
        let n = data.len().min(4 * MAX_BODY);
        this.channel
            .seal_data(&data[..n], &mut this.tx_wire)
            .map_err(invalid)?;
        // Push out what the socket takes now; the rest goes with flush.
        if let Poll::Ready(Err(e)) = this.poll_write_wire(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_wire(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.channel
                .seal_close(&mut this.tx_wire)
                .map_err(invalid)?;
            this.close_sent = true;
        }
        ready!(this.poll_write_wire(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn channels() -> (Channel, Channel) {
        let (i, r) = crate::pony::noise::handshake_pair(b"");
        (Channel::new(i), Channel::new(r))
    }

    #[tokio::test]
    async fn bytes_cross_a_socket_pair_and_close_is_eof() {
        let (a, b) = tokio::io::duplex(1024);
        let (ca, cb) = channels();
        let mut a = PonyStream::new(a, ca, Vec::new());
        let mut b = PonyStream::new(b, cb, Vec::new());
        let message = vec![7u8; 300_000];
        let sent = message.clone();
        let writer = tokio::spawn(async move {
            a.write_all(b"EHLO x\r\n").await.unwrap();
            a.write_all(&sent).await.unwrap();
            a.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(&got[..8], b"EHLO x\r\n");
        assert_eq!(&got[8..], &message[..]);
    }

    #[tokio::test]
    async fn eof_without_close_is_an_error() {
        let (a, b) = tokio::io::duplex(1024);
        let (ca, cb) = channels();
        let mut a = PonyStream::new(a, ca, Vec::new());
        let mut b = PonyStream::new(b, cb, Vec::new());
        a.write_all(b"partial").await.unwrap();
        a.flush().await.unwrap();
        drop(a);
        let mut got = Vec::new();
        let err = b.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(got, b"partial");
    }
}
