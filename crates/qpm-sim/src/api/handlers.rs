//! One function per Admin API method family.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use qpm_wire::Event;

use super::{Context, DEVICE_CLASSES, Response};
use crate::model::lifecycle::{self, NewQube};
use crate::model::pyval::{self, py_repr};
use crate::model::schema::{self, PropType};
use crate::model::system::{PowerState, Qube};
use crate::model::{ApiError, ApiResult, System, Val, VmClass, firewall, ops};

/// File side effects of qube lifecycle, supplied by the simulator's store.
pub trait QubeHost {
    /// A qube was created (make its directories).
    fn created(&mut self, sys: &System, qi: usize) -> Result<(), String>;
    /// A qube was removed (delete its directories).
    fn removed(&mut self, qube: &Qube);
    /// A qube is starting (rebuild its live root).
    fn starting(&mut self, sys: &System, qi: usize) -> Result<(), String>;
    /// A qube stopped (keep what persists).
    fn stopped(&mut self, sys: &System, qi: usize);
    /// Copy volume `src_vol` of `src` onto `dst_vol` of `dst`.
    fn clone_volume(&mut self, sys: &System, src: usize, src_vol: &str, dst: usize, dst_vol: &str);
    /// Empty a volume.
    fn clear_volume(&mut self, sys: &System, qi: usize, vol: &str);
}

/// No files at all (conformance mode, tests).
pub struct NoHost;

impl QubeHost for NoHost {
    fn created(&mut self, _: &System, _: usize) -> Result<(), String> {
        Ok(())
    }
    fn removed(&mut self, _: &Qube) {}
    fn starting(&mut self, _: &System, _: usize) -> Result<(), String> {
        Ok(())
    }
    fn stopped(&mut self, _: &System, _: usize) {}
    fn clone_volume(&mut self, _: &System, _: usize, _: &str, _: usize, _: &str) {}
    fn clear_volume(&mut self, _: &System, _: usize, _: &str) {}
}

pub(crate) struct Req<'a> {
    pub(crate) src: usize,
    pub(crate) dest: usize,
    pub(crate) method: &'a str,
    pub(crate) arg: &'a str,
    pub(crate) payload: &'a [u8],
}

type Out = ApiResult<Response>;

fn value(s: impl Into<String>) -> Out {
    Ok(Response::Value(Some(s.into())))
}

fn ok() -> Out {
    Ok(Response::Value(None))
}

fn lines<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> String {
    let mut out = String::new();
    for i in items {
        out.push_str(i.as_ref());
        out.push('\n');
    }
    out
}

fn is_dom0_caller(ctx: &Context<'_>, r: &Req<'_>) -> bool {
    ctx.sys.qube(r.src).class == VmClass::AdminVM
}

fn name(ctx: &Context<'_>, qi: usize) -> String {
    ctx.sys.qube(qi).name.clone()
}

/// `enforce(cond)`.
fn enforce(cond: bool, reason: &str) -> ApiResult<()> {
    if cond {
        Ok(())
    } else {
        Err(ApiError::protocol(reason))
    }
}

pub(crate) fn run(ctx: &mut Context<'_>, r: &Req<'_>, ev: &mut Vec<Event>) -> Out {
    let m = r.method;
    if let Some(class) = m.strip_prefix("admin.vm.CreateInPool.") {
        return create(ctx, r, class, true, ev);
    }
    if let Some(class) = m.strip_prefix("admin.vm.Create.") {
        return create(ctx, r, class, false, ev);
    }
    if let Some(rest) = m.strip_prefix("admin.vm.device.") {
        let _ = rest;
        return value("");
    }
    match m {
        "admin.vmclass.List" => value(lines(ctx.sys.vmclasses.clone())),
        "admin.vm.List" => vm_list(ctx, r),
        "admin.vm.property.List" => value(prop_list(ctx, Some(r.dest))),
        "admin.property.List" => value(prop_list(ctx, None)),
        "admin.vm.property.Get" => prop_get(ctx, Some(r.dest), r.arg),
        "admin.property.Get" => prop_get(ctx, None, r.arg),
        "admin.vm.property.GetAll" => prop_get_all(ctx, Some(r.dest)),
        "admin.property.GetAll" => prop_get_all(ctx, None),
        "admin.vm.property.GetDefault" => prop_get_default(ctx, Some(r.dest), r.arg),
        "admin.property.GetDefault" => prop_get_default(ctx, None, r.arg),
        "admin.vm.property.Help" => prop_help(ctx, Some(r.dest), r.arg),
        "admin.property.Help" => prop_help(ctx, None, r.arg),
        "admin.vm.property.Set" => prop_set(ctx, Some(r.dest), r, ev),
        "admin.property.Set" => prop_set(ctx, None, r, ev),
        "admin.vm.property.Reset" => prop_reset(ctx, Some(r.dest), r.arg, ev),
        "admin.property.Reset" => prop_reset(ctx, None, r.arg, ev),
        m if m.starts_with("admin.vm.feature.") => feature(ctx, r, ev),
        m if m.starts_with("admin.vm.tag.") => tag(ctx, r, ev),
        m if m.starts_with("admin.label.") => label(ctx, r),
        m if m.starts_with("admin.pool.") => pool(ctx, r),
        m if m.starts_with("admin.vm.volume.") => volume(ctx, r),
        "admin.vm.Start" | "admin.vm.Shutdown" | "admin.vm.Pause" | "admin.vm.Unpause"
        | "admin.vm.Suspend" | "admin.vm.Resume" | "admin.vm.Kill" => power(ctx, r, ev),
        "admin.vm.Console" => {
            if !ctx.sys.qube(r.dest).is_active() {
                return Err(ApiError::exc(
                    "QubesVMNotRunningError",
                    format!("Domain is powered off: '{}'", name(ctx, r.dest)),
                ));
            }
            value("/dev/pts/0")
        }
        "admin.vm.CurrentState" => current_state(ctx, r),
        "admin.vm.Remove" => remove(ctx, r, ev),
        "admin.vm.CreateDisposable" => create_disposable(ctx, r, ev),
        "admin.vm.firewall.Get" => {
            let rules = ctx.sys.qube(r.dest).firewall.clone();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            value(lines(
                rules
                    .unwrap_or_else(|| vec!["action=accept".to_string()])
                    .into_iter()
                    // rules a state written by an earlier simulator holds
                    // in another text are printed in qubesd's form
                    .map(|rule| firewall::parse_rule(&rule).unwrap_or(rule))
                    .filter(|rule| !firewall::expired(rule, now)),
            ))
        }
        "admin.vm.firewall.Set" => {
            firewall_set(ctx, r)?;
            // `Firewall.save()` ends with this event
            ev.push(Event::new(name(ctx, r.dest), "firewall-changed"));
            ok()
        }
        "admin.vm.firewall.Reload" => {
            ev.push(Event::new(name(ctx, r.dest), "firewall-changed"));
            ok()
        }
        "admin.vm.notes.Get" => value(ctx.sys.qube(r.dest).notes.clone()),
        "admin.vm.notes.Set" => notes_set(ctx, r),
        "admin.deviceclass.List" => value(lines(DEVICE_CLASSES)),
        "admin.backup.Execute" | "admin.backup.Info" => {
            enforce(!r.arg.contains('/'), "")?;
            Err(ApiError::denied(format!(
                "Backup profile {} does not exist",
                r.arg
            )))
        }
        "admin.backup.Cancel" => Err(ApiError::exc(
            "QubesException",
            "Backup operation not running",
        )),
        "admin.Events" => Ok(Response::Events {
            source: name(ctx, r.src),
            only: (ctx.sys.qube(r.dest).class != VmClass::AdminVM).then(|| name(ctx, r.dest)),
        }),
        "admin.vm.Stats" => Ok(Response::Stats {
            source: name(ctx, r.src),
            only: (ctx.sys.qube(r.dest).class != VmClass::AdminVM).then(|| name(ctx, r.dest)),
        }),
        other => Err(ApiError::protocol(format!("no such method: '{other}'"))),
    }
}

