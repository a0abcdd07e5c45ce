//! The whole simulated system: labels, pools, global properties and qubes,
//! with the effective value of every property (explicit or computed default).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::schema::{self, PropDef, PropType, VmClass};
use super::values::Val;
use super::{ApiError, ApiResult};

/// A label (colour) for qubes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// Index (1..8 are the defaults).
    pub index: u32,
    /// Name, e.g. `red`.
    pub name: String,
    /// Colour, `0xRRGGBB`.
    pub color: String,
}

/// A storage pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// Pool name.
    pub name: String,
    /// Driver configuration (`driver`, `dir_path`, ...), sorted.
    pub config: BTreeMap<String, String>,
}

/// Power state as `admin.vm.List` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerState {
    /// Not running.
    Halted,
    /// Starting or stopping.
    Transient,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Suspended.
    Suspended,
}

impl PowerState {
    /// The state word.
    pub fn word(self) -> &'static str {
        match self {
            Self::Halted => "Halted",
            Self::Transient => "Transient",
            Self::Running => "Running",
            Self::Paused => "Paused",
            Self::Suspended => "Suspended",
        }
    }

    /// Parses a state word (unknown words are taken as `Halted`).
    pub fn parse(s: &str) -> Self {
        match s {
            "Running" => Self::Running,
            "Paused" => Self::Paused,
            "Suspended" => Self::Suspended,
            "Transient" => Self::Transient,
            _ => Self::Halted,
        }
    }
}

/// One volume of a qube.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// `root`, `private`, `volatile`, `kernel`.
    pub name: String,
    /// Pool name.
    pub pool: String,
    /// Size in bytes.
    pub size: u64,
    /// Writable.
    pub rw: bool,
    /// Snapshot of `source` at start.
    pub snap_on_start: bool,
    /// Kept at shutdown.
    pub save_on_stop: bool,
    /// Revisions kept.
    pub revisions_to_keep: i64,
    /// Encrypted with an ephemeral key.
    pub ephemeral: bool,
}

/// A value recorded in a fixture for a property the simulator does not
/// compute (kept as given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticProp {
    /// API type word.
    pub ty: PropType,
    /// Printed value; `None` when the property had no value.
    pub value: Option<String>,
}

/// One qube.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Qube {
    /// Name.
    pub name: String,
    /// Class.
    pub class: VmClass,
    /// UUID (lowercase, dashed).
    pub uuid: String,
    /// qid.
    pub qid: u32,
    /// Explicitly set properties.
    pub props: BTreeMap<String, Val>,
    /// Fixture values of properties the simulator does not compute.
    #[serde(default)]
    pub statics: BTreeMap<String, StaticProp>,
    /// Features, in insertion order.
    pub features: Vec<(String, String)>,
    /// Tags.
    pub tags: BTreeSet<String>,
    /// Power state.
    pub power: PowerState,
    /// Volumes, in `admin.vm.volume.List` order.
    pub volumes: Vec<Volume>,
    /// Firewall rules (API text of each rule); `None` means the default
    /// single `action=accept` rule.
    #[serde(default)]
    pub firewall: Option<Vec<String>>,
    /// Notes.
    #[serde(default)]
    pub notes: String,
    /// Xen domain id while running.
    #[serde(default)]
    pub xid: i64,
    /// Start time (seconds since the epoch, text) while running.
    #[serde(default)]
    pub start_time: Option<String>,
}

impl Qube {
    /// The value of a feature.
    pub fn feature(&self, name: &str) -> Option<&str> {
        self.features
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets a feature, keeping insertion order.
    pub fn set_feature(&mut self, name: &str, value: &str) {
        match self.features.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.features.push((name.to_string(), value.to_string())),
        }
    }

    /// Removes a feature; false if it was not set.
    pub fn remove_feature(&mut self, name: &str) -> bool {
        let before = self.features.len();
        self.features.retain(|(k, _)| k != name);
        before != self.features.len()
    }

    /// Running or paused (has a domain).
    pub fn is_active(&self) -> bool {
        !matches!(self.power, PowerState::Halted)
    }
}

