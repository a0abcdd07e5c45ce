//! A policy directory kept loaded, reloaded when its files change (what
//! qrexec's inotify-based policy cache does), detected by comparing the
//! size, modification time and inode of every file under the directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::load::LoadError;
use crate::policy::Policy;

/// Most directory entries looked at to decide whether to reload.
pub const MAX_WATCHED_ENTRIES: usize = 65_536;

/// Deepest subdirectory looked at (the policy directory is depth 0).
pub const MAX_WATCHED_DEPTH: usize = 4;

type Stamp = (PathBuf, u64, Option<SystemTime>, u64);

/// The state of every file that can influence the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<Stamp>);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((path.to_path_buf(), m.len(), m.modified().ok(), m.ino()))
}

fn fingerprint(dir: &Path, extra: &[PathBuf]) -> Fingerprint {
    let mut out = Vec::new();
    out.extend(stamp(dir));
    let mut todo = vec![(dir.to_path_buf(), 0usize)];
    let mut seen = 0usize;
    while let Some((d, depth)) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_WATCHED_ENTRIES {
                break;
            }
            let path = e.path();
            if let Some(s) = stamp(&path) {
                if path.is_dir() && depth < MAX_WATCHED_DEPTH {
                    todo.push((path, depth + 1));
                }
                out.push(s);
            }
        }
    }
    out.extend(extra.iter().filter_map(|p| stamp(p)));
    out.sort();
    Fingerprint(out)
}

/// A policy directory, loaded on first use and reloaded when a file under
/// it (or a file it includes from elsewhere) changes.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("30-a.policy"), "qubes.A * work vault allow\n").unwrap();
/// let mut cache = qpm_policy::PolicyCache::new(dir.path());
/// assert_eq!(cache.get().unwrap().len(), 1);
/// std::fs::write(dir.path().join("40-b.policy"), "qubes.B * work vault deny\n").unwrap();
/// assert_eq!(cache.get().unwrap().len(), 2);
/// ```
#[derive(Debug)]
pub struct PolicyCache {
    dir: PathBuf,
    current: Option<(Fingerprint, Result<Arc<Policy>, LoadError>)>,
}

impl PolicyCache {
    /// A cache of the policy directory `dir`; nothing is read yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            current: None,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The policy as the files are now: the cached one if nothing changed
    /// since the last call, a fresh load otherwise. A policy that does not
    /// load gives its error (and qrexec would refuse every call).
    pub fn get(&mut self) -> Result<Arc<Policy>, LoadError> {
        let extra = self.outside_files();
        let now = fingerprint(&self.dir, &extra);
        if let Some((fp, res)) = &self.current
            && *fp == now
        {
            return res.clone();
        }
        let res = Policy::load_dir(&self.dir).map(|p| {
            p.prepare();
            Arc::new(p)
        });
        // Files included from outside the directory are watched too.
        let now = match &res {
            Ok(p) if p.files().iter().any(|f| f.starts_with('/')) => {
                fingerprint(&self.dir, &absolute_files(p))
            }
            _ => now,
        };
        self.current = Some((now, res.clone()));
        res
    }

    /// Forgets the cached policy: the next [`PolicyCache::get`] loads.
    pub fn invalidate(&mut self) {
        self.current = None;
    }

    fn outside_files(&self) -> Vec<PathBuf> {
        match &self.current {
            Some((_, Ok(p))) => absolute_files(p),
            _ => Vec::new(),
        }
    }
}

fn absolute_files(p: &Policy) -> Vec<PathBuf> {
    p.files()
        .iter()
        .filter(|f| f.starts_with('/'))
        .map(|f| PathBuf::from(&**f))
        .collect()
}
