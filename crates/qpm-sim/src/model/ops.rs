//! Changing the system: property set/reset with qubesd's sanitisation,
//! setters and handlers, in qubesd's order.

use qpm_wire::Event;

use super::pyval::{self, parse_bool, parse_int, py_repr};
use super::schema::{Conv, Kind, PropDef, PropType, VmClass};
use super::system::System;
use super::values::Val;
use super::{ApiError, ApiResult};

/// `property.sanitize(untrusted_newvalue=payload)`.
pub(crate) fn sanitize(def: &PropDef, payload: &[u8]) -> ApiResult<Val> {
    let text = std::str::from_utf8(payload)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or_else(|| ApiError::exc("QubesValueError", "Non-ASCII bytes in property value"))?;
    match def.ty {
        PropType::Vm => {
            if text.is_empty() {
                return Ok(Val::None);
            }
            pyval::validate_name(text)?;
            Ok(Val::Vm(text.to_string()))
        }
        PropType::Bool => parse_bool(text).map(Val::Bool),
        PropType::Int => parse_int(text).map(Val::Int).ok_or_else(|| {
            ApiError::exc("QubesValueError", "Failed to parse property value as int")
        }),
        PropType::Str | PropType::Label => {
            let parsed = match def.conv {
                Conv::Plain => {
                    if !pyval::is_printable(text) {
                        return Err(ApiError::exc(
                            "QubesValueError",
                            "Invalid characters in property value",
                        ));
                    }
                    Some(text.to_string())
                }
                Conv::Ip4 => pyval::parse_ipv4(text),
                Conv::Ip6 => pyval::parse_ipv6(text),
                Conv::Uuid => pyval::parse_uuid(text),
            };
            parsed
                .map(Val::Str)
                .ok_or_else(|| ApiError::exc("QubesValueError", "Failed to parse property value"))
        }
    }
}

fn pve(name: &str, value: &str, msg: impl Into<String>) -> ApiError {
    let msg = msg.into();
    let _ = (name, value);
    ApiError::exc("QubesPropertyValueError", msg)
}

fn positive(name: &str, v: &Val, allow_zero: bool) -> ApiResult<()> {
    if let Val::Int(s) = v {
        let n = pyval::int_value(s);
        if n < 0 || (!allow_zero && n == 0) {
            let what = if allow_zero {
                "must be positive or zero"
            } else {
                "must be positive"
            };
            return Err(pve(name, s, format!("{name} {what}")));
        }
    }
    Ok(())
}

/// Resolves a VM-valued property value (VMProperty.__set__): `None`
/// checks, existence, class. Returns the index of the qube (None for None).
fn resolve_vm(
    sys: &System,
    name: &str,
    v: &Val,
    allow_none: bool,
    vmclass: Option<VmClass>,
) -> ApiResult<Option<usize>> {
    let Val::Vm(target) = v else {
        if allow_none {
            return Ok(None);
        }
        return Err(pve(name, "", format!("Property {name} cannot be None")));
    };
    let Some(ti) = sys.find(target) else {
        return Err(pve(
            name,
            target,
            format!("Can't set {name} to non-existing qube {target}"),
        ));
    };
    if let Some(c) = vmclass {
        let actual = sys.qube(ti).class;
        if actual != c {
            return Err(pve(
                name,
                target,
                format!(
                    "wrong VM class: domains[{}] is of type {} and not {}",
                    py_repr(target),
                    actual.name(),
                    c.name()
                ),
            ));
        }
    }
    Ok(Some(ti))
}

fn has_dvm_template_flag(sys: &System, ti: usize) -> ApiResult<bool> {
    if !sys.qube(ti).class.can_be_dvm_template() {
        return Ok(false);
    }
    Ok(sys
        .get(ti, "template_for_dispvms")?
        .is_some_and(|v| v.truthy()))
}

fn check_keyboard_layout(name: &str, value: &str) -> ApiResult<()> {
    let parts: Vec<&str> = value.split('+').collect();
    let [layout, variant, options] = parts.as_slice() else {
        return Err(pve(
            name,
            value,
            "invalid number of keyboard layout parameters",
        ));
    };
    if layout.is_empty() || !layout.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(pve(name, value, "Invalid keyboard layout provided"));
    }
    if !variant
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(pve(name, value, "Invalid layout variant provided"));
    }
    if !options
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | ','))
    {
        return Err(pve(name, value, "Invalid layout options provided"));
    }
    Ok(())
}

