//! Evaluating a request exactly as qrexec's policy daemon decides it.

use std::fmt;

use crate::parse::{ActionKind, Rule};
use crate::policy::{Index, Policy, RuleRef, SourceKey};
use crate::system::{Domain, System};
use crate::token::{TokenClass, TokenKind, VmToken};

/// A qrexec call to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The service, e.g. `qubes.Filecopy`.
    pub service: &'a str,
    /// The argument with its leading `+`; `+` alone is the empty argument.
    pub argument: &'a str,
    /// The calling qube (an existing qube's name, possibly `dom0`).
    pub source: &'a str,
    /// The target as the caller wrote it: a name, `uuid:...`, `@default`,
    /// `@adminvm`, `@dispvm`, `@dispvm:NAME`, `""`...
    pub target: &'a str,
}

impl<'a> Request<'a> {
    /// A request; `argument` must start with `+` (a missing `+` is added
    /// by [`Request::from_call`], not here).
    pub fn new(service: &'a str, argument: &'a str, source: &'a str, target: &'a str) -> Self {
        Self {
            service,
            argument,
            source,
            target,
        }
    }

    /// A request from qrexec's `SERVICE+ARGUMENT` form (`qubes.Filecopy`,
    /// `qubes.USB+sys-usb+2-1`): the service ends at the first `+`.
    pub fn from_call(call: &'a str, source: &'a str, target: &'a str) -> Self {
        let (service, argument) = match call.find('+') {
            Some(i) => (call.get(..i).unwrap_or(call), call.get(i..).unwrap_or("+")),
            None => (call, "+"),
        };
        Self::new(service, argument, source, target)
    }
}

/// Why a call is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DenyReason {
    /// No rule matches.
    NoMatch,
    /// The first matching rule is `deny`.
    DenyRule,
    /// An `allow` matched but no target is left (the caller gave none and
    /// the rule has no `target=`, or `target=` names no existing qube).
    NoTarget,
    /// An `allow` resolved to `@dispvm` and the caller has no `default_dispvm`.
    NoDispvmTemplate,
    /// `target=@dispvm:X` where X is not a disposable template.
    InvalidDispvmTemplate,
    /// `autostart=no` and the target is not running.
    Autostart,
    /// An `ask` matched but no target is left to choose from.
    AskNoTargets,
    /// The call would go back to its caller.
    Loopback,
    /// The requested target itself is unacceptable.
    InvalidRequest,
    /// qrexec's own engine fails with an internal error on this request
    /// (a `@dispvm:` token naming no qube, or `@dispvm` from a qube without
    /// a default disposable compared with `@dispvm:X`), so the call is
    /// refused.
    EngineFault,
}

impl DenyReason {
    /// The `deny_reason` of the conformance schema.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoMatch => "no_match",
            Self::DenyRule => "deny_rule",
            Self::NoTarget => "no_target",
            Self::NoDispvmTemplate => "no_dispvm_template",
            Self::InvalidDispvmTemplate => "invalid_dispvm_template",
            Self::Autostart => "autostart",
            Self::AskNoTargets => "ask_no_targets",
            Self::Loopback => "loopback",
            Self::InvalidRequest => "invalid_request",
            Self::EngineFault => "engine_fault",
        }
    }

    /// A sentence for humans.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NoMatch => "no rule matches this call",
            Self::DenyRule => "the first matching rule denies it",
            Self::NoTarget => {
                "the rule allows it but no target is left: the caller named none (or a qube that does not exist) and the rule has no target= naming an existing qube"
            }
            Self::NoDispvmTemplate => {
                "the call goes to @dispvm but the calling qube has no default_dispvm"
            }
            Self::InvalidDispvmTemplate => "target= names a qube that is not a disposable template",
            Self::Autostart => "autostart=no and the target is not running",
            Self::AskNoTargets => "the rule asks, but no target is left to choose from",
            Self::Loopback => "the call would go back to the calling qube",
            Self::InvalidRequest => "the requested target is not acceptable",
            Self::EngineFault => "qrexec's own engine fails on this request, so it is refused",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The call goes through without asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Where the call goes: a name, `uuid:...` as written, `dom0`, or
    /// `@dispvm:NAME` / `@dispvm:uuid:...` for a new disposable.
    pub target: String,
    /// `uuid:<uuid>`, `@dispvm:uuid:<template uuid>`, or `None` for dom0
    /// (and for qubes without a known UUID).
    pub target_uuid: Option<String>,
    /// `user=`, if given and not empty.
    pub user: Option<String>,
    /// Whether qrexec may start the target.
    pub autostart: bool,
    /// Whether the user is notified.
    pub notify: bool,
    /// The caller's target after normalisation (`@default` for an empty or
    /// unknown one).
    pub requested_target: String,
    /// The rule that decided.
    pub rule: RuleRef,
}

