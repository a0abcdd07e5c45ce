//! The `qpm.SyncConfig` wire format, version 1 (see `docs/sync-protocol.md`).
//!
//! Every message is a frame: one type byte, a big-endian `u32` payload
//! length, the payload. The source sends a manifest frame (`M`); the target
//! answers with a need list (`N`) or directly with a result (`R`); after a
//! need list the source sends one data frame (`D`) per needed file in
//! ascending index order and an end frame (`E`); the target answers with a
//! result (`R`). A status request is a manifest of kind
//! [`Kind::Status`], answered by a status frame (`S`).
//!
//! Decoding never trusts a length: each is checked against the limits below
//! before anything is allocated.

use std::io::{Read, Write};

use qpm_fs::RelPath;

/// Protocol version this implementation speaks.
pub const VERSION: u16 = 1;
/// First bytes of a manifest payload.
pub const MAGIC: &[u8; 4] = b"QPMS";
/// Most entries in one manifest.
pub const MAX_FILES: u32 = 10_000;
/// Largest file, in bytes.
pub const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;
/// Largest sum of file sizes in one manifest.
pub const MAX_TOTAL_SIZE: u64 = 256 * 1024 * 1024;
/// Largest manifest payload.
pub const MAX_MANIFEST_BYTES: u32 = 4 * 1024 * 1024;
/// Largest control frame from the target (need list, result, status).
pub const MAX_REPLY_BYTES: u32 = 4 * (MAX_FILES + 16);
/// Longest source name carried in a manifest.
pub const MAX_SOURCE_BYTES: usize = 64;
/// Bytes of a manifest entry besides its path.
const ENTRY_FIXED: usize = 1 + 1 + 2 + 4 + 4 + 8 + 32 + 2;

/// Frame types.
pub mod frame {
    /// Manifest (source to target).
    pub const MANIFEST: u8 = b'M';
    /// File data (source to target).
    pub const DATA: u8 = b'D';
    /// End of data (source to target).
    pub const END: u8 = b'E';
    /// Need list (target to source).
    pub const NEED: u8 = b'N';
    /// Result (target to source).
    pub const RESULT: u8 = b'R';
    /// Status reply (target to source).
    pub const STATUS: u8 = b'S';
}

/// A protocol violation or I/O failure on the stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The stream ended inside a frame or before an expected frame.
    #[error("stream truncated while reading {what}")]
    Truncated {
        /// What was being read.
        what: &'static str,
    },
    /// A frame of an unexpected type arrived.
    #[error("unexpected frame type {got:#04x} while waiting for {expected}")]
    UnexpectedFrame {
        /// Expected frame.
        expected: &'static str,
        /// Received type byte.
        got: u8,
    },
    /// A length or count is beyond a limit.
    #[error("{what} exceeds the limit of {limit}: `{got}`")]
    TooLarge {
        /// Which limit.
        what: &'static str,
        /// The limit.
        limit: u64,
        /// The value received.
        got: u64,
    },
    /// A field has an invalid value.
    #[error("invalid {field} in {what}: {reason}")]
    Invalid {
        /// Message kind.
        what: &'static str,
        /// Field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Underlying I/O error.
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
}

type Result<T> = std::result::Result<T, ProtoError>;

/// Which tree an entry belongs to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Tree {
    /// Relative to the target user's home directory.
    Home = 0,
    /// Relative to `/` (system paths; need the agent to run as root).
    System = 1,
}

impl Tree {
    /// `~/` or `/` as shown to people.
    pub fn prefix(self) -> &'static str {
        match self {
            Tree::Home => "~/",
            Tree::System => "/",
        }
    }
}

/// Entry flags.
pub mod flags {
    /// Content is secret: never shown in diffs or logs.
    pub const SECRET: u8 = 1;
    /// Persist (system tree): the agent adds the path to its bind-dirs file
    /// and writes the copy under `/rw/bind-dirs`.
    pub const PERSIST_BIND_DIRS: u8 = 2;
    /// Persist (system tree) through `custom-persist` features set by the
    /// source: the agent only writes the copy under `/rw/bind-dirs`.
    pub const PERSIST_CUSTOM: u8 = 4;
    /// All defined bits.
    pub const ALL: u8 = SECRET | PERSIST_BIND_DIRS | PERSIST_CUSTOM;
}

