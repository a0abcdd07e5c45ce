//! Why a request was decided the way it was: the deciding rule, every
//! earlier rule for the same service and argument and why it did not match,
//! and for `ask`, which rules put which targets on the list.

use std::fmt::{self, Write as _};

use crate::eval::{
    Ctx, Decision, DenyReason, Request, Target, normalize_target, source_matches, target_matches,
};
use crate::parse::ActionKind;
use crate::policy::{Policy, RuleRef};
use crate::system::System;
use crate::token::{TokenKind, VmToken};

/// What happened to one rule while the request was matched.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The rule matched and decided.
    Decided,
    /// The source column did not match; the reason.
    SourceMismatch(String),
    /// The target column did not match; the reason.
    TargetMismatch(String),
    /// qrexec's engine fails on this comparison.
    Fault(String),
}

/// A rule for the request's service and argument that was looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Considered {
    /// Where it is.
    pub rule: RuleRef,
    /// The rule in canonical form.
    pub text: String,
    /// What happened.
    pub outcome: Outcome,
}

/// One rule's part in an `ask` target list (rules are walked last to first;
/// allow/ask rules add their targets, deny rules remove theirs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    /// The rule.
    pub rule: RuleRef,
    /// Whether it added (allow/ask) or removed (deny) targets.
    pub added: bool,
    /// The targets its target column (or `target=`) stands for.
    pub targets: Vec<String>,
}

/// The explanation of a decision; [`fmt::Display`] renders it for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The request, as `SERVICE+ARG from SOURCE to TARGET`.
    pub request: String,
    /// The decision (the same as [`Policy::evaluate`] returns).
    pub decision: Decision,
    /// Notes on how the requested target and the final target were resolved.
    pub notes: Vec<String>,
    /// Rules for this service and argument up to the deciding one, in order.
    pub considered: Vec<Considered>,
    /// Rules before the deciding one skipped because their service or
    /// argument differ.
    pub skipped: usize,
    /// For `ask` without `target=`: how the target list was built.
    pub contributions: Vec<Contribution>,
}

fn q(s: &str) -> String {
    format!("`{}`", s.escape_debug())
}

fn source_reason(tok: &VmToken, ctx: &Ctx<'_, '_>) -> String {
    let v = tok.value();
    let who = q(ctx.source);
    match tok.kind() {
        TokenKind::AnyVm => "@anyvm never matches the admin VM (dom0)".to_owned(),
        TokenKind::AdminVm => format!("the caller {who} is not the admin VM"),
        TokenKind::Name => format!("the caller is {who}, not {}", q(v)),
        TokenKind::Uuid => match ctx.sys.by_uuid(v) {
            Some(d) => format!(
                "{} is {}, not the caller {who}",
                q(tok.as_str()),
                q(&d.name)
            ),
            None => format!("no qube has the UUID {}", q(v)),
        },
        TokenKind::Type => match ctx.src {
            Some(d) => format!("{who} is of class {}, not {}", q(&d.class), q(v)),
            None => format!("{who} is not in the system description"),
        },
        TokenKind::Tag => match ctx.src {
            Some(_) => format!("{who} has no tag {}", q(v)),
            None => format!("{who} is not in the system description"),
        },
        TokenKind::DispVmName | TokenKind::DispVmUuid | TokenKind::DispVmTag => {
            "a @dispvm: source never matches: calls come from a named qube".to_owned()
        }
        _ => format!("{} does not match the caller", q(tok.as_str())),
    }
}

fn describe_target(t: Target<'_>) -> String {
    match t {
        Target::Default => "@default (no target named)".to_owned(),
        Target::Admin(_) => "the admin VM".to_owned(),
        Target::DispVm => "a new disposable (@dispvm)".to_owned(),
        Target::DispTemplate(d) => format!("a new disposable from {}", q(&d.name)),
        Target::Domain(d) => q(&d.name),
    }
}

