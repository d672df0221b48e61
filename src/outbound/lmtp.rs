//! LMTP service (RFC 2033) in front of the deliverer: the I/O loop around
//! [`LmtpSession`]. One loop serves standard input/output (`blackpony lmtp`,
//! for sendmail's `F=z` mailers and Exim's lmtp transport with `command`)
//! and each connection of `blackpony outbound --protocol lmtp`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Deliverer;
use crate::smtp::server::{LmtpEvent, LmtpSession};

/// How long the client may stay silent (RFC 5321 §4.5.3.2.7).
const IDLE: Duration = Duration::from_secs(300);

/// Serves one LMTP client until it quits or goes away.
pub async fn serve<R, W>(mut reader: R, mut writer: W, deliverer: &Deliverer, max_message_size: u64)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut session = LmtpSession::new(&deliverer.helo_name, max_message_size);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                LmtpEvent::Deliver { envelope, wire } => {
                    // Write what is owed (the 354 is long gone; nothing here)
                    // and deliver while the client waits for the replies.
                    let results = deliverer.deliver_wire(&envelope, wire).await;
                    let replies: Vec<_> = results.into_iter().map(|r| r.reply).collect();
                    session.delivered(&replies);
                }
                LmtpEvent::Close => {}
            }
        }
        if !session.output.is_empty() {
            if writer.write_all(&session.output).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            session.output.clear();
        }
        if session.is_closed() {
            let _ = writer.shutdown().await;
            return;
        }
        match tokio::time::timeout(IDLE, reader.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => session.input(&buf[..n]),
            _ => {
                session.eof();
                return;
            }
        }
    }
}
