//! The scope rules R1–R15: is a package's policy confined to its own qubes?

use std::fmt;

use qpm_policy::{ActionKind, Item, Rule, System, TokenKind, VmToken};
use serde::{Deserialize, Serialize};

/// Longest line, in bytes, its LF not counted (R3).
pub const MAX_LINE_BYTES: usize = 4096;
/// Largest policy, in bytes (R3).
pub const MAX_FILE_BYTES: usize = 65536;
/// Violations reported at most; more are summarised in one entry.
pub const MAX_VIOLATIONS: usize = 1000;

/// One of the rules a package policy must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[allow(missing_docs, reason = "each variant is the rule of the same number")]
#[rustfmt::skip]
pub enum RuleId {
    R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, R11, R12, R13, R14, R15,
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// One offending line (or the whole file when `line` is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// 1-based line, `None` for the whole file.
    pub line: Option<u32>,
    /// The rule broken.
    pub rule: RuleId,
    /// What is wrong, for the package author.
    pub message: String,
}

/// The gatekeeper's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Whether the policy may be installed.
    pub accepted: bool,
    /// Every rule broken, in line order.
    pub violations: Vec<Violation>,
    /// Accepted but pointless or surprising lines.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Violation>,
}

/// A target the dom0 administrator opened for one service (any argument)
/// or one `service+argument`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraTarget {
    /// `SERVICE` or `SERVICE+ARG`.
    pub service: String,
    /// A plain qube name.
    pub target: String,
}

/// The gatekeeper's configuration (`/etc/qpm/gatekeeper.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The management qube allowed to submit package policies.
    pub mgmt: String,
    /// Targets outside packages opened by the administrator.
    #[serde(default)]
    pub extra_targets: Vec<ExtraTarget>,
    /// The config qube that pushes configuration (`qpm-dom0 sync-grant`);
    /// the management qube when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_qube: Option<String>,
}

/// Who the qubes named by a package are.
struct Scope<'a> {
    system: &'a System,
    mgmt: &'a str,
    created_by: String,
    pkg_tag: String,
}

/// Why a name is not one of the package's qubes, or `None` when it is.
enum NotOwned {
    Missing(Option<String>),
    Dom0,
    Mgmt,
    Foreign,
    OtherPackage(String),
    Untagged,
}

impl Scope<'_> {
    fn owned(&self, name: &str) -> Result<(), NotOwned> {
        let Some(d) = self.system.get(name) else {
            let lookalike = self
                .system
                .domains()
                .find(|d| d.name.eq_ignore_ascii_case(name) && self.owned(&d.name).is_ok())
                .map(|d| d.name.clone());
            return Err(NotOwned::Missing(lookalike));
        };
        if d.is_admin() || name == "dom0" {
            return Err(NotOwned::Dom0);
        }
        if name == self.mgmt {
            return Err(NotOwned::Mgmt);
        }
        if !d.has_tag(&self.created_by) {
            return Err(NotOwned::Foreign);
        }
        if let Some(other) = d
            .tags
            .iter()
            .find(|t| t.starts_with("qpm-pkg-") && **t != self.pkg_tag)
        {
            return Err(NotOwned::OtherPackage(
                other.trim_start_matches("qpm-pkg-").to_owned(),
            ));
        }
        if !d.has_tag(&self.pkg_tag) {
            return Err(NotOwned::Untagged);
        }
        Ok(())
    }

    fn own_dvm(&self, name: &str) -> Result<(), String> {
        match self.owned(name) {
            Ok(())
                if self
                    .system
                    .get(name)
                    .is_some_and(|d| d.template_for_dispvms) =>
            {
                Ok(())
            }
            Ok(()) => Err(format!(
                "`{name}` is not a disposable template (template_for_dispvms)"
            )),
            Err(e) => Err(self.why(name, &e)),
        }
    }

    fn why(&self, name: &str, e: &NotOwned) -> String {
        match e {
            NotOwned::Missing(Some(like)) => {
                format!(
                    "`{name}` does not exist (names are case-sensitive: did you mean `{like}`?)"
                )
            }
            NotOwned::Missing(None) => format!("`{name}` does not exist (create the qube first)"),
            NotOwned::Dom0 => "dom0 is never in a package's scope".to_owned(),
            NotOwned::Mgmt => format!("`{name}` is the management qube, not a package qube"),
            NotOwned::Foreign => format!("`{name}` was not created by `{}`", self.mgmt),
            NotOwned::OtherPackage(p) => format!("`{name}` belongs to package `{p}`"),
            NotOwned::Untagged => format!("`{name}` does not carry the tag `{}`", self.pkg_tag),
        }
    }
}

/// Where a token stands in a rule.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Column {
    Source,
    Target,
    Redirect(&'static str),
}

