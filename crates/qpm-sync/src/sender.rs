//! The sending side, in the config qube: manifests from the repository
//! (with a stat cache so unchanged files are not re-hashed), the exchange
//! with one target over any byte channel, persistence through the Admin
//! API, and the sender's own record of what it pushed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use qpm_fs::{DirPolicy, RelPath, Root};

use crate::proto::{self, Code, Entry, Kind, Manifest, Outcome, Tree, flags, frame};
use crate::repo::{Item, Repo};

/// Sender errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Protocol violation by the target or broken stream.
    #[error("qube `{qube}`: {source}")]
    Proto {
        /// Target.
        qube: String,
        /// Cause.
        source: proto::ProtoError,
    },
    /// Local filesystem.
    #[error(transparent)]
    Fs(#[from] qpm_fs::Error),
    /// Repository.
    #[error(transparent)]
    Repo(#[from] crate::repo::RepoError),
    /// Too much for the protocol's limits.
    #[error("qube `{qube}`: {message}")]
    Limit {
        /// Target.
        qube: String,
        /// What.
        message: String,
    },
    /// Admin API (persistence features).
    #[error("qube `{qube}`: {message}")]
    Admin {
        /// Target.
        qube: String,
        /// What.
        message: String,
    },
}

type Result<T> = std::result::Result<T, SendError>;

/// What the sender needs from the Admin API. Implemented by the CLI on top
/// of its Admin API client; tests use an in-memory one.
pub trait AdminPort {
    /// Tags of `qube`.
    fn tags(&self, qube: &str) -> std::result::Result<Vec<String>, String>;
    /// Value of feature `name` on `qube` (None: not set).
    fn feature(&self, qube: &str, name: &str) -> std::result::Result<Option<String>, String>;
    /// Sets feature `name` on `qube`.
    fn set_feature(&self, qube: &str, name: &str, value: &str) -> std::result::Result<(), String>;
}

/// Number of `custom-persist.qpm-N` slots (fixed so dom0 can grant exactly
/// these feature names).
pub const PERSIST_SLOTS: usize = 32;

/// How persisted system files reach the target's private volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PersistVia {
    /// `service.custom-persist` is on: features `custom-persist.qpm-N`.
    CustomPersist,
    /// The agent's bind-dirs file in the qube.
    BindDirs,
}

/// The `custom-persist.<KEY>` value for a file (qube-side spec §5).
pub fn persist_value(item: &Item) -> String {
    format!(
        "file:{}:{}:{:o}:/{}",
        item.uid,
        item.gid,
        item.mode,
        item.dest.as_str()
    )
}