/// Request kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Push the manifest's files.
    Sync = 1,
    /// Only report status (no entries).
    Status = 2,
    /// Send back the one file named by the single entry (size and hash
    /// zero), for `qpm sync capture`.
    Capture = 3,
    /// Push the manifest's files as a named set: like [`Kind::Sync`], but
    /// the source name field names the set (`pkg.NAME` for a package), and
    /// the target keeps what each (caller, set) placed apart, so deletions
    /// of one set never touch the files of another.
    SyncSet = 4,
    /// Which of the set's files are not in place: like [`Kind::SyncSet`]
    /// (sizes may be zero), answered by one need-list frame naming the
    /// entries whose file in the target is missing, differs or is not the
    /// owner's; no data follows and nothing is written.
    Check = 5,
}

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Tree the path is relative to.
    pub tree: Tree,
    /// [`flags`] bits.
    pub flags: u8,
    /// Permission bits (`0o777` at most; setuid/setgid/sticky are refused).
    pub mode: u16,
    /// Owner for system files (ignored for home files).
    pub uid: u32,
    /// Group for system files (ignored for home files).
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the content.
    pub hash: [u8; 32],
    /// Relative path.
    pub path: RelPath,
}

impl Entry {
    /// `~/path` or `/path`, escaped for display.
    pub fn display(&self) -> String {
        format!("{}{}", self.tree.prefix(), self.path)
    }
}

/// A manifest: everything the source manages in the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Request kind.
    pub kind: Kind,
    /// Name of the source as it calls itself (informational; the agent
    /// trusts `QREXEC_REMOTE_DOMAIN` only).
    pub source: String,
    /// Entries, in the order data frames refer to them.
    pub entries: Vec<Entry>,
}

/// Bounded big-endian reader over a byte slice (never panics).
struct Cur<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(ProtoError::Invalid {
                what: self.what,
                field,
                reason: "payload too short".into(),
            });
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self, f: &'static str) -> Result<u8> {
        Ok(self.take(1, f)?.first().copied().unwrap_or(0))
    }
    fn u16(&mut self, f: &'static str) -> Result<u16> {
        let b = self.take(2, f)?;
        Ok(u16::from_be_bytes(b.try_into().unwrap_or([0; 2])))
    }
    fn u32(&mut self, f: &'static str) -> Result<u32> {
        let b = self.take(4, f)?;
        Ok(u32::from_be_bytes(b.try_into().unwrap_or([0; 4])))
    }
    fn u64(&mut self, f: &'static str) -> Result<u64> {
        let b = self.take(8, f)?;
        Ok(u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
    }
    fn done(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::Invalid {
                what: self.what,
                field: "payload",
                reason: format!("{} trailing bytes", self.buf.len()),
            })
        }
    }
}

/// Reads a frame header; `Ok(None)` on a clean EOF before the first byte.
pub fn read_header(r: &mut dyn Read) -> Result<Option<(u8, u32)>> {
    let mut h = [0u8; 5];
    let mut got = 0usize;
    while got < h.len() {
        let Some(slot) = h.get_mut(got..) else { break };
        match r.read(slot) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(ProtoError::Truncated {
                    what: "frame header",
                });
            }
            Ok(n) => got = got.saturating_add(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let [t, a, b, c, d] = h;
    Ok(Some((t, u32::from_be_bytes([a, b, c, d]))))
}

/// Reads a whole frame of type `expected` whose payload is at most `max`.
pub fn read_frame(r: &mut dyn Read, expected: u8, name: &'static str, max: u32) -> Result<Vec<u8>> {
    let (t, len) = read_header(r)?.ok_or(ProtoError::Truncated { what: name })?;
    if t != expected {
        return Err(ProtoError::UnexpectedFrame {
            expected: name,
            got: t,
        });
    }
    read_payload(r, len, name, max)
}

/// Reads a payload of `len` bytes after checking it against `max`.
pub fn read_payload(r: &mut dyn Read, len: u32, name: &'static str, max: u32) -> Result<Vec<u8>> {
    if len > max {
        return Err(ProtoError::TooLarge {
            what: name,
            limit: u64::from(max),
            got: u64::from(len),
        });
    }
    let mut buf = Vec::with_capacity(len as usize);
    r.take(u64::from(len)).read_to_end(&mut buf)?;
    if buf.len() != len as usize {
        return Err(ProtoError::Truncated { what: name });
    }
    Ok(buf)
}

/// Writes one frame.
pub fn write_frame(w: &mut dyn Write, t: u8, payload: &[u8]) -> Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| ProtoError::TooLarge {
        what: "frame",
        limit: u64::from(u32::MAX),
        got: payload.len() as u64,
    })?;
    let mut h = [0u8; 5];
    h[0] = t;
    h[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&h)?;
    w.write_all(payload)?;
    Ok(())
}

