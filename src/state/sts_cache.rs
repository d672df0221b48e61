//! The MTA-STS policy cache (RFC 8461 §5.1): one file per policy domain
//! under `<state_dir>/mta-sts/`, so a policy outlives the process that
//! fetched it (`blackpony deliver` is one process per message) and an
//! `enforce` policy still applies when its host cannot be reached.
//!
//! ```text
//! <dir>/<domain>        id: <id>\nfetched: <unix time>\n\n<the policy file as served>
//! <dir>/.<domain>.tmp.<pid>.<n>   being written (state::replace)
//! ```
//!
//! The store keeps the policy file as served, with its id and fetch time,
//! and knows nothing of its syntax: the outbound role parses it
//! (`outbound/sts.rs`) and treats a body that does not parse as no cache.
//!
//! Written as the spool publishes (module docs, rule 1): the whole file
//! under a temporary name, `fsync`, `rename` over the old one, `fsync` of
//! the directory, so a reader sees the old policy or the new one, never a
//! mix; concurrent writers of one domain each rename a complete file.
//!
//! A long-running `blackpony outbound` asks for the policy of a domain with
//! every transaction (§5.1: the TXT record decides whether it is current),
//! and most domains publish none. So what was read or written is also kept
//! in memory for [`REMEMBER_FOR`], and [`StsCache::recent`] answers from
//! there: the caller uses it only when the domain has no `_mta-sts` record
//! now, so a burst to such a domain costs no file read and no hand-off to
//! the blocking pool per message. Where a record exists, the caller reads
//! the file ([`StsCache::get`]) every time, so a policy another process
//! sharing the directory cached is seen at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{StoreError, blocking};

/// One cached policy: the id it was fetched under, when (Unix time), and
/// the policy file as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    pub id: String,
    pub fetched: u64,
    pub body: String,
}

/// How long a policy read from (or written to) the directory is answered
/// from memory.
pub const REMEMBER_FOR: Duration = Duration::from_secs(30);

/// At most this many domains are remembered; past it the memory starts
/// over (a flood of one-off domains must not grow it without bound).
const REMEMBER_AT_MOST: usize = 10_000;

/// Cached MTA-STS policies by domain.
#[derive(Debug, Clone)]
pub struct StsCache {
    dir: PathBuf,
    /// File name -> when it was read or written, and what it held then
    /// (`None`: no file). Damaged files are not remembered.
    remembered: Arc<Mutex<HashMap<String, Remembered>>>,
}

/// When a file was read or written, and what it held then (`None`: no file).
type Remembered = (Instant, Option<StsRecord>);

/// A domain name as a file name: lower case, nothing but what domain names
/// contain, never starting with a dot (those are temporary files).
fn file_name(domain: &str) -> String {
    let name: String = domain
        .trim_end_matches('.')
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '-') => c,
            _ => '_',
        })
        .collect();
    match name.strip_prefix('.') {
        Some(rest) => format!("_{rest}"),
        None => name,
    }
}

impl StsCache {
    /// The cache under `state_dir` (`<state_dir>/mta-sts`).
    pub fn new(state_dir: &Path) -> Self {
        StsCache {
            dir: state_dir.join("mta-sts"),
            remembered: Arc::default(),
        }
    }

    /// What this process last read or wrote for `domain` (`Some(None)`:
    /// no file), if that was less than [`REMEMBER_FOR`] ago; `None` when it
    /// does not know. Another process may have written the file since.
    pub fn recent(&self, domain: &str) -> Option<Option<StsRecord>> {
        let remembered = self.remembered.lock().ok()?;
        let (at, record) = remembered.get(&file_name(domain))?;
        (at.elapsed() < REMEMBER_FOR).then(|| record.clone())
    }

    fn remember(&self, name: String, record: Option<StsRecord>) {
        if let Ok(mut remembered) = self.remembered.lock() {
            if remembered.len() >= REMEMBER_AT_MOST && !remembered.contains_key(&name) {
                remembered.clear();
            }
            remembered.insert(name, (Instant::now(), record));
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached policy of `domain`, if any (expired or not: the caller
    /// decides). A file that does not parse is an error, not "no policy":
    /// the caller logs it and goes on as without a cache.
    pub async fn get(&self, domain: &str) -> Result<Option<StsRecord>, StoreError> {
        let name = file_name(domain);
        let path = self.dir.join(&name);
        let record = blocking(move || {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(StoreError::io("read", &path, e)),
            };
            decode(&text).map(Some).ok_or_else(|| StoreError::Unusable {
                path: path.display().to_string(),
                what: "not a cached MTA-STS policy (damaged?)".into(),
            })
        })
        .await?;
        self.remember(name, record.clone());
        Ok(record)
    }

    /// Stores `policy` as the one of `domain`, replacing the old one
    /// atomically and durably.
    pub async fn put(&self, domain: &str, policy: &StsRecord) -> Result<(), StoreError> {
        let dir = self.dir.clone();
        let name = file_name(domain);
        let text = encode(policy);
        let file = name.clone();
        let written = blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::io("create", &dir, e))?;
            let path = dir.join(&file);
            super::replace::replace(&path, text.as_bytes(), 0o644)
                .map_err(|e| StoreError::io("replace", &path, e))
        })
        .await;
        // Remembered even when the write failed: the caller applies the
        // policy now either way, and fetching it again per message would
        // hammer the policy host.
        self.remember(name, Some(policy.clone()));
        written
    }
}