/// Decides how to persist `items` in `qube` and, with custom-persist on,
/// sets the slot features. Never turns `service.custom-persist` on.
/// Returns the mode and human notes.
pub fn ensure_persistence(
    admin: &dyn AdminPort,
    qube: &str,
    items: &[Item],
    dry_run: bool,
) -> Result<(PersistVia, Vec<String>)> {
    let wanted: Vec<&Item> = items.iter().filter(|i| i.persist).collect();
    let err = |m: String| SendError::Admin {
        qube: qube.into(),
        message: m,
    };
    if wanted.is_empty() {
        // Nothing to persist: no Admin API call at all.
        return Ok((PersistVia::BindDirs, Vec::new()));
    }
    let on = match admin.feature(qube, "service.custom-persist") {
        Ok(v) => v.is_some_and(|v| !v.is_empty() && v != "0"),
        Err(e) => return Err(err(format!("reading feature service.custom-persist: {e}"))),
    };
    if !on {
        let mut notes = Vec::new();
        if !wanted.is_empty() {
            notes.push(format!(
                "{qube}: custom-persist is off, so {} system file(s) persist through the agent's bind-dirs file (/rw/config/qubes-bind-dirs.d/50_qpm.conf); qpm does not turn custom-persist on, because that makes /home and /usr/local non-persistent unless listed",
                wanted.len()
            ));
        }
        return Ok((PersistVia::BindDirs, notes));
    }
    let mut slots: Vec<Option<String>> = Vec::with_capacity(PERSIST_SLOTS);
    for n in 0..PERSIST_SLOTS {
        slots.push(
            admin
                .feature(qube, &format!("custom-persist.qpm-{n}"))
                .map_err(|e| err(format!("reading custom-persist.qpm-{n}: {e}")))?,
        );
    }
    let mut notes = Vec::new();
    for it in wanted {
        let v = persist_value(it);
        let path_of = |s: &str| {
            s.rsplit_once(":/")
                .map(|(_, p)| format!("/{p}"))
                .unwrap_or_else(|| s.to_owned())
        };
        let target = format!("/{}", it.dest.as_str());
        if let Some(n) = slots
            .iter()
            .position(|s| s.as_deref().is_some_and(|s| path_of(s) == target))
        {
            if slots.get(n).and_then(|s| s.as_deref()) == Some(v.as_str()) {
                continue;
            }
            if !dry_run {
                admin
                    .set_feature(qube, &format!("custom-persist.qpm-{n}"), &v)
                    .map_err(err)?;
            }
            notes.push(format!("{qube}: custom-persist.qpm-{n} = {v} (updated)"));
            if let Some(s) = slots.get_mut(n) {
                *s = Some(v);
            }
            continue;
        }
        let Some(n) = slots.iter().position(Option::is_none) else {
            return Err(err(format!(
                "all {PERSIST_SLOTS} custom-persist.qpm-N slots are used"
            )));
        };
        if !dry_run {
            admin
                .set_feature(qube, &format!("custom-persist.qpm-{n}"), &v)
                .map_err(err)?;
        }
        notes.push(format!(
            "{qube}: custom-persist.qpm-{n} = {v} (new; takes effect at the next restart)"
        ));
        if let Some(s) = slots.get_mut(n) {
            *s = Some(v);
        }
    }
    Ok((PersistVia::CustomPersist, notes))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct CacheEntry {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    hash: [u8; 32],
}

/// Bytes of a [`CacheEntry`] in the cache file, besides its path.
const CACHE_ENTRY_FIXED: usize = 2 + 8 + 16 + 16 + 8 + 32;

/// Stat cache of repository file hashes (`hash-cache.bin` in the sender's
/// state directory): `QPMC`, version `u16` (1), count `u32`, then per
/// file its path length `u16`, path, size `u64`, mtime and ctime (`i128`
/// nanoseconds), inode `u64` and BLAKE3 (32 bytes), big-endian; written
/// sorted by path. A damaged or missing file is an empty cache (every file
/// is hashed again).
///
/// Loading it is one read and one pass over the buffer: the entries stay
/// where they are and are found by binary search, so a push with nothing
/// to hash allocates nothing per file.
#[derive(Debug, Default)]
pub struct HashCache {
    /// The file as read.
    buf: Vec<u8>,
    /// Path start and length in `buf` of each entry (its fixed part
    /// follows the path), sorted by path.
    index: Vec<(usize, usize)>,
    /// Entries hashed in this run (they replace those in `buf`).
    fresh: std::collections::BTreeMap<String, CacheEntry>,
    /// Where the next lookup is tried first: files are looked up in path
    /// order, so each is usually the entry after the last one found.
    next: usize,
}

impl HashCache {
    const FILE: &str = "hash-cache.bin";
    /// Largest cache file read.
    const MAX_BYTES: u64 = 64 * 1024 * 1024;

    /// Loads the cache (empty if missing or unreadable).
    pub fn load(state: &Root) -> Self {
        RelPath::new(Self::FILE)
            .ok()
            .and_then(|p| state.read_limited(&p, Self::MAX_BYTES).ok())
            .and_then(Self::decode)
            .unwrap_or_default()
    }

    fn decode(buf: Vec<u8>) -> Option<Self> {
        let b = buf.as_slice();
        let count = b
            .strip_prefix(b"QPMC\x00\x01")
            .and_then(|c| c.first_chunk::<4>())
            .map(|c| u32::from_be_bytes(*c))?;
        let mut at = 10usize;
        let mut index = Vec::with_capacity((count as usize).min(b.len() / CACHE_ENTRY_FIXED));
        for _ in 0..count {
            let plen = usize::from(u16::from_be_bytes(*b.get(at..)?.first_chunk::<2>()?));
            let path = at.checked_add(2)?;
            std::str::from_utf8(b.get(path..path.checked_add(plen)?)?).ok()?;
            index.push((path, plen));
            at = path + plen + CACHE_ENTRY_FIXED - 2;
        }
        if at != b.len() {
            return None;
        }
        let path = |&(s, l): &(usize, usize)| b.get(s..s + l).unwrap_or_default();
        // Files written before the cache was kept sorted are in any order.
        if !index.is_sorted_by(|x, y| path(x) < path(y)) {
            index.sort_unstable_by(|x, y| path(x).cmp(path(y)));
            if index.windows(2).any(|w| path(&w[0]) == path(&w[1])) {
                return None;
            }
        }
        Some(Self {
            buf,
            index,
            fresh: Default::default(),
            next: 0,
        })
    }

    /// The entry stored for `path`.
    fn get(&mut self, path: &str) -> Option<CacheEntry> {
        if let Some(e) = self.fresh.get(path) {
            return Some(e.clone());
        }
        let at = |&(s, l): &(usize, usize)| self.buf.get(s..s + l).unwrap_or_default();
        let i = match self.index.get(self.next) {
            Some(x) if at(x) == path.as_bytes() => self.next,
            _ => self
                .index
                .binary_search_by(|x| at(x).cmp(path.as_bytes()))
                .ok()?,
        };
        self.next = i + 1;
        let &(s, l) = self.index.get(i)?;
        Self::fixed(self.buf.get(s + l..)?)
    }

    /// The fixed part of an entry at the start of `b`.
    fn fixed(b: &[u8]) -> Option<CacheEntry> {
        let mut c = b;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (a, rest) = c.split_at_checked(n)?;
            c = rest;
            Some(a)
        };
        Some(CacheEntry {
            size: u64::from_be_bytes(take(8)?.try_into().ok()?),
            mtime_ns: i128::from_be_bytes(take(16)?.try_into().ok()?),
            ctime_ns: i128::from_be_bytes(take(16)?.try_into().ok()?),
            ino: u64::from_be_bytes(take(8)?.try_into().ok()?),
            hash: take(32)?.try_into().ok()?,
        })
    }

    /// Every entry, sorted by path.
    fn entries(&self) -> Vec<(String, CacheEntry)> {
        let mut all: std::collections::BTreeMap<String, CacheEntry> = self
            .index
            .iter()
            .filter_map(|&(s, l)| {
                let p = std::str::from_utf8(self.buf.get(s..s + l)?).ok()?;
                Some((p.to_owned(), Self::fixed(self.buf.get(s + l..)?)?))
            })
            .collect();
        all.extend(self.fresh.iter().map(|(p, e)| (p.clone(), e.clone())));
        all.into_iter().collect()
    }

    fn encode(&self) -> Vec<u8> {
        let all = self.entries();
        let mut out = Vec::with_capacity(10 + all.len() * (CACHE_ENTRY_FIXED + 48));
        out.extend_from_slice(b"QPMC\x00\x01");
        out.extend_from_slice(&(all.len() as u32).to_be_bytes());
        for (p, e) in &all {
            let pb = p.as_bytes();
            out.extend_from_slice(&(pb.len() as u16).to_be_bytes());
            out.extend_from_slice(pb);
            out.extend_from_slice(&e.size.to_be_bytes());
            out.extend_from_slice(&e.mtime_ns.to_be_bytes());
            out.extend_from_slice(&e.ctime_ns.to_be_bytes());
            out.extend_from_slice(&e.ino.to_be_bytes());
            out.extend_from_slice(&e.hash);
        }
        out
    }

    /// Saves the cache if it changed (not fsynced: a lost cache only
    /// costs hashing again).
    pub fn save(&self, state: &Root) -> Result<()> {
        if !self.fresh.is_empty() {
            let mut t = state.create_temp(None, 0o600)?;
            t.write_all(&self.encode())?;
            t.persist_as(Self::FILE)?;
            // The earlier (JSON) cache.
            state.remove_file(&RelPath::new("hash-cache.json")?)?;
        }
        Ok(())
    }

    /// Size and BLAKE3 of a repository file, from the cache when its stat
    /// matches.
    /// `seen` is the metadata from listing the repository, if known.
    pub fn hash(
        &mut self,
        repo: &Root,
        src: &RelPath,
        seen: Option<qpm_fs::Meta>,
    ) -> Result<(u64, [u8; 32])> {
        let m = match seen {
            Some(m) => m,
            None => repo
                .metadata(src)?
                .ok_or_else(|| qpm_fs::Error::WrongType {
                    expected: "regular file",
                    path: src.to_string(),
                })?,
        };
        if let Some(c) = self.get(src.as_str()) {
            if c.size == m.size
                && c.mtime_ns == m.mtime_ns
                && c.ctime_ns == m.ctime_ns
                && c.ino == m.ino
            {
                return Ok((m.size, c.hash));
            }
        }
        let data = repo.read_limited(src, proto::MAX_FILE_SIZE)?;
        let h = *blake3::hash(&data).as_bytes();
        self.fresh.insert(
            src.as_str().to_owned(),
            CacheEntry {
                size: data.len() as u64,
                mtime_ns: m.mtime_ns,
                ctime_ns: m.ctime_ns,
                ino: m.ino,
                hash: h,
            },
        );
        Ok((data.len() as u64, h))
    }
}