/// The user is asked to confirm and pick a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The targets to choose from, sorted.
    pub targets: Vec<String>,
    /// The preselected target, if it is among `targets`.
    pub default_target: Option<String>,
    /// `user=`, if given and not empty.
    pub user: Option<String>,
    /// Whether qrexec may start the chosen target.
    pub autostart: bool,
    /// The rule's `notify=`.
    pub notify: bool,
    /// The caller's target after normalisation.
    pub requested_target: String,
    /// The rule that decided.
    pub rule: RuleRef,
}

/// The call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Why.
    pub reason: DenyReason,
    /// Whether the user sees a "denied" notification.
    pub notify: bool,
    /// The rule that decided, if one matched.
    pub rule: Option<RuleRef>,
}

/// What qrexec decides for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow(Allowed),
    /// Ask the user.
    Ask(Ask),
    /// Refused.
    Deny(Denied),
}

impl Decision {
    /// `allow`, `ask` or `deny`.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Allow(_) => "allow",
            Self::Ask(_) => "ask",
            Self::Deny(_) => "deny",
        }
    }

    /// Whether the call goes through when nobody can be asked (`ask` counts
    /// as deny), as for `admin.vm.List` filtering and `--just-evaluate`.
    pub fn is_allowed_noninteractive(&self) -> bool {
        matches!(self, Self::Allow(_))
    }

    /// The rule that decided, if any.
    pub fn rule(&self) -> Option<&RuleRef> {
        match self {
            Self::Allow(a) => Some(&a.rule),
            Self::Ask(a) => Some(&a.rule),
            Self::Deny(d) => d.rule.as_ref(),
        }
    }
}