impl Manifest {
    /// Encodes the manifest payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 96);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.push(self.kind as u8);
        let src = self.source.as_bytes();
        let src = src.get(..src.len().min(MAX_SOURCE_BYTES)).unwrap_or(b"");
        out.push(src.len() as u8);
        out.extend_from_slice(src);
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            out.push(e.tree as u8);
            out.push(e.flags);
            out.extend_from_slice(&e.mode.to_be_bytes());
            out.extend_from_slice(&e.uid.to_be_bytes());
            out.extend_from_slice(&e.gid.to_be_bytes());
            out.extend_from_slice(&e.size.to_be_bytes());
            out.extend_from_slice(&e.hash);
            let p = e.path.as_str().as_bytes();
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    /// Decodes and validates a manifest payload: structure, limits, paths,
    /// modes, duplicates and case collisions.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let inv = |field, reason: &str| ProtoError::Invalid {
            what: "manifest",
            field,
            reason: reason.to_owned(),
        };
        let mut c = Cur {
            buf,
            what: "manifest",
        };
        if c.take(4, "magic")? != MAGIC {
            return Err(inv("magic", "not a qpm sync stream"));
        }
        let v = c.u16("version")?;
        if v != VERSION {
            return Err(inv("version", &format!("unsupported version {v}")));
        }
        let kind = match c.u8("kind")? {
            1 => Kind::Sync,
            2 => Kind::Status,
            3 => Kind::Capture,
            4 => Kind::SyncSet,
            5 => Kind::Check,
            k => return Err(inv("kind", &format!("unknown kind {k}"))),
        };
        let slen = usize::from(c.u8("source length")?);
        if slen > MAX_SOURCE_BYTES {
            return Err(inv("source", "too long"));
        }
        let src = c.take(slen, "source")?;
        let source = std::str::from_utf8(src)
            .ok()
            .filter(|s| {
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            })
            .ok_or_else(|| inv("source", "not a qube name"))?
            .to_owned();
        let count = c.u32("entry count")?;
        if count > MAX_FILES {
            return Err(ProtoError::TooLarge {
                what: "file count",
                limit: u64::from(MAX_FILES),
                got: u64::from(count),
            });
        }
        if matches!(kind, Kind::SyncSet | Kind::Check) && source.is_empty() {
            return Err(inv("source", "a set without a name"));
        }
        if kind == Kind::Status && count != 0 {
            return Err(inv("entry count", "status request with entries"));
        }
        if kind == Kind::Capture && count != 1 {
            return Err(inv(
                "entry count",
                "capture request without exactly one entry",
            ));
        }
        // Each entry takes at least ENTRY_FIXED + 1 bytes: bound the
        // allocation by what the payload can hold.
        let cap = (count as usize).min(c.buf.len() / (ENTRY_FIXED + 1));
        let mut entries = Vec::with_capacity(cap);
        let mut total: u64 = 0;
        for i in 0..count {
            let _ = i;
            let tree = match c.u8("tree")? {
                0 => Tree::Home,
                1 => Tree::System,
                t => return Err(inv("tree", &format!("unknown tree {t}"))),
            };
            let flags = c.u8("flags")?;
            if flags & !flags::ALL != 0 {
                return Err(inv("flags", &format!("unknown flag bits {flags:#04x}")));
            }
            if flags & (flags::PERSIST_BIND_DIRS | flags::PERSIST_CUSTOM) != 0
                && tree != Tree::System
            {
                return Err(inv("flags", "persistence asked for a home file"));
            }
            let mode = c.u16("mode")?;
            if mode & !0o777 != 0 {
                return Err(inv(
                    "mode",
                    &format!("setuid, setgid, sticky or type bits in {mode:#o}"),
                ));
            }
            let uid = c.u32("uid")?;
            let gid = c.u32("gid")?;
            let size = c.u64("size")?;
            if size > MAX_FILE_SIZE {
                return Err(ProtoError::TooLarge {
                    what: "file size",
                    limit: MAX_FILE_SIZE,
                    got: size,
                });
            }
            total = total.saturating_add(size);
            if total > MAX_TOTAL_SIZE {
                return Err(ProtoError::TooLarge {
                    what: "total size",
                    limit: MAX_TOTAL_SIZE,
                    got: total,
                });
            }
            let mut hash = [0u8; 32];
            hash.copy_from_slice(c.take(32, "hash")?);
            let plen = usize::from(c.u16("path length")?);
            if plen > qpm_fs::MAX_PATH_BYTES {
                return Err(ProtoError::TooLarge {
                    what: "path length",
                    limit: qpm_fs::MAX_PATH_BYTES as u64,
                    got: plen as u64,
                });
            }
            let path = RelPath::from_bytes(c.take(plen, "path")?)
                .map_err(|e| inv("path", &e.to_string()))?;
            entries.push(Entry {
                tree,
                flags,
                mode,
                uid,
                gid,
                size,
                hash,
                path,
            });
        }
        c.done()?;
        check_collisions(&entries)?;
        Ok(Self {
            kind,
            source,
            entries,
        })
    }

    /// Sum of the sizes of the entries at `indices`.
    pub fn size_of(&self, indices: &[u32]) -> u64 {
        indices
            .iter()
            .filter_map(|&i| self.entries.get(i as usize))
            .fold(0u64, |a, e| a.saturating_add(e.size))
    }

    /// The sync id: the first 16 bytes of BLAKE3 of the encoded manifest,
    /// in hex.
    pub fn id(&self) -> String {
        let h = blake3::hash(&self.encode());
        hex::encode(h.as_bytes().get(..16).unwrap_or(&[]))
    }
}

