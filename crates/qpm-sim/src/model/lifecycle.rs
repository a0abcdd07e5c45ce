//! Adding and removing qubes, volumes, and power-state transitions.

use std::collections::BTreeMap;

use qpm_wire::Event;

use super::ops;
use super::schema::{PropType, VmClass};
use super::system::{PowerState, Qube, System, Volume};
use super::values::Val;
use super::{ApiError, ApiResult};

/// Default sizes (qubes.config.defaults).
pub(crate) const ROOT_IMG_SIZE: u64 = 20 * 1024 * 1024 * 1024;
pub(crate) const PRIVATE_IMG_SIZE: u64 = 2 * 1024 * 1024 * 1024;

/// What a new qube is made of.
#[derive(Debug, Clone)]
pub(crate) struct NewQube {
    pub(crate) class: VmClass,
    pub(crate) name: String,
    pub(crate) label: u32,
    pub(crate) template: Option<usize>,
    pub(crate) uuid: String,
    /// `pool=` for every volume.
    pub(crate) pool: Option<String>,
    /// `pool:<volume>=` overrides.
    pub(crate) pools: BTreeMap<String, String>,
    /// Disposable id (DispVM only; picked at random when absent).
    pub(crate) dispid: Option<u32>,
    /// Unnamed disposable removed at shutdown.
    pub(crate) auto_cleanup: bool,
}

fn global_str(sys: &System, name: &str) -> String {
    sys.global_get(name)
        .ok()
        .flatten()
        .map(|v| sys.show(&v))
        .unwrap_or_default()
}

/// The volumes of a class that are snapshots of its template's (they stay
/// in the template's pool).
pub(crate) fn snapshot_volumes(class: VmClass) -> &'static [&'static str] {
    match class {
        VmClass::AppVM => &["root"],
        VmClass::DispVM => &["root", "private"],
        _ => &[],
    }
}

/// Volumes of a new qube, as the classes' default volume configs give them.
pub(crate) fn default_volumes(sys: &System, spec: &NewQube) -> Vec<Volume> {
    let pool_for = |vol: &str, global: &str| -> String {
        spec.pools
            .get(vol)
            .or(spec.pool.as_ref())
            .cloned()
            .unwrap_or_else(|| global_str(sys, global))
    };
    let tmpl_vol = |vol: &str| {
        spec.template
            .and_then(|t| sys.qube(t).volumes.iter().find(|v| v.name == vol).cloned())
    };
    let mk = |name: &str, pool: String, size: u64, rw, snap, save| Volume {
        name: name.into(),
        pool,
        size,
        rw,
        snap_on_start: snap,
        save_on_stop: save,
        revisions_to_keep: if name == "kernel" { 0 } else { 1 },
        ephemeral: false,
    };
    // `_patch_pool_config`: `pool=` moves only the read-write volumes that
    // are not snapshots; the kernel volume is read-only
    let kernel = mk(
        "kernel",
        spec.pools
            .get("kernel")
            .cloned()
            .unwrap_or_else(|| global_str(sys, "default_pool_kernel")),
        0,
        false,
        false,
        false,
    );
    match spec.class {
        VmClass::AppVM => {
            let root = tmpl_vol("root");
            vec![
                mk(
                    "root",
                    root.as_ref()
                        .map(|r| r.pool.clone())
                        .unwrap_or_else(|| pool_for("root", "default_pool_root")),
                    root.as_ref().map_or(ROOT_IMG_SIZE, |r| r.size),
                    true,
                    true,
                    false,
                ),
                mk(
                    "private",
                    pool_for("private", "default_pool_private"),
                    PRIVATE_IMG_SIZE,
                    true,
                    false,
                    true,
                ),
                mk(
                    "volatile",
                    pool_for("volatile", "default_pool_volatile"),
                    ROOT_IMG_SIZE,
                    true,
                    false,
                    false,
                ),
                kernel,
            ]
        }
        VmClass::DispVM => {
            let root = tmpl_vol("root");
            let private = tmpl_vol("private");
            vec![
                mk(
                    "root",
                    root.as_ref()
                        .map(|r| r.pool.clone())
                        .unwrap_or_else(|| pool_for("root", "default_pool_root")),
                    root.as_ref().map_or(ROOT_IMG_SIZE, |r| r.size),
                    true,
                    true,
                    false,
                ),
                mk(
                    "private",
                    private
                        .as_ref()
                        .map(|r| r.pool.clone())
                        .unwrap_or_else(|| pool_for("private", "default_pool_private")),
                    private.as_ref().map_or(PRIVATE_IMG_SIZE, |r| r.size),
                    true,
                    true,
                    false,
                ),
                mk(
                    "volatile",
                    pool_for("volatile", "default_pool_volatile"),
                    ROOT_IMG_SIZE + PRIVATE_IMG_SIZE,
                    true,
                    false,
                    false,
                ),
                kernel,
            ]
        }
        VmClass::TemplateVM | VmClass::StandaloneVM => vec![
            mk(
                "root",
                pool_for("root", "default_pool_root"),
                ROOT_IMG_SIZE,
                true,
                false,
                true,
            ),
            mk(
                "private",
                pool_for("private", "default_pool_private"),
                PRIVATE_IMG_SIZE,
                true,
                false,
                true,
            ),
            mk(
                "volatile",
                pool_for("volatile", "default_pool_volatile"),
                ROOT_IMG_SIZE,
                true,
                false,
                false,
            ),
            kernel,
        ],
        VmClass::AdminVM | VmClass::RemoteVM => Vec::new(),
    }
}

