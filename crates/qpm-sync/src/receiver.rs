//! The receiving side: staging, validation, review and journaled apply.
//!
//! State directory layout (private, `0700`):
//!
//! ```text
//! applied.bin             what qpm put where: hash + stat cache, per path
//!                         (binary, see `Applied`; `applied.json` before)
//! history.jsonl           one line per applied sync (id, source, time, counts)
//! agent.log               details of refusals (the caller only gets a fixed reply)
//! journal.json            present only while a sync is being applied
//! pending/<id>/plan.json  a sync waiting for consent (or being applied)
//! pending/<id>/data/<n>   staged content of manifest entry n
//! backups/<id>/index.json previous versions replaced by sync <id>
//! backups/<id>/<n>        previous content
//! ```
//!
//! Apply (all-or-nothing): (1) write the journal in state `preparing`;
//! (2) for every file make the content ready beside its target (the staged
//! file itself when the state directory is on the target's filesystem,
//! otherwise a copy in the target directory), hard-link or copy the previous
//! version into the backup directory; (3) one `syncfs` per filesystem;
//! (4) rewrite the journal as `committed`; (5) rename every file into place
//! and unlink deletions; (6) `fsync` the touched directories, record the new
//! state, remove the journal. A crash before (4) rolls back (temporaries and
//! backups removed, the sync stays pending); after it, the next run of the
//! agent rolls forward. Every step is idempotent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use qpm_fs::{DirPolicy, Kind as FKind, RelPath, Root};
use serde::{Deserialize, Serialize};

use crate::config::{AgentConfig, Gui};
use crate::diff;
use crate::proto::{self, Code, Manifest, Outcome, Tree, flags, frame};

/// Receiver errors (local; the caller only sees a fixed reply).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The stream broke the protocol.
    #[error(transparent)]
    Proto(#[from] proto::ProtoError),
    /// Filesystem failure.
    #[error(transparent)]
    Fs(#[from] qpm_fs::Error),
    /// Refused by policy (allowlist, limits, caller, ownership).
    #[error("refused: {0}")]
    Refused(String),
    /// State files are damaged.
    #[error("state `{file}`: {message}")]
    State {
        /// File.
        file: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Nothing pending with this id.
    #[error("no pending sync `{0}`")]
    NoPending(String),
    /// Other I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

type Result<T, E = AgentError> = std::result::Result<T, E>;

/// What the agent was started with.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// The filesystem root system paths are relative to (`/` on a qube).
    pub root: PathBuf,
    /// State directory.
    pub state: PathBuf,
    /// Configuration (already loaded).
    pub config: AgentConfig,
    /// Ambient paths that must never be written (the config file, the
    /// agent's binary).
    pub protected: Vec<PathBuf>,
    /// Authenticated caller (`QREXEC_REMOTE_DOMAIN`).
    pub caller: Option<String>,
    /// X display for the consent dialog.
    pub display: Option<String>,
    /// Test hook: kill the agent with SIGKILL at journal step N.
    pub crash_at: Option<u32>,
    /// Test hook: pretend this much free space.
    pub free_space: Option<u64>,
}

/// Stat cache + hash of a file qpm put in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// BLAKE3 hex of the content applied.
    pub hash: String,
    /// Size.
    pub size: u64,
    /// Mode applied.
    pub mode: u32,
    /// Source qube.
    pub source: String,
    /// Persistence flags.
    #[serde(default)]
    pub persist: u8,
    /// Stat cache: device, inode, mtime, ctime.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Modification time (ns).
    pub mtime_ns: i128,
    /// Change time (ns).
    pub ctime_ns: i128,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Applied {
    files: BTreeMap<String, Record>,
    #[serde(default)]
    last_sync: String,
    #[serde(default)]
    last_applied: u64,
}

/// `applied.bin`: `QPMA`, version `u16` (1), last sync id (`u8` length +
/// bytes), last applied time `u64`, count `u32`, then per file: key
/// (`u16` length + bytes), hash (`u8` length + bytes), size `u64`, mode
/// `u32`, source (`u8` length + bytes), persist `u8`, dev `u64`, inode
/// `u64`, mtime and ctime (`i128` ns); big-endian. Read at every call, so
/// it is binary: no text parsing, no hex.
impl Applied {
    fn encode(&self) -> Vec<u8> {
        fn short(out: &mut Vec<u8>, s: &str) {
            let b = s.as_bytes();
            let b = b.get(..b.len().min(255)).unwrap_or(b"");
            out.push(b.len() as u8);
            out.extend_from_slice(b);
        }
        let mut out = Vec::with_capacity(32 + self.files.len() * 200);
        out.extend_from_slice(b"QPMA\x00\x01");
        short(&mut out, &self.last_sync);
        out.extend_from_slice(&self.last_applied.to_be_bytes());
        out.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        for (k, r) in &self.files {
            let kb = k.as_bytes();
            out.extend_from_slice(&(kb.len() as u16).to_be_bytes());
            out.extend_from_slice(kb);
            short(&mut out, &r.hash);
            out.extend_from_slice(&r.size.to_be_bytes());
            out.extend_from_slice(&r.mode.to_be_bytes());
            short(&mut out, &r.source);
            out.push(r.persist);
            out.extend_from_slice(&r.dev.to_be_bytes());
            out.extend_from_slice(&r.ino.to_be_bytes());
            out.extend_from_slice(&r.mtime_ns.to_be_bytes());
            out.extend_from_slice(&r.ctime_ns.to_be_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let v = AppliedView::parse(b)?;
        let text = |r: Span| text_at(b, r).map(str::to_owned);
        let mut files = Vec::with_capacity(v.recs.len());
        for r in &v.recs {
            files.push((
                text(r.key)?,
                Record {
                    hash: text(r.hash)?,
                    size: r.stat.size,
                    mode: r.stat.mode,
                    source: text(r.source)?,
                    persist: r.persist,
                    dev: r.stat.dev,
                    ino: r.stat.ino,
                    mtime_ns: r.stat.mtime_ns,
                    ctime_ns: r.stat.ctime_ns,
                },
            ));
        }
        // The file is written in key order, so this is a linear bulk
        // build, not a search per entry.
        Some(Self {
            files: files.into_iter().collect(),
            last_sync: text(v.last_sync)?,
            last_applied: v.last_applied,
        })
    }
}

/// Byte range `start..end` in the bytes of `applied.bin`.
type Span = (usize, usize);

/// The text at `r` in `b`.
fn text_at(b: &[u8], r: Span) -> Option<&str> {
    std::str::from_utf8(b.get(r.0..r.1)?).ok()
}

/// What the stat cache of a record compares with the file's metadata.
#[derive(Debug, Clone, Copy)]
struct StatKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    mode: u32,
}

/// One record of `applied.bin`, its texts as ranges of the file's bytes.
#[derive(Debug, Clone, Copy)]
struct RecView {
    key: Span,
    hash: Span,
    source: Span,
    persist: u8,
    stat: StatKey,
}

/// `applied.bin` parsed without a string per record, for a push with
/// nothing to change (see [`nothing_to_change`]). Every text is checked
/// to be UTF-8: the bytes decode to an [`Applied`] exactly when they parse.
#[derive(Debug)]
struct AppliedView {
    last_sync: Span,
    last_applied: u64,
    /// In file order (key order, as written).
    recs: Vec<RecView>,
}

/// Reads `applied.bin` front to back.
struct Cursor<'b> {
    b: &'b [u8],
    pos: usize,
}

impl<'b> Cursor<'b> {
    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        let end = self.pos.checked_add(n)?;
        let a = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(a)
    }
    fn arr<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn byte(&mut self) -> Option<u8> {
        let [x] = self.arr::<1>()?;
        Some(x)
    }
    fn text(&mut self, n: usize) -> Option<Span> {
        let start = self.pos;
        std::str::from_utf8(self.take(n)?).ok()?;
        Some((start, self.pos))
    }
}

impl AppliedView {
    fn parse(b: &[u8]) -> Option<Self> {
        if !b.starts_with(b"QPMA\x00\x01") {
            return None;
        }
        let mut c = Cursor { b, pos: 6 };
        let n = usize::from(c.byte()?);
        let last_sync = c.text(n)?;
        let last_applied = u64::from_be_bytes(c.arr()?);
        let count = u32::from_be_bytes(c.arr()?);
        let mut recs = Vec::with_capacity((count as usize).min(b.len() / 60));
        for _ in 0..count {
            let n = usize::from(u16::from_be_bytes(c.arr()?));
            let key = c.text(n)?;
            let n = usize::from(c.byte()?);
            let hash = c.text(n)?;
            let size = u64::from_be_bytes(c.arr()?);
            let mode = u32::from_be_bytes(c.arr()?);
            let n = usize::from(c.byte()?);
            let source = c.text(n)?;
            let persist = c.byte()?;
            let dev = u64::from_be_bytes(c.arr()?);
            let ino = u64::from_be_bytes(c.arr()?);
            let mtime_ns = i128::from_be_bytes(c.arr()?);
            let ctime_ns = i128::from_be_bytes(c.arr()?);
            recs.push(RecView {
                key,
                hash,
                source,
                persist,
                stat: StatKey {
                    dev,
                    ino,
                    size,
                    mtime_ns,
                    ctime_ns,
                    mode,
                },
            });
        }
        (c.pos == b.len()).then_some(Self {
            last_sync,
            last_applied,
            recs,
        })
    }
}

/// One change of a plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    /// Write or delete.
    pub delete: bool,
    /// Tree.
    pub tree: Tree,
    /// Path in the tree.
    pub path: String,
    /// Staged data file (index in the manifest) for writes.
    pub staged: Option<u32>,
    /// Mode for writes.
    pub mode: u32,
    /// Owner for system files.
    pub uid: u32,
    /// Group for system files.
    pub gid: u32,
    /// New content hash (writes).
    pub new_hash: Option<String>,
    /// Content hash the target had when planned (None: absent).
    pub base_hash: Option<String>,
    /// The target was edited locally since qpm last wrote it (or qpm never
    /// wrote it).
    pub conflict: bool,
    /// Secret: diff not shown.
    pub secret: bool,
    /// Persistence flags.
    pub persist: u8,
    /// Size of the new content.
    pub size: u64,
}

