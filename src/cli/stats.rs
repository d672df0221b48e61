//! `blackpony stats`: reads log lines (files, standard input or the journal)
//! and prints how much mail was encrypted (the counting is in `crate::stats`).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::stats::{Stats, report};
use crate::sysexits::Exit;

/// `blackpony stats [FILE...] [--journal] [--json] [--html FILE]`
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Log files to read (`-`: standard input) [default: standard input].
    /// blackpony's own lines are counted; others (a shared mail.log) are skipped.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Read the journal of the blackpony units instead
    /// (`journalctl -o short-iso -u 'blackpony-*'`; short-iso keeps each line's date).
    #[arg(long, conflicts_with = "files")]
    pub journal: bool,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,

    /// Also write one self-contained HTML page (a chart of the encrypted share
    /// per day, the plaintext peers) to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// How many plaintext peers to list.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// The year of syslog dates that have none (`Dec  3 04:15:13`) [default: this year].
    #[arg(long, value_name = "YEAR")]
    pub year: Option<i32>,
}

pub fn run(args: StatsArgs) -> ExitCode {
    let year = args.year.unwrap_or_else(this_year);
    let mut stats = Stats::default();
    if args.journal {
        let child = std::process::Command::new("journalctl")
            .args(["-o", "short-iso", "--no-pager", "-u", "blackpony-*"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => return fail(Exit::Unavailable, &format!("cannot run journalctl: {e}")),
        };
        let read = match child.stdout.take() {
            Some(out) => count(std::io::BufReader::new(out), &mut stats, year),
            None => Ok(()),
        };
        let status = child.wait();
        if let Err(e) = read {
            return fail(Exit::IoErr, &format!("reading journalctl: {e}"));
        }
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => return fail(Exit::Unavailable, &format!("journalctl failed: {s}")),
            Err(e) => return fail(Exit::Unavailable, &format!("journalctl: {e}")),
        }
    } else if args.files.is_empty() {
        if let Err(e) = count(std::io::stdin().lock(), &mut stats, year) {
            return fail(Exit::IoErr, &format!("standard input: {e}"));
        }
    } else {
        for path in &args.files {
            let result = if path.as_os_str() == "-" {
                count(std::io::stdin().lock(), &mut stats, year)
            } else {
                match std::fs::File::open(path) {
                    Ok(f) => count(std::io::BufReader::new(f), &mut stats, year),
                    Err(e) => return fail(Exit::NoInput, &format!("{}: {e}", path.display())),
                }
            };
            if let Err(e) = result {
                return fail(Exit::IoErr, &format!("{}: {e}", path.display()));
            }
        }
    }
    if let Some(path) = &args.html
        && let Err(e) = std::fs::write(path, report::html(&stats, args.top))
    {
        return fail(Exit::IoErr, &format!("{}: {e}", path.display()));
    }
    let out = if args.json {
        report::json(&stats, args.top)
    } else {
        report::text(&stats, args.top)
    };
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::from(Exit::IoErr);
    }
    ExitCode::SUCCESS
}

/// Counts every line; bytes that are not UTF-8 (a peer's name in a log
/// line) are replaced, never an error.
fn count(mut input: impl BufRead, stats: &mut Stats, year: i32) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        let line = String::from_utf8_lossy(&buf);
        stats.add_line(line.trim_end_matches(['\r', '\n']), year);
    }
}

fn this_year() -> i32 {
    crate::log::timestamp_utc(std::time::SystemTime::now())
        .get(..4)
        .and_then(|y| y.parse().ok())
        .unwrap_or(1970)
}

fn fail(code: Exit, message: &str) -> ExitCode {
    eprintln!("blackpony stats: {message}");
    ExitCode::from(code)
}
