//! Filesystem access rooted in a directory handle: no symlink, `..` or mount
//! escape, and atomic, durable replacement of files.
//!
//! Everything here starts from a [`Root`]: a directory opened once from an
//! ambient path ([`Root::open`], the only place a plain path enters). Every
//! later operation names a [`RelPath`] below it and is resolved by the kernel
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
//! | RESOLVE_NO_XDEV)`, so a path can never leave the root, follow a symlink
//! (anywhere, not only in the last component) or cross into another mount,
//! even if an attacker swaps a directory for a symlink between two calls.
//! Final components are handled with `*at` calls on the parent's handle
//! (`mkdirat`, `renameat`, `unlinkat`, `linkat`), which never follow a
//! symlink in the last component either.
//!
//! [`RelPath`] is validated before it reaches the kernel: UTF-8, no empty,
//! `.` or `..` component, no leading `/`, no NUL or control character, and
//! bounded length and depth ([`MAX_PATH_BYTES`], [`MAX_NAME_BYTES`],
//! [`MAX_DEPTH`]).
//!
//! Durability: [`Root::write_atomic`] writes a temporary file next to the
//! target, `fsync`s it, renames it over the target and `fsync`s the
//! directory. For many files, [`Root::create_temp`] + [`TempFile::finish`]
//! write without syncing, one [`Root::syncfs`] makes the whole batch
//! durable, and [`TempFile`]s are then renamed into place with
//! [`Root::rename`], followed by one directory sync per touched directory.
//!
//! What it trusts: the ambient path given to [`Root::open`]. What it does not:
//! every name below it, and every file and directory an unprivileged process
//! may have changed since the last call.
//!
//! ```
//! # fn main() -> Result<(), qpm_fs::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let root = qpm_fs::Root::open(dir.path())?;
//! let rel = qpm_fs::RelPath::new(".config/app/app.conf")?;
//! root.create_dirs(&rel.parent().unwrap(), 0o755, &qpm_fs::DirPolicy::default())?;
//! root.write_atomic(&rel, b"key = 1\n", 0o644)?;
//! assert_eq!(root.read_limited(&rel, 1024)?, b"key = 1\n");
//! // `..` and absolute paths never become a RelPath.
//! assert!(qpm_fs::RelPath::new("../etc/passwd").is_err());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Longest accepted relative path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest accepted path component, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// Most components accepted in a relative path.
pub const MAX_DEPTH: usize = 32;

/// Prefix of the temporary files this crate creates (they are never left
/// behind by a successful operation; a crash may leave one, which
/// [`Root::remove_stale_temps`] removes).
pub const TEMP_PREFIX: &str = ".qpm-tmp.";

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A path was refused before any system call.
    #[error("invalid path ({reason}): `{path}`")]
    InvalidPath {
        /// The offending path, escaped.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A symlink was found where the path must not have one.
    #[error("refusing to follow a symlink: `{path}`")]
    Symlink {
        /// Path (relative to the root) that met the symlink.
        path: String,
    },
    /// The path would leave the root or cross a mount point.
    #[error("path escapes its root or crosses a mount: `{path}`")]
    Escape {
        /// Path relative to the root.
        path: String,
    },
    /// A path exists with the wrong type (e.g. a FIFO where a file was wanted).
    #[error("not a {expected}: `{path}`")]
    WrongType {
        /// What was expected (`regular file`, `directory`).
        expected: &'static str,
        /// Path relative to the root.
        path: String,
    },
    /// A directory on the way is owned by someone else or writable by others.
    #[error("directory not owned by uid {uid} or writable by others: `{path}`")]
    NotOwned {
        /// Required owner.
        uid: u32,
        /// Path relative to the root.
        path: String,
    },
    /// A file is larger than the caller's limit.
    #[error("file larger than {limit} bytes: `{path}`")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
        /// Path relative to the root.
        path: String,
    },
    /// Any other system call failure.
    #[error("{op} `{path}`: {source}")]
    Io {
        /// The operation (`open`, `rename`, ...).
        op: &'static str,
        /// Path, relative to the root when there is one.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn esc(s: &str) -> String {
    s.escape_debug().to_string()
}

fn io_err(op: &'static str, path: &str, e: Errno) -> Error {
    match e {
        Errno::LOOP => Error::Symlink { path: esc(path) },
        Errno::XDEV => Error::Escape { path: esc(path) },
        _ => Error::Io {
            op,
            path: esc(path),
            source: e.into(),
        },
    }
}

fn std_err(op: &'static str, path: &str, e: std::io::Error) -> Error {
    Error::Io {
        op,
        path: esc(path),
        source: e,
    }
}

