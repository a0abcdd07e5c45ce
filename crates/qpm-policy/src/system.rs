//! The system description policy is evaluated against: the qubes, their
//! class, tags, disposable settings, power state and UUID.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::token::ADMIN_VM_UUID;

/// The class of the admin VM.
pub const ADMIN_VM_CLASS: &str = "AdminVM";

/// One qube as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// The qube's name.
    pub name: String,
    /// Its class (`type` in JSON): `AdminVM`, `AppVM`, `TemplateVM`,
    /// `StandaloneVM`, `DispVM`, ...
    pub class: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Whether `@dispvm:<this>` may start a disposable from it.
    pub template_for_dispvms: bool,
    /// What `@dispvm` means when this qube calls.
    pub default_dispvm: Option<String>,
    /// `Running`, `Halted`, `Paused`, ...; only `Running` counts as running.
    pub power_state: String,
    /// Its UUID (without `uuid:`).
    pub uuid: Option<String>,
    /// Internal qubes never appear in `ask` target lists.
    pub internal: bool,
}

impl Domain {
    /// A halted, untagged qube of `class` with no UUID; a qube named `dom0`
    /// starts `Running` with the admin VM's UUID instead.
    pub fn new(name: impl Into<String>, class: impl Into<String>) -> Self {
        let name = name.into();
        let admin = name == "dom0";
        Self {
            class: class.into(),
            tags: Vec::new(),
            template_for_dispvms: false,
            default_dispvm: None,
            power_state: if admin { "Running" } else { "Halted" }.to_owned(),
            uuid: admin.then(|| ADMIN_VM_UUID.to_owned()),
            internal: false,
            name,
        }
    }

    /// The admin VM, `dom0`.
    pub fn dom0() -> Self {
        Self::new("dom0", ADMIN_VM_CLASS)
    }

    /// Adds a tag.
    #[must_use]
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Sets `template_for_dispvms`.
    #[must_use]
    pub fn with_template_for_dispvms(mut self, yes: bool) -> Self {
        self.template_for_dispvms = yes;
        self
    }

    /// Sets `default_dispvm`.
    #[must_use]
    pub fn with_default_dispvm(mut self, name: Option<&str>) -> Self {
        self.default_dispvm = name.map(Into::into);
        self
    }

    /// Sets the power state (`Running`, `Halted`, `Paused`, ...).
    #[must_use]
    pub fn with_power_state(mut self, state: impl Into<String>) -> Self {
        self.power_state = state.into();
        self
    }

    /// Sets the UUID (without `uuid:`).
    #[must_use]
    pub fn with_uuid(mut self, uuid: impl Into<String>) -> Self {
        self.uuid = Some(uuid.into());
        self
    }

    /// Sets `internal`.
    #[must_use]
    pub fn with_internal(mut self, yes: bool) -> Self {
        self.internal = yes;
        self
    }

    /// Whether the qube is running (only `Running` counts).
    pub fn is_running(&self) -> bool {
        self.power_state == "Running"
    }

    /// Whether it is the admin VM.
    pub fn is_admin(&self) -> bool {
        self.class == ADMIN_VM_CLASS
    }

    /// Whether it carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// All qubes, looked up by name or UUID.
///
/// ```
/// use qpm_policy::{Domain, System};
/// let mut sys = System::new();
/// sys.insert(Domain::dom0());
/// sys.insert(Domain::new("work", "AppVM").with_tag("personal").with_uuid("1234"));
/// assert_eq!(sys.by_uuid("1234").unwrap().name, "work");
///
/// let sys = System::from_json(r#"{"domains": {"work": {"type": "AppVM"}}}"#).unwrap();
/// assert_eq!(sys.get("work").unwrap().class, "AppVM");
/// ```
#[derive(Debug, Clone, Default)]
pub struct System {
    domains: Vec<Domain>,
    by_name: HashMap<String, usize>,
    by_uuid: HashMap<String, usize>,
    by_tag: HashMap<String, Vec<u32>>,
    by_class: HashMap<String, Vec<u32>>,
    templates: Vec<u32>,
    admins: Vec<u32>,
}

impl PartialEq for System {
    fn eq(&self, other: &Self) -> bool {
        let mut a: Vec<&Domain> = self.domains.iter().collect();
        let mut b: Vec<&Domain> = other.domains.iter().collect();
        a.sort_by(|x, y| x.name.cmp(&y.name));
        b.sort_by(|x, y| x.name.cmp(&y.name));
        a == b
    }
}

/// A system description that could not be read. The message names the
/// field at fault (`domains.work.tags[1]: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SystemError {
    /// Where and what.
    pub message: String,
}

