//! Planner tests on a fake state (no Admin API).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use qpm_admin::{PropType, Property, QubeInfo};

use super::*;
use crate::state::QubeState;

fn example(app: &str, version: &str) -> (Manifest, String) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(app)
        .join(version);
    let m = crate::manifest::load_dir(&dir).unwrap();
    let mut policy = String::new();
    for f in &m.policy_files {
        policy.push_str(&std::fs::read_to_string(dir.join(f)).unwrap());
    }
    (m, policy)
}

fn opts() -> Options {
    Options {
        mgmt: "mgmt".into(),
        ..Options::default()
    }
}

fn listed(actual: &mut Actual, name: &str, class: &str, state: &str) {
    actual.listed.insert(
        name.into(),
        QubeInfo {
            name: name.into(),
            class: class.into(),
            state: state.into(),
            uuid: None,
        },
    );
}

/// A machine with the base templates only.
fn fresh() -> Actual {
    let mut a = Actual::default();
    listed(&mut a, "dom0", "AdminVM", "Running");
    for t in ["debian-13-xfce", "fedora-42-xfce"] {
        listed(&mut a, t, "TemplateVM", "Halted");
    }
    a.policy = Some(None);
    a.gatekeeper = true;
    a
}

fn prop(v: &str) -> Property {
    Property {
        is_default: false,
        ty: PropType::Str,
        value: v.into(),
    }
}

/// The state right after `m` was applied.
fn applied(m: &Manifest, policy: &str) -> Actual {
    let mut a = fresh();
    for (name, q) in &m.qubes {
        listed(&mut a, name, q.class.as_str(), "Halted");
        let want = desired(q);
        let mut props: BTreeMap<String, Property> = BTreeMap::new();
        props.insert(
            "klass".into(),
            Property {
                is_default: true,
                ..prop(q.class.as_str())
            },
        );
        let mut tags: BTreeSet<String> =
            ["created-by-mgmt".to_owned(), format!("qpm-pkg-{}", m.name)].into();
        let mut features = BTreeMap::new();
        for (k, v) in &want {
            if let Some(p) = k.strip_prefix("p:") {
                props.insert(p.into(), prop(v.as_deref().unwrap_or("")));
            } else if let Some(f) = k.strip_prefix("f:") {
                features.insert(f.to_owned(), v.clone());
            } else if let Some(t) = k.strip_prefix("t:") {
                tags.insert(t.to_owned());
            }
        }
        let rec = Record {
            qube: name.clone(),
            package: m.name.clone(),
            version: m.version.to_string(),
            qubes: m.qubes.keys().cloned().collect(),
            data: q.data,
            settings: want,
        };
        features.insert(RECORD_FEATURE.to_owned(), Some(rec.encode()));
        a.qubes.insert(
            name.clone(),
            QubeState {
                name: Some(name.clone()),
                props: Some(props),
                tags: Some(tags),
                features,
            },
        );
    }
    a.policy = Some(Some(policy.to_owned()));
    a
}

fn find(p: &Plan, qube: &str, pred: impl Fn(&Op) -> bool) -> usize {
    p.steps
        .iter()
        .find(|s| s.qube.as_deref() == Some(qube) && pred(&s.op))
        .unwrap_or_else(|| panic!("no such step on {qube}"))
        .id
}

/// Whether `a` must run before `b` (through dependencies).
fn before(p: &Plan, a: usize, b: usize) -> bool {
    let mut todo = vec![b];
    let mut seen = BTreeSet::new();
    while let Some(x) = todo.pop() {
        for &d in &p.steps[x].deps {
            if d == a {
                return true;
            }
            if seen.insert(d) {
                todo.push(d);
            }
        }
    }
    false
}