impl Op {
    fn key(&self) -> String {
        key(self.tree, &self.path)
    }
    /// `~/path` or `/path`, escaped.
    pub fn display(&self) -> String {
        diff::escape_line(&format!("{}{}", self.tree.prefix(), self.path))
    }
}

fn key(tree: Tree, path: &str) -> String {
    let mut k = String::with_capacity(path.len() + 2);
    push_key(&mut k, tree, path);
    k
}

/// Appends the key of `tree`/`path` (see [`key`]) to `k`.
fn push_key(k: &mut String, tree: Tree, path: &str) {
    k.push_str(match tree {
        Tree::Home => "h:",
        Tree::System => "s:",
    });
    k.push_str(path);
}

/// The tree and path of a key (see [`key`]).
fn split_key(k: &str) -> Option<(Tree, &str)> {
    match k.split_once(':') {
        Some(("h", p)) => Some((Tree::Home, p)),
        Some(("s", p)) => Some((Tree::System, p)),
        _ => None,
    }
}

/// A sync waiting for consent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Sync id.
    pub id: String,
    /// Caller.
    pub source: String,
    /// Unix time received.
    pub received: u64,
    /// Changes.
    pub ops: Vec<Op>,
    /// Files qpm placed that were edited locally and are no longer in the
    /// source's manifest (kept, reported).
    pub kept: Vec<String>,
    /// Restore records for a rollback plan.
    #[serde(default)]
    pub rollback_of: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JournalOp {
    op: Op,
    /// Where the ready content is: `s:` staged in state, `t:` temp beside target.
    ready: Option<String>,
    /// Backup file name in backups/<id>/, if the target existed.
    backup: Option<String>,
    /// Persistent copy temp (below root) for bind-dirs.
    rw_ready: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Journal {
    id: String,
    committed: bool,
    ops: Vec<JournalOp>,
    plan: Plan,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BackupItem {
    tree: Tree,
    path: String,
    backup: Option<String>,
    previous: Option<Record>,
    mode: u32,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rel(s: &str) -> Result<RelPath> {
    Ok(RelPath::new(s)?)
}

fn hash_hex(h: &[u8; 32]) -> String {
    hex::encode(h)
}

/// Whether `hex` is [`hash_hex`] of `h`, without building the string.
fn hex_eq(hex: &[u8], h: &[u8; 32]) -> bool {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    hex.len() == 64
        && hex
            .chunks_exact(2)
            .zip(h)
            .all(|(pair, &b)| pair == [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
}

/// The receiver.
#[derive(Debug)]
pub struct Agent {
    root: Root,
    home: Root,
    state: Root,
    opts: AgentOptions,
    extra_deny: Vec<String>,
    euid: u32,
    home_owner: (u32, u32),
    step: std::sync::atomic::AtomicU32,
}

/// Decision on a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consent {
    /// Apply it.
    Yes,
    /// Discard it.
    No,
    /// Leave it queued.
    Later,
}

impl Agent {
    /// Opens the root, home and state directories and recovers an
    /// interrupted apply.
    pub fn open(opts: AgentOptions) -> Result<Self> {
        let root = Root::open(&opts.root)?;
        let home_rel = opts.config.home_rel().to_owned();
        let home = if home_rel.is_empty() {
            Root::open(&opts.root)?
        } else {
            root.open_dir(&rel(&home_rel)?)?
        };
        let state = Root::create_ambient(&opts.state, 0o700)?;
        let hm = home.root_metadata()?;
        let euid = rustix::process::geteuid().as_raw();
        let mut extra_deny = Vec::new();
        let root_abs = std::fs::canonicalize(&opts.root).unwrap_or_else(|_| opts.root.clone());
        let mut protect = vec![opts.state.clone()];
        protect.extend(opts.protected.iter().cloned());
        for p in protect {
            let p = std::fs::canonicalize(&p).unwrap_or(p);
            if let Ok(r) = p.strip_prefix(&root_abs) {
                let s = format!("/{}", r.display());
                let is_dir = p.is_dir();
                extra_deny.push(if is_dir { format!("{s}/") } else { s });
            }
        }
        let agent = Self {
            root,
            home,
            state,
            opts,
            extra_deny,
            euid,
            home_owner: (hm.uid, hm.gid),
            step: std::sync::atomic::AtomicU32::new(0),
        };
        for d in ["pending", "backups"] {
            agent
                .state
                .create_dirs(&rel(d)?, 0o700, &DirPolicy::default())?;
        }
        agent.recover()?;
        Ok(agent)
    }

    /// Test hook: counts journal steps and kills the process at the chosen one.
    fn step(&self, what: &str) {
        use std::sync::atomic::Ordering;
        let n = self.step.load(Ordering::Relaxed).saturating_add(1);
        self.step.store(n, Ordering::Relaxed);
        tracing::trace!(step = n, what, "journal step");
        if self.opts.crash_at == Some(n) {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
    }

    fn log(&self, line: &str) {
        // Local log: escaped, bounded, never file content.
        let line = diff::escape_line(line);
        let line = line.get(..line.len().min(2000)).unwrap_or("");
        let entry = format!("{} {}\n", now(), line);
        if let Ok(p) = rel("agent.log") {
            let mut old = self.state.read_limited(&p, 1024 * 1024).unwrap_or_default();
            if old.len() > 512 * 1024 {
                old.drain(..old.len() / 2);
            }
            old.extend_from_slice(entry.as_bytes());
            let _ = self.state.write_atomic(&p, &old, 0o600);
        }
        tracing::warn!("{}", line);
    }

    fn tree_root(&self, t: Tree) -> &Root {
        match t {
            Tree::Home => &self.home,
            Tree::System => &self.root,
        }
    }

    fn abs(&self, t: Tree, path: &str) -> String {
        let mut s = String::new();
        self.abs_into(&mut s, t, path);
        s
    }

    /// [`Self::abs`] into `s` (cleared first).
    fn abs_into(&self, s: &mut String, t: Tree, path: &str) {
        s.clear();
        if t == Tree::Home {
            s.push_str(self.opts.config.home.trim_end_matches('/'));
        }
        s.push('/');
        s.push_str(path);
    }

    fn load_applied(&self) -> Result<Applied> {
        let read = |name: &str| match self.state.read_limited(&rel(name)?, 64 * 1024 * 1024) {
            Ok(b) => Ok(Some(b)),
            Err(qpm_fs::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(AgentError::from(e)),
        };
        if let Some(b) = read("applied.bin")? {
            return Applied::decode(&b).ok_or_else(|| AgentError::State {
                file: "applied.bin",
                message: "damaged".into(),
            });
        }
        // The earlier format, until the next save replaces it.
        match read("applied.json")? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| AgentError::State {
                file: "applied.json",
                message: e.to_string(),
            }),
            None => Ok(Applied::default()),
        }
    }

    fn save_applied(&self, a: &Applied) -> Result<()> {
        self.state
            .write_atomic(&rel("applied.bin")?, &a.encode(), 0o600)?;
        if self.state.remove_file(&rel("applied.json")?)? {
            self.state.sync_dir(None)?;
        }
        Ok(())
    }

    /// Hash of the current file at `tree/path`: `Ok(None)` if absent,
    /// `Err(Refused)` if it is not a regular file.
    fn current_hash(&self, tree: Tree, path: &RelPath, max: u64) -> Result<Option<String>> {
        let m = self.tree_root(tree).metadata(path)?;
        self.hash_seen(tree, path, m, max)
    }

    /// [`Self::current_hash`] for a file whose metadata `m` was just read.
    fn hash_seen(
        &self,
        tree: Tree,
        path: &RelPath,
        m: Option<qpm_fs::Meta>,
        max: u64,
    ) -> Result<Option<String>> {
        let r = self.tree_root(tree);
        match m {
            None => Ok(None),
            Some(m) if m.kind == FKind::File => {
                if m.size > max {
                    return Ok(Some("too-large".into()));
                }
                let mut f = r.open_read(path)?;
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(buf.get(..n).unwrap_or(&[]));
                }
                Ok(Some(h.finalize().to_hex().to_string()))
            }
            Some(m) if m.kind == FKind::Symlink => Ok(Some("symlink".into())),
            Some(_) => Err(AgentError::Refused(format!(
                "{} exists and is not a regular file",
                self.abs(tree, path.as_str())
            ))),
        }
    }

    /// Serves one `qpm.SyncConfig` call: manifest in, need list out, data
    /// in, result out. Returns the outcome (also sent to the caller).
    pub fn serve(&self, input: &mut dyn Read, output: &mut dyn Write) -> Result<Outcome> {
        let fail = |code: Code, msg: &str| Outcome {
            code,
            written: 0,
            deleted: 0,
            conflicts: 0,
            message: msg.into(),
        };
        // The target files named in the applied records are `stat`ed on a
        // second thread while the manifest arrives and is decoded: a push
        // with nothing to change is then only a comparison.
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (first, pre) = std::thread::scope(|s| {
            // Without a thread (none could be started), no read-ahead.
            let pre = std::thread::Builder::new()
                .spawn_scoped(s, || self.prestat(&stop))
                .ok();
            let first = match proto::read_header(input) {
                // The caller hung up without a request (e.g. its own
                // repository failed to load after it opened the call).
                Ok(None) => None,
                Ok(Some((t, len))) => Some(if t == frame::MANIFEST {
                    proto::read_payload(input, len, "manifest", proto::MAX_MANIFEST_BYTES)
                        .and_then(|b| Manifest::decode(&b))
                } else {
                    Err(proto::ProtoError::UnexpectedFrame {
                        expected: "manifest",
                        got: t,
                    })
                }),
                Err(e) => Some(Err(e)),
            };
            // Only a sync uses it: a status or capture call, or a bad
            // stream, does not wait for the whole pass.
            if !matches!(&first, Some(Ok(m)) if matches!(m.kind, proto::Kind::Sync | proto::Kind::SyncSet))
            {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            (first, pre.and_then(|p| p.join().ok().flatten()))
        });
        let Some(first) = first else {
            return Ok(fail(Code::Refused, "no request"));
        };
        let manifest = match first {
            Ok(m) => m,
            Err(e) => {
                self.log(&format!("refused stream from {:?}: {e}", self.opts.caller));
                let o = fail(Code::Refused, "invalid stream");
                proto::write_frame(output, frame::RESULT, &o.encode())?;
                return Ok(o);
            }
        };
        if manifest.kind == proto::Kind::Status {
            let s = self.status()?;
            proto::write_frame(output, frame::STATUS, &s.encode())?;
            output.flush()?;
            return Ok(fail(Code::Unchanged, "status"));
        }
        let caller = self.opts.caller.clone().unwrap_or_else(|| "unknown".into());
        if manifest.kind == proto::Kind::Capture {
            return self.capture(&manifest, &caller, output);
        }
        if manifest.kind == proto::Kind::Check {
            return self.check(&manifest, &caller, output);
        }
        match self.receive(&manifest, &caller, input, output, pre) {
            Ok(o) => {
                proto::write_frame(output, frame::RESULT, &o.encode())?;
                output.flush()?;
                Ok(o)
            }
            Err(e) => {
                self.log(&format!("sync from {caller:?} refused: {e}"));
                let refused = match &e {
                    AgentError::Refused(_) | AgentError::Proto(_) => true,
                    AgentError::Fs(f) => !matches!(f, qpm_fs::Error::Io { .. }),
                    _ => false,
                };
                let o = if refused {
                    fail(Code::Refused, "refused; details in the target's agent log")
                } else {
                    fail(Code::Failed, "failed; details in the target's agent log")
                };
                let _ = proto::write_frame(output, frame::RESULT, &o.encode());
                let _ = output.flush();
                Ok(o)
            }
        }
    }

    /// Sends back one allowed, regular file (`qpm sync capture`).
    fn capture(&self, m: &Manifest, caller: &str, output: &mut dyn Write) -> Result<Outcome> {
        let refuse = |why: String, output: &mut dyn Write| -> Result<Outcome> {
            self.log(&format!("capture by {caller:?} refused: {why}"));
            let o = Outcome {
                code: Code::Refused,
                written: 0,
                deleted: 0,
                conflicts: 0,
                message: "capture refused".into(),
            };
            proto::write_frame(output, frame::RESULT, &o.encode())?;
            Ok(o)
        };
        let cfg = &self.opts.config;
        if !cfg.sources.is_empty() && !cfg.sources.iter().any(|s| s == caller) {
            return refuse("caller not an allowed source".into(), output);
        }
        let Some(e) = m.entries.first() else {
            return refuse("no entry".into(), output);
        };
        if !cfg.allowed(&self.abs(e.tree, e.path.as_str()), &self.extra_deny) {
            return refuse(format!("{} is not allowed", e.display()), output);
        }
        let content = match self
            .tree_root(e.tree)
            .read_limited(&e.path, cfg.max_file_size)
        {
            Ok(c) => c,
            Err(err) => return refuse(err.to_string(), output),
        };
        let mut payload = 0u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&content);
        proto::write_frame(output, frame::DATA, &payload)?;
        output.flush()?;
        Ok(Outcome {
            code: Code::Unchanged,
            written: 0,
            deleted: 0,
            conflicts: 0,
            message: "captured".into(),
        })
    }

    /// Answers a check of a set (`qpm status` / `qpm verify` of a
    /// package's files): the indices of the entries whose file is not as
    /// the set's owner last applied it and the manifest says. Only files
    /// that owner placed are looked at (hashed when their stat changed);
    /// nothing is written.
    fn check(&self, m: &Manifest, caller: &str, output: &mut dyn Write) -> Result<Outcome> {
        let mut out = Outcome {
            code: Code::Unchanged,
            written: 0,
            deleted: 0,
            conflicts: 0,
            message: "check".into(),
        };
        if let Err(e) = self.check_entries(m, caller) {
            self.log(&format!("check by {caller:?} refused: {e}"));
            out.code = Code::Refused;
            out.message = "refused; details in the target's agent log".into();
            proto::write_frame(output, frame::RESULT, &out.encode())?;
            return Ok(out);
        }
        let owner = set_owner(m, caller);
        let applied = self.load_applied()?;
        let mut dirs = Dirs::new(self);
        let mut differ = Vec::new();
        for (i, e) in m.entries.iter().enumerate() {
            let want = hash_hex(&e.hash);
            let rec = applied
                .files
                .get(&key(e.tree, e.path.as_str()))
                .filter(|r| r.source == owner && r.hash == want && r.mode == u32::from(e.mode));
            let ok = match rec {
                None => false,
                Some(r) => {
                    let meta = dirs.stat(e.tree, &e.path)?;
                    unchanged(meta.as_ref(), r)
                        || (meta.is_some_and(|md| md.mode == r.mode)
                            && self
                                .hash_seen(e.tree, &e.path, meta, self.opts.config.max_file_size)
                                .ok()
                                .flatten()
                                .as_deref()
                                == Some(want.as_str()))
                }
            };
            if !ok {
                differ.push(u32::try_from(i).unwrap_or(u32::MAX));
            }
        }
        out.conflicts = u32::try_from(differ.len()).unwrap_or(u32::MAX);
        proto::write_frame(output, frame::NEED, &proto::encode_need(&differ))?;
        output.flush()?;
        Ok(out)
    }

    /// The current status.
    pub fn status(&self) -> Result<proto::Status> {
        let a = self.load_applied()?;
        Ok(proto::Status {
            last_sync: a.last_sync.clone(),
            last_applied: a.last_applied,
            managed: u32::try_from(a.files.len()).unwrap_or(u32::MAX),
            pending: u32::try_from(self.pending()?.len()).unwrap_or(u32::MAX),
        })
    }

    fn check_entries(&self, m: &Manifest, caller: &str) -> Result<()> {
        let cfg = &self.opts.config;
        if !cfg.sources.is_empty() && !cfg.sources.iter().any(|s| s == caller) {
            return Err(AgentError::Refused(format!(
                "caller {caller:?} is not an allowed source"
            )));
        }
        if m.entries.len() > cfg.max_files as usize {
            return Err(AgentError::Refused(format!(
                "{} files, limit {}",
                m.entries.len(),
                cfg.max_files
            )));
        }
        let mut total = 0u64;
        let mut abs = String::new();
        for e in &m.entries {
            if e.size > cfg.max_file_size {
                return Err(AgentError::Refused(format!(
                    "{} is {} bytes, limit {}",
                    e.display(),
                    e.size,
                    cfg.max_file_size
                )));
            }
            total = total.saturating_add(e.size);
            self.abs_into(&mut abs, e.tree, e.path.as_str());
            if !cfg.allowed(&abs, &self.extra_deny) {
                return Err(AgentError::Refused(format!(
                    "{} is not allowed",
                    e.display()
                )));
            }
            if e.tree == Tree::System && self.euid != 0 {
                return Err(AgentError::Refused(format!(
                    "{} is a system path and the agent does not run as root",
                    e.display()
                )));
            }
            if e.flags & (flags::PERSIST_BIND_DIRS | flags::PERSIST_CUSTOM) != 0
                && e.path.as_str().contains('\'')
            {
                return Err(AgentError::Refused(format!(
                    "{} cannot be persisted (quote in name)",
                    e.display()
                )));
            }
        }
        if total > cfg.max_total_size {
            return Err(AgentError::Refused(format!(
                "{total} bytes in total, limit {}",
                cfg.max_total_size
            )));
        }
        Ok(())
    }

    fn dir_policy(&self, tree: Tree) -> DirPolicy {
        match tree {
            Tree::Home => DirPolicy {
                owner: Some(self.home_owner.0),
                chown: if self.euid == 0 {
                    Some(self.home_owner)
                } else {
                    None
                },
            },
            Tree::System => DirPolicy {
                owner: Some(0),
                chown: Some((0, 0)),
            },
        }
    }

    /// The applied records (read from `applied.bin` into one buffer), with
    /// the target file of each `stat`ed (in a [`Dirs`] whose parent
    /// directories passed the tree's checks). `None` when there is no
    /// `applied.bin` or it cannot be read: [`Self::receive`] then reads the
    /// records again and reports why. A file whose directory fails a check
    /// is left out, so the check fails again, and is reported, when the
    /// manifest names it. Gives up (`None`) when `stop` is set.
    fn prestat(&self, stop: &std::sync::atomic::AtomicBool) -> Option<Pre<'_>> {
        let buf = self
            .state
            .read_limited(&rel("applied.bin").ok()?, 64 * 1024 * 1024)
            .ok()?;
        let view = AppliedView::parse(&buf)?;
        let mut dirs = Dirs::new(self);
        let mut stats = Vec::with_capacity(view.recs.len());
        for r in &view.recs {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return None;
            }
            let m = text_at(&buf, r.key)
                .and_then(split_key)
                .and_then(|(tree, p)| Some((tree, RelPath::new(p).ok()?)))
                .and_then(|(tree, path)| dirs.stat(tree, &path).ok());
            stats.push(m);
        }
        Some(Pre {
            buf,
            view,
            stats,
            dirs,
        })
    }

    fn receive(
        &self,
        m: &Manifest,
        caller: &str,
        input: &mut dyn Read,
        output: &mut dyn Write,
        pre: Option<Pre<'_>>,
    ) -> Result<Outcome> {
        self.check_entries(m, caller)?;
        // From here on, what this request owns: the caller's plain set or
        // one of its named sets.
        let owner = set_owner(m, caller);
        let caller = owner.as_str();
        if pre.as_ref().is_some_and(|p| p.all_unchanged(m, caller)) {
            return Ok(Outcome {
                code: Code::Unchanged,
                written: 0,
                deleted: 0,
                conflicts: 0,
                message: "nothing to change".into(),
            });
        }
        let (applied, mut dirs) = match pre {
            Some(p) => p.into_applied()?,
            None => (self.load_applied()?, Dirs::new(self)),
        };
        let cfg = &self.opts.config;
        // What is needed, and what would conflict.
        let mut need = Vec::new();
        let mut base: HashMap<u32, Option<String>> = HashMap::new();
        let mut conflicts: BTreeSet<u32> = BTreeSet::new();
        // Entries with a record from this caller (manifest paths are
        // unique, so when these are all its records nothing is deleted).
        let mut listed_from_caller = 0usize;
        let mut k = String::new();
        for (i, e) in m.entries.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            k.clear();
            push_key(&mut k, e.tree, e.path.as_str());
            let rec = applied.files.get(k.as_str());
            let meta = dirs.stat_seen(&k, e.tree, &e.path)?;
            if let Some(r) = rec {
                listed_from_caller += usize::from(r.source == caller);
                if hex_eq(r.hash.as_bytes(), &e.hash)
                    && u32::from(e.mode) == r.mode
                    && r.source == caller
                    && unchanged(meta.as_ref(), r)
                {
                    continue;
                }
            }
            let want = hash_hex(&e.hash);
            let cur = self.hash_seen(e.tree, &e.path, meta, cfg.max_file_size)?;
            if cur.as_deref() == Some(want.as_str())
                && rec.is_some_and(|r| r.mode == u32::from(e.mode) && r.source == caller)
                && meta.is_some_and(|md| md.mode == u32::from(e.mode))
            {
                continue;
            }
            let conflict = match (&cur, rec) {
                (None, _) => false,
                (Some(c), Some(r)) => *c != r.hash && *c != want,
                // An empty file qpm never wrote holds nothing to lose: the
                // long form of `custom-persist` creates the file empty at
                // boot, before the first sync can fill it.
                (Some(_), None) if meta.is_some_and(|m| m.kind == FKind::File && m.size == 0) => {
                    false
                }
                (Some(c), None) => *c != want,
            };
            if conflict {
                conflicts.insert(i);
            }
            base.insert(i, cur);
            need.push(i);
        }
        // Deletions: what this source placed and no longer sends.
        let mut deletes = Vec::new();
        let mut kept = Vec::new();
        let from_caller = applied
            .files
            .values()
            .filter(|r| r.source == caller)
            .count();
        let listed: BTreeSet<String> = if from_caller == listed_from_caller {
            BTreeSet::new()
        } else {
            m.entries
                .iter()
                .map(|e| key(e.tree, e.path.as_str()))
                .collect()
        };
        let unlisted = applied
            .files
            .iter()
            .take_while(|_| from_caller != listed_from_caller);
        for (k, r) in unlisted {
            if r.source != caller || listed.contains(k) {
                continue;
            }
            let Some((tree, p)) = split_key(k) else {
                continue;
            };
            let path = rel(p)?;
            let meta = dirs.stat_seen(k, tree, &path)?;
            let cur = if unchanged(meta.as_ref(), r) {
                Some(r.hash.clone())
            } else {
                self.hash_seen(tree, &path, meta, cfg.max_file_size)?
            };
            match cur {
                None => deletes.push((tree, p.to_owned(), None, r.clone())),
                Some(c) if c == r.hash => deletes.push((tree, p.to_owned(), Some(c), r.clone())),
                Some(_) => kept.push(diff::escape_line(&format!("{}{p}", tree.prefix()))),
            }
        }
        if need.is_empty() && deletes.iter().all(|d| d.2.is_none()) {
            if !deletes.is_empty() {
                // Already gone: forget them.
                let mut a = applied;
                for (t, p, _, _) in &deletes {
                    a.files.remove(&key(*t, p));
                }
                self.save_applied(&a)?;
            }
            return Ok(Outcome {
                code: Code::Unchanged,
                written: 0,
                deleted: 0,
                conflicts: u32::try_from(kept.len()).unwrap_or(u32::MAX),
                message: "nothing to change".into(),
            });
        }
        // Free space before writing anything: staged data plus backups.
        let bytes = m.size_of(&need);
        let margin = 1024 * 1024 + 4096 * (need.len() as u64);
        let free = match self.opts.free_space {
            Some(f) => f,
            None => self.state.free_space()?,
        };
        if bytes.saturating_mul(2).saturating_add(margin) > free {
            return Err(AgentError::Refused(format!(
                "not enough free space: need {bytes} bytes (plus backups), {free} available"
            )));
        }
        proto::write_frame(output, frame::NEED, &proto::encode_need(&need))?;
        output.flush()?;
        // Stage.
        let id = m.id();
        let pdir = rel(&format!("pending/{id}"))?;
        self.state.remove_tree(&pdir)?;
        self.state.create_dirs(
            &rel(&format!("pending/{id}/data"))?,
            0o700,
            &DirPolicy::default(),
        )?;
        if let Err(e) = self.stage(m, &need, &id, input) {
            let _ = self.state.remove_tree(&pdir);
            return Err(e);
        }
        let mut ops = Vec::new();
        for &i in &need {
            let Some(e) = m.entries.get(i as usize) else {
                continue;
            };
            ops.push(Op {
                delete: false,
                tree: e.tree,
                path: e.path.as_str().to_owned(),
                staged: Some(i),
                mode: u32::from(e.mode),
                uid: e.uid,
                gid: e.gid,
                new_hash: Some(hash_hex(&e.hash)),
                base_hash: base.get(&i).cloned().flatten(),
                conflict: conflicts.contains(&i),
                secret: e.flags & flags::SECRET != 0,
                persist: e.flags & (flags::PERSIST_BIND_DIRS | flags::PERSIST_CUSTOM),
                size: e.size,
            });
        }
        for (tree, p, cur, r) in deletes {
            if cur.is_none() {
                continue;
            }
            ops.push(Op {
                delete: true,
                tree,
                path: p,
                staged: None,
                mode: r.mode,
                uid: 0,
                gid: 0,
                new_hash: None,
                base_hash: cur,
                conflict: false,
                secret: false,
                persist: r.persist,
                size: 0,
            });
        }
        let plan = Plan {
            id: id.clone(),
            source: caller.to_owned(),
            received: now(),
            ops,
            kept,
            rollback_of: None,
        };
        self.save_plan(&plan)?;
        self.step("staged");
        let n_conf =
            u32::try_from(plan.ops.iter().filter(|o| o.conflict).count() + plan.kept.len())
                .unwrap_or(u32::MAX);
        let counts = |code, msg: &str| Outcome {
            code,
            written: u32::try_from(plan.ops.iter().filter(|o| !o.delete).count())
                .unwrap_or(u32::MAX),
            deleted: u32::try_from(plan.ops.iter().filter(|o| o.delete).count())
                .unwrap_or(u32::MAX),
            conflicts: n_conf,
            message: msg.into(),
        };
        let auto = plan
            .ops
            .iter()
            .all(|o| !o.conflict && cfg.auto(&self.abs(o.tree, &o.path)));
        let consent = if auto {
            Consent::Yes
        } else {
            self.ask_gui(&plan)
        };
        match consent {
            Consent::Yes => {
                self.apply(&id)?;
                Ok(counts(Code::Applied, "applied"))
            }
            Consent::No => {
                self.discard(&id)?;
                Ok(counts(Code::Declined, "declined by the user of the target"))
            }
            Consent::Later => Ok(counts(
                Code::Queued,
                "queued for review in the target (qpm-agent review)",
            )),
        }
    }

    fn stage(&self, m: &Manifest, need: &[u32], id: &str, input: &mut dyn Read) -> Result<()> {
        let data_dir = self.state.open_dir(&rel(&format!("pending/{id}/data"))?)?;
        for &want in need {
            let (t, len) = proto::read_header(input)?
                .ok_or(proto::ProtoError::Truncated { what: "data frame" })?;
            if t != frame::DATA {
                return Err(proto::ProtoError::UnexpectedFrame {
                    expected: "data frame",
                    got: t,
                }
                .into());
            }
            let e = m
                .entries
                .get(want as usize)
                .ok_or_else(|| AgentError::Refused("need index".into()))?;
            if u64::from(len) != e.size.saturating_add(4) {
                return Err(AgentError::Refused(format!(
                    "data frame for {} has length {len}, expected {}",
                    e.display(),
                    e.size.saturating_add(4)
                )));
            }
            let mut idx = [0u8; 4];
            input
                .read_exact(&mut idx)
                .map_err(|_| proto::ProtoError::Truncated { what: "data frame" })?;
            if u32::from_be_bytes(idx) != want {
                return Err(AgentError::Refused("data frames out of order".into()));
            }
            // The pending directory is new: each file is created under
            // its final name (a partial one is removed with the directory).
            let mut f = data_dir.create_new(&rel(&want.to_string())?, 0o600)?;
            let mut hr = HashingReader {
                inner: input,
                hasher: blake3::Hasher::new(),
            };
            let n = std::io::copy(&mut (&mut hr).take(e.size), &mut f)?;
            if n != e.size {
                return Err(proto::ProtoError::Truncated { what: "file data" }.into());
            }
            if hr.hasher.finalize().as_bytes() != &e.hash {
                return Err(AgentError::Refused(format!(
                    "content of {} does not match its hash",
                    e.display()
                )));
            }
        }
        let (t, len) =
            proto::read_header(input)?.ok_or(proto::ProtoError::Truncated { what: "end frame" })?;
        if t != frame::END || len != 0 {
            return Err(proto::ProtoError::UnexpectedFrame {
                expected: "end frame",
                got: t,
            }
            .into());
        }
        // Nothing may follow.
        let mut extra = [0u8; 1];
        if input.read(&mut extra)? != 0 {
            return Err(AgentError::Refused("data after the end frame".into()));
        }
        Ok(())
    }

    fn save_plan(&self, p: &Plan) -> Result<()> {
        let b = serde_json::to_vec_pretty(p).map_err(|e| AgentError::State {
            file: "plan.json",
            message: e.to_string(),
        })?;
        self.state
            .write_atomic(&rel(&format!("pending/{}/plan.json", p.id))?, &b, 0o600)?;
        Ok(())
    }

    /// Loads a pending plan.
    pub fn plan(&self, id: &str) -> Result<Plan> {
        if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || id.is_empty() {
            return Err(AgentError::NoPending(diff::escape_line(id)));
        }
        let p = rel(&format!("pending/{id}/plan.json"))?;
        let b = match self.state.read_limited(&p, 64 * 1024 * 1024) {
            Ok(b) => b,
            Err(qpm_fs::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(AgentError::NoPending(id.to_owned()));
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&b).map_err(|e| AgentError::State {
            file: "plan.json",
            message: e.to_string(),
        })
    }

    /// Pending syncs, oldest first.
    pub fn pending(&self) -> Result<Vec<Plan>> {
        let mut out = Vec::new();
        for (name, kind) in self.state.read_dir(Some(&rel("pending")?))? {
            if kind == FKind::Dir {
                if let Ok(p) = self.plan(&name) {
                    out.push(p);
                }
            }
        }
        out.sort_by_key(|p| p.received);
        Ok(out)
    }

    /// Drops a pending sync.
    pub fn discard(&self, id: &str) -> Result<()> {
        let _ = self.plan(id)?;
        self.state.remove_tree(&rel(&format!("pending/{id}"))?)?;
        self.log(&format!("sync {id} discarded"));
        Ok(())
    }

    /// The review text of a plan: a header and a unified diff per change.
    pub fn review_text(&self, plan: &Plan) -> Result<String> {
        let mut out = format!(
            "Configuration from {} (sync {}): {} change(s)\n",
            diff::escape_line(&plan.source),
            plan.id,
            plan.ops.len()
        );
        for o in &plan.ops {
            if o.conflict {
                out.push_str(&format!(
                    "WARNING: {} was changed in this qube since qpm last wrote it (or was not written by qpm); applying replaces it (a backup is kept)\n",
                    o.display()
                ));
            }
        }
        for k in &plan.kept {
            out.push_str(&format!(
                "note: {k} was removed from the source but edited here; it is kept\n"
            ));
        }
        out.push('\n');
        for o in &plan.ops {
            let path = rel(&o.path)?;
            let max = self.opts.config.max_file_size;
            let old = match self.tree_root(o.tree).metadata(&path) {
                Ok(Some(m)) if m.kind == FKind::File => Some(
                    self.tree_root(o.tree)
                        .read_limited(&path, max.max(m.size))?,
                ),
                Ok(Some(_)) => Some(b"(not a regular file)".to_vec()),
                Ok(None) => None,
                Err(e) => {
                    out.push_str(&format!(
                        "WARNING: {}: {e}; applying will fail\n",
                        o.display()
                    ));
                    None
                }
            };
            let new = match o.staged {
                Some(i) if !o.delete => Some(
                    self.state
                        .read_limited(&rel(&format!("pending/{}/data/{i}", plan.id))?, max)?,
                ),
                _ => None,
            };
            out.push_str(&diff::unified(
                &format!("{}{}", o.tree.prefix(), o.path),
                old.as_deref(),
                new.as_deref(),
                o.secret,
            ));
            if !o.delete {
                out.push_str(&format!("mode {:o}\n", o.mode));
            }
            out.push('\n');
        }
        Ok(out)
    }

    fn ask_gui(&self, plan: &Plan) -> Consent {
        if self.opts.config.gui == Gui::Never {
            return Consent::Later;
        }
        let Some(display) = self.opts.display.clone().filter(|d| !d.is_empty()) else {
            return Consent::Later;
        };
        let text = match self.review_text(plan) {
            Ok(t) => t,
            Err(e) => {
                self.log(&format!("review text for {}: {e}", plan.id));
                return Consent::Later;
            }
        };
        let Ok(f) = rel(&format!("pending/{}/review.txt", plan.id)) else {
            return Consent::Later;
        };
        if self.state.write_atomic(&f, text.as_bytes(), 0o600).is_err() {
            return Consent::Later;
        }
        let status = std::process::Command::new(&self.opts.config.dialog)
            .arg("--text-info")
            .arg(format!(
                "--title=qpm: configuration from {}",
                diff::escape_line(&plan.source)
            ))
            .arg(format!(
                "--filename={}",
                self.state.display_path(&f).display()
            ))
            .args([
                "--width=900",
                "--height=600",
                "--ok-label=Apply",
                "--cancel-label=Reject",
                "--font=Monospace 10",
            ])
            .env("DISPLAY", display)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output();
        match status.as_ref().map(|s| {
            (
                s.status.code(),
                s.stderr.is_empty() || !String::from_utf8_lossy(&s.stderr).contains("display"),
            )
        }) {
            Ok((Some(0), _)) => Consent::Yes,
            Ok((Some(1), true)) => Consent::No,
            other => {
                self.log(&format!(
                    "consent dialog unavailable ({other:?}); sync {} queued",
                    plan.id
                ));
                Consent::Later
            }
        }
    }

    /// Applies a pending sync through the journal.
    pub fn apply(&self, id: &str) -> Result<()> {
        let plan = self.plan(id)?;
        // The target must still be what the plan was made against.
        let mut dirs = Dirs::new(self);
        for o in &plan.ops {
            let path = rel(&o.path)?;
            let m = dirs.stat(o.tree, &path)?;
            let cur = self.hash_seen(o.tree, &path, m, self.opts.config.max_file_size)?;
            if cur != o.base_hash {
                return Err(AgentError::Refused(format!(
                    "{} changed since the sync was received; it was not applied",
                    o.display()
                )));
            }
        }
        let mut jops: Vec<JournalOp> = plan
            .ops
            .iter()
            .map(|o| JournalOp {
                op: o.clone(),
                ready: None,
                backup: None,
                rw_ready: None,
            })
            .collect();
        let mut journal = Journal {
            id: id.to_owned(),
            committed: false,
            ops: jops.clone(),
            plan,
        };
        self.write_journal(&journal)?;
        self.step("journal preparing");
        let state_dev = self.state.root_metadata()?.dev;
        let bdir = format!("backups/{id}");
        self.state
            .create_dirs(&rel(&bdir)?, 0o700, &DirPolicy::default())?;
        let mut backups = Vec::new();
        let mut devs: BTreeSet<u64> = BTreeSet::from([state_dev]);
        // Parent directories created (or checked) and opened once each.
        let mut parents: HashMap<(Tree, String), (Root, u64)> = HashMap::new();
        for n in 0..jops.len() {
            let Some(j) = jops.get_mut(n) else { break };
            let o = j.op.clone();
            let troot = self.tree_root(o.tree);
            let path = rel(&o.path)?;
            let pol = self.dir_policy(o.tree);
            let (uid, gid) = match o.tree {
                Tree::Home => self.home_owner,
                Tree::System => (o.uid, o.gid),
            };
            let parent_dev = match path.parent() {
                Some(parent) => {
                    let k = (o.tree, parent.as_str().to_owned());
                    if !parents.contains_key(&k) {
                        if parents.len() >= MAX_OPEN_DIRS {
                            parents.clear();
                        }
                        troot.create_dirs(&parent, 0o755, &pol)?;
                        let d = troot.open_dir(&parent)?;
                        let dev = d.root_metadata()?.dev;
                        parents.insert(k.clone(), (d, dev));
                    }
                    match parents.get(&k) {
                        Some((_, dev)) => *dev,
                        None => troot.open_dir(&parent)?.root_metadata()?.dev,
                    }
                }
                None => troot.root_metadata()?.dev,
            };
            devs.insert(parent_dev);
            let current = match path
                .parent()
                .and_then(|p| parents.get(&(o.tree, p.as_str().to_owned())))
            {
                Some((d, _)) => d.metadata(&rel(path.file_name())?)?,
                None => troot.metadata(&path)?,
            };
            // Backup of the current version.
            let prev = match current {
                Some(m) if m.kind == FKind::File => {
                    let b = rel(&format!("{bdir}/{n}"))?;
                    self.state.remove_file(&b)?;
                    if troot.hard_link(&path, &self.state, &b).is_err() {
                        let mut src = troot.open_read(&path)?;
                        let mut t = self.state.create_temp(Some(&rel(&bdir)?), 0o600)?;
                        t.copy_from(&mut src, u64::MAX)?;
                        let tmp = t.finish();
                        self.state.rename(&tmp, &self.state, &b)?;
                    }
                    Some((n.to_string(), m.mode))
                }
                _ => None,
            };
            j.backup = prev.as_ref().map(|p| p.0.clone());
            backups.push(BackupItem {
                tree: o.tree,
                path: o.path.clone(),
                backup: j.backup.clone(),
                previous: None,
                mode: prev.map_or(0, |p| p.1),
            });
            if o.delete {
                continue;
            }
            let Some(i) = o.staged else { continue };
            let staged = rel(&format!("pending/{id}/data/{i}"))?;
            let owner = if self.euid == 0 {
                Some((uid, gid))
            } else {
                None
            };
            if parent_dev == state_dev {
                set_perms(&self.state, &staged, o.mode, owner)?;
                j.ready = Some(format!("s:{}", staged.as_str()));
            } else {
                let mut src = self.state.open_read(&staged)?;
                let mut t = troot.create_temp(path.parent().as_ref(), o.mode)?;
                t.copy_from(&mut src, u64::MAX)?;
                if let Some((u, g)) = owner {
                    t.chown(u, g)?;
                }
                j.ready = Some(format!("t:{}", t.finish().as_str()));
            }
            if o.persist != 0 {
                let rw = self
                    .opts
                    .config
                    .bind_dirs_rw
                    .trim_start_matches('/')
                    .to_owned();
                let target = rel(&format!("{rw}/{}", o.path))?;
                if let Some(parent) = target.parent() {
                    self.root.create_dirs(
                        &parent,
                        0o755,
                        &DirPolicy {
                            owner: Some(0),
                            chown: Some((0, 0)),
                        },
                    )?;
                }
                let mut src = self.state.open_read(&staged)?;
                let mut t = self.root.create_temp(target.parent().as_ref(), o.mode)?;
                t.copy_from(&mut src, u64::MAX)?;
                if let Some((u, g)) = owner {
                    t.chown(u, g)?;
                }
                j.rw_ready = Some(t.finish().as_str().to_owned());
            }
            // A temporary outside the state directory is recorded as soon
            // as it exists, so that a crash can clean it up.
            if j.ready.as_deref().is_some_and(|r| r.starts_with("t:")) || j.rw_ready.is_some() {
                journal.ops = jops.clone();
                self.write_journal(&journal)?;
            }
        }
        journal.ops = jops.clone();
        self.write_journal(&journal)?;
        let b = serde_json::to_vec(&backups).map_err(|e| AgentError::State {
            file: "backups",
            message: e.to_string(),
        })?;
        self.state
            .write_atomic(&rel(&format!("{bdir}/index.json"))?, &b, 0o600)?;
        self.step("prepared");
        // One syncfs per filesystem: all content and backups durable at once.
        self.state.syncfs()?;
        if devs.len() > 1 {
            self.home.syncfs()?;
            self.root.syncfs()?;
        }
        self.step("synced");
        journal.committed = true;
        self.write_journal(&journal)?;
        self.step("committed");
        self.roll_forward(&journal)
    }

    fn write_journal(&self, j: &Journal) -> Result<()> {
        let b = serde_json::to_vec(j).map_err(|e| AgentError::State {
            file: "journal.json",
            message: e.to_string(),
        })?;
        self.state.write_atomic(&rel("journal.json")?, &b, 0o600)?;
        Ok(())
    }

    /// Finishes or undoes an interrupted apply.
    pub fn recover(&self) -> Result<()> {
        let p = rel("journal.json")?;
        let b = match self.state.read_limited(&p, 256 * 1024 * 1024) {
            Ok(b) => b,
            Err(qpm_fs::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let j: Journal = serde_json::from_slice(&b).map_err(|e| AgentError::State {
            file: "journal.json",
            message: e.to_string(),
        })?;
        if j.committed {
            self.log(&format!("finishing interrupted apply of sync {}", j.id));
            self.roll_forward(&j)
        } else {
            self.log(&format!("undoing interrupted preparation of sync {}", j.id));
            for jo in &j.ops {
                if let Some(t) = jo.ready.as_deref().and_then(|r| r.strip_prefix("t:")) {
                    self.tree_root(jo.op.tree).remove_file(&rel(t)?)?;
                }
                if let Some(t) = &jo.rw_ready {
                    self.root.remove_file(&rel(t)?)?;
                }
            }
            self.state
                .remove_tree(&rel(&format!("backups/{}", j.id))?)?;
            self.state.remove_file(&p)?;
            self.state.sync_dir(None)?;
            Ok(())
        }
    }

    fn roll_forward(&self, j: &Journal) -> Result<()> {
        let mut dirs: BTreeSet<(Tree, Option<String>)> = BTreeSet::new();
        let mut handles = Handles::default();
        for jo in &j.ops {
            let o = &jo.op;
            let troot = self.tree_root(o.tree);
            let path = rel(&o.path)?;
            dirs.insert((o.tree, path.parent().map(|p| p.as_str().to_owned())));
            if o.delete {
                // Only what is still the content qpm put there.
                if let Some(h) = self.current_hash(o.tree, &path, u64::MAX)? {
                    if Some(&h) == o.base_hash.as_ref() {
                        troot.remove_file(&path)?;
                    }
                }
            } else if let Some(r) = &jo.ready {
                let (from_root, from) = match r.split_once(':') {
                    Some(("s", p)) => (&self.state, rel(p)?),
                    Some(("t", p)) => (troot, rel(p)?),
                    _ => {
                        return Err(AgentError::State {
                            file: "journal.json",
                            message: "bad ready entry".into(),
                        });
                    }
                };
                let from_kind = if std::ptr::eq(from_root, &self.state) {
                    0
                } else {
                    1 + o.tree as u8
                };
                handles.rename(from_kind, from_root, &from, 1 + o.tree as u8, troot, &path)?;
            }
            if let Some(t) = &jo.rw_ready {
                let t = rel(t)?;
                let rw = self
                    .opts
                    .config
                    .bind_dirs_rw
                    .trim_start_matches('/')
                    .to_owned();
                let dest = rel(&format!("{rw}/{}", o.path))?;
                if o.delete {
                    self.root.remove_file(&dest)?;
                } else if self.root.metadata(&t)?.is_some() {
                    self.root.rename(&t, &self.root, &dest)?;
                }
            }
            self.step("renamed");
        }
        for (tree, d) in &dirs {
            let d = d.as_deref().map(rel).transpose()?;
            self.tree_root(*tree).sync_dir(d.as_ref())?;
        }
        // New state.
        let mut a = self.load_applied()?;
        let mut backups: Vec<BackupItem> = self
            .state
            .read_limited(
                &rel(&format!("backups/{}/index.json", j.id))?,
                64 * 1024 * 1024,
            )
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut dirs = Dirs::new(self);
        for (jo, bi) in j.ops.iter().zip(backups.iter_mut()) {
            let o = &jo.op;
            let k = o.key();
            bi.previous = a.files.get(&k).cloned();
            if o.delete {
                a.files.remove(&k);
                continue;
            }
            let path = rel(&o.path)?;
            if let Some(m) = dirs.stat(o.tree, &path)? {
                a.files.insert(
                    k,
                    Record {
                        hash: o.new_hash.clone().unwrap_or_default(),
                        size: m.size,
                        mode: m.mode,
                        source: j.plan.source.clone(),
                        persist: o.persist,
                        dev: m.dev,
                        ino: m.ino,
                        mtime_ns: m.mtime_ns,
                        ctime_ns: m.ctime_ns,
                    },
                );
            }
        }
        if j.plan.rollback_of.is_none() {
            let b = serde_json::to_vec(&backups).map_err(|e| AgentError::State {
                file: "backups",
                message: e.to_string(),
            })?;
            let idx = rel(&format!("backups/{}/index.json", j.id))?;
            if self.state.metadata(&idx)?.is_some() {
                self.state.write_atomic(&idx, &b, 0o600)?;
            }
        }
        a.last_sync = j.id.clone();
        a.last_applied = now();
        self.save_applied(&a)?;
        self.update_bind_dirs(&a)?;
        let hist = serde_json::json!({
            "id": j.id, "source": j.plan.source, "time": a.last_applied,
            "written": j.ops.iter().filter(|o| !o.op.delete).count(),
            "deleted": j.ops.iter().filter(|o| o.op.delete).count(),
            "rollback_of": j.plan.rollback_of,
        });
        let hp = rel("history.jsonl")?;
        let mut h = self
            .state
            .read_limited(&hp, 16 * 1024 * 1024)
            .unwrap_or_default();
        h.extend_from_slice(format!("{hist}\n").as_bytes());
        self.state.write_atomic(&hp, &h, 0o600)?;
        self.step("state recorded");
        self.state.remove_file(&rel("journal.json")?)?;
        self.state.sync_dir(None)?;
        self.state
            .remove_tree(&rel(&format!("pending/{}", j.id))?)?;
        self.step("done");
        Ok(())
    }

    /// Rewrites the agent's bind-dirs file from the persisted records.
    fn update_bind_dirs(&self, a: &Applied) -> Result<()> {
        let paths: Vec<&str> = a
            .files
            .iter()
            .filter(|(_, r)| r.persist & flags::PERSIST_BIND_DIRS != 0)
            .filter_map(|(k, _)| k.strip_prefix("s:"))
            .collect();
        let f = rel(self.opts.config.bind_dirs_file.trim_start_matches('/'))?;
        if paths.is_empty() && self.root.metadata(&f)?.is_none() {
            return Ok(());
        }
        let mut s = String::from(
            "# Written by qpm-agent: configuration files synced by qpm that persist across restarts.\n",
        );
        for p in paths {
            s.push_str(&format!("binds+=( '/{}' )\n", p.replace('\'', "")));
        }
        if let Some(parent) = f.parent() {
            self.root
                .create_dirs(&parent, 0o755, &DirPolicy::default())?;
        }
        self.root.write_atomic(&f, s.as_bytes(), 0o644)?;
        Ok(())
    }

    /// Applied syncs, oldest first (raw JSON lines).
    pub fn history(&self) -> Result<Vec<serde_json::Value>> {
        let b = self
            .state
            .read_limited(&rel("history.jsonl")?, 16 * 1024 * 1024)
            .unwrap_or_default();
        Ok(b.split(|&c| c == b'\n')
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect())
    }

    /// Restores the versions a sync replaced (the last applied one by
    /// default), through the same journal. Files the sync created are
    /// removed if unchanged since.
    pub fn rollback(&self, id: Option<&str>) -> Result<String> {
        let hist = self.history()?;
        let id = match id {
            Some(i) => i.to_owned(),
            None => hist
                .iter()
                .rev()
                .find(|h| h.get("rollback_of").is_none_or(serde_json::Value::is_null))
                .and_then(|h| h.get("id")?.as_str().map(str::to_owned))
                .ok_or_else(|| AgentError::NoPending("nothing to roll back".into()))?,
        };
        if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AgentError::NoPending(diff::escape_line(&id)));
        }
        let items: Vec<BackupItem> = serde_json::from_slice(
            &self
                .state
                .read_limited(&rel(&format!("backups/{id}/index.json"))?, 64 * 1024 * 1024)
                .map_err(|_| AgentError::NoPending(id.clone()))?,
        )
        .map_err(|e| AgentError::State {
            file: "backups index",
            message: e.to_string(),
        })?;
        let rid = format!("{id}-rollback-{}", now());
        let data = format!("pending/{rid}/data");
        self.state
            .create_dirs(&rel(&data)?, 0o700, &DirPolicy::default())?;
        let a = self.load_applied()?;
        let mut ops = Vec::new();
        for (n, it) in items.iter().enumerate() {
            let path = rel(&it.path)?;
            let cur = self.current_hash(it.tree, &path, u64::MAX)?;
            let applied_hash = a.files.get(&key(it.tree, &it.path)).map(|r| r.hash.clone());
            match &it.backup {
                Some(b) => {
                    let content = self
                        .state
                        .read_limited(&rel(&format!("backups/{id}/{b}"))?, u64::MAX)?;
                    let staged = rel(&format!("{data}/{n}"))?;
                    self.state.write_atomic(&staged, &content, 0o600)?;
                    ops.push(Op {
                        delete: false,
                        tree: it.tree,
                        path: it.path.clone(),
                        staged: Some(u32::try_from(n).unwrap_or(u32::MAX)),
                        mode: it.mode,
                        uid: 0,
                        gid: 0,
                        new_hash: Some(blake3::hash(&content).to_hex().to_string()),
                        base_hash: cur.clone(),
                        conflict: cur.is_some() && cur != applied_hash,
                        secret: false,
                        persist: it.previous.as_ref().map_or(0, |p| p.persist),
                        size: content.len() as u64,
                    });
                }
                None if cur.is_some() && cur == applied_hash => ops.push(Op {
                    delete: true,
                    tree: it.tree,
                    path: it.path.clone(),
                    staged: None,
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    new_hash: None,
                    base_hash: cur,
                    conflict: false,
                    secret: false,
                    persist: 0,
                    size: 0,
                }),
                None => {}
            }
        }
        let plan = Plan {
            id: rid.clone(),
            source: "rollback".into(),
            received: now(),
            ops,
            kept: Vec::new(),
            rollback_of: Some(id),
        };
        self.save_plan(&plan)?;
        self.apply(&rid)?;
        Ok(rid)
    }
}

/// Whether the stat cache says the file is still what qpm wrote.
fn unchanged(m: Option<&qpm_fs::Meta>, r: &Record) -> bool {
    same_stat(
        m,
        &StatKey {
            dev: r.dev,
            ino: r.ino,
            size: r.size,
            mtime_ns: r.mtime_ns,
            ctime_ns: r.ctime_ns,
            mode: r.mode,
        },
    )
}

/// [`unchanged`] for the fields of a record.
fn same_stat(m: Option<&qpm_fs::Meta>, r: &StatKey) -> bool {
    m.is_some_and(|m| {
        m.kind == FKind::File
            && m.dev == r.dev
            && m.ino == r.ino
            && m.size == r.size
            && m.mtime_ns == r.mtime_ns
            && m.ctime_ns == r.ctime_ns
            && m.mode == r.mode
    })
}

/// Directory handles for renames, keyed by which root (0 state, 1 home,
/// 2 system) and the directory's path in it.
#[derive(Default)]
struct Handles(HashMap<(u8, String), Root>);

impl Handles {
    fn ensure(&mut self, kind: u8, root: &Root, dir: &RelPath) -> Result<()> {
        let k = (kind, dir.as_str().to_owned());
        if !self.0.contains_key(&k) {
            if self.0.len() >= MAX_OPEN_DIRS {
                self.0.clear();
            }
            let d = root.open_dir(dir)?;
            self.0.insert(k, d);
        }
        Ok(())
    }

    /// Renames `from` (below `from_root`) over `to` (below `to_root`)
    /// through cached handles of both directories; `Ok(false)` when
    /// `from` is already gone (an earlier run moved it).
    fn rename(
        &mut self,
        fk: u8,
        from_root: &Root,
        from: &RelPath,
        tk: u8,
        to_root: &Root,
        to: &RelPath,
    ) -> Result<bool> {
        if let (Some(fp), Some(tp)) = (from.parent(), to.parent()) {
            self.ensure(fk, from_root, &fp)?;
            self.ensure(tk, to_root, &tp)?;
            if let (Some(fd), Some(td)) = (
                self.0.get(&(fk, fp.as_str().to_owned())),
                self.0.get(&(tk, tp.as_str().to_owned())),
            ) {
                let name = rel(from.file_name())?;
                if fd.metadata(&name)?.is_none() {
                    return Ok(false);
                }
                fd.rename(&name, td, &rel(to.file_name())?)?;
                return Ok(true);
            }
        }
        if from_root.metadata(from)?.is_none() {
            return Ok(false);
        }
        from_root.rename(from, to_root, to)?;
        Ok(true)
    }
}

/// What [`Agent::prestat`] read ahead: the bytes of `applied.bin`, its
/// records, and the metadata of each record's target file (`None`: not
/// read, e.g. its directory failed a check; `Some(None)`: absent).
struct Pre<'a> {
    buf: Vec<u8>,
    view: AppliedView,
    stats: Vec<Option<Option<qpm_fs::Meta>>>,
    dirs: Dirs<'a>,
}