/// `setter_label`: `label-N` by index (a missing or malformed index is an
/// internal error in qubesd), else `get_label`.
fn resolve_label(sys: &System, spec: &str) -> ApiResult<Val> {
    if let Some(idx) = spec.strip_prefix("label-") {
        let n = parse_int(idx).ok_or_else(|| ApiError::abort(format!("ValueError: {idx}")))?;
        let n: u32 = n
            .parse()
            .map_err(|_| ApiError::abort(format!("KeyError: {n}")))?;
        return sys
            .label(n)
            .map(|l| Val::Label(l.index))
            .ok_or_else(|| ApiError::abort(format!("KeyError: {n}")));
    }
    sys.get_label(spec)
        .map(|l| Val::Label(l.index))
        .ok_or_else(|| {
            ApiError::exc(
                "QubesLabelNotFoundError",
                format!("Label does not exist: {spec}"),
            )
        })
}

fn netvm_setter(sys: &System, qi: usize, target: Option<usize>) -> ApiResult<()> {
    let Some(t) = target else { return Ok(()) };
    let tq = sys.qube(t);
    if !tq.class.is_qubesvm() {
        // AdminVM has no provides_network attribute
        return Err(ApiError::abort("AttributeError: provides_network"));
    }
    if !sys.get(t, "provides_network")?.is_some_and(|v| v.truthy()) {
        return Err(ApiError::exc(
            "QubesValueError",
            format!("The {} qube does not provide network", tq.name),
        ));
    }
    if t == qi || sys.vms_connected_to(qi).contains(&t) {
        return Err(ApiError::exc(
            "QubesValueError",
            "Loops in network are unsupported",
        ));
    }
    Ok(())
}

fn tags_follow(sys: &mut System, qi: usize, prop: &str, events: &mut Vec<Event>) -> ApiResult<()> {
    let prefix = match prop {
        "guivm" => "guivm-",
        "audiovm" => "audiovm-",
        _ => return Ok(()),
    };
    if !sys.qube(qi).class.is_qubesvm() {
        return Ok(());
    }
    let new = sys
        .get(qi, prop)?
        .and_then(|v| v.as_vm().map(str::to_string));
    let name = sys.qube(qi).name.clone();
    let q = sys.qube_mut(qi);
    let old: Vec<String> = q
        .tags
        .iter()
        .filter(|t| t.starts_with(prefix))
        .cloned()
        .collect();
    for t in old {
        q.tags.remove(&t);
        events.push(Event::new(&name, format!("domain-tag-delete:{t}")).with("tag", t));
    }
    if let Some(n) = new {
        let t = format!("{prefix}{n}");
        if q.tags.insert(t.clone()) {
            events.push(Event::new(&name, format!("domain-tag-add:{t}")).with("tag", t));
        }
    }
    Ok(())
}

/// Recomputes the guivm/audiovm tags of a newly created qube, silently (as
/// the GUI and audio extensions do at domain-init).
pub(crate) fn init_derived_tags(sys: &mut System, qi: usize) -> ApiResult<()> {
    let mut ignore = Vec::new();
    tags_follow(sys, qi, "guivm", &mut ignore)?;
    tags_follow(sys, qi, "audiovm", &mut ignore)
}

/// `setattr(vm, prop, value)` with the sanitised value.
/// `str(value)` of a property value as an event argument (`None` for
/// Python's `None`).
fn event_str(sys: &System, v: &Val) -> String {
    match v {
        Val::None => "None".into(),
        other => sys.show(other),
    }
}

/// A `property-*` event: `name`, then `newvalue` when given, then
/// `oldvalue` when the property had a value (`has_oldvalue` in
/// `qubes.property`: its current value, default or not).
fn prop_event(
    sys: &System,
    subject: &str,
    event: &str,
    name: &str,
    new: Option<&Val>,
    old: Option<&Val>,
) -> Event {
    let mut e = Event::new(subject, format!("{event}:{name}")).with("name", name);
    if let Some(v) = new {
        e = e.with("newvalue", event_str(sys, v));
    }
    if let Some(v) = old {
        e = e.with("oldvalue", event_str(sys, v));
    }
    e
}

