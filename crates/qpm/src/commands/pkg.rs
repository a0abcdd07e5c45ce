//! Package commands: `qpm install|upgrade|remove|plan|list|status|verify|history`.
//! They are top-level commands (flattened into the root command).

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use qpm_admin::Client;
use qpm_pkg::apply::{self, Observer, Outcome};
use qpm_pkg::calls::Counts;
use qpm_pkg::journal::{self, Entry, Journal, StateDir};
use qpm_pkg::manifest::Manifest;
use qpm_pkg::plan::{self, Action, OnConflict, Options, Plan, Step};
use qpm_pkg::record::RECORD_FEATURE;
use qpm_pkg::state::{Actual, Read, created_by_tag, package_tag};
use serde_json::json;

use crate::commands::pkgfiles::{self, FilesPlan};
use crate::connect;
use crate::ctx::{Ctx, Status};

#[derive(Debug, Subcommand)]
pub(crate) enum PkgCommand {
    /// Install a package: a directory, a `.qpm` archive, or a name from the
    /// configured repositories. Re-running it re-applies the package.
    Install(ApplyArgs),
    /// Upgrade an installed package to the version given.
    Upgrade(ApplyArgs),
    /// Show what `install`/`upgrade` would do, changing nothing.
    Plan(ApplyArgs),
    /// Remove a package (qubes holding data are kept unless --purge).
    Remove(RemoveArgs),
    /// List the installed packages (from the tags on the qubes).
    List(StateArgs),
    /// Show what was changed by hand since the package was applied (drift).
    Status(NameArgs),
    /// Check that the installed state matches the package (exit 1 and the
    /// differences otherwise); without PKG, every installed package
    /// against what was applied.
    Verify(VerifyArgs),
    /// Show what qpm did, when (this management qube's log).
    History(StateArgs),
}

#[derive(Debug, Clone, Args)]
pub(crate) struct StateArgs {
    /// qpm's local state directory (journal, lock, history). Default:
    /// `$XDG_STATE_HOME/qpm/pkg` or `~/.local/state/qpm/pkg`.
    #[arg(long, env = "QPM_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ApplyArgs {
    /// A package directory or archive (a path that exists or contains `/`),
    /// or a package name resolved from the repositories (`NAME`,
    /// `NAME@VERSION`, `NAME@^2`).
    #[arg(required_unless_present = "all")]
    package: Option<String>,
    /// `upgrade`/`plan`: every installed package to the newest version its
    /// repositories offer.
    #[arg(long, conflicts_with = "package")]
    all: bool,
    /// Allow going to an older version than the installed one.
    #[arg(long)]
    allow_downgrade: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Take over qubes of the package's names that this management qube
    /// created but no package claims.
    #[arg(long)]
    adopt: bool,
    /// Shut down qubes that must be halted for a change.
    #[arg(long)]
    shutdown: bool,
    /// When a setting you changed is changed by the new version too, keep yours.
    #[arg(long, conflicts_with = "take_package")]
    keep_mine: bool,
    /// When a setting you changed is changed by the new version too, take the package's.
    #[arg(long)]
    take_package: bool,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RemoveArgs {
    /// Package name (or a package directory/archive, for its name).
    package: String,
    /// Also remove the qubes that hold data.
    #[arg(long)]
    purge: bool,
    /// Shut down running qubes of the package.
    #[arg(long)]
    shutdown: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Debug, Args)]
pub(crate) struct NameArgs {
    /// Package name (compare with what was applied), or a package
    /// directory/archive (compare with that package).
    package: String,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Package name (compare with what was applied), or a package
    /// directory/archive (compare with that package).
    package: Option<String>,
    #[command(flatten)]
    state: StateArgs,
}