impl<'a> Pre<'a> {
    /// See [`nothing_to_change`].
    fn all_unchanged(&self, m: &Manifest, caller: &str) -> bool {
        nothing_to_change(&self.buf, &self.view, &self.stats, m, caller)
    }

    /// The records and directory handles for the full comparison, with
    /// the metadata read ahead.
    fn into_applied(self) -> Result<(Applied, Dirs<'a>)> {
        let applied = Applied::decode(&self.buf).ok_or_else(|| AgentError::State {
            file: "applied.bin",
            message: "damaged".into(),
        })?;
        let mut dirs = self.dirs;
        dirs.seen.reserve(self.stats.len());
        for (r, m) in self.view.recs.iter().zip(self.stats) {
            if let (Some(k), Some(m)) = (text_at(&self.buf, r.key), m) {
                dirs.seen.insert(k.to_owned(), m);
            }
        }
        Ok((applied, dirs))
    }
}

/// Whether the manifest asks for nothing: every entry has a record
/// from `caller` (in `view`, parsed from `buf`) with its hash and mode, the
/// target file is what qpm wrote (its metadata in `stats`, by record), and
/// `caller` has no other record (nothing to delete). Both lists are sorted
/// by key, so this is one merge, with no string built per entry. `false`
/// is always safe: the full comparison runs then.
fn nothing_to_change(
    buf: &[u8],
    view: &AppliedView,
    stats: &[Option<Option<qpm_fs::Meta>>],
    m: &Manifest,
    caller: &str,
) -> bool {
    let recs = &view.recs;
    let bytes = |r: Span| buf.get(r.0..r.1).unwrap_or(&[]);
    let mut key = Vec::with_capacity(256);
    let mut j = 0usize;
    for e in &m.entries {
        key.clear();
        key.extend_from_slice(match e.tree {
            Tree::Home => b"h:",
            Tree::System => b"s:",
        });
        key.extend_from_slice(e.path.as_str().as_bytes());
        while recs.get(j).is_some_and(|r| bytes(r.key) < key.as_slice()) {
            j += 1;
        }
        let (Some(r), Some(Some(meta))) = (recs.get(j), stats.get(j)) else {
            return false;
        };
        if bytes(r.key) != key.as_slice()
            || !hex_eq(bytes(r.hash), &e.hash)
            || u32::from(e.mode) != r.stat.mode
            || bytes(r.source) != caller.as_bytes()
            || !same_stat(meta.as_ref(), &r.stat)
        {
            return false;
        }
        j += 1;
    }
    let from_caller = recs
        .iter()
        .filter(|r| bytes(r.source) == caller.as_bytes())
        .count();
    from_caller == m.entries.len()
}

