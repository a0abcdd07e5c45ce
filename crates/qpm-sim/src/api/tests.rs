//! Scenario tests of the Admin API over the public conformance fixture.

use std::collections::HashMap;

use super::*;
use crate::model::fixture;

struct T {
    sys: System,
    tokens: HashMap<String, (String, String)>,
}

impl T {
    fn new() -> Self {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../conformance/admin/fixture.json"
        ))
        .unwrap();
        Self {
            sys: fixture::from_fixture(&text).unwrap(),
            tokens: HashMap::new(),
        }
    }

    fn call(
        &mut self,
        src: &str,
        method: &str,
        dest: &str,
        arg: &str,
        payload: &str,
    ) -> Result<String, String> {
        let mut host = NoHost;
        let mut ctx = Context {
            sys: &mut self.sys,
            filter: &AllowAll,
            host: &mut host,
            next_uuid: None,
            clone_tokens: &mut self.tokens,
        };
        let h = handle(
            &mut ctx,
            Call {
                source: src.as_bytes(),
                method: method.as_bytes(),
                dest: dest.as_bytes(),
                arg: arg.as_bytes(),
                payload: payload.as_bytes(),
            },
        );
        match h.result {
            Ok(Response::Value(v)) => Ok(v.unwrap_or_default()),
            Ok(other) => Ok(format!("{other:?}")),
            Err(ApiError::Exception { class, .. }) => Err(class),
            Err(ApiError::Abort(_)) => Err("abort".into()),
        }
    }

    fn ok(&mut self, src: &str, method: &str, dest: &str, arg: &str, payload: &str) -> String {
        self.call(src, method, dest, arg, payload)
            .unwrap_or_else(|e| panic!("{method} {dest} {arg} {payload}: {e}"))
    }

    fn err(&mut self, src: &str, method: &str, dest: &str, arg: &str, payload: &str) -> String {
        match self.call(src, method, dest, arg, payload) {
            Ok(v) => panic!("{method} {dest} {arg} {payload}: unexpected success {v:?}"),
            Err(e) => e,
        }
    }

    fn get(&mut self, dest: &str, prop: &str) -> String {
        self.ok("dom0", "admin.vm.property.Get", dest, prop, "")
    }
}

#[test]
fn classes_can_be_created() {
    let mut t = T::new();
    t.ok(
        "dom0",
        "admin.vm.Create.TemplateVM",
        "dom0",
        "",
        "name=tpl label=black",
    );
    assert_eq!(t.get("tpl", "netvm"), "default=True type=vm ");
    assert_eq!(
        t.get("tpl", "icon"),
        "default=True type=str templatevm-black"
    );
    assert_eq!(t.get("tpl", "updateable"), "default=True type=bool True");
    assert_eq!(t.get("tpl", "ip"), "default=True type=str ");
    let list = t.ok("dom0", "admin.vm.property.List", "tpl", "", "");
    let fedora = t.ok("dom0", "admin.vm.property.List", "fedora-41", "", "");
    assert_eq!(
        list, fedora,
        "new qubes list properties in the class's order"
    );

    t.ok(
        "dom0",
        "admin.vm.Create.StandaloneVM",
        "dom0",
        "",
        "name=alone label=red",
    );
    assert_eq!(t.get("alone", "netvm"), "default=True type=vm sys-firewall");
    assert_eq!(
        t.get("alone", "icon"),
        "default=True type=str standalonevm-red"
    );
    assert_eq!(
        t.get("alone", "template_for_dispvms"),
        "default=True type=bool False"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.property.Get", "alone", "template", ""),
        "QubesNoSuchPropertyError"
    );

    t.ok(
        "dom0",
        "admin.vm.Create.DispVM",
        "dom0",
        "default-dvm",
        "name=disp1 label=red",
    );
    assert_eq!(
        t.get("disp1", "template"),
        "default=False type=vm default-dvm"
    );
    assert_eq!(
        t.get("disp1", "default_dispvm"),
        "default=True type=vm default-dvm"
    );
    assert_eq!(t.get("disp1", "icon"), "default=True type=str dispvm-red");
    assert_eq!(t.get("disp1", "is_preload"), "default=True type=bool False");
    let tags = t.ok("dom0", "admin.vm.tag.List", "disp1", "", "");
    assert_eq!(
        tags,
        "audiovm-dom0\ncreated-by-dom0\ndisp-created-by-dom0\nguivm-dom0\n"
    );
    assert_eq!(
        t.ok(
            "dom0",
            "admin.vm.feature.Get",
            "disp1",
            "appmenus-dispvm",
            ""
        ),
        "1"
    );
    // a disposable needs a disposable template
    assert_eq!(
        t.err(
            "dom0",
            "admin.vm.Create.DispVM",
            "dom0",
            "work",
            "name=disp2 label=red"
        ),
        "QubesValueError"
    );
    // default-dvm is now a template of a disposable
    assert_eq!(
        t.err(
            "dom0",
            "admin.vm.property.Set",
            "default-dvm",
            "template_for_dispvms",
            "False"
        ),
        "QubesVMInUseError"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.Remove", "default-dvm", "", ""),
        "QubesVMInUseError"
    );
    t.ok("dom0", "admin.vm.Remove", "disp1", "", "");
    t.ok(
        "dom0",
        "admin.vm.property.Set",
        "default-dvm",
        "template_for_dispvms",
        "False",
    );
    assert_eq!(
        t.get("default-dvm", "icon"),
        "default=True type=str appvm-red"
    );
}

