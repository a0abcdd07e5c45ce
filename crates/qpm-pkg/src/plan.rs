//! The planner: desired state (a manifest) against the actual state (what
//! [`crate::state`] read) gives an ordered, minimal list of steps with their
//! dependencies.
//!
//! Every setting of a qube is a key: `p:NAME` (property), `f:NAME`
//! (feature), `t:NAME` (tag), `fw` (firewall rules, one per line),
//! `v:NAME` (volume size). Values are `Option<String>`: `None` is the
//! default (property), absent (feature, tag).
//!
//! Order: a qube after the qubes it is based on (template, clone source),
//! a setting that names another own qube (`netvm`, `default_dispvm`,
//! `template`) after that qube is configured, the `qpm.applied` record of a
//! qube after all its settings, the policy after every qube (install) and
//! before any removal.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::Error;
use crate::manifest::{Manifest, Qube, QubeClass, QubeRef, settable_property};
use crate::record::{RECORD_FEATURE, Record};
use crate::state::{Actual, Read, Val, created_by_tag, package_tag};

/// What to do when the user changed a setting that the new version changes
/// too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnConflict {
    /// Stop and list the conflicts.
    #[default]
    Fail,
    /// Keep the user's value.
    KeepMine,
    /// Take the package's value.
    TakePackage,
}

/// Planner options.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The management qube's name (ownership: `created-by-<mgmt>`).
    pub mgmt: String,
    /// Take over qubes of the manifest's names that the management qube
    /// created but no package claims.
    pub adopt: bool,
    /// Consent to shut down qubes that must be halted for a change.
    pub shutdown: bool,
    /// User changes the new version also changes.
    pub on_conflict: OnConflict,
    /// Removal: also remove data-bearing qubes.
    pub purge: bool,
    /// Qubes an interrupted run of this package created (from the journal):
    /// adopted without `--adopt`.
    pub created_by_us: BTreeSet<String>,
    /// Qubes an interrupted removal was keeping (from the journal): what
    /// they use is kept too, even once they have left the package.
    pub kept_before: BTreeSet<String>,
}

/// One call (or small group of calls) of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// `admin.vm.Create.<class>`.
    Create {
        /// Class.
        class: String,
        /// Template (AppVM, DispVM).
        template: Option<String>,
        /// Label.
        label: String,
    },
    /// Adds the package tag.
    TagPackage {
        /// The tag.
        tag: String,
    },
    /// Copies a volume from another qube (`CloneFrom` + `CloneTo`).
    CloneVolume {
        /// Source qube.
        from: String,
        /// Volume.
        volume: String,
    },
    /// `property.Set`.
    SetProperty {
        /// Property.
        name: String,
        /// Value.
        value: String,
    },
    /// `property.Reset`.
    ResetProperty {
        /// Property.
        name: String,
    },
    /// `feature.Set`.
    SetFeature {
        /// Feature.
        name: String,
        /// Value.
        value: String,
    },
    /// `feature.Remove`.
    RemoveFeature {
        /// Feature.
        name: String,
    },
    /// `tag.Set`.
    AddTag {
        /// Tag.
        tag: String,
    },
    /// `tag.Remove`.
    RemoveTag {
        /// Tag.
        tag: String,
    },
    /// `firewall.Set`.
    SetFirewall {
        /// Rules, in order.
        rules: Vec<String>,
    },
    /// `volume.Resize`.
    ResizeVolume {
        /// Volume.
        volume: String,
        /// Size in bytes.
        size: u64,
    },
    /// Writes the `qpm.applied` record.
    Record {
        /// Version recorded.
        version: String,
        /// Encoded record.
        #[serde(skip)]
        value: String,
    },
    /// `admin.vm.Shutdown` (wait).
    Shutdown,
    /// `admin.vm.Remove`.
    Remove,
    /// Installs (or replaces) the package's policy file.
    SubmitPolicy {
        /// Bytes.
        bytes: usize,
        /// The text.
        #[serde(skip)]
        text: String,
    },
    /// Removes the package's policy file.
    RemovePolicy,
}

/// A step: an operation on a qube (or on dom0's policy), after `deps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Index in the plan.
    pub id: usize,
    /// The qube it changes (`None`: the policy).
    pub qube: Option<String>,
    /// What.
    #[serde(flatten)]
    pub op: Op,
    /// Steps that must be done first.
    pub deps: Vec<usize>,
}