/// Facts about the simulated host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    /// Physical memory in KiB.
    pub memory_total_kib: u64,
    /// CPUs.
    pub no_cpus: u32,
}

impl Default for Host {
    fn default() -> Self {
        Self {
            memory_total_kib: 32 * 1024 * 1024,
            no_cpus: 8,
        }
    }
}

/// The whole simulated system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct System {
    /// Labels in index order.
    pub labels: Vec<Label>,
    /// Pools in `admin.pool.List` order.
    pub pools: Vec<Pool>,
    /// `admin.vmclass.List` output order.
    pub vmclasses: Vec<String>,
    /// Explicitly set global properties.
    pub globals: BTreeMap<String, Val>,
    /// Fixture values of global properties the simulator does not compute.
    #[serde(default)]
    pub global_statics: BTreeMap<String, StaticProp>,
    /// Global property list from a fixture (name, type), if any.
    #[serde(default)]
    pub global_order: Option<Vec<(String, PropType)>>,
    /// Per-class property lists from a fixture (name, type).
    #[serde(default)]
    pub class_orders: BTreeMap<String, Vec<(String, PropType)>>,
    /// All qubes (dom0 included).
    pub qubes: Vec<Qube>,
    /// The host.
    #[serde(default)]
    pub host: Host,
    /// Next Xen domain id.
    #[serde(default)]
    pub next_xid: i64,
    /// Highest qid (qubesd's `max_qid`, 254: at most 254 qubes besides
    /// dom0). Scale tests raise it; real Qubes cannot.
    #[serde(default = "default_max_qid")]
    pub max_qid: u32,
    /// Bumped whenever the state changes (for caches derived from it).
    #[serde(skip)]
    pub generation: u64,
    #[serde(skip)]
    index: HashMap<String, usize>,
    #[serde(skip)]
    schemas: HashMap<VmClass, Arc<Vec<PropDef>>>,
    #[serde(skip)]
    global_schema: Arc<Vec<PropDef>>,
}

fn default_max_qid() -> u32 {
    254
}

/// Bound on template/netvm chain walks (a corrupted state must not loop).
const MAX_CHAIN: usize = 64;

pub(crate) const DEFAULT_MAC: &str = "00:16:3e:5e:6c:00";
pub(crate) const DEFAULT_KERNELOPTS: &str = "swiotlb=2048";
pub(crate) const IPV6_PREFIX: &str = "fd09:24ef:4179";

impl System {
    /// An empty system (no qubes, no labels).
    pub fn empty() -> Self {
        let mut s = Self {
            labels: Vec::new(),
            pools: Vec::new(),
            vmclasses: VmClass::ALL.iter().map(|c| c.name().to_string()).collect(),
            globals: BTreeMap::new(),
            global_statics: BTreeMap::new(),
            global_order: None,
            class_orders: BTreeMap::new(),
            qubes: Vec::new(),
            host: Host::default(),
            next_xid: 1,
            max_qid: default_max_qid(),
            generation: 0,
            index: HashMap::new(),
            schemas: HashMap::new(),
            global_schema: Arc::new(Vec::new()),
        };
        s.rebuild();
        s
    }

    /// Rebuilds the name index and the property schemas (after loading or
    /// adding/removing qubes).
    pub fn rebuild(&mut self) {
        self.index = self
            .qubes
            .iter()
            .enumerate()
            .map(|(i, q)| (q.name.clone(), i))
            .collect();
        self.schemas.clear();
        for class in VmClass::ALL {
            let builtin = schema::class_props(class);
            let defs = match self.class_orders.get(class.name()) {
                Some(order) => merge_order(&builtin, order),
                None => builtin,
            };
            self.schemas.insert(class, Arc::new(defs));
        }
        let builtin = schema::global_props();
        self.global_schema = Arc::new(match &self.global_order {
            Some(order) => merge_order(&builtin, order),
            None => builtin,
        });
    }

    /// Property definitions of a class, in List order.
    pub(crate) fn schema(&self, class: VmClass) -> Arc<Vec<PropDef>> {
        self.schemas
            .get(&class)
            .cloned()
            .unwrap_or_else(|| Arc::new(schema::class_props(class)))
    }