pub(crate) fn set_qube_prop(
    sys: &mut System,
    qi: usize,
    def: &PropDef,
    value: Val,
    events: &mut Vec<Event>,
) -> ApiResult<()> {
    let name = def.name.as_str();
    let class = sys.qube(qi).class;
    let qname = sys.qube(qi).name.clone();
    // VMProperty.__set__ resolves the qube before the generic checks
    let mut vm_target = None;
    if def.ty == PropType::Vm {
        let vmclass = match (class, name) {
            (VmClass::AppVM, "template") => Some(VmClass::TemplateVM),
            _ => None,
        };
        let allow_none = !(name == "template" || (class == VmClass::RemoteVM && name == "relayvm"));
        vm_target = resolve_vm(sys, name, &value, allow_none, vmclass)?;
    }
    if def.kind == Kind::WriteOnce && !sys.is_default(qi, name) {
        return Err(ApiError::abort(format!(
            "property '{name}' is write-once and already set"
        )));
    }
    if def.kind == Kind::Stateless {
        return Err(pve(
            name,
            "",
            format!(
                "property '{name}' on {} instance cannot be set",
                class.name()
            ),
        ));
    }
    let value = match (name, &value) {
        ("label", Val::Str(s)) => resolve_label(sys, s)?,
        (
            "memory" | "vcpus" | "qrexec_timeout" | "shutdown_timeout" | "stubdom_mem",
            Val::Int(_),
        ) => {
            positive(name, &value, false)?;
            value
        }
        ("maxmem", Val::Int(_)) => {
            positive(name, &value, true)?;
            value
        }
        ("qid", Val::Int(s)) => {
            let n = pyval::int_value(s);
            if !(0..=i128::from(sys.max_qid)).contains(&n) {
                return Err(ApiError::abort("ValueError: qid out of range"));
            }
            value
        }
        ("kernel", Val::Str(s)) => {
            if s.contains('/') {
                return Err(pve(name, s, "Kernel name cannot contain '/'"));
            }
            value
        }
        ("kernelopts", Val::Str(s)) => {
            if s.len() > 512 {
                return Err(pve(name, s, "Kernelopts value too long (512 chars max)"));
            }
            value
        }
        ("default_user", Val::Str(s)) => {
            if !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-+,.".contains(c))
            {
                return Err(pve(
                    name,
                    s,
                    "Username can contain only those characters: letters, digits, _-+,.",
                ));
            }
            value
        }
        ("virt_mode", Val::Str(s)) => {
            let l = s.to_ascii_lowercase();
            if !matches!(l.as_str(), "hvm" | "pv" | "pvh") {
                return Err(pve(
                    name,
                    s,
                    "Invalid virtualization mode, supported values: hvm, pv, pvh",
                ));
            }
            Val::Str(l)
        }
        ("keyboard_layout", Val::Str(s)) => {
            check_keyboard_layout(name, s)?;
            value
        }
        ("mac", Val::Str(s)) => {
            let l = s.to_ascii_lowercase();
            let ok = l.len() == 17
                && l.split(':').count() == 6
                && l.split(':')
                    .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
            if !ok {
                return Err(ApiError::abort("ValueError: Invalid MAC address value"));
            }
            Val::Str(l)
        }
        ("netvm", _) => {
            netvm_setter(sys, qi, vm_target)?;
            value
        }
        ("provides_network", Val::Bool(false)) => {
            if !sys.connected_vms(qi).is_empty() {
                return Err(ApiError::exc(
                    "QubesValueError",
                    "The qube is still used by other qubes, change theirs 'netvm' first",
                ));
            }
            value
        }
        ("template", _) if class == VmClass::DispVM => {
            if let Some(t) = vm_target
                && !has_dvm_template_flag(sys, t)?
            {
                return Err(pve(
                    name,
                    "",
                    "template for disposable must have template_for_dispvms=True",
                ));
            }
            value
        }
        ("default_dispvm" | "management_dispvm", _) => {
            if let Some(t) = vm_target
                && !has_dvm_template_flag(sys, t)?
            {
                return Err(pve(
                    name,
                    "",
                    format!("VM set as {name} must have template_for_dispvms=True"),
                ));
            }
            value
        }
        _ => value,
    };
    // `property.__set__`: the old value (default or not), then
    // `property-pre-set` (sent to event listeners before the handlers that
    // may still refuse the change), then the value, then `property-set`
    let old = sys.get(qi, name)?;
    events.push(prop_event(
        sys,
        &qname,
        "property-pre-set",
        name,
        Some(&value),
        old.as_ref(),
    ));
    // pre-set handlers
    match name {
        "template_for_dispvms" if !value.truthy() && !sys.based_on(qi).is_empty() => {
            return Err(ApiError::exc(
                "QubesVMInUseError",
                "Cannot change template_for_dispvms to False while there are some DispVMs based on this DVM template",
            ));
        }
        "template" if sys.based_on(qi).iter().any(|&d| sys.qube(d).is_active()) => {
            return Err(ApiError::exc(
                "QubesVMNotHaltedError",
                "Cannot change template while there are running DispVMs based on this DVM template",
            ));
        }
        "template" if sys.qube(qi).is_active() => {
            return Err(ApiError::exc(
                "QubesVMNotHaltedError",
                format!("Cannot change template while qube is running: '{qname}'"),
            ));
        }
        "netvm" => {
            if let Some(t) = vm_target
                && sys.qube(qi).is_active()
                && !sys.qube(t).is_active()
            {
                return Err(ApiError::exc(
                    "QubesVMNotStartedError",
                    format!(
                        "Cannot dynamically attach to stopped NetVM: '{}'",
                        sys.qube(t).name
                    ),
                ));
            }
        }
        _ => {}
    }
    let set = prop_event(
        sys,
        &qname,
        "property-set",
        name,
        Some(&value),
        old.as_ref(),
    );
    sys.qube_mut(qi).props.insert(name.to_string(), value);
    events.push(set);
    tags_follow(sys, qi, name, events)
}

