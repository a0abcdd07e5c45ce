//! Where policy files come from: a directory on disk, files in memory, or
//! either with some files replaced or removed (what `policy.Replace` and
//! `policy.Remove` validate before writing).
//!
//! Files are named by *keys*: `""` is the policy root, `"30-user.policy"` a
//! file in it, `"include/extra"` a file below it; a key starting with `/` is
//! an absolute path (only a [`DirSource`] can read those).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// What a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Nothing.
    Missing,
    /// A regular file (after following symlinks).
    File,
    /// A directory (after following symlinks).
    Dir,
    /// Something else (a FIFO, a socket, a device...).
    Other,
}

/// A tree of policy files.
pub trait Source {
    /// What `key` names.
    fn kind(&self, key: &str) -> EntryKind;
    /// Reads the file at `key`, but never more than `limit + 1` bytes (so a
    /// caller can tell that it is larger than `limit`).
    fn read(&self, key: &str, limit: usize) -> io::Result<Vec<u8>>;
    /// The names of the entries directly in directory `key`, with their kind
    /// (no order promised). At most `limit + 1` entries are returned.
    fn list(&self, key: &str, limit: usize) -> io::Result<Vec<(String, EntryKind)>>;
}

/// Joins `path` (as written in a directive) to the directory key `base`
/// and normalises it like `pathlib`: empty and `.` components vanish, `..`
/// removes the previous one. Returns `None` when a relative path climbs
/// above the policy root.
pub fn join_key(base: &str, path: &str) -> Option<String> {
    let absolute = path.starts_with('/') || base.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    let start = if path.starts_with('/') { "" } else { base };
    for comp in start.split('/').chain(path.split('/')) {
        match comp {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() && !absolute {
                    return None;
                }
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    Some(if absolute {
        format!("/{joined}")
    } else {
        joined
    })
}

/// The policy directory on disk (for example `/etc/qubes/policy.d`).
#[derive(Debug, Clone)]
pub struct DirSource {
    root: PathBuf,
}

impl DirSource {
    /// A source rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        if key.starts_with('/') {
            PathBuf::from(key)
        } else if key.is_empty() {
            self.root.clone()
        } else {
            self.root.join(key)
        }
    }
}

fn kind_of(meta: &std::fs::Metadata) -> EntryKind {
    if meta.is_file() {
        EntryKind::File
    } else if meta.is_dir() {
        EntryKind::Dir
    } else {
        EntryKind::Other
    }
}

impl Source for DirSource {
    fn kind(&self, key: &str) -> EntryKind {
        match std::fs::metadata(self.path(key)) {
            Ok(m) => kind_of(&m),
            Err(_) => EntryKind::Missing,
        }
    }

    fn read(&self, key: &str, limit: usize) -> io::Result<Vec<u8>> {
        let file = std::fs::File::open(self.path(key))?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        // Sized from the file's length (capped), so one read usually does.
        let size = usize::try_from(meta.len()).unwrap_or(usize::MAX).min(limit);
        let mut buf = Vec::with_capacity(size.saturating_add(1));
        file.take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
            .read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn list(&self, key: &str, limit: usize) -> io::Result<Vec<(String, EntryKind)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.path(key))? {
            if out.len() > limit {
                break;
            }
            let entry = entry?;
            // Follow symlinks, as the reference's `is_file()` does; the
            // directory entry's own type saves a stat for everything else.
            let ft = entry.file_type()?;
            let kind = if ft.is_symlink() {
                match std::fs::metadata(entry.path()) {
                    Ok(m) => kind_of(&m),
                    Err(_) => EntryKind::Missing,
                }
            } else if ft.is_file() {
                EntryKind::File
            } else if ft.is_dir() {
                EntryKind::Dir
            } else {
                EntryKind::Other
            };
            out.push((entry.file_name().to_string_lossy().into_owned(), kind));
        }
        Ok(out)
    }
}

/// Policy files held in memory: a map from key to content, plus empty
/// directories. Every parent directory of a file exists.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeSet<String>,
}

fn parents(key: &str) -> impl Iterator<Item = &str> {
    key.char_indices()
        .filter(|&(_, c)| c == '/')
        .filter_map(move |(i, _)| key.get(..i))
        .filter(|p| !p.is_empty())
}

impl MemorySource {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a file. `key` is normalised with [`join_key`].
    pub fn insert_file(&mut self, key: &str, content: impl Into<Vec<u8>>) -> &mut Self {
        let key = join_key("", key).unwrap_or_else(|| key.to_owned());
        for p in parents(&key) {
            self.dirs.insert(p.to_owned());
        }
        self.files.insert(key, content.into());
        self
    }

    /// Adds a directory (and its parents).
    pub fn insert_dir(&mut self, key: &str) -> &mut Self {
        let key = join_key("", key).unwrap_or_else(|| key.to_owned());
        for p in parents(&key) {
            self.dirs.insert(p.to_owned());
        }
        if !key.is_empty() {
            self.dirs.insert(key);
        }
        self
    }

    /// Builds a tree from `(key, content)` pairs.
    pub fn from_files<K: AsRef<str>, V: Into<Vec<u8>>>(
        files: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut s = Self::new();
        for (k, v) in files {
            s.insert_file(k.as_ref(), v);
        }
        s
    }
}