impl Step {
    /// One line for humans.
    pub fn describe(&self) -> String {
        let q = self.qube.as_deref().unwrap_or("dom0");
        match &self.op {
            Op::Create {
                class,
                template,
                label,
            } => match template {
                Some(t) => format!("create {class} {q} (template {t}, label {label})"),
                None => format!("create {class} {q} (label {label})"),
            },
            Op::TagPackage { tag } => format!("{q}: tag {tag}"),
            Op::CloneVolume { from, volume } => format!("{q}: copy volume {volume} from {from}"),
            Op::SetProperty { name, value } => format!("{q}: {name} = {value:?}"),
            Op::ResetProperty { name } => format!("{q}: {name} reset to default"),
            Op::SetFeature { name, value } => format!("{q}: feature {name} = {value:?}"),
            Op::RemoveFeature { name } => format!("{q}: remove feature {name}"),
            Op::AddTag { tag } => format!("{q}: add tag {tag}"),
            Op::RemoveTag { tag } => format!("{q}: remove tag {tag}"),
            Op::SetFirewall { rules } => format!("{q}: firewall ({} rules)", rules.len()),
            Op::ResizeVolume { volume, size } => format!("{q}: grow {volume} to {size} bytes"),
            Op::Record { version, .. } => format!("{q}: record applied settings ({version})"),
            Op::Shutdown => format!("shut down {q}"),
            Op::Remove => format!("remove {q}"),
            Op::SubmitPolicy { bytes, .. } => format!("install policy ({bytes} bytes)"),
            Op::RemovePolicy => "remove policy".to_owned(),
        }
    }
}

/// A user change kept, or in conflict with the new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Qube.
    pub qube: String,
    /// Setting key.
    pub key: String,
    /// The value now (the user's).
    pub yours: Val,
    /// What the package last applied.
    pub applied: Val,
    /// What the package wants now.
    pub package: Val,
}

/// A qube a removal keeps, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kept {
    /// Qube.
    pub qube: String,
    /// Why.
    pub reason: String,
}

/// What a plan does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// First install (or re-apply of the same version).
    Install,
    /// From another version.
    Upgrade,
    /// Removal.
    Remove,
}

/// An ordered plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Package.
    pub package: String,
    /// Version being applied (removal: the installed one, if known).
    pub version: Option<String>,
    /// Installed version(s) before.
    pub installed: Vec<String>,
    /// What.
    pub action: Action,
    /// Steps in a valid order.
    pub steps: Vec<Step>,
    /// Qubes shut down for a change (with consent).
    pub halt: Vec<String>,
    /// Qubes a removal keeps.
    pub kept: Vec<Kept>,
    /// User changes kept.
    pub user_changes_kept: Vec<Change>,
    /// User changes the new version overrides (`--take-package`).
    pub user_changes_overridden: Vec<Change>,
    /// Upgrade notes, warnings.
    pub notes: Vec<String>,
}

