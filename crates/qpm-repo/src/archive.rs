//! Package archives: the single-file form of a package directory.
//!
//! An archive (`NAME-VERSION.qpm`) is a gzip-compressed ustar archive of the
//! package directory, built to be **reproducible**: the same directory gives
//! the same bytes on any machine. Entries are sorted by path, directories
//! come with their own entry, every header has mtime 0, uid and gid 0, owner
//! `root:root`, mode `0755` (directories and executable files) or `0644`, no
//! extended attributes, no PAX or GNU extension headers; the gzip header has
//! mtime 0, no file name and OS byte 255. Names starting with `.` (`.git`,
//! editor files) are left out. Symlinks, devices, FIFOs and sockets in the
//! package directory are refused, as are paths longer than ustar's 255 bytes.
//!
//! [`unpack`] is the other side and treats its input as hostile: it accepts
//! only what [`build`] writes (ustar regular files and directories), refuses
//! links, devices, extension headers, setuid/setgid/sticky modes, absolute
//! paths, `..`, `.`, empty and control-character components and duplicates,
//! bounds compressed size, unpacked size, entry count, file size, path length
//! and depth ([`Limits`]), and writes only under a directory it creates
//! itself. Every directory and file is created through [`qpm_fs::Root`] on
//! the handle of that directory (`openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`, files
//! with `O_CREAT | O_EXCL | O_NOFOLLOW`), so nothing can be written outside
//! it even if the tree changed under it. On any error the directory is
//! removed.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::Error;

/// File name extension of package archives.
pub const EXTENSION: &str = "qpm";

/// Limits applied when unpacking an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest compressed archive, in bytes.
    pub max_archive_bytes: u64,
    /// Largest sum of file sizes once unpacked.
    pub max_unpacked_bytes: u64,
    /// Largest single file.
    pub max_file_bytes: u64,
    /// Most entries (files and directories).
    pub max_entries: usize,
    /// Most path components.
    pub max_depth: usize,
    /// Longest path, in bytes (ustar allows 255).
    pub max_path_bytes: usize,
}

/// Default [`Limits`]: generous for a package (a manifest, policy files and
/// a few configuration files), small enough that a hostile archive cannot
/// fill the management qube's disk.
pub const DEFAULT_LIMITS: Limits = Limits {
    max_archive_bytes: 64 << 20,
    max_unpacked_bytes: 256 << 20,
    max_file_bytes: 64 << 20,
    max_entries: 4096,
    max_depth: 16,
    max_path_bytes: 255,
};

impl Default for Limits {
    fn default() -> Self {
        DEFAULT_LIMITS
    }
}

/// What an unpacked archive held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Regular files written.
    pub files: usize,
    /// Directories created.
    pub dirs: usize,
    /// Sum of file sizes.
    pub bytes: u64,
}

fn arch(path: &str, reason: impl Into<String>) -> Error {
    Error::Archive {
        entry: path.escape_debug().to_string(),
        reason: reason.into(),
    }
}

