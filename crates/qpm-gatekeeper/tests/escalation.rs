//! The escalation suite: attempts by a package (or a compromised management
//! qube) to reach outside its own qubes through its policy. Each must be
//! rejected under the expected rule, with nothing written to the policy
//! directory.

use std::collections::BTreeMap;
use std::path::Path;

use qpm_gatekeeper::{Config, ExtraTarget, RuleId, Store};
use qpm_policy::{Domain, System};

const OWNED_UUID: &str = "11111111-2222-3333-4444-555555555555";

fn system() -> System {
    let mut s = System::new();
    s.insert(Domain::dom0());
    let own = |n: &str| {
        Domain::new(n, "AppVM")
            .with_tag("created-by-mgmt")
            .with_tag("qpm-pkg-sd")
    };
    s.insert(own("sd-app").with_uuid(OWNED_UUID));
    s.insert(own("sd-gpg"));
    s.insert(own("sd-log"));
    s.insert(own("sd-viewer").with_template_for_dispvms(true));
    s.insert(Domain::new("mgmt", "AppVM").with_tag("created-by-dom0"));
    s.insert(Domain::new("work", "AppVM").with_tag("created-by-dom0"));
    s.insert(
        Domain::new("work-dvm", "AppVM")
            .with_tag("created-by-dom0")
            .with_template_for_dispvms(true),
    );
    s.insert(Domain::new("sys-usb", "AppVM").with_tag("created-by-dom0"));
    s.insert(
        Domain::new("other-app", "AppVM")
            .with_tag("created-by-mgmt")
            .with_tag("qpm-pkg-other"),
    );
    s.insert(Domain::new("half", "AppVM").with_tag("created-by-mgmt"));
    s.insert(
        Domain::new("dual", "AppVM")
            .with_tag("created-by-mgmt")
            .with_tag("qpm-pkg-sd")
            .with_tag("qpm-pkg-other"),
    );
    s.insert(
        Domain::new("planted", "AppVM")
            .with_tag("created-by-dom0")
            .with_tag("qpm-pkg-sd"),
    );
    s.insert(
        Domain::new("lookalike", "AppVM")
            .with_tag("created-by-mgmt2")
            .with_tag("qpm-pkg-sd"),
    );
    s.insert(
        Domain::new("sd-tpl", "TemplateVM")
            .with_tag("created-by-mgmt")
            .with_tag("qpm-pkg-sd"),
    );
    s
}

fn config() -> Config {
    Config {
        mgmt: "mgmt".into(),
        config_qube: None,
        extra_targets: vec![
            ExtraTarget {
                service: "qubes.USBAttach".into(),
                target: "sys-usb".into(),
            },
            ExtraTarget {
                service: "qubes.Print+pdf".into(),
                target: "work".into(),
            },
            ExtraTarget {
                service: "qubes.Evil".into(),
                target: "dom0".into(),
            },
        ],
    }
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != ".qpm-gatekeeper.lock" && e.path().is_file())
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Submits `policy` and asserts it is rejected under `rule` on `line`
/// (or the whole file for `None`), with the directory unchanged.
fn rejected(policy: &[u8], rule: RuleId, line: Option<u32>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("30-user.policy"),
        "qubes.Filecopy * work vault ask\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("include")).unwrap();
    std::fs::write(dir.path().join("include/x"), "").unwrap();
    let before = snapshot(dir.path());
    let store = Store::new(dir.path());
    let (verdict, _) = store.submit("sd", policy, &system(), &config()).unwrap();
    assert!(
        !verdict.accepted,
        "accepted: {:?}",
        String::from_utf8_lossy(policy)
    );
    assert!(
        verdict
            .violations
            .iter()
            .any(|v| v.rule == rule && v.line == line),
        "expected {rule} on {line:?}, got {:#?}",
        verdict.violations
    );
    assert_eq!(snapshot(dir.path()), before, "the directory changed");
}

macro_rules! reject {
    ($($name:ident: $policy:expr => $rule:ident @ $line:expr;)*) => {$(
        #[test]
        fn $name() {
            rejected($policy.as_ref(), RuleId::$rule, $line);
        }
    )*};
}