impl Source for MemorySource {
    fn kind(&self, key: &str) -> EntryKind {
        if key.is_empty() || self.dirs.contains(key) {
            EntryKind::Dir
        } else if self.files.contains_key(key) {
            EntryKind::File
        } else {
            EntryKind::Missing
        }
    }

    fn read(&self, key: &str, limit: usize) -> io::Result<Vec<u8>> {
        let data = self
            .files
            .get(key)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        Ok(data.get(..limit.saturating_add(1)).unwrap_or(data).to_vec())
    }

    fn list(&self, key: &str, limit: usize) -> io::Result<Vec<(String, EntryKind)>> {
        if self.kind(key) != EntryKind::Dir {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        let prefix = if key.is_empty() {
            String::new()
        } else {
            format!("{key}/")
        };
        let direct = |k: &String| -> Option<String> {
            let rest = k.strip_prefix(&prefix)?;
            (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_owned())
        };
        let mut out: Vec<(String, EntryKind)> = Vec::new();
        for k in self.files.keys() {
            if let Some(n) = direct(k) {
                out.push((n, EntryKind::File));
            }
        }
        for k in &self.dirs {
            if let Some(n) = direct(k) {
                out.push((n, EntryKind::Dir));
            }
        }
        out.truncate(limit.saturating_add(1));
        Ok(out)
    }
}

/// Another source with some files replaced (`Some(content)`) or removed
/// (`None`): validates a change before it is written, like `policy.Replace`
/// and `policy.Remove` do.
#[derive(Debug)]
pub struct Overlay<'a, S: Source + ?Sized> {
    base: &'a S,
    changes: BTreeMap<String, Option<Vec<u8>>>,
}

impl<'a, S: Source + ?Sized> Overlay<'a, S> {
    /// No changes yet.
    pub fn new(base: &'a S) -> Self {
        Self {
            base,
            changes: BTreeMap::new(),
        }
    }

    /// Replaces (or creates) the file at `key`.
    pub fn replace(mut self, key: &str, content: impl Into<Vec<u8>>) -> Self {
        let key = join_key("", key).unwrap_or_else(|| key.to_owned());
        self.changes.insert(key, Some(content.into()));
        self
    }

    /// Removes the file at `key`.
    pub fn remove(mut self, key: &str) -> Self {
        let key = join_key("", key).unwrap_or_else(|| key.to_owned());
        self.changes.insert(key, None);
        self
    }

    /// Whether `key` is removed by this overlay.
    pub fn is_removed(&self, key: &str) -> bool {
        matches!(self.changes.get(key), Some(None))
    }
}

impl<S: Source + ?Sized> Source for Overlay<'_, S> {
    fn kind(&self, key: &str) -> EntryKind {
        match self.changes.get(key) {
            Some(Some(_)) => EntryKind::File,
            Some(None) => EntryKind::Missing,
            None => self.base.kind(key),
        }
    }

    fn read(&self, key: &str, limit: usize) -> io::Result<Vec<u8>> {
        match self.changes.get(key) {
            Some(Some(data)) => Ok(data.get(..limit.saturating_add(1)).unwrap_or(data).to_vec()),
            Some(None) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the file is being removed",
            )),
            None => self.base.read(key, limit),
        }
    }

    fn list(&self, key: &str, limit: usize) -> io::Result<Vec<(String, EntryKind)>> {
        let mut out = self.base.list(key, limit)?;
        let prefix = if key.is_empty() {
            String::new()
        } else {
            format!("{key}/")
        };
        for (k, v) in &self.changes {
            let Some(name) = k.strip_prefix(&prefix) else {
                continue;
            };
            if name.is_empty() || name.contains('/') {
                continue;
            }
            out.retain(|(n, _)| n != name);
            if v.is_some() {
                out.push((name.to_owned(), EntryKind::File));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join() {
        assert_eq!(join_key("", "include/a").as_deref(), Some("include/a"));
        assert_eq!(join_key("", "./include//a/").as_deref(), Some("include/a"));
        assert_eq!(join_key("", "include/../a").as_deref(), Some("a"));
        assert_eq!(join_key("", "../a"), None);
        assert_eq!(join_key("", "/etc/x/../y").as_deref(), Some("/etc/y"));
        assert_eq!(join_key("/legacy", "inc").as_deref(), Some("/legacy/inc"));
        assert_eq!(join_key("", ".").as_deref(), Some(""));
    }

    #[test]
    fn memory_listing() {
        let mut m = MemorySource::new();
        m.insert_file("a.policy", "x")
            .insert_file("d/b", "y")
            .insert_dir("e.d");
        let mut l = m.list("", 100).unwrap();
        l.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            l,
            vec![
                ("a.policy".into(), EntryKind::File),
                ("d".into(), EntryKind::Dir),
                ("e.d".into(), EntryKind::Dir)
            ]
        );
        assert_eq!(m.kind("d"), EntryKind::Dir);
        assert_eq!(m.kind("d/b"), EntryKind::File);
        assert_eq!(m.read("d/b", 0).unwrap(), b"y");
        let o = Overlay::new(&m).remove("a.policy").replace("z.policy", "q");
        let mut l = o.list("", 100).unwrap();
        l.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(l.len(), 3);
        assert_eq!(l[2], ("z.policy".into(), EntryKind::File));
        assert_eq!(o.kind("a.policy"), EntryKind::Missing);
    }
}
