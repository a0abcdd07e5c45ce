//! Lints: rules that can never decide, grants wider than they look, `ask`
//! rules with nothing to offer, and names the system does not know.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use crate::eval::{Ctx, Request, source_matches};
use crate::parse::{ActionKind, Rule};
use crate::policy::{Policy, RuleRef};
use crate::system::System;
use crate::text::Text;
use crate::token::{TokenKind, VmToken};

/// Most earlier rules compared with one rule when looking for shadowing
/// (the nearest ones are compared first).
pub const MAX_SHADOW_COMPARISONS: usize = 4096;

/// Most evaluations spent on one `ask` rule to find a possible target.
pub const MAX_ASK_PROBES: usize = 4096;

/// The qube classes qubesd knows.
pub const KNOWN_CLASSES: [&str; 6] = [
    "AdminVM",
    "AppVM",
    "DispVM",
    "RemoteVM",
    "StandaloneVM",
    "TemplateVM",
];

/// A kind of finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Lint {
    /// Every call the rule matches is decided by an earlier rule.
    Shadowed,
    /// `allow` to `@anyvm` or `*`: any qube (with `*`, dom0 too).
    AllowToAnyVm,
    /// `allow` to the admin VM: the service runs in dom0.
    AllowToAdminVm,
    /// `ask` whose target list is always empty.
    AskNoTarget,
    /// A name or UUID no qube has.
    UnknownQube,
    /// `@dispvm:X` where X is not a disposable template.
    NotDispvmTemplate,
    /// A `@dispvm:` source, which never matches.
    DispvmSource,
    /// `@type:X` with a class qubesd does not have.
    UnknownClass,
}

impl Lint {
    /// Stable kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shadowed => "shadowed",
            Self::AllowToAnyVm => "allow-to-anyvm",
            Self::AllowToAdminVm => "allow-to-adminvm",
            Self::AskNoTarget => "ask-no-target",
            Self::UnknownQube => "unknown-qube",
            Self::NotDispvmTemplate => "not-a-dispvm-template",
            Self::DispvmSource => "dispvm-source",
            Self::UnknownClass => "unknown-class",
        }
    }
}

impl fmt::Display for Lint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One lint finding on one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The rule at fault.
    pub rule: RuleRef,
    /// What kind of finding.
    pub lint: Lint,
    /// Explanation.
    pub message: String,
    /// The other rule involved (the shadowing one).
    pub related: Option<RuleRef>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} [{}]", self.rule, self.message, self.lint)
    }
}

fn q(s: &str) -> String {
    format!("`{}`", s.escape_debug())
}

/// Whether every calling qube that `b` matches is matched by `a`.
fn source_covers(a: &VmToken, b: &VmToken) -> bool {
    use TokenKind as K;
    match (a.kind(), b.kind()) {
        (_, K::DispVmName | K::DispVmUuid | K::DispVmTag) => false,
        (K::Wildcard, _) => true,
        (K::AdminVm, K::AdminVm) => true,
        (K::AnyVm, K::Name | K::Uuid | K::AnyVm) => true,
        (K::AnyVm, K::Type) => b.value() != crate::system::ADMIN_VM_CLASS,
        (ka, kb) => ka == kb && a.value() == b.value(),
    }
}

/// Whether every requested target that `b` matches is matched by `a`.
fn target_covers(a: &VmToken, b: &VmToken) -> bool {
    use TokenKind as K;
    match (a.kind(), b.kind()) {
        (K::Wildcard, _) => true,
        (K::AdminVm, K::AdminVm) => true,
        (
            K::AnyVm,
            K::Name
            | K::Uuid
            | K::AnyVm
            | K::Default
            | K::DispVm
            | K::DispVmName
            | K::DispVmUuid
            | K::DispVmTag,
        ) => true,
        (K::AnyVm, K::Type) => b.value() != crate::system::ADMIN_VM_CLASS,
        (ka, kb) => ka == kb && a.value() == b.value(),
    }
}