fn io_at(op: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

struct Item {
    rel: String,
    full: PathBuf,
    dir: bool,
    exec: bool,
    size: u64,
}

/// Walks a package directory (iteratively, bounded by [`DEFAULT_LIMITS`]),
/// refusing anything but regular files and directories.
fn collect(dir: &Path) -> Result<Vec<Item>, Error> {
    use std::os::unix::fs::PermissionsExt as _;
    let limits = DEFAULT_LIMITS;
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new(), 0usize)];
    let mut total = 0u64;
    while let Some((path, rel, depth)) = stack.pop() {
        let rd = std::fs::read_dir(&path).map_err(|e| io_at("read directory", &path, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| io_at("read directory", &path, e))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else {
                return Err(arch(
                    &ent.path().to_string_lossy(),
                    "file name is not UTF-8",
                ));
            };
            if name.starts_with('.') {
                continue;
            }
            let rel = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            check_rel(&rel, &limits)?;
            let full = ent.path();
            let md = std::fs::symlink_metadata(&full).map_err(|e| io_at("stat", &full, e))?;
            let ft = md.file_type();
            if ft.is_dir() {
                if depth + 1 >= limits.max_depth {
                    return Err(arch(&rel, "directory nesting too deep"));
                }
                stack.push((full.clone(), rel.clone(), depth + 1));
                out.push(Item {
                    rel,
                    full,
                    dir: true,
                    exec: true,
                    size: 0,
                });
            } else if ft.is_file() {
                let mode = md.permissions().mode();
                if mode & 0o7000 != 0 {
                    return Err(arch(&rel, "setuid, setgid or sticky bit set"));
                }
                if md.len() > limits.max_file_bytes {
                    return Err(arch(&rel, "file too large"));
                }
                total = total.saturating_add(md.len());
                out.push(Item {
                    rel,
                    full,
                    dir: false,
                    exec: mode & 0o111 != 0,
                    size: md.len(),
                });
            } else {
                return Err(arch(
                    &rel,
                    "not a regular file or directory (symlinks, devices, FIFOs and sockets are \
                     not allowed in a package)",
                ));
            }
            if out.len() > limits.max_entries {
                return Err(arch(name, "too many files"));
            }
        }
    }
    if total > limits.max_unpacked_bytes {
        return Err(arch("", "package too large"));
    }
    out.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    Ok(out)
}

/// Builds the reproducible archive of the package directory `dir` into
/// `out`, after validating its manifest. Returns the manifest.
pub fn build<W: Write>(dir: &Path, out: W) -> Result<qpm_pkg::manifest::Manifest, Error> {
    let manifest = qpm_pkg::manifest::load_dir(dir).map_err(|source| Error::Manifest {
        path: dir.to_owned(),
        source,
    })?;
    let items = collect(dir)?;
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(out, flate2::Compression::new(9));
    let mut tar = tar::Builder::new(gz);
    for it in &items {
        let mut h = tar::Header::new_ustar();
        h.set_path(&it.rel)
            .map_err(|e| arch(&it.rel, e.to_string()))?;
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("root")
            .map_err(|e| arch(&it.rel, e.to_string()))?;
        h.set_groupname("root")
            .map_err(|e| arch(&it.rel, e.to_string()))?;
        h.set_mode(if it.exec { 0o755 } else { 0o644 });
        if it.dir {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_cksum();
            tar.append(&h, io::empty())
                .map_err(|e| io_at("write archive", &it.full, e))?;
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(it.size);
            h.set_cksum();
            let f = std::fs::File::open(&it.full).map_err(|e| io_at("open", &it.full, e))?;
            // A file that grew since it was measured must not make the
            // header lie: read exactly `size` bytes and check.
            let mut counted = CountingReader::new(f.take(it.size));
            tar.append(&h, &mut counted)
                .map_err(|e| io_at("write archive", &it.full, e))?;
            if counted.count != it.size {
                return Err(arch(&it.rel, "file changed while it was archived"));
            }
        }
    }
    let gz = tar
        .into_inner()
        .map_err(|e| io_at("write archive", dir, e))?;
    gz.finish().map_err(|e| io_at("write archive", dir, e))?;
    Ok(manifest)
}

/// [`build`] into memory.
pub fn build_bytes(dir: &Path) -> Result<(qpm_pkg::manifest::Manifest, Vec<u8>), Error> {
    let mut v = Vec::new();
    let m = build(dir, &mut v)?;
    Ok((m, v))
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R> CountingReader<R> {
    fn new(inner: R) -> Self {
        Self { inner, count: 0 }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count = self.count.saturating_add(n as u64);
        Ok(n)
    }
}

/// A reader that fails once more than `limit` bytes went through it.
struct LimitReader<R> {
    inner: R,
    left: u64,
    what: &'static str,
}

impl<R: Read> Read for LimitReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let n64 = n as u64;
        if n64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("{} larger than the limit", self.what),
            ));
        }
        self.left -= n64;
        Ok(n)
    }
}

