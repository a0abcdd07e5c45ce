//! `qpm sync ...`: push configuration from the config qube into qubes.
//!
//! The repository (`--repo`, default `~/qpm-config`) holds files and
//! `qpm-sync.toml`. Each target is reached with `qrexec-client-vm QUBE
//! qpm.SyncConfig` (on the simulator, its `qrexec-client-vm` stand-in; the
//! program can be replaced with `QPM_QREXEC_CLIENT`). Tags and the
//! `custom-persist` features go through the Admin API ([`AdminPort`]).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use qpm_fs::RelPath;
use qpm_sync::proto::Tree;
use qpm_sync::repo::Repo;
use qpm_sync::sender::{self, AdminPort, HashCache, LogEntry, SenderState};

use crate::ctx::{Ctx, Status};

#[derive(Debug, Clone, Args)]
pub(crate) struct RepoArgs {
    /// Configuration repository (directory with qpm-sync.toml).
    #[arg(long, env = "QPM_SYNC_REPO", default_value = "~/qpm-config")]
    repo: String,
    /// Sender state (what was pushed, hash cache, log).
    #[arg(long, env = "QPM_SYNC_STATE")]
    state: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SyncCommand {
    /// Show per qube what a push would change (against what was last pushed).
    Plan {
        #[command(flatten)]
        repo: RepoArgs,
        /// Qubes (default: every qube named in the map).
        qubes: Vec<String>,
    },
    /// Send the configuration to qubes; each reviews and applies it.
    Push {
        #[command(flatten)]
        repo: RepoArgs,
        /// Only show what would be sent.
        #[arg(long)]
        dry_run: bool,
        /// Qubes (default: every qube named in the map).
        qubes: Vec<String>,
    },
    /// Ask qubes for their sync status (managed files, pending reviews).
    Status {
        #[command(flatten)]
        repo: RepoArgs,
        /// Qubes (default: every qube named in the map).
        qubes: Vec<String>,
    },
    /// Show the push log.
    Log {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Bring a file from a qube into the repository, after review with a
    /// risk lint.
    Capture {
        #[command(flatten)]
        repo: RepoArgs,
        /// Qube to read from.
        qube: String,
        /// `~/path` or `/path` in that qube.
        path: String,
        /// Accept without asking (the lint is still printed).
        #[arg(long)]
        yes: bool,
    },
}

/// The Admin API, reached only when needed (tags in the map, persisted
/// system files): through the same transport as every qpm command (the
/// simulator elsewhere than in a qube).
struct LazyAdmin<'a> {
    ctx: &'a Ctx,
    client: std::cell::OnceCell<Result<qpm_admin::Client, String>>,
}

impl<'a> LazyAdmin<'a> {
    fn new(ctx: &'a Ctx) -> Self {
        Self {
            ctx,
            client: std::cell::OnceCell::new(),
        }
    }

