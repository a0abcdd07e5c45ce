use super::*;

fn diags(text: &str) -> Vec<Diagnostic> {
    match parse(Path::new("qpm.toml"), text) {
        Ok(m) => panic!("expected errors, got {m:?}"),
        Err(ManifestError::Invalid(d)) => d,
        Err(e) => panic!("unexpected {e}"),
    }
}

const HEAD: &str = "[package]\nname = \"demo\"\nversion = \"1.0.0\"\nsummary = \"A demo\"\n";

#[test]
fn minimal_manifest_parses() {
    let m = parse(Path::new("qpm.toml"), HEAD).unwrap();
    assert_eq!(m.name, "demo");
    assert_eq!(m.version, semver::Version::new(1, 0, 0));
    assert!(m.qubes.is_empty());
}

#[test]
fn full_qube_table() {
    let text = format!(
        "{HEAD}requires = [\"base-templates >= 1.2\"]\n\n\
[qubes.demo-tpl]\nclass = \"TemplateVM\"\nclone = \"debian-13-minimal\"\nlabel = \"black\"\n\n\
[qubes.demo-dvm]\nclass = \"AppVM\"\ntemplate = \"demo-tpl\"\nlabel = \"red\"\nnetvm = \"none\"\n\
disposable_template = true\ndefault_dispvm = \"none\"\n\n\
[qubes.demo-app]\nclass = \"AppVM\"\ntemplate = \"demo-tpl\"\nlabel = \"blue\"\nnetvm = \"sys-firewall\"\n\
default_dispvm = \"demo-dvm\"\nproperties = {{ memory = 800, autostart = true, virt_mode = \"pvh\" }}\n\
features = {{ \"vm-config.X\" = \"y\", internal = true }}\nservices = {{ paxctld = true, cups = false }}\n\
tags = [\"demo\"]\nvolumes = {{ private = \"10GiB\" }}\nmenu_items = [\"org.gnome.Nautilus.desktop\"]\n\
firewall = [{{ action = \"accept\", proto = \"tcp\", dsthost = \"example.org\", dstports = 443 }}, {{ action = \"drop\" }}]\n\n\
[[files]]\nqube = \"demo-app\"\nsource = \"files/app.conf\"\npath = \"/home/user/.config/app.conf\"\nmode = \"0600\"\n\n\
[upgrade]\nrenamed = {{ demo-old = \"demo-app\" }}\nnotes = \"renamed\"\n"
    );
    let m = parse(Path::new("qpm.toml"), &text).unwrap();
    let app = &m.qubes["demo-app"];
    assert_eq!(app.class, QubeClass::AppVM);
    assert_eq!(app.netvm, Some(QubeRef::Name("sys-firewall".into())));
    assert_eq!(app.properties["memory"], PropValue::Int(800));
    assert_eq!(app.properties["autostart"].to_wire(), "True");
    assert_eq!(app.features["internal"], "1");
    assert_eq!(app.features["service.paxctld"], "1");
    assert_eq!(app.features["service.cups"], "");
    assert_eq!(app.features["menu-items"], "org.gnome.Nautilus.desktop");
    assert_eq!(app.volumes["private"], 10 << 30);
    assert!(app.data);
    let fw = app.firewall.as_ref().unwrap();
    assert_eq!(
        fw[0].to_wire(),
        "action=accept proto=tcp dsthost=example.org dstports=443-443"
    );
    assert_eq!(fw[1].to_wire(), "action=drop");
    let dvm = &m.qubes["demo-dvm"];
    assert!(dvm.disposable_template);
    assert!(!dvm.data);
    assert_eq!(dvm.netvm, Some(QubeRef::None));
    assert_eq!(
        m.qubes["demo-tpl"].clone.as_deref(),
        Some("debian-13-minimal")
    );
    assert_eq!(m.requires[0].name, "base-templates");
    assert_eq!(m.files[0].mode, 0o600);
    assert_eq!(m.renamed["demo-old"], "demo-app");
    let ext = m.external_refs();
    assert!(ext.contains_key("debian-13-minimal"));
    assert!(ext.contains_key("sys-firewall"));
    assert!(!ext.contains_key("demo-tpl"));
}

#[test]
fn unknown_keys_are_rejected_with_position() {
    let d = diags(&format!(
        "{HEAD}\n[qubes.a]\nclass = \"AppVM\"\ntemplate = \"t\"\nlabel = \"red\"\nnetwm = \"x\"\n"
    ));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].line, 10, "{}", d[0]);
    assert!(d[0].message.contains("netwm"), "{}", d[0]);
}

#[test]
fn syntax_error_has_line() {
    let d = diags("[package\nname = 1\n");
    assert_eq!(d[0].line, 1, "{}", d[0]);
}