/// Most directory handles [`Dirs`] keeps open.
const MAX_OPEN_DIRS: usize = 256;

/// Directory handles for one pass over many files: each parent directory
/// is checked against the tree's [`DirPolicy`] and opened (beneath the
/// tree, no symlinks) once, and every file is then `stat`ed relative to
/// its handle.
struct Dirs<'a> {
    agent: &'a Agent,
    /// `None`: the directory does not exist.
    /// By tree (home, system), then the directory's path.
    open: [HashMap<String, Option<Root>>; 2],
    /// Metadata already read, by [`key`], each used once (see
    /// [`Agent::prestat`]).
    seen: HashMap<String, Option<qpm_fs::Meta>>,
    /// Directories whose whole path passed [`Root::check_dirs`].
    checked: std::collections::HashSet<(Tree, String)>,
}

impl<'a> Dirs<'a> {
    fn new(agent: &'a Agent) -> Self {
        Self {
            agent,
            open: [HashMap::new(), HashMap::new()],
            seen: HashMap::new(),
            checked: std::collections::HashSet::new(),
        }
    }

    /// [`Self::stat`] of the file with key `k`, taken from what was read
    /// ahead when there is one.
    fn stat_seen(&mut self, k: &str, tree: Tree, path: &RelPath) -> Result<Option<qpm_fs::Meta>> {
        match self.seen.remove(k) {
            Some(m) => Ok(m),
            None => self.stat(tree, path),
        }
    }

