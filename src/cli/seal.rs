//! `blackpony seal` (the sealed relay's receiving side), `blackpony open`
//! (decryption by a mailbox owner) and `blackpony keygen --age`: flags,
//! the `[seal]` section of the config file, start-up checks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use serde::Deserialize;

use super::error::fail;
use super::values::BareNewlinesArg;
use crate::log;
use crate::pony::keys::{decode_key, fingerprint};
use crate::relay::fetch_server::{self, ListenerConfig};
use crate::relay::seal::{SealKeys, load_identities, open as open_sealed};
use crate::relay::server::{self, MaildirRoot, SealConfig, Store};
use crate::relay::xfetch::FetchKeys;
use crate::server::{Limits, Timeouts};
use crate::smtp::server::Protocol;
use crate::state::FileSpool;
use crate::sysexits::Exit;
use crate::transport::ServerTls;

/// Flags of `blackpony seal`. Each can also be set in the config file's
/// `[seal]` section, spelled with underscores (lists for the repeatable ones).
#[derive(Debug, Args, Default)]
pub struct SealArgs {
    /// Address to accept SMTP clients on (the MX) [default: 0.0.0.0:25].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,

    /// Serve LMTP instead, for an MTA that has done its spam filtering
    /// (Postfix `mailbox_transport = lmtp:unix:PATH`): `unix:PATH` or
    /// `host:port`. One reply per recipient.
    #[arg(long, value_name = "unix:PATH|HOST:PORT")]
    pub lmtp: Option<String>,

    /// Permissions of an LMTP `unix:` socket, in octal [default: 0666].
    #[arg(long, value_name = "OCTAL", value_parser = super::values::parse_octal)]
    pub socket_mode: Option<u32>,

    /// A domain this relay accepts mail for (repeatable). Mail for any
    /// other domain is refused (550 5.7.1): never an open relay.
    #[arg(long = "domain", value_name = "DOMAIN")]
    pub domains: Vec<String>,

    /// The age recipient (age1…) mail is sealed to when its mailbox has no
    /// key of its own (repeatable: a second one for a backup key).
    #[arg(long = "recipient-key", value_name = "AGE1…")]
    pub recipient_keys: Vec<String>,

    /// A mailbox's own age recipient, `alice@example.org=age1…`
    /// (repeatable). Mail to that mailbox is sealed to its keys only, not
    /// the domain's.
    #[arg(long = "mailbox-key", value_name = "ADDRESS=AGE1…")]
    pub mailbox_keys: Vec<String>,

    /// The spool directory (must exist, writable): sealed files are
    /// published into its new/ subdirectory.
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,

    /// With --lmtp: write each recipient's mail into its own Maildir,
    /// DIR/<address>/new/<file>.age, sealed to its own keys.
    #[arg(long, value_name = "DIR")]
    pub maildir_root: Option<PathBuf>,

    /// The name this host gives in its greeting [default: the system host name].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// PEM certificate chain for STARTTLS. Without one a self-signed
    /// certificate for --hostname is made at start.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// A bare CR or LF in a message: `normalize` to CRLF or `reject`
    /// (550 5.6.11) [default: normalize]. Only CRLF.CRLF ends a message.
    #[arg(long, value_enum, value_name = "POLICY")]
    pub bare_newlines: Option<BareNewlinesArg>,

    /// Largest message accepted, in octets (offered as SIZE) [default: 52428800].
    #[arg(long, value_name = "OCTETS")]
    pub max_message_size: Option<u64>,

    /// Octets of messages held in memory by all sessions at once (a message
    /// is sealed from memory, so it is held until it is sealed). Over it a
    /// client gets `452 4.3.1` at RCPT (for its declared SIZE) or `421 4.3.1`
    /// in the middle of a message, and sends again later; a message alone
    /// may exceed it [default: 268435456].
    #[arg(long, value_name = "OCTETS")]
    pub max_message_memory: Option<u64>,