impl Column {
    fn rule(self) -> RuleId {
        match self {
            Self::Source => RuleId::R6,
            Self::Target => RuleId::R7,
            Self::Redirect(_) => RuleId::R8,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Target => "target",
            Self::Redirect(p) => p,
        }
    }
}

struct Checker<'a> {
    scope: Scope<'a>,
    config: &'a Config,
    out: Verdict,
    line: u32,
}

impl Checker<'_> {
    fn violation(&mut self, rule: RuleId, message: String) {
        push(&mut self.out.violations, Some(self.line), rule, message);
    }

    /// Whether the administrator opened `target` for this rule's service.
    fn extra_target(&self, r: &Rule, target: &str) -> bool {
        let (Some(service), Some(d)) = (r.service.as_deref(), self.scope.system.get(target)) else {
            return false;
        };
        if d.is_admin() || target == "dom0" {
            return false;
        }
        self.config.extra_targets.iter().any(|e| {
            e.target == target
                && match e.service.split_once('+') {
                    None => e.service == service,
                    Some((s, a)) => {
                        s == service
                            && r.argument.as_deref().and_then(|x| x.strip_prefix('+')) == Some(a)
                    }
                }
        })
    }

    /// Checks one token; `fence` says the rule is a deny fence.
    fn token(&mut self, r: &Rule, t: &VmToken, col: Column, fence: bool) {
        let raw = t.as_str();
        let rule = col.rule();
        match t.kind() {
            TokenKind::Name => {
                if let Err(e) = self.scope.owned(raw) {
                    if col != Column::Source && self.extra_target(r, raw) {
                        return;
                    }
                    let msg = format!("{}: {}", col.name(), self.scope.why(raw, &e));
                    let id = match e {
                        NotOwned::Dom0 => RuleId::R10,
                        _ => RuleId::R12,
                    };
                    self.violation(id, msg);
                }
            }
            TokenKind::DispVmName => {
                if let Err(msg) = self.scope.own_dvm(t.value()) {
                    self.violation(rule, format!("{} `{raw}`: {msg}", col.name()));
                } else if col == Column::Source {
                    push(
                        &mut self.out.warnings,
                        Some(self.line),
                        RuleId::R6,
                        format!("source `{raw}` never matches: qrexec does not match @dispvm: sources"),
                    );
                }
            }
            TokenKind::AdminVm => {
                self.violation(RuleId::R10, format!("{} `{raw}`: dom0 is never in a package's scope", col.name()));
            }
            TokenKind::AnyVm if fence => {}
            TokenKind::AnyVm => self.violation(
                RuleId::R11,
                format!(
                    "{} `@anyvm` is only allowed in a deny fence (deny, @anyvm on one side, an own qube on the other)",
                    col.name()
                ),
            ),
            TokenKind::Default if col == Column::Target => {
                if r.action.target.is_none() {
                    self.violation(RuleId::R9, "target `@default` needs `target=`".to_owned());
                }
            }
            kind => {
                let what = match kind {
                    TokenKind::Wildcard => "`*` as a qube matches every qube",
                    TokenKind::Tag => "`@tag:` can be extended by anyone able to tag a qube",
                    TokenKind::Type => "`@type:` reaches every qube of a class",
                    TokenKind::DispVm => "bare `@dispvm` follows each caller's default_dispvm",
                    TokenKind::DispVmTag => "`@dispvm:@tag:` can be extended by tagging",
                    TokenKind::Uuid | TokenKind::DispVmUuid => "`uuid:` names: use the plain name",
                    _ => "this token reaches outside the package",
                };
                self.violation(RuleId::R11, format!("{} `{raw}`: {what}", col.name()));
            }
        }
    }

    fn rule(&mut self, r: &Rule) {
        match r.service.as_deref() {
            None => self.violation(RuleId::R5, "service `*` covers every service".to_owned()),
            Some(s) => {
                let l = s.to_ascii_lowercase();
                if ["admin.", "policy.", "qpm."]
                    .iter()
                    .any(|p| l.starts_with(p))
                {
                    self.violation(
                        RuleId::R5,
                        format!(
                            "service `{s}`: admin.*, policy.* and qpm.* services are dom0's own"
                        ),
                    );
                }
            }
        }
        let (src_any, dst_any) = (
            r.source.kind() == TokenKind::AnyVm,
            r.target.kind() == TokenKind::AnyVm,
        );
        let own_side = |t: &VmToken| match t.kind() {
            TokenKind::Name => self.scope.owned(t.as_str()).is_ok(),
            TokenKind::DispVmName => self.scope.own_dvm(t.value()).is_ok(),
            _ => false,
        };
        let fence = r.action.kind == ActionKind::Deny
            && ((src_any && own_side(&r.target)) || (dst_any && own_side(&r.source)));
        if r.action.kind == ActionKind::Deny && (src_any || dst_any) && !fence {
            self.violation(
                RuleId::R14,
                "a deny fence needs @anyvm on exactly one side and one of the package's own qubes on the other"
                    .to_owned(),
            );
        }
        self.token(r, &r.source, Column::Source, fence);
        self.token(r, &r.target, Column::Target, fence);
        if let Some(t) = &r.action.target {
            self.redirect(r, t, "target=");
        }
        if let Some(t) = &r.action.default_target {
            self.redirect(r, t, "default_target=");
        }
        if let Some(u) = &r.action.user
            && &**u != "user"
        {
            self.violation(
                RuleId::R13,
                format!("`user={u}`: only `user=user` is allowed"),
            );
        }
    }

    fn redirect(&mut self, r: &Rule, t: &VmToken, param: &'static str) {
        // R8: like R7, without @default and @anyvm (the parser already
        // refuses those here).
        self.token(r, t, Column::Redirect(param), false);
    }
}