#[test]
fn fresh_install_orders_templates_netvms_and_policy() {
    let (m, policy) = example("securedrop-ws", "1.0.0");
    let p = plan_apply(&m, &policy, &fresh(), &opts()).unwrap();
    assert_eq!(p.action, Action::Install);
    // every dependency points backwards: the step list is a valid order
    for s in &p.steps {
        assert!(s.deps.iter().all(|d| *d < s.id), "{s:?}");
    }
    let creates = p
        .steps
        .iter()
        .filter(|s| matches!(s.op, Op::Create { .. }))
        .count();
    assert_eq!(creates, m.qubes.len());
    let is_create = |o: &Op| matches!(o, Op::Create { .. });
    let is_record = |o: &Op| matches!(o, Op::Record { .. });
    // templates before the qubes based on them
    assert!(before(
        &p,
        find(&p, "sd-base", is_record),
        find(&p, "sd-small", is_create)
    ));
    assert!(before(
        &p,
        find(&p, "sd-small", is_record),
        find(&p, "sd-app", is_create)
    ));
    // cloned templates copy their source's root volume
    let clone = find(
        &p,
        "sd-small",
        |o| matches!(o, Op::CloneVolume { from, .. } if from == "sd-base"),
    );
    assert!(before(&p, find(&p, "sd-small", is_create), clone));
    // netvm after the netvm is configured (provides_network)
    let netvm = find(
        &p,
        "sd-proxy",
        |o| matches!(o, Op::SetProperty { name, .. } if name == "netvm"),
    );
    assert!(before(
        &p,
        find(
            &p,
            "sd-whonix",
            |o| matches!(o, Op::SetProperty { name, .. } if name == "provides_network")
        ),
        netvm
    ));
    // a named disposable after its disposable template is one
    let dvm = find(
        &p,
        "sd-devices-dvm",
        |o| matches!(o, Op::SetProperty { name, .. } if name == "template_for_dispvms"),
    );
    assert!(before(&p, dvm, find(&p, "sd-devices", is_create)));
    // the package tag right after each creation, the record after everything
    for q in m.qubes.keys() {
        let tag = find(&p, q, |o| matches!(o, Op::TagPackage { .. }));
        assert!(before(&p, find(&p, q, is_create), tag));
        let rec = find(&p, q, is_record);
        for s in p
            .steps
            .iter()
            .filter(|s| s.qube.as_deref() == Some(q) && s.id != rec)
        {
            assert!(before(&p, s.id, rec), "{s:?}");
        }
    }
    // policy last, after every record
    let pol = p.steps.last().unwrap();
    assert!(matches!(pol.op, Op::SubmitPolicy { .. }));
    for q in m.qubes.keys() {
        assert!(before(&p, find(&p, q, is_record), pol.id));
    }
}

#[test]
fn applied_state_plans_nothing() {
    for app in ["split-browser", "securedrop-ws", "dangerzone"] {
        let (m, policy) = example(app, "1.0.0");
        let p = plan_apply(&m, &policy, &applied(&m, &policy), &opts()).unwrap();
        assert!(p.is_empty(), "{app}: {:?}", p.steps);
        assert!(p.user_changes_kept.is_empty());
    }
}

#[test]
fn policy_change_alone_is_one_step() {
    let (m, policy) = example("dangerzone", "1.0.0");
    let mut a = applied(&m, &policy);
    a.policy = Some(Some("# edited\n".into()));
    let p = plan_apply(&m, &policy, &a, &opts()).unwrap();
    assert_eq!(p.steps.len(), 1);
    assert!(matches!(p.steps[0].op, Op::SubmitPolicy { .. }));
}

fn set_prop(a: &mut Actual, q: &str, name: &str, v: &str) {
    a.qubes
        .get_mut(q)
        .unwrap()
        .props
        .as_mut()
        .unwrap()
        .insert(name.into(), prop(v));
}

#[test]
fn user_changes_kept_conflicts_stop_or_follow_the_flag() {
    let (m1, pol1) = example("securedrop-ws", "1.0.0");
    let (m2, pol2) = example("securedrop-ws", "2.0.0");
    let mut a = applied(&m1, &pol1);
    set_prop(&mut a, "sd-log", "autostart", "False");
    set_prop(&mut a, "sd-proxy", "netvm", "");
    // same version: both kept, nothing to do
    let p = plan_apply(&m1, &pol1, &a, &opts()).unwrap();
    assert!(p.is_empty(), "{:?}", p.steps);
    assert_eq!(p.user_changes_kept.len(), 2);
    // 2.0.0 changes sd-proxy's netvm too: conflict
    match plan_apply(&m2, &pol2, &a, &opts()) {
        Err(Error::Conflicts(c)) => {
            assert_eq!(c.len(), 1);
            assert_eq!(
                (c[0].qube.as_str(), c[0].key.as_str()),
                ("sd-proxy", "p:netvm")
            );
            assert_eq!(c[0].package.as_deref(), Some("sd-tor"));
        }
        other => panic!("{other:?}"),
    }
    let keep = Options {
        on_conflict: OnConflict::KeepMine,
        ..opts()
    };
    let p = plan_apply(&m2, &pol2, &a, &keep).unwrap();
    assert_eq!(p.action, Action::Upgrade);
    assert!(
        !p.steps.iter().any(|s| s.qube.as_deref() == Some("sd-proxy")
            && matches!(&s.op, Op::SetProperty { name, .. } if name == "netvm"))
    );
    let take = Options {
        on_conflict: OnConflict::TakePackage,
        ..opts()
    };
    let p = plan_apply(&m2, &pol2, &a, &take).unwrap();
    find(
        &p,
        "sd-proxy",
        |o| matches!(o, Op::SetProperty { name, value } if name == "netvm" && value == "sd-tor"),
    );
    // sd-log's autostart is not changed by 2.0.0: still kept
    assert!(!p.steps.iter().any(|s| s.qube.as_deref() == Some("sd-log")
        && matches!(&s.op, Op::SetProperty { name, .. } if name == "autostart")));
    // the renamed qube: data copied, old one removed after the new policy
    let copy = find(
        &p,
        "sd-tor",
        |o| matches!(o, Op::CloneVolume { from, volume } if from == "sd-whonix" && volume == "private"),
    );
    let rm = find(&p, "sd-whonix", |o| matches!(o, Op::Remove));
    let pol = p
        .steps
        .iter()
        .find(|s| matches!(s.op, Op::SubmitPolicy { .. }))
        .unwrap()
        .id;
    assert!(before(&p, copy, rm) && before(&p, pol, rm));
}

