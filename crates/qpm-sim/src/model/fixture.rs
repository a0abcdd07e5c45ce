//! Building a system from a conformance fixture (the schema of
//! `conformance/admin/fixture.json`), and the default small Qubes install.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::lifecycle::{self, NewQube, PRIVATE_IMG_SIZE, ROOT_IMG_SIZE};
use super::schema::{PropType, VmClass};
use super::system::{Label, Pool, PowerState, Qube, StaticProp, System, Volume};
use super::values::Val;
use super::{ApiResult, ops};

#[derive(Debug, Deserialize)]
struct FixtureProp {
    name: String,
    default: bool,
    #[serde(rename = "type")]
    ty: String,
    value: String,
}

#[derive(Debug, Deserialize)]
struct FixtureLabel {
    name: String,
    index: u32,
    color: String,
}

#[derive(Debug, Deserialize)]
struct FixtureQube {
    name: String,
    class: String,
    uuid: String,
    #[serde(default)]
    power_state: Option<String>,
    properties: Vec<FixtureProp>,
    #[serde(default)]
    features: Vec<(String, String)>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    volumes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Fixture {
    labels: Vec<FixtureLabel>,
    #[serde(default)]
    vmclasses: Option<Vec<String>>,
    #[serde(default)]
    pools: Vec<String>,
    #[serde(default)]
    global_properties: Vec<FixtureProp>,
    qubes: Vec<FixtureQube>,
}

/// Configuration of a pool known only by name.
pub(crate) fn pool_config(name: &str) -> BTreeMap<String, String> {
    let mut c = BTreeMap::new();
    c.insert("name".into(), name.into());
    match name {
        "linux-kernel" => {
            c.insert("driver".into(), "linux-kernel".into());
            c.insert("dir_path".into(), "/var/lib/qubes/vm-kernels".into());
        }
        "varlibqubes" | "default" => {
            c.insert("driver".into(), "file-reflink".into());
            c.insert("dir_path".into(), "/var/lib/qubes".into());
            c.insert("revisions_to_keep".into(), "1".into());
            c.insert("ephemeral_volatile".into(), "False".into());
        }
        _ => {
            c.insert("driver".into(), "file-reflink".into());
            c.insert("dir_path".into(), format!("/var/lib/qubes/pool-{name}"));
            c.insert("revisions_to_keep".into(), "1".into());
            c.insert("ephemeral_volatile".into(), "False".into());
        }
    }
    c
}

fn parse_value(labels: &[Label], ty: PropType, value: &str) -> Val {
    if value.is_empty() && ty != PropType::Str {
        return Val::None;
    }
    match ty {
        PropType::Bool => Val::Bool(value == "True"),
        PropType::Int => Val::Int(value.to_string()),
        PropType::Str => Val::Str(value.to_string()),
        PropType::Vm => Val::Vm(value.to_string()),
        PropType::Label => labels
            .iter()
            .find(|l| l.name == value)
            .map(|l| Val::Label(l.index))
            .unwrap_or(Val::None),
    }
}

/// Why a fixture cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// Not JSON of the fixture schema.
    #[error("fixture is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// Something inconsistent, e.g. an unknown class or type word.
    #[error("fixture is not valid: {0}")]
    Invalid(String),
}