pub(crate) fn encode(policy: &StsRecord) -> String {
    format!(
        "id: {}\nfetched: {}\n\n{}",
        policy.id, policy.fetched, policy.body
    )
}

pub(crate) fn decode(text: &str) -> Option<StsRecord> {
    let (head, body) = text.split_once("\n\n")?;
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
    };
    // Only an id the TXT record could have given (RFC 8461 §3.1): what
    // else is there (a CR left by an editor, say) would not survive a
    // rewrite and never equals the record's id.
    let id = field("id")?;
    if !valid_id(id) {
        return None;
    }
    Some(StsRecord {
        id: id.to_string(),
        fetched: field("fetched")?.parse().ok()?,
        body: body.to_string(),
    })
}

/// A policy id (RFC 8461 §3.1, `sts-id`): 1 to 32 letters and digits. The
/// `_mta-sts` TXT parser (`outbound/sts.rs`) and the cache files share it,
/// so a cached id is always one a record could carry.
pub fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(id: &str, mode: &str) -> StsRecord {
        StsRecord {
            id: id.into(),
            fetched: 1_700_000_000,
            body: format!(
                "version: STSv1\r\nmode: {mode}\r\nmx: mx.example.org\r\nmax_age: 600\r\n"
            ),
        }
    }

    #[tokio::test]
    async fn policies_round_trip_and_replace() {
        let dir = std::env::temp_dir().join(format!("bp-sts-cache-{}", std::process::id()));
        let cache = StsCache::new(&dir);
        assert_eq!(cache.get("example.org").await.unwrap(), None);
        cache
            .put("Example.ORG.", &cached("1", "testing"))
            .await
            .unwrap();
        assert_eq!(
            cache.get("example.org").await.unwrap(),
            Some(cached("1", "testing"))
        );
        cache
            .put("example.org", &cached("2", "enforce"))
            .await
            .unwrap();
        assert_eq!(
            cache.get("example.org").await.unwrap(),
            Some(cached("2", "enforce"))
        );
        // Only the policy file is left: no temporary files.
        let names: Vec<_> = std::fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["example.org"]);
        // A damaged file is an error, not "no policy".
        std::fs::write(cache.dir().join("example.org"), "garbage").unwrap();
        assert!(cache.get("example.org").await.is_err());
        // What was last read well is still recent...
        assert_eq!(
            cache.recent("example.org"),
            Some(Some(cached("2", "enforce")))
        );
        // ...a missing file is recent as missing, even when another process
        // writes one meanwhile, which `get` sees...
        let fresh = StsCache::new(&dir);
        assert_eq!(fresh.recent("other.example"), None);
        assert_eq!(fresh.get("other.example").await.unwrap(), None);
        StsCache::new(&dir)
            .put("other.example", &cached("3", "testing"))
            .await
            .unwrap();
        assert_eq!(fresh.recent("other.example"), Some(None));
        assert_eq!(
            fresh.get("other.example").await.unwrap(),
            Some(cached("3", "testing"))
        );
        // ...and what this process wrote is recent at once.
        fresh
            .put("other.example", &cached("4", "enforce"))
            .await
            .unwrap();
        assert_eq!(
            fresh.recent("Other.Example."),
            Some(Some(cached("4", "enforce")))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Found by the state_files fuzz check: an id with a CR read back,
    /// and was written back without it.
    #[test]
    fn damaged_files_do_not_decode() {
        for text in [
            "fetched: 1\nid: abc\r\n\nbody",
            "id: \nfetched: 1\n\nbody",
            "id: a-b\nfetched: 1\n\nbody",
            "id: 123456789012345678901234567890123\nfetched: 1\n\nbody",
            "id: a\nfetched: x\n\nbody",
            "id: a\nfetched: 1\nbody",
        ] {
            assert_eq!(decode(text), None, "{text:?}");
        }
        let good = decode("fetched: 1\nid: abc\n\nbody\n\n").unwrap();
        assert_eq!(decode(&encode(&good)), Some(good));
    }

    #[test]
    fn domain_names_stay_in_the_directory() {
        for (domain, name) in [
            ("example.org", "example.org"),
            ("EXAMPLE.org.", "example.org"),
            ("../etc/passwd", "_._etc_passwd"),
            (".hidden", "_hidden"),
        ] {
            assert_eq!(file_name(domain), name);
        }
    }
}