    /// Host key for XPONY (from `blackpony keygen`). With it the MX offers
    /// XPONY to sending blackpony hosts, and the fetch listener proves
    /// itself to the home machine with it.
    #[arg(long, value_name = "FILE")]
    pub host_key: Option<PathBuf>,

    /// How long (seconds) peers should keep this host's key pinned; 0 asks
    /// them not to pin [default: 2592000, 30 days].
    #[arg(long, value_name = "SECONDS")]
    pub xpony_max_age: Option<u32>,

    /// The home machine's XPONY public key (base64, from `blackpony keygen`
    /// at home), allowed to fetch and delete sealed files (repeatable).
    /// Needs --host-key and --fetch-listen.
    #[arg(long = "fetch-key", value_name = "KEY")]
    pub fetch_keys: Vec<String>,

    /// Address of the fetch listener, a port of its own that serves XPONY
    /// and XFETCH only (proto-spec/fetch.md), never mail [default:
    /// 0.0.0.0:2525 when there is a --fetch-key].
    #[arg(long, value_name = "ADDR:PORT")]
    pub fetch_listen: Option<String>,

    #[command(flatten)]
    pub serving: super::serving::ServingArgs,

    #[command(flatten)]
    pub load: super::load::LoadArgs,
}

/// The `[seal]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealFile {
    pub listen: Option<String>,
    pub lmtp: Option<String>,
    pub socket_mode: Option<u32>,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub recipient_keys: Vec<String>,
    #[serde(default)]
    pub mailbox_keys: Vec<String>,
    pub spool: Option<PathBuf>,
    pub maildir_root: Option<PathBuf>,
    pub hostname: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub bare_newlines: Option<BareNewlinesArg>,
    pub max_message_size: Option<u64>,
    pub max_message_memory: Option<u64>,
    pub host_key: Option<PathBuf>,
    pub xpony_max_age: Option<u32>,
    #[serde(default)]
    pub fetch_keys: Vec<String>,
    pub fetch_listen: Option<String>,
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub client_timeout: Option<u64>,
    pub shutdown_timeout: Option<u64>,
    pub listen_backlog: Option<u32>,
    pub max_connections_per_network: Option<usize>,
    pub stress_client_timeout: Option<u64>,
    pub min_data_rate: Option<u64>,
    pub evict_idle: Option<u64>,
}

impl SealFile {
    /// The serving settings of this section, as flags would give them.
    fn serving(&self) -> super::serving::ServingArgs {
        super::serving::ServingArgs {
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            client_timeout: self.client_timeout,
            shutdown_timeout: self.shutdown_timeout,
        }
    }

    /// The load settings of this section, as flags would give them.
    fn load(&self) -> super::load::LoadArgs {
        super::load::LoadArgs {
            listen_backlog: self.listen_backlog,
            max_connections_per_network: self.max_connections_per_network,
            stress_client_timeout: self.stress_client_timeout,
            min_data_rate: self.min_data_rate,
            evict_idle: self.evict_idle,
        }
    }
}

/// The fetch listener, when configured: where, and whom it serves.
struct FetchSetup {
    listen: String,
    keys: FetchKeys,
}

/// A repeatable flag given on the command line replaces the file's list.
fn list(flag: Vec<String>, file: Vec<String>) -> Vec<String> {
    if flag.is_empty() { file } else { flag }
}