// -------------------------------------------------------------------------
// qubes
// -------------------------------------------------------------------------

fn vm_list(ctx: &mut Context<'_>, r: &Req<'_>) -> Out {
    let sys = &*ctx.sys;
    let candidates: Vec<usize> = if sys.qube(r.dest).class == VmClass::AdminVM {
        sys.sorted()
    } else {
        vec![r.dest]
    };
    let filter = !is_dom0_caller(ctx, r);
    let src = name(ctx, r.src);
    let mut out = String::new();
    for qi in candidates {
        let q = sys.qube(qi);
        if filter
            && !ctx
                .filter
                .allows(sys, &src, "admin.vm.List", &format!("+{}", r.arg), &q.name)
        {
            continue;
        }
        let _ = writeln!(
            out,
            "{} class={} state={} uuid={}",
            q.name,
            q.class.name(),
            q.power.word(),
            q.uuid
        );
    }
    value(out)
}

fn current_state(ctx: &mut Context<'_>, r: &Req<'_>) -> Out {
    let q = ctx.sys.qube(r.dest);
    let (mem, max, cpu) = if q.class == VmClass::AdminVM {
        let total = ctx.sys.host.memory_total_kib;
        (total / 4, total, 1000)
    } else if q.is_active() {
        let mem = ctx
            .sys
            .get(r.dest, "memory")?
            .and_then(|v| {
                if let Val::Int(s) = v {
                    s.parse::<u64>().ok()
                } else {
                    None
                }
            })
            .unwrap_or(400);
        let maxmem = ctx
            .sys
            .get(r.dest, "maxmem")?
            .and_then(|v| {
                if let Val::Int(s) = v {
                    s.parse::<u64>().ok()
                } else {
                    None
                }
            })
            .unwrap_or(mem);
        (mem * 1024, maxmem.max(mem) * 1024, 1)
    } else {
        (0, 0, 0)
    };
    value(format!(
        "mem={mem} mem_static_max={max} cputime={cpu} power_state={}",
        q.power.word()
    ))
}