/// Builds the manifest for `items` (sources returned in entry order).
pub fn manifest(
    repo: &Repo,
    cache: &mut HashCache,
    source: &str,
    items: &[Item],
    via: PersistVia,
) -> Result<Manifest> {
    let mut entries = Vec::with_capacity(items.len());
    for it in items {
        let (size, hash) = cache.hash(repo.root(), &it.src, it.stat)?;
        let mut f = 0u8;
        if it.secret {
            f |= flags::SECRET;
        }
        if it.persist && it.tree == Tree::System {
            f |= match via {
                PersistVia::CustomPersist => flags::PERSIST_CUSTOM,
                PersistVia::BindDirs => flags::PERSIST_BIND_DIRS,
            };
        }
        entries.push(Entry {
            tree: it.tree,
            flags: f,
            mode: it.mode,
            uid: it.uid,
            gid: it.gid,
            size,
            hash,
            path: it.dest.clone(),
        });
    }
    Ok(Manifest {
        kind: Kind::Sync,
        source: source.to_owned(),
        entries,
    })
}

/// Runs one sync exchange: manifest, need list, data, result. `w` is
/// dropped (closing the stream) after the last frame.
pub fn push<W: Write>(
    qube: &str,
    repo: &Repo,
    m: &Manifest,
    items: &[Item],
    w: W,
    r: &mut dyn Read,
) -> Result<Outcome> {
    let perr = |e: proto::ProtoError| SendError::Proto {
        qube: qube.into(),
        source: e,
    };
    let enc = m.encode();
    if enc.len() > proto::MAX_MANIFEST_BYTES as usize || m.entries.len() > proto::MAX_FILES as usize
    {
        return Err(SendError::Limit {
            qube: qube.into(),
            message: "manifest over the protocol limits".into(),
        });
    }
    // The manifest goes straight to the channel (it is one large frame);
    // the data frames that may follow are small: batched into few writes.
    let mut w = w;
    proto::write_frame(&mut w, frame::MANIFEST, &enc).map_err(perr)?;
    w.flush().map_err(|e| perr(e.into()))?;
    drop(enc);
    let (t, len) = proto::read_header(r)
        .map_err(perr)?
        .ok_or_else(|| perr(proto::ProtoError::Truncated { what: "reply" }))?;
    match t {
        frame::RESULT => {
            drop(w);
            let b = proto::read_payload(r, len, "result", proto::MAX_REPLY_BYTES).map_err(perr)?;
            return Outcome::decode(&b).map_err(perr);
        }
        frame::NEED => {}
        other => {
            return Err(perr(proto::ProtoError::UnexpectedFrame {
                expected: "need list or result",
                got: other,
            }));
        }
    }
    let b = proto::read_payload(r, len, "need list", proto::MAX_REPLY_BYTES).map_err(perr)?;
    let need = proto::decode_need(&b, m.entries.len() as u32).map_err(perr)?;
    let mut w = std::io::BufWriter::with_capacity(256 * 1024, w);
    let mut buf = Vec::new();
    for i in need {
        let (Some(e), Some(it)) = (m.entries.get(i as usize), items.get(i as usize)) else {
            continue;
        };
        let mut f = repo.root().open_read(&it.src)?;
        buf.clear();
        buf.reserve(usize::try_from(e.size).unwrap_or(0).saturating_add(5));
        buf.extend_from_slice(&i.to_be_bytes());
        (&mut f)
            .take(e.size.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|x| perr(x.into()))?;
        if buf.len() as u64 != e.size.saturating_add(4)
            || blake3::hash(buf.get(4..).unwrap_or(&[])).as_bytes() != &e.hash
        {
            return Err(SendError::Limit {
                qube: qube.into(),
                message: format!("{} changed while pushing; run the push again", it.src),
            });
        }
        proto::write_frame(&mut w, frame::DATA, &buf).map_err(perr)?;
    }
    proto::write_frame(&mut w, frame::END, &[]).map_err(perr)?;
    w.flush().map_err(|e| perr(e.into()))?;
    drop(w);
    let b = proto::read_frame(r, frame::RESULT, "result", proto::MAX_REPLY_BYTES).map_err(perr)?;
    Outcome::decode(&b).map_err(perr)
}