    /// Metadata of `path` in `tree` without following a symlink; `None`
    /// when it or its directory does not exist.
    fn stat(&mut self, tree: Tree, path: &RelPath) -> Result<Option<qpm_fs::Meta>> {
        let Some((parent, name)) = path.as_str().rsplit_once('/') else {
            return Ok(self.agent.tree_root(tree).metadata(path)?);
        };
        let t = usize::from(tree == Tree::System);
        if !self.open.get(t).is_some_and(|o| o.contains_key(parent)) {
            let parent = rel(parent)?;
            if self.open.iter().map(HashMap::len).sum::<usize>() >= MAX_OPEN_DIRS {
                // Bounded descriptors whatever the manifest's order.
                self.open.iter_mut().for_each(HashMap::clear);
            }
            let troot = self.agent.tree_root(tree);
            let policy = self.agent.dir_policy(tree);
            // Opened without following symlinks: its ancestors are checked
            // (once per pass) and the directory itself through its handle.
            // When it cannot be opened, the full check says why.
            let h = match troot.open_dir(&parent) {
                Ok(h) => {
                    if let Some(up) = parent.parent() {
                        let uk = (tree, up.as_str().to_owned());
                        if !self.checked.contains(&uk) {
                            troot.check_dirs(&up, &policy)?;
                            self.checked.insert(uk);
                        }
                    }
                    h.check_self(&policy)?;
                    Some(h)
                }
                Err(e) => {
                    troot.check_dirs(&parent, &policy)?;
                    match e {
                        qpm_fs::Error::Io { source, .. }
                            if source.kind() == std::io::ErrorKind::NotFound
                                || source.raw_os_error()
                                    == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
                        {
                            None
                        }
                        e => return Err(e.into()),
                    }
                }
            };
            if let Some(o) = self.open.get_mut(t) {
                o.insert(parent.as_str().to_owned(), h);
            }
        }
        match self.open.get(t).and_then(|o| o.get(parent)) {
            Some(Some(d)) => Ok(d.metadata_name(name)?),
            _ => Ok(None),
        }
    }
}