fn err(path: &str, msg: impl fmt::Display) -> SystemError {
    SystemError {
        message: format!("{path}: {msg}"),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl System {
    /// No qubes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a qube, replacing one of the same name.
    pub fn insert(&mut self, domain: Domain) {
        if let Some(&i) = self.by_name.get(&domain.name) {
            self.domains.remove(i);
            self.reindex();
        }
        let i = self.domains.len();
        self.index_one(i, &domain);
        self.domains.push(domain);
    }

    fn index_one(&mut self, i: usize, d: &Domain) {
        self.by_name.insert(d.name.clone(), i);
        if let Some(u) = &d.uuid {
            self.by_uuid.entry(u.clone()).or_insert(i);
        }
        let n = u32::try_from(i).unwrap_or(u32::MAX);
        let mut tags: Vec<&String> = d.tags.iter().collect();
        tags.sort();
        tags.dedup();
        for t in tags {
            self.by_tag.entry(t.clone()).or_default().push(n);
        }
        self.by_class.entry(d.class.clone()).or_default().push(n);
        if d.template_for_dispvms {
            self.templates.push(n);
        }
        if d.is_admin() {
            self.admins.push(n);
        }
    }

    /// Removes a qube by name.
    pub fn remove(&mut self, name: &str) -> Option<Domain> {
        let i = *self.by_name.get(name)?;
        let d = self.domains.remove(i);
        self.reindex();
        Some(d)
    }

    fn reindex(&mut self) {
        self.by_name.clear();
        self.by_uuid.clear();
        self.by_tag.clear();
        self.by_class.clear();
        self.templates.clear();
        self.admins.clear();
        let domains = std::mem::take(&mut self.domains);
        for (i, d) in domains.iter().enumerate() {
            self.index_one(i, d);
        }
        self.domains = domains;
    }

    /// The qube called `name`.
    pub fn get(&self, name: &str) -> Option<&Domain> {
        self.by_name.get(name).and_then(|&i| self.domains.get(i))
    }

    /// Position of the qube called `name` in [`System::domains`].
    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Position of the qube with UUID `uuid`.
    pub(crate) fn index_of_uuid(&self, uuid: &str) -> Option<usize> {
        self.by_uuid.get(uuid).copied()
    }

    /// The qube at position `i`.
    pub(crate) fn at(&self, i: usize) -> Option<&Domain> {
        self.domains.get(i)
    }

    /// Positions of the qubes tagged `tag`.
    pub(crate) fn tagged(&self, tag: &str) -> &[u32] {
        self.by_tag.get(tag).map_or(&[], Vec::as_slice)
    }

    /// Positions of the qubes of class `class`.
    pub(crate) fn of_class(&self, class: &str) -> &[u32] {
        self.by_class.get(class).map_or(&[], Vec::as_slice)
    }

    /// Positions of the disposable templates.
    pub(crate) fn templates(&self) -> &[u32] {
        &self.templates
    }

    /// Positions of the admin VMs (normally just dom0).
    pub(crate) fn admins(&self) -> &[u32] {
        &self.admins
    }

    /// The qube with UUID `uuid` (without `uuid:`).
    pub fn by_uuid(&self, uuid: &str) -> Option<&Domain> {
        self.by_uuid.get(uuid).and_then(|&i| self.domains.get(i))
    }

    /// All qubes, in insertion order.
    pub fn domains(&self) -> impl ExactSizeIterator<Item = &Domain> {
        self.domains.iter()
    }

    /// Number of qubes.
    pub fn len(&self) -> usize {
        self.domains.len()
    }

    /// Whether there is no qube.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Reads the JSON shape of the conformance cases,
    /// `{"domains": {NAME: {"type": ..., "tags": [...], ...}}}`. Missing
    /// fields take defaults: class `AppVM` (`AdminVM` for `dom0`), no tags,
    /// not a disposable template, no default disposable, `Halted`
    /// (`Running` for `dom0`), no UUID (the admin UUID for `dom0`), not
    /// internal. Unknown fields (`icon`, `label`, ...) are ignored.
    pub fn from_json(text: &str) -> Result<Self, SystemError> {
        let v: Value = serde_json::from_str(text).map_err(|e| SystemError {
            message: format!("not valid JSON: {e}"),
        })?;
        Self::from_value(&v)
    }

    /// Like [`System::from_json`] from a parsed JSON value.
    pub fn from_value(v: &Value) -> Result<Self, SystemError> {
        let obj = v.as_object().ok_or_else(|| {
            err(
                "(top level)",
                format!("expected an object, got {}", type_name(v)),
            )
        })?;
        let domains = obj
            .get("domains")
            .ok_or_else(|| err("domains", "missing (expected {\"domains\": {NAME: {...}}})"))?;
        let domains = domains.as_object().ok_or_else(|| {
            err(
                "domains",
                format!(
                    "expected an object mapping names to qubes, got {}",
                    type_name(domains)
                ),
            )
        })?;
        let mut sys = System::new();
        for (name, d) in domains {
            sys.insert(domain_from_value(name, d)?);
        }
        Ok(sys)
    }
}

fn domain_from_value(name: &str, v: &Value) -> Result<Domain, SystemError> {
    let path = format!("domains.{name}");
    if name.is_empty() {
        return Err(err(&path, "a qube name cannot be empty"));
    }
    let obj = v
        .as_object()
        .ok_or_else(|| err(&path, format!("expected an object, got {}", type_name(v))))?;
    let admin = name == "dom0";
    let mut d = Domain::new(name, if admin { ADMIN_VM_CLASS } else { "AppVM" });
    let field = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let string = |k: &str| -> Result<Option<String>, SystemError> {
        match field(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(o) => Err(err(
                &format!("{path}.{k}"),
                format!("expected a string, got {}", type_name(o)),
            )),
        }
    };
    let boolean = |k: &str| -> Result<Option<bool>, SystemError> {
        match field(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(o) => Err(err(
                &format!("{path}.{k}"),
                format!("expected true or false, got {}", type_name(o)),
            )),
        }
    };
    if let Some(c) = string("type")? {
        d.class = c;
    }
    if let Some(tags) = field("tags") {
        let arr = tags.as_array().ok_or_else(|| {
            err(
                &format!("{path}.tags"),
                format!("expected an array of strings, got {}", type_name(tags)),
            )
        })?;
        for (i, t) in arr.iter().enumerate() {
            match t {
                Value::String(s) => d.tags.push(s.clone()),
                o => {
                    return Err(err(
                        &format!("{path}.tags[{i}]"),
                        format!("expected a string, got {}", type_name(o)),
                    ));
                }
            }
        }
    }
    if let Some(b) = boolean("template_for_dispvms")? {
        d.template_for_dispvms = b;
    }
    d.default_dispvm = string("default_dispvm")?;
    if let Some(p) = string("power_state")? {
        d.power_state = p;
    }
    if let Some(u) = string("uuid")? {
        d.uuid = Some(u.strip_prefix("uuid:").unwrap_or(&u).to_owned());
    }
    if let Some(b) = boolean("internal")? {
        d.internal = b;
    }
    Ok(d)
}

impl<'de> Deserialize<'de> for System {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(deserializer)?;
        Self::from_value(&v).map_err(de::Error::custom)
    }
}

struct DomainFields<'a>(&'a Domain);