/// Asks a target for its status.
pub fn status<W: Write>(
    qube: &str,
    source: &str,
    mut w: W,
    r: &mut dyn Read,
) -> Result<proto::Status> {
    let perr = |e: proto::ProtoError| SendError::Proto {
        qube: qube.into(),
        source: e,
    };
    let m = Manifest {
        kind: Kind::Status,
        source: source.to_owned(),
        entries: vec![],
    };
    proto::write_frame(&mut w, frame::MANIFEST, &m.encode()).map_err(perr)?;
    drop(w);
    let b = proto::read_frame(r, frame::STATUS, "status", proto::MAX_REPLY_BYTES).map_err(perr)?;
    proto::Status::decode(&b).map_err(perr)
}

/// Asks a target which entries of a set are not in place (a manifest of
/// kind [`Kind::Check`]): their indices, from its need-list answer.
pub fn check<W: Write>(qube: &str, m: &Manifest, mut w: W, r: &mut dyn Read) -> Result<Vec<u32>> {
    let perr = |e: proto::ProtoError| SendError::Proto {
        qube: qube.into(),
        source: e,
    };
    proto::write_frame(&mut w, frame::MANIFEST, &m.encode()).map_err(perr)?;
    drop(w);
    let (t, len) = proto::read_header(r)
        .map_err(perr)?
        .ok_or_else(|| perr(proto::ProtoError::Truncated { what: "reply" }))?;
    if t != frame::NEED {
        return Err(SendError::Limit {
            qube: qube.into(),
            message: "the target refused the check (an agent without checks, or a path it does not allow)".into(),
        });
    }
    let b = proto::read_payload(r, len, "need list", proto::MAX_REPLY_BYTES).map_err(perr)?;
    proto::decode_need(&b, m.entries.len() as u32).map_err(perr)
}

/// Fetches one file from a target (`qpm sync capture`).
pub fn capture<W: Write>(
    qube: &str,
    source: &str,
    tree: Tree,
    path: &RelPath,
    mut w: W,
    r: &mut dyn Read,
) -> Result<Vec<u8>> {
    let perr = |e: proto::ProtoError| SendError::Proto {
        qube: qube.into(),
        source: e,
    };
    let m = Manifest {
        kind: Kind::Capture,
        source: source.to_owned(),
        entries: vec![Entry {
            tree,
            flags: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            hash: [0; 32],
            path: path.clone(),
        }],
    };
    proto::write_frame(&mut w, frame::MANIFEST, &m.encode()).map_err(perr)?;
    drop(w);
    let (t, len) = proto::read_header(r)
        .map_err(perr)?
        .ok_or_else(|| perr(proto::ProtoError::Truncated { what: "reply" }))?;
    if t == frame::RESULT {
        return Err(SendError::Limit {
            qube: qube.into(),
            message: "the qube refused the capture (see its agent log)".into(),
        });
    }
    if t != frame::DATA {
        return Err(perr(proto::ProtoError::UnexpectedFrame {
            expected: "data",
            got: t,
        }));
    }
    let limit = u32::try_from(proto::MAX_FILE_SIZE.saturating_add(4)).unwrap_or(u32::MAX);
    let b = proto::read_payload(r, len, "data", limit).map_err(perr)?;
    Ok(b.get(4..).unwrap_or(&[]).to_vec())
}

/// The sender's record of what it pushed to each qube (for `plan`, `log`).
#[derive(Debug)]
pub struct SenderState {
    root: Root,
}