/// The caller's target after normalisation.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'s> {
    Default,
    /// The admin VM; with its entry in the system when the caller named it
    /// `dom0` or by UUID (then `@tag:`/`@type:` columns can match it).
    Admin(Option<&'s Domain>),
    DispVm,
    DispTemplate(&'s Domain),
    Domain(&'s Domain),
}

/// qrexec's engine would crash here (see [`DenyReason::EngineFault`]).
#[derive(Debug)]
pub(crate) struct Fault;

pub(crate) struct Ctx<'r, 's> {
    pub(crate) sys: &'s System,
    pub(crate) source: &'r str,
    pub(crate) src: Option<&'s Domain>,
    pub(crate) src_admin: bool,
    pub(crate) target: Target<'s>,
    pub(crate) requested: &'r str,
}

/// Normalises the requested target; `Err(notify)` when it is unacceptable.
pub(crate) fn normalize_target<'r, 's>(
    target: &'r str,
    sys: &'s System,
) -> Result<(Target<'s>, &'r str), bool> {
    if target.is_empty() {
        return Ok((Target::Default, "@default"));
    }
    let tok = VmToken::classify(target).map_err(|_| false)?;
    if !tok.allowed_in(TokenClass::Request) {
        return Err(false);
    }
    let value = || {
        VmToken::parse(target, TokenClass::Request)
            .map(|t| t.value().to_owned())
            .unwrap_or_default()
    };
    Ok(match tok {
        TokenKind::Name => match sys.get(target) {
            Some(d) => (Target::Domain(d), target),
            None => (Target::Default, "@default"),
        },
        TokenKind::Uuid => match sys.by_uuid(&value()) {
            Some(d) => (Target::Domain(d), target),
            None => (Target::Default, "@default"),
        },
        TokenKind::AdminVm => {
            let d = match target.strip_prefix("uuid:") {
                Some(u) => sys.by_uuid(u),
                None if target == "@adminvm" => None,
                None => sys.get(target),
            };
            (Target::Admin(d), target)
        }
        TokenKind::Default => (Target::Default, target),
        TokenKind::DispVm => (Target::DispVm, target),
        TokenKind::DispVmName | TokenKind::DispVmUuid => {
            let v = value();
            let d = if tok == TokenKind::DispVmName {
                sys.get(&v)
            } else {
                sys.by_uuid(&v)
            };
            match d {
                Some(d) if d.template_for_dispvms => (Target::DispTemplate(d), target),
                _ => return Err(true),
            }
        }
        _ => return Err(false),
    })
}

impl<'r, 's> Ctx<'r, 's> {
    pub(crate) fn new(req: &Request<'r>, sys: &'s System) -> Result<Self, bool> {
        let (target, requested) = normalize_target(req.target, sys)?;
        let src = sys.get(req.source);
        Ok(Self {
            sys,
            source: req.source,
            src,
            src_admin: src.map_or(req.source == "dom0", Domain::is_admin),
            target,
            requested,
        })
    }

    fn default_dispvm(&self) -> Option<&'s str> {
        self.src.and_then(|d| d.default_dispvm.as_deref())
    }
}

/// Whether the source column `tok` matches the calling qube.
pub(crate) fn source_matches(tok: &VmToken, ctx: &Ctx<'_, '_>) -> bool {
    let v = tok.value();
    match tok.kind() {
        TokenKind::Wildcard => true,
        TokenKind::AnyVm => !ctx.src_admin,
        TokenKind::AdminVm => ctx.src_admin,
        TokenKind::Name => v == ctx.source,
        TokenKind::Uuid => ctx.src.is_some_and(|d| d.uuid.as_deref() == Some(v)),
        TokenKind::Type => ctx.src.is_some_and(|d| d.class == v),
        TokenKind::Tag => ctx.src.is_some_and(|d| d.has_tag(v)),
        _ => false,
    }
}

/// Whether the target column `tok` matches the requested target.
pub(crate) fn target_matches(tok: &VmToken, ctx: &Ctx<'_, '_>) -> Result<bool, Fault> {
    let v = tok.value();
    let t = ctx.target;
    Ok(match tok.kind() {
        TokenKind::Wildcard => true,
        TokenKind::AnyVm => !matches!(t, Target::Admin(_)),
        TokenKind::AdminVm => matches!(t, Target::Admin(_)),
        TokenKind::Default => matches!(t, Target::Default),
        TokenKind::Name => matches!(t, Target::Domain(d) if d.name == v),
        TokenKind::Uuid => matches!(t, Target::Domain(d) if d.uuid.as_deref() == Some(v)),
        TokenKind::Type => {
            matches!(t, Target::Domain(d) | Target::Admin(Some(d)) if d.class == v)
        }
        TokenKind::Tag => matches!(t, Target::Domain(d) | Target::Admin(Some(d)) if d.has_tag(v)),
        TokenKind::DispVm => matches!(t, Target::DispVm),
        TokenKind::DispVmName => match t {
            Target::DispTemplate(d) => d.name == v,
            Target::DispVm => ctx.default_dispvm().ok_or(Fault)? == v,
            _ => false,
        },
        TokenKind::DispVmUuid => match t {
            Target::DispTemplate(d) => d.uuid.as_deref() == Some(v),
            Target::DispVm => {
                let name = ctx.default_dispvm().ok_or(Fault)?;
                ctx.sys.get(name).and_then(|d| d.uuid.as_deref()) == Some(v)
            }
            _ => false,
        },
        TokenKind::DispVmTag => {
            let d = match t {
                Target::DispTemplate(d) => d,
                Target::DispVm => match ctx.default_dispvm() {
                    None => return Ok(false),
                    Some(name) => ctx.sys.get(name).ok_or(Fault)?,
                },
                _ => return Ok(false),
            };
            d.template_for_dispvms && d.has_tag(v)
        }
    })
}

/// Rule indices from several sorted lists, merged in order, each once.
pub(crate) struct Merge<'p> {
    lists: Vec<&'p [u32]>,
    last: Option<u32>,
}

impl Iterator for Merge<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        loop {
            let (pos, &head) = self
                .lists
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.first().map(|h| (i, h)))
                .min_by_key(|&(_, h)| *h)?;
            if let Some(l) = self.lists.get_mut(pos) {
                *l = l.get(1..).unwrap_or_default();
            }
            if self.last == Some(head) {
                continue;
            }
            self.last = Some(head);
            return Some(head);
        }
    }
}

