//! Which properties each class of qube (and the global app object) has:
//! name, API type, load stage, and whether it is write-once or computed.
//! The order of `admin.*.property.List` is (load stage, name), as upstream
//! sorts its property objects.

use serde::{Deserialize, Serialize};

/// Classes of qubes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum VmClass {
    /// dom0.
    AdminVM,
    /// Template-based qube.
    AppVM,
    /// Template.
    TemplateVM,
    /// Qube with its own root.
    StandaloneVM,
    /// Disposable based on an AppVM with `template_for_dispvms`.
    DispVM,
    /// A qube on another machine.
    RemoteVM,
}

impl VmClass {
    /// All classes in `admin.vmclass.List` order.
    pub const ALL: [VmClass; 6] = [
        VmClass::AdminVM,
        VmClass::AppVM,
        VmClass::DispVM,
        VmClass::RemoteVM,
        VmClass::StandaloneVM,
        VmClass::TemplateVM,
    ];

    /// Class name as the API prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::AdminVM => "AdminVM",
            Self::AppVM => "AppVM",
            Self::TemplateVM => "TemplateVM",
            Self::StandaloneVM => "StandaloneVM",
            Self::DispVM => "DispVM",
            Self::RemoteVM => "RemoteVM",
        }
    }

    /// Parses a class name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Classes with a `template` property.
    pub fn has_template(self) -> bool {
        matches!(self, Self::AppVM | Self::DispVM)
    }

    /// Classes that are full QubesVMs (volumes, network, lifecycle).
    pub fn is_qubesvm(self) -> bool {
        !matches!(self, Self::AdminVM | Self::RemoteVM)
    }

    /// Classes that can be a disposable template.
    pub fn can_be_dvm_template(self) -> bool {
        matches!(self, Self::AppVM | Self::StandaloneVM)
    }
}

/// The type word `admin.*.property.Get` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PropType {
    /// `type=bool`.
    Bool,
    /// `type=int`.
    Int,
    /// `type=str`.
    Str,
    /// `type=vm`.
    Vm,
    /// `type=label`.
    Label,
}

impl PropType {
    /// The type word.
    pub fn word(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Int => "int",
            Self::Str => "str",
            Self::Vm => "vm",
            Self::Label => "label",
        }
    }

    /// Parses a type word.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bool" => Some(Self::Bool),
            "int" => Some(Self::Int),
            "str" => Some(Self::Str),
            "vm" => Some(Self::Vm),
            "label" => Some(Self::Label),
            _ => None,
        }
    }
}

/// How a str-typed value is sanitised and converted (the Python `type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conv {
    /// `type=str` or none: printable ASCII.
    Plain,
    /// `ipaddress.IPv4Address`.
    Ip4,
    /// `ipaddress.IPv6Address`.
    Ip6,
    /// `uuid.UUID`.
    Uuid,
}

/// What kind of property it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Stored, with a default or not.
    Normal,
    /// Can be set once (while default), never changed nor reset after.
    WriteOnce,
    /// Computed; the setter is forbidden.
    Stateless,
}

/// One property definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PropDef {
    pub(crate) name: String,
    pub(crate) ty: PropType,
    pub(crate) conv: Conv,
    pub(crate) stage: u8,
    pub(crate) kind: Kind,
}

impl PropDef {
    fn new(name: &str, ty: PropType, stage: u8) -> Self {
        Self {
            name: name.to_string(),
            ty,
            conv: Conv::Plain,
            stage,
            kind: Kind::Normal,
        }
    }

    /// A property known only from a fixture (type as printed, stored as is).
    pub(crate) fn opaque(name: &str, ty: PropType) -> Self {
        Self::new(name, ty, 2)
    }
}

use Kind::{Stateless, WriteOnce};
use PropType::{Bool, Int, Label, Str, Vm};

fn p(name: &str, ty: PropType, stage: u8) -> PropDef {
    PropDef::new(name, ty, stage)
}

fn k(mut d: PropDef, kind: Kind) -> PropDef {
    d.kind = kind;
    d
}

fn c(mut d: PropDef, conv: Conv) -> PropDef {
    d.conv = conv;
    d
}

