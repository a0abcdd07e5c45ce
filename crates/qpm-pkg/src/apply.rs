//! Running a plan: steps whose dependencies are done run concurrently (at
//! most the client's `max_in_flight` at once). Every step is idempotent, so
//! re-running a plan computed after an interruption finishes the job.

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex};

use qpm_admin::{Client, ExceptionKind, ShutdownOptions};

use crate::Error;
use crate::plan::{Op, Plan, Step};
use crate::record::RECORD_FEATURE;
use crate::state::policy_file;

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Done,
    /// Failed with this message.
    Failed(String),
    /// Not run (a step it depends on failed, or the run stopped).
    Skipped,
}

/// Hooks called around each step (progress display, journal).
pub trait Observer: Sync {
    /// Before a step's calls; the journal records creations here.
    fn starting(&self, _step: &Step) {}
    /// After a step.
    fn finished(&self, _step: &Step, _outcome: &Outcome) {}
}

/// An observer that does nothing.
pub struct Quiet;
impl Observer for Quiet {}

struct Sched {
    outcome: Vec<Option<Outcome>>,
    started: Vec<bool>,
    running: usize,
    failed: bool,
}

/// Runs `plan`; one outcome per step, in step order.
pub fn apply(client: &Client, plan: &Plan, obs: &dyn Observer) -> Vec<Outcome> {
    let n = plan.steps.len();
    let sched = Mutex::new(Sched {
        outcome: vec![None; n],
        started: vec![false; n],
        running: 0,
        failed: false,
    });
    let cv = Condvar::new();
    let workers = client.max_in_flight().min(n).max(1);
    let lock = || sched.lock().unwrap_or_else(|e| e.into_inner());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let mut g = lock();
                    let pick = loop {
                        if g.failed {
                            break None;
                        }
                        // skip steps whose dependencies failed
                        let ready = (0..n).find(|&i| {
                            !g.started[i]
                                && plan.steps[i].deps.iter().all(|&d| {
                                    g.outcome.get(d).is_some_and(|o| *o == Some(Outcome::Done))
                                })
                        });
                        if let Some(i) = ready {
                            g.started[i] = true;
                            g.running += 1;
                            break Some(i);
                        }
                        if g.started.iter().all(|s| *s) || g.running == 0 {
                            break None;
                        }
                        g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
                    };
                    drop(g);
                    let Some(i) = pick else {
                        cv.notify_all();
                        return;
                    };
                    let step = &plan.steps[i];
                    obs.starting(step);
                    let outcome = match run_step(client, &plan.package, step) {
                        Ok(()) => Outcome::Done,
                        Err(e) => Outcome::Failed(e.to_string()),
                    };
                    obs.finished(step, &outcome);
                    let mut g = lock();
                    if outcome != Outcome::Done {
                        g.failed = true;
                    }
                    g.outcome[i] = Some(outcome);
                    g.running -= 1;
                    drop(g);
                    cv.notify_all();
                }
            });
        }
    });
    sched
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .outcome
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Skipped))
        .collect()
}

fn tolerate(r: qpm_admin::Result<()>, kinds: &[ExceptionKind]) -> qpm_admin::Result<()> {
    match r {
        Err(e) if kinds.iter().any(|k| e.is(*k)) => Ok(()),
        r => r,
    }
}