/// `delattr(vm, prop)`.
pub(crate) fn reset_qube_prop(
    sys: &mut System,
    qi: usize,
    def: &PropDef,
    events: &mut Vec<Event>,
) -> ApiResult<()> {
    let name = def.name.as_str();
    let class = sys.qube(qi).class;
    if def.kind == Kind::WriteOnce && !sys.is_default(qi, name) {
        return Err(ApiError::abort(format!(
            "property '{name}' is write-once and already set"
        )));
    }
    // `property.__delete__`: `property-pre-reset` and `property-pre-del`
    // before the handlers that may refuse, `property-reset` and
    // `property-del` after; `oldvalue` is the current value, default or not
    let qname = sys.qube(qi).name.clone();
    let old = sys.get(qi, name)?;
    if def.kind != Kind::Stateless {
        for ev in ["property-pre-reset", "property-pre-del"] {
            events.push(prop_event(sys, &qname, ev, name, None, old.as_ref()));
        }
    }
    match name {
        "template" if class.has_template() => {
            let msg = match sys
                .global_get("default_template")?
                .and_then(|v| v.as_vm().map(str::to_string))
            {
                Some(d) if class == VmClass::AppVM => format!(
                    "Cannot unset template. You can set it to the current default ({d}) instead"
                ),
                _ => "Cannot unset template".to_string(),
            };
            return Err(ApiError::exc("QubesValueError", msg));
        }
        "netvm" if class.is_qubesvm() => {
            let dflt = sys.default(qi, "netvm")?;
            let target = dflt.as_ref().and_then(Val::as_vm).and_then(|n| sys.find(n));
            netvm_setter(sys, qi, target)?;
        }
        "template_for_dispvms" if !sys.based_on(qi).is_empty() => {
            return Err(ApiError::exc(
                "QubesVMInUseError",
                "Cannot change template_for_dispvms to False while there are some DispVMs based on this DVM template",
            ));
        }
        _ => {}
    }
    sys.qube_mut(qi).props.remove(name);
    if def.kind != Kind::Stateless {
        for ev in ["property-reset", "property-del"] {
            events.push(prop_event(sys, &qname, ev, name, None, old.as_ref()));
        }
    }
    tags_follow(sys, qi, name, events)
}