/// Refuses duplicate paths, paths equal except for case, and a file that is
/// also a directory of another entry (`a` and `a/b`).
fn check_collisions(entries: &[Entry]) -> Result<()> {
    if sorted_collision_free(entries) {
        return Ok(());
    }
    check_collisions_hashed(entries)
}

/// Quick answer for what senders send: entries strictly ascending by tree
/// and path, every path in lower-case ASCII. Then no two paths are equal or
/// differ only in case, and a file `p` is also a directory only if an entry
/// begins with `p/`, which comes soon after `p` in this order. No
/// allocation, no hashing. `false` means "not shown here": the general
/// check decides.
fn sorted_collision_free(entries: &[Entry]) -> bool {
    fn key(e: &Entry) -> (u8, &[u8]) {
        (e.tree as u8, e.path.as_str().as_bytes())
    }
    let plain = |e: &Entry| {
        !e.path
            .as_str()
            .bytes()
            .any(|b| b.is_ascii_uppercase() || !b.is_ascii())
    };
    if !entries.iter().all(plain) || !entries.windows(2).all(|w| key(&w[0]) < key(&w[1])) {
        return false;
    }
    // Every path between `p` and `p/...` in this order begins with `p`
    // and a byte below `/` (`p-x`, `p.y`): skip those (a bounded number,
    // else the general check decides) and look at the next one.
    const SKIP: usize = 64;
    entries.iter().enumerate().all(|(i, e)| {
        let (tree, p) = key(e);
        let below = |x: &Entry, c: fn(u8) -> bool| {
            let (t, q) = key(x);
            t == tree
                && q.len() > p.len()
                && q.starts_with(p)
                && q.get(p.len()).copied().is_some_and(c)
        };
        let mut rest = entries.get(i + 1..).unwrap_or_default().iter();
        for _ in 0..=SKIP {
            match rest.next() {
                Some(x) if below(x, |c| c < b'/') => continue,
                Some(x) => return !below(x, |c| c == b'/'),
                None => return true,
            }
        }
        false
    })
}