#[test]
fn other_callers() {
    let mut t = T::new();
    t.ok(
        "work",
        "admin.vm.Create.AppVM",
        "dom0",
        "",
        "name=made label=red",
    );
    assert_eq!(
        t.ok("dom0", "admin.vm.tag.List", "made", "", ""),
        "audiovm-dom0\ncreated-by-work\nguivm-dom0\n"
    );
    assert_eq!(
        t.err("work", "admin.vm.tag.Set", "made", "created-by-vault", ""),
        "PermissionDenied"
    );
    assert_eq!(
        t.err("work", "admin.vm.tag.Remove", "made", "created-by-work", ""),
        "PermissionDenied"
    );
    assert_eq!(
        t.err("work", "admin.vm.tag.Set", "made", "disp-created-by-x", ""),
        "PermissionDenied"
    );
    t.ok("work", "admin.vm.tag.Set", "made", "mine", "");
    // validation comes before permission
    assert_eq!(
        t.err("work", "admin.vm.tag.Set", "made", "created-by.x", ""),
        "QubesInvalidTagError"
    );
    // dom0 may
    t.ok("dom0", "admin.vm.tag.Remove", "made", "created-by-work", "");
    assert_eq!(
        t.err("dom0", "admin.vm.tag.Set", "made", "created-by-ghost", ""),
        "abort"
    );
    assert_eq!(
        t.ok("dom0", "admin.vm.tag.Get", "made", "created-by-ghost", ""),
        "1"
    );
    // tag-created-vm-with
    t.ok(
        "dom0",
        "admin.vm.feature.Set",
        "vault",
        "tag-created-vm-with",
        "a b",
    );
    t.ok(
        "vault",
        "admin.vm.Create.AppVM",
        "dom0",
        "debian-12",
        "name=v2 label=red",
    );
    assert_eq!(
        t.ok("dom0", "admin.vm.tag.List", "v2", "", ""),
        "a\naudiovm-dom0\nb\ncreated-by-vault\nguivm-dom0\n"
    );
    // uuid source
    t.ok(
        "uuid:5c6e0a52-1f0e-4a57-9d2e-3b7f8a9c0006",
        "admin.vm.Create.AppVM",
        "dom0",
        "",
        "name=v3 label=red",
    );
    assert!(
        t.ok("dom0", "admin.vm.tag.List", "v3", "", "")
            .contains("created-by-vault\n")
    );
    // protected features
    assert_eq!(
        t.err(
            "dom0",
            "admin.vm.feature.Set",
            "work",
            "preload-dispvm",
            "x"
        ),
        "PermissionDenied"
    );
}