    fn get(&self) -> Result<&qpm_admin::Client, String> {
        self.client
            .get_or_init(|| crate::connect::admin(self.ctx).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl AdminPort for LazyAdmin<'_> {
    fn tags(&self, qube: &str) -> Result<Vec<String>, String> {
        self.get()?.tags(qube).map_err(|e| e.to_string())
    }
    fn feature(&self, qube: &str, name: &str) -> Result<Option<String>, String> {
        self.get()?.feature(qube, name).map_err(|e| e.to_string())
    }
    fn set_feature(&self, qube: &str, name: &str, value: &str) -> Result<(), String> {
        self.get()?
            .set_feature(qube, name, value)
            .map_err(|e| e.to_string())
    }
}

fn expand(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(rest),
        None => PathBuf::from(p),
    }
}

fn source_name() -> String {
    std::env::var("QPM_SYNC_SOURCE")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.len() <= 31)
        .unwrap_or_else(|| "config".into())
}

/// A qrexec call to `qpm.SyncConfig` in `qube`.
pub(crate) struct Call {
    pub(crate) stdin: Option<Box<dyn Write + Send>>,
    pub(crate) stdout: Box<dyn std::io::Read + Send>,
    wait: Box<dyn FnOnce() -> Option<i32>>,
}

/// Exit status of a call qrexec refused.
pub(crate) const REFUSED: i32 = 126;

pub(crate) fn connect(ctx: &Ctx, qube: &str) -> Result<Call> {
    if !qube
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        || qube.is_empty()
        || qube.starts_with('-')
    {
        bail!("invalid qube name `{}`", qube.escape_debug());
    }
    // An explicit client program (a stand-in in tests and benchmarks).
    if let Ok(client) = std::env::var("QPM_QREXEC_CLIENT") {
        let mut child = Command::new(&client)
            .arg("--")
            .arg(qube)
            .arg("qpm.SyncConfig")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting `{client}` for qube `{qube}`"))?;
        let stdin: Option<Box<dyn Write + Send>> = child
            .stdin
            .take()
            .map(|s| Box::new(s) as Box<dyn Write + Send>);
        let stdout = Box::new(child.stdout.take().context("no stdout")?);
        return Ok(Call {
            stdin,
            stdout,
            wait: Box::new(move || child.wait().ok().and_then(|s| s.code())),
        });
    }
    let mut conn = crate::connect::qrexec_call(ctx, qube, "qpm.SyncConfig")?;
    let stdin = conn.stdin.take();
    let stdout = std::mem::replace(&mut conn.stdout, Box::new(std::io::empty()));
    let mut stderr = std::mem::replace(&mut conn.stderr, Box::new(std::io::empty()));
    // The agent's own messages, passed on (and never left to fill a pipe).
    let relay = std::thread::spawn(move || {
        let _ = std::io::copy(&mut stderr, &mut std::io::stderr());
    });
    Ok(Call {
        stdin,
        stdout,
        wait: Box::new(move || {
            let st = conn.wait().ok();
            let _ = relay.join();
            st
        }),
    })
}

impl Call {
    pub(crate) fn finish(mut self) -> Option<i32> {
        drop(self.stdin.take());
        (self.wait)()
    }
}

struct Setup<'a> {
    repo: Repo,
    state: SenderState,
    admin: LazyAdmin<'a>,
}

fn setup<'a>(ctx: &'a Ctx, r: &RepoArgs) -> Result<Setup<'a>> {
    let path = expand(&r.repo);
    let repo = Repo::load(&path)
        .with_context(|| format!("loading the config repository {}", path.display()))?;
    let state_path = r.state.clone().unwrap_or_else(sender::default_state_dir);
    let state = SenderState::open(&state_path)
        .with_context(|| format!("opening {}", state_path.display()))?;
    Ok(Setup {
        repo,
        state,
        admin: LazyAdmin::new(ctx),
    })
}

fn targets(s: &Setup, qubes: Vec<String>) -> Vec<String> {
    if qubes.is_empty() {
        s.repo.named_qubes()
    } else {
        qubes
    }
}