/// The built-in property list of a class, sorted by (stage, name).
pub(crate) fn class_props(class: VmClass) -> Vec<PropDef> {
    let mut v = match class {
        VmClass::AdminVM => vec![
            p("devices_denied", Str, 2),
            k(p("icon", Str, 2), Stateless),
            p("include_in_backups", Bool, 2),
            p("keyboard_layout", Str, 2),
            k(p("klass", Str, 2), Stateless),
            p("label", Label, 2),
            k(p("maxmem", Int, 2), Stateless),
            k(p("name", Str, 2), Stateless),
            k(p("qid", Int, 2), Stateless),
            k(p("updateable", Bool, 2), Stateless),
            k(c(p("uuid", Str, 2), Conv::Uuid), Stateless),
            p("default_dispvm", Vm, 4),
        ],
        VmClass::RemoteVM => vec![
            k(p("icon", Str, 2), Stateless),
            k(p("klass", Str, 2), Stateless),
            p("label", Label, 2),
            k(p("name", Str, 2), WriteOnce),
            k(p("qid", Int, 2), WriteOnce),
            p("remote_name", Str, 2),
            p("transport_rpc", Str, 2),
            k(c(p("uuid", Str, 2), Conv::Uuid), WriteOnce),
            p("relayvm", Vm, 4),
        ],
        _ => {
            let mut v = vec![
                p("autostart", Bool, 2),
                p("backup_timestamp", Int, 2),
                p("debug", Bool, 2),
                p("default_user", Str, 2),
                p("devices_denied", Str, 2),
                k(p("dns", Str, 2), Stateless),
                k(p("gateway", Str, 2), Stateless),
                k(p("gateway6", Str, 2), Stateless),
                k(p("icon", Str, 2), Stateless),
                p("include_in_backups", Bool, 2),
                p("installed_by_rpm", Bool, 2),
                c(p("ip", Str, 2), Conv::Ip4),
                c(p("ip6", Str, 2), Conv::Ip6),
                p("kernel", Str, 2),
                p("keyboard_layout", Str, 2),
                k(p("klass", Str, 2), Stateless),
                p("label", Label, 2),
                p("mac", Str, 2),
                p("maxmem", Int, 2),
                p("memory", Int, 2),
                k(p("name", Str, 2), WriteOnce),
                p("provides_network", Bool, 2),
                k(p("qid", Int, 2), WriteOnce),
                p("qrexec_timeout", Int, 2),
                p("shutdown_timeout", Int, 2),
                k(p("start_time", Str, 2), Stateless),
                p("stubdom_mem", Int, 2),
                k(p("stubdom_uuid", Str, 2), Stateless),
                k(p("stubdom_xid", Int, 2), Stateless),
                k(p("updateable", Bool, 2), Stateless),
                k(c(p("uuid", Str, 2), Conv::Uuid), WriteOnce),
                p("vcpus", Int, 2),
                p("virt_mode", Str, 2),
                k(p("visible_gateway", Str, 2), Stateless),
                k(p("visible_gateway6", Str, 2), Stateless),
                k(p("visible_ip", Str, 2), Stateless),
                k(p("visible_ip6", Str, 2), Stateless),
                k(p("visible_netmask", Str, 2), Stateless),
                k(p("xid", Int, 2), Stateless),
                p("audiovm", Vm, 4),
                p("bootmode", Str, 4),
                p("default_dispvm", Vm, 4),
                p("guivm", Vm, 4),
                p("kernelopts", Str, 4),
                p("management_dispvm", Vm, 4),
                p("netvm", Vm, 4),
            ];
            if class.can_be_dvm_template() {
                v.push(p("template_for_dispvms", Bool, 2));
            }
            if class.has_template() {
                v.push(p("template", Vm, 4));
            }
            if class == VmClass::DispVM {
                v.push(p("auto_cleanup", Bool, 2));
                v.push(k(p("is_preload", Bool, 2), Stateless));
                v.push(k(p("dispid", Int, 2), WriteOnce));
            }
            if class == VmClass::TemplateVM {
                v.push(p("appvm_default_bootmode", Str, 4));
            }
            v
        }
    };
    v.sort_by(|a, b| (a.stage, &a.name).cmp(&(b.stage, &b.name)));
    v
}

