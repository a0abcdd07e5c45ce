//! The conformance case format of `conformance/policy/` (JSON Lines): one
//! policy directory, system and request per case, one decision out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::eval::{Decision, Request};
use crate::load::{LoadError, LoadOptions};
use crate::parse::ErrorKind;
use crate::policy::{Policy, RuleRef};
use crate::source::MemorySource;
use crate::system::System;

/// The request of a case.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Query {
    /// Service name.
    pub service: String,
    /// Argument with its leading `+`.
    pub argument: String,
    /// Calling qube.
    pub source: String,
    /// Target as the caller asked.
    pub target: String,
}

/// One case. Only the inputs are read (`expect` is ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    /// Case id, echoed in the output.
    pub id: String,
    /// The policy directory: relative path to content.
    pub files: BTreeMap<String, String>,
    /// Directories that exist (besides parents of files).
    #[serde(default)]
    pub dirs: Vec<String>,
    /// The qubes.
    pub system: System,
    /// The call.
    pub query: Query,
}

impl Case {
    /// The case's policy directory as an in-memory source.
    pub fn source(&self) -> MemorySource {
        let mut src = MemorySource::new();
        for d in &self.dirs {
            src.insert_dir(d);
        }
        for (k, v) in &self.files {
            src.insert_file(k, v.as_bytes());
        }
        src
    }

    /// Loads the policy and decides the query.
    pub fn run(&self) -> Result<Decision, LoadError> {
        let policy = Policy::load(&self.source(), &LoadOptions::default())?;
        let q = &self.query;
        Ok(policy.evaluate(
            &Request::new(&q.service, &q.argument, &q.source, &q.target),
            &self.system,
        ))
    }
}

fn rule_json(r: Option<&RuleRef>) -> Value {
    match r {
        Some(r) => json!({"file": &*r.file, "line": (r.line != 0).then_some(r.line)}),
        None => Value::Null,
    }
}

/// A decision in the output schema of the conformance README (without `id`).
pub fn decision_json(d: &Decision) -> Value {
    match d {
        Decision::Allow(a) => json!({
            "result": "allow",
            "target": a.target,
            "target_uuid": a.target_uuid,
            "user": a.user,
            "autostart": a.autostart,
            "notify": a.notify,
            "requested_target": a.requested_target,
            "rule": rule_json(Some(&a.rule)),
        }),
        Decision::Ask(a) => json!({
            "result": "ask",
            "targets_for_ask": a.targets,
            "default_target": a.default_target,
            "user": a.user,
            "autostart": a.autostart,
            "notify": a.notify,
            "requested_target": a.requested_target,
            "rule": rule_json(Some(&a.rule)),
        }),
        Decision::Deny(x) => json!({
            "result": "deny",
            "deny_reason": x.reason.as_str(),
            "notify": x.notify,
            "rule": rule_json(x.rule.as_ref()),
        }),
    }
}

/// A load error in the output schema (`result: "error"`).
pub fn error_json(e: &LoadError) -> Value {
    json!({
        "result": "error",
        "error_kind": if e.kind == ErrorKind::InvalidFilename { "invalid_filename" } else { "syntax" },
        "error_file": &*e.file,
        "error_line": e.line,
        "error_detail": e.kind.as_str(),
        "error_message": e.message,
    })
}

/// Runs one case line (JSON) and returns the output line's object, with
/// `id`. A line that is not a valid case gives `Err` with the reason.
pub fn run_line(line: &str) -> Result<Value, String> {
    let case: Case = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let mut out = match case.run() {
        Ok(d) => decision_json(&d),
        Err(e) => error_json(&e),
    };
    if let Value::Object(m) = &mut out {
        m.insert("id".to_owned(), Value::String(case.id));
    }
    Ok(out)
}