/// Builds a system from fixture JSON.
pub fn from_fixture(text: &str) -> Result<System, FixtureError> {
    let f: Fixture = serde_json::from_str(text)?;
    let mut sys = System::empty();
    sys.labels = f
        .labels
        .into_iter()
        .map(|l| Label {
            index: l.index,
            name: l.name,
            color: l.color,
        })
        .collect();
    if let Some(c) = f.vmclasses {
        sys.vmclasses = c;
    }
    sys.pools = f
        .pools
        .iter()
        .map(|n| Pool {
            name: n.clone(),
            config: pool_config(n),
        })
        .collect();
    let ty_of = |p: &FixtureProp| {
        PropType::parse(&p.ty).ok_or_else(|| {
            FixtureError::Invalid(format!("property {}: unknown type `{}`", p.name, p.ty))
        })
    };
    let mut order = Vec::new();
    for p in &f.global_properties {
        let ty = ty_of(p)?;
        order.push((p.name.clone(), ty));
        if p.default {
            sys.global_statics.insert(
                p.name.clone(),
                StaticProp {
                    ty,
                    value: Some(p.value.clone()),
                },
            );
        } else {
            let v = parse_value(&sys.labels, ty, &p.value);
            sys.globals.insert(p.name.clone(), v);
        }
    }
    if !order.is_empty() {
        sys.global_order = Some(order);
    }
    for fq in f.qubes {
        let class = VmClass::parse(&fq.class).ok_or_else(|| {
            FixtureError::Invalid(format!("qube {}: unknown class `{}`", fq.name, fq.class))
        })?;
        let mut order = Vec::new();
        let mut props = BTreeMap::new();
        let mut statics = BTreeMap::new();
        let mut qid = None;
        for p in &fq.properties {
            let ty = ty_of(p)?;
            order.push((p.name.clone(), ty));
            if p.name == "qid" {
                qid = p.value.parse::<u32>().ok();
            }
            if p.default {
                statics.insert(
                    p.name.clone(),
                    StaticProp {
                        ty,
                        value: Some(p.value.clone()),
                    },
                );
            } else {
                props.insert(p.name.clone(), parse_value(&sys.labels, ty, &p.value));
            }
        }
        sys.class_orders
            .entry(class.name().to_string())
            .or_insert(order);
        let vols = fq
            .volumes
            .iter()
            .map(|v| fixture_volume(class, v, &sys))
            .collect();
        sys.qubes.push(Qube {
            name: fq.name.clone(),
            class,
            uuid: fq.uuid.clone(),
            qid: qid.unwrap_or(if class == VmClass::AdminVM { 0 } else { 1 }),
            props,
            statics,
            features: fq.features,
            tags: fq.tags.into_iter().collect(),
            power: PowerState::parse(fq.power_state.as_deref().unwrap_or("Halted")),
            volumes: vols,
            firewall: None,
            notes: String::new(),
            xid: 0,
            start_time: None,
        });
    }
    sys.next_xid = 1;
    for q in &mut sys.qubes {
        if q.power == PowerState::Running && q.class != VmClass::AdminVM {
            q.xid = sys.next_xid;
            sys.next_xid += 1;
        }
    }
    sys.rebuild();
    Ok(sys)
}

fn fixture_volume(class: VmClass, name: &str, sys: &System) -> Volume {
    let default_pool = sys
        .pools
        .first()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    let kernel_pool = if sys.pool("linux-kernel").is_some() {
        "linux-kernel".to_string()
    } else {
        default_pool.clone()
    };
    let snap =
        class.has_template() && name == "root" || class == VmClass::DispVM && name == "private";
    let save = !class.has_template() && (name == "root" || name == "private")
        || class == VmClass::AppVM && name == "private";
    Volume {
        name: name.to_string(),
        pool: if name == "kernel" {
            kernel_pool
        } else {
            default_pool
        },
        size: match name {
            "private" => PRIVATE_IMG_SIZE,
            "kernel" => 0,
            _ => ROOT_IMG_SIZE,
        },
        rw: name != "kernel",
        snap_on_start: snap,
        save_on_stop: save,
        revisions_to_keep: if name == "kernel" { 0 } else { 1 },
        ephemeral: false,
    }
}

