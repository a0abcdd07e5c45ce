//! The simulated qubesd over arbitrary request sequences: never panics, and
//! the state invariants hold after every call (dom0 exists, names unique,
//! every VM-valued property names an existing qube).
#![no_main]
use libfuzzer_sys::fuzz_target;
use qpm_sim::api::{AllowAll, Call, Context, NoHost, handle};
use qpm_sim::model::{PropType, Val, fixture};

const METHODS: &[&str] = &[
    "admin.vm.List", "admin.vm.property.Get", "admin.vm.property.Set", "admin.vm.property.Reset",
    "admin.vm.property.GetAll", "admin.property.Set", "admin.property.Reset", "admin.vm.Create.AppVM",
    "admin.vm.Create.DispVM", "admin.vm.Create.TemplateVM", "admin.vm.CreateInPool.StandaloneVM",
    "admin.vm.Remove", "admin.vm.feature.Set", "admin.vm.feature.Remove", "admin.vm.tag.Set",
    "admin.vm.tag.Remove", "admin.vm.Start", "admin.vm.Shutdown", "admin.vm.Kill", "admin.label.Create",
    "admin.label.Remove", "admin.vm.CreateDisposable", "admin.vm.firewall.Set", "admin.vm.volume.CloneFrom",
];
const NAMES: &[&str] = &["dom0", "work", "vault", "sys-net", "sys-firewall", "default-dvm", "fedora-41", "debian-12", "x", "y"];
const PROPS: &[&str] = &["netvm", "template", "label", "memory", "default_dispvm", "template_for_dispvms", "provides_network", "guivm", "default_netvm", "default_template", "clockvm", "kernel", "name"];

fuzz_target!(|data: &[u8]| {
    let fixture_text = include_str!("../../conformance/admin/fixture.json");
    let mut sys = fixture::from_fixture(fixture_text).expect("fixture");
    let mut tokens = Default::default();
    for chunk in data.chunks(4).take(64) {
        let pick = |i: usize, l: &[&'static str]| l[chunk.get(i).copied().unwrap_or(0) as usize % l.len()];
        let method = pick(0, METHODS);
        let dest = if method.starts_with("admin.vm.Create") || method.starts_with("admin.property") || method.starts_with("admin.label") { "dom0" } else { pick(1, NAMES) };
        let arg_sel = pick(2, PROPS);
        let arg = match method {
            m if m.contains("tag") => "t1",
            m if m.contains("feature") => "service.x",
            m if m.starts_with("admin.vm.Create") => if chunk.get(2).copied().unwrap_or(0) % 2 == 0 { "" } else { "fedora-41" },
            "admin.label.Create" | "admin.label.Remove" => "pink",
            "admin.vm.volume.CloneFrom" => "private",
            "admin.vm.Start" | "admin.vm.Kill" | "admin.vm.List" | "admin.vm.Remove" | "admin.vm.CreateDisposable"
            | "admin.vm.property.GetAll" | "admin.vm.firewall.Set" => "",
            "admin.vm.Shutdown" => "force",
            _ => arg_sel,
        };
        let value = pick(3, NAMES);
        let payload = match method {
            m if m.starts_with("admin.vm.Create") => format!("name={value} label=red"),
            "admin.label.Create" => "0x123456".to_string(),
            "admin.vm.firewall.Set" => "action=drop\n".to_string(),
            m if m.ends_with("Reset") || m.ends_with("Get") || m.ends_with("Remove") || m.ends_with("GetAll")
                || m.ends_with("List") || m.ends_with("Start") || m.ends_with("Kill") || m.ends_with("Shutdown")
                || m.ends_with("CloneFrom") || m.ends_with("CreateDisposable") || m.ends_with("tag.Set") => String::new(),
            _ => value.to_string(),
        };
        let mut host = NoHost;
        let mut ctx = Context { sys: &mut sys, filter: &AllowAll, host: &mut host, next_uuid: None, clone_tokens: &mut tokens };
        let _ = handle(&mut ctx, Call { source: b"dom0", method: method.as_bytes(), dest: dest.as_bytes(), arg: arg.as_bytes(), payload: payload.as_bytes() });
        // invariants
        assert!(sys.dom0().is_some());
        let mut names: Vec<&str> = sys.qubes.iter().map(|q| q.name.as_str()).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len(), "duplicate qube names");
        for (i, q) in sys.qubes.iter().enumerate() {
            for (k, v) in &q.props {
                if let Val::Vm(target) = v {
                    assert!(sys.find(target).is_some(), "{}.{k} names a missing qube {target}", q.name);
                }
            }
            let _ = sys.get(i, "ip");
            let _ = PropType::Vm;
        }
    }
});