#[test]
fn create_errors() {
    let mut t = T::new();
    let e = |t: &mut T, method: &str, arg: &str, payload: &str| {
        t.err("dom0", method, "dom0", arg, payload)
    };
    assert_eq!(
        e(
            &mut t,
            "admin.vm.Create.AppVM",
            "",
            "name=a label=red name=b"
        ),
        "ProtocolError"
    );
    assert_eq!(
        e(
            &mut t,
            "admin.vm.Create.AppVM",
            "",
            "name=a label=red foo=bar"
        ),
        "ProtocolError"
    );
    assert_eq!(
        e(&mut t, "admin.vm.Create.AppVM", "", "name=a label=red "),
        "abort"
    );
    assert_eq!(
        e(&mut t, "admin.vm.Create.AppVM", "", "label=red"),
        "ProtocolError"
    );
    assert_eq!(
        e(&mut t, "admin.vm.Create.AppVM", "work", "name=a label=red"),
        "QubesPropertyValueError"
    );
    assert_eq!(
        e(
            &mut t,
            "admin.vm.Create.TemplateVM",
            "fedora-41",
            "name=a label=red"
        ),
        "ProtocolError"
    );
    assert_eq!(
        e(&mut t, "admin.vm.Create.AppVM", "", "name=a label=1"),
        "ProtocolError"
    );
    assert_eq!(
        e(
            &mut t,
            "admin.vm.CreateInPool.AppVM",
            "",
            "name=a label=red pool=nope"
        ),
        "QubesPoolNotFoundError"
    );
    assert_eq!(
        e(
            &mut t,
            "admin.vm.CreateInPool.AppVM",
            "",
            "name=a label=red pool=varlibqubes pool:root=varlibqubes"
        ),
        "ProtocolError"
    );
    assert_eq!(
        e(
            &mut t,
            "admin.vm.CreateInPool.AppVM",
            "",
            "name=a label=red pool:bogus=varlibqubes"
        ),
        "ProtocolError"
    );
    assert_eq!(
        e(&mut t, "admin.vm.Create.Bogus", "", "name=a label=red"),
        "ProtocolError"
    );
    assert_eq!(e(&mut t, "admin.vm.Create.AppVM", "", ""), "ProtocolError");
    assert_eq!(
        t.err(
            "dom0",
            "admin.vm.Create.AppVM",
            "work",
            "",
            "name=a label=red"
        ),
        "ProtocolError"
    );
    t.ok(
        "dom0",
        "admin.vm.CreateInPool.AppVM",
        "dom0",
        "",
        "name=a label=green pool:private=varlibqubes",
    );
}

#[test]
fn properties() {
    let mut t = T::new();
    let set =
        |t: &mut T, q: &str, p: &str, v: &str| t.call("dom0", "admin.vm.property.Set", q, p, v);
    assert_eq!(
        set(&mut t, "work", "vcpus", "0"),
        Err("QubesPropertyValueError".into())
    );
    assert_eq!(
        set(&mut t, "work", "maxmem", "-1"),
        Err("QubesPropertyValueError".into())
    );
    assert_eq!(set(&mut t, "work", "maxmem", "0"), Ok(String::new()));
    assert_eq!(
        set(&mut t, "work", "kernel", "a/b"),
        Err("QubesPropertyValueError".into())
    );
    assert_eq!(
        set(&mut t, "work", "default_user", "a b"),
        Err("QubesPropertyValueError".into())
    );
    assert_eq!(set(&mut t, "work", "mac", "zz"), Err("abort".into()));
    assert_eq!(
        set(&mut t, "work", "label", "label-99"),
        Err("abort".into())
    );
    assert_eq!(
        set(&mut t, "work", "uuid", "nope"),
        Err("QubesValueError".into())
    );
    assert_eq!(
        set(
            &mut t,
            "work",
            "uuid",
            "5c6e0a52-1f0e-4a57-9d2e-3b7f8a9c0099"
        ),
        Err("abort".into())
    );
    assert_eq!(
        set(&mut t, "work", "icon", "x"),
        Err("QubesPropertyValueError".into())
    );
    assert_eq!(
        set(&mut t, "work", "ip", "010.1.1.1"),
        Err("QubesValueError".into())
    );
    set(&mut t, "work", "ip", "10.1.2.3").unwrap();
    assert_eq!(
        t.get("work", "visible_ip"),
        "default=True type=str 10.1.2.3"
    );
    set(&mut t, "work", "virt_mode", "HVM").unwrap();
    assert_eq!(t.get("work", "virt_mode"), "default=False type=str hvm");
    assert_eq!(t.get("work", "maxmem"), "default=False type=int 0");
    set(&mut t, "work", "keyboard_layout", "de+nodeadkeys+").unwrap();
    assert_eq!(
        set(&mut t, "work", "keyboard_layout", "de"),
        Err("QubesPropertyValueError".into())
    );
    assert_eq!(
        set(&mut t, "sys-firewall", "provides_network", "False"),
        Err("QubesValueError".into())
    );
    assert_eq!(
        set(&mut t, "sys-net", "netvm", "sys-firewall"),
        Err("QubesValueError".into())
    );
    assert_eq!(set(&mut t, "work", "netvm", "dom0"), Err("abort".into()));
    assert_eq!(
        set(&mut t, "work", "template", ""),
        Err("QubesPropertyValueError".into())
    );
    assert_eq!(
        set(&mut t, "work", "default_dispvm", "vault"),
        Err("QubesPropertyValueError".into())
    );
    set(&mut t, "work", "guivm", "vault").unwrap();
    assert!(
        t.ok("dom0", "admin.vm.tag.List", "work", "", "")
            .contains("guivm-vault\n")
    );
    assert!(
        !t.ok("dom0", "admin.vm.tag.List", "work", "", "")
            .contains("guivm-dom0\n")
    );
    assert_eq!(
        t.get("work", "keyboard_layout"),
        "default=False type=str de+nodeadkeys+"
    );
    t.ok("dom0", "admin.vm.property.Reset", "work", "guivm", "");
    assert!(
        t.ok("dom0", "admin.vm.tag.List", "work", "", "")
            .contains("guivm-dom0\n")
    );
    assert_eq!(
        t.err("dom0", "admin.vm.property.Reset", "work", "template", ""),
        "QubesValueError"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.property.Reset", "work", "name", ""),
        "abort"
    );
    t.ok("dom0", "admin.vm.property.Reset", "work", "dns", "");
    t.ok("dom0", "admin.vm.property.Reset", "work", "label", "");
    assert_eq!(t.get("work", "label"), "default=True type=label ");
    assert_eq!(t.get("work", "icon"), "default=True type=str ");
    assert_eq!(
        t.ok("dom0", "admin.vm.property.GetDefault", "work", "icon", ""),
        ""
    );
    // dom0
    assert_eq!(
        t.ok("dom0", "admin.vm.property.Get", "dom0", "name", ""),
        "default=True type=str dom0"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.property.Set", "dom0", "name", "x"),
        "QubesPropertyValueError"
    );
    assert_eq!(
        t.ok("dom0", "admin.vm.property.GetDefault", "dom0", "qid", ""),
        "type=int 0"
    );
}