fn target_reason(tok: &VmToken, ctx: &Ctx<'_, '_>) -> String {
    let v = tok.value();
    let req = describe_target(ctx.target);
    match (tok.kind(), ctx.target) {
        (TokenKind::AnyVm, _) => "@anyvm never matches the admin VM".to_owned(),
        (TokenKind::Default, _) => {
            format!("@default matches only calls without a target; the caller asked for {req}")
        }
        (TokenKind::DispVm, _) => {
            format!("@dispvm matches only a call for @dispvm itself; the caller asked for {req}")
        }
        (TokenKind::Type, Target::Domain(d) | Target::Admin(Some(d))) => {
            format!("{} is of class {}, not {}", q(&d.name), q(&d.class), q(v))
        }
        (TokenKind::Tag, Target::Domain(d) | Target::Admin(Some(d))) => {
            format!("{} has no tag {}", q(&d.name), q(v))
        }
        (TokenKind::Type | TokenKind::Tag, _) => format!(
            "{} only matches a named qube; the caller asked for {req}",
            q(tok.as_str())
        ),
        (TokenKind::DispVmTag, Target::DispTemplate(d)) => {
            format!(
                "{} is not a disposable template tagged {}",
                q(&d.name),
                q(v)
            )
        }
        (TokenKind::DispVmName | TokenKind::DispVmUuid | TokenKind::DispVmTag, Target::DispVm) => {
            match ctx.src.and_then(|d| d.default_dispvm.as_deref()) {
                Some(dd) => format!(
                    "the caller's @dispvm means {}, which {} does not name",
                    q(&format!("@dispvm:{dd}")),
                    q(tok.as_str())
                ),
                None => "the caller has no default_dispvm".to_owned(),
            }
        }
        _ => format!("{} does not match {req}", q(tok.as_str())),
    }
}

impl Policy {
    /// Evaluates `req` and explains the decision.
    pub fn explain(&self, req: &Request<'_>, sys: &System) -> Explanation {
        let decision = self.evaluate(req, sys);
        let request = format!(
            "{}{} from {} to {}",
            req.service,
            req.argument,
            q(req.source),
            if req.target.is_empty() {
                "\"\"".to_owned()
            } else {
                q(req.target)
            }
        );
        let mut ex = Explanation {
            request,
            decision,
            notes: Vec::new(),
            considered: Vec::new(),
            skipped: 0,
            contributions: Vec::new(),
        };
        let ctx = match Ctx::new(req, sys) {
            Ok(c) => c,
            Err(_) => {
                ex.notes.push(match normalize_target(req.target, sys) {
                    Err(true) => format!(
                        "the requested target {} is not an existing disposable template, so no rule is looked at",
                        q(req.target)
                    ),
                    _ => format!(
                        "{} cannot be a call's target (only a name, uuid:, @default, @adminvm, @dispvm or @dispvm:NAME can), so no rule is looked at",
                        q(req.target)
                    ),
                });
                return ex;
            }
        };
        if ctx.requested != req.target {
            ex.notes.push(format!(
                "the requested target {} names no existing qube: it is treated as {}",
                q(req.target),
                ctx.requested
            ));
        }
        if sys.get(req.source).is_none() {
            ex.notes.push(format!(
                "the caller {} is not in the system description",
                q(req.source)
            ));
        }
        let decided = ex.decision.rule().map(|r| r.index);
        for (rref, rule) in self.rules() {
            let i = rref.index;
            if decided.is_some_and(|d| i > d) {
                break;
            }
            let svc_ok = rule.service.as_deref().is_none_or(|s| s == req.service);
            let arg_ok = rule.argument.as_deref().is_none_or(|a| a == req.argument);
            if !(svc_ok && arg_ok) {
                ex.skipped += 1;
                continue;
            }
            let outcome = if !source_matches(&rule.source, &ctx) {
                Outcome::SourceMismatch(source_reason(&rule.source, &ctx))
            } else {
                match target_matches(&rule.target, &ctx) {
                    Ok(true) => Outcome::Decided,
                    Ok(false) => Outcome::TargetMismatch(target_reason(&rule.target, &ctx)),
                    Err(_) => Outcome::Fault(
                        "comparing a @dispvm:NAME column with @dispvm from a qube without default_dispvm fails in qrexec".to_owned(),
                    ),
                }
            };
            let stop = matches!(outcome, Outcome::Decided | Outcome::Fault(_));
            ex.considered.push(Considered {
                rule: rref,
                text: rule.to_string(),
                outcome,
            });
            if stop {
                break;
            }
        }
        self.explain_action(req, &ctx, &mut ex);
        ex
    }

