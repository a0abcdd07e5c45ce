//! Delivering a package's `[[files]]` into its qubes, for `qpm install` /
//! `upgrade` / `plan`: one `qpm.SyncConfig` push per qube (the sender of
//! `qpm sync`, no second protocol), as the named set `pkg.NAME`, so that the
//! agent in the qube keeps the package's files apart from the user's own
//! config sync (see docs/packages.md, "Files").
//!
//! What this management qube last delivered is kept in
//! `<state-dir>/files/<package>.json` (manifest id and file hashes per
//! qube): the plan lists what is new or changed against it, and a qube
//! whose manifest is the one it last accepted is not called at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use qpm_admin::{Client, ShutdownOptions};
use qpm_fs::RelPath;
use qpm_pkg::manifest::Manifest as PkgManifest;
use qpm_sync::proto::{Code, Kind, Manifest, Outcome, Tree};
use qpm_sync::repo::{Item, Repo};
use qpm_sync::sender::{self, HashCache, PersistVia};
use serde_json::json;

use crate::commands::sync::{REFUSED, connect};
use crate::ctx::Ctx;

/// Exit status of a qrexec call to a service the target does not have.
const NO_SERVICE: i32 = 127;

/// The home directory package paths are written under (`/home/user/...`
/// goes to the home tree, anything else is a system path).
const HOME: &str = "/home/user/";

/// The set name a package's files are pushed as.
pub(crate) fn set_name(package: &str) -> String {
    format!("pkg.{package}")
}

/// What was delivered to each qube, as last accepted by the qube.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Record {
    qubes: BTreeMap<String, QubeRecord>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct QubeRecord {
    /// Sync id of the manifest the qube applied (or found unchanged).
    id: String,
    /// Path (`~/x`, `/x`) to `HASH MODE`.
    files: BTreeMap<String, String>,
    /// The qube queued it for review (rather than applying it).
    #[serde(default)]
    queued: bool,
}

/// Largest record file read.
const MAX_RECORD_BYTES: u64 = 4 * 1024 * 1024;

