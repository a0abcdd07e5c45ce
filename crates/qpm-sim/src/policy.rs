//! Policy decisions for the router and the Admin API filters, behind a small
//! trait, plus the simulator's base policy.

use std::path::Path;

use crate::api::AdminFilter;
use crate::model::System;

/// A qrexec call to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRequest<'a> {
    /// Calling qube.
    pub source: &'a str,
    /// Target as the caller wrote it (`work`, `dom0`, `@adminvm`, `@dispvm:x`, `""`).
    pub target: &'a str,
    /// Service name.
    pub service: &'a str,
    /// Argument with its leading `+` (`+` alone: none).
    pub argument: &'a str,
}

/// What policy decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go to `target` (`dom0`, a qube, or `@dispvm:<template>`).
    Allow {
        /// Effective target.
        target: String,
        /// `user=`.
        user: Option<String>,
        /// Whether the target may be started.
        autostart: bool,
        /// The caller's target after normalisation.
        requested_target: String,
    },
    /// Ask the user to pick one of `targets`.
    Ask {
        /// Choices.
        targets: Vec<String>,
        /// Preselected choice.
        default_target: Option<String>,
        /// `user=`.
        user: Option<String>,
        /// Whether the target may be started.
        autostart: bool,
        /// The caller's target after normalisation.
        requested_target: String,
    },
    /// Refused.
    Deny {
        /// Why (for the log).
        reason: String,
    },
}