fn check_collisions_hashed(entries: &[Entry]) -> Result<()> {
    use std::borrow::Cow;
    // foldhash: several times quicker than SipHash on short paths, and
    // still seeded at random per process (a manifest cannot be built to
    // collide).
    use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
    let mut seen: HashMap<(Tree, Cow<'_, str>), &str> = HashMap::with_capacity(entries.len());
    for e in entries {
        let p = e.path.as_str();
        // Folded only when something folds (no string per plain path).
        let folded = if p.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii()) {
            Cow::Owned(p.to_lowercase())
        } else {
            Cow::Borrowed(p)
        };
        if let Some(prev) = seen.insert((e.tree, folded), p) {
            return Err(ProtoError::Invalid {
                what: "manifest",
                field: "path",
                reason: if prev == e.path.as_str() {
                    format!("duplicate path {:?}", e.path.as_str())
                } else {
                    format!("paths differ only in case: {:?}", e.path.as_str())
                },
            });
        }
    }
    let mut files: HashSet<(Tree, &str)> = HashSet::with_capacity(entries.len());
    files.extend(entries.iter().map(|e| (e.tree, e.path.as_str())));
    for e in entries {
        let mut p = e.path.as_str();
        while let Some((d, _)) = p.rsplit_once('/') {
            if files.contains(&(e.tree, d)) {
                return Err(ProtoError::Invalid {
                    what: "manifest",
                    field: "path",
                    reason: format!("{d:?} is both a file and a directory"),
                });
            }
            p = d;
        }
    }
    Ok(())
}

/// Encodes a need list (indices ascending).
pub fn encode_need(indices: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + 4 * indices.len());
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&(indices.len() as u32).to_be_bytes());
    for i in indices {
        out.extend_from_slice(&i.to_be_bytes());
    }
    out
}

/// Decodes a need list for a manifest of `entries` entries: strictly
/// ascending, in range.
pub fn decode_need(buf: &[u8], entries: u32) -> Result<Vec<u32>> {
    let mut c = Cur {
        buf,
        what: "need list",
    };
    let v = c.u16("version")?;
    if v != VERSION {
        return Err(ProtoError::Invalid {
            what: "need list",
            field: "version",
            reason: format!("unsupported version {v}"),
        });
    }
    let n = c.u32("count")?;
    if n > entries {
        return Err(ProtoError::TooLarge {
            what: "need count",
            limit: u64::from(entries),
            got: u64::from(n),
        });
    }
    let mut out = Vec::with_capacity(n as usize);
    let mut prev: Option<u32> = None;
    for _ in 0..n {
        let i = c.u32("index")?;
        if i >= entries || prev.is_some_and(|p| i <= p) {
            return Err(ProtoError::Invalid {
                what: "need list",
                field: "index",
                reason: format!("{i} out of order or range"),
            });
        }
        prev = Some(i);
        out.push(i);
    }
    c.done()?;
    Ok(out)
}

/// Result codes of a sync (`R` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    /// Changes applied.
    Applied = 0,
    /// Nothing to change.
    Unchanged = 1,
    /// Queued for review in the target.
    Queued = 2,
    /// The target's user declined.
    Declined = 3,
    /// The target refused the stream (invalid, over a limit, not allowed).
    Refused = 4,
    /// The target failed (out of space, I/O error, busy).
    Failed = 5,
}

/// A result frame.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// What happened.
    pub code: Code,
    /// Files written.
    pub written: u32,
    /// Files deleted.
    pub deleted: u32,
    /// Files edited locally since the last sync (not overwritten without consent).
    pub conflicts: u32,
    /// Short, fixed message (never contains data from the stream).
    pub message: String,
}

/// Longest result message.
pub const MAX_MESSAGE: usize = 200;