fn set_perms(root: &Root, p: &RelPath, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    root.set_perms(p, mode, owner)?;
    Ok(())
}

struct HashingReader<'a> {
    inner: &'a mut dyn Read,
    hasher: blake3::Hasher,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or(&[]));
        Ok(n)
    }
}

/// The owner recorded for the files of a sync: the caller for a plain
/// sync, `CALLER:SET` for a sync (or a check) of a named set (qube names hold no `:`,
/// so the two never collide).
pub fn set_owner(m: &Manifest, caller: &str) -> String {
    if matches!(m.kind, proto::Kind::SyncSet | proto::Kind::Check) {
        format!("{caller}:{}", m.source)
    } else {
        caller.to_owned()
    }
}

/// Where a state directory lives by default: `$XDG_STATE_HOME/qpm-agent`,
/// `~/.local/state/qpm-agent`, or `/rw/qpm-agent` for root. Root's state
/// is on the private volume itself: `/var/lib` comes from the template and
/// is reset when an AppVM restarts, and `/rw` stays persistent whatever
/// `custom-persist` lists (the applied records, backups and journal must
/// outlive a restart, or a restart would forget which files qpm put there).
pub fn default_state_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/rw/qpm-agent");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return Path::new(&x).join("qpm-agent");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/home/user".into());
    Path::new(&home).join(".local/state/qpm-agent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_state_roundtrip_and_damage() {
        let mut a = Applied {
            last_sync: "00112233445566778899aabbccddeeff".into(),
            last_applied: 1_700_000_000,
            ..Applied::default()
        };
        a.files.insert(
            "h:.gitconfig".into(),
            Record {
                hash: "ab".repeat(32),
                size: 12,
                mode: 0o644,
                source: "cfg".into(),
                persist: 0,
                dev: 2049,
                ino: 77,
                mtime_ns: 1_700_000_000_123_456_789,
                ctime_ns: -1,
            },
        );
        let b = a.encode();
        assert_eq!(Applied::decode(&b).unwrap(), a);
        for n in 0..b.len() {
            assert!(Applied::decode(&b[..n]).is_none(), "truncated at {n}");
        }
        let mut long = b;
        long.push(0);
        assert!(Applied::decode(&long).is_none());
    }

    #[test]
    fn no_change_merge_matches_only_what_the_full_comparison_skips() {
        let meta = |ino: u64| qpm_fs::Meta {
            kind: FKind::File,
            size: 12,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            nlink: 1,
            dev: 2049,
            ino,
            mtime_ns: 5,
            ctime_ns: 6,
        };
        let rec = |ino: u64, source: &str| Record {
            hash: hash_hex(&[ino as u8; 32]),
            size: 12,
            mode: 0o644,
            source: source.into(),
            persist: 0,
            dev: 2049,
            ino,
            mtime_ns: 5,
            ctime_ns: 6,
        };
        let entry = |tree: Tree, path: &str, ino: u64| proto::Entry {
            tree,
            flags: 0,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 12,
            hash: [ino as u8; 32],
            path: RelPath::new(path).unwrap(),
        };
        let mut a = Applied::default();
        a.files.insert("h:a/x".into(), rec(1, "cfg"));
        a.files.insert("h:b".into(), rec(2, "cfg"));
        a.files.insert("h:c".into(), rec(3, "other"));
        a.files.insert("s:etc/y".into(), rec(4, "cfg"));
        let buf = a.encode();
        let view = AppliedView::parse(&buf).unwrap();
        let keys: Vec<_> = a.files.keys().cloned().collect();
        assert_eq!(keys, ["h:a/x", "h:b", "h:c", "s:etc/y"]);
        let all = vec![
            Some(Some(meta(1))),
            Some(Some(meta(2))),
            Some(Some(meta(3))),
            Some(Some(meta(4))),
        ];
        let manifest = |entries: Vec<proto::Entry>| Manifest {
            kind: proto::Kind::Sync,
            source: "cfg".into(),
            entries,
        };
        let same = manifest(vec![
            entry(Tree::Home, "a/x", 1),
            entry(Tree::Home, "b", 2),
            entry(Tree::System, "etc/y", 4),
        ]);
        assert!(nothing_to_change(&buf, &view, &all, &same, "cfg"));
        // Another caller's records are its own.
        assert!(!nothing_to_change(&buf, &view, &all, &same, "other"));
        // A record of the caller the manifest leaves out is a deletion.
        let fewer = manifest(vec![entry(Tree::Home, "a/x", 1), entry(Tree::Home, "b", 2)]);
        assert!(!nothing_to_change(&buf, &view, &all, &fewer, "cfg"));
        // New content, a new file, a file held by another source.
        let mut changed = manifest(vec![
            entry(Tree::Home, "a/x", 1),
            entry(Tree::Home, "b", 9),
            entry(Tree::System, "etc/y", 4),
        ]);
        assert!(!nothing_to_change(&buf, &view, &all, &changed, "cfg"));
        changed.entries[1] = entry(Tree::Home, "bb", 2);
        assert!(!nothing_to_change(&buf, &view, &all, &changed, "cfg"));
        changed.entries[1] = entry(Tree::Home, "c", 3);
        assert!(!nothing_to_change(&buf, &view, &all, &changed, "cfg"));
        // A mode change.
        let mut mode = manifest(same.entries.clone());
        mode.entries[0].mode = 0o600;
        assert!(!nothing_to_change(&buf, &view, &all, &mode, "cfg"));
        // The target edited locally (stat differs), gone, or not read ahead
        // (its directory failed a check).
        for st in [Some(Some(meta(7))), Some(None), None] {
            let mut s = all.clone();
            s[3] = st;
            assert!(!nothing_to_change(&buf, &view, &s, &same, "cfg"));
        }
        // Out of order: no merge, the full comparison decides.
        let unsorted = manifest(vec![
            entry(Tree::Home, "b", 2),
            entry(Tree::Home, "a/x", 1),
            entry(Tree::System, "etc/y", 4),
        ]);
        assert!(!nothing_to_change(&buf, &view, &all, &unsorted, "cfg"));
    }

    proptest::proptest! {
        #[test]
        fn applied_decoder_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let mut v = b"QPMA\x00\x01".to_vec();
            v.extend_from_slice(&b);
            let _ = Applied::decode(&v);
        }
    }
}
