//! `qpm policy ...`: check, evaluate and explain qrexec policy.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use qpm_policy::{
    Decision, DirSource, EntryKind, ErrorKind, Explanation, Finding, LoadError, Outcome, Policy,
    PolicyFile, Request, Source, System, conformance,
};
use serde_json::{Value, json};

use crate::ctx::{Ctx, Status};

/// Where qrexec reads policy from.
const DEFAULT_POLICY_DIR: &str = "/etc/qubes/policy.d";

/// Largest system description or case line we read (64 MiB).
const MAX_INPUT: u64 = 64 << 20;

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Check a policy directory or file for errors and lint findings.
    ///
    /// Loads the policy exactly as qrexec does (file selection and order,
    /// includes, first error wins) and reports every syntax error of the
    /// top-level files, then lints what loaded: rules that can never
    /// decide because an earlier rule matches everything they match,
    /// `allow` to @anyvm, `*` or dom0, `ask` rules that can never offer a
    /// target, and, with --system, names no qube has. Exit status: 0 clean,
    /// 1 errors or findings, 2 bad usage or unreadable input.
    #[command(after_help = "\
Examples:
  qpm policy check                        # /etc/qubes/policy.d
  qpm policy check ./policy.d --system system.json
  qpm policy check 30-user.policy --json | jq .findings")]
    Check(CheckArgs),
    /// Decide one qrexec call as the policy daemon would.
    ///
    /// Arguments are in the order of qrexec-policy-exec: the calling qube,
    /// the target it asked for (a name, uuid:..., @default, @adminvm,
    /// @dispvm, @dispvm:NAME, or "" for none) and the service with its
    /// optional argument. The system description is the JSON of the
    /// conformance cases: {"domains": {NAME: {"type": "AppVM", "tags": [...],
    /// "template_for_dispvms": false, "default_dispvm": null, "power_state":
    /// "Running", "uuid": "...", "internal": false}}}; missing fields take
    /// defaults. Exit status: 0 allow or ask, 1 deny, 2 policy or system
    /// cannot be loaded, or bad usage.
    #[command(after_help = "\
Examples:
  qpm policy eval --system system.json work vault qubes.Filecopy
  qpm policy eval --path examples/policy-demo --system examples/policy-demo/system.json \\
      --explain work @dispvm qubes.OpenURL
  qpm policy eval --system system.json --json sys-usb dom0 qubes.InputMouse+sys-usb")]
    Eval(EvalArgs),
    /// Run a conformance case file: one decision per case, as JSON Lines.
    ///
    /// Reads the `files`, `dirs`, `system` and `query` of each case (never
    /// `expect`) and prints one line per case in the output schema of
    /// conformance/policy/README.md. Compare with check.py.
    #[command(after_help = "\
Example:
  qpm policy conformance conformance/policy/public.jsonl > out.jsonl
  python3 conformance/policy/check.py --cases conformance/policy/public.jsonl --actual out.jsonl")]
    Conformance(ConformanceArgs),
    /// Check a package's policy as dom0's gatekeeper will, before publishing.
    ///
    /// The same implementation as the gatekeeper service: a package policy
    /// is accepted only if every line stays inside the package's own qubes
    /// (rules R1-R15, see docs/gatekeeper.md). The system description is
    /// the JSON of `policy eval` ({"domains": {NAME: {"type": ...,
    /// "tags": [...], "template_for_dispvms": ...}}}); the gatekeeper config
    /// is {"mgmt": "NAME", "extra_targets": [{"service": "SERVICE or
    /// SERVICE+ARG", "target": "QUBE"}]}. Each violation is printed as
    /// FILE:LINE: reason. Nothing is written. Exit status: 0 accepted,
    /// 1 rejected, 2 bad usage or unreadable input.
    #[command(after_help = "\
