//! `blackpony inbound` (or another server role) as a process, for what
//! only shows from outside: its log lines, its stderr pipe, its listening
//! socket, its open-file limit, signals. Killed when dropped.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::WAIT;

pub struct Daemon {
    pub addr: SocketAddr,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// The stderr pipe while a test keeps it unread.
    stalled: Option<BufReader<ChildStderr>>,
}

/// How to start it.
#[derive(Default)]
pub struct Start<'a> {
    /// Flags after `inbound --listen 127.0.0.1:0 --hostname mx.test`.
    pub args: &'a [&'a str],
    /// Shell lines run before exec (e.g. `ulimit -n 256`).
    pub shell: &'a str,
    /// Stop reading stderr once it listens (a pipe nobody reads).
    pub stall: bool,
}

impl Daemon {
    pub fn start(start: Start<'_>) -> Daemon {
        Daemon::start_with_stdin(start, None)
    }

    /// Standard input is `stdin` (else /dev/null); `start.shell` may move it
    /// to another fd.
    pub fn start_with_stdin(start: Start<'_>, stdin: Option<std::os::fd::OwnedFd>) -> Daemon {
        Daemon::start_role(
            "inbound --listen 127.0.0.1:0 --hostname mx.test",
            start,
            stdin,
        )
    }

    /// Another role: `role` is the subcommand and its first flags (it must
    /// listen on port 0), `start.args` follow.
    pub fn start_role(role: &str, start: Start<'_>, stdin: Option<std::os::fd::OwnedFd>) -> Daemon {
        // BLACKPONY_BIN: another build (to check a test fails without a fix).
        let bin = std::env::var("BLACKPONY_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_blackpony").to_string());
        let mut script = String::new();
        if !start.shell.is_empty() {
            script.push_str(start.shell);
            script.push_str("; ");
        }
        script.push_str(&format!("exec \"$0\" {role} \"$@\""));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .arg(&bin)
            .args(start.args)
            .stdin(stdin.map_or_else(Stdio::null, Stdio::from))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start blackpony");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let log = Arc::new(Mutex::new(Vec::new()));
        // Up to the `listening on` line: the port.
        let started = Instant::now();
        let addr = loop {
            let mut line = String::new();
            let n = stderr.read_line(&mut line).expect("read log");
            assert!(
                n > 0 && started.elapsed() < WAIT,
                "blackpony did not start: {:?}",
                log.lock().expect("lock")
            );
            log.lock().expect("lock").push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().expect("address");
                break addr.parse::<SocketAddr>().expect("listen address");
            }
        };
        let stalled = if start.stall {
            Some(stderr)
        } else {
            let sink = Arc::clone(&log);
            std::thread::spawn(move || collect(stderr, &sink));
            None
        };
        Daemon {
            addr,
            child,
            log,
            stalled,
        }
    }

    /// Starts reading a stalled stderr again.
    pub fn unstall(&mut self) {
        if let Some(stderr) = self.stalled.take() {
            let sink = Arc::clone(&self.log);
            std::thread::spawn(move || collect(stderr, &sink));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("lock").clone()
    }

    /// Waits (bounded) for a log line containing every one of `parts`.
    pub async fn wait_log(&self, parts: &[&str]) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self
                .log()
                .into_iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return line;
            }
            assert!(
                started.elapsed() < WAIT,
                "no log line with {parts:?} in:\n{}",
                self.log().join("")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits (bounded) for the process to exit.
    pub async fn terminate(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let started = Instant::now();
        while self.child.try_wait().expect("wait").is_none() {
            assert!(started.elapsed() < WAIT * 2, "blackpony did not stop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn collect(mut stderr: BufReader<ChildStderr>, sink: &Mutex<Vec<String>>) {
    loop {
        let mut line = String::new();
        match stderr.read_line(&mut line) {
            Ok(0) | Err(_) => {
                // Whatever is left without a line end.
                let mut rest = String::new();
                let _ = stderr.read_to_string(&mut rest);
                if !rest.is_empty() {
                    sink.lock().expect("lock").push(rest);
                }
                return;
            }
            Ok(_) => sink.lock().expect("lock").push(line),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
