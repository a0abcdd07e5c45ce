//! The Admin API as qubesd implements it: destination lookup, method
//! dispatch, the generic argument/payload/destination checks, the
//! permission hooks of the admin extension, then each handler.
//!
//! Order of checks for every call (as qubesd):
//! 1. decode the source and the destination (`uuid:` or a valid name,
//!    then lookup); 2. the method must exist; 3. payload wanted/unwanted;
//! 4. argument wanted/unwanted; 5. destination must (not) be dom0;
//! 6. the handler, which fires the permission event at its own point.

mod handlers;

use std::collections::HashMap;

use qpm_wire::Event;

use crate::model::{ApiError, System, VmClass};

pub use handlers::{NoHost, QubeHost};

/// Whether a non-dom0 caller may see a qube / an event: the
/// "just evaluate" policy check the admin extension runs for `admin.vm.List`
/// and `admin.Events` (ask counts as deny).
pub trait AdminFilter: Send + Sync {
    /// Would policy allow `source` to call `service` with `arg` (including
    /// its leading `+`) on `target`?
    fn allows(&self, sys: &System, source: &str, service: &str, arg: &str, target: &str) -> bool;
}

/// A filter that allows everything (conformance replays: calls were already
/// admitted by policy).
pub struct AllowAll;

impl AdminFilter for AllowAll {
    fn allows(&self, _: &System, _: &str, _: &str, _: &str, _: &str) -> bool {
        true
    }
}

/// One call as received.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// Calling qube (name or `uuid:`).
    pub source: &'a [u8],
    /// Method name.
    pub method: &'a [u8],
    /// Destination (name or `uuid:`).
    pub dest: &'a [u8],
    /// Argument (empty if none).
    pub arg: &'a [u8],
    /// Payload.
    pub payload: &'a [u8],
}

/// What a successful call produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A success frame with this value (`None` = empty value).
    Value(Option<String>),
    /// `admin.Events`: keep the connection and stream events. `only` names
    /// the single qube watched (destination other than dom0).
    Events {
        /// The caller.
        source: String,
        /// Single qube watched, if any.
        only: Option<String>,
    },
    /// `admin.vm.Stats`: stream `vm-stats` events.
    Stats {
        /// The caller.
        source: String,
        /// Single qube watched, if any.
        only: Option<String>,
    },
}

/// Result of handling one call.
#[derive(Debug)]
pub struct Handled {
    /// The answer.
    pub result: Result<Response, ApiError>,
    /// Events fired while handling (for `admin.Events` subscribers).
    pub events: Vec<Event>,
    /// Whether the persistent state changed.
    pub mutated: bool,
}

/// Mutable context of the handlers.
pub struct Context<'a> {
    /// The state.
    pub sys: &'a mut System,
    /// Visibility filter for non-dom0 callers.
    pub filter: &'a dyn AdminFilter,
    /// File side effects (qube directories).
    pub host: &'a mut dyn QubeHost,
    /// Test-only control: uuid of the next created qube.
    pub next_uuid: Option<String>,
    /// Pending `admin.vm.volume.CloneFrom` tokens: token → (qube, volume).
    pub clone_tokens: &'a mut HashMap<String, (String, String)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Want {
    Yes,
    No,
    Any,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum DestReq {
    AdminVm,
    NotAdminVm,
    Any,
}

