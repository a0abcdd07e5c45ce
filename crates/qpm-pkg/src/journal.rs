//! The management qube's local bookkeeping: a lock so two runs cannot
//! overlap, a journal of the run in progress (which qubes it is creating, so
//! that a re-run after a crash adopts them), and the history log.
//!
//! Layout of the state directory (`$XDG_STATE_HOME/qpm/pkg` by default):
//! `lock`, `journal/<package>.json`, `history.jsonl`.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// Largest journal or history file read back.
pub const MAX_JOURNAL_BYTES: u64 = 1024 * 1024;

/// The state directory, locked for this process's lifetime.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    _lock: File,
}

/// A run in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// Package.
    pub package: String,
    /// `install`, `upgrade`, `remove`.
    pub action: String,
    /// Version applied.
    pub version: Option<String>,
    /// Unix time started.
    pub started: u64,
    /// Qubes this run is creating (a creation may have happened just
    /// before a crash, with the package tag not yet set).
    pub creating: BTreeSet<String>,
    /// Qubes a removal keeps (they leave the package one by one).
    #[serde(default)]
    pub keeping: BTreeSet<String>,
}

/// One history line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix time.
    pub time: u64,
    /// `install`, `upgrade`, `remove`.
    pub action: String,
    /// Package.
    pub package: String,
    /// Version applied (or removed).
    pub version: Option<String>,
    /// Versions before.
    #[serde(default)]
    pub from: Vec<String>,
    /// `ok`, `failed`, `nothing to do`.
    pub result: String,
    /// Steps run.
    pub steps: usize,
    /// Admin API calls (reads, writes).
    pub calls: (u64, u64),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read_small(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    use std::io::Read;
    match File::open(path) {
        Ok(f) => {
            let mut b = Vec::new();
            f.take(MAX_JOURNAL_BYTES)
                .read_to_end(&mut b)
                .map_err(io(path))?;
            Ok(Some(b))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Replaces `path` with `data`: a temporary file beside it, `fsync`, rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(data).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl StateDir {
    /// Opens (creating it, mode 0700) and locks the state directory; fails
    /// at once when another run holds the lock.
    pub fn lock(dir: &Path) -> Result<Self, Error> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("journal"))
            .map_err(io(dir))?;
        let p = dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io(&p))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked(p));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&p)(e)),
        }
        Ok(Self {
            dir: dir.to_owned(),
            _lock: f,
        })
    }

    /// Opens the directory for reading only (history), without the lock.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn journal_path(&self, package: &str) -> PathBuf {
        self.dir.join("journal").join(format!("{package}.json"))
    }

    /// The interrupted run of `package`, if any.
    pub fn journal(&self, package: &str) -> Result<Option<Journal>, Error> {
        let p = self.journal_path(package);
        Ok(read_small(&p)?.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Records the run in progress (written before the first change).
    pub fn begin(&self, j: &Journal) -> Result<(), Error> {
        let p = self.journal_path(&j.package);
        write_atomic(&p, &serde_json::to_vec(j).unwrap_or_default())
    }

    /// The run finished: forget its journal, log it.
    pub fn finish(&self, package: &str, entry: &Entry) -> Result<(), Error> {
        let p = self.journal_path(package);
        if entry.result != "failed" {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&p)(e)),
            }
        }
        append_history(&self.dir, entry)
    }
}

fn append_history(dir: &Path, entry: &Entry) -> Result<(), Error> {
    let p = dir.join("history.jsonl");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .map_err(io(&p))?;
    let mut line = serde_json::to_vec(entry).unwrap_or_default();
    line.push(b'\n');
    f.write_all(&line).map_err(io(&p))?;
    f.sync_all().map_err(io(&p))
}

/// The history, oldest first (malformed lines skipped; the newest
/// [`MAX_JOURNAL_BYTES`] read).
pub fn history(dir: &Path) -> Result<Vec<Entry>, Error> {
    let p = dir.join("history.jsonl");
    let Ok(f) = File::open(&p) else {
        return Ok(Vec::new());
    };
    let len = f.metadata().map_err(io(&p))?.len();
    let b = if len > MAX_JOURNAL_BYTES {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = f;
        f.seek(SeekFrom::Start(len - MAX_JOURNAL_BYTES))
            .map_err(io(&p))?;
        let mut b = Vec::new();
        f.read_to_end(&mut b).map_err(io(&p))?;
        b
    } else {
        read_small(&p)?.unwrap_or_default()
    };
    Ok(b.split(|c| *c == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_journal_history() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::lock(d.path()).unwrap();
        assert!(matches!(StateDir::lock(d.path()), Err(Error::Locked(_))));
        let j = Journal {
            package: "p".into(),
            action: "install".into(),
            creating: ["a".to_owned()].into_iter().collect(),
            ..Journal::default()
        };
        s.begin(&j).unwrap();
        assert_eq!(s.journal("p").unwrap(), Some(j));
        let e = Entry {
            time: 1,
            action: "install".into(),
            package: "p".into(),
            version: Some("1.0.0".into()),
            from: vec![],
            result: "ok".into(),
            steps: 3,
            calls: (4, 5),
        };
        s.finish("p", &e).unwrap();
        assert_eq!(s.journal("p").unwrap(), None);
        assert_eq!(history(d.path()).unwrap(), vec![e]);
        drop(s);
        assert!(StateDir::lock(d.path()).is_ok());
    }
}