/// The policy engine as the simulator uses it.
pub trait PolicyEngine: Send + Sync {
    /// Decides one call against the current policy and system.
    fn evaluate(&self, sys: &System, req: &PolicyRequest<'_>) -> Decision;

    /// Checks that the policy directory `dir` would still load with `key`
    /// replaced by `content` (removed with `None`); the error text says what
    /// fails and where.
    fn validate_change(&self, dir: &Path, key: &str, content: Option<&[u8]>) -> Result<(), String>;
}

/// The engine used by `qpm-sim serve`: `qpm-policy` on the policy
/// directory `dir` (`<state>/policy.d`), reloaded when a file changes.
pub fn default_engine(dir: &Path) -> std::sync::Arc<dyn PolicyEngine> {
    std::sync::Arc::new(crate::policy_engine::DirPolicy::new(dir))
}

/// Refuses every call (no policy files are consulted).
pub struct DenyAll;

impl PolicyEngine for DenyAll {
    fn evaluate(&self, _: &System, _: &PolicyRequest<'_>) -> Decision {
        Decision::Deny {
            reason: "no policy engine".into(),
        }
    }
    fn validate_change(&self, _: &Path, _: &str, _: Option<&[u8]>) -> Result<(), String> {
        Err("no policy engine".into())
    }
}

/// Admin API visibility from a policy engine (ask counts as deny).
pub struct EngineFilter<P: PolicyEngine>(pub P);

impl<P: PolicyEngine> AdminFilter for EngineFilter<P> {
    fn allows(&self, sys: &System, source: &str, service: &str, arg: &str, target: &str) -> bool {
        let req = PolicyRequest {
            source,
            target,
            service,
            argument: arg,
        };
        matches!(self.0.evaluate(sys, &req), Decision::Allow { .. })
    }
}

/// Every `admin.*` method a management qube may call on its own qubes.
pub(crate) const MGMT_LOCAL_METHODS: &[&str] = &[
    "admin.vm.property.List",
    "admin.vm.property.Get",
    "admin.vm.property.GetAll",
    "admin.vm.property.GetDefault",
    "admin.vm.property.Help",
    "admin.vm.property.Set",
    "admin.vm.property.Reset",
    "admin.vm.feature.List",
    "admin.vm.feature.Get",
    "admin.vm.feature.CheckWithTemplate",
    "admin.vm.feature.CheckWithNetvm",
    "admin.vm.feature.CheckWithAdminVM",
    "admin.vm.feature.CheckWithTemplateAndAdminVM",
    "admin.vm.feature.Set",
    "admin.vm.feature.Remove",
    "admin.vm.tag.List",
    "admin.vm.tag.Get",
    "admin.vm.tag.Set",
    "admin.vm.tag.Remove",
    "admin.vm.volume.List",
    "admin.vm.volume.Info",
    "admin.vm.volume.ListSnapshots",
    "admin.vm.volume.CloneFrom",
    "admin.vm.volume.CloneTo",
    "admin.vm.volume.Resize",
    "admin.vm.firewall.Get",
    "admin.vm.firewall.Set",
    "admin.vm.firewall.Reload",
    "admin.vm.notes.Get",
    "admin.vm.notes.Set",
    "admin.vm.Start",
    "admin.vm.Shutdown",
    "admin.vm.Kill",
    "admin.vm.Pause",
    "admin.vm.Unpause",
    "admin.vm.CurrentState",
    "admin.vm.Remove",
    "admin.vm.List",
];

/// Read-only methods a management qube may call on templates.
pub(crate) const READ_ONLY_METHODS: &[&str] = &[
    "admin.vm.List",
    "admin.vm.property.List",
    "admin.vm.property.Get",
    "admin.vm.property.GetAll",
    "admin.vm.property.GetDefault",
    "admin.vm.feature.List",
    "admin.vm.feature.Get",
    "admin.vm.feature.CheckWithTemplate",
    "admin.vm.tag.List",
    "admin.vm.tag.Get",
    "admin.vm.volume.List",
    "admin.vm.volume.Info",
    "admin.vm.CurrentState",
];

/// Global (dom0-destination) methods the management qube may call.
pub(crate) const MGMT_GLOBAL_METHODS: &[&str] = &[
    "admin.vm.List",
    "admin.vmclass.List",
    "admin.label.List",
    "admin.label.Get",
    "admin.label.Index",
    "admin.property.List",
    "admin.property.Get",
    "admin.property.GetAll",
    "admin.property.GetDefault",
    "admin.pool.List",
    "admin.vm.Create.AppVM",
    "admin.vm.Create.DispVM",
    "admin.vm.Create.StandaloneVM",
    "admin.vm.Create.TemplateVM",
    "admin.vm.CreateInPool.AppVM",
    "admin.vm.CreateInPool.DispVM",
    "admin.vm.CreateInPool.StandaloneVM",
    "admin.vm.CreateInPool.TemplateVM",
    "admin.Events",
];

/// Policy admin services the management qube may use.
pub(crate) const POLICY_SERVICES: &[&str] = &[
    "policy.List",
    "policy.Get",
    "policy.Replace",
    "policy.Remove",
    "policy.include.List",
    "policy.include.Get",
    "policy.include.Replace",
    "policy.include.Remove",
    "policy.GetFiles",
];

/// The base policy of a fresh simulator (file `30-qpm-sim-base.policy`):
/// `mgmt` may create qubes and manage only the ones tagged
/// `created-by-mgmt`, read templates, use the policy admin services, and
/// push packages' files into its qubes (`qpm.SyncConfig`).
pub fn base_policy_text() -> String {
    let mut out = String::from(
        "# Base policy of the simulated dom0 (qpm-sim).\n\
         # The management qube `mgmt` may create qubes, manage the qubes it\n\
         # created (tag created-by-mgmt), read templates, edit policy, and\n\
         # push packages' files into its qubes.\n\n",
    );
    for m in MGMT_GLOBAL_METHODS {
        out.push_str(&format!("{m} * mgmt @adminvm allow target=dom0\n"));
    }
    out.push('\n');
    for m in MGMT_LOCAL_METHODS {
        out.push_str(&format!(
            "{m} * mgmt @tag:created-by-mgmt allow target=dom0\n"
        ));
    }
    out.push('\n');
    for m in READ_ONLY_METHODS {
        out.push_str(&format!("{m} * mgmt @type:TemplateVM allow target=dom0\n"));
    }
    out.push('\n');
    out.push_str("admin.Events * mgmt @tag:created-by-mgmt allow target=dom0\n");
    out.push_str("admin.Events * mgmt @type:TemplateVM allow target=dom0\n\n");
    // packages' files, as `qpm-dom0 init` grants them
    out.push_str("qpm.SyncConfig * mgmt @tag:created-by-mgmt allow\n\n");
    for s in POLICY_SERVICES {
        out.push_str(&format!("{s} * mgmt @adminvm allow\n"));
    }
    out
}

/// Writes the base policy into a fresh policy directory.
pub fn write_base_policy(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("30-qpm-sim-base.policy");
    if !path.exists() {
        crate::store::atomic_write(&path, base_policy_text().as_bytes(), 0o644)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_policy_lines_have_five_fields_at_least() {
        for line in base_policy_text().lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            assert!(line.split_whitespace().count() >= 5, "{line}");
        }
    }
}
