//! A spool of sealed messages: files published atomically and durably,
//! listed oldest first, removed idempotently. The layout and the fsync
//! rules are described in [the module above](super).

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{StoreError, blocking, sync_dir};

/// Longest spool id (proto-spec/fetch.md §4): the home machine names a
/// file by it in `XFETCH DELETE`, so a longer name could never be fetched.
pub const MAX_ID_LEN: usize = 128;

/// The seam a spool is used through: a directory today ([`FileSpool`]), an
/// object store later. Every operation is safe to run concurrently with
/// the others; `publish` is durable when it returns; `remove` of a missing
/// id succeeds.
pub trait Spool: Send + Sync {
    fn publish(&self, sealed: &[u8]) -> impl Future<Output = Result<SpoolId, StoreError>> + Send;
    fn list(&self) -> impl Future<Output = Result<Vec<SpoolId>, StoreError>> + Send;
    fn read(&self, id: &SpoolId) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;
    fn remove(&self, id: &SpoolId) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The name of one spooled file: `<unix-seconds>.<microseconds>.<random>.age`
/// when made here; when read back, any spool id of proto-spec/fetch.md §4:
/// 1 to 128 letters, digits, `.`, `_` and `-`, beginning with a letter or
/// digit, without `..` (so a name can never leave the spool directory,
/// whoever sent it). One rule for the spool and the wire: a file the spool
/// lists is one XFETCH can offer and delete.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpoolId(String);

impl SpoolId {
    /// A fresh name for a file published at `now`.
    pub fn generate(now: SystemTime) -> Result<SpoolId, StoreError> {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| StoreError::Task(format!("getrandom: {e}")))?;
        Ok(SpoolId(format!(
            "{}.{:06}.{:016x}.age",
            since.as_secs(),
            since.subsec_micros(),
            u64::from_be_bytes(random)
        )))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` is a spool id (see the type's docs).
    pub fn is_valid(name: &str) -> bool {
        let b = name.as_bytes();
        !b.is_empty()
            && b.len() <= MAX_ID_LEN
            && b[0].is_ascii_alphanumeric()
            && !name.contains("..")
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    }

    /// The key files are listed by: the time in the name when it has one
    /// (seconds and microseconds as numbers, so a name from 2286 still
    /// sorts after one from 2026), then the name.
    fn sort_key(&self) -> (u64, u64, &str) {
        let mut parts = self.0.splitn(3, '.');
        let secs = parts.next().and_then(|s| s.parse().ok());
        let micros = parts.next().and_then(|s| s.parse().ok());
        match (secs, micros) {
            (Some(s), Some(m)) => (s, m, &self.0),
            _ => (u64::MAX, u64::MAX, &self.0),
        }
    }
}

impl fmt::Display for SpoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SpoolId {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        if SpoolId::is_valid(s) {
            Ok(SpoolId(s.to_string()))
        } else {
            Err(StoreError::BadId(s.chars().take(MAX_ID_LEN).collect()))
        }
    }
}

/// A spool in a local directory (see the [module docs](super)).
#[derive(Debug, Clone)]
pub struct FileSpool {
    dir: PathBuf,
}

impl FileSpool {
    /// Opens the spool at `dir`, which must exist and be writable; makes
    /// `tmp/`, `new/` and `cur/` if missing and removes what a crash left
    /// in `tmp/`.
    pub async fn open(dir: &Path) -> Result<FileSpool, StoreError> {
        let dir = dir.to_path_buf();
        blocking(move || {
            open_blocking(&dir)?;
            Ok(FileSpool { dir })
        })
        .await
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores `sealed` under a new name; when this returns Ok the file is
    /// complete and durable (rule 1 of the module docs).
    pub async fn publish(&self, sealed: &[u8]) -> Result<SpoolId, StoreError> {
        let dir = self.dir.clone();
        let sealed = sealed.to_vec();
        blocking(move || publish_blocking(&dir, &sealed)).await
    }

    /// Every published file, oldest first.
    pub async fn list(&self) -> Result<Vec<SpoolId>, StoreError> {
        let new = self.dir.join("new");
        blocking(move || {
            // Names that are not ours (an editor's backup, a stray dot-file)
            // are not messages.
            let mut ids: Vec<SpoolId> = names_in(&new)?
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect();
            ids.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
            Ok(ids)
        })
        .await
    }

    /// The names in `new/` that are not spool ids, so never listed, never
    /// fetched and never removed: files someone put there by hand (a copy
    /// from another relay, a restore with renamed files). Dot-files are left
    /// out: by the maildir convention they are not messages. The caller
    /// tells the operator; the spool does not guess what they are.
    pub async fn strays(&self) -> Result<Vec<String>, StoreError> {
        let new = self.dir.join("new");
        blocking(move || {
            let mut strays: Vec<String> = names_in(&new)?
                .into_iter()
                .filter(|n| !n.starts_with('.') && !SpoolId::is_valid(n))
                .collect();
            strays.sort();
            Ok(strays)
        })
        .await
    }

    /// The contents of one published file.
    pub async fn read(&self, id: &SpoolId) -> Result<Vec<u8>, StoreError> {
        let path = self.dir.join("new").join(id.as_str());
        let name = id.to_string();
        blocking(move || match std::fs::read(&path) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound(name)),
            Err(e) => Err(StoreError::io("read", &path, e)),
        })
        .await
    }

    /// Removes one published file durably; a missing one is success
    /// (rule 2 of the module docs).
    pub async fn remove(&self, id: &SpoolId) -> Result<(), StoreError> {
        let new = self.dir.join("new");
        let path = new.join(id.as_str());
        blocking(move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(StoreError::io("remove", &path, e)),
            }
            sync_dir(&new)
        })
        .await
    }
}

impl Spool for FileSpool {
    fn publish(&self, sealed: &[u8]) -> impl Future<Output = Result<SpoolId, StoreError>> + Send {
        FileSpool::publish(self, sealed)
    }
    fn list(&self) -> impl Future<Output = Result<Vec<SpoolId>, StoreError>> + Send {
        FileSpool::list(self)
    }
    fn read(&self, id: &SpoolId) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send {
        FileSpool::read(self, id)
    }
    fn remove(&self, id: &SpoolId) -> impl Future<Output = Result<(), StoreError>> + Send {
        FileSpool::remove(self, id)
    }
}

fn open_blocking(dir: &Path) -> Result<(), StoreError> {
    let unusable = |what: String| StoreError::Unusable {
        path: dir.display().to_string(),
        what,
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(unusable("not a directory".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(unusable(
                "does not exist (create it, owned by the user blackpony runs as)".into(),
            ));
        }
        Err(e) => return Err(unusable(format!("cannot be read: {e}"))),
    }
    for sub in ["tmp", "new", "cur"] {
        let path = dir.join(sub);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => return Err(unusable(format!("cannot make {sub}/ in it: {e}"))),
        }
    }
    // Leftovers of writes a crash interrupted: never published, never
    // acknowledged, so nobody is owed them.
    let tmp = dir.join("tmp");
    let entries =
        std::fs::read_dir(&tmp).map_err(|e| unusable(format!("cannot list tmp/: {e}")))?;
    for entry in entries.flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    // Writable? Root passes permission bits, but not a read-only mount;
    // a probe file tells both apart from a working spool.
    let probe = tmp.join(format!(".probe-{}", std::process::id()));
    std::fs::File::create(&probe)
        .and_then(|mut f| f.write_all(b"probe"))
        .map_err(|e| unusable(format!("not writable: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The names of the entries in `dir` (lossy where not UTF-8, which no
/// spool id is).
fn names_in(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

fn publish_blocking(dir: &Path, sealed: &[u8]) -> Result<SpoolId, StoreError> {
    let (tmp_path, id) = create_temp(dir, sealed)?;
    let new = dir.join("new");
    let final_path = new.join(id.as_str());
    if let Err(e) = std::fs::rename(&tmp_path, &final_path) {
        let _ = std::fs::remove_file(&tmp_path);
        return Err(StoreError::io("rename into new/", &final_path, e));
    }
    sync_dir(&new)?;
    Ok(id)
}

/// Writes and fsyncs `tmp/<fresh id>`; retries on the (astronomically
/// unlikely) name collision.
fn create_temp(dir: &Path, sealed: &[u8]) -> Result<(PathBuf, SpoolId), StoreError> {
    let mut attempts = 0;
    loop {
        let id = SpoolId::generate(SystemTime::now())?;
        let path = dir.join("tmp").join(id.as_str());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path);
        let mut file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 3 => {
                attempts += 1;
                continue;
            }
            Err(e) => return Err(StoreError::io("create", &path, e)),
        };
        let written = file.write_all(sealed).and_then(|()| file.sync_all());
        if let Err(e) = written {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(StoreError::io("write", &path, e));
        }
        return Ok((path, id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bp-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn spool_ids_refuse_what_could_leave_the_directory() {
        for bad in [
            "",
            ".",
            "..",
            "../x.age",
            "a/b",
            "/etc/passwd",
            ".hidden",
            "a..b",
            "a\nb",
            "a\0b",
            "a b",
            "a\tb",
            "é.age",
            // Valid file names, but no spool id: XFETCH could never name them.
            "_x.age",
            "-x.age",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(bad.parse::<SpoolId>().is_err(), "{bad:?} accepted");
        }
        for good in [
            "1764734400.000001.00ab00cd00ef0011.age",
            "x",
            "a-b_c.d",
            &"x".repeat(MAX_ID_LEN),
        ] {
            assert_eq!(good.parse::<SpoolId>().unwrap().to_string(), good);
        }
        let made = SpoolId::generate(SystemTime::now()).unwrap();
        assert_eq!(made.to_string().parse::<SpoolId>().unwrap(), made);
    }

    #[test]
    fn ids_sort_by_time_then_name() {
        let mut ids: Vec<SpoolId> = [
            "10000000000.000000.00.age",
            "999999999.999999.ff.age",
            "999999999.000010.aa.age",
            "999999999.000009.zz.age",
            "stray",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        ids.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        let names: Vec<_> = ids.iter().map(SpoolId::as_str).collect();
        assert_eq!(
            names,
            [
                "999999999.000009.zz.age",
                "999999999.000010.aa.age",
                "999999999.999999.ff.age",
                "10000000000.000000.00.age",
                "stray"
            ]
        );
    }

    #[test]
    fn publish_list_read_remove() {
        let dir = scratch("cycle");
        rt().block_on(async {
            let spool = FileSpool::open(&dir).await.unwrap();
            assert!(spool.list().await.unwrap().is_empty());
            let a = spool.publish(b"first").await.unwrap();
            let b = spool.publish(b"second").await.unwrap();
            assert_eq!(spool.list().await.unwrap(), [a.clone(), b.clone()]);
            assert_eq!(spool.read(&b).await.unwrap(), b"second");
            // Nothing is left behind in tmp/ by a publish.
            assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
            spool.remove(&a).await.unwrap();
            spool.remove(&a).await.unwrap(); // idempotent
            assert_eq!(spool.list().await.unwrap(), [b]);
            assert!(matches!(spool.read(&a).await, Err(StoreError::NotFound(_))));
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn open_clears_tmp_and_ignores_strays_in_new() {
        let dir = scratch("reopen");
        rt().block_on(async {
            let spool = FileSpool::open(&dir).await.unwrap();
            let id = spool.publish(b"kept").await.unwrap();
            std::fs::write(dir.join("tmp").join("1.2.3.age"), b"half a mess").unwrap();
            std::fs::write(dir.join("new").join(".stray"), b"x").unwrap();
            std::fs::write(dir.join("new").join("_copied.age"), b"x").unwrap();
            std::fs::write(dir.join("new").join("x".repeat(MAX_ID_LEN + 1)), b"x").unwrap();
            let spool = FileSpool::open(&dir).await.unwrap();
            assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
            assert_eq!(spool.list().await.unwrap(), [id]);
            // What list() leaves out is named for the operator, but for the
            // dot-file, which is nobody's message.
            assert_eq!(
                spool.strays().await.unwrap(),
                ["_copied.age".to_string(), "x".repeat(MAX_ID_LEN + 1)]
            );
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unusable_directories_are_clear_errors() {
        let dir = scratch("bad");
        let file = dir.join("a-file");
        std::fs::write(&file, b"x").unwrap();
        rt().block_on(async {
            let missing = FileSpool::open(&dir.join("missing")).await.unwrap_err();
            assert!(missing.to_string().contains("does not exist"), "{missing}");
            let not_dir = FileSpool::open(&file).await.unwrap_err();
            assert!(not_dir.to_string().contains("not a directory"), "{not_dir}");
            // Read-only even for root: a procfs directory.
            let ro = FileSpool::open(Path::new("/proc/self")).await.unwrap_err();
            assert!(ro.to_string().contains("/proc/self"), "{ro}");
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
