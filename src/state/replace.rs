//! Replacing one small state file atomically and durably (rule 1 of the
//! module docs): the whole new content under a temporary name in the same
//! directory (created exclusively), `fsync`, `rename(2)` over the old file,
//! `fsync` of the directory. A reader sees the old file or the new one,
//! never a mix, and after a crash one of the two is there.
//!
//! The temporary name is the file's whole name behind a dot, with the
//! process id and a per-process counter:
//!
//! ```text
//! <dir>/.<name>.tmp.<pid>.<n>
//! ```
//!
//! Two writers never share one: not two files whose names differ only
//! after their last dot (`mx.example.com` and `mx.example.org`, which
//! `Path::with_extension("tmp")` made into one `mx.example.tmp`), not two
//! processes, not two threads. The leading dot keeps it out of listings
//! (state file names never start with one).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes the temporary files of one process.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// The temporary name for a new version of `path`.
fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Replaces `path` with `contents`, atomically and durably; `mode` is the
/// new file's permission bits (before the umask). The temporary file is
/// removed when anything fails.
pub fn replace(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = temporary(path);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Whether `name` (a directory entry) is a temporary file of [`replace`].
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differing_after_the_last_dot_get_their_own_temporary() {
        let dir = Path::new("/state/pins");
        let a = temporary(&dir.join("mx.example.com"));
        let b = temporary(&dir.join("mx.example.org"));
        let a2 = temporary(&dir.join("mx.example.com"));
        assert_ne!(a, b);
        assert_ne!(a, a2, "two writers of one file in one process");
        for t in [&a, &b, &a2] {
            assert_eq!(t.parent(), Some(dir));
            assert!(is_temporary(&t.file_name().unwrap().to_string_lossy()));
        }
        assert!(
            a.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".mx.example.com.tmp.")
        );
        assert!(!is_temporary("mx.example.com"));
    }

    #[test]
    fn replaces_and_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("bp-replace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.b");
        replace(&path, b"one", 0o600).unwrap();
        replace(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        // A directory that does not exist: an error, and no file.
        assert!(replace(&dir.join("no/such"), b"x", 0o600).is_err());
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.b"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