#[test]
fn globals() {
    let mut t = T::new();
    let set = |t: &mut T, p: &str, v: &str| t.call("dom0", "admin.property.Set", "dom0", p, v);
    assert_eq!(
        set(&mut t, "default_template", "work"),
        Err("QubesPropertyValueError".into())
    );
    assert_eq!(
        set(&mut t, "default_pool", "nope"),
        Err("QubesPropertyValueError".into())
    );
    assert_eq!(
        set(&mut t, "maxmem", "1"),
        Err("QubesPropertyValueError".into())
    );
    assert_eq!(
        set(&mut t, "stats_interval", "x"),
        Err("QubesValueError".into())
    );
    set(&mut t, "clockvm", "sys-firewall").unwrap();
    assert_eq!(
        t.ok(
            "dom0",
            "admin.vm.feature.Get",
            "sys-firewall",
            "service.clocksync",
            ""
        ),
        "1"
    );
    assert_eq!(
        t.err(
            "dom0",
            "admin.vm.feature.Get",
            "sys-net",
            "service.clocksync",
            ""
        ),
        "QubesFeatureNotFoundError"
    );
    set(&mut t, "check_updates_vm", "False").unwrap();
    t.ok(
        "dom0",
        "admin.vm.Create.AppVM",
        "dom0",
        "",
        "name=n label=red",
    );
    assert_eq!(
        t.ok("dom0", "admin.vm.feature.Get", "n", "check-updates", ""),
        ""
    );
    set(&mut t, "default_kernel", "6.1").unwrap();
    assert_eq!(t.get("n", "kernel"), "default=True type=str 6.1");
    set(&mut t, "default_pool", "linux-kernel").unwrap();
    assert_eq!(
        t.ok(
            "dom0",
            "admin.property.Get",
            "dom0",
            "default_pool_private",
            ""
        ),
        "default=True type=str linux-kernel"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.Remove", "sys-firewall", "", ""),
        "QubesVMInUseError"
    );
    set(&mut t, "default_guivm", "vault").unwrap();
    assert!(
        t.ok("dom0", "admin.vm.tag.List", "work", "", "")
            .contains("guivm-vault\n")
    );
}