/// A validated path relative to a [`Root`]: non-empty UTF-8, `/`-separated,
/// no empty, `.` or `..` component, no leading `/`, no NUL or control
/// character, at most [`MAX_PATH_BYTES`] bytes, [`MAX_NAME_BYTES`] per
/// component and [`MAX_DEPTH`] components.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for RelPath {
    /// Escaped, safe to print on a terminal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_debug())
    }
}

impl RelPath {
    /// Validates raw bytes (e.g. from the wire).
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let shown = || {
            String::from_utf8_lossy(b.get(..b.len().min(200)).unwrap_or(b))
                .escape_debug()
                .to_string()
        };
        let bad = |reason| Error::InvalidPath {
            path: shown(),
            reason,
        };
        if b.is_empty() {
            return Err(bad("empty"));
        }
        if b.len() > MAX_PATH_BYTES {
            return Err(bad("too long"));
        }
        if b.contains(&0) {
            return Err(bad("NUL byte"));
        }
        let s = std::str::from_utf8(b).map_err(|_| bad("not UTF-8"))?;
        Self::new(s)
    }

    /// Validates a string.
    pub fn new(s: &str) -> Result<Self> {
        Self::check(s)?;
        Ok(Self(s.to_owned()))
    }

    /// The checks of [`Self::new`].
    fn check(s: &str) -> Result<()> {
        let bad = |reason| Error::InvalidPath {
            path: esc(s.get(..s.len().min(200)).unwrap_or("")),
            reason,
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.len() > MAX_PATH_BYTES {
            return Err(bad("too long"));
        }
        if s.starts_with('/') {
            return Err(bad("absolute"));
        }
        // Over the bytes (this runs for every entry of every manifest):
        // control characters first (C0 and DEL, and C1 as `C2 80`..`C2 9F`
        // in UTF-8: `char::is_control`), then the components.
        let b = s.as_bytes();
        let control = |(i, &c): (usize, &u8)| {
            c < 0x20
                || c == 0x7f
                || (c == 0xc2 && b.get(i + 1).is_some_and(|n| (0x80..0xa0).contains(n)))
        };
        if b.iter().enumerate().any(control) {
            return Err(bad("control character"));
        }
        let mut depth = 1usize;
        let mut start = 0usize;
        for (i, &c) in b.iter().enumerate() {
            if c == b'/' {
                Self::check_component(b.get(start..i).unwrap_or_default()).map_err(bad)?;
                depth += 1;
                start = i + 1;
            }
        }
        Self::check_component(b.get(start..).unwrap_or_default()).map_err(bad)?;
        if depth > MAX_DEPTH {
            return Err(bad("too deep"));
        }
        Ok(())
    }

    fn check_component(c: &[u8]) -> std::result::Result<(), &'static str> {
        match c {
            b"" => Err("empty component"),
            b"." | b".." => Err("dot component"),
            c if c.len() > MAX_NAME_BYTES => Err("component too long"),
            _ => Ok(()),
        }
    }

    /// The path as a string (unescaped: do not print it to a terminal as is).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Number of components.
    pub fn depth(&self) -> usize {
        self.0.bytes().filter(|&b| b == b'/').count() + 1
    }

    /// The parent path, `None` for a single component.
    pub fn parent(&self) -> Option<Self> {
        self.0.rsplit_once('/').map(|(p, _)| Self(p.to_owned()))
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit_once('/').map_or(self.0.as_str(), |(_, n)| n)
    }

    /// `self/other`, validated again (length and depth: the components of
    /// both are valid already).
    pub fn join(&self, other: &Self) -> Result<Self> {
        self.joined(&other.0, self.depth() + other.depth())
    }

    /// `self/name` for one file name (e.g. from a directory listing),
    /// checked as a component and for length and depth.
    pub fn join_name(&self, name: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidPath {
            path: esc(name.get(..name.len().min(200)).unwrap_or("")),
            reason,
        };
        if name.is_empty() || name == "." || name == ".." {
            return Err(bad("not a single file name"));
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(bad("component too long"));
        }
        if name.contains('/') {
            return Err(bad("not a single file name"));
        }
        if name.chars().any(|c| c.is_control()) {
            return Err(bad("control character"));
        }
        self.joined(name, self.depth() + 1)
    }

    fn joined(&self, rest: &str, depth: usize) -> Result<Self> {
        let len = self.0.len() + 1 + rest.len();
        if len > MAX_PATH_BYTES || depth > MAX_DEPTH {
            let shown: String = format!("{}/{rest}", self.0).chars().take(200).collect();
            return Err(Error::InvalidPath {
                path: esc(&shown),
                reason: if len > MAX_PATH_BYTES {
                    "too long"
                } else {
                    "too deep"
                },
            });
        }
        let mut s = String::with_capacity(len);
        s.push_str(&self.0);
        s.push('/');
        s.push_str(rest);
        Ok(Self(s))
    }

    /// Whether `self` equals `prefix` or lies below it.
    pub fn starts_with(&self, prefix: &Self) -> bool {
        self.0 == prefix.0
            || (self.0.starts_with(&prefix.0)
                && self.0.as_bytes().get(prefix.0.len()) == Some(&b'/'))
    }

    /// `self` without the leading `prefix` (`None` if not below it or equal).
    pub fn strip_prefix(&self, prefix: &Self) -> Option<Self> {
        if !self.starts_with(prefix) || self.0 == prefix.0 {
            return None;
        }
        self.0
            .get(prefix.0.len().saturating_add(1)..)
            .map(|s| Self(s.to_owned()))
    }
}

