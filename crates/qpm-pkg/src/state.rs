//! Reading the actual state through the Admin API.
//!
//! One `admin.vm.List`, then per qube of interest one `property.GetAll`, one
//! `tag.List` and the features that matter (those the package sets, plus
//! the `qpm.applied` record), all issued concurrently through
//! [`Client::parallel`]; plus one policy read.

use std::collections::{BTreeMap, BTreeSet};

use qpm_admin::{Client, Property, QubeInfo};

use crate::Error;
use crate::record::{RECORD_FEATURE, Record};

/// A setting's value: `None` is the default (property) or absent (feature,
/// tag).
pub type Val = Option<String>;

pub use crate::names::{created_by_tag, package_tag};

/// What was read about one qube.
#[derive(Debug, Clone, Default)]
pub struct QubeState {
    /// Its name.
    pub name: Option<String>,
    /// Properties (`GetAll`), if read.
    pub props: Option<BTreeMap<String, Property>>,
    /// Tags, if read.
    pub tags: Option<BTreeSet<String>>,
    /// Features read (`None`: not set).
    pub features: BTreeMap<String, Val>,
}

impl QubeState {
    /// The `qpm.applied` record, when read, valid and about this qube.
    pub fn record(&self) -> Option<Record> {
        self.features
            .get(RECORD_FEATURE)
            .and_then(|v| v.as_deref())
            .and_then(Record::decode)
            .filter(|r| Some(&r.qube) == self.name.as_ref())
    }

    /// Whether it carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.as_ref().is_some_and(|t| t.contains(tag))
    }

    /// The package tags (`qpm-pkg-*`) it carries.
    pub fn packages(&self) -> Vec<String> {
        self.tags
            .iter()
            .flatten()
            .filter_map(|t| t.strip_prefix("qpm-pkg-").map(str::to_owned))
            .collect()
    }

    /// The current value of a setting key (see [`crate::plan`]), `None`
    /// when it is not known from what was read (firewall, volumes).
    pub fn value(&self, key: &str) -> Option<Val> {
        if let Some(p) = key.strip_prefix("p:") {
            let prop = self.props.as_ref()?.get(p)?;
            return Some((!prop.is_default).then(|| prop.value.clone()));
        }
        if let Some(f) = key.strip_prefix("f:") {
            return self.features.get(f).cloned();
        }
        if let Some(t) = key.strip_prefix("t:") {
            return Some(self.has_tag(t).then(String::new));
        }
        None
    }

    /// A property's value (empty when unknown).
    pub fn prop(&self, name: &str) -> &str {
        self.props
            .as_ref()
            .and_then(|p| p.get(name))
            .map_or("", |p| p.value.as_str())
    }
}

/// The actual state, as far as it was read.
#[derive(Debug, Clone, Default)]
pub struct Actual {
    /// Every qube the management qube can see.
    pub listed: BTreeMap<String, QubeInfo>,
    /// Details of the qubes read.
    pub qubes: BTreeMap<String, QubeState>,
    /// The package's installed policy text, when read (`Some(None)`: none).
    pub policy: Option<Option<String>>,
    /// Whether the dom0 gatekeeper answered (else `policy.*` was used).
    pub gatekeeper: bool,
}

/// One read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Read {
    /// `admin.vm.property.GetAll`.
    Props(String),
    /// `admin.vm.tag.List`.
    Tags(String),
    /// `admin.vm.feature.Get`.
    Feature(String, String),
    /// The package's policy (gatekeeper `qpm.PolicyGet`, or `policy.Get`).
    Policy(String),
}

enum Got {
    Gone(String),
    Props(String, BTreeMap<String, Property>),
    Tags(String, BTreeSet<String>),
    Feature(String, String, Val),
    Policy(Option<String>, bool),
}

/// The name of a package's policy file in dom0 (without `.policy`).
pub fn policy_file(package: &str) -> String {
    format!("40-qpm-{package}")
}

/// Reads the installed policy of `package`: through the gatekeeper, or
/// `policy.Get` when the gatekeeper's services are absent. Returns (text,
/// gatekeeper present).
pub fn read_policy(client: &Client, package: &str) -> Result<(Option<String>, bool), Error> {
    let out = client.call_service("dom0", &format!("qpm.PolicyGet+{package}"), b"")?;
    match out.status {
        0 => Ok((
            Some(String::from_utf8_lossy(&out.stdout).into_owned()),
            true,
        )),
        1 => Ok((None, true)),
        _ => match client.policy_get(&policy_file(package), false) {
            Ok((_, body)) => Ok((Some(String::from_utf8_lossy(&body).into_owned()), false)),
            Err(qpm_admin::Error::PolicyAdmin { .. }) => Ok((None, false)),
            Err(e) => Err(e.into()),
        },
    }
}