/// `app.add_new_vm(cls, ...)` followed by what the class constructor and
/// the extensions do at domain-init. Returns the new qube's index.
pub(crate) fn add_qube(
    sys: &mut System,
    spec: NewQube,
    events: &mut Vec<Event>,
) -> ApiResult<usize> {
    let qid = sys
        .new_qid()
        .ok_or_else(|| ApiError::abort("LookupError: Cannot find unused qid!"))?;
    let mut props = BTreeMap::new();
    props.insert("name".to_string(), Val::Str(spec.name.clone()));
    props.insert("qid".to_string(), Val::int(i128::from(qid)));
    props.insert("uuid".to_string(), Val::Str(spec.uuid.clone()));
    props.insert("label".to_string(), Val::Label(spec.label));
    if let Some(t) = spec.template {
        props.insert("template".to_string(), Val::Vm(sys.qube(t).name.clone()));
    }
    if spec.class == VmClass::DispVM {
        let used: Vec<String> = sys
            .qubes
            .iter()
            .filter_map(|q| match q.props.get("dispid") {
                Some(Val::Int(s)) => Some(s.clone()),
                _ => None,
            })
            .collect();
        let dispid = match spec.dispid {
            Some(d) => d,
            None => {
                let mut pick = None;
                for _ in 0..100 {
                    let d = random_u32() % 10000;
                    if !used.contains(&d.to_string()) {
                        pick = Some(d);
                        break;
                    }
                }
                pick.ok_or_else(|| ApiError::abort("LookupError: no free dispid"))?
            }
        };
        props.insert("dispid".to_string(), Val::int(i128::from(dispid)));
        if spec.auto_cleanup {
            props.insert("auto_cleanup".to_string(), Val::Bool(true));
        }
    }
    let volumes = default_volumes(sys, &spec);
    let qube = Qube {
        name: spec.name.clone(),
        class: spec.class,
        uuid: spec.uuid.clone(),
        qid,
        props,
        statics: BTreeMap::new(),
        features: Vec::new(),
        tags: Default::default(),
        power: PowerState::Halted,
        volumes,
        firewall: None,
        notes: String::new(),
        xid: 0,
        start_time: None,
    };
    sys.qubes.push(qube);
    sys.rebuild();
    let qi = sys.qubes.len() - 1;
    if spec.class == VmClass::DispVM
        && let Some(t) = spec.template
    {
        clone_from_dvm_template(sys, qi, t);
    }
    if spec.class.is_qubesvm()
        && !sys
            .global_get("check_updates_vm")?
            .is_some_and(|v| v.truthy())
    {
        sys.qube_mut(qi).set_feature("check-updates", "");
    }
    ops::init_derived_tags(sys, qi)?;
    events.push(Event::new("", "domain-add").with("vm", spec.name));
    Ok(qi)
}

/// A disposable inherits its template's explicitly set properties (except
/// those it already has), features (but `preload-dispvm*`), tags and firewall.
fn clone_from_dvm_template(sys: &mut System, qi: usize, t: usize) {
    let skip = [
        "name",
        "qid",
        "uuid",
        "dispid",
        "template",
        "template_for_dispvms",
    ];
    let own: Vec<String> = sys
        .schema(VmClass::DispVM)
        .iter()
        .map(|d| d.name.clone())
        .collect();
    let src = sys.qube(t).clone();
    let q = sys.qube_mut(qi);
    for (k, v) in &src.props {
        if skip.contains(&k.as_str()) || !own.contains(k) || q.props.contains_key(k) {
            continue;
        }
        q.props.insert(k.clone(), v.clone());
    }
    for (k, v) in &src.features {
        if !k.starts_with("preload-dispvm") {
            q.set_feature(k, v);
        }
    }
    q.tags.extend(src.tags.iter().cloned());
    q.firewall = src.firewall.clone();
}