/// `blackpony seal`: every setting checked before the listener opens;
/// a bad one is EX_CONFIG (78).
pub fn run(args: SealArgs, file: SealFile, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let load = args.load.clone().or(file.load());
    let serving = args.serving.clone().or(file.serving());
    if let Err(e) = serving.check().and_then(|()| load.check()) {
        return fail(Exit::Usage, &e.to_string());
    }
    let keys = match SealKeys::new(
        &list(args.domains, file.domains),
        &list(args.recipient_keys, file.recipient_keys),
        &list(args.mailbox_keys, file.mailbox_keys),
    ) {
        Ok(k) => Arc::new(k),
        Err(e) => return fail(Exit::Config, &e.to_string()),
    };
    let hostname = args
        .hostname
        .or(file.hostname)
        .unwrap_or_else(super::sys::system_hostname);
    let pony = match args.host_key.clone().or(file.host_key.clone()) {
        Some(path) => {
            match super::values::server_identity(
                &path,
                args.xpony_max_age.or(file.xpony_max_age),
                &hostname,
            ) {
                Ok(identity) => Some(identity),
                Err(e) => return fail(Exit::Config, &format!("--host-key: {e}")),
            }
        }
        None => None,
    };
    let fetch = match fetch_setup(
        list(args.fetch_keys.clone(), file.fetch_keys.clone()),
        args.fetch_listen.clone().or(file.fetch_listen.clone()),
        pony.is_some(),
        args.lmtp.is_some() || file.lmtp.is_some(),
    ) {
        Ok(f) => f,
        Err(e) => return fail(Exit::Config, &e),
    };
    let mut limits = Limits::default();
    let mut timeouts = Timeouts::default();
    let mut shutdown_grace = std::time::Duration::from_secs(30);
    serving.apply(&mut limits, &mut timeouts, &mut shutdown_grace);
    load.apply(&mut limits, &mut timeouts);
    let config = Arc::new(SealConfig {
        hostname: hostname.clone(),
        keys,
        max_message_size: args
            .max_message_size
            .or(file.max_message_size)
            .unwrap_or(50 * 1024 * 1024),
        message_memory: crate::server::memory::MessageMemory::new(
            args.max_message_memory
                .or(file.max_message_memory)
                .unwrap_or(256 * 1024 * 1024),
        ),
        bare_newlines: args
            .bare_newlines
            .or(file.bare_newlines)
            .unwrap_or(BareNewlinesArg::Normalize)
            .into(),
        limits,
        timeouts,
        shutdown_grace,
        pony,
    });
    let lmtp = args.lmtp.or(file.lmtp);
    let maildir_root = args.maildir_root.or(file.maildir_root);
    let spool_dir = args.spool.or(file.spool);
    let tls_files = match (
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return fail(
                Exit::Config,
                "tls_cert and tls_key go together: give both or neither",
            );
        }
    };
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "0.0.0.0:25".to_string());
    let socket_mode = args.socket_mode.or(file.socket_mode).unwrap_or(0o666);

    runtime.block_on(async move {
        let store = match (&lmtp, maildir_root, spool_dir) {
            (Some(_), Some(root), _) => match MaildirRoot::open(root).await {
                Ok(r) => Store::Maildirs(Arc::new(r)),
                Err(e) => return fail(Exit::Config, &format!("--maildir-root {e}")),
            },
            (None, Some(_), _) => {
                return fail(
                    Exit::Config,
                    "--maildir-root needs --lmtp (SMTP mode seals into --spool)",
                );
            }
            (_, None, Some(dir)) => match FileSpool::open(&dir).await {
                Ok(s) => Store::Spool(s),
                Err(e) => return fail(Exit::Config, &format!("--spool {e}")),
            },
            (_, None, None) => {
                return fail(
                    Exit::Config,
                    "--spool DIR is required (where sealed messages are kept)",
                );
            }
        };
        match lmtp {
            Some(target) => match target.strip_prefix("unix:") {
                Some(path) => {
                    let _ = std::fs::remove_file(path);
                    let listener = match tokio::net::UnixListener::bind(path) {
                        Ok(l) => l,
                        Err(e) => {
                            return fail(Exit::OsErr, &format!("cannot listen on {target}: {e}"));
                        }
                    };
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::Permissions::from_mode(socket_mode);
                    if let Err(e) = std::fs::set_permissions(path, mode) {
                        return fail(Exit::OsErr, &format!("cannot set the mode of {path}: {e}"));
                    }
                    serve_on(
                        listener,
                        target.clone(),
                        Protocol::Lmtp,
                        config,
                        store,
                        None,
                        None,
                    )
                    .await;
                    let _ = std::fs::remove_file(path);
                }
                None => {
                    let listener = match tokio::net::TcpListener::bind(&target).await {
                        Ok(l) => l,
                        Err(e) => {
                            return fail(Exit::OsErr, &format!("cannot listen on {target}: {e}"));
                        }
                    };
                    let at = listener.local_addr().map_or(target, |a| a.to_string());
                    serve_on(listener, at, Protocol::Lmtp, config, store, None, None).await;
                }
            },
            None => {
                let tls = match &tls_files {
                    Some((cert, key)) => ServerTls::from_pem_files(cert, key),
                    None => ServerTls::self_signed(&hostname),
                };
                let tls = match tls {
                    Ok(t) => Arc::new(t),
                    Err(e) => return fail(Exit::Config, &e.to_string()),
                };
                let listener = match super::sys::listener(&listen, load.listen_backlog).await {
                    Ok(l) => l,
                    Err(e) => return fail(Exit::OsErr, &e),
                };
                let at = listener.local_addr().map_or(listen, |a| a.to_string());
                let fetch = match (fetch, &store) {
                    (Some(setup), Store::Spool(spool)) => {
                        match FetchListener::bind(setup, &config, spool, load.listen_backlog).await
                        {
                            Ok(f) => Some(f),
                            Err(e) => return fail(Exit::OsErr, &e),
                        }
                    }
                    _ => None,
                };
                // SIGHUP re-reads the certificate, as for inbound.
                super::sys::spawn_reload_on_hup(Arc::clone(&tls));
                serve_on(
                    listener,
                    at,
                    Protocol::Smtp,
                    config,
                    store,
                    Some(tls),
                    fetch,
                )
                .await;
            }
        }
        ExitCode::SUCCESS
    })
}