impl Policy {
    /// Rules that match the service, argument and source (target not
    /// checked), in order.
    pub(crate) fn candidates<'p>(
        &'p self,
        req: &'p Request<'_>,
        ctx: &'p Ctx<'_, '_>,
    ) -> impl Iterator<Item = u32> + 'p {
        let idx = self.index();
        let (svc, arg) = (idx.hash(req.service), idx.hash(req.argument));
        let mut sources: Vec<(SourceKey, u64)> = Vec::with_capacity(8);
        sources.push((SourceKey::Name, idx.hash(ctx.source)));
        if let Some(d) = ctx.src {
            if let Some(u) = &d.uuid {
                sources.push((SourceKey::Uuid, idx.hash(u)));
            }
            for t in &d.tags {
                sources.push((SourceKey::Tag, idx.hash(t)));
            }
            sources.push((SourceKey::Type, idx.hash(&d.class)));
        }
        sources.push((
            if ctx.src_admin {
                SourceKey::Admin
            } else {
                SourceKey::AnyVm
            },
            0,
        ));
        sources.push((SourceKey::Wildcard, 0));
        let mut lists: Vec<&'p [u32]> = Vec::with_capacity(3 * sources.len());
        for (s, a) in [(svc, arg), (svc, Index::ANY), (Index::ANY, Index::ANY)] {
            for &(k, v) in &sources {
                let l = idx.get(Index::key(s, a, k, v));
                if !l.is_empty() {
                    lists.push(l);
                }
            }
        }
        // The index only narrows the search: check each rule for real.
        Merge { lists, last: None }.filter(move |&i| {
            self.rules.get(i as usize).is_some_and(|r| {
                r.service.as_deref().is_none_or(|s| s == req.service)
                    && r.argument.as_deref().is_none_or(|a| a == req.argument)
                    && source_matches(&r.source, ctx)
            })
        })
    }

    /// Decides `req` against `sys` as qrexec would.
    ///
    /// ```
    /// use qpm_policy::{Decision, Domain, Policy, Request, System};
    /// let policy = Policy::from_text("30-user.policy", "qubes.Filecopy * work @anyvm ask default_target=vault\n").unwrap();
    /// let mut sys = System::new();
    /// sys.insert(Domain::dom0());
    /// sys.insert(Domain::new("work", "AppVM"));
    /// sys.insert(Domain::new("vault", "AppVM"));
    /// match policy.evaluate(&Request::from_call("qubes.Filecopy", "work", "vault"), &sys) {
    ///     Decision::Ask(ask) => {
    ///         assert_eq!(ask.targets, ["vault"]);
    ///         assert_eq!(ask.default_target.as_deref(), Some("vault"));
    ///         assert_eq!(ask.rule.to_string(), "30-user.policy:1");
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// ```
    pub fn evaluate(&self, req: &Request<'_>, sys: &System) -> Decision {
        let ctx = match Ctx::new(req, sys) {
            Ok(c) => c,
            Err(notify) => {
                return Decision::Deny(Denied {
                    reason: DenyReason::InvalidRequest,
                    notify,
                    rule: None,
                });
            }
        };
        match self.first_match(req, &ctx) {
            Err(i) => fault(Some(self.rule_ref(i))),
            Ok(None) => Decision::Deny(Denied {
                reason: DenyReason::NoMatch,
                notify: true,
                rule: None,
            }),
            Ok(Some(i)) => self.apply(i, req, &ctx),
        }
    }

    /// Whether `req` is allowed without asking anyone (`ask` counts as
    /// deny): the non-interactive evaluation used to filter
    /// `admin.vm.List` and by `qrexec-policy-exec --just-evaluate`.
    pub fn is_allowed(&self, req: &Request<'_>, sys: &System) -> bool {
        self.evaluate(req, sys).is_allowed_noninteractive()
    }

    /// The first matching rule; `Err(index)` when comparing with rule
    /// `index` makes qrexec's engine fail.
    pub(crate) fn first_match(
        &self,
        req: &Request<'_>,
        ctx: &Ctx<'_, '_>,
    ) -> Result<Option<usize>, usize> {
        for i in self.candidates(req, ctx) {
            let Some(rule) = self.rules.get(i as usize) else {
                continue;
            };
            if target_matches(&rule.target, ctx).map_err(|Fault| i as usize)? {
                return Ok(Some(i as usize));
            }
        }
        Ok(None)
    }

    pub(crate) fn apply(&self, index: usize, req: &Request<'_>, ctx: &Ctx<'_, '_>) -> Decision {
        let rref = self.rule_ref(index);
        let Some(rule) = self.rules.get(index) else {
            return fault(None);
        };
        let act = &rule.action;
        match act.kind {
            ActionKind::Deny => Decision::Deny(Denied {
                reason: DenyReason::DenyRule,
                notify: act.notify_or_default(),
                rule: Some(rref),
            }),
            ActionKind::Allow => allow(rule, rref, ctx),
            ActionKind::Ask => match self.ask(rule, rref.clone(), req, ctx) {
                Ok(d) => d,
                Err(Fault) => fault(Some(rref)),
            },
        }
    }

    fn ask(
        &self,
        rule: &Rule,
        rref: RuleRef,
        req: &Request<'_>,
        ctx: &Ctx<'_, '_>,
    ) -> Result<Decision, Fault> {
        let act = &rule.action;
        let mut targets: Vec<String> = match &act.target {
            Some(t) if t.is_admin_vm() => vec!["dom0".to_owned()],
            Some(t) => vec![t.as_str().to_owned()],
            None => self.collect_targets(req, ctx, None)?,
        };
        if !act.autostart_or_default() {
            let mut kept = Vec::with_capacity(targets.len());
            for t in targets {
                if may_run_without_autostart(&t, ctx.sys)? {
                    kept.push(t);
                }
            }
            targets = kept;
        }
        if targets.is_empty() {
            return Ok(Decision::Deny(Denied {
                reason: DenyReason::AskNoTargets,
                notify: true,
                rule: Some(rref),
            }));
        }
        targets.sort();
        targets.dedup();
        let default_target = act
            .default_target
            .as_ref()
            .and_then(|d| match d.kind() {
                TokenKind::DispVm => ctx.default_dispvm().map(|n| format!("@dispvm:{n}")),
                TokenKind::AdminVm => Some("dom0".to_owned()),
                _ => Some(d.as_str().to_owned()),
            })
            .filter(|d| targets.binary_search(d).is_ok());
        Ok(Decision::Ask(Ask {
            targets,
            default_target,
            user: act.user().map(Into::into),
            autostart: act.autostart_or_default(),
            notify: act.notify_or_default(),
            requested_target: ctx.requested.to_owned(),
            rule: rref,
        }))
    }

    /// The targets an `ask` without `target=` offers, sorted. With
    /// `trace`, records for each contributing rule (last to first) whether
    /// it added or removed targets, and which.
    pub(crate) fn collect_targets(
        &self,
        req: &Request<'_>,
        ctx: &Ctx<'_, '_>,
        mut trace: Option<&mut Vec<(usize, bool, Vec<String>)>>,
    ) -> Result<Vec<String>, Fault> {
        let matching: Vec<u32> = self.candidates(req, ctx).collect();
        let mut set = TargetSet::new(ctx.sys);
        let mut one = trace.is_some().then(|| TargetSet::new(ctx.sys));
        for &i in matching.iter().rev() {
            let Some(rule) = self.rules.get(i as usize) else {
                continue;
            };
            let tok = rule.action.target.as_ref().unwrap_or(&rule.target);
            let add = rule.action.kind != ActionKind::Deny;
            set.apply(tok, add)?;
            if let (Some(tr), Some(one)) = (trace.as_deref_mut(), one.as_mut()) {
                one.clear();
                one.apply(tok, true)?;
                tr.push((i as usize, add, one.names(None, None, false)));
            }
        }
        Ok(set.names(Some(ctx.source), ctx.default_dispvm(), true))
    }
}