impl Outcome {
    /// Encodes a result payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.code as u8];
        out.extend_from_slice(&self.written.to_be_bytes());
        out.extend_from_slice(&self.deleted.to_be_bytes());
        out.extend_from_slice(&self.conflicts.to_be_bytes());
        let m = self.message.as_bytes();
        let m = m.get(..m.len().min(MAX_MESSAGE)).unwrap_or(b"");
        out.extend_from_slice(&(m.len() as u16).to_be_bytes());
        out.extend_from_slice(m);
        out
    }

    /// Decodes a result payload (from a possibly compromised target: the
    /// message is restricted to printable ASCII).
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut c = Cur {
            buf,
            what: "result",
        };
        let code = match c.u8("code")? {
            0 => Code::Applied,
            1 => Code::Unchanged,
            2 => Code::Queued,
            3 => Code::Declined,
            4 => Code::Refused,
            5 => Code::Failed,
            k => {
                return Err(ProtoError::Invalid {
                    what: "result",
                    field: "code",
                    reason: format!("unknown code {k}"),
                });
            }
        };
        let written = c.u32("written")?;
        let deleted = c.u32("deleted")?;
        let conflicts = c.u32("conflicts")?;
        let n = usize::from(c.u16("message length")?);
        if n > MAX_MESSAGE {
            return Err(ProtoError::TooLarge {
                what: "message",
                limit: MAX_MESSAGE as u64,
                got: n as u64,
            });
        }
        let m = c.take(n, "message")?;
        c.done()?;
        let message = m
            .iter()
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '?'
                }
            })
            .collect();
        Ok(Self {
            code,
            written,
            deleted,
            conflicts,
            message,
        })
    }
}

/// Status reply (`S` frame).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// Id of the last applied sync (hex, empty if none).
    pub last_sync: String,
    /// When it was applied (Unix seconds, 0 if never).
    pub last_applied: u64,
    /// Files the agent manages.
    pub managed: u32,
    /// Syncs waiting for review.
    pub pending: u32,
}