#[test]
fn ownership_and_bases_are_checked_first() {
    let (m, policy) = example("split-browser", "1.0.0");
    // a template missing
    let mut a = fresh();
    a.listed.remove("debian-13-xfce");
    let e = plan_apply(&m, &policy, &a, &opts())
        .unwrap_err()
        .to_string();
    assert!(e.contains("`debian-13-xfce`"), "{e}");
    // a qube of that name owned by someone else / another package / nobody
    for (tags, needle) in [
        (vec!["created-by-dom0"], "does not own"),
        (vec!["created-by-mgmt", "qpm-pkg-other"], "package `other`"),
        (vec!["created-by-mgmt"], "--adopt"),
    ] {
        let mut a = fresh();
        listed(&mut a, "sb-dvm", "AppVM", "Halted");
        a.qubes.insert(
            "sb-dvm".into(),
            QubeState {
                name: Some("sb-dvm".into()),
                props: Some(BTreeMap::new()),
                tags: Some(tags.iter().map(|t| (*t).to_owned()).collect()),
                features: BTreeMap::new(),
            },
        );
        let e = plan_apply(&m, &policy, &a, &opts())
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e}");
        if needle == "--adopt" {
            let adopt = Options {
                adopt: true,
                ..opts()
            };
            let p = plan_apply(&m, &policy, &a, &adopt).unwrap();
            find(&p, "sb-dvm", |o| matches!(o, Op::TagPackage { .. }));
            assert!(
                !p.steps
                    .iter()
                    .any(|s| s.qube.as_deref() == Some("sb-dvm")
                        && matches!(s.op, Op::Create { .. }))
            );
        }
    }
}

#[test]
fn halt_needed_qubes_are_named_or_shut_down_with_consent() {
    let (m, policy) = example("securedrop-ws", "1.0.0");
    let mut a = applied(&m, &policy);
    // sd-app runs, and its template was changed: changing it back needs a halt
    listed(&mut a, "sd-app", "AppVM", "Running");
    set_prop(&mut a, "sd-app", "template", "sd-large");
    let mut rec = a.qubes["sd-app"].record().unwrap();
    rec.settings
        .insert("p:template".into(), Some("sd-large".into()));
    a.qubes
        .get_mut("sd-app")
        .unwrap()
        .features
        .insert(RECORD_FEATURE.into(), Some(rec.encode()));
    match plan_apply(&m, &policy, &a, &opts()) {
        Err(Error::MustHalt(q)) => assert_eq!(q, ["sd-app (template)"]),
        other => panic!("{other:?}"),
    }
    let o = Options {
        shutdown: true,
        ..opts()
    };
    let p = plan_apply(&m, &policy, &a, &o).unwrap();
    assert_eq!(p.halt, ["sd-app"]);
    let stop = find(&p, "sd-app", |o| matches!(o, Op::Shutdown));
    let set = find(
        &p,
        "sd-app",
        |o| matches!(o, Op::SetProperty { name, .. } if name == "template"),
    );
    assert!(before(&p, stop, set));
}