reject! {
    // dom0, however spelled
    target_dom0: "qubes.Gpg * sd-app dom0 allow\n" => R10 @ Some(1);
    target_adminvm: "qubes.Gpg * sd-app @adminvm allow\n" => R10 @ Some(1);
    target_dom0_uuid: "qubes.Gpg * sd-app uuid:00000000-0000-0000-0000-000000000000 allow\n" => R10 @ Some(1);
    redirect_to_dom0: "qubes.Gpg * sd-app sd-gpg allow target=dom0\n" => R10 @ Some(1);
    default_redirect_to_adminvm: "qubes.Gpg * sd-app @default allow target=@adminvm\n" => R10 @ Some(1);
    ask_default_target_dom0: "qubes.Gpg * sd-app sd-gpg ask default_target=dom0\n" => R10 @ Some(1);
    source_dom0: "qubes.Gpg * dom0 sd-gpg allow\n" => R10 @ Some(1);
    extra_target_naming_dom0: "qubes.Evil * sd-app dom0 allow\n" => R10 @ Some(1);
    // foreign qubes and other packages
    foreign_target: "qubes.Filecopy * sd-app work allow\n" => R12 @ Some(1);
    foreign_source: "qubes.Gpg * work sd-gpg allow\n" => R12 @ Some(1);
    other_package_target: "qubes.Gpg * sd-app other-app allow\n" => R12 @ Some(1);
    other_package_source: "qubes.Gpg * other-app sd-gpg allow\n" => R12 @ Some(1);
    half_owned: "qubes.Gpg * sd-app half allow\n" => R12 @ Some(1);
    claimed_by_two_packages: "qubes.Gpg * sd-app dual allow\n" => R12 @ Some(1);
    foreign_qube_given_package_tag: "qubes.Gpg * sd-app planted allow\n" => R12 @ Some(1);
    created_by_lookalike_mgmt: "qubes.Gpg * sd-app lookalike allow\n" => R12 @ Some(1);
    name_not_created_yet: "qubes.Gpg * sd-app sd-future allow\n" => R12 @ Some(1);
    case_variant: "qubes.Gpg * sd-app SD-gpg allow\n" => R12 @ Some(1);
    management_qube: "qubes.Gpg * sd-app mgmt allow\n" => R12 @ Some(1);
    foreign_redirect: "qubes.Gpg * sd-app sd-gpg allow target=work\n" => R12 @ Some(1);
    foreign_default_target: "qubes.Gpg * sd-app sd-gpg ask default_target=work\n" => R12 @ Some(1);
    confined_deny_shadowing_user: "qubes.Filecopy * work vault deny\n" => R12 @ Some(1);
    // directives
    include: "!include include/x\n" => R4 @ Some(1);
    include_indented: "qubes.Gpg * sd-app sd-gpg allow\n   \t!include include/x\n" => R4 @ Some(2);
    include_dir: "!include-dir include\n" => R4 @ Some(1);
    include_service: "!include-service qubes.Gpg * include/x\n" => R4 @ Some(1);
    compat: "!compat-4.0\n" => R4 @ Some(1);
    // bytes the real loader turns into live rules or hides
    crlf: "qubes.Gpg * sd-app sd-gpg allow\r\n" => R2 @ Some(1);
    bare_cr_in_comment: "# harmless\rqubes.Gpg * sd-app dom0 allow\n" => R2 @ Some(1);
    nul_in_comment: "# a\0b\n" => R2 @ Some(1);
    vertical_tab: "qubes.Gpg\x0b* sd-app sd-gpg allow\n" => R2 @ Some(1);
    form_feed_in_comment: "#\x0cqubes.Gpg * sd-app dom0 allow\n" => R2 @ Some(1);
    nbsp: "qubes.Gpg *\u{a0}sd-app sd-gpg allow\n" => R2 @ Some(1);
    next_line_char: "# x\u{85}qubes.Gpg * sd-app dom0 allow\n" => R2 @ Some(1);
    escape_sequence_in_comment: "# \x1b[2Jclean\n" => R2 @ Some(1);
    delete_byte: "# \x7f\n" => R2 @ Some(1);
    invalid_utf8: b"# \xff\xfe\n".to_vec() => R2 @ Some(1);
    // size
    long_line: format!("# {}\n", "x".repeat(4095)) => R3 @ Some(1);
    huge_file: format!("{}\n", "# filler line\n".repeat(5000)) => R3 @ None;
    // services
    wildcard_service: "* * sd-app sd-gpg allow\n" => R5 @ Some(1);
    admin_service: "admin.vm.List * sd-app sd-gpg allow\n" => R5 @ Some(1);
    admin_service_case: "ADMIN.vm.List * sd-app sd-gpg allow\n" => R5 @ Some(1);
    policy_service: "policy.Replace * sd-app sd-gpg allow\n" => R5 @ Some(1);
    qpm_service: "Qpm.PolicySubmit * sd-app sd-gpg allow\n" => R5 @ Some(1);
    // wildcards and patterns
    anyvm_source_allow: "qubes.Gpg * @anyvm sd-gpg allow\n" => R11 @ Some(1);
    anyvm_target_ask: "qubes.Gpg * sd-app @anyvm ask\n" => R11 @ Some(1);
    star_source: "qubes.Gpg * * sd-gpg allow\n" => R11 @ Some(1);
    star_target: "qubes.Gpg * sd-app * allow\n" => R11 @ Some(1);
    own_tag: "qubes.Gpg * @tag:qpm-pkg-sd sd-gpg allow\n" => R11 @ Some(1);
    created_by_tag: "qubes.Gpg * sd-app @tag:created-by-mgmt allow\n" => R11 @ Some(1);
    type_token: "qubes.Gpg * sd-app @type:AppVM allow\n" => R11 @ Some(1);
    bare_dispvm: "qubes.OpenInVM * sd-app @dispvm allow\n" => R11 @ Some(1);
    bare_dispvm_redirect: "qubes.OpenInVM * sd-app @default allow target=@dispvm\n" => R11 @ Some(1);
    dispvm_tag: "qubes.OpenInVM * sd-app @dispvm:@tag:x allow\n" => R11 @ Some(1);
    uuid_of_owned_qube: format!("qubes.Gpg * sd-app uuid:{OWNED_UUID} allow\n") => R11 @ Some(1);
    dispvm_uuid: format!("qubes.OpenInVM * sd-app @dispvm:uuid:{OWNED_UUID} allow\n") => R11 @ Some(1);
    // disposables
    foreign_dispvm_template: "qubes.OpenInVM * sd-app @dispvm:work-dvm allow\n" => R7 @ Some(1);
    own_qube_not_a_dvm: "qubes.OpenInVM * sd-app @dispvm:sd-gpg allow\n" => R7 @ Some(1);
    dispvm_redirect_foreign: "qubes.OpenInVM * sd-app sd-viewer allow target=@dispvm:work-dvm\n" => R8 @ Some(1);
    // @default
    default_without_redirect: "qubes.Filecopy * sd-log @default ask\n" => R9 @ Some(1);
    // users
    user_root: "qubes.Gpg * sd-app sd-gpg allow user=root\n" => R13 @ Some(1);
    user_empty: "qubes.Gpg * sd-app sd-gpg allow user=\n" => R13 @ Some(1);
    // deny fences
    fence_foreign_other_side: "qubes.Filecopy * @anyvm work deny\n" => R14 @ Some(1);
    fence_both_anyvm: "qubes.Filecopy * @anyvm @anyvm deny\n" => R14 @ Some(1);
    fence_tag_other_side: "qubes.Filecopy * @tag:x @anyvm deny\n" => R14 @ Some(1);
    fence_other_package: "qubes.Filecopy * other-app @anyvm deny\n" => R14 @ Some(1);
    allow_posing_as_fence: "qubes.Filecopy * @anyvm sd-app allow\n" => R11 @ Some(1);
    // extra targets
    extra_target_other_service: "qubes.Filecopy * sd-app sys-usb allow\n" => R12 @ Some(1);
    extra_target_as_source: "qubes.USBAttach * sys-usb sd-app allow\n" => R12 @ Some(1);
    extra_target_wider_argument: "qubes.Print * sd-app work allow\n" => R12 @ Some(1);
    extra_target_other_argument: "qubes.Print +ps sd-app work allow\n" => R12 @ Some(1);
    // syntax (a syntax error anywhere denies every call on the machine)
    too_few_fields: "qubes.Gpg * sd-app sd-gpg\n" => R1 @ Some(1);
    bad_action: "qubes.Gpg * sd-app sd-gpg permit\n" => R1 @ Some(1);
    trailing_comment: "qubes.Gpg * sd-app sd-gpg allow # ok\n" => R1 @ Some(1);
    allow_default_no_target: "qubes.Gpg * sd-app @default allow\n" => R1 @ Some(1);
    error_deep_in_file: "qubes.Gpg * sd-app sd-gpg allow\n\n# fine\nqubes.Gpg * sd-app sd-gpg allow notify=maybe\n" => R1 @ Some(4);
}