Example:
  qpm policy scope-check --package sd --system system.json --config gatekeeper.json \\
      examples/securedrop-ws/1.0.0/policy/31-securedrop-ws.policy")]
    ScopeCheck(ScopeCheckArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ScopeCheckArgs {
    /// The package the policy belongs to.
    #[arg(long, value_name = "NAME")]
    package: String,
    /// The system description (JSON).
    #[arg(long, value_name = "SYSTEM.JSON")]
    system: PathBuf,
    /// The gatekeeper's configuration (JSON).
    #[arg(long, value_name = "CONFIG.JSON")]
    config: PathBuf,
    /// The policy file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The system description to check qube names against.
    #[arg(long, value_name = "SYSTEM.JSON")]
    system: Option<PathBuf>,
    /// A policy directory (includes resolve relative to it) or one file.
    #[arg(value_name = "PATH", default_value = DEFAULT_POLICY_DIR)]
    path: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    /// The policy directory.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_POLICY_DIR)]
    path: PathBuf,
    /// The system description (JSON).
    #[arg(long, value_name = "SYSTEM.JSON")]
    system: PathBuf,
    /// Say which rule decided and why, and why each earlier rule for the
    /// service did not match.
    #[arg(long)]
    explain: bool,
    /// The calling qube.
    #[arg(value_name = "SOURCE")]
    source: String,
    /// The target the caller asked for ("" for none).
    #[arg(value_name = "TARGET")]
    target: String,
    /// The service and optional argument, e.g. qubes.Filecopy or qubes.USB+sys-usb+2-1.
    #[arg(value_name = "SERVICE[+ARG]")]
    call: String,
}

#[derive(Debug, Args)]
pub(crate) struct ConformanceArgs {
    /// A JSON Lines case file.
    #[arg(value_name = "CASES.jsonl")]
    cases: PathBuf,
}

pub(crate) fn run(cmd: PolicyCommand, ctx: &Ctx) -> Result<Status> {
    match cmd {
        PolicyCommand::Check(a) => check(&a, ctx),
        PolicyCommand::Eval(a) => eval(&a, ctx),
        PolicyCommand::Conformance(a) => run_conformance(&a),
        PolicyCommand::ScopeCheck(a) => scope_check(&a, ctx),
    }
}

fn scope_check(a: &ScopeCheckArgs, ctx: &Ctx) -> Result<Status> {
    if !qpm_gatekeeper::valid_package(&a.package) {
        bail!(
            "invalid package name {:?}: use lowercase letters, digits, `_` and `-`",
            a.package
        );
    }
    let system = load_system(&a.system)?;
    let config_text = read_bounded(&a.config, "gatekeeper config")?;
    let config: qpm_gatekeeper::Config = serde_json::from_str(&config_text)
        .with_context(|| format!("invalid gatekeeper config {:?}", a.config))?;
    let mut policy = Vec::new();
    std::fs::File::open(&a.file)
        .and_then(|f| f.take(MAX_INPUT).read_to_end(&mut policy))
        .with_context(|| format!("cannot read policy {:?}", a.file))?;
    let verdict = qpm_gatekeeper::check(&a.package, &policy, &system, &config);
    let file = a.file.display().to_string().escape_debug().to_string();
    if ctx.json {
        let out = json!({ "accepted": verdict.accepted, "violations": verdict.violations });
        println!("{out}");
    } else {
        let mut out = std::io::stdout().lock();
        for v in &verdict.violations {
            match v.line {
                Some(l) => writeln!(out, "{file}:{l}: {} ({})", v.message, v.rule)?,
                None => writeln!(out, "{file}: {} ({})", v.message, v.rule)?,
            }
        }
    }
    for w in &verdict.warnings {
        let l = w.line.map(|l| format!(":{l}")).unwrap_or_default();
        eprintln!("warning: {file}{l}: {}", w.message);
    }
    if !ctx.quiet && !ctx.json {
        eprintln!(
            "{file}: {}",
            if verdict.accepted {
                "accepted".to_owned()
            } else {
                format!("rejected ({} violations)", verdict.violations.len())
            }
        );
    }
    Ok(if verdict.accepted {
        Status::Success
    } else {
        Status::Failure
    })
}

fn read_bounded(path: &Path, what: &str) -> Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {what} {path:?}"))?;
    let mut text = String::new();
    file.take(MAX_INPUT + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {what} {path:?}"))?;
    if text.len() as u64 > MAX_INPUT {
        bail!("{what} {path:?} is larger than {MAX_INPUT} bytes");
    }
    Ok(text)
}

fn load_system(path: &Path) -> Result<System> {
    let text = read_bounded(path, "system description")?;
    System::from_json(&text).with_context(|| format!("invalid system description {path:?}"))
}

/// A path for humans: the file's key joined to the policy directory.
fn shown(root: &Path, key: &str) -> String {
    if key.starts_with('/') {
        key.escape_debug().to_string()
    } else {
        root.join(key)
            .display()
            .to_string()
            .escape_debug()
            .to_string()
    }
}

struct Problem {
    file: String,
    line: Option<u32>,
    kind: ErrorKind,
    message: String,
}

impl From<&LoadError> for Problem {
    fn from(e: &LoadError) -> Self {
        Self {
            file: e.file.to_string(),
            line: e.line,
            kind: e.kind,
            message: e.message.clone(),
        }
    }
}

/// Every syntax error of the top-level files (the loader stops at the
/// first; a user fixing a file wants them all).
fn all_syntax_errors(src: &DirSource, keys: &[String]) -> Vec<Problem> {
    let mut out = Vec::new();
    for key in keys {
        let Ok(bytes) = src.read(key, qpm_policy::MAX_FILE_SIZE) else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        let (_, errors) = PolicyFile::parse_all(text);
        out.extend(errors.into_iter().map(|e| Problem {
            file: key.clone(),
            line: Some(e.line),
            kind: e.kind,
            message: e.message,
        }));
    }
    out
}

fn check(a: &CheckArgs, ctx: &Ctx) -> Result<Status> {
    let system = a.system.as_deref().map(load_system).transpose()?;
    let meta = std::fs::metadata(&a.path)
        .with_context(|| format!("cannot read policy path {:?}", a.path))?;
    let (root, loaded, top_keys) = if meta.is_dir() {
        let src = DirSource::new(&a.path);
        let mut keys: Vec<String> = src
            .list("", qpm_policy::limits::MAX_DIR_ENTRIES)
            .with_context(|| format!("cannot list {:?}", a.path))?
            .into_iter()
            .filter(|(n, k)| *k == EntryKind::File && qpm_policy::load::is_policy_file_name(n))
            .map(|(n, _)| n)
            .collect();
        keys.sort();
        (a.path.clone(), Policy::load_dir(&a.path), keys)
    } else {
        let root = a
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let name = a
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (root, Policy::load_file(&a.path), vec![name])
    };

    let mut errors: Vec<Problem> = Vec::new();
    let mut findings: Vec<Finding> = Vec::new();
    let mut rules = 0;
    let mut files = 0;
    match &loaded {
        Ok(p) => {
            rules = p.len();
            files = p.files().len();
            findings = p.lint(system.as_ref());
        }
        Err(e) => {
            errors.push(e.into());
            let seen: BTreeSet<(String, Option<u32>)> =
                errors.iter().map(|p| (p.file.clone(), p.line)).collect();
            let src = DirSource::new(&root);
            errors.extend(
                all_syntax_errors(&src, &top_keys)
                    .into_iter()
                    .filter(|p| !seen.contains(&(p.file.clone(), p.line))),
            );
            errors.sort_by(|x, y| (&x.file, x.line).cmp(&(&y.file, y.line)));
        }
    }
    let clean = errors.is_empty() && findings.is_empty();

    if ctx.json {
        let doc = json!({
            "version": 1,
            "path": a.path.display().to_string(),
            "ok": clean,
            "loaded": loaded.is_ok(),
            "files": files,
            "rules": rules,
            "errors": errors.iter().map(|e| json!({
                "file": e.file, "line": e.line, "kind": e.kind.as_str(), "message": e.message,
            })).collect::<Vec<_>>(),
            "findings": findings.iter().map(|f| json!({
                "file": &*f.rule.file,
                "line": f.rule.line,
                "lint": f.lint.as_str(),
                "message": f.message,
                "related": f.related.as_ref().map(|r| json!({"file": &*r.file, "line": r.line})),
            })).collect::<Vec<_>>(),
        });
        println!("{doc}");
    } else {
        let mut out = std::io::stdout().lock();
        for e in &errors {
            let at = match e.line {
                Some(l) => format!("{}:{l}", shown(&root, &e.file)),
                None => shown(&root, &e.file),
            };
            writeln!(out, "{at}: error: {} [{}]", e.message, e.kind)?;
        }
        for f in &findings {
            let at = if f.rule.line == 0 {
                shown(&root, &f.rule.file)
            } else {
                format!("{}:{}", shown(&root, &f.rule.file), f.rule.line)
            };
            writeln!(out, "{at}: warning: {} [{}]", f.message, f.lint)?;
        }
        if !ctx.quiet {
            let mut err = std::io::stderr().lock();
            if loaded.is_err() {
                writeln!(
                    err,
                    "{} error{}: qrexec would not load this policy and would refuse every call",
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                )?;
            } else {
                writeln!(
                    err,
                    "{files} file{}, {rules} rule{}: {}",
                    if files == 1 { "" } else { "s" },
                    if rules == 1 { "" } else { "s" },
                    if findings.is_empty() {
                        "no findings".to_owned()
                    } else {
                        format!(
                            "{} finding{}",
                            findings.len(),
                            if findings.len() == 1 { "" } else { "s" }
                        )
                    }
                )?;
            }
        }
    }
    Ok(if clean {
        Status::Success
    } else {
        Status::Failure
    })
}

fn explanation_json(ex: &Explanation) -> Value {
    json!({
        "notes": ex.notes,
        "considered": ex.considered.iter().map(|c| {
            let (outcome, reason) = match &c.outcome {
                Outcome::Decided => ("decided", None),
                Outcome::SourceMismatch(r) => ("source_mismatch", Some(r)),
                Outcome::TargetMismatch(r) => ("target_mismatch", Some(r)),
                Outcome::Fault(r) => ("engine_fault", Some(r)),
                _ => ("other", None),
            };
            json!({"file": &*c.rule.file, "line": c.rule.line, "rule": c.text, "outcome": outcome, "reason": reason})
        }).collect::<Vec<_>>(),
        "skipped": ex.skipped,
        "ask_contributions": ex.contributions.iter().map(|c| json!({
            "file": &*c.rule.file, "line": c.rule.line, "added": c.added, "targets": c.targets,
        })).collect::<Vec<_>>(),
    })
}

fn eval(a: &EvalArgs, ctx: &Ctx) -> Result<Status> {
    let system = load_system(&a.system)?;
    let policy = match Policy::load_dir(&a.path) {
        Ok(p) => p,
        Err(e) => {
            if ctx.json {
                println!("{}", conformance::error_json(&e));
            }
            bail!(
                "policy in {:?} cannot be loaded (qrexec would refuse every call): {}",
                a.path,
                e
            );
        }
    };
    if system.get(&a.source).is_none() && !ctx.quiet {
        eprintln!(
            "warning: the calling qube {:?} is not in the system description",
            a.source
        );
    }
    let req = Request::from_call(&a.call, &a.source, &a.target);
    let explanation = a.explain.then(|| policy.explain(&req, &system));
    let decision = match &explanation {
        Some(ex) => ex.decision.clone(),
        None => policy.evaluate(&req, &system),
    };
    if ctx.json {
        let mut doc = conformance::decision_json(&decision);
        if let (Some(ex), Value::Object(m)) = (&explanation, &mut doc) {
            m.insert("explanation".to_owned(), explanation_json(ex));
        }
        println!("{doc}");
    } else if let Some(ex) = &explanation {
        println!("{ex}");
    } else {
        print_decision(&decision)?;
    }
    Ok(match decision {
        Decision::Allow(_) | Decision::Ask(_) => Status::Success,
        Decision::Deny(_) => Status::Failure,
    })
}

fn print_decision(d: &Decision) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match d {
        Decision::Allow(x) => {
            writeln!(out, "allow to {:?} ({})", x.target, x.rule)?;
            writeln!(
                out,
                "  user={} autostart={} notify={} target_uuid={} requested_target={:?}",
                x.user.as_deref().unwrap_or("DEFAULT"),
                yes(x.autostart),
                yes(x.notify),
                x.target_uuid.as_deref().unwrap_or("-"),
                x.requested_target
            )?;
        }
        Decision::Ask(x) => {
            writeln!(out, "ask ({})", x.rule)?;
            writeln!(out, "  targets: {}", quoted(&x.targets))?;
            writeln!(
                out,
                "  default_target={} user={} autostart={} notify={}",
                x.default_target
                    .as_deref()
                    .map_or("-".to_owned(), |t| format!("{t:?}")),
                x.user.as_deref().unwrap_or("DEFAULT"),
                yes(x.autostart),
                yes(x.notify)
            )?;
        }
        Decision::Deny(x) => {
            match &x.rule {
                Some(r) => writeln!(out, "deny: {} ({r})", x.reason.describe())?,
                None => writeln!(out, "deny: {}", x.reason.describe())?,
            }
            writeln!(out, "  reason={} notify={}", x.reason, yes(x.notify))?;
        }
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn quoted(v: &[String]) -> String {
    v.iter()
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_conformance(a: &ConformanceArgs) -> Result<Status> {
    let file = std::fs::File::open(&a.cases)
        .with_context(|| format!("cannot open case file {:?}", a.cases))?;
    let mut reader = BufReader::new(file);
    let mut out = std::io::stdout().lock();
    let mut line = String::new();
    let mut n = 0u64;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_INPUT + 1)
            .read_line(&mut line)
            .with_context(|| format!("cannot read {:?}", a.cases))?;
        if read == 0 {
            break;
        }
        n += 1;
        if read as u64 > MAX_INPUT {
            bail!(
                "{}:{n}: case longer than {MAX_INPUT} bytes",
                a.cases.display()
            );
        }
        if line.trim().is_empty() {
            continue;
        }
        let v = conformance::run_line(&line)
            .map_err(|e| anyhow::anyhow!("{}:{n}: invalid case: {e}", a.cases.display()))?;
        writeln!(out, "{v}")?;
    }
    Ok(Status::Success)
}