#[test]
fn removal_order_and_what_is_kept() {
    let (m, policy) = example("securedrop-ws", "1.0.0");
    let a = applied(&m, &policy);
    let o = Options {
        purge: true,
        ..opts()
    };
    let p = plan_remove("securedrop-ws", &a, &o, &[]).unwrap();
    assert!(matches!(p.steps[0].op, Op::RemovePolicy));
    let rm = |q: &str| find(&p, q, |o| matches!(o, Op::Remove));
    assert!(before(&p, p.steps[0].id, rm("sd-base")));
    assert!(before(&p, rm("sd-app"), rm("sd-small")));
    assert!(before(&p, rm("sd-proxy"), rm("sd-whonix")));
    assert!(before(&p, rm("sd-devices"), rm("sd-devices-dvm")));
    assert!(before(&p, rm("sd-app"), rm("sd-viewer")));
    assert_eq!(p.steps.len(), 1 + m.qubes.len());
    // without --purge: data qubes and what they use stay, untagged
    let p = plan_remove("securedrop-ws", &a, &opts(), &[]).unwrap();
    let kept: BTreeSet<&str> = p.kept.iter().map(|k| k.qube.as_str()).collect();
    for q in [
        "sd-app",
        "sd-gpg",
        "sd-log",
        "sd-small",
        "sd-viewer",
        "sd-large",
    ] {
        assert!(kept.contains(q), "{q}: {kept:?}");
        find(&p, q, |o| matches!(o, Op::RemoveTag { .. }));
    }
    for q in ["sd-proxy", "sd-whonix", "sd-devices", "sd-devices-dvm"] {
        assert!(!kept.contains(q));
        rm(q);
    }
    // something outside the package uses one of its qubes: refused
    let refs = [(
        "work".to_owned(),
        "netvm".to_owned(),
        "sd-whonix".to_owned(),
    )];
    let e = plan_remove("securedrop-ws", &a, &o, &refs)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`work`.netvm"), "{e}");
    // not installed
    assert!(matches!(
        plan_remove("nothing", &fresh(), &o, &[]),
        Err(Error::NotInstalled(_))
    ));
}

#[test]
fn a_copied_record_does_not_count() {
    let (m, policy) = example("securedrop-ws", "1.0.0");
    let mut a = applied(&m, &policy);
    // sd-devices carries its disposable template's record
    let dvm_rec = a.qubes["sd-devices-dvm"].features[RECORD_FEATURE].clone();
    a.qubes
        .get_mut("sd-devices")
        .unwrap()
        .features
        .insert(RECORD_FEATURE.into(), dvm_rec);
    assert!(a.qubes["sd-devices"].record().is_none());
    let p = plan_apply(&m, &policy, &a, &opts()).unwrap();
    assert_eq!(p.steps.len(), 1, "{:?}", p.steps);
    find(&p, "sd-devices", |o| matches!(o, Op::Record { .. }));
}

#[test]
fn cycles_through_references_are_refused() {
    let text = r#"
[package]
name = "c"
version = "1.0.0"
summary = "s"
[qubes.a]
class = "AppVM"
template = "debian-13-xfce"
label = "red"
disposable_template = true
default_dispvm = "b"
[qubes.b]
class = "AppVM"
template = "debian-13-xfce"
label = "red"
disposable_template = true
default_dispvm = "a"
"#;
    let m = crate::manifest::parse("qpm.toml".as_ref(), text).unwrap();
    let e = plan_apply(&m, "", &fresh(), &opts())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cycle"), "{e}");
}

#[test]
fn firewall_rules_compare_in_qubesds_form() {
    // What the package sets and what qubesd prints back for it.
    for (ours, qubesd) in [
        (
            "action=accept proto=tcp dsthost=example.onion dstports=80",
            "action=accept dsthost=example.onion proto=tcp dstports=80-80",
        ),
        (
            "action=accept proto=tcp dsthost=1.2.3.4 dstports=443",
            "action=accept dst4=1.2.3.4/32 proto=tcp dstports=443-443",
        ),
        (
            "action=drop dsthost=10.0.0.0/8",
            "action=drop dst4=10.0.0.0/8",
        ),
        (
            "action=accept dsthost=fd00::1",
            "action=accept dst6=fd00::1/128",
        ),
        (
            "action=accept specialtarget=dns",
            "action=accept specialtarget=dns",
        ),
        (
            "action=accept proto=icmp icmptype=8 comment=ping from here",
            "action=accept proto=icmp icmptype=8 comment=ping from here",
        ),
        ("action=drop", "action=drop"),
    ] {
        assert_eq!(firewall_rule(ours), firewall_rule(qubesd), "{ours}");
        assert_eq!(
            firewall_rule(qubesd),
            qubesd,
            "qubesd's form is a fixed point"
        );
    }
    assert_ne!(
        firewall_rule("action=accept dsthost=1.2.3.4"),
        firewall_rule("action=accept dsthost=1.2.3.5")
    );
}