fn items(s: &Setup, qube: &str) -> Result<Vec<qpm_sync::repo::Item>> {
    let tags = if s.repo.uses_tags() {
        match s.admin.tags(qube) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("tags of {qube} unknown ({e}); only mappings naming it apply");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    Ok(s.repo.items_for(qube, &tags)?)
}

pub(crate) fn run(cmd: SyncCommand, ctx: &Ctx) -> Result<Status> {
    match cmd {
        SyncCommand::Plan { repo, qubes } => plan(ctx, &repo, qubes),
        SyncCommand::Push {
            repo,
            dry_run: true,
            qubes,
        } => plan(ctx, &repo, qubes),
        SyncCommand::Push {
            repo,
            dry_run: false,
            qubes,
        } => push(ctx, &repo, qubes),
        SyncCommand::Status { repo, qubes } => status(ctx, &repo, qubes),
        SyncCommand::Log { repo } => log(ctx, &repo),
        SyncCommand::Capture {
            repo,
            qube,
            path,
            yes,
        } => capture(ctx, &repo, &qube, &path, yes),
    }
}

fn plan(ctx: &Ctx, r: &RepoArgs, qubes: Vec<String>) -> Result<Status> {
    let s = setup(ctx, r)?;
    let mut cache = HashCache::load(s.state.root());
    let mut out = std::io::stdout().lock();
    let mut doc = Vec::new();
    let mut any = false;
    for q in targets(&s, qubes) {
        let it = items(&s, &q)?;
        let changes = s.state.plan(&s.repo, &mut cache, &q, &it)?;
        any |= !changes.is_empty();
        if ctx.json {
            doc.push(serde_json::json!({"qube": q, "files": it.len(), "changes": changes}));
            continue;
        }
        writeln!(
            out,
            "{q}: {} file(s), {} change(s)",
            it.len(),
            changes.len()
        )?;
        for c in &changes {
            writeln!(out, "  {:<8} {}", c.change, c.path)?;
        }
        for c in &changes {
            write!(out, "{}", c.diff)?;
        }
    }
    if ctx.json {
        writeln!(out, "{}", serde_json::json!({"version": 1, "qubes": doc}))?;
    }
    cache.save(s.state.root())?;
    let _ = any;
    Ok(Status::Success)
}

fn push(ctx: &Ctx, r: &RepoArgs, qubes: Vec<String>) -> Result<Status> {
    // The first call starts before the repository is read: the target's
    // agent starts, and checks its files, while the repository is walked
    // (a call left without a request when loading fails costs the agent
    // nothing but its start).
    let mut early = match qubes.first() {
        Some(q) => Some((q.clone(), connect(ctx, q)?)),
        None => None,
    };
    let s = setup(ctx, r)?;
    let mut cache = HashCache::load(s.state.root());
    let source = source_name();
    let mut all_ok = true;
    let mut results = Vec::new();
    for q in targets(&s, qubes) {
        let call = match early.take() {
            Some((eq, call)) if eq == q => call,
            _ => connect(ctx, &q)?,
        };
        let it = items(&s, &q)?;
        let (via, notes) = match sender::ensure_persistence(&s.admin, &q, &it, false) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("warning: {e}; persistence through the agent's bind-dirs file");
                (sender::PersistVia::BindDirs, Vec::new())
            }
        };
        if !ctx.quiet {
            for n in notes {
                eprintln!("note: {n}");
            }
        }
        let m = sender::manifest(&s.repo, &mut cache, &source, &it, via)?;
        let mut call = call;
        let stdin = call.stdin.take().context("no stdin")?;
        let res = sender::push(&q, &s.repo, &m, &it, stdin, &mut call.stdout);
        let o = match res {
            Ok(o) => o,
            Err(e) => {
                let exit = call.finish();
                all_ok = false;
                if exit == Some(REFUSED) {
                    eprintln!(
                        "error: {q}: the call was refused by qrexec policy (has dom0 granted it? `qpm-dom0 sync-grant {q}`)"
                    );
                } else {
                    eprintln!("error: {q}: {e} (exit status {exit:?})");
                }
                results.push(serde_json::json!({"qube": q, "error": e.to_string()}));
                continue;
            }
        };
        let ok = sender::is_success(&o);
        all_ok &= ok;
        if ok && matches!(o.code, qpm_sync::proto::Code::Applied) {
            s.state.record_push(&s.repo, &q, &it, &m)?;
        }
        s.state.log(&LogEntry {
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            qube: q.clone(),
            code: format!("{:?}", o.code).to_lowercase(),
            written: o.written,
            deleted: o.deleted,
            conflicts: o.conflicts,
            message: o.message.clone(),
        })?;
        if !ctx.json && !ctx.quiet {
            eprintln!(
                "{q}: {} ({} written, {} deleted, {} conflict(s))",
                o.message, o.written, o.deleted, o.conflicts
            );
        }
        results.push(serde_json::json!({"qube": q, "result": o}));
        // The agent exits while the above is recorded; its status matters
        // only when the exchange failed.
        call.finish();
    }
    cache.save(s.state.root())?;
    if ctx.json {
        println!("{}", serde_json::json!({"version": 1, "results": results}));
    }
    Ok(if all_ok {
        Status::Success
    } else {
        Status::Failure
    })
}