#[test]
fn labels_features_firewall_volumes() {
    let mut t = T::new();
    t.ok("dom0", "admin.label.Create", "dom0", "pink", "0xffc0cb");
    assert_eq!(t.ok("dom0", "admin.label.Index", "dom0", "pink", ""), "9");
    assert_eq!(t.ok("dom0", "admin.label.Get", "dom0", "9", ""), "0xffc0cb");
    assert_eq!(
        t.err("dom0", "admin.label.Create", "dom0", "pink", "0xffc0cb"),
        "QubesValueError"
    );
    assert_eq!(
        t.err("dom0", "admin.label.Create", "dom0", "x", "ffc0cb"),
        "QubesInvalidLabelValueError"
    );
    assert_eq!(
        t.err("dom0", "admin.label.Create", "dom0", "42", "0xffc0cb"),
        "QubesInvalidLabelError"
    );
    t.ok("dom0", "admin.vm.property.Set", "work", "label", "pink");
    assert_eq!(
        t.err("dom0", "admin.label.Remove", "dom0", "pink", ""),
        "QubesLabelInUseError"
    );
    assert_eq!(
        t.err("dom0", "admin.label.Remove", "dom0", "red", ""),
        "ProtocolError"
    );
    t.ok("dom0", "admin.vm.property.Set", "work", "label", "red");
    t.ok("dom0", "admin.label.Remove", "dom0", "pink", "");

    assert_eq!(
        t.err(
            "dom0",
            "admin.vm.feature.Set",
            "work",
            "custom-persist.x",
            "relative"
        ),
        "QubesValueError"
    );
    t.ok(
        "dom0",
        "admin.vm.feature.Set",
        "work",
        "custom-persist.x",
        "/etc/x",
    );
    t.ok(
        "dom0",
        "admin.vm.feature.Set",
        "work",
        "custom-persist.y",
        "file:root:root:0644:/etc/y:z",
    );
    assert_eq!(
        t.err(
            "dom0",
            "admin.vm.feature.Set",
            "work",
            "custom-persist.z",
            "file:root:root:999:/etc/y"
        ),
        "QubesValueError"
    );
    assert_eq!(
        t.err(
            "dom0",
            "admin.vm.feature.Set",
            "work",
            "custom-persist.z",
            "fifo:root:root:0644:/etc/y"
        ),
        "QubesValueError"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.feature.Set", "work", "x", "a\tb"),
        "ProtocolError"
    );
    t.ok(
        "dom0",
        "admin.vm.feature.Set",
        "fedora-41",
        "net.fake-ip",
        "",
    );
    assert_eq!(
        t.ok(
            "dom0",
            "admin.vm.feature.CheckWithAdminVM",
            "work",
            "my-app.setting",
            ""
        ),
        "on"
    );

    assert_eq!(
        t.ok("dom0", "admin.vm.firewall.Get", "work", "", ""),
        "action=accept\n"
    );
    t.ok(
        "dom0",
        "admin.vm.firewall.Set",
        "work",
        "",
        "action=accept proto=tcp dstports=443\naction=drop\n",
    );
    assert_eq!(
        t.ok("dom0", "admin.vm.firewall.Get", "work", "", ""),
        "action=accept proto=tcp dstports=443-443\naction=drop\n"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.firewall.Get", "dom0", "", ""),
        "ProtocolError"
    );

    let info = t.ok("dom0", "admin.vm.volume.Info", "work", "root", "");
    assert!(info.contains("snap_on_start=True\n"), "{info}");
    assert!(
        info.contains("source=vm-templates/fedora-41/root\n"),
        "{info}"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.volume.Info", "work", "nope", ""),
        "PermissionDenied"
    );
    let token = t.ok("dom0", "admin.vm.volume.CloneFrom", "work", "private", "");
    assert_eq!(token.len(), 32);
    t.ok(
        "dom0",
        "admin.vm.volume.CloneTo",
        "vault",
        "private",
        &token,
    );
    assert_eq!(
        t.err(
            "dom0",
            "admin.vm.volume.CloneTo",
            "vault",
            "private",
            &token
        ),
        "ProtocolError"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.volume.Resize", "work", "private", "1"),
        "QubesValueError"
    );
    t.ok(
        "dom0",
        "admin.vm.volume.Resize",
        "work",
        "private",
        "4294967296",
    );
}