fn covers(a: &Rule, b: &Rule) -> bool {
    (a.service.is_none() || a.service == b.service)
        && (a.argument.is_none() || a.argument == b.argument)
        && source_covers(&a.source, &b.source)
        && target_covers(&a.target, &b.target)
}

fn effective_target(r: &Rule) -> &VmToken {
    r.action.target.as_ref().unwrap_or(&r.target)
}

impl Policy {
    /// Lints the policy. With a system description, names are checked
    /// against it and `ask` rules are probed for possible targets.
    pub fn lint(&self, system: Option<&System>) -> Vec<Finding> {
        let mut out = Vec::new();
        self.lint_shadowed(&mut out);
        for (rref, rule) in self.rules() {
            if rref.line == 0 {
                continue;
            }
            lint_rule(&rref, rule, system, &mut out);
            // (A `@dispvm:` source never matches: reported as such.)
            if rule.action.kind == ActionKind::Ask
                && rule.action.target.is_none()
                && !matches!(
                    rule.source.kind(),
                    TokenKind::DispVmName | TokenKind::DispVmUuid | TokenKind::DispVmTag
                )
                && let Some(msg) = self.ask_without_target(rule, system)
            {
                out.push(Finding {
                    rule: rref.clone(),
                    lint: Lint::AskNoTarget,
                    message: msg,
                    related: None,
                });
            }
        }
        out.sort_by_key(|a| (a.rule.index, a.lint));
        out
    }

    fn lint_shadowed(&self, out: &mut Vec<Finding>) {
        // Rules of each service, and rules for any service, in order.
        let mut by_service: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut any: Vec<usize> = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            match r.service.as_deref() {
                Some(s) => by_service.entry(s).or_default().push(i),
                None => any.push(i),
            }
        }
        let empty = Vec::new();
        for (j, rule) in self.rules.iter().enumerate() {
            if rule.line == 0 {
                continue;
            }
            let own = rule
                .service
                .as_deref()
                .map_or(&empty, |s| by_service.get(s).unwrap_or(&empty));
            // Earlier candidates, nearest first.
            let earlier_own = own.iter().rev().skip_while(|&&i| i >= j);
            let earlier_any = any.iter().rev().skip_while(|&&i| i >= j);
            let mut cands: Vec<usize> = earlier_own
                .take(MAX_SHADOW_COMPARISONS)
                .chain(earlier_any.take(MAX_SHADOW_COMPARISONS))
                .copied()
                .collect();
            cands.sort_unstable();
            let keep = cands.len().saturating_sub(MAX_SHADOW_COMPARISONS);
            let first = cands
                .get(keep..)
                .unwrap_or_default()
                .iter()
                .find(|&&i| self.rules.get(i).is_some_and(|a| covers(a, rule)));
            if let Some(&i) = first {
                let shadow = self.rule_ref(i);
                out.push(Finding {
                    rule: self.rule_ref(j),
                    lint: Lint::Shadowed,
                    message: format!(
                        "never decides a call: every call it matches is decided first by {shadow} (it can still change the targets an ask offers)"
                    ),
                    related: Some(shadow),
                });
            }
        }
    }

    /// `Some(reason)` when the `ask` rule (without `target=`) can never
    /// offer a target.
    fn ask_without_target(&self, rule: &Rule, system: Option<&System>) -> Option<String> {
        let compatible = |a: &Option<Text>, b: &Option<Text>| a.is_none() || b.is_none() || a == b;
        let Some(sys) = system else {
            // Without qubes, only the case where no rule could ever add one.
            let any = self.rules.iter().any(|r| {
                r.action.kind != ActionKind::Deny
                    && compatible(&r.service, &rule.service)
                    && compatible(&r.argument, &rule.argument)
                    && effective_target(r).kind() != TokenKind::Default
            });
            return (!any).then(|| {
                "ask can never offer a target: no allow or ask rule for this service names one"
                    .to_owned()
            });
        };
        // Services and arguments to try.
        let services: Vec<&str> = match rule.service.as_deref() {
            Some(s) => vec![s],
            None => {
                let mut s: BTreeSet<&str> = self
                    .rules
                    .iter()
                    .filter_map(|r| r.service.as_deref())
                    .collect();
                s.insert("\u{0}any");
                s.into_iter().collect()
            }
        };
        let mut probes = 0usize;
        let mut sources = 0usize;
        for d in sys.domains() {
            let req0 = Request::new("", "+", &d.name, "@default");
            let Ok(ctx) = Ctx::new(&req0, sys) else {
                continue;
            };
            if !source_matches(&rule.source, &ctx) {
                continue;
            }
            sources += 1;
            for &service in &services {
                let args: Vec<&str> = match rule.argument.as_deref() {
                    Some(a) => vec![a],
                    None => {
                        let mut a: BTreeSet<&str> = self
                            .rules
                            .iter()
                            .filter(|r| r.service.as_deref() == Some(service))
                            .filter_map(|r| r.argument.as_deref())
                            .collect();
                        a.insert("+");
                        a.insert("+\u{0}any");
                        a.into_iter().collect()
                    }
                };
                for arg in args {
                    probes += 1;
                    if probes > MAX_ASK_PROBES {
                        return None;
                    }
                    let req = Request::new(service, arg, &d.name, "@default");
                    let Ok(targets) = self.collect_targets(&req, &ctx, None) else {
                        return None;
                    };
                    let any = targets.iter().any(|t| {
                        rule.action.autostart_or_default()
                            || t == "dom0"
                            || (!t.starts_with("@dispvm")
                                && sys.get(t).is_some_and(|d| d.is_running()))
                    });
                    if any {
                        return None;
                    }
                }
            }
        }
        Some(if sources == 0 {
            format!(
                "ask can never offer a target: no qube of the system matches its source {}",
                q(rule.source.as_str())
            )
        } else {
            "ask can never offer a target: for every qube it matches, the collected target list is empty".to_owned()
        })
    }
}