/// The fetch keys and the fetch listener's address, checked together:
/// fetch needs the host key (the home side pins it) and the spool (not
/// the LMTP mode's Maildirs), and a port of its own.
fn fetch_setup(
    keys: Vec<String>,
    listen: Option<String>,
    host_key: bool,
    lmtp: bool,
) -> Result<Option<FetchSetup>, String> {
    let listen = match (keys.is_empty(), listen) {
        (true, None) => return Ok(None),
        (true, Some(_)) => {
            return Err("--fetch-listen without --fetch-key: no home key may fetch".into());
        }
        (false, None) => format!("0.0.0.0:{}", crate::relay::xfetch::DEFAULT_PORT),
        (false, Some(listen)) => listen,
    };
    let mut parsed = Vec::new();
    for key in &keys {
        match decode_key(key.trim()) {
            Some(k) => parsed.push(k),
            None => {
                return Err(format!(
                    "--fetch-key {key:?}: not a base64 X25519 public key (44 characters, from blackpony keygen)"
                ));
            }
        }
    }
    if !host_key {
        return Err(
            "--fetch-key needs --host-key (the relay's XPONY key, which the home machine pins)"
                .into(),
        );
    }
    if lmtp {
        return Err("--fetch-key serves the --spool of the SMTP relay, not --lmtp".into());
    }
    Ok(Some(FetchSetup {
        listen,
        keys: FetchKeys::new(parsed),
    }))
}

/// The fetch listener, bound, with what it serves.
struct FetchListener {
    listener: tokio::net::TcpListener,
    at: String,
    config: Arc<ListenerConfig>,
    spool: Arc<FileSpool>,
}

impl FetchListener {
    async fn bind(
        setup: FetchSetup,
        seal: &SealConfig,
        spool: &FileSpool,
        backlog: Option<u32>,
    ) -> Result<FetchListener, String> {
        let Some(identity) = seal.pony.clone() else {
            return Err("--fetch-key needs --host-key".into());
        };
        let listener = crate::server::listener::bind(&setup.listen, backlog)
            .await
            .map_err(|e| format!("cannot listen on {} (--fetch-listen): {e}", setup.listen))?;
        let at = listener
            .local_addr()
            .map_or_else(|_| setup.listen.clone(), |a| a.to_string());
        Ok(FetchListener {
            listener,
            at,
            config: Arc::new(ListenerConfig {
                hostname: seal.hostname.clone(),
                identity,
                keys: setup.keys,
                timeouts: seal.timeouts,
            }),
            spool: Arc::new(spool.clone()),
        })
    }
}