impl Status {
    /// Encodes a status payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = VERSION.to_be_bytes().to_vec();
        let mut id = [0u8; 16];
        if let Ok(b) = hex::decode(&self.last_sync) {
            if b.len() == 16 {
                id.copy_from_slice(&b);
            }
        }
        out.extend_from_slice(&id);
        out.extend_from_slice(&self.last_applied.to_be_bytes());
        out.extend_from_slice(&self.managed.to_be_bytes());
        out.extend_from_slice(&self.pending.to_be_bytes());
        out
    }

    /// Decodes a status payload.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut c = Cur {
            buf,
            what: "status",
        };
        let _v = c.u16("version")?;
        let id = c.take(16, "last sync")?;
        let last_applied = c.u64("last applied")?;
        let managed = c.u32("managed")?;
        let pending = c.u32("pending")?;
        c.done()?;
        Ok(Self {
            last_sync: if id.iter().all(|&b| b == 0) {
                String::new()
            } else {
                hex::encode(id)
            },
            last_applied,
            managed,
            pending,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: &str) -> Entry {
        Entry {
            tree: Tree::Home,
            flags: 0,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 3,
            hash: *blake3::hash(b"abc").as_bytes(),
            path: RelPath::new(p).unwrap(),
        }
    }

    #[test]
    fn manifest_roundtrip() {
        let m = Manifest {
            kind: Kind::Sync,
            source: "cfg".into(),
            entries: vec![entry(".gitconfig"), entry(".config/app/x")],
        };
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        assert_eq!(m.id().len(), 32);
    }

    #[test]
    fn named_set_roundtrip_and_needs_a_name() {
        let mut m = Manifest {
            kind: Kind::SyncSet,
            source: "pkg.split-browser".into(),
            entries: vec![entry("a")],
        };
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        m.source.clear();
        assert!(Manifest::decode(&m.encode()).is_err());
        m.kind = Kind::Sync;
        assert!(
            Manifest::decode(&m.encode()).is_ok(),
            "a plain sync needs no name"
        );
    }

    #[test]
    fn manifest_rejects_collisions() {
        for pair in [["a", "a"], ["A", "a"], ["a", "a/b"]] {
            let m = Manifest {
                kind: Kind::Sync,
                source: "cfg".into(),
                entries: vec![entry(pair[0]), entry(pair[1])],
            };
            assert!(Manifest::decode(&m.encode()).is_err(), "{pair:?}");
        }
    }

    #[test]
    fn need_checks_order_and_range() {
        assert_eq!(decode_need(&encode_need(&[0, 2]), 3).unwrap(), vec![0, 2]);
        assert!(decode_need(&encode_need(&[2, 0]), 3).is_err());
        assert!(decode_need(&encode_need(&[3]), 3).is_err());
        assert!(decode_need(&encode_need(&[1, 1]), 3).is_err());
    }

    #[test]
    fn outcome_and_status_roundtrip() {
        let o = Outcome {
            code: Code::Queued,
            written: 1,
            deleted: 2,
            conflicts: 3,
            message: "queued for review".into(),
        };
        assert_eq!(Outcome::decode(&o.encode()).unwrap(), o);
        let s = Status {
            last_sync: "00112233445566778899aabbccddeeff".into(),
            last_applied: 5,
            managed: 3,
            pending: 1,
        };
        assert_eq!(Status::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn sorted_manifests_take_the_quick_collision_check() {
        let sorted = |ps: &[&str]| {
            let mut v: Vec<Entry> = ps.iter().map(|p| entry(p)).collect();
            v.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
            v
        };
        // Fine, and shown fine without hashing.
        let ok = sorted(&["a-b", "a.c", "a/x", "a/y/z", "b", "ab/c"]);
        assert!(sorted_collision_free(&ok));
        assert!(check_collisions(&ok).is_ok());
        // A file that is also a directory, with entries sorting in between
        // (`-` and `.` come before `/`).
        for bad in [
            &["a", "a-b", "a.c", "a/x"][..],
            &["a", "a/x"],
            &["x/a", "x/a-b", "x/a/y/z"],
        ] {
            let v = sorted(bad);
            assert!(!sorted_collision_free(&v), "{bad:?}");
            assert!(check_collisions(&v).is_err(), "{bad:?}");
        }
        // Many paths between `p` and `p/...`: past the bound, the general
        // check decides (and finds the clash, or not).
        let names: Vec<String> = (0..70).map(|i| format!("a-{i:02}")).collect();
        let mut many: Vec<&str> = names.iter().map(String::as_str).collect();
        many.push("a");
        assert!(!sorted_collision_free(&sorted(&many)));
        assert!(check_collisions(&sorted(&many)).is_ok());
        many.push("a/x");
        assert!(check_collisions(&sorted(&many)).is_err());
        // Not for the quick check: left to the general one.
        assert!(!sorted_collision_free(&[entry("b"), entry("a")]));
        assert!(!sorted_collision_free(&[entry("a"), entry("a")]));
        assert!(!sorted_collision_free(&sorted(&["A", "b"])));
        assert!(check_collisions(&sorted(&["A", "a"])).is_err());
        let mut two = sorted(&["a", "a/b", "b"]);
        two[1].tree = Tree::System;
        two[2].tree = Tree::System;
        assert!(
            sorted_collision_free(&two),
            "another tree is another namespace"
        );
    }

    proptest::proptest! {
        #[test]
        fn the_quick_collision_check_never_passes_what_the_general_one_refuses(
            paths in proptest::collection::vec("[aAb.-]{1,2}(/[ab.-]{1,2}){0,2}", 1..12),
            sort in proptest::bool::ANY,
        ) {
            let mut v: Vec<Entry> = paths
                .iter()
                .filter_map(|p| RelPath::new(p).ok())
                .map(|p| Entry { path: p, ..entry("x") })
                .collect();
            if sort {
                v.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
            }
            if sorted_collision_free(&v) {
                proptest::prop_assert!(check_collisions_hashed(&v).is_ok(), "{:?}", paths);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Manifest::decode(&b);
            let _ = decode_need(&b, 100);
            let _ = Outcome::decode(&b);
            let _ = Status::decode(&b);
            let mut r: &[u8] = &b;
            let _ = read_frame(&mut r, frame::MANIFEST, "manifest", 1024);
        }

        #[test]
        fn manifest_with_valid_prefix_never_panics(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut b = b"QPMS\x00\x01\x01\x03cfg".to_vec();
            b.extend_from_slice(&tail);
            let _ = Manifest::decode(&b);
        }
    }
}
