//! `qpm policy scope-check`: the gatekeeper's verdict for package authors.

use std::path::{Path, PathBuf};

use assert_cmd::cargo::cargo_bin_cmd;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The system as it is after a package's qubes were created by `mgmt`.
fn system_for(m: &qpm_pkg::manifest::Manifest) -> Value {
    let mut domains = serde_json::Map::new();
    domains.insert("dom0".into(), json!({"type": "AdminVM"}));
    domains.insert(
        "mgmt".into(),
        json!({"type": "AppVM", "tags": ["created-by-dom0"]}),
    );
    for ext in m.external_refs().keys() {
        domains.insert(
            ext.clone(),
            json!({"type": "TemplateVM", "tags": ["created-by-dom0"]}),
        );
    }
    for (name, q) in &m.qubes {
        domains.insert(
            name.clone(),
            json!({
                "type": q.class.as_str(),
                "tags": ["created-by-mgmt", format!("qpm-pkg-{}", m.name)],
                "template_for_dispvms": q.disposable_template,
            }),
        );
    }
    json!({ "domains": domains })
}

fn scope_check(
    dir: &Path,
    package: &str,
    system: &Value,
    policy: &[u8],
) -> assert_cmd::assert::Assert {
    std::fs::write(dir.join("system.json"), system.to_string()).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"mgmt": "mgmt", "extra_targets": []}"#,
    )
    .unwrap();
    std::fs::write(dir.join("pkg.policy"), policy).unwrap();
    cargo_bin_cmd!("qpm")
        .current_dir(dir)
        .args([
            "policy",
            "scope-check",
            "--package",
            package,
            "--system",
            "system.json",
        ])
        .args(["--config", "config.json", "--json", "pkg.policy"])
        .assert()
}

#[test]
fn example_policies_are_accepted() {
    let mut seen = 0;
    for app in ["split-browser", "securedrop-ws", "dangerzone"] {
        for version in ["1.0.0", "2.0.0"] {
            let pkg = repo().join("examples").join(app).join(version);
            let m = qpm_pkg::manifest::load_dir(&pkg).unwrap();
            let mut policy = Vec::new();
            for f in &m.policy_files {
                policy.extend(std::fs::read(pkg.join(f)).unwrap());
            }
            let tmp = tempfile::tempdir().unwrap();
            let out = scope_check(tmp.path(), &m.name, &system_for(&m), &policy).code(0);
            let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
            assert_eq!(
                v,
                json!({"accepted": true, "violations": []}),
                "{app} {version}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 6);
}

#[test]
fn rejection_lists_every_line() {
    let tmp = tempfile::tempdir().unwrap();
    let system = json!({"domains": {
        "dom0": {"type": "AdminVM"},
        "a": {"type": "AppVM", "tags": ["created-by-mgmt", "qpm-pkg-p"]},
        "work": {"type": "AppVM"},
    }});
    let policy = b"svc * a a allow\nsvc * a dom0 allow\n!include x\nsvc * @tag:x a allow\n";
    let out = scope_check(tmp.path(), "p", &system, policy).code(1);
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["accepted"], false);
    let got: Vec<(u64, &str)> = v["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["line"].as_u64().unwrap(), x["rule"].as_str().unwrap()))
        .collect();
    assert_eq!(got, [(2, "R10"), (3, "R4"), (4, "R11")]);

    // human form: FILE:LINE: reason, and nothing written next to the input
    let before: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    let out = cargo_bin_cmd!("qpm")
        .current_dir(tmp.path())
        .args([
            "policy",
            "scope-check",
            "--package",
            "p",
            "--system",
            "system.json",
        ])
        .args(["--config", "config.json", "pkg.policy"])
        .assert()
        .code(1);
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("pkg.policy:2: "), "{text}");
    assert!(lines[1].starts_with("pkg.policy:3: "), "{text}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), before.len());
}

#[test]
fn whole_file_violation_has_no_line() {
    let tmp = tempfile::tempdir().unwrap();
    let system = json!({"domains": {"dom0": {"type": "AdminVM"}}});
    let policy = "# filler\n".repeat(8000);
    let out = scope_check(tmp.path(), "p", &system, policy.as_bytes()).code(1);
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(
        v["violations"][0],
        json!({"line": null, "rule": "R3", "message": v["violations"][0]["message"]})
    );
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("system.json"), "{\"domains\": {}}").unwrap();
    std::fs::write(tmp.path().join("config.json"), "{\"mgmt\": 3}").unwrap();
    std::fs::write(tmp.path().join("p.policy"), "").unwrap();
    for args in [
        vec![
            "--package",
            "p",
            "--system",
            "system.json",
            "--config",
            "config.json",
            "p.policy",
        ],
        vec![
            "--package",
            "Bad/Name",
            "--system",
            "system.json",
            "--config",
            "config.json",
            "p.policy",
        ],
        vec![
            "--package",
            "p",
            "--system",
            "missing.json",
            "--config",
            "config.json",
            "p.policy",
        ],
        vec!["--package", "p", "--system", "system.json", "p.policy"],
    ] {
        cargo_bin_cmd!("qpm")
            .current_dir(tmp.path())
            .args(["policy", "scope-check"])
            .args(&args)
            .assert()
            .code(2);
    }
}