/// The methods this simulator serves, with their generic checks:
/// (name, argument, payload, destination, writes state).
pub(crate) const METHODS: &[(&str, Want, Want, DestReq, bool)] = {
    use DestReq::{AdminVm as D0, Any as DA, NotAdminVm as NV};
    use Want::{Any as A, No as N, Yes as Y};
    &[
        ("admin.vmclass.List", N, N, D0, false),
        ("admin.vm.List", N, N, DA, false),
        ("admin.vm.property.List", N, N, DA, false),
        ("admin.vm.property.Get", Y, N, DA, false),
        ("admin.vm.property.GetAll", N, N, DA, false),
        ("admin.vm.property.GetDefault", Y, N, DA, false),
        ("admin.vm.property.Help", Y, N, DA, false),
        ("admin.vm.property.Set", Y, A, DA, true),
        ("admin.vm.property.Reset", Y, N, DA, true),
        ("admin.property.List", N, N, D0, false),
        ("admin.property.Get", Y, N, D0, false),
        ("admin.property.GetAll", N, N, D0, false),
        ("admin.property.GetDefault", Y, N, D0, false),
        ("admin.property.Help", Y, N, D0, false),
        ("admin.property.Set", Y, A, D0, true),
        ("admin.property.Reset", Y, N, D0, true),
        ("admin.vm.feature.List", N, N, DA, false),
        ("admin.vm.feature.Get", Y, N, DA, false),
        ("admin.vm.feature.CheckWithTemplate", Y, N, DA, false),
        ("admin.vm.feature.CheckWithNetvm", Y, N, DA, false),
        ("admin.vm.feature.CheckWithAdminVM", Y, N, DA, false),
        (
            "admin.vm.feature.CheckWithTemplateAndAdminVM",
            Y,
            N,
            DA,
            false,
        ),
        ("admin.vm.feature.Set", Y, A, DA, true),
        ("admin.vm.feature.Remove", Y, N, DA, true),
        ("admin.vm.tag.List", N, N, DA, false),
        ("admin.vm.tag.Get", Y, N, DA, false),
        ("admin.vm.tag.Set", Y, N, DA, true),
        ("admin.vm.tag.Remove", Y, N, DA, true),
        ("admin.label.List", N, N, D0, false),
        ("admin.label.Get", Y, N, D0, false),
        ("admin.label.Index", Y, N, D0, false),
        ("admin.label.Create", Y, Y, D0, true),
        ("admin.label.Remove", Y, N, D0, true),
        ("admin.pool.List", N, N, D0, false),
        ("admin.pool.ListDrivers", N, N, D0, false),
        ("admin.pool.Info", Y, N, D0, false),
        ("admin.pool.UsageDetails", Y, N, D0, false),
        ("admin.pool.Add", Y, Y, D0, true),
        ("admin.pool.Remove", Y, N, D0, true),
        ("admin.pool.volume.List", Y, N, D0, false),
        ("admin.pool.Set.revisions_to_keep", Y, Y, D0, true),
        ("admin.pool.Set.ephemeral_volatile", Y, Y, D0, true),
        ("admin.vm.volume.List", N, N, DA, false),
        ("admin.vm.volume.Info", Y, N, DA, false),
        ("admin.vm.volume.ListSnapshots", Y, N, DA, false),
        ("admin.vm.volume.Revert", Y, Y, DA, true),
        ("admin.vm.volume.CloneFrom", Y, N, DA, true),
        ("admin.vm.volume.CloneTo", Y, Y, DA, true),
        ("admin.vm.volume.Resize", Y, Y, DA, true),
        ("admin.vm.volume.Clear", Y, N, DA, true),
        ("admin.vm.volume.Set.revisions_to_keep", Y, Y, DA, true),
        ("admin.vm.volume.Set.rw", Y, Y, DA, true),
        ("admin.vm.volume.Set.ephemeral", Y, Y, DA, true),
        ("admin.vm.Start", N, N, NV, true),
        ("admin.vm.Shutdown", A, N, NV, true),
        ("admin.vm.Pause", N, N, NV, true),
        ("admin.vm.Unpause", N, N, NV, true),
        ("admin.vm.Suspend", N, N, NV, true),
        ("admin.vm.Resume", N, N, NV, true),
        ("admin.vm.Kill", N, N, NV, true),
        ("admin.vm.Console", N, N, NV, false),
        ("admin.vm.CurrentState", N, N, DA, false),
        ("admin.vm.Remove", N, N, DA, true),
        ("admin.vm.CreateDisposable", A, A, DA, true),
        ("admin.vm.firewall.Get", N, N, NV, false),
        ("admin.vm.firewall.Set", N, A, NV, true),
        ("admin.vm.firewall.Reload", N, N, NV, false),
        ("admin.vm.notes.Get", N, N, NV, false),
        ("admin.vm.notes.Set", N, A, NV, true),
        ("admin.deviceclass.List", N, N, D0, false),
        ("admin.backup.Execute", Y, N, D0, false),
        ("admin.backup.Cancel", Y, N, D0, false),
        ("admin.backup.Info", Y, N, D0, false),
        ("admin.Events", N, N, DA, false),
        ("admin.vm.Stats", N, N, DA, false),
    ]
};