pub(crate) fn run(cmd: PkgCommand, ctx: &Ctx) -> Result<Status> {
    match cmd {
        PkgCommand::Install(a) if a.all => {
            bail!("`qpm install --all` is not a thing: use `qpm upgrade --all`")
        }
        PkgCommand::Upgrade(a) if a.all => upgrade_all(ctx, &a, Mode::Upgrade),
        PkgCommand::Plan(a) if a.all => upgrade_all(ctx, &a, Mode::Plan),
        PkgCommand::Install(a) => apply_cmd(ctx, &a, Mode::Install),
        PkgCommand::Upgrade(a) => apply_cmd(ctx, &a, Mode::Upgrade),
        PkgCommand::Plan(a) => apply_cmd(ctx, &a, Mode::Plan),
        PkgCommand::Remove(a) => remove_cmd(ctx, &a),
        PkgCommand::List(_) => list_cmd(ctx),
        PkgCommand::Status(a) => status_cmd(ctx, &a, false),
        PkgCommand::Verify(VerifyArgs {
            package: Some(p),
            state,
        }) => status_cmd(ctx, &NameArgs { package: p, state }, true),
        PkgCommand::Verify(VerifyArgs {
            package: None,
            state,
        }) => verify_all(ctx, &state),
        PkgCommand::History(a) => history_cmd(ctx, &a),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Install,
    Upgrade,
    Plan,
}

fn state_dir(a: &StateArgs) -> Result<PathBuf> {
    if let Some(d) = &a.state_dir {
        return Ok(d.clone());
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("qpm/pkg"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("HOME is not set; pass --state-dir")?;
    Ok(PathBuf::from(home).join(".local/state/qpm/pkg"))
}

/// Whether PKG names a path rather than a repository package.
fn is_path(arg: &str) -> bool {
    arg.contains('/') || Path::new(arg).exists()
}

/// Opens the package: a directory or archive, or a name from the
/// repositories (downloaded and verified).
fn open_package(ctx: &Ctx, arg: &str) -> Result<qpm_repo::PackageDir> {
    if is_path(arg) {
        return qpm_repo::open_package(Path::new(arg))
            .with_context(|| format!("opening package `{arg}`"));
    }
    let spec: qpm_repo::PackageSpec = arg.parse()?;
    let c = qpm_repo::client::Client::open(qpm_repo::paths::Paths::from_env()?)?;
    let r = c
        .resolve(&spec)
        .with_context(|| format!("`{arg}` is not a path; looking it up in the repositories"))?;
    note(
        ctx,
        &format!(
            "{} {} from repository `{}`",
            r.entry.name, r.entry.version, r.repo
        ),
    );
    Ok(c.fetch(&r, &mut |_, _| {})?)
}

/// The package's policy: its files joined in order.
fn policy_text(dir: &Path, m: &Manifest) -> Result<String> {
    let mut s = String::new();
    for f in &m.policy_files {
        let p = dir.join(f);
        let t =
            std::fs::read_to_string(&p).with_context(|| format!("reading `{}`", p.display()))?;
        if !s.is_empty() && !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&t);
    }
    if s.len() > qpm_pkg::manifest::MAX_POLICY_BYTES {
        bail!(
            "the policy files of `{}` are {} bytes together, more than {}",
            m.name,
            s.len(),
            qpm_pkg::manifest::MAX_POLICY_BYTES
        );
    }
    Ok(s)
}

fn note(ctx: &Ctx, msg: &str) {
    if !ctx.quiet {
        eprintln!("{msg}");
    }
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Checks `requires` against the packages installed (needs every listed
/// qube's tags and the records of the packages' qubes).
fn check_requires(client: &Client, actual: &mut Actual, m: &Manifest, mgmt: &str) -> Result<()> {
    if m.requires.is_empty() {
        return Ok(());
    }
    let tags: BTreeSet<Read> = actual
        .listed
        .keys()
        .map(|n| Read::Tags(n.clone()))
        .collect();
    actual.read(client, tags)?;
    let pkgs = actual.packages(mgmt);
    let mut records = BTreeSet::new();
    for r in &m.requires {
        for q in pkgs.get(&r.name).into_iter().flatten() {
            records.insert(Read::Feature(q.clone(), RECORD_FEATURE.to_owned()));
        }
    }
    actual.read(client, records)?;
    let mut missing = Vec::new();
    for r in &m.requires {
        let versions: BTreeSet<semver::Version> = pkgs
            .get(&r.name)
            .into_iter()
            .flatten()
            .filter_map(|q| actual.qubes.get(q).and_then(|s| s.record()))
            .filter(|rec| rec.package == r.name)
            .filter_map(|rec| rec.version.parse().ok())
            .collect();
        if !versions.iter().any(|v| r.version.matches(v)) {
            missing.push(if versions.is_empty() {
                format!(
                    "requires package `{}` ({}), which is not installed",
                    r.name, r.version
                )
            } else {
                format!(
                    "requires package `{}` {}, installed: {}",
                    r.name,
                    r.version,
                    versions
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
        }
    }
    if !missing.is_empty() {
        return Err(qpm_pkg::Error::Refused(missing).into());
    }
    Ok(())
}

/// Whether the user can be asked (terminal on stdin and stderr, no `--json`).
fn interactive(ctx: &Ctx) -> bool {
    !ctx.json && std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks how to resolve conflicts; `None`: abort.
fn ask_conflict() -> Result<Option<OnConflict>> {
    use std::io::Write;
    loop {
        eprint!("Keep yours (k), take the package's (p), or abort (a)? ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line)? == 0 {
            return Ok(None);
        }
        match line.trim() {
            "k" | "K" => return Ok(Some(OnConflict::KeepMine)),
            "p" | "P" => return Ok(Some(OnConflict::TakePackage)),
            "a" | "A" | "" => return Ok(None),
            _ => {}
        }
    }
}

/// Reads what an install/upgrade plan of `m` needs.
fn read_for_apply(client: &Client, m: &Manifest, mgmt: &str) -> Result<Actual> {
    let mut actual = Actual::list(client)?;
    check_requires(client, &mut actual, m, mgmt)?;
    actual.read(client, plan::first_reads(m))?;
    let more = plan::second_reads(m, &actual, mgmt);
    if !more.is_empty() {
        actual.read(client, more)?;
    }
    Ok(actual)
}

fn print_plan(ctx: &Ctx, plan: &Plan) {
    if ctx.quiet {
        return;
    }
    let what = match plan.action {
        Action::Install if plan.installed.is_empty() => "install",
        Action::Install => "re-apply",
        Action::Upgrade => "upgrade",
        Action::Remove => "remove",
    };
    let from = if plan.installed.is_empty() || plan.action == Action::Install {
        String::new()
    } else {
        format!(" (installed: {})", plan.installed.join(", "))
    };
    eprintln!(
        "Plan: {what} {} {}{from}",
        plan.package,
        plan.version.as_deref().unwrap_or("")
    );
    for n in &plan.notes {
        for l in n.lines() {
            eprintln!("  note: {l}");
        }
    }
    if plan.steps.is_empty() {
        eprintln!("  nothing to do");
    }
    for s in &plan.steps {
        eprintln!("  {:>3}. {}", s.id + 1, s.describe());
    }
    for h in &plan.halt {
        eprintln!("  shuts down: {h}");
    }
    for k in &plan.kept {
        eprintln!("  keeps {}: {}", k.qube, k.reason);
    }
    for c in &plan.user_changes_kept {
        eprintln!(
            "  keeps your change: {} {} = {}",
            c.qube,
            c.key,
            c.yours
                .as_deref()
                .map_or("(default)".into(), |v| format!("{v:?}"))
        );
    }
    for c in &plan.user_changes_overridden {
        eprintln!(
            "  overrides your change: {} {} = {} (package: {})",
            c.qube,
            c.key,
            c.yours
                .as_deref()
                .map_or("(default)".into(), |v| format!("{v:?}")),
            c.package
                .as_deref()
                .map_or("(default)".into(), |v| format!("{v:?}"))
        );
    }
}

/// Progress on stderr: a bar on a terminal, nothing otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(ctx: &Ctx, len: usize) -> Self {
        let show = !ctx.json && !ctx.quiet && std::io::stderr().is_terminal();
        let bar = show.then(|| {
            let b = indicatif::ProgressBar::new(len as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Self { bar }
    }
}

impl Observer for Progress {
    fn finished(&self, step: &Step, outcome: &Outcome) {
        if let Some(b) = &self.bar {
            b.inc(1);
            b.set_message(step.describe());
            if let Outcome::Failed(e) = outcome {
                b.println(format!("failed: {}: {e}", step.describe()));
            }
        }
    }
}

/// The file deliveries of an install/upgrade, with what they need.
struct FilesRun {
    plan: FilesPlan,
    mgmt: String,
    /// Qubes running before the run (the others are shut down again after
    /// their push).
    running: BTreeSet<String>,
}

/// Runs a plan under the journal; returns (status, json summary).
/// Prints the plan; without a state directory (a dry run) stops there,
/// otherwise runs it. The `--json` summary either way.
fn show_and_run(
    ctx: &Ctx,
    client: &Client,
    counts: &Counts,
    sd: Option<&StateDir>,
    plan: &Plan,
    journal: Option<Journal>,
    mut files: Option<FilesRun>,
) -> Result<Status> {
    print_plan(ctx, plan);
    if let Some(f) = &files {
        f.plan.print(ctx);
    }
    let Some(sd) = sd else {
        if ctx.json {
            let mut extra = json!({"result": "planned", "dry_run": true});
            if let Some(f) = &files {
                extra["files"] = f.plan.to_json();
            }
            print_json(&summary(plan, counts, extra))?;
        }
        return Ok(Status::Success);
    };
    let (mut status, mut extra) = execute(ctx, client, counts, sd, plan, journal)?;
    if let Some(f) = files.as_mut() {
        if status == Status::Success {
            // After the qubes exist and the policy is in place.
            let (ok, v) = f.plan.deliver(ctx, client, &f.mgmt, &f.running)?;
            if !ctx.json && !ctx.quiet && v["pushes"].as_u64().is_some_and(|n| n > 0) {
                eprintln!(
                    "files: {} push(es); {} reads, {} writes in all",
                    v["pushes"],
                    counts.reads(),
                    counts.writes()
                );
            }
            extra["files"] = v;
            if !ok {
                status = Status::Error;
                extra["result"] = json!("failed");
            }
        } else {
            extra["files"] = f.plan.to_json();
            note(ctx, "files: not delivered (the install did not complete)");
        }
    }
    if ctx.json {
        print_json(&summary(plan, counts, extra))?;
    }
    Ok(status)
}

fn execute(
    ctx: &Ctx,
    client: &Client,
    counts: &Counts,
    sd: &StateDir,
    plan: &Plan,
    journal: Option<Journal>,
) -> Result<(Status, serde_json::Value)> {
    let action = match plan.action {
        Action::Install => "install",
        Action::Upgrade => "upgrade",
        Action::Remove => "remove",
    };
    let mut j = journal.unwrap_or_default();
    j.package = plan.package.clone();
    j.action = action.to_owned();
    j.version = plan.version.clone();
    j.started = journal::now();
    j.creating.extend(apply::creations(plan));
    j.keeping.extend(plan.kept.iter().map(|k| k.qube.clone()));
    if !plan.steps.is_empty() {
        sd.begin(&j)?;
    }
    let progress = Progress::new(ctx, plan.steps.len());
    let outcomes = apply::apply(client, plan, &progress);
    if let Some(b) = &progress.bar {
        b.finish_and_clear();
    }
    let failed: Vec<serde_json::Value> = plan
        .steps
        .iter()
        .zip(&outcomes)
        .filter_map(|(s, o)| match o {
            Outcome::Failed(e) => Some(json!({"step": s.id + 1, "what": s.describe(), "error": e})),
            _ => None,
        })
        .collect();
    let done = outcomes.iter().filter(|o| **o == Outcome::Done).count();
    let result = if !failed.is_empty() || done != plan.steps.len() {
        "failed"
    } else if plan.steps.is_empty() {
        "nothing to do"
    } else {
        "ok"
    };
    sd.finish(
        &plan.package,
        &Entry {
            time: journal::now(),
            action: action.to_owned(),
            package: plan.package.clone(),
            version: plan.version.clone(),
            from: plan.installed.clone(),
            result: result.to_owned(),
            steps: done,
            calls: (counts.reads(), counts.writes()),
        },
    )?;
    if !ctx.json && !ctx.quiet {
        for f in &failed {
            eprintln!(
                "failed: step {}: {}: {}",
                f["step"],
                f["what"].as_str().unwrap_or(""),
                f["error"].as_str().unwrap_or("")
            );
        }
        eprintln!(
            "{}: {} of {} steps done; {} reads, {} writes",
            result,
            done,
            plan.steps.len(),
            counts.reads(),
            counts.writes()
        );
    }
    let status = if result == "failed" {
        Status::Error
    } else {
        Status::Success
    };
    Ok((
        status,
        json!({"result": result, "done": done, "failed": failed}),
    ))
}

fn summary(plan: &Plan, counts: &Counts, extra: serde_json::Value) -> serde_json::Value {
    let mut v = json!({
        "package": plan.package,
        "version": plan.version,
        "action": plan.action,
        "installed_before": plan.installed,
        "steps": plan.steps,
        "halt": plan.halt,
        "kept": plan.kept,
        "user_changes_kept": plan.user_changes_kept,
        "user_changes_overridden": plan.user_changes_overridden,
        "notes": plan.notes,
    });
    if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
        o.insert("calls".into(), counts.to_json());
    }
    v
}

fn apply_cmd(ctx: &Ctx, a: &ApplyArgs, mode: Mode) -> Result<Status> {
    let arg = a.package.as_deref().unwrap_or_default();
    let pd = open_package(ctx, arg)?;
    let m = &pd.manifest;
    let policy = policy_text(pd.path(), m)?;
    let changes = mode != Mode::Plan && !a.dry_run;
    let sd = if changes {
        Some(StateDir::lock(&state_dir(&a.state)?)?)
    } else {
        None
    };
    let journal = match &sd {
        Some(sd) => sd.journal(&m.name)?,
        None => None,
    };
    if let Some(j) = &journal {
        note(
            ctx,
            &format!(
                "resuming the interrupted {} of {} (started {})",
                j.action,
                j.package,
                qpm_repo::format_time(j.started)
            ),
        );
    }
    let mgmt = connect::mgmt_name(ctx)?;
    let (client, counts) = connect::admin_counted(ctx)?;
    let actual = read_for_apply(&client, m, &mgmt)?;
    let files = if pd.manifest.files.is_empty() && !changes {
        None
    } else {
        let state = state_dir(&a.state).ok();
        let plan = pkgfiles::plan(pd.path(), m, state.as_deref())?;
        let running = actual
            .listed
            .values()
            .filter(|i| i.state != "Halted")
            .map(|i| i.name.clone())
            .collect();
        Some(FilesRun {
            plan,
            mgmt: mgmt.clone(),
            running,
        })
    };
    let opts = Options {
        mgmt,
        adopt: a.adopt,
        shutdown: a.shutdown,
        on_conflict: if a.keep_mine {
            OnConflict::KeepMine
        } else if a.take_package {
            OnConflict::TakePackage
        } else {
            OnConflict::Fail
        },
        purge: false,
        created_by_us: journal
            .as_ref()
            .map(|j| j.creating.clone())
            .unwrap_or_default(),
        kept_before: BTreeSet::new(),
    };
    let plan = match plan::plan_apply(m, &policy, &actual, &opts) {
        Err(qpm_pkg::Error::Conflicts(c)) if interactive(ctx) => {
            let err = qpm_pkg::Error::Conflicts(c);
            eprintln!("{err}");
            match ask_conflict()? {
                Some(choice) => {
                    let opts = Options {
                        on_conflict: choice,
                        ..opts
                    };
                    plan::plan_apply(m, &policy, &actual, &opts)?
                }
                None => return Err(err.into()),
            }
        }
        r => r?,
    };
    let version = m.version.to_string();
    match mode {
        Mode::Upgrade if plan.installed.is_empty() => {
            bail!("package `{}` is not installed; use `qpm install`", m.name)
        }
        Mode::Install if plan.action == Action::Upgrade && !plan.installed.contains(&version) => {
            bail!(
                "package `{}` {} is installed; use `qpm upgrade` to go to {version}",
                m.name,
                plan.installed.join(", ")
            )
        }
        _ => {}
    }
    let newest = plan
        .installed
        .iter()
        .filter_map(|v| semver::Version::parse(v).ok())
        .max();
    qpm_repo::check_upgrade(&m.name, newest.as_ref(), &m.version, a.allow_downgrade)?;
    show_and_run(ctx, &client, &counts, sd.as_ref(), &plan, journal, files)
}

/// Every listed qube's tags, then the package's qubes in detail.
fn read_installed(client: &Client, package: &str, mgmt: &str) -> Result<(Actual, Vec<String>)> {
    let mut actual = Actual::list(client)?;
    let mut reads: BTreeSet<Read> = actual
        .listed
        .keys()
        .filter(|n| !qpm_pkg::names::is_dom0(n))
        .map(|n| Read::Tags(n.clone()))
        .collect();
    reads.insert(Read::Policy(package.to_owned()));
    actual.read(client, reads)?;
    let qubes = actual.packages(mgmt).remove(package).unwrap_or_default();
    let mut reads = BTreeSet::new();
    for q in &qubes {
        reads.insert(Read::Props(q.clone()));
        reads.insert(Read::Feature(q.clone(), RECORD_FEATURE.to_owned()));
    }
    actual.read(client, reads)?;
    Ok((actual, qubes))
}

fn package_name(ctx: &Ctx, arg: &str) -> Result<(String, Option<qpm_repo::PackageDir>)> {
    if is_path(arg) {
        let pd = open_package(ctx, arg)?;
        Ok((pd.manifest.name.clone(), Some(pd)))
    } else {
        qpm_pkg::names::package_name_error(arg).map_or(Ok(()), |e| {
            Err(anyhow::anyhow!("invalid package name `{arg}`: {e}"))
        })?;
        Ok((arg.to_owned(), None))
    }
}

fn remove_cmd(ctx: &Ctx, a: &RemoveArgs) -> Result<Status> {
    let (name, _) = package_name(ctx, &a.package)?;
    let sd = if a.dry_run {
        None
    } else {
        Some(StateDir::lock(&state_dir(&a.state)?)?)
    };
    let mgmt = connect::mgmt_name(ctx)?;
    let (client, counts) = connect::admin_counted(ctx)?;
    let journal = match &sd {
        Some(sd) => sd.journal(&name)?.filter(|j| j.action == "remove"),
        None => None,
    };
    let kept_before = journal
        .as_ref()
        .map(|j| j.keeping.clone())
        .unwrap_or_default();
    let (mut actual, qubes) = read_installed(&client, &name, &mgmt)?;
    // what else the management qube can see that refers to these qubes
    let ctag = created_by_tag(&mgmt);
    let ptag = package_tag(&name);
    let others: BTreeSet<Read> = actual
        .qubes
        .iter()
        .filter(|(_, q)| q.has_tag(&ctag) && !q.has_tag(&ptag))
        .map(|(n, _)| Read::Props(n.clone()))
        .collect();
    actual.read(&client, others)?;
    let set: BTreeSet<&String> = qubes.iter().collect();
    let mut refs = Vec::new();
    for (n, q) in &actual.qubes {
        if set.contains(n) || !q.has_tag(&ctag) || kept_before.contains(n) {
            continue;
        }
        for p in ["template", "netvm", "default_dispvm"] {
            let v = q.prop(p);
            if set.contains(&v.to_owned()) {
                refs.push((n.clone(), p.to_owned(), v.to_owned()));
            }
        }
    }
    if !qubes.is_empty() {
        let global = client.properties(None)?;
        for (p, v) in &global {
            if set.contains(&v.value) {
                refs.push(("dom0".to_owned(), p.clone(), v.value.clone()));
            }
        }
    }
    let opts = Options {
        mgmt,
        shutdown: a.shutdown,
        purge: a.purge,
        kept_before,
        ..Options::default()
    };
    let plan = match plan::plan_remove(&name, &actual, &opts, &refs) {
        // an interrupted removal that had in fact finished
        Err(qpm_pkg::Error::NotInstalled(_)) if journal.is_some() => {
            let mut p = plan::plan_remove_nothing(&name);
            p.installed = journal
                .as_ref()
                .and_then(|j| j.version.clone())
                .into_iter()
                .collect();
            p
        }
        r => r?,
    };
    let status = show_and_run(ctx, &client, &counts, sd.as_ref(), &plan, journal, None)?;
    if let Some(sd) = &sd
        && status == Status::Success
    {
        pkgfiles::forget(sd.path(), &name)?;
    }
    Ok(status)
}

/// The installed packages (from the tags on the qubes) with their qubes,
/// and the state read to find them (with each qube's applied record).
fn installed_packages(
    client: &Client,
    mgmt: &str,
) -> Result<(std::collections::BTreeMap<String, Vec<String>>, Actual)> {
    let mut actual = Actual::list(client)?;
    let reads: BTreeSet<Read> = actual
        .listed
        .keys()
        .filter(|n| !qpm_pkg::names::is_dom0(n))
        .map(|n| Read::Tags(n.clone()))
        .collect();
    actual.read(client, reads)?;
    let pkgs = actual.packages(mgmt);
    let reads: BTreeSet<Read> = pkgs
        .values()
        .flatten()
        .map(|q| Read::Feature(q.clone(), RECORD_FEATURE.to_owned()))
        .collect();
    actual.read(client, reads)?;
    Ok((pkgs, actual))
}

/// The versions of `package` its qubes' records name.
fn installed_versions(actual: &Actual, package: &str, qubes: &[String]) -> BTreeSet<String> {
    qubes
        .iter()
        .filter_map(|q| actual.qubes.get(q).and_then(|s| s.record()))
        .filter(|r| r.package == package)
        .map(|r| r.version)
        .collect()
}

/// `upgrade --all` (and `plan --all`): each installed package to the newest
/// version its repositories offer (as of the last `qpm update`), one
/// package after the other; a package no repository provides is skipped.
fn upgrade_all(ctx: &Ctx, a: &ApplyArgs, mode: Mode) -> Result<Status> {
    let mgmt = connect::mgmt_name(ctx)?;
    let (pkgs, actual) = {
        let (client, _) = connect::admin_counted(ctx)?;
        installed_packages(&client, &mgmt)?
    };
    let repos = qpm_repo::client::Client::open(qpm_repo::paths::Paths::from_env()?)?;
    let mut status = Status::Success;
    let mut upgraded = 0;
    for (name, qubes) in &pkgs {
        let installed = installed_versions(&actual, name, qubes)
            .iter()
            .filter_map(|v| semver::Version::parse(v).ok())
            .max();
        let spec = qpm_repo::PackageSpec {
            name: name.to_string(),
            version: None,
        };
        let r = match repos.resolve(&spec) {
            Ok(r) => r,
            Err(e) => {
                note(ctx, &format!("{name}: skipped: {e}"));
                continue;
            }
        };
        if installed.as_ref().is_some_and(|i| r.entry.version <= *i) {
            note(
                ctx,
                &format!(
                    "{name}: {} is the newest, nothing to upgrade",
                    r.entry.version
                ),
            );
            continue;
        }
        let one = ApplyArgs {
            package: Some(format!("{name}@={}", r.entry.version)),
            all: false,
            ..a.clone()
        };
        upgraded += 1;
        match apply_cmd(ctx, &one, mode) {
            Ok(Status::Success) => {}
            Ok(s) => status = worse(status, s),
            Err(e) => {
                eprintln!("error: {name}: {e:#}");
                status = Status::Error;
            }
        }
    }
    note(
        ctx,
        &format!(
            "{upgraded} of {} installed package(s) to upgrade",
            pkgs.len()
        ),
    );
    Ok(status)
}

fn worse(a: Status, b: Status) -> Status {
    match (a, b) {
        (Status::Error, _) | (_, Status::Error) => Status::Error,
        (Status::Failure, _) | (_, Status::Failure) => Status::Failure,
        _ => Status::Success,
    }
}

fn list_cmd(ctx: &Ctx) -> Result<Status> {
    let mgmt = connect::mgmt_name(ctx)?;
    let (client, counts) = connect::admin_counted(ctx)?;
    let (pkgs, actual) = installed_packages(&client, &mgmt)?;
    let mut out = Vec::new();
    for (p, qubes) in &pkgs {
        let versions = installed_versions(&actual, p, qubes);
        out.push(json!({"name": p, "versions": versions, "qubes": qubes}));
    }
    if ctx.json {
        print_json(&json!({"packages": out, "calls": counts.to_json()}))?;
    } else {
        for (p, qubes) in &pkgs {
            let v = out
                .iter()
                .find(|o| o["name"] == *p)
                .and_then(|o| o["versions"].as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let v = if v.is_empty() { "?".to_owned() } else { v };
            println!("{p:<24} {v:<10} {}", qubes.join(" "));
        }
    }
    Ok(Status::Success)
}

fn show(v: &Option<String>) -> String {
    v.as_deref()
        .map_or("(default)".to_owned(), |s| format!("{s:?}"))
}

/// `status` (drift against what was applied) and `verify` (against the
/// package, or against what was applied when given a name).
fn status_cmd(ctx: &Ctx, a: &NameArgs, verify: bool) -> Result<Status> {
    let (name, pd) = package_name(ctx, &a.package)?;
    let mgmt = connect::mgmt_name(ctx)?;
    let (client, counts) = connect::admin_counted(ctx)?;
    let mut diffs: Vec<serde_json::Value> = Vec::new();
    match (&pd, verify) {
        (Some(pd), true) => {
            // against the package: the plan that would restore it is empty
            let m = &pd.manifest;
            let policy = policy_text(pd.path(), m)?;
            let actual = read_for_apply(&client, m, &mgmt)?;
            let opts = Options {
                mgmt,
                on_conflict: OnConflict::TakePackage,
                ..Options::default()
            };
            let plan = plan::plan_apply(m, &policy, &actual, &opts)?;
            for s in &plan.steps {
                diffs.push(json!({"qube": s.qube, "difference": s.describe()}));
            }
            for c in &plan.user_changes_kept {
                diffs.push(json!({"qube": c.qube, "key": c.key, "actual": c.yours, "package": c.package, "difference": format!("{}: {} is {}, the package sets {}", c.qube, c.key, show(&c.yours), show(&c.package))}));
            }
            // firewalls are not read by the planner
            for (q, want) in &m.qubes {
                if let Some(fw) = &want.firewall
                    && actual.exists(q)
                {
                    let rules: Vec<String> = fw
                        .iter()
                        .map(|r| plan::firewall_rule(&r.to_wire()))
                        .collect();
                    let got: Vec<String> = client
                        .firewall(q)?
                        .iter()
                        .map(|r| plan::firewall_rule(r))
                        .collect();
                    if got != rules {
                        diffs.push(json!({"qube": q, "key": "fw", "difference": format!("{q}: firewall differs from the package ({} rules, package {})", got.len(), rules.len())}));
                    }
                }
            }
        }
        _ => diffs = drift(&client, &name, &mgmt, verify)?,
    }
    let notes = check_files(ctx, &client, &a.state, &name, &mut diffs)?;
    if ctx.json {
        print_json(
            &json!({"package": name, "clean": diffs.is_empty(), "differences": diffs, "notes": notes, "calls": counts.to_json()}),
        )?;
    } else if diffs.is_empty() {
        println!(
            "{name}: matches {}",
            if pd.is_some() && verify {
                "the package"
            } else {
                "what was applied"
            }
        );
    } else {
        for d in &diffs {
            println!("{}", d["difference"].as_str().unwrap_or(""));
        }
    }
    Ok(if verify && !diffs.is_empty() {
        Status::Failure
    } else {
        Status::Success
    })
}

/// The package's files in its running qubes (see `pkgfiles::check`):
/// differences appended to `diffs`; returns the notes (printed on stderr
/// unless `--json`).
fn check_files(
    ctx: &Ctx,
    client: &Client,
    state: &StateArgs,
    name: &str,
    diffs: &mut Vec<serde_json::Value>,
) -> Result<Vec<String>> {
    let Ok(dir) = state_dir(state) else {
        return Ok(Vec::new());
    };
    let (d, notes) = pkgfiles::check(ctx, client, &dir, name)?;
    diffs.extend(d);
    if !ctx.json {
        for n in &notes {
            note(ctx, n);
        }
    }
    Ok(notes)
}

/// Differences between a package's qubes and what was applied to them.
fn drift(client: &Client, name: &str, mgmt: &str, verify: bool) -> Result<Vec<serde_json::Value>> {
    let name = name.to_owned();
    let mut diffs = Vec::new();
    let (mut actual, qubes) = read_installed(client, &name, mgmt)?;
    if qubes.is_empty() {
        return Err(qpm_pkg::Error::NotInstalled(name).into());
    }
    let mut reads = BTreeSet::new();
    for q in &qubes {
        reads.insert(Read::Tags(q.clone()));
        if let Some(r) = actual.qubes.get(q).and_then(|s| s.record()) {
            for k in r.settings.keys() {
                if let Some(f) = k.strip_prefix("f:") {
                    reads.insert(Read::Feature(q.clone(), f.to_owned()));
                }
            }
        }
    }
    actual.read(client, reads)?;
    let mut expected_qubes = BTreeSet::new();
    for q in &qubes {
        let Some(st) = actual.qubes.get(q) else {
            continue;
        };
        let Some(rec) = st.record() else {
            diffs.push(json!({"qube": q, "difference": format!("{q}: no record of what the package applied (an interrupted run? re-run install)")}));
            continue;
        };
        expected_qubes.extend(rec.qubes.iter().cloned());
        for (k, want) in &rec.settings {
            let got = if k == "fw" {
                let r: Vec<String> = client
                    .firewall(q)?
                    .iter()
                    .map(|r| plan::firewall_rule(r))
                    .collect();
                Some(if r.is_empty() {
                    None
                } else {
                    Some(r.join("\n"))
                })
            } else {
                st.value(k)
            };
            let Some(got) = got else { continue };
            if got != *want {
                diffs.push(json!({"qube": q, "key": k, "applied": want, "actual": got, "difference": format!("{q}: {k} is {}, the package applied {}", show(&got), show(want))}));
            }
        }
    }
    for q in expected_qubes {
        if !actual.exists(&q) {
            diffs.push(json!({"qube": q, "difference": format!("{q}: missing")}));
        }
    }
    if verify && actual.policy.clone().flatten().is_none() {
        diffs.push(json!({"qube": null, "difference": "the package's policy is not installed"}));
    }
    Ok(diffs)
}

/// `qpm verify` without a package: every installed package against what
/// was applied.
fn verify_all(ctx: &Ctx, state: &StateArgs) -> Result<Status> {
    let mgmt = connect::mgmt_name(ctx)?;
    let (client, counts) = connect::admin_counted(ctx)?;
    let mut actual = Actual::list(&client)?;
    let reads: BTreeSet<Read> = actual
        .listed
        .keys()
        .filter(|n| !qpm_pkg::names::is_dom0(n))
        .map(|n| Read::Tags(n.clone()))
        .collect();
    actual.read(&client, reads)?;
    let mut out = Vec::new();
    let mut clean = true;
    for p in actual.packages(&mgmt).keys() {
        let mut d = drift(&client, p, &mgmt, true)?;
        check_files(ctx, &client, state, p, &mut d)?;
        clean &= d.is_empty();
        if !ctx.json {
            if d.is_empty() {
                println!("{p}: matches what was applied");
            }
            for x in &d {
                println!("{p}: {}", x["difference"].as_str().unwrap_or(""));
            }
        }
        out.push(json!({"package": p, "clean": d.is_empty(), "differences": d}));
    }
    if ctx.json {
        print_json(&json!({"clean": clean, "packages": out, "calls": counts.to_json()}))?;
    }
    Ok(if clean {
        Status::Success
    } else {
        Status::Failure
    })
}

fn history_cmd(ctx: &Ctx, a: &StateArgs) -> Result<Status> {
    let entries = journal::history(&state_dir(a)?)?;
    if ctx.json {
        print_json(&json!({"history": entries}))?;
        return Ok(Status::Success);
    }
    for e in &entries {
        println!(
            "{}  {:<8} {:<20} {:<10} {:<14} {} steps, {} reads, {} writes",
            qpm_repo::format_time(e.time),
            e.action,
            e.package,
            e.version.as_deref().unwrap_or("-"),
            e.result,
            e.steps,
            e.calls.0,
            e.calls.1
        );
    }
    Ok(Status::Success)
}