/// Kind of a filesystem object, as seen without following symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// FIFO, socket, device.
    Other,
}

/// What [`Root::metadata`] reports (from `lstat`-like calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Object kind.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits including setuid/setgid/sticky (`& 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard link count.
    pub nlink: u64,
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i128,
}

#[allow(
    clippy::unnecessary_cast,
    reason = "field widths differ between architectures"
)]
fn meta_from(st: &rustix::fs::Stat) -> Meta {
    let ft = FileType::from_raw_mode(st.st_mode as rustix::fs::RawMode);
    let kind = match ft {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    };
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    Meta {
        kind,
        size: u64::try_from(st.st_size as i64).unwrap_or(0),
        mode: (st.st_mode as u32) & 0o7777,
        uid: st.st_uid as u32,
        gid: st.st_gid as u32,
        nlink: st.st_nlink as u64,
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        mtime_ns: ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime_ns: ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
    }
}

/// A directory listing in one buffer, filled by [`Root::list`] and reused
/// from one directory to the next.
#[derive(Debug, Default)]
pub struct Listing {
    /// The names, one after the other.
    names: Vec<u8>,
    /// Start and length in `names`, and kind, in path order.
    ents: Vec<(usize, usize, Kind)>,
    /// What `getdents` fills.
    buf: Vec<u8>,
}

impl Listing {
    /// Bytes read from the directory per system call.
    const BUF: usize = 32 * 1024;

    /// The entries: raw name (not necessarily UTF-8) and kind, in path
    /// order (see [`Root::list`]).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Kind)> {
        self.ents.iter().map(|&(start, len, kind)| {
            (self.names.get(start..start + len).unwrap_or_default(), kind)
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.ents.len()
    }

    /// Whether the directory was empty.
    pub fn is_empty(&self) -> bool {
        self.ents.is_empty()
    }
}

/// The kind of a directory entry from its type in the listing, or from a
/// `stat` relative to the listed directory when the file system does not
/// give one.
fn entry_kind(ft: FileType, dir: rustix::io::Result<BorrowedFd<'_>>, name: &[u8]) -> Kind {
    match ft {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::Unknown => {
            match dir.and_then(|fd| rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)) {
                Ok(st) => meta_from(&st).kind,
                Err(_) => Kind::Other,
            }
        }
        _ => Kind::Other,
    }
}

/// Ownership rules for existing directories on the way to a file.
#[derive(Debug, Clone, Default)]
pub struct DirPolicy {
    /// When set, every existing directory below the root on the path must be
    /// owned by this uid and not writable by group or others (so no other
    /// user can swap entries while we work).
    pub owner: Option<u32>,
    /// Owner and group given to directories that are created (needs root).
    pub chown: Option<(u32, u32)>,
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A directory handle every operation is rooted at.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
    rel: String,
}

impl AsFd for Root {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Root {
    /// Opens `path` (an ambient, trusted path) as a root. It must be a
    /// directory.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.to_string_lossy();
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open root", &shown, e))?;
        Ok(Self {
            fd,
            path: path.to_owned(),
            rel: String::new(),
        })
    }