/// Parses the space-separated `key=value` options of Create.
fn create_options(payload: &[u8]) -> ApiResult<Vec<(String, String)>> {
    let text = std::str::from_utf8(payload)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or_else(|| ApiError::protocol("Parameters contains non-ASCII characters"))?;
    let mut out = Vec::new();
    for tok in text.split(' ') {
        let (k, v) = tok.split_once('=').ok_or_else(|| {
            ApiError::abort("ValueError: not enough values to unpack (expected 2, got 1)")
        })?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn create(
    ctx: &mut Context<'_>,
    r: &Req<'_>,
    class_name: &str,
    allow_pool: bool,
    ev: &mut Vec<Event>,
) -> Out {
    let Some(class) = VmClass::parse(class_name) else {
        return Err(ApiError::exc(
            "QubesException",
            format!("no such VM class: '{class_name}'"),
        ));
    };
    if !r.arg.is_empty() && !class.has_template() {
        return Err(ApiError::protocol(format!(
            "{class_name} cannot be based on template"
        )));
    }
    let opts = create_options(r.payload)?;
    let mut seen: Vec<&str> = Vec::new();
    for (k, _) in &opts {
        if seen.contains(&k.as_str()) {
            return Err(ApiError::protocol("Options must be unique"));
        }
        seen.push(k);
    }
    let is_pool_key = |k: &str| k == "pool" || k.starts_with("pool:");
    if !allow_pool && opts.iter().any(|(k, _)| is_pool_key(k)) {
        return Err(ApiError::protocol(
            "Pool option specified but 'allow_pool' is False",
        ));
    }
    let unknown: Vec<&str> = opts
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !matches!(*k, "name" | "label") && !is_pool_key(k))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::protocol(format!(
            "Options does not match: {}",
            unknown.join(", ")
        )));
    }
    let mut qname = None;
    let mut label = None;
    let mut pool = None;
    let mut pools = BTreeMap::new();
    for (k, v) in &opts {
        match k.as_str() {
            "name" => {
                pyval::validate_name(v)?;
                qname = Some(v.clone());
            }
            "label" => {
                let valid_chars = !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if valid_chars && !v.bytes().all(|b| b.is_ascii_digit()) {
                    label = ctx.sys.get_label(v).map(|l| l.index);
                }
            }
            "pool" => pool = Some(v.clone()),
            other => {
                let vol = other.strip_prefix("pool:").unwrap_or_default();
                enforce(
                    matches!(vol, "root" | "private" | "volatile" | "kernel"),
                    "Invalid volume name",
                )?;
                pools.insert(vol.to_string(), v.clone());
            }
        }
    }
    let Some(qname) = qname else {
        return Err(ApiError::protocol("Creation requested without key: name"));
    };
    let Some(label) = label else {
        return Err(ApiError::protocol("Creation requested without key: label"));
    };
    if pool.is_some() && !pools.is_empty() {
        return Err(ApiError::protocol(
            "Only one of 'pool=' and 'pool:volume=' can be used",
        ));
    }
    // permission event (nothing refuses creation here), then the checks
    // that would leak information before it
    if ctx.sys.find(&qname).is_some() {
        return Err(ApiError::exc(
            "QubesVMAlreadyExistsError",
            format!("Qube already exists: {qname}"),
        ));
    }
    let template = if !r.arg.is_empty() {
        let t = ctx.sys.find(r.arg).ok_or_else(|| {
            ApiError::exc(
                "QubesVMNotFoundError",
                format!("No such domain: {}", py_repr(r.arg)),
            )
        })?;
        Some(t)
    } else if class.has_template() {
        let g = if class == VmClass::DispVM {
            "default_dispvm"
        } else {
            "default_template"
        };
        match ctx.sys.global_get(g)? {
            None => {
                return Err(ApiError::abort(format!(
                    "AttributeError: property '{g}' have no default"
                )));
            }
            Some(Val::Vm(n)) => ctx.sys.find(&n),
            Some(_) => {
                return Err(ApiError::exc(
                    "QubesValueError",
                    "Template for the qube not specified, nor default template set.",
                ));
            }
        }
    } else {
        None
    };
    for p in pool.iter().chain(pools.values()) {
        if ctx.sys.pool(p).is_none() {
            return Err(ApiError::exc(
                "QubesPoolNotFoundError",
                format!("Pool does not exist: {p}"),
            ));
        }
    }
    // `create_on_disk` → `_patch_pool_config` (qubesd then removes the
    // qube again): a snapshot volume cannot be put in another pool
    if let Some(vol) = lifecycle::snapshot_volumes(class)
        .iter()
        .find(|v| pools.contains_key(**v))
    {
        return Err(ApiError::exc(
            "QubesException",
            format!(
                "Snapshot volume {vol} must be in the same pool as its origin ({vol} volume of template),"
            ),
        ));
    }
    if let Some(t) = template {
        let tq = ctx.sys.qube(t);
        match class {
            VmClass::AppVM if tq.class != VmClass::TemplateVM => {
                return Err(ApiError::exc(
                    "QubesPropertyValueError",
                    format!(
                        "wrong VM class: domains[{}] is of type {} and not TemplateVM",
                        py_repr(&tq.name),
                        tq.class.name()
                    ),
                ));
            }
            VmClass::DispVM => {
                let ok = tq.class.can_be_dvm_template()
                    && ctx
                        .sys
                        .get(t, "template_for_dispvms")?
                        .is_some_and(|v| v.truthy());
                if !ok {
                    return Err(ApiError::exc(
                        "QubesValueError",
                        format!(
                            "template for disposable ({}) needs to be an AppVM with template_for_dispvms=True",
                            tq.name
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    if class == VmClass::AdminVM {
        // `add_new_vm` constructs `AdminVM(app, None, qid=<new qid>, ...)`;
        // AdminVM's `qid` (like its `name` and `uuid`) has the `forbidden`
        // setter, and qid is the first keyword set: nothing is created.
        return Err(ApiError::exc(
            "QubesPropertyValueError",
            "property 'qid' on AdminVM instance cannot be set",
        ));
    }
    let uuid = ctx.next_uuid.take().unwrap_or_else(lifecycle::random_uuid);
    if ctx.sys.find_uuid(&uuid).is_some() {
        return Err(ApiError::abort("ValueError: uuid already in use"));
    }
    let qi = lifecycle::add_qube(
        ctx.sys,
        NewQube {
            class,
            name: qname,
            label,
            template,
            uuid,
            pool,
            pools,
            dispid: None,
            auto_cleanup: false,
        },
        ev,
    )?;
    lifecycle::tag_created_by(ctx.sys, qi, r.src, ev)?;
    if let Err(e) = ctx.host.created(ctx.sys, qi) {
        let _ = lifecycle::remove_qube(ctx.sys, qi, &mut Vec::new());
        return Err(ApiError::exc(
            "QubesException",
            format!("creating qube files failed: {e}"),
        ));
    }
    let n = name(ctx, qi);
    ev.push(Event::new(&n, "domain-create-on-disk"));
    ok()
}

fn create_disposable(ctx: &mut Context<'_>, r: &Req<'_>, ev: &mut Vec<Event>) -> Out {
    enforce(matches!(r.arg, "" | "preload"), "Invalid argument")?;
    if !matches!(r.payload, b"" | b"uuid") {
        return Err(ApiError::exc(
            "QubesValueError",
            "Invalid payload for admin.vm.CreateDisposable: expected the empty string or 'uuid'",
        ));
    }
    let appvm = if ctx.sys.qube(r.dest).class == VmClass::AdminVM {
        match ctx.sys.get(r.src, "default_dispvm")? {
            Some(Val::Vm(n)) => ctx.sys.find(&n),
            _ => None,
        }
    } else {
        Some(r.dest)
    };
    let Some(appvm) = appvm else {
        return Err(ApiError::abort("AttributeError: no default_dispvm"));
    };
    if r.arg == "preload" {
        return ok();
    }
    let aq = ctx.sys.qube(appvm);
    let tfd = aq.class.can_be_dvm_template()
        && ctx
            .sys
            .get(appvm, "template_for_dispvms")?
            .is_some_and(|v| v.truthy());
    if !tfd {
        return Err(ApiError::exc(
            "QubesException",
            "Refusing to create DispVM out of this AppVM, because template_for_dispvms=False",
        ));
    }
    let label = match ctx.sys.get(appvm, "label")? {
        Some(Val::Label(l)) => l,
        _ => 1,
    };
    let mut dispid = None;
    for _ in 0..100 {
        let d = lifecycle::random_u32() % 10000;
        if ctx.sys.find(&format!("disp{d}")).is_none() {
            dispid = Some(d);
            break;
        }
    }
    let dispid = dispid.ok_or_else(|| ApiError::abort("LookupError: no free dispid"))?;
    let uuid = ctx.next_uuid.take().unwrap_or_else(lifecycle::random_uuid);
    let qi = lifecycle::add_qube(
        ctx.sys,
        NewQube {
            class: VmClass::DispVM,
            name: format!("disp{dispid}"),
            label,
            template: Some(appvm),
            uuid,
            pool: None,
            pools: BTreeMap::new(),
            dispid: Some(dispid),
            auto_cleanup: true,
        },
        ev,
    )?;
    lifecycle::tag_created_by(ctx.sys, qi, r.src, ev)?;
    if let Err(e) = ctx.host.created(ctx.sys, qi) {
        let _ = lifecycle::remove_qube(ctx.sys, qi, &mut Vec::new());
        return Err(ApiError::exc(
            "QubesException",
            format!("creating qube files failed: {e}"),
        ));
    }
    let q = ctx.sys.qube(qi);
    value(if r.payload.is_empty() {
        q.name.clone()
    } else {
        format!("uuid:{}", q.uuid)
    })
}

fn remove(ctx: &mut Context<'_>, r: &Req<'_>, ev: &mut Vec<Event>) -> Out {
    let q = ctx.sys.qube(r.dest);
    if q.class == VmClass::AdminVM {
        return Err(ApiError::exc(
            "QubesVMInUseError",
            "'dom0' cannot be removed",
        ));
    }
    if q.class.is_qubesvm()
        && ctx
            .sys
            .get(r.dest, "installed_by_rpm")?
            .is_some_and(|v| v.truthy())
    {
        return Err(ApiError::exc(
            "QubesVMInUseError",
            format!("VM installed by package manager: {}", q.name),
        ));
    }
    let removed = lifecycle::remove_qube(ctx.sys, r.dest, ev)?;
    ctx.host.removed(&removed);
    ok()
}

fn power(ctx: &mut Context<'_>, r: &Req<'_>, ev: &mut Vec<Event>) -> Out {
    let qi = r.dest;
    let qn = name(ctx, qi);
    let state = ctx.sys.qube(qi).power;
    let not_started = || {
        ApiError::exc(
            "QubesVMNotStartedError",
            format!("Domain is powered off: '{qn}'"),
        )
    };
    match r.method {
        "admin.vm.Start" => start(ctx, qi, ev, 0),
        "admin.vm.Shutdown" => {
            let args: Vec<&str> = if r.arg.is_empty() {
                Vec::new()
            } else {
                r.arg.split('+').collect()
            };
            enforce(
                args.iter().all(|a| matches!(*a, "force" | "wait")),
                "Argument must match: force, wait",
            )?;
            let force = args.contains(&"force");
            if state == PowerState::Halted {
                return Err(not_started());
            }
            let running: Vec<String> = ctx
                .sys
                .connected_vms(qi)
                .into_iter()
                .filter(|&v| ctx.sys.qube(v).is_active())
                .map(|v| name(ctx, v))
                .collect();
            if !running.is_empty() && !force {
                return Err(ApiError::exc(
                    "QubesVMError",
                    format!(
                        "There are other VMs connected to this VM: {}",
                        running.join(", ")
                    ),
                ));
            }
            stop(ctx, qi, ev);
            ok()
        }
        "admin.vm.Kill" => {
            if !matches!(
                state,
                PowerState::Running | PowerState::Paused | PowerState::Suspended
            ) {
                return Err(not_started());
            }
            stop(ctx, qi, ev);
            ok()
        }
        "admin.vm.Pause" => {
            if state != PowerState::Running {
                return Err(ApiError::exc(
                    "QubesVMNotRunningError",
                    format!("Domain is powered off: '{qn}'"),
                ));
            }
            lifecycle::set_power(ctx.sys, qi, PowerState::Paused, ev);
            ok()
        }
        "admin.vm.Suspend" => {
            if !matches!(state, PowerState::Running | PowerState::Paused) {
                return Err(ApiError::exc(
                    "QubesVMNotRunningError",
                    format!("Domain is powered off: '{qn}'"),
                ));
            }
            lifecycle::set_power(ctx.sys, qi, PowerState::Suspended, ev);
            ok()
        }
        "admin.vm.Unpause" | "admin.vm.Resume" => {
            let allowed = state == PowerState::Paused
                || (r.method == "admin.vm.Resume" && state == PowerState::Suspended);
            if !allowed {
                return Err(ApiError::exc(
                    "QubesVMNotPausedError",
                    format!("Domain is not paused: '{qn}'"),
                ));
            }
            lifecycle::set_power(ctx.sys, qi, PowerState::Running, ev);
            ok()
        }
        _ => Err(ApiError::protocol("no such method")),
    }
}

/// `vm.start()`: a no-op unless halted; starts the netvm first.
pub(crate) fn start(ctx: &mut Context<'_>, qi: usize, ev: &mut Vec<Event>, depth: usize) -> Out {
    if depth > 16 {
        return Err(ApiError::exc("QubesException", "netvm chain too long"));
    }
    if ctx.sys.qube(qi).power != PowerState::Halted {
        return ok();
    }
    let qn = name(ctx, qi);
    if ctx.sys.get(qi, "virt_mode")?.as_ref().and_then(Val::as_str) == Some("pvh")
        && !ctx.sys.get(qi, "kernel")?.is_some_and(|v| v.truthy())
    {
        return Err(ApiError::exc(
            "QubesException",
            "virt_mode PVH require kernel to be set",
        ));
    }
    if let Some(n) = ctx.sys.netvm_of(qi)
        && ctx.sys.qube(n).class.is_qubesvm()
        && !ctx.sys.qube(n).is_active()
    {
        start(ctx, n, ev, depth + 1)?;
    }
    if ctx.sys.qube(qi).class.has_template() && ctx.sys.template_of(qi).is_none() {
        return Err(ApiError::exc(
            "QubesNoTemplateError",
            format!("Template not set: '{qn}'"),
        ));
    }
    ctx.host
        .starting(ctx.sys, qi)
        .map_err(|e| ApiError::exc("QubesException", format!("Start failed: {e}")))?;
    lifecycle::set_power(ctx.sys, qi, PowerState::Running, ev);
    ok()
}

/// Shutdown/kill: what persists is kept, disposables with auto_cleanup go.
pub(crate) fn stop(ctx: &mut Context<'_>, qi: usize, ev: &mut Vec<Event>) {
    ctx.host.stopped(ctx.sys, qi);
    lifecycle::set_power(ctx.sys, qi, PowerState::Halted, ev);
    let q = ctx.sys.qube(qi);
    if q.class == VmClass::DispVM
        && ctx
            .sys
            .get(qi, "auto_cleanup")
            .ok()
            .flatten()
            .is_some_and(|v| v.truthy())
        && let Ok(removed) = lifecycle::remove_qube(ctx.sys, qi, ev)
    {
        ctx.host.removed(&removed);
    }
}

// -------------------------------------------------------------------------
// properties
// -------------------------------------------------------------------------

fn defs(ctx: &Context<'_>, target: Option<usize>) -> std::sync::Arc<Vec<schema::PropDef>> {
    match target {
        Some(qi) => ctx.sys.schema(ctx.sys.qube(qi).class),
        None => ctx.sys.global_schema(),
    }
}

fn holder_name(ctx: &Context<'_>, target: Option<usize>) -> String {
    match target {
        Some(qi) => name(ctx, qi),
        None => "Qubes".into(),
    }
}

fn find_def(ctx: &Context<'_>, target: Option<usize>, prop: &str) -> ApiResult<schema::PropDef> {
    defs(ctx, target)
        .iter()
        .find(|d| d.name == prop)
        .cloned()
        .ok_or_else(|| {
            ApiError::exc(
                "QubesNoSuchPropertyError",
                format!(
                    "Invalid property {} of {}",
                    py_repr(prop),
                    holder_name(ctx, target)
                ),
            )
        })
}

fn prop_list(ctx: &Context<'_>, target: Option<usize>) -> String {
    lines(defs(ctx, target).iter().map(|d| d.name.as_str()))
}

fn get_value(ctx: &Context<'_>, target: Option<usize>, prop: &str) -> ApiResult<Option<Val>> {
    match target {
        Some(qi) => ctx.sys.get(qi, prop),
        None => ctx.sys.global_get(prop),
    }
}

fn serialize(ctx: &Context<'_>, target: Option<usize>, def: &schema::PropDef) -> ApiResult<String> {
    let ty = def.ty.word();
    let Some(v) = get_value(ctx, target, &def.name)? else {
        return Ok(format!("default=True type={ty} "));
    };
    let is_default = match target {
        Some(qi) => ctx.sys.is_default(qi, &def.name),
        None => !ctx.sys.globals.contains_key(&def.name),
    };
    let is_default = is_default || def.kind == schema::Kind::Stateless;
    Ok(format!(
        "default={} type={ty} {}",
        if is_default { "True" } else { "False" },
        ctx.sys.show(&v)
    ))
}

fn prop_get(ctx: &Context<'_>, target: Option<usize>, prop: &str) -> Out {
    let def = find_def(ctx, target, prop)?;
    value(serialize(ctx, target, &def)?)
}

fn prop_get_all(ctx: &Context<'_>, target: Option<usize>) -> Out {
    // qubesd sorts the property objects, i.e. by (load stage, name): the
    // same order as List
    let mut out = String::new();
    for d in defs(ctx, target).iter() {
        let s = serialize(ctx, target, d)?;
        let _ = writeln!(out, "{} {}", d.name, qpm_wire::getall::escape(&s));
    }
    value(out)
}

fn prop_get_default(ctx: &Context<'_>, target: Option<usize>, prop: &str) -> Out {
    let def = find_def(ctx, target, prop)?;
    let v = match target {
        Some(qi) => ctx.sys.default(qi, prop)?,
        None => ctx.sys.global_default(prop)?,
    };
    match v {
        None => ok(),
        Some(v) => value(format!("type={} {}", def.ty.word(), ctx.sys.show(&v))),
    }
}

fn prop_help(ctx: &Context<'_>, target: Option<usize>, prop: &str) -> Out {
    find_def(ctx, target, prop)?;
    value(schema::help(prop))
}

fn prop_set(ctx: &mut Context<'_>, target: Option<usize>, r: &Req<'_>, ev: &mut Vec<Event>) -> Out {
    let def = find_def(ctx, target, r.arg)?;
    let v = ops::sanitize(&def, r.payload)?;
    match target {
        Some(qi) => ops::set_qube_prop(ctx.sys, qi, &def, v, ev)?,
        None => ops::set_global_prop(ctx.sys, &def, v, ev)?,
    }
    ok()
}

fn prop_reset(
    ctx: &mut Context<'_>,
    target: Option<usize>,
    prop: &str,
    ev: &mut Vec<Event>,
) -> Out {
    let def = find_def(ctx, target, prop)?;
    match target {
        Some(qi) => ops::reset_qube_prop(ctx.sys, qi, &def, ev)?,
        None => ops::reset_global_prop(ctx.sys, &def, ev)?,
    }
    ok()
}

// -------------------------------------------------------------------------
// features, tags
// -------------------------------------------------------------------------

/// Features no Admin API caller may set or remove.
const PROTECTED_FEATURES: &[&str] = &[
    "deferred-netvm-original",
    "preload-dispvm",
    "preload-dispvm-completed",
    "preload-dispvm-in-progress",
];

fn feature_not_found(ctx: &Context<'_>, qi: usize, f: &str) -> ApiError {
    ApiError::exc(
        "QubesFeatureNotFoundError",
        format!("Feature not set for domain {}: {f}", name(ctx, qi)),
    )
}

/// Validation done by extensions on `domain-feature-pre-set`.
fn feature_pre_set(f: &str, value: &str) -> ApiResult<()> {
    if let Some(service) = f.strip_prefix("service.") {
        if service.is_empty() {
            return Err(ApiError::exc(
                "QubesValueError",
                "Service name cannot be empty",
            ));
        }
        if service == "." || service == ".." {
            return Err(ApiError::exc(
                "QubesValueError",
                format!("Invalid service name: {service}"),
            ));
        }
    }
    if let Some(key) = f.strip_prefix("custom-persist.") {
        custom_persist_check(key, value)?;
    }
    Ok(())
}

/// `qubes/ext/custom_persist.py` checks.
pub(crate) fn custom_persist_check(key: &str, value: &str) -> ApiResult<()> {
    let bad = |m: &str| Err(ApiError::exc("QubesValueError", m.to_string()));
    if key.is_empty() || key.len() > 54 {
        return bad("custom-persist key is not valid");
    }
    if value.starts_with('/') {
        return Ok(());
    }
    let fields: Vec<&str> = value.splitn(5, ':').collect();
    let [kind, _owner, _group, mode, path] = fields.as_slice() else {
        return bad(&format!("invalid value format: {value}"));
    };
    if !matches!(*kind, "file" | "dir") {
        return bad(&format!("invalid resource type option '{kind}'"));
    }
    let mode_ok = !mode.is_empty()
        && mode.bytes().all(|b| (b'0'..=b'7').contains(&b))
        && u32::from_str_radix(mode, 8).is_ok_and(|m| m <= 0o7777);
    if !mode_ok {
        return bad(&format!("invalid mode option '{mode}'"));
    }
    if !path.starts_with('/') {
        return bad(&format!("invalid path '{path}'"));
    }
    Ok(())
}

fn feature(ctx: &mut Context<'_>, r: &Req<'_>, ev: &mut Vec<Event>) -> Out {
    let qi = r.dest;
    let f = r.arg;
    let checked = |ctx: &Context<'_>, v: Option<String>| -> Out {
        match v {
            Some(s) => value(s),
            None => Err(feature_not_found(ctx, qi, f)),
        }
    };
    match r.method {
        "admin.vm.feature.List" => value(lines(
            ctx.sys.qube(qi).features.iter().map(|(k, _)| k.as_str()),
        )),
        "admin.vm.feature.Get" => checked(ctx, ctx.sys.qube(qi).feature(f).map(str::to_string)),
        "admin.vm.feature.CheckWithTemplate" => checked(ctx, ctx.sys.check_with_template(qi, f)),
        "admin.vm.feature.CheckWithNetvm" => checked(ctx, ctx.sys.check_with_netvm(qi, f)),
        "admin.vm.feature.CheckWithAdminVM" => checked(ctx, ctx.sys.check_with_adminvm(qi, f)),
        "admin.vm.feature.CheckWithTemplateAndAdminVM" => {
            checked(ctx, ctx.sys.check_with_template_and_adminvm(qi, f))
        }
        "admin.vm.feature.Set" => {
            let v = std::str::from_utf8(r.payload)
                .ok()
                .filter(|s| s.is_ascii())
                .ok_or_else(|| ApiError::protocol("Feature value contains non-ASCII characters"))?;
            let name_ok = f
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !name_ok {
                return Err(ApiError::protocol(
                    "feature name contains illegal characters",
                ));
            }
            if !v.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
                return Err(ApiError::protocol(
                    "Feature value contains illegal characters",
                ));
            }
            if PROTECTED_FEATURES.contains(&f) {
                return Err(ApiError::denied(format!(
                    "feature {f} cannot be set through the Admin API"
                )));
            }
            let qn = name(ctx, qi);
            let mut pre = Event::new(&qn, format!("domain-feature-pre-set:{f}"))
                .with("feature", f)
                .with("value", v);
            if let Some(old) = ctx.sys.qube(qi).feature(f) {
                pre = pre.with("oldvalue", old);
            }
            ev.push(pre);
            feature_pre_set(f, v)?;
            let old = ctx.sys.qube(qi).feature(f).map(str::to_string);
            ctx.sys.qube_mut(qi).set_feature(f, v);
            let mut e = Event::new(&qn, format!("domain-feature-set:{f}"))
                .with("feature", f)
                .with("value", v);
            if let Some(o) = old {
                e = e.with("oldvalue", o);
            }
            ev.push(e);
            ok()
        }
        "admin.vm.feature.Remove" => {
            if PROTECTED_FEATURES.contains(&f) {
                return Err(ApiError::denied(format!(
                    "feature {f} cannot be removed through the Admin API"
                )));
            }
            let qn = name(ctx, qi);
            ev.push(Event::new(&qn, format!("domain-feature-pre-delete:{f}")).with("feature", f));
            if !ctx.sys.qube_mut(qi).remove_feature(f) {
                return Err(feature_not_found(ctx, qi, f));
            }
            ev.push(Event::new(&qn, format!("domain-feature-delete:{f}")).with("feature", f));
            ok()
        }
        other => Err(ApiError::protocol(format!("no such method: '{other}'"))),
    }
}

fn tag(ctx: &mut Context<'_>, r: &Req<'_>, ev: &mut Vec<Event>) -> Out {
    let qi = r.dest;
    let t = r.arg;
    if r.method == "admin.vm.tag.List" {
        return value(lines(ctx.sys.qube(qi).tags.iter()));
    }
    pyval::validate_tag(t)?;
    let protected = t.starts_with("created-by-") || t.starts_with("disp-created-by-");
    let qn = name(ctx, qi);
    match r.method {
        "admin.vm.tag.Get" => value(if ctx.sys.qube(qi).tags.contains(t) {
            "1"
        } else {
            "0"
        }),
        "admin.vm.tag.Set" => {
            if protected && !is_dom0_caller(ctx, r) {
                return Err(ApiError::denied(
                    "changing this tag is prohibited by qubes.ext.admin.AdminExtension",
                ));
            }
            if ctx.sys.qube_mut(qi).tags.insert(t.to_string()) {
                ev.push(Event::new(&qn, format!("domain-tag-add:{t}")).with("tag", t));
                if let Some(creator) = t.strip_prefix("created-by-") {
                    // the extension looks the creator up; a missing one is an
                    // internal error (the tag stays)
                    let Some(ci) = ctx.sys.find(creator) else {
                        return Err(ApiError::abort(format!("KeyError: {creator}")));
                    };
                    lifecycle::created_by_added(ctx.sys, qi, ci, ev)?;
                }
            }
            ok()
        }
        "admin.vm.tag.Remove" => {
            if protected && !is_dom0_caller(ctx, r) {
                return Err(ApiError::denied(
                    "changing this tag is prohibited by qubes.ext.admin.AdminExtension",
                ));
            }
            if !ctx.sys.qube_mut(qi).tags.remove(t) {
                return Err(ApiError::exc(
                    "QubesTagNotFoundError",
                    format!("Tag not set for domain {qn}: {t}"),
                ));
            }
            ev.push(Event::new(&qn, format!("domain-tag-delete:{t}")).with("tag", t));
            ok()
        }
        other => Err(ApiError::protocol(format!("no such method: '{other}'"))),
    }
}

// -------------------------------------------------------------------------
// labels, pools, volumes
// -------------------------------------------------------------------------

fn label(ctx: &mut Context<'_>, r: &Req<'_>) -> Out {
    let not_found = || {
        ApiError::exc(
            "QubesLabelNotFoundError",
            format!("Label does not exist: {}", r.arg),
        )
    };
    match r.method {
        "admin.label.List" => value(lines(ctx.sys.labels.iter().map(|l| l.name.as_str()))),
        "admin.label.Get" => ctx
            .sys
            .get_label(r.arg)
            .map(|l| l.color.clone())
            .ok_or_else(not_found)
            .and_then(value),
        "admin.label.Index" => ctx
            .sys
            .get_label(r.arg)
            .map(|l| l.index.to_string())
            .ok_or_else(not_found)
            .and_then(value),
        "admin.label.Create" => {
            let name_ok = r
                .arg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && !r.arg.bytes().all(|b| b.is_ascii_digit());
            if !name_ok {
                return Err(ApiError::exc(
                    "QubesInvalidLabelError",
                    format!("Invalid label name: {}", r.arg),
                ));
            }
            if ctx.sys.get_label(r.arg).is_some() {
                return Err(ApiError::exc("QubesValueError", "label already exists"));
            }
            let color = std::str::from_utf8(r.payload)
                .ok()
                .filter(|s| s.is_ascii())
                .ok_or_else(|| ApiError::abort("UnicodeDecodeError in label colour"))?
                .trim_matches(|c: char| c.is_ascii_whitespace());
            let color_ok = color.len() == 8
                && color.starts_with("0x")
                && color
                    .get(2..)
                    .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
            if !color_ok {
                return Err(ApiError::exc(
                    "QubesInvalidLabelValueError",
                    format!("Invalid label color: {color}"),
                ));
            }
            let index = ctx
                .sys
                .labels
                .iter()
                .map(|l| l.index)
                .max()
                .unwrap_or(0)
                .max(8)
                + 1;
            ctx.sys.labels.push(crate::model::Label {
                index,
                name: r.arg.to_string(),
                color: color.to_string(),
            });
            ok()
        }
        "admin.label.Remove" => {
            let l = ctx.sys.get_label(r.arg).cloned().ok_or_else(not_found)?;
            enforce(l.index > 8, "default labels cannot be removed")?;
            let sys = &*ctx.sys;
            let in_use = (0..sys.qubes.len())
                .any(|i| matches!(sys.get(i, "label"), Ok(Some(Val::Label(x))) if x == l.index));
            if in_use {
                return Err(ApiError::exc(
                    "QubesLabelInUseError",
                    format!("Label is in use: {}", l.name),
                ));
            }
            ctx.sys.labels.retain(|x| x.index != l.index);
            ok()
        }
        other => Err(ApiError::protocol(format!("no such method: '{other}'"))),
    }
}

const POOL_DRIVERS: &[(&str, &[&str])] = &[
    ("file", &["dir_path", "revisions_to_keep"]),
    (
        "file-reflink",
        &[
            "dir_path",
            "setup_check",
            "revisions_to_keep",
            "ephemeral_volatile",
        ],
    ),
    ("linux-kernel", &["dir_path"]),
    (
        "lvm_thin",
        &[
            "volume_group",
            "thin_pool",
            "revisions_to_keep",
            "ephemeral_volatile",
        ],
    ),
    (
        "zfs",
        &["container", "revisions_to_keep", "ephemeral_volatile"],
    ),
];

fn pool(ctx: &mut Context<'_>, r: &Req<'_>) -> Out {
    let known = |ctx: &Context<'_>| ctx.sys.pool(r.arg).is_some();
    match r.method {
        "admin.pool.List" => value(lines(ctx.sys.pools.iter().map(|p| p.name.as_str()))),
        "admin.pool.ListDrivers" => value(lines(
            POOL_DRIVERS
                .iter()
                .map(|(d, params)| format!("{d} {}", params.join(" "))),
        )),
        "admin.pool.Info" => {
            enforce(known(ctx), "")?;
            let p = ctx
                .sys
                .pool(r.arg)
                .cloned()
                .unwrap_or_else(|| crate::model::Pool {
                    name: r.arg.into(),
                    config: BTreeMap::new(),
                });
            let mut out = lines(p.config.iter().map(|(k, v)| format!("{k}={v}")));
            out.push_str("size=107374182400\nusage=0\n");
            value(out)
        }
        "admin.pool.UsageDetails" => {
            enforce(known(ctx), "")?;
            value("data_size=107374182400\ndata_usage=0\n")
        }
        "admin.pool.volume.List" => {
            enforce(known(ctx), "")?;
            let mut vids = Vec::new();
            for q in &ctx.sys.qubes {
                for v in q.volumes.iter().filter(|v| v.pool == r.arg) {
                    vids.push(volume_vid(ctx.sys, q, &v.name));
                }
            }
            value(lines(vids))
        }
        "admin.pool.Add" => {
            let Some((_, params)) = POOL_DRIVERS.iter().find(|(d, _)| *d == r.arg) else {
                return Err(ApiError::exc(
                    "QubesException",
                    format!("unexpected driver name: {}", r.arg),
                ));
            };
            let text = std::str::from_utf8(r.payload)
                .ok()
                .filter(|s| s.is_ascii())
                .ok_or_else(|| ApiError::abort("UnicodeDecodeError in pool config"))?;
            let mut cfg = BTreeMap::new();
            for line in text.lines() {
                let (k, v) = line.split_once('=').ok_or_else(|| ApiError::protocol(""))?;
                enforce(cfg.insert(k.to_string(), v.to_string()).is_none(), "")?;
            }
            let pname = cfg.remove("name").ok_or_else(|| ApiError::protocol(""))?;
            enforce(
                pname
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
                "",
            )?;
            enforce(ctx.sys.pool(&pname).is_none(), "")?;
            let unexpected: Vec<&String> = cfg
                .keys()
                .filter(|k| !params.contains(&k.as_str()))
                .collect();
            if !unexpected.is_empty() {
                return Err(ApiError::exc(
                    "QubesException",
                    format!(
                        "unexpected driver options: {}",
                        unexpected
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                ));
            }
            cfg.insert("name".into(), pname.clone());
            cfg.insert("driver".into(), r.arg.to_string());
            ctx.sys.pools.push(crate::model::Pool {
                name: pname,
                config: cfg,
            });
            ok()
        }
        "admin.pool.Remove" => {
            enforce(known(ctx), "")?;
            let used = ctx
                .sys
                .qubes
                .iter()
                .any(|q| q.volumes.iter().any(|v| v.pool == r.arg));
            if used {
                return Err(ApiError::exc(
                    "QubesPoolInUseError",
                    format!("Storage pool is in use: {}", r.arg),
                ));
            }
            for suffix in ["", "_kernel", "_private", "_root", "_volatile"] {
                let prop = format!("default_pool{suffix}");
                if ctx.sys.global_get(&prop)?.as_ref().and_then(Val::as_str) == Some(r.arg) {
                    return Err(ApiError::exc(
                        "QubesPoolInUseError",
                        format!("Storage pool is in use: set as {prop}"),
                    ));
                }
            }
            ctx.sys.pools.retain(|p| p.name != r.arg);
            ok()
        }
        "admin.pool.Set.revisions_to_keep" => {
            enforce(known(ctx), "")?;
            let n = validate_number(r.payload, true)?;
            enforce(n >= -1, "Invalid value for revisions_to_keep")?;
            set_pool_cfg(ctx, r.arg, "revisions_to_keep", n.to_string());
            ok()
        }
        "admin.pool.Set.ephemeral_volatile" => {
            enforce(known(ctx), "")?;
            let v = bool_payload(r.payload)?;
            set_pool_cfg(
                ctx,
                r.arg,
                "ephemeral_volatile",
                if v { "True" } else { "False" }.into(),
            );
            ok()
        }
        other => Err(ApiError::protocol(format!("no such method: '{other}'"))),
    }
}

fn set_pool_cfg(ctx: &mut Context<'_>, pool: &str, key: &str, v: String) {
    if let Some(p) = ctx.sys.pools.iter_mut().find(|p| p.name == pool) {
        p.config.insert(key.into(), v);
    }
}

/// `validate_number`/`validate_size`.
fn validate_number(raw: &[u8], allow_negative: bool) -> ApiResult<i64> {
    let (neg, digits) = match raw.strip_prefix(b"-") {
        Some(d) if allow_negative => (true, d),
        _ => (false, raw),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ApiError::protocol("Size contains non ASCII digits"));
    }
    if digits.len() >= 20 {
        return Err(ApiError::protocol("Size is bigger than 19 decimal digits"));
    }
    if digits.first() == Some(&b'0') && digits != b"0" {
        return Err(ApiError::protocol("Size contains spurious leading zeros"));
    }
    let n: i64 = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::protocol("Size out of range"))?;
    Ok(if neg { -n } else { n })
}

fn bool_payload(raw: &[u8]) -> ApiResult<bool> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| pyval::parse_bool(s).ok())
        .ok_or_else(|| ApiError::protocol("Invalid value"))
}

fn volume_dir(q: &Qube) -> &'static str {
    match q.class {
        VmClass::TemplateVM => "vm-templates",
        VmClass::DispVM => "appvms",
        _ => "appvms",
    }
}