    fn explain_action(&self, req: &Request<'_>, ctx: &Ctx<'_, '_>, ex: &mut Explanation) {
        let Some((_, rule)) = ex.decision.rule().and_then(|r| self.rule(r.index)) else {
            return;
        };
        let act = &rule.action;
        match act.kind {
            ActionKind::Allow => {
                if let Some(t) = &act.target {
                    ex.notes.push(format!(
                        "target= sends the call to {} instead",
                        q(t.as_str())
                    ));
                }
                let dispvm = act
                    .target
                    .as_ref()
                    .map_or(matches!(ctx.target, Target::DispVm), |t| {
                        t.kind() == TokenKind::DispVm
                    });
                if dispvm {
                    match ctx.src.and_then(|d| d.default_dispvm.as_deref()) {
                        Some(d) => ex.notes.push(format!(
                            "@dispvm means a new disposable from {}, the caller's default_dispvm",
                            q(d)
                        )),
                        None => ex.notes.push(
                            "@dispvm needs the caller's default_dispvm, and it has none".to_owned(),
                        ),
                    }
                }
            }
            ActionKind::Ask => match &act.target {
                Some(t) => ex.notes.push(format!(
                    "target= offers exactly {}",
                    q(if t.is_admin_vm() { "dom0" } else { t.as_str() })
                )),
                None => {
                    let mut trace = Vec::new();
                    if self.collect_targets(req, ctx, Some(&mut trace)).is_ok() {
                        ex.notes.push(
                            "the targets offered are collected from every rule for this service, argument and caller, last to first: allow/ask rules add what their target stands for, deny rules remove it; then @dispvm becomes the caller's default disposable, and the caller itself and internal qubes are dropped".to_owned(),
                        );
                        ex.contributions = trace
                            .into_iter()
                            .map(|(i, added, targets)| Contribution {
                                rule: self.rule_ref(i),
                                added,
                                targets,
                            })
                            .collect();
                    }
                }
            },
            ActionKind::Deny => {}
        }
        if let Decision::Deny(d) = &ex.decision
            && d.reason == DenyReason::Autostart
        {
            ex.notes
                .push("autostart=no: the target must already be running".to_owned());
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let _ = write!(out, "{}: ", self.request);
        match &self.decision {
            Decision::Allow(a) => {
                let _ = writeln!(out, "allow to {} (decided by {})", q(&a.target), a.rule);
            }
            Decision::Ask(a) => {
                let _ = writeln!(
                    out,
                    "ask, choosing among {} (decided by {})",
                    a.targets
                        .iter()
                        .map(|t| q(t))
                        .collect::<Vec<_>>()
                        .join(", "),
                    a.rule
                );
                if let Some(d) = &a.default_target {
                    let _ = writeln!(out, "  preselected: {}", q(d));
                }
            }
            Decision::Deny(d) => {
                let _ = write!(out, "deny: {}", d.reason.describe());
                match &d.rule {
                    Some(r) => {
                        let _ = writeln!(out, " (decided by {r})");
                    }
                    None => out.push('\n'),
                }
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        if !self.considered.is_empty() {
            let _ = writeln!(out, "rules for this service and argument, in order:");
            for c in &self.considered {
                let what = match &c.outcome {
                    Outcome::Decided => "matches: decides".to_owned(),
                    Outcome::SourceMismatch(r) => format!("source does not match: {r}"),
                    Outcome::TargetMismatch(r) => format!("target does not match: {r}"),
                    Outcome::Fault(r) => format!("engine fault: {r}"),
                };
                let _ = writeln!(out, "  {}: {}\n      {what}", c.rule, c.text);
            }
        }
        if self.skipped > 0 {
            let _ = writeln!(
                out,
                "({} earlier rule{} for other services or arguments skipped)",
                self.skipped,
                if self.skipped == 1 { "" } else { "s" }
            );
        }
        if !self.contributions.is_empty() {
            let _ = writeln!(out, "ask targets, last rule first:");
            for c in &self.contributions {
                let list = if c.targets.is_empty() {
                    "nothing".to_owned()
                } else {
                    c.targets
                        .iter()
                        .map(|t| q(t))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let _ = writeln!(
                    out,
                    "  {}: {} {list}",
                    c.rule,
                    if c.added { "adds" } else { "removes" }
                );
            }
        }
        f.write_str(out.trim_end())
    }
}
