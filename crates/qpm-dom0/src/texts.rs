//! The policy files `qpm-dom0` writes: the management qube's Admin API
//! subset and the config qube's sync grants.

/// The base policy file.
pub(crate) const BASE_FILE: &str = "39-qpm-base.policy";
/// The sync grants file.
pub(crate) const SYNC_FILE: &str = "38-qpm-sync.policy";
/// custom-persist slots the config qube may set (`custom-persist.qpm-N`).
pub(crate) const PERSIST_SLOTS: u32 = 32;
/// The gatekeeper's services.
pub(crate) const SERVICES: [&str; 3] = ["qpm.PolicySubmit", "qpm.PolicyGet", "qpm.PolicyRemove"];

/// Global calls (destination dom0).
#[rustfmt::skip]
const GLOBAL: &[&str] = &[
    "admin.vm.List", "admin.vmclass.List", "admin.label.List", "admin.label.Get",
    "admin.label.Index", "admin.property.List", "admin.property.Get", "admin.property.GetAll",
    "admin.property.GetDefault", "admin.pool.List", "admin.vm.Create.AppVM",
    "admin.vm.Create.TemplateVM", "admin.vm.Create.StandaloneVM", "admin.vm.Create.DispVM",
];

/// Read-only calls, allowed on the qubes `mgmt` created and on templates.
#[rustfmt::skip]
const READ: &[&str] = &[
    "admin.vm.List", "admin.vm.property.List", "admin.vm.property.Get",
    "admin.vm.property.GetAll", "admin.vm.property.GetDefault", "admin.vm.feature.List",
    "admin.vm.feature.Get", "admin.vm.feature.CheckWithTemplate", "admin.vm.tag.List",
    "admin.vm.tag.Get", "admin.vm.volume.List", "admin.vm.volume.Info", "admin.vm.CurrentState",
    "admin.vm.firewall.Get",
];

/// Changing calls, allowed only on the qubes `mgmt` created.
#[rustfmt::skip]
const WRITE: &[&str] = &[
    "admin.vm.property.Set", "admin.vm.property.Reset", "admin.vm.feature.Set",
    "admin.vm.feature.Remove", "admin.vm.tag.Set", "admin.vm.tag.Remove",
    "admin.vm.firewall.Set", "admin.vm.firewall.Reload", "admin.vm.volume.Resize",
    "admin.vm.volume.CloneFrom", "admin.vm.volume.CloneTo", "admin.vm.Start",
    "admin.vm.Shutdown", "admin.vm.Kill", "admin.vm.Pause", "admin.vm.Unpause",
    "admin.vm.Remove",
];

/// The management qube's policy: create qubes; read and change only the
/// qubes it created; read templates (and copy their root volume); submit
/// package policies to the gatekeeper; push its packages' files
/// (`qpm.SyncConfig`, as the user) into the qubes it created. Nothing else.
pub(crate) fn base_policy(mgmt: &str) -> String {
    let mut s = format!(
        "# qpm: what the management qube `{mgmt}` may do. Written by `qpm-dom0 init`;\n\
         # `qpm-dom0 uninstall` removes it. Do not edit: re-run init instead.\n\n"
    );
    for m in GLOBAL {
        s += &format!("{m} * {mgmt} @adminvm allow target=dom0\n");
    }
    for m in READ.iter().chain(WRITE) {
        s += &format!("{m} * {mgmt} @tag:created-by-{mgmt} allow target=dom0\n");
    }
    for m in READ {
        s += &format!("{m} * {mgmt} @type:TemplateVM allow target=dom0\n");
    }
    s += &format!("admin.vm.volume.CloneFrom +root {mgmt} @type:TemplateVM allow target=dom0\n");
    s += &format!("qpm.SyncConfig * {mgmt} @tag:created-by-{mgmt} allow\n");
    for svc in SERVICES {
        s += &format!("{svc} * {mgmt} @adminvm allow\n");
    }
    s
}

/// Grants of the config qube `cfg` on `qube`: `qpm.SyncConfig` (asked or
/// allowed, as user or root), and the custom-persist slot features.
pub(crate) fn grant(cfg: &str, qube: &str, ask: bool, root: bool) -> String {
    let action = if ask { "ask default_target=" } else { "allow" };
    let action = if ask {
        format!("{action}{qube}")
    } else {
        action.to_owned()
    };
    let user = if root { " user=root" } else { "" };
    let mut s = format!("# grant {qube}\nqpm.SyncConfig * {cfg} {qube} {action}{user}\n");
    s += &format!("admin.vm.List * {cfg} {qube} allow target=dom0\n");
    s += &format!("admin.vm.tag.List * {cfg} {qube} allow target=dom0\n");
    s += &format!("admin.vm.feature.Get * {cfg} {qube} allow target=dom0\n");
    for n in 0..PERSIST_SLOTS {
        for m in ["Set", "Remove"] {
            s += &format!(
                "admin.vm.feature.{m} +custom-persist.qpm-{n} {cfg} {qube} allow target=dom0\n"
            );
        }
    }
    s
}

/// The grant blocks of a sync grants file: (qube, block text).
pub(crate) fn blocks(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(q) = line.strip_prefix("# grant ") {
            out.push((q.to_owned(), String::new()));
        }
        if let Some((_, block)) = out.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    out
}

/// The grants file for `cfg` and these grant blocks, in order.
pub(crate) fn sync_file(cfg: &str, blocks: &[(String, String)]) -> String {
    let mut s = format!(
        "# qpm: what the config qube `{cfg}` may sync into. Written by\n\
         # `qpm-dom0 sync-grant` / `sync-revoke`. Do not edit.\n"
    );
    for (_, b) in blocks {
        s.push_str(b);
    }
    s
}