/// Runs one step; each is idempotent (a repeat after a crash is harmless).
pub fn run_step(client: &Client, package: &str, step: &Step) -> Result<(), Error> {
    let q = step.qube.as_deref().unwrap_or("dom0");
    match &step.op {
        Op::Create {
            class,
            template,
            label,
        } => {
            match client.create(class, q, label, template.as_deref()) {
                Err(e) if e.is(ExceptionKind::VmAlreadyExists) => {
                    // Our own creation before a crash is in scope; a qube this
                    // management qube cannot see is someone else's.
                    if client.tags(q).is_err_and(|e| e.is_denied()) {
                        return Err(Error::Plan(format!(
                            "name collision: a qube named `{q}` already exists outside this \
                             management qube's scope (created elsewhere, so it could not be \
                             seen when planning); rename the package's qube, or have dom0 hand \
                             it over with `qpm-dom0 adopt {q} --package {package}`; the qubes \
                             created so far are recorded: run the command again or \
                             `qpm remove {package}`"
                        )));
                    }
                }
                r => r?,
            }
        }
        Op::TagPackage { tag } | Op::AddTag { tag } => client.add_tag(q, tag)?,
        Op::RemoveTag { tag } => {
            client.remove_tag(q, tag)?;
        }
        Op::CloneVolume { from, volume } => {
            let token = client.volume_clone_from(from, volume)?;
            client.volume_clone_to(q, volume, &token)?;
        }
        Op::SetProperty { name, value } => client.set_property(Some(q), name, value)?,
        Op::ResetProperty { name } => client.reset_property(Some(q), name)?,
        Op::SetFeature { name, value } => client.set_feature(q, name, value)?,
        Op::RemoveFeature { name } => {
            client.remove_feature(q, name)?;
        }
        Op::SetFirewall { rules } => client.set_firewall(q, rules)?,
        Op::ResizeVolume { volume, size } => client.volume_resize(q, volume, *size)?,
        Op::Record { value, .. } => client.set_feature(q, RECORD_FEATURE, value)?,
        Op::Shutdown => tolerate(
            client.shutdown(
                q,
                ShutdownOptions {
                    force: false,
                    wait: true,
                },
            ),
            &[ExceptionKind::VmNotRunning, ExceptionKind::VmNotStarted],
        )?,
        Op::Remove => tolerate(client.remove(q), &[ExceptionKind::VmNotFound]).map_err(|e| {
            if e.is(ExceptionKind::VmInUse) {
                Error::Plan(format!(
                    "qubesd refuses to remove `{q}`: {e}; point the qubes it names elsewhere \
                     (qvm-prefs QUBE netvm/template/default_dispvm ...) and run `qpm remove` again"
                ))
            } else {
                e.into()
            }
        })?,
        Op::SubmitPolicy { text, .. } => submit_policy(client, package, text)?,
        Op::RemovePolicy => remove_policy(client, package)?,
    }
    Ok(())
}

/// Installs the package's policy through the gatekeeper (or `policy.Replace`
/// when its services are absent).
pub fn submit_policy(client: &Client, package: &str, text: &str) -> Result<(), Error> {
    let out = client.call_service(
        "dom0",
        &format!("qpm.PolicySubmit+{package}"),
        text.as_bytes(),
    )?;
    match out.status {
        0 => Ok(()),
        1 => {
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            let mut lines = Vec::new();
            for x in v["violations"].as_array().into_iter().flatten() {
                lines.push(format!(
                    "line {}: {} {}",
                    x["line"].as_u64().map_or("-".to_owned(), |l| l.to_string()),
                    x["rule"].as_str().unwrap_or("?"),
                    x["message"].as_str().unwrap_or("")
                ));
            }
            if lines.is_empty() {
                lines.push(String::from_utf8_lossy(&out.stderr).trim().to_owned());
            }
            Err(Error::PolicyRejected(lines))
        }
        126 | 127 => {
            client.policy_replace(&policy_file(package), false, "any", text.as_bytes())?;
            Ok(())
        }
        s => Err(Error::Plan(format!(
            "qpm.PolicySubmit+{package} failed (exit {s}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Removes the package's policy file (absent: fine).
pub fn remove_policy(client: &Client, package: &str) -> Result<(), Error> {
    let out = client.call_service("dom0", &format!("qpm.PolicyRemove+{package}"), b"")?;
    match out.status {
        0 | 1 => Ok(()),
        126 | 127 => match client.policy_remove(&policy_file(package), false, "any") {
            Ok(()) | Err(qpm_admin::Error::PolicyAdmin { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        },
        s => Err(Error::Plan(format!(
            "qpm.PolicyRemove+{package} failed (exit {s}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Qubes created by the steps of `plan` (for the journal).
pub fn creations(plan: &Plan) -> BTreeSet<String> {
    plan.steps
        .iter()
        .filter(|s| matches!(s.op, Op::Create { .. }))
        .filter_map(|s| s.qube.clone())
        .collect()
}
