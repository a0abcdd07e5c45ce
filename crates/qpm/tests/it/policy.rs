//! `qpm policy check|eval|conformance`.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::cargo_bin_cmd;
use predicates::prelude::*;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn demo() -> PathBuf {
    repo().join("examples/policy-demo")
}

fn qpm() -> assert_cmd::Command {
    let mut c = cargo_bin_cmd!("qpm");
    c.env_remove("QPM_LOG");
    c
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (k, v) in files {
        let p = dir.join(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    }
}

fn eval(args: &[&str]) -> assert_cmd::assert::Assert {
    let d = demo();
    let mut c = qpm();
    c.args(["policy", "eval", "--path"])
        .arg(&d)
        .arg("--system")
        .arg(d.join("system.json"));
    c.args(args).assert()
}

fn stdout_json(a: &assert_cmd::assert::Assert) -> Value {
    serde_json::from_slice(&a.get_output().stdout).expect("stdout is one JSON document")
}

#[test]
fn eval_allow_ask_deny_exit_codes() {
    let a = eval(&["--json", "untrusted", "work", "qubes.OpenURL"]).code(0);
    let v = stdout_json(&a);
    assert_eq!(v["result"], "allow");
    assert_eq!(v["target"], "@dispvm:fedora-dvm");
    assert_eq!(
        v["target_uuid"],
        "@dispvm:uuid:f3a5c7e9-2b4d-4f6a-8c0e-3a5c7e9b1d04"
    );
    assert_eq!(v["requested_target"], "work");
    assert_eq!(v["autostart"], true);
    assert_eq!(v["notify"], false);
    assert_eq!(v["user"], Value::Null);
    assert_eq!(v["rule"]["file"], "30-user.policy");
    assert_eq!(v["rule"]["line"], 6);

    let a = eval(&["--json", "work", "vault", "qubes.Filecopy"]).code(0);
    let v = stdout_json(&a);
    assert_eq!(v["result"], "ask");
    assert_eq!(v["default_target"], "vault");
    assert!(
        v["targets_for_ask"]
            .as_array()
            .unwrap()
            .contains(&"vault".into())
    );
    assert!(
        !v["targets_for_ask"]
            .as_array()
            .unwrap()
            .contains(&"work".into()),
        "the caller is never a choice"
    );

    let a = eval(&["--json", "untrusted", "vault", "qubes.Gpg"]).code(1);
    let v = stdout_json(&a);
    assert_eq!(v["result"], "deny");
    assert_eq!(v["deny_reason"], "deny_rule");
    assert_eq!(v["rule"]["file"], "include/split-gpg");
    assert_eq!(v["rule"]["line"], 3);

    // An argument after `+`, and the empty target: `@default` does not
    // match `vault` on line 2 but `@anyvm` on line 3.
    let a = eval(&["--json", "work", "", "qubes.Gpg+x"]).code(1);
    assert_eq!(stdout_json(&a)["rule"]["line"], 3);
    // An invalid requested target.
    eval(&["work", "@anyvm", "qubes.Filecopy"])
        .code(1)
        .stdout(predicate::str::contains(
            "requested target is not acceptable",
        ));
}

#[test]
fn eval_human_output_and_explain() {
    eval(&["work", "vault", "qubes.Gpg"])
        .code(0)
        .stdout(predicate::str::contains(
            "allow to \"vault\" (include/split-gpg:2)",
        ))
        .stdout(predicate::str::contains("notify=yes"));
    eval(&["--explain", "untrusted", "vault", "qubes.Gpg"])
        .code(1)
        .stdout(predicate::str::contains("decided by include/split-gpg:3"))
        .stdout(predicate::str::contains(
            "include/split-gpg:2: qubes.Gpg * work vault allow notify=yes",
        ))
        .stdout(predicate::str::contains(
            "the caller is `untrusted`, not `work`",
        ));
    let a = eval(&["--explain", "--json", "work", "vault", "qubes.Filecopy"]).code(0);
    let v = stdout_json(&a);
    assert_eq!(v["result"], "ask");
    let contributions = v["explanation"]["ask_contributions"].as_array().unwrap();
    assert!(
        contributions
            .iter()
            .any(|c| c["file"] == "90-default.policy" && c["added"] == true)
    );
}

#[test]
fn eval_errors_exit_2() {
    let d = demo();
    // Policy that does not load: file:line on stderr, error document on stdout.
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        &[(
            "30-a.policy",
            "qubes.A * work vault allow\nqubes.B * work vault permit\n",
        )],
    );
    let a = qpm()
        .args(["policy", "eval", "--json", "--path"])
        .arg(tmp.path())
        .arg("--system")
        .arg(d.join("system.json"))
        .args(["work", "vault", "qubes.A"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("30-a.policy:2: invalid action"));
    let v = stdout_json(&a);
    assert_eq!(v["result"], "error");
    assert_eq!(v["error_line"], 2);

    // A system description with a bad field: the field is named.
    write(
        tmp.path(),
        &[("sys.json", r#"{"domains": {"work": {"tags": "personal"}}}"#)],
    );
    qpm()
        .args(["policy", "eval", "--path"])
        .arg(&d)
        .arg("--system")
        .arg(tmp.path().join("sys.json"))
        .args(["work", "vault", "qubes.A"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "domains.work.tags: expected an array of strings",
        ));

    // Usage errors.
    qpm()
        .args(["policy", "eval", "work", "vault", "qubes.A"])
        .assert()
        .code(2);
    qpm()
        .args(["policy", "eval", "--system", "x.json", "work"])
        .assert()
        .code(2);
    qpm()
        .args(["policy", "eval", "--system"])
        .arg(tmp.path().join("missing.json"))
        .args(["work", "vault", "qubes.A"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot open system description"));
}

#[test]
fn check_clean_findings_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(
        root,
        &[
            (
                "30-user.policy",
                "# ok\nqubes.Filecopy * work vault ask\nqubes.Gpg * work vault allow\n",
            ),
            ("README", "not policy"),
        ],
    );
    qpm()
        .args(["policy", "check"])
        .arg(root)
        .assert()
        .code(0)
        .stdout("")
        .stderr(predicate::str::contains("1 file, 2 rules: no findings"));

    // Findings: a shadowed rule and an unknown qube.
    write(
        root,
        &[(
            "40-more.policy",
            "qubes.Gpg * work vault deny\nqubes.Gpg * work ghost allow\n",
        )],
    );
    let out = qpm()
        .args(["policy", "check", "--system"])
        .arg(demo().join("system.json"))
        .arg(root)
        .assert()
        .code(1);
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("40-more.policy:1: warning: never decides a call: every call it matches is decided first by 30-user.policy:3"), "{text}");
    assert!(
        text.contains("40-more.policy:2: warning: target `ghost`: no such qube [unknown-qube]"),
        "{text}"
    );

    // Syntax errors: every line in error is listed, not only the first.
    write(
        root,
        &[(
            "20-bad.policy",
            "qubes.A * work vault permit\nok * work\nqubes.B * work @default allow\n",
        )],
    );
    let a = qpm()
        .args(["policy", "check", "--json"])
        .arg(root)
        .assert()
        .code(1);
    let v = stdout_json(&a);
    assert_eq!(v["ok"], false);
    assert_eq!(v["loaded"], false);
    let lines: Vec<u64> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [1, 2, 3]);
    let kinds: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["invalid_action", "field_count", "default_allow_no_target"]
    );

    // One file: includes resolve next to it.
    write(
        root,
        &[
            ("one/x.policy", "!include inc\n"),
            ("one/inc", "qubes.A * work vault deny\n"),
        ],
    );
    qpm()
        .args(["policy", "check"])
        .arg(root.join("one/x.policy"))
        .assert()
        .code(0);

    // Missing path: exit 2.
    qpm()
        .args(["policy", "check"])
        .arg(root.join("nope"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot read policy path"));
}

#[test]
fn check_reports_invalid_file_names_and_include_cycles() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), &[("40-Work.policy", "")]);
    qpm()
        .args(["policy", "check"])
        .arg(tmp.path())
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "40-Work.policy: error: invalid policy file name",
        ));
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        &[
            ("10-a.policy", "!include include/b\n"),
            ("include/b", "\n!include include/c\n"),
            ("include/c", "!include include/b\n"),
        ],
    );
    qpm()
        .args(["policy", "check"])
        .arg(tmp.path())
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "include/c:1: error: include cycle: include/b -> include/c -> include/b",
        ));
}