/// One line of the push log.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LogEntry {
    /// Unix time.
    pub time: u64,
    /// Target.
    pub qube: String,
    /// Result code.
    pub code: String,
    /// Files written.
    pub written: u32,
    /// Files deleted.
    pub deleted: u32,
    /// Conflicts reported.
    pub conflicts: u32,
    /// Message from the target (printable ASCII only).
    pub message: String,
}

/// A planned change, computed locally against what was last pushed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Planned {
    /// `new`, `modified`, `deleted`, `mode`.
    pub change: &'static str,
    /// `~/x` or `/x` (escaped).
    pub path: String,
    /// Unified diff against the last pushed content (secret files: summary).
    pub diff: String,
}

fn qube_ok(q: &str) -> bool {
    !q.is_empty()
        && q.len() <= 31
        && q.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !q.starts_with('.')
}

impl SenderState {
    /// Opens (creating) the sender state directory.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            root: Root::create_ambient(path, 0o700)?,
        })
    }

    /// The state root.
    pub fn root(&self) -> &Root {
        &self.root
    }

    fn record_path(qube: &str) -> Result<RelPath> {
        if !qube_ok(qube) {
            return Err(SendError::Limit {
                qube: qube.escape_debug().to_string(),
                message: "invalid qube name".into(),
            });
        }
        Ok(RelPath::new(&format!("pushed/{qube}.rec"))?)
    }

    /// The record of the last push to `qube` (empty when there is none or
    /// it is unreadable: the next plan then shows every file as new).
    fn load_record(&self, qube: &str) -> Result<PushRecord> {
        let p = Self::record_path(qube)?;
        Ok(match self.root.read_limited(&p, PushRecord::MAX_BYTES) {
            Ok(b) => PushRecord::decode(&b).unwrap_or_default(),
            Err(_) => PushRecord::default(),
        })
    }

    /// What a push would change in `qube`, against what was last pushed.
    /// Unchanged files are recognised by their hash (from the stat cache),
    /// so only changed files are read.
    pub fn plan(
        &self,
        repo: &Repo,
        cache: &mut HashCache,
        qube: &str,
        items: &[Item],
    ) -> Result<Vec<Planned>> {
        let rec = self.load_record(qube)?;
        let mut out = Vec::new();
        let mut listed = std::collections::BTreeSet::new();
        for it in items {
            listed.insert((it.tree, it.dest.as_str()));
            let (_, hash) = cache.hash(repo.root(), &it.src, it.stat)?;
            let old = rec.get(it.tree, it.dest.as_str());
            let change = match old {
                None => "new",
                Some(o) if o.hash != hash => "modified",
                Some(o) if o.mode != it.mode => "mode",
                Some(_) => continue,
            };
            let new = repo.root().read_limited(&it.src, proto::MAX_FILE_SIZE)?;
            let old_content = old.and_then(|o| rec.content(o));
            let diff = match (old, old_content) {
                (Some(o), None) => format!(
                    "{} (previous version of {} bytes not kept for diffs; new version {} bytes)\n",
                    crate::diff::escape_line(&it.display()),
                    o.size,
                    new.len()
                ),
                _ => crate::diff::unified(&it.display(), old_content, Some(&new), it.secret),
            };
            out.push(Planned {
                change,
                path: crate::diff::escape_line(&it.display()),
                diff,
            });
        }
        for e in &rec.entries {
            if listed.contains(&(e.tree, e.path.as_str())) {
                continue;
            }
            let shown = crate::diff::escape_line(&format!("{}{}", e.tree.prefix(), e.path));
            out.push(Planned {
                change: "deleted",
                diff: format!(
                    "{shown} removed from the repository (deleted in the qube only if unchanged there)\n"
                ),
                path: shown,
            });
        }
        Ok(out)
    }

    /// Records a successful push of manifest `m` (built from `items`): what
    /// was sent, with the content of files small enough to diff, in one
    /// file per qube. Nothing is written when the record is unchanged. The
    /// record only serves `plan`, so it is not fsynced.
    pub fn record_push(&self, repo: &Repo, qube: &str, items: &[Item], m: &Manifest) -> Result<()> {
        let old = self.load_record(qube)?;
        let same = old.entries.len() == m.entries.len()
            && old.entries.iter().zip(&m.entries).all(|(o, e)| {
                o.tree == e.tree
                    && o.path == e.path.as_str()
                    && o.hash == e.hash
                    && o.mode == e.mode
            });
        if same {
            return Ok(());
        }
        let mut new = PushRecord::default();
        for (it, e) in items.iter().zip(&m.entries) {
            let keep = e.size <= PushRecord::KEEP_MAX;
            let content = if !keep {
                None
            } else if let Some(c) = old
                .get(e.tree, e.path.as_str())
                .filter(|o| o.hash == e.hash)
                .and_then(|o| old.content(o))
            {
                Some(c.to_vec())
            } else {
                // What was sent, unless it changed since.
                repo.root()
                    .read_limited(&it.src, proto::MAX_FILE_SIZE)
                    .ok()
                    .filter(|d| blake3::hash(d).as_bytes() == &e.hash)
            };
            new.push(
                e.tree,
                e.path.as_str(),
                e.mode,
                e.size,
                e.hash,
                e.flags & flags::SECRET != 0,
                content,
            );
        }
        let p = Self::record_path(qube)?;
        self.root
            .create_dirs(&RelPath::new("pushed")?, 0o700, &DirPolicy::default())?;
        let mut t = self.root.create_temp(p.parent().as_ref(), 0o600)?;
        t.write_all(&new.encode())?;
        let tmp = t.finish();
        self.root.rename(&tmp, &self.root, &p)?;
        // Records of the earlier format: one copy per file.
        self.root
            .remove_tree(&RelPath::new(&format!("pushed/{qube}"))?)?;
        Ok(())
    }

    /// Appends to the push log (not synced: a log, not state).
    pub fn log(&self, e: &LogEntry) -> Result<()> {
        let p = RelPath::new("push-log.jsonl")?;
        if let Ok(mut line) = serde_json::to_string(e) {
            line.push('\n');
            self.root.append(&p, line.as_bytes(), 0o600)?;
        }
        Ok(())
    }

    /// The push log, oldest first.
    pub fn read_log(&self) -> Vec<LogEntry> {
        let b = RelPath::new("push-log.jsonl")
            .ok()
            .and_then(|p| self.root.read_limited(&p, 16 * 1024 * 1024).ok())
            .unwrap_or_default();
        b.split(|&c| c == b'\n')
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect()
    }
}

