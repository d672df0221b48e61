//! What the home side has delivered but the relay has not yet confirmed
//! deleting (proto-spec/fetch.md §6 rule 3): one small file per spool id
//! under `<state>/fetch/delivered/`, naming the recipients delivered.
//!
//! With it, a run that stops between the local MTA's 250 and the relay's
//! reply to DELETE does not deliver again: the next run finds the id here,
//! skips those recipients and sends DELETE. Files are written to a
//! temporary name, `fsync`ed, renamed into place and the directory
//! `fsync`ed, so a crash leaves the old list or the new one.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::xfetch::valid_id;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("fetch journal {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fetch journal: {0:?} is not a spool id")]
    BadId(String),
    /// One a line: a recipient with a line end in it, or none at all,
    /// would not read back as itself.
    #[error("fetch journal: {0:?} cannot be written as a recipient")]
    BadRecipient(String),
}

/// The recipients a journal file lists, one a line (CR LF read as LF;
/// empty lines skipped).
pub fn decode(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The text of a journal file listing `recipients`, which [`decode`]
/// reads back as the same set.
pub fn encode(recipients: &BTreeSet<String>) -> Result<String, JournalError> {
    let mut text = String::new();
    for r in recipients {
        if r.is_empty() || r.contains(['\r', '\n']) {
            return Err(JournalError::BadRecipient(r.clone()));
        }
        text.push_str(r);
        text.push('\n');
    }
    Ok(text)
}

#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// The journal under `state_dir`, made if missing.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let dir = state_dir.join("fetch").join("delivered");
        std::fs::create_dir_all(&dir).map_err(|e| Journal::io(&dir, e))?;
        Ok(Journal { dir })
    }

    fn io(path: &Path, source: std::io::Error) -> JournalError {
        JournalError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// The file of `id`; only spool ids, which cannot leave the directory.
    fn path(&self, id: &str) -> Result<PathBuf, JournalError> {
        if valid_id(id) {
            Ok(self.dir.join(id))
        } else {
            Err(JournalError::BadId(id.to_string()))
        }
    }

    /// The recipients of `id` already delivered.
    pub fn delivered(&self, id: &str) -> Result<BTreeSet<String>, JournalError> {
        let path = self.path(id)?;
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(decode(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
            Err(e) => Err(Journal::io(&path, e)),
        }
    }

    /// Records durably that `recipients` of `id` are delivered.
    pub fn record(&self, id: &str, recipients: &BTreeSet<String>) -> Result<(), JournalError> {
        let path = self.path(id)?;
        let tmp = self.dir.join(format!("{id}.tmp"));
        let text = encode(recipients)?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| Journal::io(&path, e))
    }

    /// The relay confirmed the deletion: nothing more to remember.
    pub fn forget(&self, id: &str) -> Result<(), JournalError> {
        let path = self.path(id)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Journal::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_read_forget() {
        let dir = std::env::temp_dir().join(format!("bp-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let j = Journal::open(&dir).unwrap();
        let id = "1764734400.000000.5f3a9c1e7b2d4806.age";
        assert!(j.delivered(id).unwrap().is_empty());
        let set: BTreeSet<String> = ["b@x".to_string(), "a@x".to_string()].into();
        j.record(id, &set).unwrap();
        assert_eq!(j.delivered(id).unwrap(), set);
        j.forget(id).unwrap();
        j.forget(id).unwrap();
        assert!(j.delivered(id).unwrap().is_empty());
        assert!(matches!(j.delivered("../x"), Err(JournalError::BadId(_))));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// What is written reads back as the same set, or is not written.
    #[test]
    fn recipients_read_back_as_written() {
        for (recipients, written) in [
            (&["a@x", "b@x"][..], Some("a@x\nb@x\n")),
            (&[][..], Some("")),
            (&["a@x\r"][..], None),
            (&["a@x\nb@x"][..], None),
            (&[""][..], None),
        ] {
            let set: BTreeSet<String> = recipients.iter().map(|r| r.to_string()).collect();
            let text = encode(&set).ok();
            assert_eq!(text.as_deref(), written, "{recipients:?}");
            if let Some(text) = text {
                assert_eq!(decode(&text), set);
            }
        }
        assert_eq!(decode("a@x\r\n\r\n\nb@x"), decode("a@x\nb@x\n"));
    }
}