fn status(ctx: &Ctx, r: &RepoArgs, qubes: Vec<String>) -> Result<Status> {
    let s = setup(ctx, r)?;
    let source = source_name();
    let mut rows = Vec::new();
    let mut ok = true;
    for q in targets(&s, qubes) {
        let mut call = connect(ctx, &q)?;
        let stdin = call.stdin.take().context("no stdin")?;
        let res = sender::status(&q, &source, stdin, &mut call.stdout);
        call.finish();
        match res {
            Ok(st) => {
                if !ctx.json {
                    println!(
                        "{q}: {} managed, {} pending review, last sync {}",
                        st.managed,
                        st.pending,
                        if st.last_sync.is_empty() {
                            "none"
                        } else {
                            &st.last_sync
                        }
                    );
                }
                rows.push(serde_json::json!({"qube": q, "status": st}));
            }
            Err(e) => {
                ok = false;
                eprintln!("error: {e}");
                rows.push(serde_json::json!({"qube": q, "error": e.to_string()}));
            }
        }
    }
    if ctx.json {
        println!("{}", serde_json::json!({"version": 1, "qubes": rows}));
    }
    Ok(if ok { Status::Success } else { Status::Failure })
}

fn log(ctx: &Ctx, r: &RepoArgs) -> Result<Status> {
    let s = setup(ctx, r)?;
    let entries = s.state.read_log();
    if ctx.json {
        println!("{}", serde_json::json!({"version": 1, "log": entries}));
    } else {
        for e in entries {
            println!(
                "{} {} {} written={} deleted={} conflicts={} {}",
                e.time, e.qube, e.code, e.written, e.deleted, e.conflicts, e.message
            );
        }
    }
    Ok(Status::Success)
}

fn capture(ctx: &Ctx, r: &RepoArgs, qube: &str, path: &str, yes: bool) -> Result<Status> {
    let s = setup(ctx, r)?;
    let (tree, rel) = if let Some(p) = path.strip_prefix("~/") {
        (Tree::Home, p)
    } else if let Some(p) = path.strip_prefix('/') {
        (Tree::System, p)
    } else {
        bail!(
            "path must start with `~/` or `/`: `{}`",
            path.escape_debug()
        );
    };
    let rel = RelPath::new(rel)?;
    let mut call = connect(ctx, qube)?;
    let stdin = call.stdin.take().context("no stdin")?;
    let content = sender::capture(qube, &source_name(), tree, &rel, stdin, &mut call.stdout);
    call.finish();
    let content = content?;
    let findings = qpm_sync::lint::lint(path, &content);
    let shown = qpm_sync::diff::unified(path, None, Some(&content), false);
    let dest = RelPath::new(&format!("captured/{qube}/{}", rel.as_str()))?;
    if ctx.json {
        println!(
            "{}",
            serde_json::json!({"version": 1, "qube": qube, "path": qpm_sync::diff::escape_line(path), "bytes": content.len(), "findings": findings, "content": shown})
        );
    } else {
        let mut out = std::io::stdout().lock();
        write!(out, "{shown}")?;
        if findings.is_empty() {
            writeln!(out, "risk lint: no findings")?;
        }
        for f in &findings {
            writeln!(out, "risk: line {}: [{}] {}", f.line, f.rule, f.message)?;
        }
    }
    if !yes {
        eprint!(
            "Add {} from {qube} to the repository as {dest}? [y/N] ",
            qpm_sync::diff::escape_line(path)
        );
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            eprintln!("not added");
            return Ok(Status::Failure);
        }
    }
    if let Some(parent) = dest.parent() {
        s.repo
            .root()
            .create_dirs(&parent, 0o755, &qpm_fs::DirPolicy::default())?;
    }
    s.repo.root().write_atomic(&dest, &content, 0o644)?;
    eprintln!(
        "added {dest}; map it in qpm-sync.toml, e.g.\n[[file]]\nsrc = \"{}\"\ndest = \"{}\"\nto = [\"{qube}\"]",
        dest.as_str().escape_debug(),
        path.escape_debug()
    );
    Ok(if findings.is_empty() {
        Status::Success
    } else {
        Status::Failure
    })
}
