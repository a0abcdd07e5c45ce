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

// ---------------------------------------------------------------------------
// qpm-dom0 and the gatekeeper services, end to end on the simulator.

mod dom0 {
    use std::io::Write;
    use std::path::PathBuf;
    use std::process::{Command, Output, Stdio};

    use serde_json::Value;

    use crate::sim::{SimDir, sim_bin};

    fn dom0_bin() -> PathBuf {
        sim_bin().with_file_name("qpm-dom0")
    }

    fn dom0(s: &SimDir, args: &[&str]) -> Output {
        Command::new(dom0_bin())
            .arg("--sim")
            .arg(s.path())
            .args(args)
            .output()
            .unwrap()
    }

    /// A qrexec call as `from`, with `input` on stdin.
    fn call(s: &SimDir, from: &str, target: &str, service: &str, input: &[u8]) -> Output {
        let mut child = s
            .sim()
            .args(["call", "--from", from, target, service])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A refused call exits without reading its input: ignore EPIPE.
        let _ = child.stdin.take().unwrap().write_all(input);
        child.wait_with_output().unwrap()
    }

    /// An Admin API call from `from`: Ok(value) or Err(exception class or exit status).
    fn admin(
        s: &SimDir,
        from: &str,
        dest: &str,
        method: &str,
        payload: &str,
    ) -> Result<String, String> {
        let out = call(s, from, dest, method, payload.as_bytes());
        if !out.status.success() {
            return Err(format!("exit {:?}", out.status.code()));
        }
        match out.stdout.split_at_checked(2) {
            Some((b"0\0", v)) => Ok(String::from_utf8_lossy(v).into_owned()),
            Some((b"2\0", e)) => Err(String::from_utf8_lossy(e)
                .split('\0')
                .next()
                .unwrap_or("")
                .to_owned()),
            _ => Err("no answer".into()),
        }
    }