#[test]
fn every_offending_line_is_reported() {
    let policy = "qubes.Gpg * sd-app sd-gpg allow\nqubes.Gpg * sd-app dom0 allow\n# ok\n!include x\nqubes.Gpg * work sd-gpg allow user=root\n";
    let v = qpm_gatekeeper::check("sd", policy.as_bytes(), &system(), &config());
    let lines: Vec<(Option<u32>, RuleId)> = v.violations.iter().map(|v| (v.line, v.rule)).collect();
    assert_eq!(
        lines,
        [
            (Some(2), RuleId::R10),
            (Some(4), RuleId::R4),
            (Some(5), RuleId::R12),
            (Some(5), RuleId::R13)
        ]
    );
}

#[test]
fn accepted_lines_are_written_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let policy = b"qubes.Gpg * sd-app sd-gpg allow\n\
qubes.OpenInVM * sd-app @dispvm:sd-viewer allow\n\
qubes.Filecopy * sd-log @default ask target=sd-app\n\
qubes.Filecopy * @anyvm sd-app deny notify=no\n\
qubes.Filecopy * sd-gpg @anyvm deny\n\
qubes.USBAttach * sd-app sys-usb allow\n\
qubes.Print +pdf sd-app work allow\n\
qubes.Gpg * sd-app sd-gpg ask default_target=sd-gpg user=user notify=yes autostart=no\n";
    let (v, _) = store.submit("sd", policy, &system(), &config()).unwrap();
    assert!(v.accepted, "{:#?}", v.violations);
    assert_eq!(
        std::fs::read(dir.path().join("40-qpm-sd.policy")).unwrap(),
        policy
    );
    assert_eq!(store.get("sd").unwrap(), policy);
    let names: Vec<String> = snapshot(dir.path()).into_keys().collect();
    assert_eq!(names, ["40-qpm-sd.policy"], "no temporary file left behind");
}