/// One file of a [`PushRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct RecEntry {
    tree: Tree,
    path: String,
    mode: u16,
    size: u64,
    hash: [u8; 32],
    secret: bool,
    /// Offset of the kept content in `data`, if kept.
    content: Option<usize>,
}

/// What was last pushed to one qube (`pushed/<qube>.rec`): per file its
/// tree, path, mode, size and hash, and the content of files up to
/// [`PushRecord::KEEP_MAX`] bytes for diffs.
///
/// Format: `QPMR`, version `u16` (1), count `u32`, then per file: tree
/// `u8`, flags `u8` (1 secret, 2 content kept), mode `u16`, size `u64`,
/// hash (32 bytes), path length `u16`, path; then the kept contents in
/// entry order. All integers big-endian.
#[derive(Debug, Clone, Default)]
struct PushRecord {
    entries: Vec<RecEntry>,
    index: std::collections::HashMap<(Tree, String), usize>,
    data: Vec<u8>,
}

impl PushRecord {
    /// Largest file whose content is kept for diffs.
    const KEEP_MAX: u64 = crate::diff::MAX_DIFF_INPUT as u64;
    /// Largest record file read.
    const MAX_BYTES: u64 = proto::MAX_TOTAL_SIZE + proto::MAX_MANIFEST_BYTES as u64;

    fn get(&self, tree: Tree, path: &str) -> Option<&RecEntry> {
        self.index
            .get(&(tree, path.to_owned()))
            .and_then(|&i| self.entries.get(i))
    }

    fn content(&self, e: &RecEntry) -> Option<&[u8]> {
        let start = e.content?;
        let end = start.checked_add(usize::try_from(e.size).ok()?)?;
        self.data.get(start..end)
    }

    #[allow(clippy::too_many_arguments, reason = "one field each")]
    fn push(
        &mut self,
        tree: Tree,
        path: &str,
        mode: u16,
        size: u64,
        hash: [u8; 32],
        secret: bool,
        content: Option<Vec<u8>>,
    ) {
        let off = content.map(|c| {
            let o = self.data.len();
            self.data.extend_from_slice(&c);
            o
        });
        self.index
            .insert((tree, path.to_owned()), self.entries.len());
        self.entries.push(RecEntry {
            tree,
            path: path.to_owned(),
            mode,
            size,
            hash,
            secret,
            content: off,
        });
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + self.entries.len() * 64 + self.data.len());
        out.extend_from_slice(b"QPMR");
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            out.push(e.tree as u8);
            out.push(u8::from(e.secret) | if e.content.is_some() { 2 } else { 0 });
            out.extend_from_slice(&e.mode.to_be_bytes());
            out.extend_from_slice(&e.size.to_be_bytes());
            out.extend_from_slice(&e.hash);
            let p = e.path.as_bytes();
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(p);
        }
        for e in &self.entries {
            if let Some(c) = self.content(e) {
                out.extend_from_slice(c);
            }
        }
        out
    }

    /// Decodes a record; `None` when it is damaged.
    fn decode(b: &[u8]) -> Option<Self> {
        let mut c = b.strip_prefix(b"QPMR")?;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (a, rest) = c.split_at_checked(n)?;
            c = rest;
            Some(a)
        };
        if take(2)? != 1u16.to_be_bytes() {
            return None;
        }
        let count = u32::from_be_bytes(take(4)?.try_into().ok()?);
        if count > proto::MAX_FILES {
            return None;
        }
        let mut r = Self::default();
        let mut sizes = Vec::new();
        for _ in 0..count {
            let tree = match take(1)?.first()? {
                0 => Tree::Home,
                1 => Tree::System,
                _ => return None,
            };
            let fl = *take(1)?.first()?;
            let mode = u16::from_be_bytes(take(2)?.try_into().ok()?);
            let size = u64::from_be_bytes(take(8)?.try_into().ok()?);
            let hash: [u8; 32] = take(32)?.try_into().ok()?;
            let plen = usize::from(u16::from_be_bytes(take(2)?.try_into().ok()?));
            let path = std::str::from_utf8(take(plen)?).ok()?.to_owned();
            sizes.push((fl & 2 != 0).then_some(size));
            r.index.insert((tree, path.clone()), r.entries.len());
            r.entries.push(RecEntry {
                tree,
                path,
                mode,
                size,
                hash,
                secret: fl & 1 != 0,
                content: None,
            });
        }
        let mut off = 0usize;
        for (e, s) in r.entries.iter_mut().zip(sizes) {
            if let Some(s) = s {
                let s = usize::try_from(s).ok()?;
                e.content = Some(off);
                off = off.checked_add(s)?;
            }
        }
        if off != c.len() {
            return None;
        }
        r.data = c.to_vec();
        Some(r)
    }
}