#[test]
fn lifecycle() {
    let mut t = T::new();
    assert_eq!(
        t.err("dom0", "admin.vm.Shutdown", "work", "", ""),
        "QubesVMNotStartedError"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.Start", "dom0", "", ""),
        "ProtocolError"
    );
    t.ok("dom0", "admin.vm.Start", "work", "", "");
    assert!(
        t.ok("dom0", "admin.vm.List", "sys-net", "", "")
            .contains("state=Running")
    );
    assert!(
        t.ok("dom0", "admin.vm.CurrentState", "work", "", "")
            .ends_with("power_state=Running")
    );
    assert_eq!(
        t.err("dom0", "admin.vm.Shutdown", "sys-firewall", "", ""),
        "QubesVMError"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.Shutdown", "work", "now", ""),
        "ProtocolError"
    );
    assert_eq!(
        t.err(
            "dom0",
            "admin.vm.property.Set",
            "work",
            "template",
            "debian-12"
        ),
        "QubesVMNotHaltedError"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.Remove", "work", "", ""),
        "QubesVMNotHaltedError"
    );
    t.ok("dom0", "admin.vm.Pause", "work", "", "");
    assert_eq!(
        t.err("dom0", "admin.vm.Pause", "work", "", ""),
        "QubesVMNotRunningError"
    );
    t.ok("dom0", "admin.vm.Unpause", "work", "", "");
    t.ok("dom0", "admin.vm.Shutdown", "work", "force+wait", "");
    t.ok("dom0", "admin.vm.Kill", "sys-firewall", "", "");
    let name = t.ok("work", "admin.vm.CreateDisposable", "dom0", "", "");
    assert!(name.starts_with("disp"), "{name}");
    assert!(
        t.ok("dom0", "admin.vm.tag.List", &name, "", "")
            .contains("disp-created-by-work\n")
    );
    t.ok("dom0", "admin.vm.Start", &name, "", "");
    t.ok("dom0", "admin.vm.Shutdown", &name, "", "");
    assert_eq!(
        t.err("dom0", "admin.vm.List", &name, "", ""),
        "QubesVMNotFoundError",
        "auto_cleanup"
    );
    let u = t.ok(
        "work",
        "admin.vm.CreateDisposable",
        "default-dvm",
        "",
        "uuid",
    );
    assert!(u.starts_with("uuid:"), "{u}");
}

#[test]
fn destination_and_generic_checks() {
    let mut t = T::new();
    assert_eq!(
        t.err(
            "dom0",
            "admin.vm.List",
            "uuid:5c6e0a52-1f0e-4a57-9d2e-3b7f8a9c00",
            "",
            ""
        ),
        "QubesVMInvalidUUIDError"
    );
    assert_eq!(
        t.err(
            "dom0",
            "admin.vm.List",
            "uuid:5c6e0a52-1f0e-4a57-9d2e-zzzzzzzzzzzz",
            "",
            ""
        ),
        "abort",
        "qubesd's uuid check is a prefix match"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.Bogus", "bad name", "", ""),
        "QubesValueError"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.Bogus", "nope", "", ""),
        "QubesVMNotFoundError"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.property.Set", "work", "", ""),
        "ProtocolError"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.List", "dom0", "x", "y"),
        "ProtocolError"
    );
    assert_eq!(
        t.err("nope", "admin.vm.List", "dom0", "", ""),
        "QubesVMNotFoundError"
    );
}

#[test]
fn firewall_rules_as_qubesd_parses_and_prints_them() {
    let mut t = T::new();
    // what qvm-firewall sends: dst4/dst6 keys, dsthost for names; qubesd
    // prints its own order, the address kind, ports as a range
    t.ok(
        "dom0",
        "admin.vm.firewall.Set",
        "work",
        "",
        "action=drop dst4=10.0.0.0/8\n\
         action=accept dsthost=example.com proto=tcp dstports=443-443\n\
         action=accept dst6=fd00::1\n\
         action=accept specialtarget=dns\n\
         action=accept proto=icmp icmptype=8\n\
         action=accept expire=4102444800 comment=until 2100\n\
         action=accept expire=1000000000 comment=long gone\n",
    );
    assert_eq!(
        t.ok("dom0", "admin.vm.firewall.Get", "work", "", ""),
        "action=drop dst4=10.0.0.0/8\n\
         action=accept dsthost=example.com proto=tcp dstports=443-443\n\
         action=accept dst6=fd00::1/128\n\
         action=accept specialtarget=dns\n\
         action=accept proto=icmp icmptype=8\n\
         action=accept expire=4102444800 comment=until 2100\n"
    );
    // a rule qubesd's Rule class refuses raises a plain ValueError: the
    // call is aborted and the rules stay as they were
    for bad in [
        "action=accept dstports=80",
        "action=accept dst4=1.2.3.4 dsthost=5.6.7.8",
        "action=accept bogus=1",
        "action=allow",
        "action=accept comment=a=b",
    ] {
        assert_eq!(
            t.err("dom0", "admin.vm.firewall.Set", "work", "", bad),
            "abort",
            "{bad}"
        );
    }
    assert!(
        t.ok("dom0", "admin.vm.firewall.Get", "work", "", "")
            .starts_with("action=drop dst4=10.0.0.0/8\n")
    );
}