fn push(list: &mut Vec<Violation>, line: Option<u32>, rule: RuleId, message: String) {
    if list.len() < MAX_VIOLATIONS {
        list.push(Violation {
            line,
            rule,
            message,
        });
    } else if list.len() == MAX_VIOLATIONS {
        list.push(Violation {
            line: None,
            rule,
            message: format!("more than {MAX_VIOLATIONS} violations; the rest are not listed"),
        });
    }
}

/// Checks `policy`, submitted for package `package` by `config.mgmt`,
/// against the qubes in `system`. Every offending line is reported.
///
/// ```
/// use qpm_gatekeeper::{Config, check};
/// use qpm_policy::{Domain, System};
/// let mut sys = System::new();
/// sys.insert(Domain::dom0());
/// for q in ["app", "gpg"] {
///     sys.insert(Domain::new(q, "AppVM").with_tag("created-by-mgmt").with_tag("qpm-pkg-demo"));
/// }
/// let config = Config { mgmt: "mgmt".into(), extra_targets: vec![], config_qube: None };
/// let ok = check("demo", b"qubes.Gpg * app gpg allow\n", &sys, &config);
/// assert!(ok.accepted);
/// let bad = check("demo", b"qubes.Gpg * app dom0 allow\n", &sys, &config);
/// assert!(!bad.accepted);
/// ```
pub fn check(package: &str, policy: &[u8], system: &System, config: &Config) -> Verdict {
    let mut ck = Checker {
        scope: Scope {
            system,
            mgmt: &config.mgmt,
            created_by: format!("created-by-{}", config.mgmt),
            pkg_tag: format!("qpm-pkg-{package}"),
        },
        config,
        out: Verdict::default(),
        line: 0,
    };
    if policy.len() > MAX_FILE_BYTES {
        push(
            &mut ck.out.violations,
            None,
            RuleId::R3,
            format!(
                "the policy is {} bytes; at most {MAX_FILE_BYTES} are allowed",
                policy.len()
            ),
        );
    }
    let body = policy.strip_suffix(b"\n").unwrap_or(policy);
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        ck.line = u32::try_from(i).unwrap_or(u32::MAX).saturating_add(1);
        check_line(&mut ck, line);
    }
    ck.out.accepted = ck.out.violations.is_empty();
    ck.out
}

fn check_line(ck: &mut Checker<'_>, line: &[u8]) {
    if line.len() > MAX_LINE_BYTES {
        ck.violation(
            RuleId::R3,
            format!(
                "the line is {} bytes; at most {MAX_LINE_BYTES} are allowed",
                line.len()
            ),
        );
        return;
    }
    if let Some(col) = line
        .iter()
        .position(|&b| !(b == b'\t' || (0x20..=0x7e).contains(&b)))
    {
        let byte = line.get(col).copied().unwrap_or(0);
        ck.violation(
            RuleId::R2,
            format!(
                "byte 0x{byte:02x} at column {}: only tab and printable ASCII are allowed",
                col.saturating_add(1)
            ),
        );
        return;
    }
    // Printable ASCII only from here on.
    let Ok(text) = std::str::from_utf8(line) else {
        return;
    };
    let trimmed = text.trim_matches(|c| c == ' ' || c == '\t');
    if trimmed.starts_with('!') {
        ck.violation(
            RuleId::R4,
            "directives (`!include` and the like) are not allowed".to_owned(),
        );
        return;
    }
    match qpm_policy::parse_line(text, ck.line) {
        Ok(None) => {}
        Ok(Some(Item::Rule(r))) => ck.rule(&r),
        Ok(Some(Item::Directive(_))) => {
            ck.violation(RuleId::R4, "directives are not allowed".to_owned());
        }
        Err(e) => ck.violation(RuleId::R1, e.message),
    }
}
