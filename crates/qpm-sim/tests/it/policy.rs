//! The router under the real policy engine: allow, deny, `ask` answered by
//! the configured responder, policy edited while the simulator runs.

use std::process::{Command, Output, Stdio};

use super::router::install;
use super::{Served, bin};

fn call(s: &Served, from: &str, target: &str, service: &str) -> Output {
    Command::new(bin())
        .arg("--sim")
        .arg(s.dir.path())
        .args(["call", "--from", from, target, service])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn served_with(args: &[&str]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    // the state directory exists before the first start, with a policy
    let st = Command::new(bin())
        .arg("--sim")
        .arg(dir.path())
        .arg("init")
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(
        dir.path().join("policy.d/20-test.policy"),
        "test.Who * work @anyvm ask default_target=personal\n\
         test.Who * vault @anyvm deny\n\
         test.Who * untrusted @default allow target=personal\n",
    )
    .unwrap();
    let mut s = Served { dir, child: None };
    s.spawn_with(args);
    for template in ["fedora-42-xfce", "debian-13-xfce"] {
        install(
            &s,
            template,
            "test.Who",
            "#!/bin/sh\necho \"$QREXEC_REMOTE_DOMAIN -> $QPM_SIM_QUBE\"\n",
        );
    }
    s
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn allow_deny_and_no_match() {
    let s = served_with(&[]);
    let o = call(&s, "untrusted", "", "test.Who");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o), "untrusted -> personal\n");
    assert_eq!(
        call(&s, "vault", "work", "test.Who").status.code(),
        Some(126)
    );
    // no rule at all
    assert_eq!(
        call(&s, "personal", "work", "test.Who").status.code(),
        Some(126)
    );
    // ask answered "no" by default
    assert_eq!(
        call(&s, "work", "personal", "test.Who").status.code(),
        Some(126)
    );
}

#[test]
fn ask_answered_yes_takes_the_default_target() {
    let s = served_with(&["--ask", "yes"]);
    let o = call(&s, "work", "@default", "test.Who");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o), "work -> personal\n");
}

#[test]
fn ask_answered_by_a_command() {
    let s = served_with(&[
        "--ask",
        "test \"$QPM_ASK_SOURCE $QPM_ASK_SERVICE $QPM_ASK_DEFAULT\" = 'work test.Who personal' && echo untrusted",
    ]);
    let o = call(&s, "work", "personal", "test.Who");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o), "work -> untrusted\n");
    // a pick outside the offered targets is a refusal
    let s = served_with(&["--ask", "echo dom0"]);
    assert_eq!(
        call(&s, "work", "personal", "test.Who").status.code(),
        Some(126)
    );
}

#[test]
fn policy_changes_apply_to_the_next_call_and_bad_policy_refuses_all() {
    let s = served_with(&[]);
    let path = s.dir.path().join("policy.d/10-first.policy");
    std::fs::write(&path, "test.Who * personal work allow\n").unwrap();
    let o = call(&s, "personal", "work", "test.Who");
    assert_eq!(stdout(&o), "personal -> work\n");
    // a syntax error anywhere: qrexec refuses every call
    std::fs::write(&path, "test.Who * personal work allow\nbroken line\n").unwrap();
    assert_eq!(
        call(&s, "personal", "work", "test.Who").status.code(),
        Some(126)
    );
    assert_eq!(
        call(&s, "untrusted", "", "test.Who").status.code(),
        Some(126)
    );
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        stdout(&call(&s, "untrusted", "", "test.Who")),
        "untrusted -> personal\n"
    );
}