/// Default sender state directory: `$XDG_STATE_HOME/qpm/sync` or
/// `~/.local/state/qpm/sync`.
pub fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return Path::new(&x).join("qpm/sync");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".local/state/qpm/sync")
}

/// Whether an outcome counts as success for the sender's exit status.
pub fn is_success(o: &Outcome) -> bool {
    matches!(o.code, Code::Applied | Code::Unchanged | Code::Queued)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn hash_cache_roundtrip_and_damage() {
        let entry = |n: u8| CacheEntry {
            size: u64::from(n),
            mtime_ns: -5,
            ctime_ns: 1 << 70,
            ino: 9,
            hash: [n; 32],
        };
        let mut c = HashCache::default();
        for (p, n) in [("b", 1), ("a/b", 2), ("a", 3), ("\u{e9}t\u{e9}", 4)] {
            c.fresh.insert(p.into(), entry(n));
        }
        let b = c.encode();
        let mut d = HashCache::decode(b.clone()).unwrap();
        assert_eq!(d.entries(), c.entries());
        assert!(d.fresh.is_empty());
        for (p, n) in [("b", 1), ("a/b", 2), ("a", 3), ("\u{e9}t\u{e9}", 4)] {
            assert_eq!(d.get(p), Some(entry(n)), "{p}");
        }
        // In order (each found where the last lookup left off), twice.
        for _ in 0..2 {
            for (p, e) in d.entries() {
                assert_eq!(d.get(&p), Some(e), "{p}");
            }
        }
        assert_eq!(d.get("a/c"), None);
        assert_eq!(d.get(""), None);
        for n in 0..b.len() {
            assert!(
                HashCache::decode(b[..n].to_vec()).is_none(),
                "truncated at {n}"
            );
        }
        let mut long = b;
        long.push(0);
        assert!(HashCache::decode(long).is_none());
    }

    #[test]
    fn hash_cache_reads_unsorted_files_and_refuses_duplicates() {
        // Written in any order (as before the cache was kept sorted).
        let rec = |p: &str, n: u8| {
            let mut v = (p.len() as u16).to_be_bytes().to_vec();
            v.extend_from_slice(p.as_bytes());
            v.extend_from_slice(&u64::from(n).to_be_bytes());
            v.extend_from_slice(&0i128.to_be_bytes());
            v.extend_from_slice(&0i128.to_be_bytes());
            v.extend_from_slice(&1u64.to_be_bytes());
            v.extend_from_slice(&[n; 32]);
            v
        };
        let file = |recs: &[(&str, u8)]| {
            let mut v = b"QPMC\x00\x01".to_vec();
            v.extend_from_slice(&(recs.len() as u32).to_be_bytes());
            for (p, n) in recs {
                v.extend(rec(p, *n));
            }
            v
        };
        let mut c = HashCache::decode(file(&[("z", 1), ("b/c", 2), ("b", 3)])).unwrap();
        assert_eq!(c.get("z").map(|e| e.size), Some(1));
        assert_eq!(c.get("b/c").map(|e| e.size), Some(2));
        assert_eq!(c.get("b").map(|e| e.size), Some(3));
        assert!(HashCache::decode(file(&[("b", 1), ("a", 2), ("b", 3)])).is_none());
        assert!(HashCache::decode(file(&[("a", 1), ("a", 2)])).is_none());
    }

    #[test]
    fn plan_diffs_small_files_and_summarises_large_ones() {
        let d = tempfile::tempdir().unwrap();
        let repo_dir = d.path().join("repo");
        std::fs::create_dir_all(&repo_dir).unwrap();
        let big = vec![b'a'; PushRecord::KEEP_MAX as usize + 1];
        std::fs::write(repo_dir.join("small"), "old\n").unwrap();
        std::fs::write(repo_dir.join("big"), &big).unwrap();
        std::fs::write(
            repo_dir.join(crate::repo::MAP_FILE),
            "[[file]]\nsrc = \"small\"\ndest = \"~/small\"\nto = [\"q\"]\n\n[[file]]\nsrc = \"big\"\ndest = \"~/big\"\nto = [\"q\"]\n",
        )
        .unwrap();
        let state = SenderState::open(&d.path().join("state")).unwrap();
        let load = || Repo::load(&repo_dir).unwrap();
        let repo = load();
        let items = repo.items_for("q", &[]).unwrap();
        let mut cache = HashCache::default();
        let plan = state.plan(&repo, &mut cache, "q", &items).unwrap();
        assert_eq!(
            plan.iter().map(|p| p.change).collect::<Vec<_>>(),
            ["new", "new"]
        );
        let m = manifest(&repo, &mut cache, "cfg", &items, PersistVia::BindDirs).unwrap();
        state.record_push(&repo, "q", &items, &m).unwrap();
        assert!(
            state
                .plan(&repo, &mut cache, "q", &items)
                .unwrap()
                .is_empty()
        );
        // One record file for the qube, not a copy per file.
        let names: Vec<String> = state
            .root()
            .read_dir(Some(&RelPath::new("pushed").unwrap()))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["q.rec"]);

        std::fs::write(repo_dir.join("small"), "new\n").unwrap();
        let mut big2 = big;
        big2[0] = b'b';
        std::fs::write(repo_dir.join("big"), &big2).unwrap();
        let repo = load();
        let items = repo.items_for("q", &[]).unwrap();
        let plan = state.plan(&repo, &mut cache, "q", &items).unwrap();
        let by = |p: &str| plan.iter().find(|c| c.path == p).unwrap();
        assert_eq!(by("~/small").change, "modified");
        assert!(
            by("~/small").diff.contains("-old\n+new"),
            "{}",
            by("~/small").diff
        );
        assert_eq!(by("~/big").change, "modified");
        assert!(
            by("~/big").diff.contains("not kept for diffs"),
            "{}",
            by("~/big").diff
        );
        // A file removed from the map is planned as a deletion.
        std::fs::write(
            repo_dir.join(crate::repo::MAP_FILE),
            "[[file]]\nsrc = \"small\"\ndest = \"~/small\"\nto = [\"q\"]\n",
        )
        .unwrap();
        let repo = load();
        let items = repo.items_for("q", &[]).unwrap();
        let plan = state.plan(&repo, &mut cache, "q", &items).unwrap();
        assert!(
            plan.iter()
                .any(|c| c.change == "deleted" && c.path == "~/big")
        );
    }

    #[test]
    fn push_record_roundtrip() {
        let mut r = PushRecord::default();
        r.push(
            Tree::Home,
            ".gitconfig",
            0o644,
            3,
            [1; 32],
            false,
            Some(b"abc".to_vec()),
        );
        r.push(Tree::System, "etc/big", 0o600, 1 << 30, [2; 32], true, None);
        let b = r.encode();
        let d = PushRecord::decode(&b).unwrap();
        assert_eq!(d.entries, r.entries);
        let e = d.get(Tree::Home, ".gitconfig").unwrap();
        assert_eq!(d.content(e), Some(&b"abc"[..]));
        assert_eq!(d.content(d.get(Tree::System, "etc/big").unwrap()), None);
        for n in 0..b.len() {
            assert!(PushRecord::decode(&b[..n]).is_none(), "truncated at {n}");
        }
    }
    use std::collections::HashMap;

    #[derive(Default)]
    struct FakeAdmin {
        features: RefCell<HashMap<(String, String), String>>,
    }

    impl AdminPort for FakeAdmin {
        fn tags(&self, _: &str) -> std::result::Result<Vec<String>, String> {
            Ok(vec![])
        }
        fn feature(&self, q: &str, n: &str) -> std::result::Result<Option<String>, String> {
            Ok(self.features.borrow().get(&(q.into(), n.into())).cloned())
        }
        fn set_feature(&self, q: &str, n: &str, v: &str) -> std::result::Result<(), String> {
            self.features
                .borrow_mut()
                .insert((q.into(), n.into()), v.into());
            Ok(())
        }
    }

    fn item(p: &str) -> Item {
        Item {
            src: RelPath::new("x").unwrap(),
            tree: Tree::System,
            dest: RelPath::new(p).unwrap(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            secret: false,
            persist: true,
            stat: None,
        }
    }

    #[test]
    fn persistence_never_enables_custom_persist() {
        let a = FakeAdmin::default();
        let (via, notes) = ensure_persistence(&a, "work", &[item("etc/app.conf")], false).unwrap();
        assert_eq!(via, PersistVia::BindDirs);
        assert!(notes[0].contains("does not turn custom-persist on"));
        assert!(a.features.borrow().is_empty());
    }

    #[test]
    fn persistence_uses_fixed_slots() {
        let a = FakeAdmin::default();
        a.set_feature("work", "service.custom-persist", "1")
            .unwrap();
        a.set_feature("work", "custom-persist.qpm-0", "file:0:0:644:/etc/other")
            .unwrap();
        let (via, _) = ensure_persistence(&a, "work", &[item("etc/app.conf")], false).unwrap();
        assert_eq!(via, PersistVia::CustomPersist);
        assert_eq!(
            a.feature("work", "custom-persist.qpm-1")
                .unwrap()
                .as_deref(),
            Some("file:0:0:644:/etc/app.conf")
        );
        // Idempotent: same slot reused.
        let (_, notes) = ensure_persistence(&a, "work", &[item("etc/app.conf")], false).unwrap();
        assert!(notes.is_empty());
        assert_eq!(a.feature("work", "custom-persist.qpm-2").unwrap(), None);
        // Full.
        for n in 0..PERSIST_SLOTS {
            a.set_feature(
                "work",
                &format!("custom-persist.qpm-{n}"),
                &format!("/x{n}"),
            )
            .unwrap();
        }
        assert!(ensure_persistence(&a, "work", &[item("etc/new.conf")], false).is_err());
    }
}