/// A set of ask targets over one system: a bit per qube name, a bit per
/// `@dispvm:<qube>`, and bits for `@dispvm` and `@adminvm`.
struct TargetSet<'s> {
    sys: &'s System,
    bits: Vec<u64>,
}

impl<'s> TargetSet<'s> {
    fn new(sys: &'s System) -> Self {
        let slots = sys.len().saturating_mul(2).saturating_add(2);
        Self {
            sys,
            bits: vec![0; slots.div_ceil(64)],
        }
    }

    fn clear(&mut self) {
        self.bits.fill(0);
    }

    fn dispvm_slot(&self) -> usize {
        self.sys.len().saturating_mul(2)
    }

    fn admin_slot(&self) -> usize {
        self.dispvm_slot().saturating_add(1)
    }

    fn set(&mut self, slot: usize, on: bool) {
        if let Some(w) = self.bits.get_mut(slot / 64) {
            let m = 1u64 << (slot % 64);
            if on {
                *w |= m;
            } else {
                *w &= !m;
            }
        }
    }

    fn has(&self, slot: usize) -> bool {
        self.bits
            .get(slot / 64)
            .is_some_and(|w| w & (1u64 << (slot % 64)) != 0)
    }

    fn name(&mut self, d: u32, on: bool) {
        self.set(d as usize, on);
    }