    /// A started simulator bootstrapped with `qpm-dom0 init`, and package
    /// `demo` with qubes demo-a, demo-b (created by mgmt, tagged).
    fn bootstrapped() -> SimDir {
        let s = SimDir::new();
        assert!(
            s.qpm(None)
                .args(["sim", "start"])
                .status()
                .unwrap()
                .success()
        );
        let out = dom0(&s, &["init", "--mgmt", "mgmt", "--adopt"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for q in ["demo-a", "demo-b"] {
            admin(
                &s,
                "mgmt",
                "dom0",
                "admin.vm.Create.AppVM+fedora-42-xfce",
                &format!("name={q} label=red"),
            )
            .unwrap();
            admin(&s, "mgmt", q, "admin.vm.tag.Set+qpm-pkg-demo", "").unwrap();
        }
        s
    }

    fn submit(s: &SimDir, from: &str, pkg: &str, policy: &str) -> Output {
        call(
            s,
            from,
            "dom0",
            &format!("qpm.PolicySubmit+{pkg}"),
            policy.as_bytes(),
        )
    }

    fn policy_files(s: &SimDir) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(s.path().join("policy.d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".policy"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn init_dry_run_changes_nothing_and_init_replaces_the_bootstrap_policy() {
        let s = SimDir::new();
        assert!(
            s.qpm(None)
                .args(["sim", "start"])
                .status()
                .unwrap()
                .success()
        );
        let before = policy_files(&s);
        let out = dom0(&s, &["--dry-run", "init", "--mgmt", "mgmt", "--adopt"]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("would write") && text.contains("39-qpm-base.policy"),
            "{text}"
        );
        assert_eq!(policy_files(&s), before);
        // without --adopt an existing qube is refused
        assert_eq!(dom0(&s, &["init", "--mgmt", "mgmt"]).status.code(), Some(2));
        let out = dom0(&s, &["init", "--mgmt", "mgmt", "--adopt"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(policy_files(&s), ["39-qpm-base.policy"]);
        // a new management qube is created offline
        let out = dom0(&s, &["init", "--mgmt", "mgmt2"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            admin(&s, "dom0", "mgmt2", "admin.vm.property.Get+netvm", "").unwrap(),
            "default=False type=vm "
        );
    }

    #[test]
    fn accepted_policy_is_installed_and_returned() {
        let s = bootstrapped();
        let policy = "demo.Svc * demo-a demo-b allow\ndemo.Svc * @anyvm demo-b deny\n";
        let out = submit(&s, "mgmt", "demo", policy);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["accepted"], true);
        assert_eq!(v["installed"], policy);
        assert_eq!(
            std::fs::read_to_string(s.path().join("policy.d/40-qpm-demo.policy")).unwrap(),
            policy
        );
        // it is live: demo-a may call demo.Svc in demo-b, work may not
        let p = s.path().join("policy.d");
        let eval = |src: &str| {
            Command::new(sim_bin().with_file_name("qpm"))
                .args(["policy", "eval", "--path"])
                .arg(&p)
                .arg("--system")
                .arg(s.path().join("sys.json"))
                .args([src, "demo-b", "demo.Svc"])
                .output()
                .unwrap()
        };
        std::fs::write(
            s.path().join("sys.json"),
            r#"{"domains": {"dom0": {"type": "AdminVM"}, "demo-a": {}, "demo-b": {}, "work": {}}}"#,
        )
        .unwrap();
        assert_eq!(eval("demo-a").status.code(), Some(0));
        assert_eq!(eval("work").status.code(), Some(1));
        let got = call(&s, "mgmt", "dom0", "qpm.PolicyGet+demo", b"");
        assert_eq!(String::from_utf8_lossy(&got.stdout), policy);
        let out = call(&s, "mgmt", "dom0", "qpm.PolicyRemove+demo", b"");
        assert!(out.status.success());
        assert!(!s.path().join("policy.d/40-qpm-demo.policy").exists());
        assert_eq!(
            call(&s, "mgmt", "dom0", "qpm.PolicyGet+demo", b"")
                .status
                .code(),
            Some(1)
        );
    }

    #[test]
    fn rejected_policy_writes_nothing_and_lists_every_line() {
        let s = bootstrapped();
        let before = policy_files(&s);
        let out = submit(
            &s,
            "mgmt",
            "demo",
            "demo.Svc * demo-a dom0 allow\n# ok\ndemo.Svc * demo-a work allow\n",
        );
        assert_eq!(out.status.code(), Some(1));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let lines: Vec<u64> = v["violations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["line"].as_u64().unwrap())
            .collect();
        assert_eq!(lines, [1, 3]);
        assert_eq!(policy_files(&s), before);
    }

    #[test]
    fn only_the_management_qube_reaches_the_gatekeeper() {
        let s = bootstrapped();
        let out = submit(&s, "work", "demo", "demo.Svc * demo-a demo-b allow\n");
        assert_eq!(out.status.code(), Some(126), "refused by qrexec policy");
        assert!(!s.path().join("policy.d/40-qpm-demo.policy").exists());
        // and mgmt no longer has the raw policy admin services
        let out = call(
            &s,
            "mgmt",
            "dom0",
            "policy.Replace+40-qpm-demo",
            b"any\ndemo.Svc * work dom0 allow\n",
        );
        assert_eq!(out.status.code(), Some(126));
        assert!(!s.path().join("policy.d/40-qpm-demo.policy").exists());
    }

    #[test]
    fn escalation_through_the_admin_api() {
        let s = bootstrapped();
        // a foreign qube cannot be given the package tag by mgmt
        assert!(admin(&s, "mgmt", "work", "admin.vm.tag.Set+qpm-pkg-demo", "").is_err());
        // nor can mgmt forge created-by- tags, on foreign or own qubes
        assert!(admin(&s, "mgmt", "work", "admin.vm.tag.Set+created-by-mgmt", "").is_err());
        assert_eq!(
            admin(&s, "mgmt", "demo-a", "admin.vm.tag.Set+created-by-work", ""),
            Err("PermissionDenied".into())
        );
        assert_eq!(
            admin(
                &s,
                "mgmt",
                "demo-a",
                "admin.vm.tag.Remove+created-by-mgmt",
                ""
            ),
            Err("PermissionDenied".into())
        );
        // a qube cannot be created under a foreign qube's name
        assert_eq!(
            admin(
                &s,
                "mgmt",
                "dom0",
                "admin.vm.Create.AppVM+fedora-42-xfce",
                "name=work label=red"
            ),
            Err("QubesVMAlreadyExistsError".into())
        );
        // dom0 tags a foreign qube with the package tag: still not owned
        admin(&s, "dom0", "work", "admin.vm.tag.Set+qpm-pkg-demo", "").unwrap();
        for policy in [
            "demo.Svc * demo-a work allow\n",
            "demo.Svc * work demo-a allow\n",
        ] {
            let out = submit(&s, "mgmt", "demo", policy);
            assert_eq!(out.status.code(), Some(1), "{policy}");
        }
        assert!(!s.path().join("policy.d/40-qpm-demo.policy").exists());
    }

    #[test]
    fn a_name_taken_over_disables_the_stored_policy() {
        let s = bootstrapped();
        assert!(
            submit(&s, "mgmt", "demo", "demo.Svc * demo-a demo-b allow\n")
                .status
                .success()
        );
        assert_eq!(dom0(&s, &["verify"]).status.code(), Some(0));
        // demo-b goes away and dom0 creates an unrelated qube of that name
        admin(&s, "mgmt", "demo-b", "admin.vm.Remove", "").unwrap();
        admin(
            &s,
            "dom0",
            "dom0",
            "admin.vm.Create.AppVM+fedora-42-xfce",
            "name=demo-b label=red",
        )
        .unwrap();
        let out = dom0(&s, &["verify"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stdout).contains("demo:1:"));
        // the next submit or remove by any package disables it
        admin(
            &s,
            "mgmt",
            "dom0",
            "admin.vm.Create.AppVM+fedora-42-xfce",
            "name=other-a label=red",
        )
        .unwrap();
        admin(&s, "mgmt", "other-a", "admin.vm.tag.Set+qpm-pkg-other", "").unwrap();
        let out = submit(&s, "mgmt", "other", "other.Svc * other-a other-a deny\n");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["disabled"][0][0], "demo");
        assert!(!s.path().join("policy.d/40-qpm-demo.policy").exists());
    }

    #[test]
    fn sync_grants_adopt_and_uninstall() {
        let s = bootstrapped();
        let out = dom0(&s, &["sync-grant", "work", "personal", "--root"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(s.path().join("policy.d/38-qpm-sync.policy")).unwrap();
        assert!(text.contains("qpm.SyncConfig * mgmt work allow user=root"));
        assert!(text.contains(
            "admin.vm.feature.Set +custom-persist.qpm-31 mgmt personal allow target=dom0"
        ));
        assert_eq!(dom0(&s, &["sync-grant", "dom0"]).status.code(), Some(2));
        assert!(dom0(&s, &["sync-revoke", "work"]).status.success());
        let text = std::fs::read_to_string(s.path().join("policy.d/38-qpm-sync.policy")).unwrap();
        assert!(!text.contains(" work ") && text.contains(" personal "));
        // adopt: dom0 tags a foreign qube into the package
        assert!(
            dom0(&s, &["adopt", "vault", "--package", "demo"])
                .status
                .success()
        );
        let tags = admin(&s, "dom0", "vault", "admin.vm.tag.List", "").unwrap();
        assert!(
            tags.contains("created-by-mgmt\n") && tags.contains("qpm-pkg-demo\n"),
            "{tags}"
        );
        assert_eq!(
            dom0(&s, &["adopt", "demo-a", "--package", "other"])
                .status
                .code(),
            Some(2)
        );
        // uninstall removes every file qpm-dom0 and the gatekeeper wrote
        assert!(
            submit(&s, "mgmt", "demo", "demo.Svc * demo-a vault allow\n")
                .status
                .success()
        );
        let out = dom0(&s, &["uninstall"]);
        assert!(out.status.success());
        assert!(policy_files(&s).is_empty(), "{:?}", policy_files(&s));
        assert!(!s.path().join("dom0/rpc/qpm.PolicySubmit").exists());
    }
}