/// One qube's push.
pub(crate) struct Target {
    qube: String,
    items: Vec<Item>,
    manifest: Manifest,
    /// (`new` | `modified` | `mode` | `deleted`, path), against the record.
    changes: Vec<(&'static str, String)>,
    /// The qube already accepted exactly this manifest: no call.
    skip: bool,
    /// ... and queued it for review then.
    queued: bool,
}

/// The file deliveries of one install/upgrade.
pub(crate) struct FilesPlan {
    package: String,
    repo: Option<Repo>,
    targets: Vec<Target>,
    /// None: no state directory (a dry run without one).
    record_file: Option<PathBuf>,
    record: Record,
}

fn record_file(state: &Path, package: &str) -> PathBuf {
    state.join("files").join(format!("{package}.json"))
}

fn load_record(path: &Path) -> Record {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(path) else {
        return Record::default();
    };
    let mut text = String::new();
    if f.take(MAX_RECORD_BYTES).read_to_string(&mut text).is_err() {
        return Record::default();
    }
    // A damaged record only costs a push.
    serde_json::from_str(&text).unwrap_or_default()
}

fn key(tree: Tree, path: &str) -> String {
    format!("{}{path}", tree.prefix())
}

/// The destination of a manifest path: the home tree under `/home/user/`,
/// the system tree otherwise.
fn destination(path: &str) -> Result<(Tree, RelPath)> {
    let (tree, rel) = match path.strip_prefix(HOME) {
        Some(r) => (Tree::Home, r),
        None => (Tree::System, path.trim_start_matches('/')),
    };
    let rel = RelPath::new(rel).with_context(|| format!("files.path `{}`", path.escape_debug()))?;
    Ok((tree, rel))
}

/// Plans the deliveries of `m` (package directory `dir`); `state` is the
/// state directory whose record says what was delivered before.
pub(crate) fn plan(dir: &Path, m: &PkgManifest, state: Option<&Path>) -> Result<FilesPlan> {
    let record_file = state.map(|s| record_file(s, &m.name));
    let record = record_file.as_deref().map(load_record).unwrap_or_default();
    let mut by_qube: BTreeMap<&str, Vec<Item>> = BTreeMap::new();
    for f in &m.files {
        let (tree, dest) = destination(&f.path)?;
        let src = f
            .source
            .to_str()
            .and_then(|s| RelPath::new(s).ok())
            .with_context(|| format!("files.source `{}`", f.source.display()))?;
        by_qube.entry(&f.qube).or_default().push(Item {
            src,
            tree,
            dest,
            mode: u16::try_from(f.mode & 0o777).unwrap_or(0o644),
            uid: 0,
            gid: 0,
            secret: false,
            persist: false,
            stat: None,
        });
    }
    // Qubes still in the package that had files before and have none now
    // get an empty set: the agent deletes what the package put there.
    for q in record.qubes.keys() {
        if m.qubes.contains_key(q) && !by_qube.contains_key(q.as_str()) {
            by_qube.insert(q, Vec::new());
        }
    }
    let repo = if by_qube.is_empty() {
        None
    } else {
        Some(Repo::from_dir(dir).with_context(|| format!("opening {}", dir.display()))?)
    };
    let mut cache = HashCache::default();
    let mut targets = Vec::new();
    for (q, items) in by_qube {
        let Some(repo) = &repo else { break };
        let mut manifest = sender::manifest(repo, &mut cache, "", &items, PersistVia::BindDirs)
            .with_context(|| format!("reading the files of `{q}`"))?;
        manifest.kind = Kind::SyncSet;
        manifest.source = set_name(&m.name);
        // A qube renamed by this version carries its files over with its
        // private volume: compare with what its old name was given.
        let renamed_from = || {
            m.renamed
                .iter()
                .find(|(_, new)| new.as_str() == q)
                .and_then(|(old, _)| record.qubes.get(old))
        };
        let same = record.qubes.get(q);
        let old = same.or_else(renamed_from);
        let mut changes = Vec::new();
        let mut listed = BTreeSet::new();
        for e in &manifest.entries {
            let k = key(e.tree, e.path.as_str());
            let want = recorded(e);
            let change = match old.and_then(|o| o.files.get(&k)) {
                None => "new",
                Some(v) if v.split(' ').next() != want.split(' ').next() => "modified",
                Some(v) if *v != want => "mode",
                Some(_) => "",
            };
            if !change.is_empty() {
                changes.push((change, qpm_sync::diff::escape_line(&k)));
            }
            listed.insert(k);
        }
        for k in old.map(|o| o.files.keys()).into_iter().flatten() {
            if !listed.contains(k) {
                changes.push(("deleted", qpm_sync::diff::escape_line(k)));
            }
        }
        let skip = same.is_some_and(|o| o.id == manifest.id());
        targets.push(Target {
            qube: q.to_owned(),
            items,
            manifest,
            changes,
            skip,
            queued: skip && same.is_some_and(|o| o.queued),
        });
    }
    Ok(FilesPlan {
        package: m.name.clone(),
        repo,
        targets,
        record_file,
        record,
    })
}

impl FilesPlan {
    /// Prints the deliveries (paths and kinds of change, never contents).
    pub(crate) fn print(&self, ctx: &Ctx) {
        if ctx.quiet || self.targets.is_empty() {
            return;
        }
        eprintln!("  files (qpm.SyncConfig, set {}):", set_name(&self.package));
        for t in &self.targets {
            let n = t.manifest.entries.len();
            if t.skip {
                eprintln!(
                    "    {}: {n} file(s), as last delivered{}: no push",
                    t.qube,
                    if t.queued {
                        " (then queued for review in the qube: `qpm-agent review` there)"
                    } else {
                        ""
                    }
                );
                continue;
            }
            eprintln!(
                "    {}: {n} file(s), push{}",
                t.qube,
                if t.changes.is_empty() {
                    " (no change since the last delivery; the qube checks)"
                } else {
                    ""
                }
            );
            for (c, p) in &t.changes {
                eprintln!("      {c:<8} {p}");
            }
        }
    }

    fn target_json(t: &Target) -> serde_json::Value {
        let changes: Vec<_> = t
            .changes
            .iter()
            .map(|(c, p)| json!({"change": c, "path": p}))
            .collect();
        json!({"qube": t.qube, "files": t.manifest.entries.len(), "changes": changes, "push": !t.skip})
    }

    /// The planned deliveries, for `--json` of a dry run.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let qubes: Vec<_> = self.targets.iter().map(Self::target_json).collect();
        json!({"set": set_name(&self.package), "pushes": 0, "qubes": qubes})
    }