#[test]
fn all_semantic_errors_are_reported_with_fields() {
    let text = format!(
        "{HEAD}\n[qubes.1bad]\nclass = \"AppVM\"\ntemplate = \"t\"\nlabel = \"red\"\n\n\
[qubes.b]\nclass = \"Weird\"\nlabel = \"red\"\n\n\
[qubes.c]\nclass = \"AppVM\"\ntemplate = \"dom0\"\nlabel = \"red\"\nproperties = {{ memory = \"lots\", name = \"x\" }}\ntags = [\"created-by-evil\", \"bad.tag\"]\n"
    );
    let d = diags(&text);
    let fields: Vec<&str> = d.iter().map(|d| d.field.as_str()).collect();
    assert!(fields.contains(&"qubes.1bad"), "{fields:?}");
    assert!(fields.contains(&"qubes.b.class"), "{fields:?}");
    assert!(fields.contains(&"qubes.c.template"), "{fields:?}");
    assert!(fields.contains(&"qubes.c.properties.memory"), "{fields:?}");
    assert!(fields.contains(&"qubes.c.properties.name"), "{fields:?}");
    assert_eq!(
        fields.iter().filter(|f| **f == "qubes.c.tags").count(),
        2,
        "{fields:?}"
    );
    // every diagnostic has a line
    assert!(d.iter().all(|d| d.line > 0), "{d:?}");
    let memory = d
        .iter()
        .find(|d| d.field == "qubes.c.properties.memory")
        .unwrap();
    assert_eq!(memory.line, 19, "{memory}");
}

#[test]
fn bad_package_fields() {
    let d = diags(
        "[package]\nname = \"Bad_Name\"\nversion = \"one\"\nsummary = \"\"\nrequires = [\"x y z\"]\n",
    );
    let fields: Vec<&str> = d.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "package.name",
            "package.version",
            "package.summary",
            "package.requires"
        ]
    );
}

#[test]
fn netvm_cycle_is_an_error() {
    let text = format!(
        "{HEAD}\n[qubes.a]\nclass = \"AppVM\"\ntemplate = \"t\"\nlabel = \"red\"\nnetvm = \"b\"\nproperties = {{ provides_network = true }}\n\n\
[qubes.b]\nclass = \"AppVM\"\ntemplate = \"t\"\nlabel = \"red\"\nnetvm = \"a\"\nproperties = {{ provides_network = true }}\n"
    );
    let d = diags(&text);
    assert!(d.iter().any(|d| d.message.contains("netvm cycle")), "{d:?}");
}

#[test]
fn netvm_must_provide_network() {
    let text = format!(
        "{HEAD}\n[qubes.a]\nclass = \"AppVM\"\ntemplate = \"t\"\nlabel = \"red\"\nnetvm = \"b\"\n\n\
[qubes.b]\nclass = \"AppVM\"\ntemplate = \"t\"\nlabel = \"red\"\n"
    );
    let d = diags(&text);
    assert!(d[0].message.contains("provides_network"), "{d:?}");
}

#[test]
fn dispvm_needs_disposable_template() {
    let text = format!(
        "{HEAD}\n[qubes.a]\nclass = \"DispVM\"\ntemplate = \"b\"\nlabel = \"red\"\n\n\
[qubes.b]\nclass = \"AppVM\"\ntemplate = \"t\"\nlabel = \"red\"\n"
    );
    let d = diags(&text);
    assert!(d[0].message.contains("disposable template"), "{d:?}");
}

#[test]
fn paths_must_stay_inside() {
    let text = format!(
        "{HEAD}\n[qubes.a]\nclass = \"AppVM\"\ntemplate = \"t\"\nlabel = \"red\"\n\n\
[policy]\nfiles = [\"../evil.policy\", \"/etc/passwd\"]\n\n\
[[files]]\nqube = \"a\"\nsource = \"files/../../x\"\npath = \"relative/path\"\nmode = \"4755\"\n\n\
[[files]]\nqube = \"not-ours\"\nsource = \"f\"\npath = \"/home/user/x\"\n"
    );
    let d = diags(&text);
    let fields: Vec<&str> = d.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "policy.files",
            "policy.files",
            "files.source",
            "files.path",
            "files.mode",
            "files.qube"
        ]
    );
}

#[test]
fn oversized_manifest_is_refused() {
    let big = format!(
        "{HEAD}description = \"{}\"\n",
        "x".repeat(MAX_MANIFEST_BYTES)
    );
    let d = diags(&big);
    assert!(d[0].message.contains("larger"), "{d:?}");
}

#[test]
fn sizes() {
    assert_eq!(
        parse_size(&toml::Value::String("10GiB".into())),
        Some(10 << 30)
    );
    assert_eq!(
        parse_size(&toml::Value::String("512M".into())),
        Some(512 << 20)
    );
    assert_eq!(parse_size(&toml::Value::Integer(4096)), Some(4096));
    assert_eq!(parse_size(&toml::Value::String("ten".into())), None);
    assert_eq!(parse_size(&toml::Value::Integer(-1)), None);
    assert_eq!(
        parse_size(&toml::Value::String("99999999999999T".into())),
        None
    );
}

proptest::proptest! {
    #[test]
    fn parse_never_panics(s in "\\PC{0,400}") {
        let _ = parse(Path::new("qpm.toml"), &s);
    }

    #[test]
    fn parse_never_panics_on_near_manifests(extra in "[a-z_=\\[\\]\" .\n0-9{},-]{0,300}") {
        let _ = parse(Path::new("qpm.toml"), &format!("{HEAD}{extra}"));
    }
}