/// The built-in global property list, sorted by name (all load stage 3).
pub(crate) fn global_props() -> Vec<PropDef> {
    let mut v = vec![
        p("check_updates_vm", Bool, 3),
        p("clockvm", Vm, 3),
        p("default_audiovm", Vm, 3),
        p("default_dispvm", Vm, 3),
        p("default_guivm", Vm, 3),
        p("default_kernel", Str, 3),
        p("default_netvm", Vm, 3),
        p("default_pool", Str, 3),
        p("default_pool_kernel", Str, 3),
        p("default_pool_private", Str, 3),
        p("default_pool_root", Str, 3),
        p("default_pool_volatile", Str, 3),
        p("default_qrexec_timeout", Int, 3),
        p("default_shutdown_timeout", Int, 3),
        p("default_template", Vm, 3),
        p("management_dispvm", Vm, 3),
        k(p("maxmem", Int, 3), Stateless),
        k(p("no_cpus", Int, 3), Stateless),
        p("stats_interval", Int, 3),
        p("updatevm", Vm, 3),
    ];
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// One-paragraph help text of a property (`admin.*.property.Help`).
pub(crate) fn help(name: &str) -> &'static str {
    match name {
        "autostart" => "Setting this to `True` means that VM should be autostarted on dom0 boot.",
        "backup_timestamp" => "Time of last backup of the qube, in seconds since unix epoch",
        "debug" => "Turns on debugging features.",
        "default_dispvm" => "Default VM to be used as Disposable VM for service calls.",
        "default_user" => {
            "Default user to start applications as. TemplateBasedVMs use its template's value by default."
        }
        "include_in_backups" => "If this domain is to be included in default backup.",
        "kernel" => {
            "Kernel used by this domain. TemplateBasedVMs use its template's value by default."
        }
        "kernelopts" => {
            "Kernel command line passed to domain. TemplateBasedVMs use its template's value by default."
        }
        "label" => {
            "Colourful label assigned to VM. This is where the colour of the padlock is set."
        }
        "maxmem" => {
            "Maximum amount of memory available for this VM (for the purpose of the memory balancer)."
        }
        "memory" => {
            "Memory currently available for this VM. TemplateBasedVMs use its template's value by default."
        }
        "name" => "User-specified name of the domain.",
        "netvm" => {
            "VM that provides network connection to this domain. When `None`, machine is disconnected. When absent, domain uses default NetVM."
        }
        "provides_network" => {
            "If this domain can act as network provider (formerly known as NetVM or ProxyVM)"
        }
        "qid" => {
            "Internal, persistent identificator of particular domain. Note this is different from Xen domid."
        }
        "template" => "Template, on which this AppVM is based or will be based after restart",
        "template_for_dispvms" => "Should this VM be allowed to start as Disposable VM",
        "uuid" => "UUID from libvirt.",
        "vcpus" => {
            "Number of virtual CPUs for a qube. TemplateBasedVMs use its template's value by default."
        }
        "virt_mode" => {
            "Virtualisation mode: full virtualisation (\"HVM\"), or paravirtualisation (\"PV\"), or hybrid (\"PVH\"). TemplateBasedVMs use its template's value by default."
        }
        "default_netvm" => {
            "Default NetVM for AppVMs. Initial state is `None`, which means that AppVMs are not connected to the Internet."
        }
        "default_template" => "Default template for new AppVMs",
        "clockvm" => "Which VM to use as NTP proxy for updating AdminVM",
        "updatevm" => "Which VM to use as `yum` proxy for updating AdminVM and TemplateVMs",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appvm_order_matches_recordings() {
        let names: Vec<String> = class_props(VmClass::AppVM)
            .into_iter()
            .map(|d| d.name)
            .collect();
        let stage4 = names.iter().position(|n| n == "audiovm").unwrap();
        assert_eq!(
            &names[stage4..],
            [
                "audiovm",
                "bootmode",
                "default_dispvm",
                "guivm",
                "kernelopts",
                "management_dispvm",
                "netvm",
                "template"
            ]
        );
        assert_eq!(names[0], "autostart");
        assert!(names.contains(&"template_for_dispvms".to_string()));
    }

    #[test]
    fn classes_parse() {
        for c in VmClass::ALL {
            assert_eq!(VmClass::parse(c.name()), Some(c));
        }
        assert_eq!(VmClass::parse("Bogus"), None);
    }
}
