//! Delivery into a Maildir (the format of qmail's maildir(5), as Dovecot,
//! Postfix and mutt use it), durably: a message counts as delivered only
//! once its file is in `new/` and that rename is on disk, because that is
//! when `fetch` lets the relay delete the sealed copy (proto-spec/fetch.md
//! §6 rule 1).
//!
//! 1. write the whole file under `tmp/` with a name no other delivery uses
//!    (created exclusively), and `fsync` it;
//! 2. `rename` it into `new/` under the same name (atomic within one file
//!    system: a crash leaves the message in `tmp/` or in `new/`, never half);
//! 3. `fsync` `new/`, so the rename survives a crash.
//!
//! The message is stored as it was received (CRLF line ends, not
//! converted), after a `Return-Path:` line with the envelope sender, as a
//! local delivery agent writes it (RFC 5321 §4.4).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Deliveries made by this process, for unique names.
static COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    #[error("maildir {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MaildirError + '_ {
    move |source| MaildirError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One Maildir.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
    /// This host's name as Maildir file names want it.
    host: String,
}

impl Maildir {
    /// Opens the Maildir at `root`, making it (and `tmp/`, `new/`, `cur/`,
    /// mode 0700) if missing.
    pub fn open(root: &Path, host: &str) -> Result<Maildir, MaildirError> {
        use std::os::unix::fs::DirBuilderExt;
        for sub in ["", "tmp", "new", "cur"] {
            let dir = root.join(sub);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io(&dir))?;
        }
        Ok(Maildir {
            root: root.to_path_buf(),
            host: host_part(host),
        })
    }

    /// A name no other delivery uses: the time, the process, a counter
    /// and randomness (maildir(5), Dovecot's `M…P…Q…R…` form), the host.
    fn unique_name(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut random = [0u8; 8];
        let _ = getrandom::fill(&mut random);
        format!(
            "{}.M{}P{}Q{}R{:016x}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            u64::from_be_bytes(random),
            self.host
        )
    }

    /// Delivers one message from `sender` (blocking: run it off the
    /// runtime's workers). Returns the file's path in `new/` once the
    /// delivery is durable.
    pub fn deliver(&self, sender: &str, message: &[u8]) -> Result<PathBuf, MaildirError> {
        let name = self.unique_name();
        let tmp = self.root.join("tmp").join(&name);
        let new_dir = self.root.join("new");
        let new = new_dir.join(&name);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(format!("Return-Path: <{sender}>\r\n").as_bytes())?;
            f.write_all(message)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp)(e));
        }
        if let Err(e) = std::fs::rename(&tmp, &new) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&new)(e));
        }
        std::fs::File::open(&new_dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&new_dir))?;
        Ok(new)
    }
}

/// maildir(5): `/` and `:` in the host part are written `\057` and `\072`.
fn host_part(host: &str) -> String {
    let host = if host.is_empty() { "localhost" } else { host };
    host.replace('/', "\\057").replace(':', "\\072")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bp-maildir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn delivers_into_new_with_the_bytes_as_received() {
        let root = scratch("deliver");
        let md = Maildir::open(&root, "home:example/x").unwrap();
        let message = b"Subject: hi\r\n\r\nbody\r\n.\r\nmore \xff\r\n";
        let a = md.deliver("a@example.org", message).unwrap();
        let b = md.deliver("", message).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(root.join("new")));
        let name = a.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.ends_with(".home\\072example\\057x"), "{name}");
        let mut want = b"Return-Path: <a@example.org>\r\n".to_vec();
        want.extend_from_slice(message);
        assert_eq!(std::fs::read(&a).unwrap(), want);
        assert!(
            std::fs::read(&b)
                .unwrap()
                .starts_with(b"Return-Path: <>\r\n")
        );
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        assert!(root.join("cur").is_dir());
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn an_unusable_root_is_an_error() {
        let root = scratch("unusable");
        std::fs::write(&root, b"a file, not a directory").unwrap();
        assert!(Maildir::open(&root, "h").is_err());
        let _ = std::fs::remove_file(root);
    }
}