/// Adds the `created-by-<caller>` tag and what the admin extension adds with
/// it (`disp-created-by-<caller>` on disposables, the creator's
/// `tag-created-vm-with` tags). An invalid extra tag fails the way qubesd
/// does: an internal error after the valid ones were added.
pub(crate) fn tag_created_by(
    sys: &mut System,
    qi: usize,
    creator: usize,
    events: &mut Vec<Event>,
) -> ApiResult<()> {
    let cname = sys.qube(creator).name.clone();
    let tag = format!("created-by-{cname}");
    let name = sys.qube(qi).name.clone();
    if sys.qube_mut(qi).tags.insert(tag.clone()) {
        events.push(Event::new(&name, format!("domain-tag-add:{tag}")).with("tag", tag));
    }
    created_by_added(sys, qi, creator, events)
}

/// The admin extension's handler of `domain-tag-add:created-by-*`.
pub(crate) fn created_by_added(
    sys: &mut System,
    qi: usize,
    creator: usize,
    events: &mut Vec<Event>,
) -> ApiResult<()> {
    let cname = sys.qube(creator).name.clone();
    let extra: Vec<String> = sys
        .qube(creator)
        .feature("tag-created-vm-with")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let name = sys.qube(qi).name.clone();
    let mut tags = Vec::new();
    if sys.qube(qi).class == VmClass::DispVM {
        tags.push(format!("disp-created-by-{cname}"));
    }
    tags.extend(extra);
    for tag in tags {
        super::pyval::validate_tag(&tag).map_err(|_| {
            ApiError::abort(format!("ValueError: Invalid character in tag {tag:?}"))
        })?;
        if sys.qube_mut(qi).tags.insert(tag.clone()) {
            events.push(Event::new(&name, format!("domain-tag-add:{tag}")).with("tag", tag));
        }
    }
    Ok(())
}

/// `del app.domains[vm]`: the qube must be halted and referenced by no
/// VM-valued property of another qube or of the system.
pub(crate) fn remove_qube(sys: &mut System, qi: usize, events: &mut Vec<Event>) -> ApiResult<Qube> {
    let name = sys.qube(qi).name.clone();
    if sys.qube(qi).is_active() {
        return Err(ApiError::exc(
            "QubesVMNotHaltedError",
            format!("Domain is not powered off: '{name}'"),
        ));
    }
    events.push(Event::new("", "domain-pre-delete").with("vm", name.clone()));
    let in_use = || {
        ApiError::exc(
            "QubesVMInUseError",
            format!(
                "Domain is in use: '{name}';  see 'journalctl -u qubesd -e' in dom0 for details"
            ),
        )
    };
    for other in 0..sys.qubes.len() {
        if other == qi {
            continue;
        }
        let class = sys.qube(other).class;
        for def in sys.schema(class).iter().filter(|d| d.ty == PropType::Vm) {
            if let Ok(Some(Val::Vm(v))) = sys.get(other, &def.name)
                && v == name
            {
                return Err(in_use());
            }
        }
    }
    for def in sys.global_schema().iter().filter(|d| d.ty == PropType::Vm) {
        if let Ok(Some(Val::Vm(v))) = sys.global_get(&def.name)
            && v == name
        {
            return Err(in_use());
        }
    }
    let removed = sys.qubes.remove(qi);
    sys.rebuild();
    events.push(Event::new("", "domain-delete").with("vm", name));
    Ok(removed)
}

/// A random `u32` (from the kernel's generator, via `/dev/urandom`; falls
/// back to time and pid, which is fine for disposable ids).
pub(crate) fn random_u32() -> u32 {
    use std::io::Read;
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u32::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id()
}

/// A random version-4 UUID.
pub(crate) fn random_uuid() -> String {
    let words: Vec<u32> = (0..4).map(|_| random_u32()).collect();
    let mut bytes = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Power transitions (state only; files are the caller's business).
pub(crate) fn set_power(sys: &mut System, qi: usize, state: PowerState, events: &mut Vec<Event>) {
    let name = sys.qube(qi).name.clone();
    let was_active = sys.qube(qi).is_active();
    let xid = sys.next_xid;
    let q = sys.qube_mut(qi);
    q.power = state;
    match state {
        PowerState::Running if !was_active => {
            q.xid = xid;
            q.start_time = Some(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs().to_string())
                    .unwrap_or_default(),
            );
            sys.next_xid = xid.saturating_add(1);
            events.push(Event::new(&name, "domain-pre-start"));
            events.push(Event::new(&name, "domain-start").with("start_guid", "True"));
        }
        PowerState::Halted => {
            q.xid = 0;
            q.start_time = None;
            if was_active {
                events.push(Event::new(&name, "domain-stopped"));
                events.push(Event::new(&name, "domain-shutdown"));
            }
        }
        PowerState::Paused => events.push(Event::new(&name, "domain-paused")),
        PowerState::Running => events.push(Event::new(&name, "domain-unpaused")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_v4() {
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(super::super::pyval::parse_uuid(&u).is_some());
        assert_ne!(random_uuid(), u);
    }
}