/// Checks one relative entry path against the rules and `limits`.
fn check_rel(rel: &str, limits: &Limits) -> Result<(), Error> {
    if rel.is_empty() {
        return Err(arch(rel, "empty path"));
    }
    if rel.len() > limits.max_path_bytes {
        return Err(arch(rel, "path too long"));
    }
    if rel.starts_with('/') {
        return Err(arch(rel, "absolute path"));
    }
    let mut depth = 0usize;
    for c in rel.split('/') {
        depth += 1;
        match c {
            "" => return Err(arch(rel, "empty path component")),
            "." | ".." => return Err(arch(rel, "`.` or `..` in path")),
            _ => {}
        }
        if c.chars().any(|ch| ch.is_control() || ch == '\\') {
            return Err(arch(rel, "control character or backslash in path"));
        }
    }
    if depth > limits.max_depth {
        return Err(arch(rel, "path too deep"));
    }
    Ok(())
}

/// Unpacks a package archive read from `reader` into `dest`, which must not
/// exist yet: it is created (mode 0700) and removed again on any error.
pub fn unpack<R: Read>(reader: R, dest: &Path, limits: &Limits) -> Result<Unpacked, Error> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dest)
        .map_err(|e| io_at("create directory", dest, e))?;
    let r = unpack_into(reader, dest, limits);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    r
}