/// Device classes served (listing only).
pub(crate) const DEVICE_CLASSES: &[&str] = &["block", "mic", "pci", "usb"];

/// Finds a method: a fixed one, a `Create.<class>` / `CreateInPool.<class>`
/// endpoint, or a device listing endpoint.
fn lookup_method(sys: &System, m: &str) -> Option<(Want, Want, DestReq, bool)> {
    if let Some(&(_, a, p, d, w)) = METHODS.iter().find(|(n, ..)| *n == m) {
        return Some((a, p, d, w));
    }
    for prefix in ["admin.vm.Create.", "admin.vm.CreateInPool."] {
        if let Some(class) = m.strip_prefix(prefix)
            && sys.vmclasses.iter().any(|c| c == class)
        {
            return Some((Want::Any, Want::Yes, DestReq::AdminVm, true));
        }
    }
    if let Some(rest) = m.strip_prefix("admin.vm.device.")
        && let Some((class, op)) = rest.split_once('.')
        && DEVICE_CLASSES.contains(&class)
        && matches!(op, "Available" | "Assigned" | "Attached")
    {
        return Some((Want::Any, Want::No, DestReq::Any, false));
    }
    None
}

/// `decode_vm`: a `uuid:` reference or a valid name, then lookup.
pub(crate) fn decode_vm(sys: &System, raw: &[u8]) -> Result<usize, ApiError> {
    let text = std::str::from_utf8(raw)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or_else(|| ApiError::abort("UnicodeDecodeError in qube reference"))?;
    if let Some(u) = text.strip_prefix("uuid:") {
        let shape_ok = text.len() == 41 && uuid_prefix_ok(u);
        if !shape_ok {
            return Err(ApiError::exc(
                "QubesVMInvalidUUIDError",
                format!("VM UUID is not valid: {}", crate::model::pyval::py_repr(u)),
            ));
        }
        let canon = crate::model::pyval::parse_uuid(u)
            .ok_or_else(|| ApiError::abort("ValueError: badly formed hexadecimal UUID string"))?;
        return sys.find_uuid(&canon).ok_or_else(|| {
            ApiError::exc("QubesVMNotFoundError", format!("No such domain: '{text}'"))
        });
    }
    crate::model::pyval::validate_name(text)?;
    sys.find(text)
        .ok_or_else(|| ApiError::exc("QubesVMNotFoundError", format!("No such domain: '{text}'")))
}

/// `\Auuid:[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]*` (a prefix match).
fn uuid_prefix_ok(u: &str) -> bool {
    let b = u.as_bytes();
    let hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let groups = [(0usize, 8usize), (9, 4), (14, 4), (19, 4)];
    for (start, len) in groups {
        match b.get(start..start + len) {
            Some(g) if hex(g) => {}
            _ => return false,
        }
        if b.get(start + len) != Some(&b'-') {
            return false;
        }
    }
    true
}

/// Handles one call.
pub fn handle(ctx: &mut Context<'_>, call: Call<'_>) -> Handled {
    let mut events = Vec::new();
    let mut mutated = false;
    let result = dispatch(ctx, call, &mut events, &mut mutated);
    Handled {
        result,
        events,
        mutated,
    }
}