/// Logs where `seal` listens, tells systemd it is ready, serves until
/// SIGTERM (the signal handlers exist before READY=1); the fetch listener,
/// if any, beside the MX, both drained at shutdown.
async fn serve_on<L>(
    listener: L,
    at: String,
    protocol: Protocol,
    config: Arc<SealConfig>,
    store: Store,
    tls: Option<Arc<ServerTls>>,
    fetch: Option<FetchListener>,
) where
    L: crate::server::Listen,
    L::Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    log!(
        "listening on {at} protocol={} domains={} {}{}{}",
        protocol.as_str(),
        config.keys.domains().join(","),
        describe(&store),
        tls.as_ref()
            .map(|t| format!(" {}", t.describe()))
            .unwrap_or_default(),
        config
            .pony
            .as_ref()
            .map(|p| format!(" xpony=yes key={}", fingerprint(&p.key.public())))
            .unwrap_or_default()
    );
    if let Store::Spool(spool) = &store {
        warn_of_strays(spool).await;
    }
    super::load::prepare_limits(&config.limits, &config.timeouts);
    // One SIGTERM stops both listeners.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = super::sys::shutdown_signal();
    tokio::spawn(async move {
        signal.await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut ready = at.clone();
    let fetch_task = fetch.map(|f| {
        log!(
            "fetch: listening on {} keys={} spool={}",
            f.at,
            f.config.keys.len(),
            f.spool.dir().display()
        );
        ready = format!("{ready}, fetch on {}", f.at);
        let settings = crate::server::Settings {
            limits: config.limits.clone(),
            timeouts: config.timeouts,
            shutdown_grace: config.shutdown_grace,
            hostname: config.hostname.clone(),
            refusal: None,
        };
        tokio::spawn(fetch_server::run(
            f.listener,
            settings,
            f.config,
            f.spool,
            until_stopped(stopped.clone()),
        ))
    });
    super::notify::ready(&ready);
    server::run(
        listener,
        protocol,
        config,
        store,
        tls,
        until_stopped(stopped),
    )
    .await;
    if let Some(task) = fetch_task {
        let _ = task.await;
    }
}

fn describe(store: &Store) -> String {
    match store {
        Store::Spool(s) => format!("spool={}", s.dir().display()),
        Store::Maildirs(_) => "store=maildirs".into(),
    }
}

/// `blackpony open FILE|DIR --identity KEYFILE`
#[derive(Debug, Args)]
pub struct OpenArgs {
    /// A sealed file, or a directory of them (a spool or a Maildir: its
    /// new/ and cur/ are read when present).
    #[arg(value_name = "FILE|DIR")]
    pub path: PathBuf,

    /// The age identity file (AGE-SECRET-KEY-1… lines, as from
    /// `blackpony keygen --age` or age-keygen).
    #[arg(long, short = 'i', value_name = "KEYFILE")]
    pub identity: PathBuf,

    /// Print the envelope (MAIL FROM, RCPT TO lines and an empty line)
    /// before each message.
    #[arg(long)]
    pub envelope: bool,
}

/// Decrypts and prints. One file: the message alone, byte for byte. A
/// directory: each message after a `==> path <==` line. Exit 1 when any
/// file could not be opened (said on stderr).
pub fn open(args: OpenArgs) -> ExitCode {
    use std::io::Write;
    let identities = match load_identities(&args.identity) {
        Ok(ids) => ids,
        Err(e) => return fail(Exit::Config, &e),
    };
    let (files, many) = match sealed_files(&args.path) {
        Ok(f) => f,
        Err(e) => return fail(Exit::Usage, &format!("{}: {e}", args.path.display())),
    };
    let mut stdout = std::io::stdout().lock();
    let mut failed = false;
    for file in files {
        let opened = std::fs::read(&file)
            .map_err(|e| e.to_string())
            .and_then(|bytes| open_sealed(&identities, &bytes).map_err(|e| e.to_string()));
        let (envelope, message) = match opened {
            Ok(m) => m,
            Err(e) => {
                eprintln!("blackpony: {}: {e}", file.display());
                failed = true;
                continue;
            }
        };
        let mut out = Vec::with_capacity(message.len() + 256);
        if many {
            out.extend_from_slice(format!("==> {} <==\n", file.display()).as_bytes());
        }
        if args.envelope {
            out.extend_from_slice(format!("MAIL FROM:<{}>\r\n", envelope.mail_from).as_bytes());
            for r in &envelope.rcpt_to {
                out.extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&message);
        if stdout.write_all(&out).is_err() {
            return ExitCode::from(Exit::OsErr);
        }
    }
    let _ = stdout.flush();
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The files to open, and whether there may be several.
fn sealed_files(path: &Path) -> std::io::Result<(Vec<PathBuf>, bool)> {
    if !path.is_dir() {
        return Ok((vec![path.to_path_buf()], false));
    }
    let subdirs: Vec<PathBuf> = ["new", "cur"]
        .iter()
        .map(|s| path.join(s))
        .filter(|p| p.is_dir())
        .collect();
    let dirs = if subdirs.is_empty() {
        vec![path.to_path_buf()]
    } else {
        subdirs
    };
    let mut files = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if p.is_file() && !name.starts_with('.') {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok((files, true))
}

/// `blackpony keygen --age`: an age X25519 identity file (mode 0600, in
/// age-keygen's format) and its recipient on standard output.
pub fn keygen_age(out: &Path, force: bool) -> ExitCode {
    use age::secrecy::ExposeSecret;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let identity = age::x25519::Identity::generate();
    let public = identity.to_public().to_string();
    let text = zeroize::Zeroizing::new(format!(
        "# created: {}\n# public key: {public}\n{}\n",
        log::timestamp_utc(std::time::SystemTime::now()),
        identity.to_string().expose_secret()
    ));
    if out.exists() && !force {
        return fail(
            Exit::Config,
            &format!(
                "{} exists; --force replaces it (mail sealed to the old key then needs the old file)",
                out.display()
            ),
        );
    }
    let tmp = out.with_extension("tmp-keygen");
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, out));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return fail(
            Exit::Config,
            &format!("cannot write {}: {e}", out.display()),
        );
    }
    println!("wrote {} (mode 0600)", out.display());
    println!("public key: {public}");
    ExitCode::SUCCESS
}

/// Files in the spool's `new/` that are no spool id are never offered by
/// XFETCH nor read by `open`: say so at start, once per file, rather than
/// let them lie there unseen (proto-spec/fetch.md §4).
async fn warn_of_strays(spool: &FileSpool) {
    match spool.strays().await {
        Ok(strays) => {
            for name in strays {
                log!(
                    "warning: spool: {}/new/{} is not a spool id (1-128 letters, digits, '.', '_', '-', \
                     beginning with a letter or digit): it is never fetched; rename or remove it",
                    spool.dir().display(),
                    name.escape_debug()
                );
            }
        }
        Err(e) => log!("warning: spool: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seal_section_of_the_example_config_parses() {
        let example = include_str!("../../packaging/etc/blackpony.toml");
        let section: String = example
            .lines()
            .skip_while(|l| !l.starts_with("# [seal]"))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .filter(|l| l.contains(" = ") && !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: SealFile = toml::from_str(&section).unwrap();
        assert_eq!(parsed.domains, ["example.org"]);
        assert_eq!(parsed.socket_mode, Some(0o660));
        assert_eq!(parsed.mailbox_keys.len(), 1);
        assert!(toml::from_str::<SealFile>("typo = 1").is_err());
    }
}