#[test]
fn dispvm_source_is_accepted_with_a_warning() {
    let v = qpm_gatekeeper::check(
        "sd",
        b"qubes.Gpg * @dispvm:sd-viewer sd-gpg allow\n",
        &system(),
        &config(),
    );
    assert!(v.accepted);
    assert_eq!(v.warnings.len(), 1);
}

#[test]
fn stored_policy_that_no_longer_holds_is_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let mut sys = system();
    sys.insert(
        Domain::new("x-app", "AppVM")
            .with_tag("created-by-mgmt")
            .with_tag("qpm-pkg-x"),
    );
    let (v, _) = store
        .submit("x", b"qubes.Gpg * x-app x-app deny\n", &sys, &config())
        .unwrap();
    assert!(v.accepted);
    // x-app is removed and a foreign qube takes its name.
    sys.insert(Domain::new("x-app", "AppVM").with_tag("created-by-dom0"));
    let (v, recheck) = store
        .submit("sd", b"qubes.Gpg * sd-app sd-gpg allow\n", &sys, &config())
        .unwrap();
    assert!(v.accepted);
    assert_eq!(recheck.disabled.len(), 1);
    assert_eq!(recheck.disabled[0].0, "x");
    assert!(!dir.path().join("40-qpm-x.policy").exists());
    assert!(dir.path().join("40-qpm-x.policy.disabled").exists());
    assert_eq!(store.packages().unwrap(), ["sd"]);
}

#[test]
fn remove_and_bad_names() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    assert!(matches!(
        store.get("../etc"),
        Err(qpm_gatekeeper::StoreError::BadName(_))
    ));
    assert!(matches!(
        store.get("Sd"),
        Err(qpm_gatekeeper::StoreError::BadName(_))
    ));
    assert!(matches!(
        store.remove("sd", &system(), &config()),
        Err(qpm_gatekeeper::StoreError::NotFound(_))
    ));
    store
        .submit(
            "sd",
            b"qubes.Gpg * sd-app sd-gpg allow\n",
            &system(),
            &config(),
        )
        .unwrap();
    store.remove("sd", &system(), &config()).unwrap();
    assert!(store.packages().unwrap().is_empty());
}

#[test]
fn policy_that_breaks_the_directory_is_not_written() {
    // Another file in the directory already has a syntax error: the loader
    // would refuse everything, so the gatekeeper refuses to add to it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("30-user.policy"), "broken line\n").unwrap();
    let store = Store::new(dir.path());
    let r = store.submit(
        "sd",
        b"qubes.Gpg * sd-app sd-gpg allow\n",
        &system(),
        &config(),
    );
    assert!(
        matches!(r, Err(qpm_gatekeeper::StoreError::Invalid(_))),
        "{r:?}"
    );
    assert!(!dir.path().join("40-qpm-sd.policy").exists());
}