impl Actual {
    /// `admin.vm.List`.
    pub fn list(client: &Client) -> Result<Self, Error> {
        let listed = client
            .list_qubes()?
            .into_iter()
            .map(|q| (q.name.clone(), q))
            .collect();
        Ok(Self {
            listed,
            ..Self::default()
        })
    }

    /// Runs `reads` concurrently and merges them; qubes not listed are
    /// skipped (a qube that disappears between the list and a read is
    /// forgotten).
    pub fn read(&mut self, client: &Client, reads: BTreeSet<Read>) -> Result<(), Error> {
        let reads: Vec<Read> = reads
            .into_iter()
            .filter(|r| match r {
                Read::Props(q) | Read::Tags(q) | Read::Feature(q, _) => {
                    self.listed.contains_key(q) && !crate::names::is_dom0(q)
                }
                Read::Policy(_) => true,
            })
            .collect();
        let results = client.parallel(reads, |c, r| -> Result<Option<Got>, Error> {
            // a qube removed since the list (by a call still in flight when
            // an earlier run was killed, say): qubesd says so, or qrexec
            // refuses a call to a qube that no longer exists; a second look
            // at the list tells a removal from a refusal
            let gone = |e: &qpm_admin::Error| {
                e.is(qpm_admin::ExceptionKind::VmNotFound)
                    || (matches!(e, qpm_admin::Error::Refused { .. })
                        && match &r {
                            Read::Props(q) | Read::Tags(q) | Read::Feature(q, _) => c
                                .list_qubes()
                                .is_ok_and(|l| !l.iter().any(|x| x.name == *q)),
                            Read::Policy(_) => false,
                        })
            };
            Ok(Some(match r.clone() {
                Read::Props(q) => match c.properties(Some(&q)) {
                    Ok(p) => Got::Props(q, p),
                    Err(e) if gone(&e) => Got::Gone(q),
                    Err(e) => return Err(e.into()),
                },
                Read::Tags(q) => match c.tags(&q) {
                    Ok(t) => Got::Tags(q, t.into_iter().collect()),
                    Err(e) if gone(&e) => Got::Gone(q),
                    Err(e) => return Err(e.into()),
                },
                Read::Feature(q, f) => match c.feature(&q, &f) {
                    Ok(v) => Got::Feature(q, f, v),
                    Err(e) if gone(&e) => Got::Gone(q),
                    Err(e) => return Err(e.into()),
                },
                Read::Policy(p) => {
                    let (text, gk) = read_policy(c, &p)?;
                    Got::Policy(text, gk)
                }
            }))
        });
        let mut gone = Vec::new();
        for r in results {
            let r = r?;
            if let Some(Got::Props(q, _) | Got::Tags(q, _) | Got::Feature(q, _, _)) = &r {
                let e = self.qubes.entry(q.clone()).or_default();
                e.name = Some(q.clone());
            }
            match r {
                None => {}
                Some(Got::Gone(q)) => gone.push(q),
                Some(Got::Props(q, p)) => self.qubes.entry(q).or_default().props = Some(p),
                Some(Got::Tags(q, t)) => self.qubes.entry(q).or_default().tags = Some(t),
                Some(Got::Feature(q, f, v)) => {
                    self.qubes.entry(q).or_default().features.insert(f, v);
                }
                Some(Got::Policy(text, gk)) => {
                    self.policy = Some(text);
                    self.gatekeeper = gk;
                }
            }
        }
        for q in gone {
            self.listed.remove(&q);
            self.qubes.remove(&q);
        }
        Ok(())
    }

    /// Whether `name` is listed.
    pub fn exists(&self, name: &str) -> bool {
        self.listed.contains_key(name)
    }

    /// The power state of a listed qube.
    pub fn power(&self, name: &str) -> &str {
        self.listed.get(name).map_or("", |q| q.state.as_str())
    }

    /// Installed packages as seen through tags: package → its qubes owned
    /// by `mgmt`. Needs the tags of every listed qube.
    pub fn packages(&self, mgmt: &str) -> BTreeMap<String, Vec<String>> {
        let created = created_by_tag(mgmt);
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, q) in &self.qubes {
            if !q.has_tag(&created) {
                continue;
            }
            for p in q.packages() {
                out.entry(p).or_default().push(name.clone());
            }
        }
        out
    }
}