/// Setting a global property.
pub(crate) fn set_global_prop(
    sys: &mut System,
    def: &PropDef,
    value: Val,
    events: &mut Vec<Event>,
) -> ApiResult<()> {
    let name = def.name.as_str();
    let mut vm_target = None;
    if def.ty == PropType::Vm {
        let vmclass = (name == "default_template").then_some(VmClass::TemplateVM);
        vm_target = resolve_vm(sys, name, &value, true, vmclass)?;
    }
    if def.kind == Kind::Stateless {
        return Err(pve(
            name,
            "",
            format!("property '{name}' on Qubes instance cannot be set"),
        ));
    }
    let value = match (name, &value) {
        (n, Val::Str(s)) if n.starts_with("default_pool") => {
            if sys.pool(s).is_none() {
                return Err(pve(name, s, "No such storage pool"));
            }
            value
        }
        ("default_netvm", _) => {
            if let Some(t) = vm_target {
                for i in 0..sys.qubes.len() {
                    if !sys.qube(i).class.is_qubesvm() || !sys.is_default(i, "netvm") {
                        continue;
                    }
                    if t == i || sys.vms_connected_to(i).contains(&t) {
                        return Err(pve(
                            name,
                            "",
                            format!("Network loop on '{}'", sys.qube(i).name),
                        ));
                    }
                }
            }
            value
        }
        ("default_dispvm" | "management_dispvm", _) => {
            if let Some(t) = vm_target
                && !has_dvm_template_flag(sys, t)?
            {
                return Err(pve(
                    name,
                    "",
                    format!("VM set as {name} must have template_for_dispvms=True"),
                ));
            }
            value
        }
        _ => value,
    };
    let old = sys.global_get(name)?;
    events.push(prop_event(
        sys,
        "",
        "property-pre-set",
        name,
        Some(&value),
        old.as_ref(),
    ));
    // `property-pre-set:default_netvm`: a running default netvm with qubes
    // connected to it is not replaced by one that is not running
    if name == "default_netvm"
        && let Some(t) = vm_target
        && let Some(oi) = old.as_ref().and_then(Val::as_vm).and_then(|n| sys.find(n))
        && sys.qube(oi).is_active()
        && !sys.qube(t).is_active()
        && !sys.vms_connected_to(oi).is_empty()
    {
        return Err(ApiError::exc(
            "QubesVMNotRunningError",
            format!(
                "Cannot change 'default_netvm' to domain that is not running ('{}').",
                sys.qube(t).name
            ),
        ));
    }
    if name == "clockvm"
        && let Some(t) = vm_target
        && sys.qube(t).feature("service.clocksync").is_none()
    {
        let tname = sys.qube(t).name.clone();
        sys.qube_mut(t).set_feature("service.clocksync", "1");
        events.push(
            Event::new(&tname, "domain-feature-set:service.clocksync")
                .with("feature", "service.clocksync")
                .with("value", "1"),
        );
    }
    let set = prop_event(sys, "", "property-set", name, Some(&value), old.as_ref());
    sys.globals.insert(name.to_string(), value.clone());
    if name == "clockvm"
        && old != Some(value)
        && let Some(oi) = old.as_ref().and_then(Val::as_vm).and_then(|n| sys.find(n))
        && sys
            .qube(oi)
            .feature("service.clocksync")
            .is_some_and(|v| !v.is_empty())
    {
        let oname = sys.qube(oi).name.clone();
        sys.qube_mut(oi).remove_feature("service.clocksync");
        events.push(
            Event::new(&oname, "domain-feature-delete:service.clocksync")
                .with("feature", "service.clocksync"),
        );
    }
    events.push(set);
    global_follow(sys, name, events)
}

/// Resetting a global property.
pub(crate) fn reset_global_prop(
    sys: &mut System,
    def: &PropDef,
    events: &mut Vec<Event>,
) -> ApiResult<()> {
    let name = def.name.as_str();
    let old = sys.global_get(name)?;
    let stateless = def.kind == Kind::Stateless;
    if !stateless {
        for ev in ["property-pre-reset", "property-pre-del"] {
            events.push(prop_event(sys, "", ev, name, None, old.as_ref()));
        }
    }
    sys.globals.remove(name);
    if !stateless {
        for ev in ["property-reset", "property-del"] {
            events.push(prop_event(sys, "", ev, name, None, old.as_ref()));
        }
    }
    global_follow(sys, name, events)
}

fn global_follow(sys: &mut System, name: &str, events: &mut Vec<Event>) -> ApiResult<()> {
    let prop = match name {
        "default_guivm" => "guivm",
        "default_audiovm" => "audiovm",
        _ => return Ok(()),
    };
    for i in 0..sys.qubes.len() {
        if sys.qube(i).class.is_qubesvm() && sys.is_default(i, prop) {
            tags_follow(sys, i, prop, events)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_by_type() {
        let d = |ty| PropDef::opaque("x", ty);
        assert_eq!(
            sanitize(&d(PropType::Int), b" 12 ").unwrap(),
            Val::Int("12".into())
        );
        assert!(sanitize(&d(PropType::Int), b"").is_err());
        assert_eq!(sanitize(&d(PropType::Vm), b"").unwrap(), Val::None);
        assert!(sanitize(&d(PropType::Vm), b"bad name").is_err());
        assert!(sanitize(&d(PropType::Str), "caf\u{e9}".as_bytes()).is_err());
        assert!(sanitize(&d(PropType::Str), b"a\x01").is_err());
        assert_eq!(
            sanitize(&d(PropType::Str), b"a b\n").unwrap(),
            Val::Str("a b\n".into())
        );
        assert!(sanitize(&d(PropType::Bool), b"maybe").is_err());
    }

    #[test]
    fn keyboard_layouts() {
        assert!(check_keyboard_layout("k", "us++").is_ok());
        assert!(check_keyboard_layout("k", "de+nodeadkeys+grp:alt_shift_toggle").is_ok());
        assert!(check_keyboard_layout("k", "us+").is_err());
        assert!(check_keyboard_layout("k", "+x+").is_err());
        assert!(check_keyboard_layout("k", "us+a b+").is_err());
    }
}
