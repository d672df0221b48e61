//! Per-day record files: one line per event, appended by any number of
//! processes at once (Postfix's pipe(8) starts one `deliver` per message).
//!
//! ```text
//! <dir>/<key>/<YYYY-MM-DD>   one record per line, oldest first
//! ```
//!
//! Each record is written with a single `write(2)` on a file opened with
//! `O_APPEND`: the kernel moves the offset to the end and writes in one
//! step, so records of concurrent writers never overwrite each other and a
//! reader sees whole lines (POSIX `write(2)`, "If the O_APPEND flag …").
//! A crash can leave at most a last line without its newline; readers skip
//! lines that do not parse. These files are statistics, not mail: they are
//! not fsynced.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::StoreError;

/// Longest record accepted: a record is a few hundred bytes; a bound keeps
/// one write a single system call of reasonable size.
pub const MAX_RECORD: usize = 16 * 1024;

/// Records per key and UTC day under one directory.
#[derive(Debug, Clone)]
pub struct DailyRecords {
    dir: PathBuf,
}

impl DailyRecords {
    pub fn new(dir: &Path) -> Self {
        DailyRecords {
            dir: dir.to_path_buf(),
        }
    }

    /// The file of `key` (a domain name) on `day` (`YYYY-MM-DD`).
    fn file(&self, key: &str, day: &str) -> PathBuf {
        self.dir.join(safe_name(key)).join(safe_name(day))
    }

    /// Appends one record (a line without its newline) for `key` on `day`.
    pub fn append(&self, key: &str, day: &str, record: &str) -> Result<(), StoreError> {
        if record.len() > MAX_RECORD || record.contains('\n') {
            return Err(StoreError::Unusable {
                path: self.file(key, day).display().to_string(),
                what: "a record must be one line of at most 16 KiB".into(),
            });
        }
        let path = self.file(key, day);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::io("create directory", parent, e))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io("open", &path, e))?;
        let mut line = Vec::with_capacity(record.len() + 1);
        line.extend_from_slice(record.as_bytes());
        line.push(b'\n');
        // One write call: `write_all` would split a short write into two,
        // which another writer's record could then land between.
        match file.write(&line) {
            Ok(n) if n == line.len() => Ok(()),
            Ok(n) => Err(StoreError::Unusable {
                path: path.display().to_string(),
                what: format!("short write ({n} of {} bytes; disk full?)", line.len()),
            }),
            Err(e) => Err(StoreError::io("append", &path, e)),
        }
    }

    /// Every complete line recorded for `key` on `day` (none if no file).
    pub fn read(&self, key: &str, day: &str) -> Result<Vec<String>, StoreError> {
        let path = self.file(key, day);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("read", &path, e)),
        };
        Ok(complete_lines(&bytes))
    }

    /// The days with records for `key`, oldest first.
    pub fn days(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.dir.join(safe_name(key));
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("list", &dir, e)),
        };
        let mut days: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        days.sort();
        Ok(days)
    }
}

/// The records of one file's bytes: a last line without a newline may
/// still be being written (or was cut by a crash), so only complete lines
/// count; empty lines are skipped.
pub fn complete_lines(bytes: &[u8]) -> Vec<String> {
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) => &bytes[..=end],
        None => &[][..],
    };
    complete
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

/// A key (a domain or host name) as one file name: lower case; anything
/// but letters, digits, `.` and `-` becomes `_`, and a leading dot is not
/// kept (no `..`, no hidden files).
pub(crate) fn safe_name(key: &str) -> String {
    let name: String = key
        .trim_start_matches('.')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() { "_".into() } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bp-daily-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn appends_and_reads_whole_lines() {
        let dir = temp("lines");
        let store = DailyRecords::new(&dir);
        assert_eq!(
            store.read("example.org", "2026-12-03").unwrap(),
            Vec::<String>::new()
        );
        store
            .append("Example.ORG", "2026-12-03", "{\"a\":1}")
            .unwrap();
        store
            .append("example.org", "2026-12-03", "{\"a\":2}")
            .unwrap();
        store
            .append("example.org", "2026-12-04", "{\"a\":3}")
            .unwrap();
        assert_eq!(
            store.read("example.org", "2026-12-03").unwrap(),
            ["{\"a\":1}", "{\"a\":2}"]
        );
        assert_eq!(
            store.days("example.org").unwrap(),
            ["2026-12-03", "2026-12-04"]
        );
        // A torn last line (a crash mid-write) is not read.
        let file = dir.join("example.org").join("2026-12-04");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap()
            .write_all(b"{\"a\":")
            .unwrap();
        assert_eq!(
            store.read("example.org", "2026-12-04").unwrap(),
            ["{\"a\":3}"]
        );
        assert!(
            store
                .append("example.org", "2026-12-03", "two\nlines")
                .is_err()
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn names_stay_inside_the_directory() {
        for (key, name) in [
            ("../../etc", "_.._etc"),
            ("..", "_"),
            ("a/b", "a_b"),
            ("MX.Example.org", "mx.example.org"),
        ] {
            assert_eq!(safe_name(key), name, "{key}");
        }
    }

    #[test]
    fn concurrent_writers_do_not_mix_records() {
        let dir = temp("concurrent");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = DailyRecords::new(&dir);
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let record = format!("{t}-{i}-{}", "x".repeat(500));
                        store.append("d.example", "2026-12-03", &record).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let lines = DailyRecords::new(&dir)
            .read("d.example", "2026-12-03")
            .unwrap();
        assert_eq!(lines.len(), 1600);
        assert!(lines.iter().all(|l| l.len() > 500 && l.ends_with('x')));
        let _ = std::fs::remove_dir_all(dir);
    }
}