#[test]
fn conformance_command_matches_vectors() {
    let cases = repo().join("conformance/policy/public.jsonl");
    let a = qpm()
        .args(["policy", "conformance"])
        .arg(&cases)
        .assert()
        .code(0);
    let out = a.get_output().stdout.clone();
    let lines: Vec<Value> = out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 300);
    assert_eq!(lines[0]["id"], "pub-0001");
    // The full check with the vectors' own checker, when Python is around.
    let python = Command::new("python3").arg("--version").output().is_ok();
    if !python {
        assert!(
            std::env::var_os("QPM_REQUIRE_SYSTEM_TESTS").is_none(),
            "python3 is required"
        );
        eprintln!("skipping check.py: python3 not found");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let actual = tmp.path().join("out.jsonl");
    std::fs::write(&actual, &out).unwrap();
    let st = Command::new("python3")
        .arg(repo().join("conformance/policy/check.py"))
        .arg("--cases")
        .arg(&cases)
        .arg("--actual")
        .arg(&actual)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
    assert!(String::from_utf8_lossy(&st.stdout).contains("300 passed, 0 failed"));
}

#[test]
fn conformance_bad_case_names_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), &[("c.jsonl", "\n{\"id\": \"x\"}\n")]);
    qpm()
        .args(["policy", "conformance"])
        .arg(tmp.path().join("c.jsonl"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("c.jsonl:2: invalid case"));
}

#[test]
fn help_teaches() {
    qpm()
        .args(["policy", "eval", "--help"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("Examples:"))
        .stdout(predicate::str::contains("qrexec-policy-exec"));
    qpm()
        .args(["policy", "check", "--help"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("/etc/qubes/policy.d"));
}