#[test]
fn adminvm_cannot_be_created() {
    let mut t = T::new();
    let before = t.ok("dom0", "admin.vm.List", "dom0", "", "");
    assert_eq!(
        t.err(
            "dom0",
            "admin.vm.Create.AdminVM",
            "dom0",
            "",
            "name=dom1 label=black"
        ),
        "QubesPropertyValueError"
    );
    assert_eq!(t.ok("dom0", "admin.vm.List", "dom0", "", ""), before);
    // the checks before construction still come first
    assert_eq!(
        t.err(
            "dom0",
            "admin.vm.Create.AdminVM",
            "dom0",
            "",
            "name=work label=black"
        ),
        "QubesVMAlreadyExistsError"
    );
}

#[test]
fn default_netvm_not_moved_to_a_halted_qube_under_running_clients() {
    let mut t = T::new();
    t.ok(
        "dom0",
        "admin.vm.Create.AppVM",
        "dom0",
        "fedora-41",
        "name=net2 label=red",
    );
    t.ok(
        "dom0",
        "admin.vm.property.Set",
        "net2",
        "provides_network",
        "True",
    );
    t.ok("dom0", "admin.vm.property.Set", "net2", "netvm", "sys-net");
    // work starts with its netvm chain (sys-firewall, sys-net)
    t.ok("dom0", "admin.vm.Start", "work", "", "");
    let set = |t: &mut T| {
        t.call(
            "dom0",
            "admin.property.Set",
            "dom0",
            "default_netvm",
            "net2",
        )
    };
    assert_eq!(set(&mut t).unwrap_err(), "QubesVMNotRunningError");
    assert_eq!(
        t.ok("dom0", "admin.property.Get", "dom0", "default_netvm", ""),
        "default=False type=vm sys-firewall"
    );
    // qubes still connected to the running sys-firewall, even halted ones
    t.ok("dom0", "admin.vm.Kill", "work", "", "");
    assert_eq!(set(&mut t).unwrap_err(), "QubesVMNotRunningError");
    // once the old default netvm is not running, the change is allowed
    t.ok("dom0", "admin.vm.Kill", "sys-firewall", "", "");
    assert_eq!(set(&mut t).unwrap(), "");
}

#[test]
fn create_in_pool_moves_only_what_qubesd_moves() {
    let mut t = T::new();
    let pool_of = |t: &mut T, vm: &str, vol: &str| -> String {
        t.ok("dom0", "admin.vm.volume.Info", vm, vol, "")
            .lines()
            .find_map(|l| l.strip_prefix("pool=").map(str::to_string))
            .unwrap_or_default()
    };
    // pool=: the read-write volumes that are not snapshots
    t.ok(
        "dom0",
        "admin.vm.CreateInPool.StandaloneVM",
        "dom0",
        "",
        "name=sa label=red pool=varlibqubes",
    );
    assert_eq!(pool_of(&mut t, "sa", "root"), "varlibqubes");
    assert_eq!(pool_of(&mut t, "sa", "kernel"), "linux-kernel");
    // pool:kernel= does move the kernel volume
    t.ok(
        "dom0",
        "admin.vm.CreateInPool.AppVM",
        "dom0",
        "fedora-41",
        "name=k label=red pool:kernel=varlibqubes",
    );
    assert_eq!(pool_of(&mut t, "k", "kernel"), "varlibqubes");
    // a snapshot volume stays with its origin
    assert_eq!(
        t.err(
            "dom0",
            "admin.vm.CreateInPool.AppVM",
            "dom0",
            "fedora-41",
            "name=snap label=red pool:root=varlibqubes",
        ),
        "QubesException"
    );
    assert_eq!(
        t.err("dom0", "admin.vm.List", "snap", "", ""),
        "QubesVMNotFoundError"
    );
}

#[test]
fn firewall_changes_fire_firewall_changed() {
    let mut t = T::new();
    let mut events = |method: &str, payload: &[u8]| {
        let mut host = NoHost;
        let mut ctx = Context {
            sys: &mut t.sys,
            filter: &AllowAll,
            host: &mut host,
            next_uuid: None,
            clone_tokens: &mut t.tokens,
        };
        let h = handle(
            &mut ctx,
            Call {
                source: b"dom0",
                method: method.as_bytes(),
                dest: b"work",
                arg: b"",
                payload,
            },
        );
        h.events
            .iter()
            .map(|e| format!("{} {}", e.subject, e.name))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        events("admin.vm.firewall.Set", b"action=drop\n"),
        ["work firewall-changed"]
    );
    assert_eq!(
        events("admin.vm.firewall.Reload", b""),
        ["work firewall-changed"]
    );
    assert!(events("admin.vm.firewall.Set", b"action=nope\n").is_empty());
}