    /// Creates `path` (and its parents) with `mode` if missing, then opens it.
    pub fn create_ambient(path: &Path, mode: u32) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|e| std_err("create root", &path.to_string_lossy(), e))?;
        Self::open(path)
    }

    /// The ambient path this root was opened at (for messages only).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ambient path of `rel` below this root (for messages and subprocesses
    /// only; never reopen it for writing).
    pub fn display_path(&self, rel: &RelPath) -> PathBuf {
        self.path.join(rel.as_str())
    }

    fn shown(&self, rel: &str) -> String {
        if self.rel.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.rel)
        }
    }

    fn open_beneath(&self, rel: &str, flags: OFlags, mode: u32) -> Result<OwnedFd> {
        rustix::fs::openat2(
            &self.fd,
            rel,
            // RESOLVE_NO_SYMLINKS covers the last component too (ELOOP).
            flags | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::from_raw_mode(mode),
            RESOLVE,
        )
        .map_err(|e| io_err("open", &self.shown(rel), e))
    }

    /// Opens the parent directory of `rel` (the root itself for a single
    /// component) and returns it with the final name.
    fn parent_of<'a>(&self, rel: &'a RelPath) -> Result<(ParentFd<'_>, &'a str)> {
        match rel.as_str().rsplit_once('/') {
            None => Ok((ParentFd::Root(self.fd.as_fd()), rel.as_str())),
            Some((p, name)) => {
                let fd = self.open_beneath(p, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
                Ok((ParentFd::Owned(fd), name))
            }
        }
    }

    /// Opens a directory below the root as a new root (which inherits the
    /// no-escape rules relative to itself).
    pub fn open_dir(&self, rel: &RelPath) -> Result<Self> {
        let fd = self.open_beneath(rel.as_str(), OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
        Ok(Self {
            fd,
            path: self.path.join(rel.as_str()),
            rel: self.shown(rel.as_str()),
        })
    }

    /// Metadata of `rel` without following a symlink in any component;
    /// `Ok(None)` when it does not exist.
    pub fn metadata(&self, rel: &RelPath) -> Result<Option<Meta>> {
        let (parent, name) = match self.parent_of(rel) {
            Ok(x) => x,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(Error::Io { source, .. })
                if source.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(parent.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(meta_from(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(io_err("stat", &self.shown(rel.as_str()), e)),
        }
    }

    /// [`Self::metadata`] of `name`, one component directly in this
    /// directory (no path to build or check for each file of a listing).
    pub fn metadata_name(&self, name: &str) -> Result<Option<Meta>> {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.len() > MAX_NAME_BYTES
            || name.bytes().any(|b| b == b'/' || b == 0)
        {
            return Err(Error::InvalidPath {
                path: esc(name.get(..name.len().min(200)).unwrap_or("")),
                reason: "not a single file name",
            });
        }
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(meta_from(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(io_err("stat", &self.shown(name), e)),
        }
    }

    /// Metadata of the root directory itself.
    pub fn root_metadata(&self) -> Result<Meta> {
        rustix::fs::fstat(&self.fd)
            .map(|st| meta_from(&st))
            .map_err(|e| io_err("stat", &self.path.to_string_lossy(), e))
    }

    /// Opens a regular file for reading (never a FIFO, device or symlink).
    pub fn open_read(&self, rel: &RelPath) -> Result<std::fs::File> {
        Ok(self.open_read_meta(rel)?.0)
    }

    /// [`Self::open_read`], with the metadata of the opened file.
    pub fn open_read_meta(&self, rel: &RelPath) -> Result<(std::fs::File, Meta)> {
        let fd = self.open_beneath(rel.as_str(), OFlags::RDONLY | OFlags::NONBLOCK, 0)?;
        let st =
            rustix::fs::fstat(&fd).map_err(|e| io_err("stat", &self.shown(rel.as_str()), e))?;
        let m = meta_from(&st);
        if m.kind != Kind::File {
            return Err(Error::WrongType {
                expected: "regular file",
                path: esc(&self.shown(rel.as_str())),
            });
        }
        Ok((std::fs::File::from(fd), m))
    }

    /// Reads a whole regular file, refusing files larger than `max` bytes.
    pub fn read_limited(&self, rel: &RelPath, max: u64) -> Result<Vec<u8>> {
        let (f, m) = self.open_read_meta(rel)?;
        // Sized from the file so the read takes one call, not a doubling
        // series (the limit still bounds it if the file grows).
        let hint = m.size.min(max).saturating_add(1);
        let mut buf = Vec::with_capacity(usize::try_from(hint).unwrap_or(0).min(64 * 1024 * 1024));
        f.take(max.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| std_err("read", &self.shown(rel.as_str()), e))?;
        if u64::try_from(buf.len()).unwrap_or(u64::MAX) > max {
            return Err(Error::TooLarge {
                limit: max,
                path: esc(&self.shown(rel.as_str())),
            });
        }
        Ok(buf)
    }

    /// Creates every missing directory of `rel` (which is a directory path)
    /// with `mode`, never following a symlink. Existing directories are
    /// checked against `policy`. Returns the directories it created, outermost
    /// first.
    pub fn create_dirs(
        &self,
        rel: &RelPath,
        mode: u32,
        policy: &DirPolicy,
    ) -> Result<Vec<RelPath>> {
        let mut created = Vec::new();
        let mut cur = String::new();
        for comp in rel.components() {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(comp);
            let r = RelPath(cur.clone());
            let (parent, name) = self.parent_of(&r)?;
            match rustix::fs::mkdirat(parent.as_fd(), name, Mode::from_raw_mode(mode)) {
                Ok(()) => {
                    let fd = self.open_beneath(&cur, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
                    // mkdir applies the umask; set the exact mode.
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                        .map_err(|e| io_err("chmod", &self.shown(&cur), e))?;
                    if let Some((u, g)) = policy.chown {
                        rustix::fs::fchown(
                            &fd,
                            Some(rustix::fs::Uid::from_raw(u)),
                            Some(rustix::fs::Gid::from_raw(g)),
                        )
                        .map_err(|e| io_err("chown", &self.shown(&cur), e))?;
                    }
                    created.push(r);
                }
                Err(Errno::EXIST) => {
                    let st = rustix::fs::statat(parent.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| io_err("stat", &self.shown(&cur), e))?;
                    let m = meta_from(&st);
                    match m.kind {
                        Kind::Dir => {}
                        Kind::Symlink => {
                            return Err(Error::Symlink {
                                path: esc(&self.shown(&cur)),
                            });
                        }
                        _ => {
                            return Err(Error::WrongType {
                                expected: "directory",
                                path: esc(&self.shown(&cur)),
                            });
                        }
                    }
                    check_owner(policy, &m, &self.shown(&cur))?;
                }
                Err(e) => return Err(io_err("mkdir", &self.shown(&cur), e)),
            }
        }
        Ok(created)
    }

    /// Checks `policy` on the directory this root is (its owner and mode,
    /// through its own handle: the directory that will be used, not a
    /// path looked up again).
    pub fn check_self(&self, policy: &DirPolicy) -> Result<()> {
        let shown = if self.rel.is_empty() { "." } else { &self.rel };
        check_owner(policy, &self.root_metadata()?, shown)
    }

    /// Checks `policy` on every existing directory of `rel` (a directory
    /// path), refusing symlinks and non-directories.
    pub fn check_dirs(&self, rel: &RelPath, policy: &DirPolicy) -> Result<()> {
        let mut cur = String::new();
        for comp in rel.components() {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(comp);
            match self.metadata(&RelPath(cur.clone()))? {
                None => return Ok(()),
                Some(m) if m.kind == Kind::Dir => check_owner(policy, &m, &self.shown(&cur))?,
                Some(m) if m.kind == Kind::Symlink => {
                    return Err(Error::Symlink {
                        path: esc(&self.shown(&cur)),
                    });
                }
                Some(_) => {
                    return Err(Error::WrongType {
                        expected: "directory",
                        path: esc(&self.shown(&cur)),
                    });
                }
            }
        }
        Ok(())
    }

    /// Creates a new, empty temporary file in directory `dir` (the root for
    /// `None`) with `mode`, exclusively (`O_CREAT | O_EXCL | O_NOFOLLOW`).
    pub fn create_temp(&self, dir: Option<&RelPath>, mode: u32) -> Result<TempFile> {
        let dir_fd = match dir {
            None => rustix::fs::openat2(
                &self.fd,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            )
            .map_err(|e| io_err("open", &self.shown("."), e))?,
            Some(d) => self.open_beneath(d.as_str(), OFlags::RDONLY | OFlags::DIRECTORY, 0)?,
        };
        let shown_dir = dir.map_or_else(|| self.shown("."), |d| self.shown(d.as_str()));
        for _ in 0..64 {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let name = format!("{TEMP_PREFIX}{}.{n}.{nanos:x}", std::process::id());
            match rustix::fs::openat(
                &dir_fd,
                name.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode),
            ) {
                Ok(fd) => {
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                        .map_err(|e| io_err("chmod", &shown_dir, e))?;
                    let rel = match dir {
                        None => RelPath(name.clone()),
                        Some(d) => RelPath(format!("{}/{name}", d.as_str())),
                    };
                    return Ok(TempFile {
                        file: Some(std::fs::File::from(fd)),
                        dir: dir_fd,
                        name,
                        rel,
                        persisted: false,
                    });
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(io_err("create temp in", &shown_dir, e)),
            }
        }
        Err(Error::Io {
            op: "create temp in",
            path: esc(&shown_dir),
            source: std::io::Error::other("no free temporary name"),
        })
    }

    /// Creates the regular file `rel` exclusively (`O_CREAT | O_EXCL |
    /// O_NOFOLLOW`, so never through a symlink or over anything) with
    /// exactly `mode`, open for writing. The parent directory must exist.
    pub fn create_new(&self, rel: &RelPath, mode: u32) -> Result<std::fs::File> {
        let (parent, name) = self.parent_of(rel)?;
        let fd = rustix::fs::openat(
            parent.as_fd(),
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| io_err("create", &self.shown(rel.as_str()), e))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
            .map_err(|e| io_err("chmod", &self.shown(rel.as_str()), e))?;
        Ok(std::fs::File::from(fd))
    }

    /// Writes `data` to `rel` atomically and durably: temporary file in the
    /// same directory with `mode`, `fsync`, rename over `rel`, `fsync` of the
    /// directory. The parent directory must exist.
    pub fn write_atomic(&self, rel: &RelPath, data: &[u8], mode: u32) -> Result<()> {
        let parent = rel.parent();
        let mut t = self.create_temp(parent.as_ref(), mode)?;
        t.write_all(data)?;
        t.sync()?;
        let name = rel.file_name().to_owned();
        t.persist_as(&name)?;
        self.sync_dir(parent.as_ref())
    }

    /// Renames `from` (below `self`) to `to` (below `to_root`), replacing a
    /// file at `to`. Neither path may contain a symlink; a symlink at `to`
    /// itself is replaced, never followed.
    pub fn rename(&self, from: &RelPath, to_root: &Self, to: &RelPath) -> Result<()> {
        let (fp, fname) = self.parent_of(from)?;
        let (tp, tname) = to_root.parent_of(to)?;
        rustix::fs::renameat(fp.as_fd(), fname, tp.as_fd(), tname)
            .map_err(|e| io_err("rename to", &to_root.shown(to.as_str()), e))
    }

    /// Hard-links `from` (below `self`) as `to` (below `to_root`) without
    /// following symlinks. Fails with `EXDEV` across filesystems.
    pub fn hard_link(&self, from: &RelPath, to_root: &Self, to: &RelPath) -> Result<()> {
        let (fp, fname) = self.parent_of(from)?;
        let (tp, tname) = to_root.parent_of(to)?;
        rustix::fs::linkat(fp.as_fd(), fname, tp.as_fd(), tname, AtFlags::empty()).map_err(|e| {
            match e {
                Errno::XDEV => Error::Io {
                    op: "link",
                    path: esc(&to_root.shown(to.as_str())),
                    source: e.into(),
                },
                e => io_err("link", &to_root.shown(to.as_str()), e),
            }
        })
    }

    /// Removes a file or symlink (never what it points to). `Ok(false)` when
    /// it did not exist.
    pub fn remove_file(&self, rel: &RelPath) -> Result<bool> {
        let (p, name) = match self.parent_of(rel) {
            Ok(x) => x,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        match rustix::fs::unlinkat(p.as_fd(), name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(io_err("remove", &self.shown(rel.as_str()), e)),
        }
    }

    /// Removes an empty directory. `Ok(false)` when it did not exist or is
    /// not empty.
    pub fn remove_empty_dir(&self, rel: &RelPath) -> Result<bool> {
        let (p, name) = self.parent_of(rel)?;
        match rustix::fs::unlinkat(p.as_fd(), name, AtFlags::REMOVEDIR) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT | Errno::NOTEMPTY | Errno::EXIST) => Ok(false),
            Err(e) => Err(io_err("rmdir", &self.shown(rel.as_str()), e)),
        }
    }

    /// Lists a directory (the root for `None`): names and kinds, sorted by
    /// name, without following symlinks. Names that are not UTF-8 are
    /// returned lossily converted (they cannot be opened by that name).
    pub fn read_dir(&self, rel: Option<&RelPath>) -> Result<Vec<(String, Kind)>> {
        Ok(self
            .read_dir_raw(rel)?
            .into_iter()
            .map(|(n, k)| (String::from_utf8_lossy(&n).into_owned(), k))
            .collect())
    }

    /// Lists this directory into `out` (names and kinds, without `.` and
    /// `..`, in path order: a directory sorts as its name followed by `/`),
    /// reading through this handle itself: no second
    /// descriptor and no allocation per entry. Takes `&mut self` because
    /// the listing moves the handle's position (it is rewound first).
    pub fn list(&mut self, out: &mut Listing) -> Result<()> {
        out.names.clear();
        out.ents.clear();
        if out.buf.capacity() < Listing::BUF {
            out.buf.reserve(Listing::BUF);
        }
        let shown = self.shown(".");
        rustix::fs::seek(&self.fd, rustix::fs::SeekFrom::Start(0))
            .map_err(|e| io_err("read dir", &shown, e))?;
        let mut dir = rustix::fs::RawDir::new(self.fd.as_fd(), out.buf.spare_capacity_mut());
        while let Some(ent) = dir.next() {
            let ent = ent.map_err(|e| io_err("read dir", &shown, e))?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let kind = entry_kind(ent.file_type(), Ok(self.fd.as_fd()), name);
            let start = out.names.len();
            out.names.extend_from_slice(name);
            out.ents.push((start, name.len(), kind));
        }
        // Path order: a directory sorts as its name followed by `/`, so a
        // depth-first walk in this order meets paths in byte order.
        let names = &out.names;
        let key = |&(start, len, kind): &(usize, usize, Kind)| {
            let name = names.get(start..start + len).unwrap_or_default();
            let slash: &[u8] = if kind == Kind::Dir { b"/" } else { b"" };
            name.iter().chain(slash)
        };
        out.ents.sort_unstable_by(|a, b| key(a).cmp(key(b)));
        Ok(())
    }

    fn read_dir_raw(&self, rel: Option<&RelPath>) -> Result<Vec<(Vec<u8>, Kind)>> {
        let shown = rel.map_or_else(|| self.shown("."), |r| self.shown(r.as_str()));
        let fd = match rel {
            None => rustix::fs::openat2(
                &self.fd,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            )
            .map_err(|e| io_err("open", &shown, e))?,
            Some(r) => self.open_beneath(r.as_str(), OFlags::RDONLY | OFlags::DIRECTORY, 0)?,
        };
        // The descriptor was opened for this listing: the stream takes it
        // (`read_from` would reopen it).
        let mut dir = rustix::fs::Dir::new(fd).map_err(|e| io_err("read dir", &shown, e))?;
        let mut out = Vec::new();
        while let Some(ent) = dir.read() {
            let ent = ent.map_err(|e| io_err("read dir", &shown, e))?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let kind = entry_kind(ent.file_type(), dir.fd(), name);
            out.push((name.to_vec(), kind));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Removes `rel` and everything below it without following symlinks
    /// (iterative: no recursion on attacker-controlled depth). Missing is fine.
    pub fn remove_tree(&self, rel: &RelPath) -> Result<()> {
        match self.metadata(rel)? {
            None => return Ok(()),
            Some(m) if m.kind != Kind::Dir => {
                self.remove_file(rel)?;
                return Ok(());
            }
            Some(_) => {}
        }
        // Depth-first with an explicit stack; each directory is revisited
        // after its children are gone.
        let mut stack = vec![(rel.clone(), false)];
        let mut guard = 0u64;
        while let Some((dir, visited)) = stack.pop() {
            guard = guard.saturating_add(1);
            if guard > 10_000_000 {
                break;
            }
            if visited {
                let (p, name) = self.parent_of(&dir)?;
                match rustix::fs::unlinkat(p.as_fd(), name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(io_err("rmdir", &self.shown(dir.as_str()), e)),
                }
                continue;
            }
            stack.push((dir.clone(), true));
            let dfd = self.open_beneath(dir.as_str(), OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
            for (name, kind) in self.read_dir_raw(Some(&dir))? {
                let utf8 = std::str::from_utf8(&name).ok();
                match (kind, utf8) {
                    (Kind::Dir, Some(n)) => {
                        stack.push((RelPath(format!("{}/{n}", dir.as_str())), false))
                    }
                    (Kind::Dir, None) => {
                        return Err(Error::InvalidPath {
                            path: esc(&self.shown(dir.as_str())),
                            reason: "directory with a non-UTF-8 name inside",
                        });
                    }
                    _ => match rustix::fs::unlinkat(&dfd, name.as_slice(), AtFlags::empty()) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(e) => return Err(io_err("remove in", &self.shown(dir.as_str()), e)),
                    },
                }
            }
        }
        Ok(())
    }

    /// Removes temporary files left by a crash in directory `dir`.
    pub fn remove_stale_temps(&self, dir: Option<&RelPath>) -> Result<usize> {
        let mut n = 0;
        for (name, kind) in self.read_dir(dir)? {
            if kind == Kind::File && name.starts_with(TEMP_PREFIX) {
                let rel = match dir {
                    None => RelPath(name),
                    Some(d) => RelPath(format!("{}/{name}", d.as_str())),
                };
                if self.remove_file(&rel)? {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// `fsync`s directory `dir` (the root for `None`), making renames and
    /// unlinks in it durable.
    pub fn sync_dir(&self, dir: Option<&RelPath>) -> Result<()> {
        match dir {
            None => rustix::fs::fsync(&self.fd).map_err(|e| io_err("fsync", &self.shown("."), e)),
            Some(d) => {
                let fd = self.open_beneath(d.as_str(), OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
                rustix::fs::fsync(&fd).map_err(|e| io_err("fsync", &self.shown(d.as_str()), e))
            }
        }
    }

    /// `syncfs` on the filesystem holding the root: one call makes every
    /// written file on it durable (batch durability).
    pub fn syncfs(&self) -> Result<()> {
        rustix::fs::syncfs(&self.fd).map_err(|e| io_err("syncfs", &self.path.to_string_lossy(), e))
    }

    /// Bytes available to an unprivileged writer on the root's filesystem.
    pub fn free_space(&self) -> Result<u64> {
        let v = rustix::fs::fstatvfs(&self.fd)
            .map_err(|e| io_err("statvfs", &self.path.to_string_lossy(), e))?;
        Ok(v.f_bavail.saturating_mul(v.f_frsize))
    }

    /// Appends `data` to the regular file `rel` (created with `mode` if
    /// missing), without syncing: for logs, where losing the tail in a
    /// power cut is acceptable.
    pub fn append(&self, rel: &RelPath, data: &[u8], mode: u32) -> Result<()> {
        let fd = self.open_beneath(
            rel.as_str(),
            OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NONBLOCK,
            mode,
        )?;
        let st =
            rustix::fs::fstat(&fd).map_err(|e| io_err("stat", &self.shown(rel.as_str()), e))?;
        if meta_from(&st).kind != Kind::File {
            return Err(Error::WrongType {
                expected: "regular file",
                path: esc(&self.shown(rel.as_str())),
            });
        }
        std::fs::File::from(fd)
            .write_all(data)
            .map_err(|e| std_err("append", rel.as_str(), e))
    }

    /// Sets the permission bits (and, with privilege, owner and group) of
    /// the regular file `rel`, never following a symlink.
    pub fn set_perms(&self, rel: &RelPath, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
        let f = self.open_read(rel)?;
        if let Some((u, g)) = owner {
            rustix::fs::fchown(
                &f,
                Some(rustix::fs::Uid::from_raw(u)),
                Some(rustix::fs::Gid::from_raw(g)),
            )
            .map_err(|e| io_err("chown", &self.shown(rel.as_str()), e))?;
        }
        // After chown, which clears setuid/setgid bits.
        rustix::fs::fchmod(&f, Mode::from_raw_mode(mode))
            .map_err(|e| io_err("chmod", &self.shown(rel.as_str()), e))
    }

    /// Sets owner and group of `rel` (not following symlinks).
    pub fn chown(&self, rel: &RelPath, uid: u32, gid: u32) -> Result<()> {
        let fd = self.open_beneath(rel.as_str(), OFlags::PATH, 0)?;
        rustix::fs::chownat(
            &fd,
            "",
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::EMPTY_PATH,
        )
        .map_err(|e| io_err("chown", &self.shown(rel.as_str()), e))
    }
}

fn check_owner(policy: &DirPolicy, m: &Meta, shown: &str) -> Result<()> {
    if let Some(uid) = policy.owner
        && (m.uid != uid || m.mode & 0o022 != 0)
    {
        {
            return Err(Error::NotOwned {
                uid,
                path: esc(shown),
            });
        }
    }
    Ok(())
}

enum ParentFd<'a> {
    Root(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl ParentFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            ParentFd::Root(b) => *b,
            ParentFd::Owned(o) => o.as_fd(),
        }
    }
}

/// A temporary file created by [`Root::create_temp`]. Removed on drop unless
/// persisted with [`TempFile::persist_as`] or renamed by the caller.
#[derive(Debug)]
pub struct TempFile {
    file: Option<std::fs::File>,
    dir: OwnedFd,
    name: String,
    rel: RelPath,
    persisted: bool,
}

impl TempFile {
    /// Path of the temporary file relative to the root it was created in.
    pub fn rel(&self) -> &RelPath {
        &self.rel
    }

    /// Appends bytes.
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Err(std_err(
                "write",
                &self.name,
                std::io::Error::other("file closed"),
            ));
        };
        f.write_all(data)
            .map_err(|e| std_err("write", self.rel.as_str(), e))
    }

    /// Copies at most `limit` bytes from `r` into the file; returns the count.
    pub fn copy_from(&mut self, r: &mut dyn Read, limit: u64) -> Result<u64> {
        let Some(f) = self.file.as_mut() else {
            return Err(std_err(
                "write",
                &self.name,
                std::io::Error::other("file closed"),
            ));
        };
        std::io::copy(&mut r.take(limit), f).map_err(|e| std_err("write", self.rel.as_str(), e))
    }

    /// Sets owner and group (needs privilege).
    pub fn chown(&self, uid: u32, gid: u32) -> Result<()> {
        if let Some(f) = &self.file {
            rustix::fs::fchown(
                f,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| io_err("chown", self.rel.as_str(), e))?;
        }
        Ok(())
    }

    /// `fsync`s the file's data and metadata.
    pub fn sync(&self) -> Result<()> {
        if let Some(f) = &self.file {
            rustix::fs::fsync(f).map_err(|e| io_err("fsync", self.rel.as_str(), e))?;
        }
        Ok(())
    }

    /// Closes the file and keeps it under its temporary name (for a caller
    /// that renames it later, e.g. after a batch [`Root::syncfs`]).
    pub fn finish(mut self) -> RelPath {
        self.persisted = true;
        self.file = None;
        self.rel.clone()
    }

    /// Renames the file to `name` in the same directory (a single component).
    pub fn persist_as(mut self, name: &str) -> Result<()> {
        let comp = RelPath::new(name)?;
        if comp.depth() != 1 {
            return Err(Error::InvalidPath {
                path: esc(name),
                reason: "not a single component",
            });
        }
        self.file = None;
        rustix::fs::renameat(&self.dir, self.name.as_str(), &self.dir, name)
            .map_err(|e| io_err("rename to", name, e))?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = rustix::fs::unlinkat(&self.dir, self.name.as_str(), AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests;