    /// Global property definitions, in List order.
    pub(crate) fn global_schema(&self) -> Arc<Vec<PropDef>> {
        self.global_schema.clone()
    }

    /// The definition of property `name` of qube `qi`.
    pub(crate) fn prop_def(&self, qi: usize, name: &str) -> Option<PropDef> {
        let class = self.qubes.get(qi)?.class;
        self.schema(class).iter().find(|d| d.name == name).cloned()
    }

    /// The definition of global property `name`.
    pub(crate) fn global_def(&self, name: &str) -> Option<PropDef> {
        self.global_schema.iter().find(|d| d.name == name).cloned()
    }

    /// Index of the qube called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Index of the qube with this uuid.
    pub fn find_uuid(&self, uuid: &str) -> Option<usize> {
        self.qubes.iter().position(|q| q.uuid == uuid)
    }

    /// The qube at index `qi`.
    pub fn qube(&self, qi: usize) -> &Qube {
        // indexes come from find()/position() on the same state
        #[allow(clippy::indexing_slicing)]
        &self.qubes[qi]
    }

    /// The qube at index `qi`, mutable.
    pub fn qube_mut(&mut self, qi: usize) -> &mut Qube {
        #[allow(clippy::indexing_slicing)]
        &mut self.qubes[qi]
    }

    /// Index of dom0.
    pub fn dom0(&self) -> Option<usize> {
        self.qubes.iter().position(|q| q.class == VmClass::AdminVM)
    }

    /// Label by index.
    pub fn label(&self, index: u32) -> Option<&Label> {
        self.labels.iter().find(|l| l.index == index)
    }

    /// `app.get_label`: by name, then by index given as a decimal number.
    pub fn get_label(&self, spec: &str) -> Option<&Label> {
        if let Some(l) = self.labels.iter().find(|l| l.name == spec) {
            return Some(l);
        }
        let n = super::pyval::parse_int(spec)?;
        let idx: u32 = n.parse().ok()?;
        self.label(idx)
    }

    /// Pool by name.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Text of a value as `str(value)` prints it.
    pub fn show(&self, v: &Val) -> String {
        match v {
            Val::None => String::new(),
            Val::Bool(true) => "True".into(),
            Val::Bool(false) => "False".into(),
            Val::Int(s) | Val::Str(s) | Val::Vm(s) => s.clone(),
            Val::Label(i) => self.label(*i).map(|l| l.name.clone()).unwrap_or_default(),
        }
    }

    // ---------------------------------------------------------------------
    // Effective values
    // ---------------------------------------------------------------------

    /// Whether property `name` of qube `qi` holds its default.
    pub fn is_default(&self, qi: usize, name: &str) -> bool {
        !self.qube(qi).props.contains_key(name)
    }

    /// The value of a qube's property: explicit, else default. `Ok(None)`
    /// when it has neither (Python's AttributeError).
    pub fn get(&self, qi: usize, name: &str) -> ApiResult<Option<Val>> {
        self.get_depth(qi, name, 0)
    }

    fn get_depth(&self, qi: usize, name: &str, depth: usize) -> ApiResult<Option<Val>> {
        if depth > MAX_CHAIN {
            return Err(ApiError::abort(format!("recursion computing {name}")));
        }
        if let Some(v) = self.qube(qi).props.get(name) {
            return Ok(Some(v.clone()));
        }
        self.default_depth(qi, name, depth)
    }

    /// The default of a qube's property (`GetDefault`).
    pub fn default(&self, qi: usize, name: &str) -> ApiResult<Option<Val>> {
        self.default_depth(qi, name, 0)
    }

    fn vm_prop(&self, qi: usize, name: &str, depth: usize) -> ApiResult<Option<usize>> {
        Ok(match self.get_depth(qi, name, depth + 1)? {
            Some(Val::Vm(n)) => self.find(&n),
            _ => None,
        })
    }

    /// The template of a qube, if it has one.
    pub fn template_of(&self, qi: usize) -> Option<usize> {
        if !self.qube(qi).class.has_template() {
            return None;
        }
        self.qube(qi)
            .props
            .get("template")
            .and_then(Val::as_vm)
            .and_then(|n| self.find(n))
    }