    fn disposable(&mut self, d: u32, on: bool) {
        self.set(self.sys.len().saturating_add(d as usize), on);
    }

    /// Adds (or removes) what `tok` stands for.
    fn apply(&mut self, tok: &VmToken, on: bool) -> Result<(), Fault> {
        let sys = self.sys;
        let v = tok.value();
        match tok.kind() {
            TokenKind::Wildcard | TokenKind::AnyVm => {
                // @anyvm stands for every qube but the admin VM: leave its
                // bit as it was.
                let keep: Vec<(u32, bool)> = if tok.kind() == TokenKind::AnyVm {
                    sys.admins()
                        .iter()
                        .map(|&d| (d, self.has(d as usize)))
                        .collect()
                } else {
                    Vec::new()
                };
                let full = sys.len() / 64;
                for w in self.bits.iter_mut().take(full) {
                    *w = if on { u64::MAX } else { 0 };
                }
                for d in full * 64..sys.len() {
                    self.set(d, on);
                }
                for (d, was) in keep {
                    self.name(d, was);
                }
                for &d in sys.templates() {
                    self.disposable(d, on);
                }
                self.set(self.dispvm_slot(), on);
            }
            TokenKind::AdminVm => self.set(self.admin_slot(), on),
            TokenKind::Default => {}
            TokenKind::Type => {
                for &d in sys.of_class(v) {
                    self.name(d, on);
                }
            }
            TokenKind::Tag => {
                for &d in sys.tagged(v) {
                    self.name(d, on);
                }
            }
            TokenKind::DispVm => self.set(self.dispvm_slot(), on),
            TokenKind::DispVmName | TokenKind::DispVmUuid => {
                let d = if tok.kind() == TokenKind::DispVmName {
                    sys.index_of(v)
                } else {
                    sys.index_of_uuid(v)
                };
                let d = d.ok_or(Fault)?;
                if sys.at(d).is_some_and(|x| x.template_for_dispvms) {
                    self.disposable(u32::try_from(d).unwrap_or(u32::MAX), on);
                }
            }
            TokenKind::DispVmTag => {
                for &d in sys.tagged(v) {
                    if sys.at(d as usize).is_some_and(|x| x.template_for_dispvms) {
                        self.disposable(d, on);
                    }
                }
            }
            TokenKind::Name | TokenKind::Uuid => {
                let d = if tok.kind() == TokenKind::Name {
                    sys.index_of(v)
                } else {
                    sys.index_of_uuid(v)
                };
                if let Some(d) = d {
                    self.set(d, on);
                }
            }
        }
        Ok(())
    }