    /// Pushes to every qube that needs it, after the install/upgrade
    /// succeeded. A qube that was not running before (`running` lists
    /// those that were) is shut down again after its push. Returns
    /// whether every qube applied, found unchanged or queued its files,
    /// and the `"files"` summary.
    pub(crate) fn deliver(
        &mut self,
        ctx: &Ctx,
        client: &Client,
        mgmt: &str,
        running: &BTreeSet<String>,
    ) -> Result<(bool, serde_json::Value)> {
        let crash_after: Option<u64> = std::env::var("QPM_TEST_CRASH_AFTER_PUSH")
            .ok()
            .and_then(|v| v.parse().ok());
        let mut ok = true;
        let mut pushes = 0u64;
        let mut rows = Vec::new();
        // Qubes no longer in the package: forget them.
        let keep: BTreeSet<&String> = self.targets.iter().map(|t| &t.qube).collect();
        self.record.qubes.retain(|q, _| keep.contains(q));
        for t in &self.targets {
            let mut row = Self::target_json(t);
            if t.skip {
                row["result"] = json!(if t.queued {
                    "as last delivered, queued"
                } else {
                    "as last delivered"
                });
                rows.push(row);
                continue;
            }
            let Some(repo) = &self.repo else { break };
            pushes += 1;
            let res = push_one(ctx, repo, t);
            if crash_after == Some(pushes) {
                std::process::abort();
            }
            let started = !matches!(res, Err(PushError::Refused));
            let (said, good) = match res {
                Ok(o) => {
                    let good = matches!(o.code, Code::Applied | Code::Unchanged | Code::Queued);
                    if good {
                        self.record
                            .qubes
                            .insert(t.qube.clone(), record_of(t, o.code == Code::Queued));
                    }
                    let said = describe(&t.qube, &o);
                    row["result"] = json!(o.code);
                    row["written"] = json!(o.written);
                    row["deleted"] = json!(o.deleted);
                    row["conflicts"] = json!(o.conflicts);
                    row["message"] = json!(o.message);
                    (said, good)
                }
                Err(e) => {
                    let msg = match e {
                        PushError::Refused => format!(
                            "qrexec refused qpm.SyncConfig from {mgmt} to {}: dom0 must allow it (`qpm-dom0 init --mgmt {mgmt} --adopt` grants it to every qube {mgmt} created, or `qpm-dom0 sync-grant {}`)",
                            t.qube, t.qube
                        ),
                        PushError::NoService => format!(
                            "{} has no qpm.SyncConfig service: install qpm-agent in its template",
                            t.qube
                        ),
                        PushError::Other(e) => format!("{}: {e:#}", t.qube),
                    };
                    row["result"] = json!("error");
                    row["error"] = json!(msg);
                    (format!("error: {msg}"), false)
                }
            };
            ok &= good;
            self.save()?;
            if started && !running.contains(&t.qube) {
                // The push started it: leave it as it was.
                if let Err(e) = client.shutdown(
                    &t.qube,
                    ShutdownOptions {
                        force: false,
                        wait: true,
                    },
                ) {
                    tracing::warn!("shutting {} down after its push: {e}", t.qube);
                }
            }
            // Failures always reach stderr; the rest unless --json/--quiet.
            if !good || (!ctx.json && !ctx.quiet) {
                eprintln!("{said}");
            }
            rows.push(row);
        }
        self.save()?;
        Ok((
            ok,
            json!({"set": set_name(&self.package), "pushes": pushes, "ok": ok, "qubes": rows}),
        ))
    }

    fn save(&self) -> Result<()> {
        let file = self
            .record_file
            .as_deref()
            .context("no state directory to record the deliveries in")?;
        let dir = file.parent().context("record file without a directory")?;
        if self.record.qubes.is_empty() {
            return match std::fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", file.display()))
                }
                _ => Ok(()),
            };
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        qpm_pkg::journal::write_atomic(file, &serde_json::to_vec_pretty(&self.record)?)?;
        Ok(())
    }
}

/// What the record keeps of a delivered file: `HASH MODE`.
fn recorded(e: &qpm_sync::proto::Entry) -> String {
    format!("{} {:o}", hex::encode(e.hash), e.mode)
}

fn record_of(t: &Target, queued: bool) -> QubeRecord {
    QubeRecord {
        queued,
        id: t.manifest.id(),
        files: t
            .manifest
            .entries
            .iter()
            .map(|e| (key(e.tree, e.path.as_str()), recorded(e)))
            .collect(),
    }
}

