//! Opening the connection to the backend MTA: TCP (with a PROXY header when
//! configured), a Unix socket, or a UCSPI program spawned per client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::process::{Child, Command};

use super::identity::{Identity, connection_preamble, ucspi_env};
use crate::transport::Encryption;

/// Where the backend MTA is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendTarget {
    /// `host:port`, e.g. `127.0.0.1:10025`.
    Tcp(String),
    /// `unix:/path/to/socket`.
    Unix(PathBuf),
    /// A program speaking SMTP on stdin/stdout (`--identity exec`).
    Exec(Vec<String>),
}

impl std::fmt::Display for BackendTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendTarget::Tcp(addr) => write!(f, "{addr}"),
            BackendTarget::Unix(path) => write!(f, "unix:{}", path.display()),
            BackendTarget::Exec(argv) => write!(f, "exec:{}", argv.join(" ")),
        }
    }
}

/// Why the backend could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to backend {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to backend {0}")]
    Timeout(String),
    #[error("cannot start backend command {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("backend command is empty")]
    EmptyCommand,
}

/// One open backend connection, split for reading and writing.
pub struct BackendConn {
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    pub writer: Box<dyn AsyncWrite + Send + Unpin>,
    /// The spawned program in exec mode; killed when this is dropped.
    /// (Boxed: rare, large, and carried by every idle session's task.)
    _child: Option<Box<Child>>,
}

/// What the backend is told about the client when it is opened.
#[derive(Debug, Clone, Copy)]
pub struct ClientFacts<'a> {
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub hostname: &'a str,
    pub identity: Identity,
    pub tls: Option<&'a Encryption>,
}

impl BackendConn {
    pub async fn open(
        target: &BackendTarget,
        facts: ClientFacts<'_>,
        connect_timeout: Duration,
    ) -> Result<BackendConn, BackendError> {
        let preamble = connection_preamble(facts.identity, facts.client, facts.local);
        match target {
            BackendTarget::Tcp(addr) => {
                let tcp = connect(TcpStream::connect(addr.as_str()), addr, connect_timeout).await?;
                let _ = tcp.set_nodelay(true);
                let (reader, writer) = tcp.into_split();
                with_preamble(reader, writer, &preamble, addr).await
            }
            BackendTarget::Unix(path) => {
                let name = target.to_string();
                let unix = connect(UnixStream::connect(path), &name, connect_timeout).await?;
                let (reader, writer) = unix.into_split();
                with_preamble(reader, writer, &preamble, &name).await
            }
            BackendTarget::Exec(argv) => {
                let (program, args) = argv.split_first().ok_or(BackendError::EmptyCommand)?;
                let mut command = Command::new(program);
                command
                    .args(args)
                    .envs(ucspi_env(
                        facts.client,
                        facts.local,
                        facts.hostname,
                        facts.tls,
                    ))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true);
                let mut child = command.spawn().map_err(|source| BackendError::Spawn {
                    command: argv.join(" "),
                    source,
                })?;
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    return Err(BackendError::Spawn {
                        command: argv.join(" "),
                        source: std::io::Error::other("no pipes to the child"),
                    });
                };
                Ok(BackendConn {
                    reader: Box::new(stdout),
                    writer: Box::new(stdin),
                    _child: Some(Box::new(child)),
                })
            }
        }
    }
}

/// Waits for a connection attempt, at most `timeout`.
async fn connect<S>(
    attempt: impl std::future::Future<Output = std::io::Result<S>>,
    name: &str,
    timeout: Duration,
) -> Result<S, BackendError> {
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| BackendError::Timeout(name.to_string()))?
        .map_err(|source| BackendError::Connect {
            target: name.to_string(),
            source,
        })
}

/// A socket's halves as a backend connection, once the PROXY header (if
/// any) is written.
async fn with_preamble<R, W>(
    reader: R,
    mut writer: W,
    preamble: &[u8],
    name: &str,
) -> Result<BackendConn, BackendError>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    write_preamble(&mut writer, preamble, name).await?;
    Ok(BackendConn {
        reader: Box::new(reader),
        writer: Box::new(writer),
        _child: None,
    })
}

async fn write_preamble<W: AsyncWrite + Unpin>(
    writer: &mut W,
    preamble: &[u8],
    target: &str,
) -> Result<(), BackendError> {
    if preamble.is_empty() {
        return Ok(());
    }
    writer
        .write_all(preamble)
        .await
        .map_err(|source| BackendError::Connect {
            target: target.to_string(),
            source,
        })
}
