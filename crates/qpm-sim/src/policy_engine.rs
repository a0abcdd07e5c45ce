//! The qrexec policy engine (`qpm-policy`) behind the simulator's
//! [`PolicyEngine`] trait: the policy directory is reloaded when one of its
//! files changes ([`qpm_policy::PolicyCache`]), and the system description
//! is rebuilt when the state changes (its generation counter moves).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::model::{System, Val, VmClass};
use crate::policy::{Decision, PolicyEngine, PolicyRequest};

/// Policy from a directory, evaluated by `qpm-policy`.
pub struct DirPolicy {
    cache: Mutex<qpm_policy::PolicyCache>,
    system: Mutex<Option<(u64, Arc<qpm_policy::System>)>>,
}

impl DirPolicy {
    /// Policy from `dir` (`<state>/policy.d`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            cache: Mutex::new(qpm_policy::PolicyCache::new(dir)),
            system: Mutex::new(None),
        }
    }

    fn system(&self, sys: &System) -> Arc<qpm_policy::System> {
        let mut cache = self.system.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((generation, s)) = cache.as_ref()
            && *generation == sys.generation
        {
            return s.clone();
        }
        let s = Arc::new(policy_system(sys));
        *cache = Some((sys.generation, s.clone()));
        s
    }

    /// The policy as the directory is now; a directory that does not load
    /// refuses every call, as qrexec does.
    pub fn policy(&self) -> Result<Arc<qpm_policy::Policy>, String> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get().map_err(|e| {
            tracing::error!("policy does not load, every call is refused: {e}");
            e.to_string()
        })
    }
}

/// The system as policy sees it: every qube with its class, tags,
/// disposable settings, power state, UUID and `internal` feature.
pub fn policy_system(sys: &System) -> qpm_policy::System {
    let mut out = qpm_policy::System::new();
    for (qi, q) in sys.qubes.iter().enumerate() {
        let mut d = qpm_policy::Domain::new(q.name.clone(), q.class.name());
        d.tags = q.tags.iter().cloned().collect();
        d.template_for_dispvms = q.class.can_be_dvm_template()
            && sys
                .get(qi, "template_for_dispvms")
                .ok()
                .flatten()
                .is_some_and(|v| v.truthy());
        d.default_dispvm = match sys.get(qi, "default_dispvm").ok().flatten() {
            Some(Val::Vm(n)) if !n.is_empty() => Some(n),
            _ => None,
        };
        d.power_state = if q.class == VmClass::AdminVM {
            "Running".into()
        } else {
            q.power.word().to_string()
        };
        d.uuid = Some(q.uuid.clone());
        d.internal = q.feature("internal").is_some_and(|v| !v.is_empty());
        out.insert(d);
    }
    out
}

impl PolicyEngine for DirPolicy {
    fn evaluate(&self, sys: &System, req: &PolicyRequest<'_>) -> Decision {
        let policy = match self.policy() {
            Ok(p) => p,
            Err(e) => {
                return Decision::Deny {
                    reason: format!("policy does not load: {e}"),
                };
            }
        };
        let system = self.system(sys);
        let r = qpm_policy::Request::new(req.service, req.argument, req.source, req.target);
        match policy.evaluate(&r, &system) {
            qpm_policy::Decision::Allow(a) => Decision::Allow {
                target: a.target,
                user: a.user,
                autostart: a.autostart,
                requested_target: a.requested_target,
            },
            qpm_policy::Decision::Ask(a) => Decision::Ask {
                targets: a.targets,
                default_target: a.default_target,
                user: a.user,
                autostart: a.autostart,
                requested_target: a.requested_target,
            },
            qpm_policy::Decision::Deny(d) => Decision::Deny {
                reason: match d.rule {
                    Some(r) => format!("{} ({r})", d.reason),
                    None => d.reason.to_string(),
                },
            },
        }
    }

    fn validate_change(&self, dir: &Path, key: &str, content: Option<&[u8]>) -> Result<(), String> {
        qpm_policy::Policy::validate_change(dir, key, content)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
