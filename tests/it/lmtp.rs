//! `blackpony lmtp` as an MTA's program mailer runs it: standard output is
//! the LMTP channel, and sendmail hands the mailer one pipe for stdout and
//! stderr. A start-up failure must reach the MTA as an LMTP reply.

use std::process::{Command, Stdio};

fn bin() -> String {
    std::env::var("BLACKPONY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_blackpony").to_string())
}

/// A broken configuration, stdout and stderr one pipe: exactly one line,
/// a `421 4.3.0` greeting naming the reason, and the config exit code.
#[test]
fn start_up_failure_is_an_lmtp_reply_on_a_shared_pipe() {
    let out = Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" --config /nonexistent/blackpony.toml lmtp 2>&1")
        .arg(bin())
        .stdin(Stdio::null())
        .output()
        .expect("run blackpony lmtp");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("421 4.3.0 blackpony: "), "{text:?}");
    assert!(text.contains("/nonexistent/blackpony.toml"), "{text:?}");
    assert!(
        text.ends_with("\r\n") && text.matches('\n').count() == 1,
        "{text:?}"
    );
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
}

/// With a separate stderr the reason goes there as well, in prose.
#[test]
fn start_up_failure_with_its_own_stderr() {
    let out = Command::new(bin())
        .args(["--config", "/nonexistent/blackpony.toml", "lmtp"])
        .stdin(Stdio::null())
        .output()
        .expect("run blackpony lmtp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.starts_with("421 4.3.0 blackpony: "), "{stdout:?}");
    assert!(stderr.starts_with("blackpony: "), "{stderr:?}");
}