#[test]
fn property_events_as_qubes_property_fires_them() {
    fn evs(t: &mut T, method: &str, dest: &str, arg: &str, payload: &[u8]) -> Vec<String> {
        let mut host = NoHost;
        let mut ctx = Context {
            sys: &mut t.sys,
            filter: &AllowAll,
            host: &mut host,
            next_uuid: None,
            clone_tokens: &mut t.tokens,
        };
        let h = handle(
            &mut ctx,
            Call {
                source: b"dom0",
                method: method.as_bytes(),
                dest: dest.as_bytes(),
                arg: arg.as_bytes(),
                payload,
            },
        );
        h.events
            .iter()
            .map(|e| {
                let kw: Vec<String> = e.kwargs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{} {} {}", e.subject, e.name, kw.join(","))
            })
            .collect::<Vec<_>>()
    }
    let mut t = T::new();
    // oldvalue is the value before, even a default one
    assert_eq!(
        evs(&mut t, "admin.vm.property.Set", "work", "memory", b"500"),
        [
            "work property-pre-set:memory name=memory,newvalue=500,oldvalue=400",
            "work property-set:memory name=memory,newvalue=500,oldvalue=400",
        ]
    );
    assert_eq!(
        evs(&mut t, "admin.vm.property.Reset", "work", "memory", b""),
        [
            "work property-pre-reset:memory name=memory,oldvalue=500",
            "work property-pre-del:memory name=memory,oldvalue=500",
            "work property-reset:memory name=memory,oldvalue=500",
            "work property-del:memory name=memory,oldvalue=500",
        ]
    );
    // str(None) for a qube set to none, '' for an empty string
    assert_eq!(
        evs(&mut t, "admin.vm.property.Set", "work", "netvm", b""),
        [
            "work property-pre-set:netvm name=netvm,newvalue=None,oldvalue=sys-firewall",
            "work property-set:netvm name=netvm,newvalue=None,oldvalue=sys-firewall",
        ]
    );
    assert_eq!(
        evs(&mut t, "admin.vm.property.Set", "work", "kernel", b"")[1],
        "work property-set:kernel name=kernel,newvalue=,oldvalue=6.6.1-1.fc37"
    );
    // a default of None is an old value; no value at all is not
    assert_eq!(
        evs(
            &mut t,
            "admin.vm.property.Set",
            "work",
            "backup_timestamp",
            b"5"
        )[0],
        "work property-pre-set:backup_timestamp name=backup_timestamp,newvalue=5,oldvalue=None"
    );
    assert_eq!(
        evs(
            &mut t,
            "admin.property.Reset",
            "dom0",
            "default_template",
            b""
        )[0],
        " property-pre-reset:default_template name=default_template,oldvalue=fedora-41"
    );
    assert_eq!(
        evs(
            &mut t,
            "admin.property.Set",
            "dom0",
            "default_template",
            b"fedora-41"
        )[0],
        " property-pre-set:default_template name=default_template,newvalue=fedora-41"
    );
    // a setter refuses before the pre event...
    assert!(evs(&mut t, "admin.vm.property.Set", "work", "netvm", b"vault").is_empty());
    // ...a pre-set handler after it, and the pre event has been sent
    for (m, d, a, p) in [
        (
            "admin.vm.Create.AppVM",
            "dom0",
            "fedora-41",
            "name=net2 label=red",
        ),
        ("admin.vm.property.Set", "net2", "provides_network", "True"),
        ("admin.vm.property.Set", "work", "netvm", "sys-net"),
        ("admin.vm.property.Reset", "work", "kernel", ""),
        ("admin.vm.Start", "work", "", ""),
    ] {
        t.ok("dom0", m, d, a, p);
    }
    assert_eq!(
        evs(&mut t, "admin.vm.property.Set", "work", "netvm", b"net2"),
        ["work property-pre-set:netvm name=netvm,newvalue=net2,oldvalue=sys-net"]
    );
    assert_eq!(
        evs(
            &mut t,
            "admin.property.Set",
            "dom0",
            "default_kernel",
            b"1.2"
        )[0],
        " property-pre-set:default_kernel name=default_kernel,newvalue=1.2,oldvalue=6.6.1-1.fc37"
    );
}