    /// The netvm of a qube (effective), if any.
    pub fn netvm_of(&self, qi: usize) -> Option<usize> {
        if !self.qube(qi).class.is_qubesvm() {
            return None;
        }
        self.vm_prop(qi, "netvm", 0).ok().flatten()
    }

    fn with_template(&self, qi: usize, name: &str, depth: usize) -> ApiResult<Option<Option<Val>>> {
        match self.template_of(qi) {
            Some(t) => match self.get_depth(t, name, depth + 1)? {
                Some(v) => Ok(Some(Some(v))),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// `features.check_with_template(name)`.
    pub fn check_with_template(&self, qi: usize, name: &str) -> Option<String> {
        let mut cur = Some(qi);
        for _ in 0..MAX_CHAIN {
            let q = cur?;
            if let Some(v) = self.qube(q).feature(name) {
                return Some(v.to_string());
            }
            cur = self.template_of(q);
        }
        None
    }

    /// `features.check_with_netvm(name)`.
    pub fn check_with_netvm(&self, qi: usize, name: &str) -> Option<String> {
        let mut cur = Some(qi);
        for _ in 0..MAX_CHAIN {
            let q = cur?;
            if let Some(v) = self.qube(q).feature(name) {
                return Some(v.to_string());
            }
            cur = self.netvm_of(q);
        }
        None
    }

    /// `features.check_with_adminvm(name)`.
    pub fn check_with_adminvm(&self, qi: usize, name: &str) -> Option<String> {
        if let Some(v) = self.qube(qi).feature(name) {
            return Some(v.to_string());
        }
        let d = self.dom0()?;
        self.qube(d).feature(name).map(str::to_string)
    }

    /// `features.check_with_template_and_adminvm(name)`.
    pub fn check_with_template_and_adminvm(&self, qi: usize, name: &str) -> Option<String> {
        if let Some(v) = self.check_with_template(qi, name) {
            return Some(v);
        }
        let d = self.dom0()?;
        if d == qi {
            return None;
        }
        self.qube(d).feature(name).map(str::to_string)
    }

    fn truthy_feature(v: Option<String>) -> bool {
        v.is_some_and(|s| !s.is_empty())
    }

    /// `vm.is_networked()`.
    pub fn is_networked(&self, qi: usize, depth: usize) -> ApiResult<bool> {
        if self
            .get_depth(qi, "provides_network", depth + 1)?
            .is_some_and(|v| v.truthy())
        {
            return Ok(true);
        }
        Ok(self.vm_prop(qi, "netvm", depth)?.is_some())
    }

    fn ip_for(&self, qi: usize) -> String {
        let q = self.qube(qi);
        if q.class == VmClass::DispVM {
            let dispid = q.props.get("dispid").and_then(|v| match v {
                Val::Int(s) => s.parse::<i64>().ok(),
                _ => None,
            });
            let d = dispid.unwrap_or(0);
            return format!("10.138.{}.{}", (d >> 8) & 0xff, d & 0xff);
        }
        format!("10.137.{}.{}", (q.qid >> 8) & 0xff, q.qid & 0xff)
    }

    fn ip6_for(&self, qi: usize) -> String {
        let q = self.qube(qi);
        let raw = if q.class == VmClass::DispVM {
            let d = q
                .props
                .get("dispid")
                .and_then(|v| {
                    if let Val::Int(s) = v {
                        s.parse::<i64>().ok()
                    } else {
                        None
                    }
                })
                .unwrap_or(0);
            format!("{IPV6_PREFIX}:0000::a8a:{d:x}")
        } else {
            format!("{IPV6_PREFIX}:0000::a89:{:x}", q.qid)
        };
        super::pyval::parse_ipv6(&raw).unwrap_or(raw)
    }

    fn icon(&self, qi: usize, depth: usize) -> ApiResult<Option<Val>> {
        let q = self.qube(qi);
        let Some(Val::Label(l)) = self.get_depth(qi, "label", depth + 1)? else {
            return Ok(None);
        };
        let label = self.label(l).map(|l| l.name.clone()).unwrap_or_default();
        let tfd = q.class.can_be_dvm_template()
            && self
                .get_depth(qi, "template_for_dispvms", depth + 1)?
                .is_some_and(|v| v.truthy());
        let prefix = match q.class {
            VmClass::AdminVM => "adminvm",
            VmClass::TemplateVM => "templatevm",
            VmClass::StandaloneVM => "standalonevm",
            VmClass::DispVM => "dispvm",
            VmClass::AppVM if tfd => "templatevm",
            VmClass::RemoteVM => "remotevm",
            VmClass::AppVM => {
                if q.feature("servicevm").is_some_and(|v| !v.is_empty()) {
                    "servicevm"
                } else {
                    "appvm"
                }
            }
        };
        Ok(Some(Val::Str(format!("{prefix}-{label}"))))
    }

    fn is_memory_balancing_possible(&self, qi: usize, depth: usize) -> ApiResult<bool> {
        let virt = self.get_depth(qi, "virt_mode", depth + 1)?;
        if virt.as_ref().and_then(Val::as_str) != Some("hvm") {
            return Ok(true);
        }
        let mut supported_services = false;
        let mut cur = Some(qi);
        for _ in 0..MAX_CHAIN {
            let Some(q) = cur else { break };
            supported_services |= self
                .qube(q)
                .features
                .iter()
                .any(|(k, _)| k.starts_with("supported-service."));
            cur = self.template_of(q);
        }
        let qrexec = Self::truthy_feature(self.check_with_template(qi, "qrexec"));
        let meminfo =
            Self::truthy_feature(self.check_with_template(qi, "supported-service.meminfo-writer"));
        Ok(qrexec && (meminfo || !supported_services))
    }

    fn default_depth(&self, qi: usize, name: &str, depth: usize) -> ApiResult<Option<Val>> {
        let q = self.qube(qi);
        let class = q.class;
        let statik = |n: &str| -> Option<Val> { q.statics.get(n).map(static_val) };
        if class == VmClass::AdminVM {
            return Ok(match name {
                "devices_denied" => Some(Val::Str(String::new())),
                "icon" => self.icon(qi, depth)?,
                "include_in_backups" => Some(Val::Bool(true)),
                "keyboard_layout" => Some(statik(name).unwrap_or(Val::Str("us++".into()))),
                "klass" => Some(Val::Str(class.name().into())),
                "maxmem" => Some(
                    statik(name)
                        .unwrap_or_else(|| Val::int(i128::from(self.host.memory_total_kib / 1024))),
                ),
                "name" => Some(Val::Str(q.name.clone())),
                "qid" => Some(Val::int(i128::from(q.qid))),
                "updateable" => Some(Val::Bool(true)),
                "uuid" => Some(Val::Str(q.uuid.clone())),
                "default_dispvm" => self.global_get(name)?,
                "label" => None,
                _ => statik(name),
            });
        }
        if class == VmClass::RemoteVM {
            return Ok(match name {
                "icon" => self.icon(qi, depth)?,
                "klass" => Some(Val::Str(class.name().into())),
                "relayvm" => Some(Val::None),
                "remote_name" => Some(Val::Str(q.name.clone())),
                "transport_rpc" => Some(Val::Str("qubesair.SSHProxy".into())),
                _ => statik(name),
            });
        }
        let tmpl_or = |n: &str, dflt: Option<Val>| -> ApiResult<Option<Val>> {
            match self.with_template(qi, n, depth)? {
                Some(v) => Ok(v),
                None => Ok(dflt),
            }
        };
        let stateless_none_if_halted = |v: Val| {
            if q.is_active() {
                Some(v)
            } else {
                Some(Val::None)
            }
        };
        Ok(match name {
            "autostart"
            | "debug"
            | "installed_by_rpm"
            | "provides_network"
            | "auto_cleanup"
            | "template_for_dispvms" => Some(Val::Bool(false)),
            "include_in_backups" => {
                if class == VmClass::DispVM {
                    let ac = self
                        .get_depth(qi, "auto_cleanup", depth + 1)?
                        .is_some_and(|v| v.truthy());
                    Some(Val::Bool(!ac))
                } else {
                    Some(Val::Bool(true))
                }
            }
            "backup_timestamp" | "stubdom_mem" | "stubdom_uuid" => Some(Val::None),
            "default_user" => tmpl_or(name, Some(Val::Str("user".into())))?,
            "devices_denied" => Some(Val::Str(String::new())),
            "dns" => {
                if self.vm_prop(qi, "netvm", depth)?.is_some()
                    || self
                        .get_depth(qi, "provides_network", depth + 1)?
                        .is_some_and(|v| v.truthy())
                {
                    Some(Val::Str("10.139.1.1 10.139.1.2".into()))
                } else {
                    Some(Val::None)
                }
            }
            "ip" => {
                if self.is_networked(qi, depth)? {
                    Some(Val::Str(self.ip_for(qi)))
                } else {
                    Some(Val::None)
                }
            }
            "ip6" => {
                if self.is_networked(qi, depth)?
                    && Self::truthy_feature(self.check_with_netvm(qi, "ipv6"))
                {
                    Some(Val::Str(self.ip6_for(qi)))
                } else {
                    Some(Val::None)
                }
            }
            "visible_ip" => match self
                .check_with_template(qi, "net.fake-ip")
                .filter(|s| !s.is_empty())
            {
                Some(ip) => Some(Val::Str(ip)),
                None => self.get_depth(qi, "ip", depth + 1)?,
            },
            "visible_ip6" => self.get_depth(qi, "ip6", depth + 1)?,
            "gateway" => {
                if self
                    .get_depth(qi, "provides_network", depth + 1)?
                    .is_some_and(|v| v.truthy())
                {
                    self.get_depth(qi, "visible_ip", depth + 1)?
                } else {
                    Some(Val::None)
                }
            }
            "gateway6" => {
                if Self::truthy_feature(self.check_with_netvm(qi, "ipv6"))
                    && self
                        .get_depth(qi, "provides_network", depth + 1)?
                        .is_some_and(|v| v.truthy())
                {
                    self.get_depth(qi, "visible_ip6", depth + 1)?
                } else {
                    Some(Val::None)
                }
            }
            "visible_gateway" => {
                match self
                    .check_with_template(qi, "net.fake-gateway")
                    .filter(|s| !s.is_empty())
                {
                    Some(gw) => Some(Val::Str(gw)),
                    None => match self.vm_prop(qi, "netvm", depth)? {
                        Some(n) => self.get_depth(n, "gateway", depth + 1)?,
                        None => Some(Val::None),
                    },
                }
            }
            "visible_gateway6" => {
                if Self::truthy_feature(self.check_with_netvm(qi, "ipv6")) {
                    match self.vm_prop(qi, "netvm", depth)? {
                        Some(n) => self.get_depth(n, "gateway6", depth + 1)?,
                        None => Some(Val::None),
                    }
                } else {
                    Some(Val::None)
                }
            }
            "visible_netmask" => {
                match self
                    .check_with_template(qi, "net.fake-netmask")
                    .filter(|s| !s.is_empty())
                {
                    Some(m) => Some(Val::Str(m)),
                    None => match self.vm_prop(qi, "netvm", depth)? {
                        Some(n) if self.is_networked(n, depth + 1)? => {
                            Some(Val::Str("255.255.255.255".into()))
                        }
                        _ => Some(Val::None),
                    },
                }
            }
            "icon" => self.icon(qi, depth)?,
            "kernel" => match self.with_template(qi, name, depth)? {
                Some(v) => v,
                None => self.global_get("default_kernel")?,
            },
            "kernelopts" => {
                let kernel = self.get_depth(qi, "kernel", depth + 1)?;
                match kernel {
                    None => None,
                    Some(k) if !k.truthy() => Some(Val::Str(String::new())),
                    Some(_) => tmpl_or(name, Some(Val::Str(DEFAULT_KERNELOPTS.into())))?,
                }
            }
            "keyboard_layout" => match self.vm_prop(qi, "guivm", depth)? {
                Some(g) if g != qi => self
                    .get_depth(g, "keyboard_layout", depth + 1)?
                    .or(Some(Val::Str("us++".into()))),
                _ => Some(Val::Str("us++".into())),
            },
            "klass" => Some(Val::Str(class.name().into())),
            "mac" => Some(Val::Str(DEFAULT_MAC.into())),
            "maxmem" => {
                if !self.is_memory_balancing_possible(qi, depth)? {
                    Some(Val::int(0))
                } else {
                    let own = if q.feature("os") == Some("Linux") {
                        let mem = self.get_depth(qi, "memory", depth + 1)?;
                        mem.and_then(|v| {
                            if let Val::Int(s) = v {
                                Some(super::pyval::int_value(&s))
                            } else {
                                None
                            }
                        })
                        .unwrap_or(400)
                        .saturating_mul(10)
                    } else {
                        4000
                    };
                    let half = i128::from(self.host.memory_total_kib / 1024 / 2);
                    tmpl_or(name, Some(Val::int(own.min(half))))?
                }
            }
            "memory" => tmpl_or(name, Some(Val::int(400)))?,
            "qrexec_timeout" => match self.with_template(qi, name, depth)? {
                Some(v) => v,
                None => self.global_get("default_qrexec_timeout")?,
            },
            "shutdown_timeout" => match self.with_template(qi, name, depth)? {
                Some(v) => v,
                None => self.global_get("default_shutdown_timeout")?,
            },
            "start_time" => match &q.start_time {
                Some(t) => stateless_none_if_halted(Val::Str(t.clone())),
                None => Some(Val::None),
            },
            "stubdom_xid" => Some(Val::int(-1)),
            "is_preload" => {
                let listed = self
                    .template_of(qi)
                    .and_then(|t| self.qube(t).feature("preload-dispvm"))
                    .is_some_and(|list| list.split(' ').any(|n| n == q.name));
                Some(Val::Bool(listed))
            }
            "updateable" => Some(Val::Bool(!class.has_template())),
            "vcpus" => tmpl_or(name, Some(Val::int(2)))?,
            "virt_mode" => tmpl_or(name, Some(Val::Str("pvh".into())))?,
            "xid" => Some(Val::int(if q.is_active() { i128::from(q.xid) } else { -1 })),
            "audiovm" => self.global_get("default_audiovm")?,
            "guivm" => self.global_get("default_guivm")?,
            "bootmode" => {
                let from_tmpl = match self.template_of(qi) {
                    Some(t) if self.qube(t).class == VmClass::TemplateVM => {
                        self.get_depth(t, "appvm_default_bootmode", depth + 1)?
                    }
                    _ => None,
                };
                from_tmpl.or(Some(Val::Str("default".into())))
            }
            "appvm_default_bootmode" => Some(Val::Str("default".into())),
            "default_dispvm" => {
                if class == VmClass::DispVM {
                    self.qube(qi).props.get("template").cloned()
                } else {
                    self.global_get("default_dispvm")?
                }
            }
            "management_dispvm" => match self.with_template(qi, name, depth)? {
                Some(v) => v,
                None => self.global_get("management_dispvm")?,
            },
            "netvm" => {
                if class == VmClass::TemplateVM {
                    Some(Val::None)
                } else {
                    self.global_get("default_netvm")?
                }
            }
            "label" | "name" | "qid" | "uuid" | "template" | "dispid" => None,
            _ => statik(name),
        })
    }

    /// The value of a global property.
    pub fn global_get(&self, name: &str) -> ApiResult<Option<Val>> {
        if let Some(v) = self.globals.get(name) {
            return Ok(Some(v.clone()));
        }
        self.global_default(name)
    }

    /// The default of a global property.
    pub fn global_default(&self, name: &str) -> ApiResult<Option<Val>> {
        let statik = self.global_statics.get(name).map(static_val);
        let dom0 = || {
            self.dom0()
                .map(|d| Val::Vm(self.qube(d).name.clone()))
                .unwrap_or(Val::None)
        };
        Ok(match name {
            "check_updates_vm" => Some(Val::Bool(true)),
            "clockvm" | "default_dispvm" | "default_netvm" | "management_dispvm" | "updatevm" => {
                Some(Val::None)
            }
            "default_audiovm" | "default_guivm" => Some(dom0()),
            "default_kernel" | "default_template" => None,
            "default_pool" => self.default_pool().map(Val::Str).or(statik),
            "default_pool_kernel"
            | "default_pool_private"
            | "default_pool_root"
            | "default_pool_volatile" => self.global_get("default_pool")?,
            "default_qrexec_timeout" | "default_shutdown_timeout" => Some(Val::int(60)),
            "stats_interval" => Some(Val::int(3)),
            "maxmem" => Some(
                statik.unwrap_or_else(|| Val::int(i128::from(self.host.memory_total_kib / 1024))),
            ),
            "no_cpus" => Some(statik.unwrap_or_else(|| Val::int(i128::from(self.host.no_cpus)))),
            _ => statik,
        })
    }

    /// `_default_pool`: a pool called `default`, else a file pool in
    /// `/var/lib/qubes`.
    fn default_pool(&self) -> Option<String> {
        if self.pool("default").is_some() {
            return Some("default".into());
        }
        self.pools
            .iter()
            .find(|p| {
                matches!(
                    p.config.get("driver").map(String::as_str),
                    Some("file" | "file-reflink")
                ) && p.config.get("dir_path").map(String::as_str) == Some("/var/lib/qubes")
            })
            .map(|p| p.name.clone())
    }

    /// All qubes whose (effective) netvm is `qi`.
    pub fn connected_vms(&self, qi: usize) -> Vec<usize> {
        (0..self.qubes.len())
            .filter(|&i| i != qi && self.netvm_of(i) == Some(qi))
            .collect()
    }

    /// `get_vms_connected_to`: everything downstream of `qi`.
    pub fn vms_connected_to(&self, qi: usize) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut todo = vec![qi];
        while let Some(cur) = todo.pop() {
            for v in self.connected_vms(cur) {
                if out.insert(v) {
                    todo.push(v);
                }
            }
        }
        out
    }

    /// Qubes whose `template` is `qi`.
    pub fn based_on(&self, qi: usize) -> Vec<usize> {
        (0..self.qubes.len())
            .filter(|&i| self.template_of(i) == Some(qi))
            .collect()
    }

    /// Qubes in `admin.vm.List` order: dom0 first, then by name (bytes).
    pub fn sorted(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.qubes.len()).collect();
        v.sort_by(|&a, &b| {
            let (qa, qb) = (self.qube(a), self.qube(b));
            (qa.class != VmClass::AdminVM, qa.name.as_bytes())
                .cmp(&(qb.class != VmClass::AdminVM, qb.name.as_bytes()))
        });
        v
    }

    /// Lowest unused qid from 1 (below `max_qid`, as qubesd).
    pub fn new_qid(&self) -> Option<u32> {
        let used: BTreeSet<u32> = self.qubes.iter().map(|q| q.qid).collect();
        (1..self.max_qid).find(|i| !used.contains(i))
    }
}

/// The value a fixture recorded.
pub(crate) fn static_val(s: &StaticProp) -> Val {
    match &s.value {
        None => Val::None,
        Some(v) => match s.ty {
            PropType::Bool => Val::Bool(v == "True"),
            PropType::Int => {
                if v.is_empty() {
                    Val::None
                } else {
                    Val::Int(v.clone())
                }
            }
            PropType::Vm => {
                if v.is_empty() {
                    Val::None
                } else {
                    Val::Vm(v.clone())
                }
            }
            PropType::Str | PropType::Label => {
                if v.is_empty() {
                    Val::None
                } else {
                    Val::Str(v.clone())
                }
            }
        },
    }
}

/// A fixture's property order merged with the built-in definitions (known
/// names keep their rules; unknown ones become opaque stored properties).
fn merge_order(builtin: &[PropDef], order: &[(String, PropType)]) -> Vec<PropDef> {
    order
        .iter()
        .map(
            |(name, ty)| match builtin.iter().find(|d| &d.name == name) {
                Some(d) => {
                    let mut d = d.clone();
                    d.ty = *ty;
                    d
                }
                None => PropDef::opaque(name, *ty),
            },
        )
        .collect()
}