fn lint_rule(rref: &RuleRef, rule: &Rule, system: Option<&System>, out: &mut Vec<Finding>) {
    let mut push = |lint, message: String| {
        out.push(Finding {
            rule: rref.clone(),
            lint,
            message,
            related: None,
        });
    };
    if rule.action.kind == ActionKind::Allow {
        let t = effective_target(rule);
        match t.kind() {
            TokenKind::AnyVm => push(
                Lint::AllowToAnyVm,
                "allows calls to any qube (@anyvm)".to_owned(),
            ),
            TokenKind::Wildcard => push(
                Lint::AllowToAnyVm,
                "allows calls to any qube and to dom0 (`*`)".to_owned(),
            ),
            TokenKind::AdminVm => push(
                Lint::AllowToAdminVm,
                format!("allows the call into dom0 ({})", q(t.as_str())),
            ),
            _ => {}
        }
    }
    if matches!(
        rule.source.kind(),
        TokenKind::DispVmName | TokenKind::DispVmUuid | TokenKind::DispVmTag
    ) {
        push(
            Lint::DispvmSource,
            format!(
                "source {} never matches: calls always come from a named qube",
                q(rule.source.as_str())
            ),
        );
    }
    let tokens = [
        ("source", Some(&rule.source)),
        ("target", Some(&rule.target)),
        ("target=", rule.action.target.as_ref()),
        ("default_target=", rule.action.default_target.as_ref()),
    ];
    for (what, tok) in tokens {
        let Some(tok) = tok else { continue };
        let v = tok.value();
        match tok.kind() {
            TokenKind::Type if !KNOWN_CLASSES.contains(&v) => push(
                Lint::UnknownClass,
                format!(
                    "{what} {}: no qube class is called {} (known: {})",
                    q(tok.as_str()),
                    q(v),
                    KNOWN_CLASSES.join(", ")
                ),
            ),
            _ => {}
        }
        let Some(sys) = system else { continue };
        match tok.kind() {
            TokenKind::Name if sys.get(v).is_none() => push(
                Lint::UnknownQube,
                format!("{what} {}: no such qube", q(tok.as_str())),
            ),
            TokenKind::Uuid if sys.by_uuid(v).is_none() => push(
                Lint::UnknownQube,
                format!("{what} {}: no qube has this UUID", q(tok.as_str())),
            ),
            TokenKind::DispVmName | TokenKind::DispVmUuid => {
                let d = if tok.kind() == TokenKind::DispVmName {
                    sys.get(v)
                } else {
                    sys.by_uuid(v)
                };
                match d {
                    None => push(
                        Lint::UnknownQube,
                        format!("{what} {}: no such qube", q(tok.as_str())),
                    ),
                    Some(d) if !d.template_for_dispvms => push(
                        Lint::NotDispvmTemplate,
                        format!(
                            "{what} {}: {} is not a disposable template (template_for_dispvms is false)",
                            q(tok.as_str()),
                            q(&d.name)
                        ),
                    ),
                    Some(_) => {}
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::Domain;

    fn lints(text: &str, sys: Option<&System>) -> Vec<(u32, Lint)> {
        let p = Policy::from_text("a.policy", text).unwrap();
        p.lint(sys)
            .into_iter()
            .map(|f| (f.rule.line, f.lint))
            .collect()
    }

    fn sys() -> System {
        let mut s = System::new();
        s.insert(Domain::dom0());
        s.insert(Domain::new("work", "AppVM").with_tag("t"));
        s.insert(Domain::new("vault", "AppVM"));
        s.insert(Domain::new("dvm", "AppVM").with_template_for_dispvms(true));
        s
    }

    #[test]
    fn shadowing() {
        let l = lints(
            "qubes.A * @anyvm @anyvm deny\nqubes.A +x work vault ask\nqubes.A * @anyvm dom0 ask\n* * * * deny\nqubes.B * @tag:t vault deny\n",
            None,
        );
        assert_eq!(l, vec![(2, Lint::Shadowed), (5, Lint::Shadowed)]);
        // @anyvm does not cover dom0, nor @tag: sources (dom0 may carry the tag).
        let l = lints(
            "qubes.A * @anyvm @anyvm deny\nqubes.A * @tag:t vault deny\nqubes.A * work @tag:t deny\n",
            None,
        );
        assert_eq!(l, vec![]);
    }

    #[test]
    fn grants_and_names() {
        let s = sys();
        let l = lints(
            "qubes.A * work @anyvm allow\nqubes.B * work dom0 allow\nqubes.C * @dispvm:dvm ghost deny\nqubes.D * work @dispvm:vault allow\nqubes.E * @type:AppVm vault deny\n",
            Some(&s),
        );
        assert_eq!(
            l,
            vec![
                (1, Lint::AllowToAnyVm),
                (2, Lint::AllowToAdminVm),
                (3, Lint::UnknownQube),
                (3, Lint::DispvmSource),
                (4, Lint::NotDispvmTemplate),
                (5, Lint::UnknownClass),
            ]
        );
    }

    #[test]
    fn ask_without_targets() {
        let s = sys();
        // Only @default targets: nothing to offer, with or without a system.
        let text = "qubes.A * work @default ask\n";
        assert_eq!(lints(text, None), vec![(1, Lint::AskNoTarget)]);
        assert_eq!(lints(text, Some(&s)), vec![(1, Lint::AskNoTarget)]);
        // A later allow adds targets.
        assert_eq!(
            lints(
                "qubes.A * work @default ask\nqubes.A * work vault allow\n",
                Some(&s)
            ),
            vec![]
        );
        // The only target is the caller itself.
        assert_eq!(
            lints("qubes.A * work work ask\n", Some(&s)),
            vec![(1, Lint::AskNoTarget)]
        );
        // A deny removes what the ask would offer.
        assert_eq!(
            lints(
                "qubes.A * work @default ask\nqubes.A * work vault deny\nqubes.A * work vault allow\n",
                Some(&s)
            ),
            vec![(1, Lint::AskNoTarget), (3, Lint::Shadowed)]
        );
    }
}