fn dispatch(
    ctx: &mut Context<'_>,
    call: Call<'_>,
    events: &mut Vec<Event>,
    mutated: &mut bool,
) -> Result<Response, ApiError> {
    let src = decode_vm(ctx.sys, call.source)?;
    let dest = decode_vm(ctx.sys, call.dest)?;
    let arg = std::str::from_utf8(call.arg)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or_else(|| ApiError::abort("UnicodeDecodeError in argument"))?;
    let method = std::str::from_utf8(call.method)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or_else(|| ApiError::abort("UnicodeDecodeError in method"))?;
    let Some((want_arg, want_payload, dest_req, writes)) = lookup_method(ctx.sys, method) else {
        return Err(ApiError::protocol(format!("no such method: '{method}'")));
    };
    match (want_payload, call.payload.is_empty()) {
        (Want::Yes, true) => return Err(ApiError::protocol("expected payload")),
        (Want::No, false) => return Err(ApiError::protocol("unexpected payload")),
        _ => {}
    }
    match (want_arg, arg.is_empty()) {
        (Want::Yes, true) => return Err(ApiError::protocol("expected an argument")),
        (Want::No, false) => return Err(ApiError::protocol("unexpected argument")),
        _ => {}
    }
    let dest_is_dom0 = ctx.sys.qube(dest).class == VmClass::AdminVM;
    match (dest_req, dest_is_dom0) {
        (DestReq::AdminVm, false) => {
            return Err(ApiError::protocol("expected destination to be AdminVM"));
        }
        (DestReq::NotAdminVm, true) => {
            return Err(ApiError::protocol("expected destination to not be AdminVM"));
        }
        _ => {}
    }
    let req = handlers::Req {
        src,
        dest,
        method,
        arg,
        payload: call.payload,
    };
    let out = handlers::run(ctx, &req, events);
    if writes && out.is_ok() {
        *mutated = true;
    }
    // some failed writes still changed state (e.g. a qube added then
    // refused): be conservative
    if writes && out.is_err() && !events.is_empty() {
        *mutated = true;
    }
    out
}

/// Starts a qube by name (and its netvm chain), as qrexec does for a call
/// to a halted target.
pub fn start_qube(
    ctx: &mut Context<'_>,
    name: &str,
    events: &mut Vec<Event>,
) -> Result<(), ApiError> {
    let qi = ctx.sys.find(name).ok_or_else(|| {
        ApiError::exc("QubesVMNotFoundError", format!("No such domain: '{name}'"))
    })?;
    handlers::start(ctx, qi, events, 0).map(|_| ())
}

/// Stops a qube by name (files persisted as at shutdown; a disposable with
/// `auto_cleanup` is removed).
pub fn stop_qube(
    ctx: &mut Context<'_>,
    name: &str,
    events: &mut Vec<Event>,
) -> Result<(), ApiError> {
    let qi = ctx.sys.find(name).ok_or_else(|| {
        ApiError::exc("QubesVMNotFoundError", format!("No such domain: '{name}'"))
    })?;
    if ctx.sys.qube(qi).is_active() {
        handlers::stop(ctx, qi, events);
    }
    Ok(())
}

/// Creates a disposable from `template` for `source` (as
/// `admin.vm.CreateDisposable` does); returns its name.
pub fn new_disposable(
    ctx: &mut Context<'_>,
    source: &str,
    template: &str,
    events: &mut Vec<Event>,
) -> Result<String, ApiError> {
    let src = decode_vm(ctx.sys, source.as_bytes())?;
    let dest = decode_vm(ctx.sys, template.as_bytes())?;
    let req = handlers::Req {
        src,
        dest,
        method: "admin.vm.CreateDisposable",
        arg: "",
        payload: b"",
    };
    match handlers::run(ctx, &req, events)? {
        Response::Value(Some(n)) => Ok(n),
        other => Err(ApiError::abort(format!("unexpected {other:?}"))),
    }
}

#[cfg(test)]
mod tests;