/// The default simulated machine: a small, realistic Qubes install.
///
/// dom0; templates `fedora-42-xfce` and `debian-13-xfce`; `default-dvm`
/// (disposable template); `sys-net`, `sys-firewall`; `work`, `personal`,
/// `untrusted`, `vault` (offline); the management qube `mgmt` (offline).
pub fn default_system() -> ApiResult<System> {
    let mut sys = System::empty();
    let labels = [
        (1, "red", "0xcc0000"),
        (2, "orange", "0xf57900"),
        (3, "yellow", "0xedd400"),
        (4, "green", "0x73d216"),
        (5, "gray", "0x555555"),
        (6, "blue", "0x3465a4"),
        (7, "purple", "0x75507b"),
        (8, "black", "0x000000"),
    ];
    sys.labels = labels
        .iter()
        .map(|(i, n, c)| Label {
            index: *i,
            name: (*n).into(),
            color: (*c).into(),
        })
        .collect();
    sys.pools = ["varlibqubes", "linux-kernel"]
        .iter()
        .map(|n| Pool {
            name: (*n).into(),
            config: pool_config(n),
        })
        .collect();
    sys.globals.insert(
        "default_pool_kernel".into(),
        Val::Str("linux-kernel".into()),
    );
    sys.globals
        .insert("default_kernel".into(), Val::Str("6.12.40-1.fc41".into()));
    sys.qubes.push(Qube {
        name: "dom0".into(),
        class: VmClass::AdminVM,
        uuid: "00000000-0000-0000-0000-000000000000".into(),
        qid: 0,
        props: [("label".to_string(), Val::Label(8))].into_iter().collect(),
        statics: BTreeMap::new(),
        features: Vec::new(),
        tags: Default::default(),
        power: PowerState::Running,
        volumes: Vec::new(),
        firewall: None,
        notes: String::new(),
        xid: 0,
        start_time: None,
    });
    sys.rebuild();
    let mut ev = Vec::new();
    let dom0 = sys.dom0().unwrap_or(0);
    let mut add = |sys: &mut System,
                   name: &str,
                   class: VmClass,
                   label: u32,
                   template: Option<&str>|
     -> ApiResult<usize> {
        let template = template.and_then(|t| sys.find(t));
        let qi = lifecycle::add_qube(
            sys,
            NewQube {
                class,
                name: name.into(),
                label,
                template,
                uuid: lifecycle::random_uuid(),
                pool: None,
                pools: BTreeMap::new(),
                dispid: None,
                auto_cleanup: false,
            },
            &mut ev,
        )?;
        lifecycle::tag_created_by(sys, qi, dom0, &mut ev)?;
        Ok(qi)
    };
    let set = |sys: &mut System, qi: usize, prop: &str, v: Val| -> ApiResult<()> {
        let def = sys
            .prop_def(qi, prop)
            .ok_or_else(|| super::ApiError::abort(prop.to_string()))?;
        ops::set_qube_prop(sys, qi, &def, v, &mut Vec::new())
    };
    for t in ["fedora-42-xfce", "debian-13-xfce"] {
        let qi = add(&mut sys, t, VmClass::TemplateVM, 8, None)?;
        let q = sys.qube_mut(qi);
        q.set_feature("os", "Linux");
        q.set_feature("qrexec", "1");
        q.set_feature("gui", "1");
    }
    sys.globals
        .insert("default_template".into(), Val::Vm("fedora-42-xfce".into()));
    let net = add(
        &mut sys,
        "sys-net",
        VmClass::AppVM,
        1,
        Some("fedora-42-xfce"),
    )?;
    set(&mut sys, net, "provides_network", Val::Bool(true))?;
    set(&mut sys, net, "netvm", Val::None)?;
    sys.qube_mut(net).set_feature("servicevm", "1");
    let fw = add(
        &mut sys,
        "sys-firewall",
        VmClass::AppVM,
        4,
        Some("fedora-42-xfce"),
    )?;
    set(&mut sys, fw, "provides_network", Val::Bool(true))?;
    set(&mut sys, fw, "netvm", Val::Vm("sys-net".into()))?;
    sys.qube_mut(fw).set_feature("servicevm", "1");
    let dvm = add(
        &mut sys,
        "default-dvm",
        VmClass::AppVM,
        1,
        Some("debian-13-xfce"),
    )?;
    set(&mut sys, dvm, "template_for_dispvms", Val::Bool(true))?;
    sys.qube_mut(dvm).set_feature("appmenus-dispvm", "1");
    for (name, label, tpl) in [
        ("work", 6, "fedora-42-xfce"),
        ("personal", 3, "fedora-42-xfce"),
        ("untrusted", 1, "debian-13-xfce"),
    ] {
        add(&mut sys, name, VmClass::AppVM, label, Some(tpl))?;
    }
    for (name, label) in [("vault", 8), ("mgmt", 8)] {
        let qi = add(
            &mut sys,
            name,
            VmClass::AppVM,
            label,
            Some("fedora-42-xfce"),
        )?;
        set(&mut sys, qi, "netvm", Val::None)?;
    }
    let globals = [
        ("default_netvm", "sys-firewall"),
        ("updatevm", "sys-firewall"),
        ("default_dispvm", "default-dvm"),
    ];
    for (k, v) in globals {
        sys.globals.insert(k.into(), Val::Vm(v.into()));
    }
    let clock = sys
        .global_def("clockvm")
        .ok_or_else(|| super::ApiError::abort("clockvm"))?;
    ops::set_global_prop(&mut sys, &clock, Val::Vm("sys-net".into()), &mut ev)?;
    Ok(sys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_system_is_consistent() {
        let sys = default_system().unwrap();
        let work = sys.find("work").unwrap();
        assert_eq!(
            sys.get(work, "netvm").unwrap(),
            Some(Val::Vm("sys-firewall".into()))
        );
        assert_eq!(
            sys.get(work, "visible_gateway").unwrap(),
            Some(Val::Str("10.137.0.4".into()))
        );
        let net = sys.find("sys-net").unwrap();
        assert_eq!(sys.qube(net).feature("service.clocksync"), Some("1"));
        let mgmt = sys.find("mgmt").unwrap();
        assert_eq!(sys.get(mgmt, "netvm").unwrap(), Some(Val::None));
        assert!(sys.qube(mgmt).tags.contains("guivm-dom0"));
        assert!(sys.qube(mgmt).tags.contains("created-by-dom0"));
    }
}