impl Plan {
    fn new(package: &str, version: Option<String>, action: Action) -> Self {
        Self {
            package: package.to_owned(),
            version,
            installed: Vec::new(),
            action,
            steps: Vec::new(),
            halt: Vec::new(),
            kept: Vec::new(),
            user_changes_kept: Vec::new(),
            user_changes_overridden: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn push(&mut self, qube: Option<&str>, op: Op, deps: Vec<usize>) -> usize {
        let id = self.steps.len();
        let mut deps = deps;
        deps.sort_unstable();
        deps.dedup();
        self.steps.push(Step {
            id,
            qube: qube.map(str::to_owned),
            op,
            deps,
        });
        id
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// The settings a manifest wants on one of its qubes.
pub fn desired(q: &Qube) -> BTreeMap<String, Val> {
    let mut s = BTreeMap::new();
    s.insert("p:label".to_owned(), Some(q.label.clone()));
    if let Some(t) = &q.template {
        s.insert("p:template".to_owned(), Some(t.clone()));
    }
    let vm = |r: &QubeRef| match r {
        QubeRef::None => Some(String::new()),
        QubeRef::Default => None,
        QubeRef::Name(n) => Some(n.clone()),
    };
    if let Some(n) = &q.netvm {
        s.insert("p:netvm".to_owned(), vm(n));
    }
    if let Some(n) = &q.default_dispvm {
        s.insert("p:default_dispvm".to_owned(), vm(n));
    }
    if q.disposable_template {
        s.insert("p:template_for_dispvms".to_owned(), Some("True".to_owned()));
    }
    for (k, v) in &q.properties {
        s.insert(format!("p:{k}"), Some(v.to_wire()));
    }
    for (k, v) in &q.features {
        s.insert(format!("f:{k}"), Some(v.clone()));
    }
    for t in &q.tags {
        s.insert(format!("t:{t}"), Some(String::new()));
    }
    if let Some(fw) = &q.firewall {
        let rules: Vec<String> = fw.iter().map(|r| firewall_rule(&r.to_wire())).collect();
        s.insert("fw".to_owned(), Some(rules.join("\n")));
    }
    for (v, size) in &q.volumes {
        s.insert(format!("v:{v}"), Some(size.to_string()));
    }
    s
}

/// A firewall rule as qubesd prints it back (`Rule.api_rule`): its
/// properties in qubesd's order (`action`, `expire`, the destination,
/// `proto`, `specialtarget`, `dstports`, `icmptype`, `comment` last), the
/// destination keyed by its kind (`dst4=ADDR/PREFIX`, `dst6=ADDR/PREFIX`,
/// or `dsthost=NAME`), a single port `N` as `N-N`. Comparing rules in this
/// form makes what the package sets and what qubesd reports comparable.
pub fn firewall_rule(wire: &str) -> String {
    let (main, comment) = match wire.strip_prefix("comment=") {
        Some(c) => ("", Some(c)),
        None => match wire.split_once(" comment=") {
            Some((m, c)) => (m, Some(c)),
            None => (wire, None),
        },
    };
    let mut known: BTreeMap<&str, String> = BTreeMap::new();
    let mut other: Vec<&str> = Vec::new();
    for tok in main.split(' ').filter(|t| !t.is_empty()) {
        match tok.split_once('=') {
            Some(("dsthost" | "dst4" | "dst6" | "dstname", v)) => {
                known.insert("dest", firewall_destination(v));
            }
            Some(("dstports", p)) if !p.contains('-') => {
                known.insert("dstports", format!("dstports={p}-{p}"));
            }
            Some((
                k @ ("action" | "expire" | "proto" | "specialtarget" | "dstports" | "icmptype"),
                _,
            )) => {
                known.insert(k, tok.to_owned());
            }
            _ => other.push(tok),
        }
    }
    other.sort_unstable();
    let order = [
        "action",
        "expire",
        "dest",
        "proto",
        "specialtarget",
        "dstports",
        "icmptype",
    ];
    let mut out: Vec<String> = order.iter().filter_map(|k| known.remove(k)).collect();
    out.extend(other.into_iter().map(str::to_owned));
    if let Some(c) = comment {
        out.push(format!("comment={c}"));
    }
    out.join(" ")
}

fn firewall_destination(v: &str) -> String {
    let (addr, prefix) = match v.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (v, None),
    };
    if let Ok(ip) = addr.parse::<std::net::Ipv4Addr>() {
        format!("dst4={ip}/{}", prefix.unwrap_or("32"))
    } else if let Ok(ip) = addr.parse::<std::net::Ipv6Addr>() {
        format!("dst6={ip}/{}", prefix.unwrap_or("128"))
    } else {
        format!("dsthost={v}")
    }
}

/// Whether changing this key needs the qube halted.
fn needs_halt(key: &str) -> bool {
    match key.strip_prefix("p:") {
        Some("template") => true,
        Some(p) => settable_property(p).is_some_and(|(_, halt)| halt),
        None => false,
    }
}

/// The reads an install/upgrade plan needs first (after `admin.vm.List`).
pub fn first_reads(m: &Manifest) -> BTreeSet<Read> {
    let mut r = BTreeSet::new();
    let names = m.qubes.keys().chain(m.renamed.keys());
    for n in names {
        r.insert(Read::Props(n.clone()));
        r.insert(Read::Tags(n.clone()));
        r.insert(Read::Feature(n.clone(), RECORD_FEATURE.to_owned()));
        if let Some(q) = m.qubes.get(n) {
            for k in q.features.keys() {
                r.insert(Read::Feature(n.clone(), k.clone()));
            }
        }
    }
    r.insert(Read::Policy(m.name.clone()));
    r
}

/// Reads needed after the first ones: features a record names that the
/// manifest no longer sets, and qubes earlier versions had.
pub fn second_reads(m: &Manifest, actual: &Actual, mgmt: &str) -> BTreeSet<Read> {
    let mut r = BTreeSet::new();
    let ptag = package_tag(&m.name);
    let ctag = created_by_tag(mgmt);
    for (name, q) in &actual.qubes {
        if !(q.has_tag(&ptag) && q.has_tag(&ctag)) {
            continue;
        }
        let Some(rec) = q.record() else { continue };
        if rec.package != m.name {
            continue;
        }
        for k in rec.settings.keys() {
            if let Some(f) = k.strip_prefix("f:")
                && !q.features.contains_key(f)
            {
                r.insert(Read::Feature(name.clone(), f.to_owned()));
            }
        }
        for other in &rec.qubes {
            if !actual.qubes.contains_key(other) {
                r.insert(Read::Props(other.clone()));
                r.insert(Read::Tags(other.clone()));
                r.insert(Read::Feature(other.clone(), RECORD_FEATURE.to_owned()));
            }
        }
    }
    r
}

fn owned(actual: &Actual, name: &str, mgmt: &str) -> bool {
    actual
        .qubes
        .get(name)
        .is_some_and(|q| q.has_tag(&created_by_tag(mgmt)))
}

/// Own qubes in an order where each comes after those it is based on or
/// refers to; an error on a cycle.
fn order(m: &Manifest) -> Result<Vec<String>, Error> {
    let refs = |q: &Qube| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        v.extend(q.template.clone());
        v.extend(q.clone.clone());
        v.extend(q.netvm.as_ref().and_then(QubeRef::name).map(str::to_owned));
        v.extend(
            q.default_dispvm
                .as_ref()
                .and_then(QubeRef::name)
                .map(str::to_owned),
        );
        v.retain(|n| m.qubes.contains_key(n) && *n != q.name);
        v
    };
    let mut out = Vec::new();
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    // iterative DFS: (name, children expanded)
    for root in m.qubes.keys() {
        let mut stack = vec![(root.clone(), false)];
        while let Some((n, expanded)) = stack.pop() {
            let st = state.get(n.as_str()).copied().unwrap_or(0);
            if expanded {
                state.insert(m.qubes.get_key_value(&n).map_or("", |(k, _)| k), 2);
                out.push(n);
                continue;
            }
            match st {
                2 => continue,
                1 => {
                    return Err(Error::Plan(format!(
                        "qubes refer to each other in a cycle through `{n}` (template, netvm, default_dispvm)"
                    )));
                }
                _ => {}
            }
            state.insert(m.qubes.get_key_value(&n).map_or("", |(k, _)| k), 1);
            stack.push((n.clone(), true));
            if let Some(q) = m.qubes.get(&n) {
                for c in refs(q) {
                    match state.get(c.as_str()).copied().unwrap_or(0) {
                        0 => stack.push((c, false)),
                        1 => {
                            return Err(Error::Plan(format!(
                                "qubes refer to each other in a cycle through `{c}` (template, netvm, default_dispvm)"
                            )));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Checks made before any change: ownership of every name, base qubes
/// present. Returns the qubes to adopt (tag).
fn check_names(m: &Manifest, actual: &Actual, opts: &Options) -> Result<BTreeSet<String>, Error> {
    let mut problems = Vec::new();
    let mut adopt = BTreeSet::new();
    let ptag = package_tag(&m.name);
    for name in m.qubes.keys() {
        if !actual.exists(name) {
            continue;
        }
        let Some(q) = actual.qubes.get(name) else {
            problems.push(format!("`{name}`: exists but could not be read"));
            continue;
        };
        if !owned(actual, name, &opts.mgmt) {
            problems.push(format!(
                "`{name}`: the name is taken by a qube qpm does not own (not created by `{}`); \
                 rename it, or have dom0 hand it over with `qpm-dom0 adopt {name} --package {}`",
                opts.mgmt, m.name
            ));
            continue;
        }
        let others: Vec<String> = q.packages().into_iter().filter(|p| *p != m.name).collect();
        if !others.is_empty() {
            problems.push(format!(
                "`{name}`: already belongs to package `{}`; two packages cannot claim one qube",
                others.join("`, `")
            ));
            continue;
        }
        if !q.has_tag(&ptag) {
            if opts.adopt || opts.created_by_us.contains(name) {
                adopt.insert(name.clone());
            } else {
                problems.push(format!(
                    "`{name}`: a qube of that name exists (created by `{}`, in no package); \
                     pass --adopt to take it over",
                    opts.mgmt
                ));
            }
        }
    }
    for (ext, fields) in m.external_refs() {
        let base = fields
            .iter()
            .any(|f| f.ends_with(".template") || f.ends_with(".clone"));
        if base && !actual.exists(&ext) {
            problems.push(format!(
                "`{ext}` (named in {}) does not exist or cannot be seen by the management qube; \
                 install that template first",
                fields.join(", ")
            ));
        }
    }
    if problems.is_empty() {
        Ok(adopt)
    } else {
        Err(Error::Refused(problems))
    }
}

/// Plans installing or upgrading `m` (with its joined policy text) over
/// `actual`.
pub fn plan_apply(
    m: &Manifest,
    policy: &str,
    actual: &Actual,
    opts: &Options,
) -> Result<Plan, Error> {
    let adopt = check_names(m, actual, opts)?;
    let ptag = package_tag(&m.name);
    let ctag = created_by_tag(&opts.mgmt);
    let version = m.version.to_string();
    let ours = |n: &str| {
        actual
            .qubes
            .get(n)
            .is_some_and(|q| q.has_tag(&ptag) && q.has_tag(&ctag))
    };
    // installed versions and the qubes of earlier versions
    let mut installed = BTreeSet::new();
    let mut old_qubes = BTreeSet::new();
    for (n, q) in &actual.qubes {
        if !ours(n) {
            continue;
        }
        if let Some(r) = q.record()
            && r.package == m.name
        {
            installed.insert(r.version.clone());
            old_qubes.extend(r.qubes.iter().cloned());
        }
        old_qubes.insert(n.clone());
    }
    let upgrade = installed.iter().any(|v| *v != version);
    let mut plan = Plan::new(
        &m.name,
        Some(version.clone()),
        if upgrade {
            Action::Upgrade
        } else {
            Action::Install
        },
    );
    plan.installed = installed.into_iter().collect();
    if upgrade && let Some(n) = &m.upgrade_notes {
        plan.notes.push(n.trim().to_owned());
    }
    let mut conflicts = Vec::new();
    let mut must_halt = Vec::new();
    let mut ready: BTreeMap<String, usize> = BTreeMap::new();
    let mut records = Vec::new();
    let qube_names: Vec<String> = m.qubes.keys().cloned().collect();
    let renamed_to: BTreeMap<&str, &str> = m
        .renamed
        .iter()
        .map(|(a, b)| (b.as_str(), a.as_str()))
        .collect();

    for name in order(m)? {
        let Some(q) = m.qubes.get(&name) else {
            continue;
        };
        let exists = actual.exists(&name);
        let state = actual.qubes.get(&name);
        let record = state
            .and_then(|s| s.record())
            .filter(|r| r.package == m.name);
        let running = exists && actual.power(&name) != "Halted";
        let dep_of = |n: &str, ready: &BTreeMap<String, usize>| ready.get(n).copied();
        let mut mine: Vec<usize> = Vec::new();
        let mut base: Vec<usize> = Vec::new();
        if exists {
            if let Some(st) = state {
                let class = st.prop("klass");
                if !class.is_empty() && class != q.class.as_str() {
                    return Err(Error::Refused(vec![format!(
                        "`{name}` is a {class}, the package wants a {}; changing the class is not supported",
                        q.class
                    )]));
                }
            }
            if adopt.contains(&name) {
                let t = plan.push(Some(&name), Op::TagPackage { tag: ptag.clone() }, vec![]);
                mine.push(t);
                base.push(t);
            }
        } else {
            let mut deps = Vec::new();
            for r in q.template.iter().chain(q.clone.iter()) {
                deps.extend(dep_of(r, &ready));
            }
            let template = match q.class {
                QubeClass::AppVM | QubeClass::DispVM => q.template.clone(),
                _ => None,
            };
            let c = plan.push(
                Some(&name),
                Op::Create {
                    class: q.class.as_str().to_owned(),
                    template,
                    label: q.label.clone(),
                },
                deps,
            );
            let t = plan.push(Some(&name), Op::TagPackage { tag: ptag.clone() }, vec![c]);
            mine.extend([c, t]);
            base.push(t);
        }
        // a qube created by an interrupted run has no record yet: its
        // volumes are copied again (the record is written last)
        let incomplete = exists
            && record.is_none()
            && (opts.created_by_us.contains(&name) || state.is_some_and(|s| s.has_tag(&ptag)));
        if !exists || incomplete {
            let copy_from = match q.class {
                QubeClass::TemplateVM | QubeClass::StandaloneVM => {
                    q.clone.clone().map(|s| (s, "root"))
                }
                _ => None,
            };
            let renamed_from = renamed_to
                .get(name.as_str())
                .filter(|old| ours(old))
                .map(|old| ((*old).to_owned(), "private"));
            for (src, volume) in copy_from.into_iter().chain(renamed_from) {
                let mut deps = base.clone();
                deps.extend(dep_of(&src, &ready));
                if volume == "private" && actual.power(&src) != "Halted" {
                    if opts.shutdown {
                        let s = plan.push(Some(&src), Op::Shutdown, vec![]);
                        plan.halt.push(src.clone());
                        deps.push(s);
                    } else {
                        must_halt.push(src.clone());
                    }
                }
                let cl = plan.push(
                    Some(&name),
                    Op::CloneVolume {
                        from: src,
                        volume: volume.to_owned(),
                    },
                    deps,
                );
                mine.push(cl);
                base = vec![cl];
            }
        }
        // settings
        let want = desired(q);
        let mut keys: BTreeSet<&String> = want.keys().collect();
        if let Some(r) = &record {
            keys.extend(r.settings.keys());
        }
        let mut shutdown_step: Option<usize> = None;
        for key in keys {
            let w = want.get(key);
            let rec = record.as_ref().and_then(|r| r.settings.get(key));
            let act: Val = if exists {
                match state.and_then(|s| s.value(key)) {
                    Some(v) => v,
                    // not read (firewall, volumes): as last applied
                    None => rec.cloned().flatten(),
                }
            } else {
                // a new qube: label and template come with the creation
                match key.as_str() {
                    "p:label" => Some(q.label.clone()),
                    "p:template" => q.template.clone(),
                    _ => None,
                }
            };
            let target: Val = match (w, rec) {
                (Some(w), _) if *w == act => continue,
                (Some(w), None) => w.clone(),
                (Some(w), Some(r)) => {
                    if act == *r {
                        w.clone()
                    } else {
                        let ch = Change {
                            qube: name.clone(),
                            key: key.clone(),
                            yours: act.clone(),
                            applied: r.clone(),
                            package: w.clone(),
                        };
                        if w == r {
                            plan.user_changes_kept.push(ch);
                            continue;
                        }
                        match opts.on_conflict {
                            OnConflict::KeepMine => {
                                plan.user_changes_kept.push(ch);
                                continue;
                            }
                            OnConflict::TakePackage => {
                                plan.user_changes_overridden.push(ch);
                                w.clone()
                            }
                            OnConflict::Fail => {
                                conflicts.push(ch);
                                continue;
                            }
                        }
                    }
                }
                (None, Some(r)) => {
                    if act == *r {
                        None
                    } else {
                        plan.user_changes_kept.push(Change {
                            qube: name.clone(),
                            key: key.clone(),
                            yours: act.clone(),
                            applied: r.clone(),
                            package: None,
                        });
                        continue;
                    }
                }
                (None, None) => continue,
            };
            let Some(op) = op_for(key, target, rec.cloned().flatten().as_deref()) else {
                continue;
            };
            let mut deps = base.clone();
            if let Some(t) = key
                .strip_prefix("p:")
                .filter(|p| matches!(*p, "netvm" | "default_dispvm" | "template"))
                .and_then(|_| want.get(key).cloned().flatten())
            {
                deps.extend(dep_of(&t, &ready));
            }
            if running && needs_halt(key) {
                if opts.shutdown {
                    let s = *shutdown_step.get_or_insert_with(|| {
                        plan.halt.push(name.clone());
                        plan.push(Some(&name), Op::Shutdown, base.clone())
                    });
                    deps.push(s);
                } else {
                    must_halt.push(format!("{name} ({})", &key[2..]));
                    continue;
                }
            }
            let id = plan.push(Some(&name), op, deps);
            mine.push(id);
        }
        let rec_new = Record {
            qube: name.clone(),
            package: m.name.clone(),
            version: version.clone(),
            qubes: qube_names.clone(),
            data: q.data,
            settings: want.clone(),
        };
        if !mine.is_empty() || record.as_ref() != Some(&rec_new) {
            let id = plan.push(
                Some(&name),
                Op::Record {
                    version: version.clone(),
                    value: rec_new.encode(),
                },
                mine,
            );
            ready.insert(name.clone(), id);
            records.push(id);
        }
    }
    if !conflicts.is_empty() {
        return Err(Error::Conflicts(conflicts));
    }
    // policy
    let policy_now = actual.policy.clone().flatten();
    let mut policy_step = None;
    if policy.is_empty() {
        if policy_now.is_some() {
            policy_step = Some(plan.push(None, Op::RemovePolicy, records.clone()));
        }
    } else if policy_now.as_deref() != Some(policy) {
        policy_step = Some(plan.push(
            None,
            Op::SubmitPolicy {
                bytes: policy.len(),
                text: policy.to_owned(),
            },
            records.clone(),
        ));
    }
    // qubes earlier versions had
    for old in &old_qubes {
        if m.qubes.contains_key(old) || !ours(old) {
            continue;
        }
        let st = actual.qubes.get(old);
        let data = st.and_then(|s| s.record()).is_some_and(|r| r.data);
        let renamed = m.renamed.contains_key(old);
        let mut deps = records.clone();
        deps.extend(policy_step);
        if data && !renamed && !opts.purge {
            plan.kept.push(Kept {
                qube: old.clone(),
                reason: "holds data and is no longer part of the package; kept out of the package (remove it yourself or upgrade with --purge)".into(),
            });
            let f = plan.push(
                Some(old),
                Op::RemoveFeature {
                    name: RECORD_FEATURE.to_owned(),
                },
                deps,
            );
            plan.push(Some(old), Op::RemoveTag { tag: ptag.clone() }, vec![f]);
            continue;
        }
        if actual.power(old) != "Halted" {
            if opts.shutdown {
                // shut down once: it may already be for a volume copy
                let existing = plan
                    .steps
                    .iter()
                    .find(|s| s.qube.as_deref() == Some(old.as_str()) && s.op == Op::Shutdown)
                    .map(|s| s.id);
                let s = match existing {
                    Some(s) => s,
                    None => {
                        plan.halt.push(old.clone());
                        plan.push(Some(old), Op::Shutdown, deps.clone())
                    }
                };
                deps.push(s);
            } else {
                must_halt.push(old.clone());
                continue;
            }
        }
        plan.push(Some(old), Op::Remove, deps);
    }
    if !must_halt.is_empty() {
        must_halt.sort();
        must_halt.dedup();
        return Err(Error::MustHalt(must_halt));
    }
    if !actual.gatekeeper && !plan.steps.is_empty() {
        plan.notes.push(
            "the dom0 gatekeeper is not installed: the policy goes through policy.Replace".into(),
        );
    }
    Ok(plan)
}

fn op_for(key: &str, target: Val, applied: Option<&str>) -> Option<Op> {
    if let Some(p) = key.strip_prefix("p:") {
        return Some(match target {
            Some(value) => Op::SetProperty {
                name: p.to_owned(),
                value,
            },
            None => Op::ResetProperty { name: p.to_owned() },
        });
    }
    if let Some(f) = key.strip_prefix("f:") {
        return Some(match target {
            Some(value) => Op::SetFeature {
                name: f.to_owned(),
                value,
            },
            None => Op::RemoveFeature { name: f.to_owned() },
        });
    }
    if let Some(t) = key.strip_prefix("t:") {
        return Some(match target {
            Some(_) => Op::AddTag { tag: t.to_owned() },
            None => Op::RemoveTag { tag: t.to_owned() },
        });
    }
    if key == "fw" {
        let rules = target
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default();
        return Some(Op::SetFirewall { rules });
    }
    if let Some(v) = key.strip_prefix("v:") {
        let size: u64 = target?.parse().ok()?;
        // volumes only grow
        if applied
            .and_then(|a| a.parse::<u64>().ok())
            .is_some_and(|a| a >= size)
        {
            return None;
        }
        return Some(Op::ResizeVolume {
            volume: v.to_owned(),
            size,
        });
    }
    None
}

/// An empty removal plan (a removal interrupted after its last change).
pub fn plan_remove_nothing(package: &str) -> Plan {
    Plan::new(package, None, Action::Remove)
}

/// Plans removing `package` (whose qubes `actual` read, with every listed
/// qube's tags). `refs` are (qube, property) pairs outside the package
/// that name one of its qubes.
pub fn plan_remove(
    package: &str,
    actual: &Actual,
    opts: &Options,
    outside_refs: &[(String, String, String)],
) -> Result<Plan, Error> {
    let ptag = package_tag(package);
    let ctag = created_by_tag(&opts.mgmt);
    let qubes: Vec<&String> = actual
        .qubes
        .iter()
        .filter(|(_, q)| q.has_tag(&ptag) && q.has_tag(&ctag))
        .map(|(n, _)| n)
        .collect();
    let versions: BTreeSet<String> = qubes
        .iter()
        .filter_map(|n| actual.qubes.get(*n).and_then(|q| q.record()))
        .map(|r| r.version)
        .collect();
    let mut plan = Plan::new(
        package,
        versions.iter().next_back().cloned(),
        Action::Remove,
    );
    plan.installed = versions.into_iter().collect();
    let policy_now = actual.policy.clone().flatten();
    if qubes.is_empty() && policy_now.is_none() {
        return Err(Error::NotInstalled(package.to_owned()));
    }
    // what each qube refers to, among the package's
    let set: BTreeSet<&str> = qubes.iter().map(|s| s.as_str()).collect();
    let refs_of = |n: &str| -> Vec<String> {
        let Some(st) = actual.qubes.get(n) else {
            return vec![];
        };
        ["template", "netvm", "default_dispvm"]
            .iter()
            .map(|p| st.prop(p).to_owned())
            .filter(|v| set.contains(v.as_str()) && v != n)
            .collect()
    };
    // kept: data qubes and everything they refer to
    let mut kept: BTreeMap<String, String> = BTreeMap::new();
    if !opts.purge {
        for n in &qubes {
            let st = actual.qubes.get(*n);
            let data = match st.and_then(|s| s.record()) {
                Some(r) => r.data,
                None => {
                    let class = st.map_or("", |s| s.prop("klass"));
                    let dvm = st.is_some_and(|s| s.prop("template_for_dispvms") == "True");
                    matches!(class, "AppVM" | "StandaloneVM") && !dvm
                }
            };
            if data {
                kept.insert(
                    (*n).clone(),
                    "holds user data (use --purge to remove it)".into(),
                );
            }
        }
        let mut todo: Vec<String> = kept.keys().cloned().collect();
        todo.extend(opts.kept_before.iter().cloned());
        while let Some(n) = todo.pop() {
            for r in refs_of(&n) {
                if !kept.contains_key(&r) {
                    kept.insert(r.clone(), format!("used by kept qube {n}"));
                    todo.push(r);
                }
            }
        }
    }
    // blockers outside the package
    let blockers: Vec<String> = outside_refs
        .iter()
        .filter(|(_, _, target)| set.contains(target.as_str()) && !kept.contains_key(target))
        .map(|(who, prop, target)| {
            if who == "dom0" {
                format!(
                    "the global `{prop}` is `{target}`: change it in dom0 first (qubes-prefs {prop} ...)"
                )
            } else {
                format!(
                    "`{who}`.{prop} is `{target}`: point it elsewhere first (qvm-prefs {who} {prop} ...)"
                )
            }
        })
        .collect();
    if !blockers.is_empty() {
        return Err(Error::Blocked(blockers));
    }
    let mut must_halt = Vec::new();
    let pol = policy_now.map(|_| plan.push(None, Op::RemovePolicy, vec![]));
    let mut removed: BTreeMap<String, usize> = BTreeMap::new();
    // remove referrers before what they refer to: repeat until stable
    let mut pending: Vec<String> = qubes
        .iter()
        .filter(|n| !kept.contains_key(**n))
        .map(|n| (*n).clone())
        .collect();
    let mut guard = 0;
    while !pending.is_empty() && guard <= qubes.len() + 1 {
        guard += 1;
        let mut next = Vec::new();
        for n in pending {
            // n can go once every pending qube referring to n is scheduled
            let referrers: Vec<&String> = qubes
                .iter()
                .filter(|o| !kept.contains_key(**o) && refs_of(o).contains(&n))
                .copied()
                .collect();
            if referrers.iter().any(|r| !removed.contains_key(*r)) {
                next.push(n);
                continue;
            }
            let mut deps: Vec<usize> = referrers
                .iter()
                .filter_map(|r| removed.get(*r).copied())
                .collect();
            deps.extend(pol);
            if actual.power(&n) != "Halted" {
                if opts.shutdown {
                    let s = plan.push(Some(&n), Op::Shutdown, deps.clone());
                    plan.halt.push(n.clone());
                    deps.push(s);
                } else {
                    must_halt.push(n.clone());
                }
            }
            let id = plan.push(Some(&n), Op::Remove, deps);
            removed.insert(n, id);
        }
        pending = next;
    }
    if !pending.is_empty() {
        return Err(Error::Plan(format!(
            "qubes of `{package}` refer to each other in a cycle: {}",
            pending.join(", ")
        )));
    }
    for (n, why) in &kept {
        let mut deps: Vec<usize> = pol.into_iter().collect();
        if actual
            .qubes
            .get(n)
            .is_some_and(|q| q.features.get(RECORD_FEATURE).is_some_and(Option::is_some))
        {
            let f = plan.push(
                Some(n),
                Op::RemoveFeature {
                    name: RECORD_FEATURE.to_owned(),
                },
                deps.clone(),
            );
            deps = vec![f];
        }
        plan.push(Some(n), Op::RemoveTag { tag: ptag.clone() }, deps);
        plan.kept.push(Kept {
            qube: n.clone(),
            reason: why.clone(),
        });
    }
    if !must_halt.is_empty() {
        must_halt.sort();
        must_halt.dedup();
        return Err(Error::MustHalt(must_halt));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests;