impl Serialize for DomainFields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        let mut m = s.serialize_map(Some(7))?;
        m.serialize_entry("type", &d.class)?;
        m.serialize_entry("tags", &d.tags)?;
        m.serialize_entry("template_for_dispvms", &d.template_for_dispvms)?;
        m.serialize_entry("default_dispvm", &d.default_dispvm)?;
        m.serialize_entry("power_state", &d.power_state)?;
        m.serialize_entry("uuid", &d.uuid)?;
        m.serialize_entry("internal", &d.internal)?;
        m.end()
    }
}

struct Domains<'a>(&'a [Domain]);

impl Serialize for Domains<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for d in self.0 {
            m.serialize_entry(&d.name, &DomainFields(d))?;
        }
        m.end()
    }
}

impl Serialize for System {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("domains", &Domains(&self.domains))?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let s = System::from_json(
            r#"{"domains": {"dom0": {}, "work": {"tags": ["a"], "default_dispvm": null}}}"#,
        )
        .unwrap();
        let dom0 = s.get("dom0").unwrap();
        assert!(dom0.is_admin() && dom0.is_running());
        assert_eq!(dom0.uuid.as_deref(), Some(ADMIN_VM_UUID));
        let w = s.get("work").unwrap();
        assert_eq!(w.class, "AppVM");
        assert!(!w.is_running());
        assert_eq!(w.tags, ["a"]);

        let e = System::from_json(r#"{"domains": {"work": {"tags": ["a", 3]}}}"#).unwrap_err();
        assert_eq!(
            e.message,
            "domains.work.tags[1]: expected a string, got a number"
        );
        let e = System::from_json(r#"{"domains": {"work": {"template_for_dispvms": "yes"}}}"#)
            .unwrap_err();
        assert!(
            e.message.starts_with("domains.work.template_for_dispvms:"),
            "{e}"
        );
        let e = System::from_json(r#"{"domain": {}}"#).unwrap_err();
        assert!(e.message.starts_with("domains: missing"), "{e}");
        let e = System::from_json("{").unwrap_err();
        assert!(e.message.starts_with("not valid JSON"), "{e}");
    }

    #[test]
    fn serde_round_trip() {
        let mut s = System::new();
        s.insert(Domain::dom0());
        s.insert(
            Domain::new("dvm", "AppVM")
                .with_template_for_dispvms(true)
                .with_uuid("u1")
                .with_tag("t")
                .with_internal(true)
                .with_power_state("Running")
                .with_default_dispvm(Some("dvm")),
        );
        let json = serde_json::to_string(&s).unwrap();
        let back: System = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(s.by_uuid("u1").unwrap().name, "dvm");
        s.remove("dvm");
        assert!(s.by_uuid("u1").is_none());
    }
}