fn describe(qube: &str, o: &Outcome) -> String {
    let counts = format!(
        "{} written, {} deleted, {} conflict(s)",
        o.written, o.deleted, o.conflicts
    );
    match o.code {
        Code::Applied => format!("files: {qube}: applied ({counts})"),
        Code::Unchanged if o.conflicts > 0 => format!(
            "files: {qube}: unchanged; {} file(s) edited in the qube are kept (conflicts)",
            o.conflicts
        ),
        Code::Unchanged => format!("files: {qube}: already in place"),
        Code::Queued => format!(
            "files: {qube}: queued for review in the qube, as its agent's configuration says ({counts}); the files arrive when its user runs `qpm-agent review` in {qube}"
        ),
        Code::Declined => format!("error: files: {qube}: declined by the qube's user"),
        _ => format!("error: files: {qube}: {} ({:?})", o.message, o.code),
    }
}

enum PushError {
    Refused,
    NoService,
    Other(anyhow::Error),
}

fn push_one(ctx: &Ctx, repo: &Repo, t: &Target) -> Result<Outcome, PushError> {
    let mut call = connect(ctx, &t.qube).map_err(PushError::Other)?;
    let stdin = call
        .stdin
        .take()
        .context("no stdin")
        .map_err(PushError::Other)?;
    let res = sender::push(
        &t.qube,
        repo,
        &t.manifest,
        &t.items,
        stdin,
        &mut call.stdout,
    );
    let exit = call.finish();
    match res {
        Ok(o) => Ok(o),
        Err(_) if exit == Some(REFUSED) => Err(PushError::Refused),
        Err(_) if exit == Some(NO_SERVICE) => Err(PushError::NoService),
        Err(e) => Err(PushError::Other(anyhow::Error::new(e))),
    }
}

/// After a removal: this management qube's record of the package's
/// deliveries goes (the files stay in the qubes that are kept; see
/// docs/packages.md).
pub(crate) fn forget(state: &Path, package: &str) -> Result<()> {
    let f = record_file(state, package);
    match std::fs::remove_file(&f) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            bail!("removing {}: {e}", f.display())
        }
        _ => Ok(()),
    }
}

/// `qpm status` / `qpm verify`: asks each running qube this management
/// qube delivered files to which of them are no longer as delivered (one
/// check call per qube; a halted qube is not started for it). Returns the
/// differences and notes (qubes not checked).
pub(crate) fn check(
    ctx: &Ctx,
    client: &Client,
    state: &Path,
    package: &str,
) -> Result<(Vec<serde_json::Value>, Vec<String>)> {
    let record = load_record(&record_file(state, package));
    let mut diffs = Vec::new();
    let mut notes = Vec::new();
    if record.qubes.is_empty() {
        return Ok((diffs, notes));
    }
    let running: BTreeSet<String> = client
        .list_qubes()?
        .into_iter()
        .filter(|q| q.state == "Running")
        .map(|q| q.name)
        .collect();
    for (qube, rec) in &record.qubes {
        if !running.contains(qube) {
            notes.push(format!(
                "{qube}: files not checked: the qube is halted (a check would start it)"
            ));
            continue;
        }
        let mut entries = Vec::new();
        let mut shown = Vec::new();
        for (k, v) in &rec.files {
            let Some(e) = entry_of(k, v) else { continue };
            entries.push(e);
            shown.push(k.clone());
        }
        let m = Manifest {
            kind: Kind::Check,
            source: set_name(package),
            entries,
        };
        let mut call = connect(ctx, qube)?;
        let stdin = call.stdin.take().context("no stdin")?;
        let res = sender::check(qube, &m, stdin, &mut call.stdout);
        call.finish();
        match res {
            Ok(idx) => {
                for i in idx {
                    let Some(p) = shown.get(i as usize) else {
                        continue;
                    };
                    let p = qpm_sync::diff::escape_line(p);
                    diffs.push(json!({"qube": qube, "key": format!("file:{p}"), "difference": format!("{qube}: file {p} is not as the package delivered it (edited, removed, or its delivery still waits for review)")}));
                }
            }
            Err(e) => notes.push(format!("{qube}: files not checked: {e}")),
        }
    }
    Ok((diffs, notes))
}

/// A check entry from a record line (`~/x` or `/x`, `HASH MODE`).
fn entry_of(k: &str, v: &str) -> Option<qpm_sync::proto::Entry> {
    let (tree, p) = match k.strip_prefix("~/") {
        Some(p) => (Tree::Home, p),
        None => (Tree::System, k.strip_prefix('/')?),
    };
    let (h, mode) = v.split_once(' ')?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(h, &mut hash).ok()?;
    Some(qpm_sync::proto::Entry {
        tree,
        flags: 0,
        mode: u16::from_str_radix(mode, 8)
            .ok()
            .filter(|m| m & !0o777 == 0)?,
        uid: 0,
        gid: 0,
        size: 0,
        hash,
        path: RelPath::new(p).ok()?,
    })
}