fn volume_vid(sys: &System, q: &Qube, vol: &str) -> String {
    if vol == "kernel" {
        return sys
            .find(&q.name)
            .and_then(|qi| sys.get(qi, "kernel").ok().flatten())
            .map(|v| sys.show(&v))
            .unwrap_or_default();
    }
    format!("{}/{}/{vol}", volume_dir(q), q.name)
}

fn volume(ctx: &mut Context<'_>, r: &Req<'_>) -> Out {
    let qi = r.dest;
    let q = ctx.sys.qube(qi).clone();
    if r.method == "admin.vm.volume.List" {
        return value(lines(q.volumes.iter().map(|v| v.name.as_str())));
    }
    let Some(vi) = q.volumes.iter().position(|v| v.name == r.arg) else {
        return Err(ApiError::denied(format!(
            "Argument not in '{} volumes'",
            q.name
        )));
    };
    let vol = q
        .volumes
        .get(vi)
        .cloned()
        .ok_or_else(|| ApiError::abort("volume index"))?;
    match r.method {
        "admin.vm.volume.Info" => {
            let source = if vol.snap_on_start {
                let src = match q.class {
                    VmClass::DispVM if vol.name == "private" => ctx.sys.template_of(qi),
                    VmClass::DispVM => ctx.sys.template_of(qi).and_then(|t| ctx.sys.template_of(t)),
                    _ => ctx.sys.template_of(qi),
                };
                src.map(|t| volume_vid(ctx.sys, ctx.sys.qube(t), &vol.name))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let vid = volume_vid(ctx.sys, &q, &vol.name);
            let path = if vol.name == "kernel" {
                format!("/var/lib/qubes/vm-kernels/{vid}/modules.img")
            } else {
                format!("/var/lib/qubes/{vid}.img")
            };
            let py = |b: bool| if b { "True" } else { "False" };
            let mut out = format!(
                "pool={}\nvid={vid}\nsize={}\nusage=0\nrw={}\nsource={source}\npath={path}\nsave_on_stop={}\nsnap_on_start={}\nrevisions_to_keep={}\nephemeral={}\n",
                vol.pool,
                vol.size,
                py(vol.rw),
                py(vol.save_on_stop),
                py(vol.snap_on_start),
                vol.revisions_to_keep,
                py(vol.ephemeral),
            );
            if vol.snap_on_start {
                out.push_str("is_outdated=False\n");
            }
            value(out)
        }
        "admin.vm.volume.ListSnapshots" => value(""),
        "admin.vm.volume.Revert" => Err(ApiError::protocol("no such revision")),
        "admin.vm.volume.CloneFrom" => {
            let token: String = (0..32)
                .map(|_| {
                    let c = lifecycle::random_u32() % 62;
                    let c = u8::try_from(c).unwrap_or(0);
                    char::from(match c {
                        0..=9 => b'0' + c,
                        10..=35 => b'a' + c - 10,
                        _ => b'A' + c - 36,
                    })
                })
                .collect();
            ctx.clone_tokens.insert(token.clone(), (q.name, vol.name));
            value(token)
        }
        "admin.vm.volume.CloneTo" => {
            let token = std::str::from_utf8(r.payload)
                .ok()
                .filter(|s| s.is_ascii())
                .ok_or_else(|| ApiError::abort("UnicodeDecodeError in token"))?
                .trim();
            let (src_name, src_vol) = ctx
                .clone_tokens
                .remove(token)
                .ok_or_else(|| ApiError::protocol("invalid token"))?;
            let src = ctx
                .sys
                .find(&src_name)
                .ok_or_else(|| ApiError::protocol("source volume is gone"))?;
            if let Some(sv) = ctx
                .sys
                .qube(src)
                .volumes
                .iter()
                .find(|v| v.name == src_vol)
                .cloned()
                && let Some(dv) = ctx.sys.qube_mut(qi).volumes.get_mut(vi)
            {
                dv.size = dv.size.max(sv.size);
            }
            ctx.host.clone_volume(ctx.sys, src, &src_vol, qi, &vol.name);
            ok()
        }
        "admin.vm.volume.Resize" => {
            let size = validate_number(r.payload.trim_ascii(), false)?;
            let size = u64::try_from(size).map_err(|_| ApiError::protocol("invalid size"))?;
            if size < vol.size {
                return Err(ApiError::exc(
                    "QubesValueError",
                    "For your own safety, shrinking of volume is disabled",
                ));
            }
            if let Some(v) = ctx.sys.qube_mut(qi).volumes.get_mut(vi) {
                v.size = size;
            }
            ok()
        }
        "admin.vm.volume.Clear" => {
            ctx.host.clear_volume(ctx.sys, qi, &vol.name);
            ok()
        }
        "admin.vm.volume.Set.revisions_to_keep" => {
            let n = validate_number(r.payload, true)?;
            enforce(n >= -1, "Invalid value for revisions_to_keep")?;
            if let Some(v) = ctx.sys.qube_mut(qi).volumes.get_mut(vi) {
                v.revisions_to_keep = n;
            }
            ok()
        }
        "admin.vm.volume.Set.rw" | "admin.vm.volume.Set.ephemeral" => {
            let b = bool_payload(r.payload)?;
            if q.is_active() {
                return Err(ApiError::exc(
                    "QubesVMNotHaltedError",
                    format!("Domain is not powered off: '{}'", q.name),
                ));
            }
            if let Some(v) = ctx.sys.qube_mut(qi).volumes.get_mut(vi) {
                if r.method.ends_with(".rw") {
                    v.rw = b;
                } else {
                    v.ephemeral = b;
                }
            }
            ok()
        }
        other => Err(ApiError::protocol(format!("no such method: '{other}'"))),
    }
}

// -------------------------------------------------------------------------
// firewall, notes
// -------------------------------------------------------------------------

fn firewall_set(ctx: &mut Context<'_>, r: &Req<'_>) -> Out {
    let text = std::str::from_utf8(r.payload)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or_else(|| ApiError::abort("UnicodeDecodeError in firewall rules"))?;
    let mut rules = Vec::new();
    for line in firewall::py_splitlines(text) {
        rules.push(firewall::parse_rule(line)?);
    }
    ctx.sys.qube_mut(r.dest).firewall = Some(rules);
    ok()
}

fn notes_set(ctx: &mut Context<'_>, r: &Req<'_>) -> Out {
    if r.payload.len() > 256_000 {
        return Err(ApiError::protocol(format!(
            "Maximum note size is 256000 bytes ({} bytes received)",
            r.payload.len()
        )));
    }
    let text = std::str::from_utf8(r.payload)
        .map_err(|e| ApiError::protocol(format!("Unable to sanitise qube notes: {e}")))?;
    let clean: String = text
        .chars()
        .map(|c| {
            if c == '\t' || c == '\n' || !(c.is_control() || is_unsafe_for_display(c)) {
                c
            } else {
                '_'
            }
        })
        .collect();
    ctx.sys.qube_mut(r.dest).notes = clean;
    ok()
}

/// Code points a terminal or GUI must not be handed: bidi overrides,
/// zero-width and other format characters, private use, unassigned planes.
fn is_unsafe_for_display(c: char) -> bool {
    matches!(c as u32,
        0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB
        | 0xE000..=0xF8FF | 0xF0000..=0x10FFFF | 0xE0000..=0xE007F)
}

/// Used by tests and the simulator: the property type of `prop`.
#[allow(dead_code)]
pub(crate) fn prop_type(sys: &System, qi: usize, prop: &str) -> Option<PropType> {
    sys.prop_def(qi, prop).map(|d| d.ty)
}