    /// The targets as strings, sorted. With `finish`, as an ask list:
    /// `@dispvm` becomes `@dispvm:<default_dispvm>` (or nothing),
    /// `@adminvm` becomes `dom0`, and `source` and internal qubes (also as
    /// `@dispvm:<internal>`) are left out.
    fn names(
        &self,
        source: Option<&str>,
        default_dispvm: Option<&str>,
        finish: bool,
    ) -> Vec<String> {
        let sys = self.sys;
        let n = sys.len();
        let internal = |name: &str| finish && sys.get(name).is_some_and(|d| d.internal);
        let mut out = Vec::new();
        for (w, &word) in self.bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let slot = w * 64 + word.trailing_zeros() as usize;
                word &= word - 1;
                if slot < n {
                    if let Some(d) = sys.at(slot) {
                        out.push(d.name.clone());
                    }
                } else if slot < 2 * n {
                    if let Some(d) = sys.at(slot - n) {
                        out.push(format!("@dispvm:{}", d.name));
                    }
                } else if slot == 2 * n {
                    if !finish {
                        out.push("@dispvm".to_owned());
                    } else if let Some(dd) = default_dispvm {
                        out.push(format!("@dispvm:{dd}"));
                    }
                } else if slot == 2 * n + 1 {
                    out.push(if finish { "dom0" } else { "@adminvm" }.to_owned());
                }
            }
        }
        if finish {
            out.retain(|t| {
                Some(t.as_str()) != source && !internal(t.strip_prefix("@dispvm:").unwrap_or(t))
            });
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn fault(rule: Option<RuleRef>) -> Decision {
    Decision::Deny(Denied {
        reason: DenyReason::EngineFault,
        notify: true,
        rule,
    })
}

/// Whether `target` (an ask choice) may be used with `autostart=no`.
fn may_run_without_autostart(target: &str, sys: &System) -> Result<bool, Fault> {
    if target == "dom0" || target == "@adminvm" {
        return Ok(true);
    }
    if target.starts_with("@dispvm") {
        return Ok(false);
    }
    let d = match target.strip_prefix("uuid:") {
        Some(u) => sys.by_uuid(u),
        None => sys.get(target),
    };
    d.map(Domain::is_running).ok_or(Fault)
}

fn deny(reason: DenyReason, notify: bool, rule: RuleRef) -> Decision {
    Decision::Deny(Denied {
        reason,
        notify,
        rule: Some(rule),
    })
}

fn allow(rule: &Rule, rref: RuleRef, ctx: &Ctx<'_, '_>) -> Decision {
    let act = &rule.action;
    let (target, written): (Target<'_>, &str) = match &act.target {
        None => (ctx.target, ctx.requested),
        Some(t) => {
            let v = t.value();
            match t.kind() {
                TokenKind::Name => match ctx.sys.get(v) {
                    Some(d) => (Target::Domain(d), t.as_str()),
                    None => (Target::Default, "@default"),
                },
                TokenKind::Uuid => match ctx.sys.by_uuid(v) {
                    Some(d) => (Target::Domain(d), t.as_str()),
                    None => (Target::Default, "@default"),
                },
                TokenKind::AdminVm => (Target::Admin(None), t.as_str()),
                TokenKind::DispVm => (Target::DispVm, t.as_str()),
                TokenKind::DispVmName | TokenKind::DispVmUuid => {
                    let d = if t.kind() == TokenKind::DispVmName {
                        ctx.sys.get(v)
                    } else {
                        ctx.sys.by_uuid(v)
                    };
                    match d {
                        Some(d) if d.template_for_dispvms => (Target::DispTemplate(d), t.as_str()),
                        _ => return deny(DenyReason::InvalidDispvmTemplate, true, rref),
                    }
                }
                // Not valid in target=; the parser refuses them.
                _ => (Target::Default, "@default"),
            }
        }
    };
    let (final_target, target_uuid, running): (String, Option<String>, bool) = match target {
        Target::Default => return deny(DenyReason::NoTarget, true, rref),
        Target::DispVm => match ctx.default_dispvm() {
            None => return deny(DenyReason::NoDispvmTemplate, true, rref),
            Some(n) => (
                format!("@dispvm:{n}"),
                ctx.sys
                    .get(n)
                    .and_then(|d| d.uuid.as_deref())
                    .map(|u| format!("@dispvm:uuid:{u}")),
                false,
            ),
        },
        Target::Admin(_) => ("dom0".to_owned(), None, true),
        Target::DispTemplate(d) => (
            written.to_owned(),
            d.uuid.as_deref().map(|u| format!("@dispvm:uuid:{u}")),
            false,
        ),
        Target::Domain(d) => (
            written.to_owned(),
            d.uuid.as_deref().map(|u| format!("uuid:{u}")),
            d.is_running(),
        ),
    };
    if !act.autostart_or_default() && !running {
        return deny(DenyReason::Autostart, act.notify_or_default(), rref);
    }
    if final_target == ctx.source {
        return deny(DenyReason::Loopback, true, rref);
    }
    Decision::Allow(Allowed {
        target: final_target,
        target_uuid,
        user: act.user().map(Into::into),
        autostart: act.autostart_or_default(),
        notify: act.notify_or_default(),
        requested_target: ctx.requested.to_owned(),
        rule: rref,
    })
}