fn unpack_into<R: Read>(reader: R, dest: &Path, limits: &Limits) -> Result<Unpacked, Error> {
    let root = qpm_fs::Root::open(dest).map_err(|e| Error::Io {
        op: "open",
        path: dest.to_owned(),
        source: io::Error::other(e.to_string()),
    })?;
    let compressed = LimitReader {
        inner: reader,
        left: limits.max_archive_bytes,
        what: "archive",
    };
    // Headers take 512 bytes an entry, data is padded to 512: bound the
    // decompressed stream accordingly (plus the two end blocks).
    let overhead = (limits.max_entries as u64 + 2).saturating_mul(1024);
    let decompressed = LimitReader {
        inner: GzDecoder::new(compressed),
        left: limits.max_unpacked_bytes.saturating_add(overhead),
        what: "unpacked archive",
    };
    let mut ar = tar::Archive::new(decompressed);
    let entries = ar
        .entries()
        .map_err(|e| arch("", format!("not a package archive: {e}")))?
        .raw(true);
    let mut stats = Unpacked::default();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    let mut files: BTreeSet<String> = BTreeSet::new();
    let mut count = 0usize;
    for entry in entries {
        let mut entry = entry.map_err(|e| arch("", format!("not a package archive: {e}")))?;
        count += 1;
        if count > limits.max_entries {
            return Err(Error::TooLarge {
                what: "archive entries".into(),
                limit: limits.max_entries as u64,
            });
        }
        let h = entry.header();
        if h.as_ustar().is_none() {
            return Err(arch(
                "",
                "not a ustar header (PAX, GNU and old formats are refused)",
            ));
        }
        let raw = h.path_bytes().into_owned();
        let Ok(path) = String::from_utf8(raw) else {
            return Err(arch("", "path is not UTF-8"));
        };
        let kind = h.entry_type();
        let mode = h.mode().map_err(|e| arch(&path, e.to_string()))?;
        let size = h.size().map_err(|e| arch(&path, e.to_string()))?;
        if mode & 0o7000 != 0 {
            return Err(arch(&path, "setuid, setgid or sticky bit set"));
        }
        let is_dir = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => false,
            tar::EntryType::Directory => true,
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(arch(&path, "links are not allowed in a package"));
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(arch(
                    &path,
                    "devices and FIFOs are not allowed in a package",
                ));
            }
            other => {
                return Err(arch(
                    &path,
                    format!("entry type {:?} is not allowed", other.as_byte() as char),
                ));
            }
        };
        let rel = if is_dir {
            path.strip_suffix('/').unwrap_or(&path)
        } else {
            path.as_str()
        };
        check_rel(rel, limits)?;
        let rel = rel.to_owned();
        if dirs.contains(&rel) || files.contains(&rel) {
            return Err(arch(&rel, "duplicate entry"));
        }
        let rp = qpm_fs::RelPath::new(&rel).map_err(|e| arch(&rel, e.to_string()))?;
        let parent = rp.parent();
        if let Some(p) = &parent {
            let ps = p.as_str();
            if files.contains(ps)
                || ps
                    .match_indices('/')
                    .any(|(i, _)| files.contains(ps.get(..i).unwrap_or("")))
            {
                return Err(arch(&rel, "a file is used as a directory"));
            }
            if !dirs.contains(ps) {
                // Missing parents are created like `mkdir -p`.
                let created = root
                    .create_dirs(p, 0o755, &qpm_fs::DirPolicy::default())
                    .map_err(|e| arch(&rel, format!("cannot create directory: {e}")))?;
                for c in created {
                    dirs.insert(c.as_str().to_owned());
                    stats.dirs += 1;
                    count += 1;
                }
            }
        }
        if is_dir {
            if size != 0 {
                return Err(arch(&rel, "directory entry with data"));
            }
            root.create_dirs(&rp, 0o755, &qpm_fs::DirPolicy::default())
                .map_err(|e| arch(&rel, format!("cannot create directory: {e}")))?;
            dirs.insert(rel);
            stats.dirs += 1;
            continue;
        }
        if size > limits.max_file_bytes {
            return Err(Error::TooLarge {
                what: format!("file `{}` in the archive", rel.escape_debug()),
                limit: limits.max_file_bytes,
            });
        }
        let total = stats.bytes.saturating_add(size);
        if total > limits.max_unpacked_bytes {
            return Err(Error::TooLarge {
                what: "unpacked archive".into(),
                limit: limits.max_unpacked_bytes,
            });
        }
        let perm = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        let mut tmp = root
            .create_temp(parent.as_ref(), perm)
            .map_err(|e| arch(&rel, format!("cannot create file: {e}")))?;
        let copied = tmp.copy_from(&mut entry, size).map_err(|e| match e {
            qpm_fs::Error::Io { source, .. } if source.kind() == io::ErrorKind::FileTooLarge => {
                Error::TooLarge {
                    what: "unpacked archive".into(),
                    limit: limits.max_unpacked_bytes,
                }
            }
            e => arch(&rel, format!("cannot read data: {e}")),
        })?;
        if copied != size {
            return Err(arch(&rel, "archive ends inside this file (truncated)"));
        }
        // The name is new (duplicates were refused above), so this rename
        // never replaces anything.
        tmp.persist_as(rp.file_name())
            .map_err(|e| arch(&rel, format!("cannot write: {e}")))?;
        files.insert(rel);
        stats.files += 1;
        stats.bytes = total;
    }
    // Read the compressed stream to its end, so gzip checks its CRC and
    // length: a truncated or altered archive is refused even when the tar
    // part happened to be complete.
    let mut rest = ar.into_inner();
    io::copy(&mut rest, &mut io::sink())
        .map_err(|e| arch("", format!("damaged or truncated archive: {e}")))?;
    Ok(stats)
}

/// Unpacks the archive file at `archive` into `dest` (which must not exist).
pub fn unpack_file(archive: &Path, dest: &Path, limits: &Limits) -> Result<Unpacked, Error> {
    let f = std::fs::File::open(archive).map_err(|e| io_at("open", archive, e))?;
    let len = f.metadata().map_err(|e| io_at("stat", archive, e))?.len();
    if len > limits.max_archive_bytes {
        return Err(Error::TooLarge {
            what: format!("archive `{}`", archive.display()),
            limit: limits.max_archive_bytes,
        });
    }
    unpack(io::BufReader::new(f), dest, limits)
}

#[cfg(test)]
mod tests;
