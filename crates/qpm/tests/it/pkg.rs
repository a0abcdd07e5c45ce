//! Packages end to end: the real `qpm` against a simulated dom0 set up with
//! `qpm-dom0 init` (so policies go through the gatekeeper).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qpm_admin::Client;
use qpm_admin::transport::Simulator;
use serde_json::Value;

use crate::sim::SimDir;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub(crate) fn example(app: &str, version: &str) -> String {
    repo()
        .join("examples")
        .join(app)
        .join(version)
        .display()
        .to_string()
}

const APPS: [&str; 3] = ["split-browser", "securedrop-ws", "dangerzone"];

/// A simulator plus a private qpm state directory.
pub(crate) struct Env {
    pub(crate) sim: SimDir,
    pub(crate) state: tempfile::TempDir,
}

impl Env {
    pub(crate) fn new() -> Self {
        let sim = SimDir::new();
        let out = sim.qpm(None).args(["sim", "start"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            sim,
            state: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn cmd(&self) -> Command {
        let mut c = self.sim.qpm(None);
        c.env("QPM_STATE_DIR", self.state.path())
            .env_remove("QPM_TEST_CRASH_AFTER")
            .env_remove("QPM_TEST_CRASH_AFTER_PUSH")
            .env_remove("QPM_MGMT");
        c
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// `qpm --json ARGS`, expecting exit `code`.
    pub(crate) fn json(&self, args: &[&str], code: i32) -> Value {
        let out = self.cmd().arg("--json").args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "qpm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// A client acting as `caller` (dom0 skips policy).
    pub(crate) fn client(&self, caller: &str) -> Client {
        Client::new(Simulator::new(
            self.sim.path().join("run/qrexec.sock"),
            caller,
        ))
    }

    fn state_json(&self) -> Vec<u8> {
        std::fs::read(self.sim.path().join("state.json")).unwrap()
    }

    /// Everything an install can change, as dom0 sees it: qubes with class,
    /// properties (without per-instance ones: uuid, qid, addresses, ...),
    /// tags, features and firewall; and the package policy files.
    pub(crate) fn dump(&self) -> BTreeMap<String, Value> {
        const VOLATILE: &[&str] = &[
            "uuid",
            "qid",
            "ip",
            "ip6",
            "mac",
            "xid",
            "start_time",
            "backup_timestamp",
            "visible_ip",
            "visible_ip6",
            "visible_gateway",
            "visible_gateway6",
            "gateway",
            "gateway6",
            "dispid",
            "stubdom_uuid",
            "stubdom_xid",
            "stubdom_mem",
        ];
        let c = self.client("dom0");
        let mut out = BTreeMap::new();
        for q in c.list_qubes().unwrap() {
            if q.class == "AdminVM" {
                continue;
            }
            let props: BTreeMap<String, String> = c
                .properties(Some(&q.name))
                .unwrap()
                .into_iter()
                .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
                .map(|(k, v)| {
                    (
                        k,
                        format!("{}{}", if v.is_default { "D:" } else { "" }, v.value),
                    )
                })
                .collect();
            let mut tags = c.tags(&q.name).unwrap();
            tags.sort();
            let features: BTreeMap<String, Option<String>> = c
                .features(&q.name)
                .unwrap()
                .into_iter()
                .map(|f| {
                    let v = c.feature(&q.name, &f).unwrap();
                    (f, v)
                })
                .collect();
            let fw = c.firewall(&q.name).unwrap_or_default();
            out.insert(
                q.name.clone(),
                serde_json::json!({"class": q.class, "props": props, "tags": tags, "features": features, "firewall": fw}),
            );
        }
        for e in std::fs::read_dir(self.sim.path().join("policy.d")).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            if name.starts_with("40-qpm-") {
                out.insert(
                    format!("policy:{name}"),
                    Value::String(std::fs::read_to_string(e.path()).unwrap()),
                );
            }
        }
        out
    }
}

fn manifest(app: &str, version: &str) -> qpm_pkg::manifest::Manifest {
    qpm_pkg::manifest::load_dir(Path::new(&example(app, version))).unwrap()
}

pub(crate) fn calls(v: &Value) -> (u64, u64) {
    (
        v["calls"]["read"].as_u64().unwrap(),
        v["calls"]["write"].as_u64().unwrap(),
    )
}

#[test]
fn every_example_installs_reapplies_with_no_write_and_verifies() {
    let env = Env::new();
    for app in APPS {
        let pkg = example(app, "1.0.0");
        let planned = env.json(&["plan", &pkg], 0);
        assert_eq!(planned["result"], "planned");
        let n_steps = planned["steps"].as_array().unwrap().len();
        assert!(n_steps > 0);
        assert_eq!(calls(&planned).1, 0, "plan writes nothing");

        let v = env.json(&["install", &pkg], 0);
        assert_eq!(v["result"], "ok", "{app}");
        assert_eq!(v["done"].as_u64().unwrap() as usize, n_steps);
        assert!(calls(&v).1 as usize >= n_steps, "{app}");

        // no-op re-apply: 0 writes, at most 2 + 2N + F reads
        let m = manifest(app, "1.0.0");
        let n = m.qubes.len() as u64;
        let f: u64 = m.qubes.values().map(|q| q.features.len() as u64 + 1).sum();
        let v = env.json(&["install", &pkg], 0);
        assert_eq!(v["result"], "nothing to do", "{app}");
        assert_eq!(v["steps"].as_array().unwrap().len(), 0);
        let (r, w) = calls(&v);
        assert_eq!(w, 0, "{app}");
        assert!(r <= 2 + 2 * n + f, "{app}: {r} reads > 2 + 2*{n} + {f}");

        // owned and tagged
        let c = env.client("dom0");
        for q in m.qubes.keys() {
            let tags = c.tags(q).unwrap();
            assert!(tags.contains(&"created-by-mgmt".to_owned()), "{q}");
            assert!(tags.contains(&format!("qpm-pkg-{app}")), "{q}");
        }
        // the policy went through the gatekeeper into one file
        let installed =
            std::fs::read_to_string(env.sim.path().join(format!("policy.d/40-qpm-{app}.policy")))
                .unwrap();
        assert!(installed.contains("allow") || installed.contains("ask"));

        let v = env.json(&["verify", &pkg], 0);
        assert_eq!(v["clean"], true, "{v}");
        let v = env.json(&["status", app], 0);
        assert_eq!(v["clean"], true, "{v}");
    }
    let v = env.json(&["list"], 0);
    let names: Vec<&str> = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dangerzone", "securedrop-ws", "split-browser"]);
    assert_eq!(v["packages"][1]["versions"][0], "1.0.0");
    let v = env.json(&["verify"], 0);
    assert_eq!(v["clean"], true);
    assert_eq!(v["packages"].as_array().unwrap().len(), 3);
    let h = env.json(&["history"], 0);
    assert_eq!(h["history"].as_array().unwrap().len(), 6);
}

#[test]
fn upgrade_renames_and_remove_keeps_data_unless_purge() {
    let env = Env::new();
    let v1 = example("securedrop-ws", "1.0.0");
    let v2 = example("securedrop-ws", "2.0.0");
    env.json(&["install", &v1], 0);
    // install refuses to change versions; upgrade needs an installed package
    let out = env.run(&["install", &v2]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("qpm upgrade"));
    let out = env.run(&["upgrade", &example("dangerzone", "2.0.0")]);
    assert_eq!(out.status.code(), Some(2));

    let v = env.json(&["upgrade", &v2], 0);
    assert_eq!(v["action"], "upgrade");
    assert_eq!(v["result"], "ok");
    let c = env.client("dom0");
    let names: Vec<String> = c
        .list_qubes()
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert!(names.contains(&"sd-tor".to_owned()));
    assert!(!names.contains(&"sd-whonix".to_owned()));
    assert_eq!(
        c.property(Some("sd-proxy"), "netvm").unwrap().value,
        "sd-tor"
    );
    // the policy file is the new version's text
    let m = manifest("securedrop-ws", "2.0.0");
    let mut want = String::new();
    for f in &m.policy_files {
        want.push_str(&std::fs::read_to_string(Path::new(&v2).join(f)).unwrap());
    }
    let got = std::fs::read_to_string(env.sim.path().join("policy.d/40-qpm-securedrop-ws.policy"))
        .unwrap();
    assert_eq!(got, want);
    env.json(&["verify", &v2], 0);
    let v = env.json(&["upgrade", &v2], 0);
    assert_eq!(calls(&v).1, 0);

    // removal: data qubes (and what they need) kept, the rest removed
    let v = env.json(&["remove", "--dry-run", "securedrop-ws"], 0);
    assert_eq!(calls(&v).1, 0);
    let v = env.json(&["remove", "securedrop-ws"], 0);
    let kept: Vec<&str> = v["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["qube"].as_str().unwrap())
        .collect();
    assert!(
        kept.contains(&"sd-app") && kept.contains(&"sd-small"),
        "{kept:?}"
    );
    assert!(
        !env.sim
            .path()
            .join("policy.d/40-qpm-securedrop-ws.policy")
            .exists()
    );
    let names: Vec<String> = c
        .list_qubes()
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert!(names.contains(&"sd-app".to_owned()));
    assert!(!names.contains(&"sd-proxy".to_owned()));
    assert!(
        !c.tags("sd-app")
            .unwrap()
            .contains(&"qpm-pkg-securedrop-ws".to_owned())
    );
    let v = env.json(&["list"], 0);
    assert_eq!(v["packages"].as_array().unwrap().len(), 0);
    // re-installing finds the kept qubes: refused without --adopt
    let out = env.run(&["install", &v2]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--adopt"));
    let v = env.json(&["install", "--adopt", &v2], 0);
    assert_eq!(v["result"], "ok");
    env.json(&["verify", &v2], 0);
    // --purge removes everything
    env.json(&["remove", "--purge", "securedrop-ws"], 0);
    let left: Vec<String> = c
        .list_qubes()
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .filter(|n| n.starts_with("sd-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let out = env.run(&["remove", "securedrop-ws"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not installed"));
}

#[test]
fn user_changes_are_kept_and_conflicts_need_a_decision() {
    let env = Env::new();
    let v1 = example("securedrop-ws", "1.0.0");
    let v2 = example("securedrop-ws", "2.0.0");
    env.json(&["install", &v1], 0);
    let mgmt = env.client("mgmt");
    // the user raises sd-gpg's memory (the package does not set it in 2.0.0
    // either) and points sd-proxy elsewhere (2.0.0 changes its netvm)
    mgmt.set_property(Some("sd-log"), "autostart", "False")
        .unwrap();
    mgmt.set_property(Some("sd-proxy"), "netvm", "").unwrap();

    let v = env.json(&["status", "securedrop-ws"], 0);
    assert_eq!(v["clean"], false);
    let keys: Vec<String> = v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{}:{}",
                d["qube"].as_str().unwrap(),
                d["key"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(keys, ["sd-log:p:autostart", "sd-proxy:p:netvm"]);
    // verify against the package, by name, or everything: exit 1
    let v = env.json(&["verify", &v1], 1);
    assert_eq!(v["clean"], false);
    let v = env.json(&["verify", "securedrop-ws"], 1);
    assert_eq!(v["differences"].as_array().unwrap().len(), 2);
    let v = env.json(&["verify"], 1);
    assert_eq!(v["packages"][0]["package"], "securedrop-ws");
    assert_eq!(v["packages"][0]["clean"], false);

    // re-applying the same version keeps both changes
    let v = env.json(&["install", &v1], 0);
    assert_eq!(calls(&v).1, 0);
    assert_eq!(v["user_changes_kept"].as_array().unwrap().len(), 2);

    // the upgrade changes sd-proxy's netvm too: a conflict
    let before = env.state_json();
    let out = env.run(&["upgrade", &v2]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sd-proxy: p:netvm") && err.contains("--keep-mine"),
        "{err}"
    );
    assert_eq!(env.state_json(), before, "nothing changed");

    let v = env.json(&["upgrade", "--keep-mine", &v2], 0);
    assert_eq!(v["result"], "ok");
    let c = env.client("dom0");
    assert_eq!(c.property(Some("sd-proxy"), "netvm").unwrap().value, "");
    assert_eq!(
        c.property(Some("sd-log"), "autostart").unwrap().value,
        "False"
    );
    let v = env.json(&["install", &v2], 0);
    assert_eq!(calls(&v).1, 0);

    // the same conflict resolved the other way: only the conflicting
    // setting takes the package's value, the other change stays
    let env = Env::new();
    env.json(&["install", &v1], 0);
    let mgmt = env.client("mgmt");
    mgmt.set_property(Some("sd-log"), "autostart", "False")
        .unwrap();
    mgmt.set_property(Some("sd-proxy"), "netvm", "").unwrap();
    let v = env.json(&["upgrade", "--take-package", &v2], 0);
    assert_eq!(v["user_changes_overridden"][0]["key"], "p:netvm");
    let c = env.client("dom0");
    assert_eq!(
        c.property(Some("sd-proxy"), "netvm").unwrap().value,
        "sd-tor"
    );
    assert_eq!(
        c.property(Some("sd-log"), "autostart").unwrap().value,
        "False"
    );
}

/// Writes a package directory from a manifest text (and an optional policy).
fn package(dir: &Path, manifest: &str, policy: Option<&str>) -> String {
    std::fs::create_dir_all(dir.join("policy")).unwrap();
    std::fs::write(dir.join("qpm.toml"), manifest).unwrap();
    if let Some(p) = policy {
        std::fs::write(dir.join("policy/p.policy"), p).unwrap();
    }
    dir.display().to_string()
}

#[test]
fn bad_input_is_refused_before_any_call() {
    let env = Env::new();
    env.json(&["install", &example("split-browser", "1.0.0")], 0);
    let tmp = tempfile::tempdir().unwrap();
    let head = "[package]\nname = \"bad\"\nversion = \"1.0.0\"\nsummary = \"s\"\n";
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed", format!("{head}[qubes.a]\nclass = \"AppVM\"\nlabel = \"red\"\ncolour = 1\n"), "qpm.toml:8"),
        ("dom0", format!("{head}[qubes.dom0]\nclass = \"AppVM\"\nlabel = \"red\"\n"), "dom0"),
        (
            "netvm-cycle",
            format!(
                "{head}[qubes.a]\nclass = \"AppVM\"\nlabel = \"red\"\nnetvm = \"b\"\nproperties = {{ provides_network = true }}\n\
                 [qubes.b]\nclass = \"AppVM\"\nlabel = \"red\"\nnetvm = \"a\"\nproperties = {{ provides_network = true }}\n"
            ),
            "cycle",
        ),
        (
            "missing-base",
            format!("{head}[qubes.a]\nclass = \"AppVM\"\ntemplate = \"debian-99\"\nlabel = \"red\"\n"),
            "`debian-99`",
        ),
        (
            "not-owned",
            format!("{head}[qubes.fedora-42-xfce]\nclass = \"AppVM\"\ntemplate = \"debian-13-xfce\"\nlabel = \"red\"\n"),
            "does not own",
        ),
        (
            "collision",
            format!("{head}[qubes.sb-dvm]\nclass = \"AppVM\"\ntemplate = \"debian-13-xfce\"\nlabel = \"red\"\n"),
            "already belongs to package `split-browser`",
        ),
        (
            "missing-required",
            "[package]\nname = \"bad\"\nversion = \"1.0.0\"\nsummary = \"s\"\nrequires = [\"base-templates >= 1.2\"]\n\
             [qubes.a]\nclass = \"AppVM\"\ntemplate = \"debian-13-xfce\"\nlabel = \"red\"\n"
                .to_owned(),
            "`base-templates`",
        ),
        (
            "required-too-old",
            "[package]\nname = \"bad\"\nversion = \"1.0.0\"\nsummary = \"s\"\nrequires = [\"split-browser >= 2\"]\n\
             [qubes.a]\nclass = \"AppVM\"\ntemplate = \"debian-13-xfce\"\nlabel = \"red\"\n"
                .to_owned(),
            "installed: 1.0.0",
        ),
    ];
    for (name, text, needle) in cases {
        let pkg = package(&tmp.path().join(name), &text, None);
        let before = env.state_json();
        let out = env.run(&["install", &pkg]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(needle), "{name}: {err}");
        assert_eq!(
            env.state_json(),
            before,
            "{name}: the simulated dom0 changed"
        );
        let out = env
            .cmd()
            .args(["--json", "install", &pkg])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        assert!(out.stdout.is_empty(), "{name}: no summary on a refusal");
    }
    // a half-owned qube (created by mgmt, in no package) needs --adopt
    let mgmt = env.client("mgmt");
    mgmt.create("AppVM", "bad-a", "red", Some("debian-13-xfce"))
        .unwrap();
    let pkg = package(
        &tmp.path().join("adopt"),
        &format!(
            "{head}[qubes.bad-a]\nclass = \"AppVM\"\ntemplate = \"debian-13-xfce\"\nlabel = \"blue\"\n"
        ),
        Some("bad.Svc * bad-a bad-a allow\n"),
    );
    let out = env.run(&["install", &pkg]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--adopt"));
    env.json(&["install", "--adopt", &pkg], 0);
    assert!(
        mgmt.tags("bad-a")
            .unwrap()
            .contains(&"qpm-pkg-bad".to_owned())
    );
    assert_eq!(mgmt.property(Some("bad-a"), "label").unwrap().value, "blue");
    // a policy the gatekeeper rejects: the run fails (exit 2), names the rule
    let pkg = package(
        &tmp.path().join("adopt"),
        &format!(
            "{head}[qubes.bad-a]\nclass = \"AppVM\"\ntemplate = \"debian-13-xfce\"\nlabel = \"blue\"\n[policy]\nfiles = [\"policy/p.policy\"]\n"
        ),
        Some("bad.Svc * bad-a work allow\n"),
    );
    let out = env.run(&["install", &pkg]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("R"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `qpm ARGS` on a terminal (util-linux `script` gives it a pty),
/// typing `answer`; returns the exit code and what the terminal showed.
fn on_terminal(env: &Env, args: &[&str], answer: &str) -> (Option<i32>, String) {
    use std::io::Write;
    let base = env.cmd();
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut line = quote(&base.get_program().to_string_lossy());
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let mut c = Command::new("script");
    c.args(["-qec", &line, "/dev/null"]);
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let mut child = c
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// On a terminal, a conflict is a question: abort changes nothing, "k"
/// keeps the user's value, and the upgrade goes on.
#[test]
fn a_conflict_is_asked_on_a_terminal() {
    let env = Env::new();
    let v1 = example("securedrop-ws", "1.0.0");
    let v2 = example("securedrop-ws", "2.0.0");
    env.json(&["install", &v1], 0);
    let mgmt = env.client("mgmt");
    mgmt.set_property(Some("sd-proxy"), "netvm", "").unwrap();
    let before = env.state_json();
    let (code, screen) = on_terminal(&env, &["upgrade", &v2], "a\n");
    assert_eq!(code, Some(2), "{screen}");
    assert!(screen.contains("sd-proxy: p:netvm"), "{screen}");
    assert!(screen.contains("Keep yours (k)"), "{screen}");
    assert_eq!(env.state_json(), before, "abort changes nothing");
    let (code, screen) = on_terminal(&env, &["upgrade", &v2], "k\n");
    assert_eq!(code, Some(0), "{screen}");
    let c = env.client("dom0");
    assert_eq!(c.property(Some("sd-proxy"), "netvm").unwrap().value, "");
    assert!(
        c.tags("sd-tor")
            .unwrap()
            .iter()
            .any(|t| t == "qpm-pkg-securedrop-ws"),
        "the upgrade went on"
    );
}

/// A qube created in dom0 is invisible to the management qube, so the plan
/// cannot see the collision; the create call finds it, and the run stops
/// there with an error that names the qube and the ways out, without
/// touching the foreign qube.
#[test]
fn a_collision_with_a_qube_outside_the_scope_stops_at_its_creation() {
    let env = Env::new();
    let dom0 = env.client("dom0");
    dom0.create("AppVM", "bad-hidden", "red", Some("debian-13-xfce"))
        .unwrap();
    let mgmt = env.client("mgmt");
    assert!(
        !mgmt
            .list_qubes()
            .unwrap()
            .iter()
            .any(|q| q.name == "bad-hidden"),
        "the qube must be outside the management qube's view for this test"
    );
    let tmp = tempfile::tempdir().unwrap();
    let pkg = package(
        &tmp.path().join("bad"),
        "[package]\nname = \"bad\"\nversion = \"1.0.0\"\nsummary = \"s\"\n\
         [qubes.bad-hidden]\nclass = \"AppVM\"\ntemplate = \"debian-13-xfce\"\nlabel = \"blue\"\n",
        None,
    );
    let out = env.run(&["install", &pkg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("name collision"), "{err}");
    assert!(
        err.contains("qpm-dom0 adopt bad-hidden --package bad"),
        "{err}"
    );
    let tags = dom0.tags("bad-hidden").unwrap();
    assert!(!tags.iter().any(|t| t.starts_with("qpm-pkg-")), "{tags:?}");
    assert_eq!(
        dom0.property(Some("bad-hidden"), "label").unwrap().value,
        "red"
    );
}

#[test]
fn a_second_run_waits_for_the_lock() {
    let env = Env::new();
    let _held = qpm_pkg::journal::StateDir::lock(env.state.path()).unwrap();
    let out = env.run(&["install", &example("dangerzone", "1.0.0")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another qpm run"));
    // plan and dry runs do not need the lock
    env.json(&["plan", &example("dangerzone", "1.0.0")], 0);
}

/// Kills `qpm ARGS` after its N-th mutating call, for every N, and after
/// each push of the package's files, re-runs it and compares the end state
/// with an uninterrupted run. The crash points
/// run on several threads (each with its own simulator; the work is mostly
/// waiting for processes). `QPM_CRASH_STRIDE=K` tries only every K-th call
/// (and the last), for a quick run; the default is every call.
fn crash_after_every_call(setup: &[&str], args: &[&str]) {
    let reference = Env::new();
    if !setup.is_empty() {
        reference.json(setup, 0);
    }
    let v = reference.json(args, 0);
    let total = calls(&v).1;
    assert!(total > 0);
    let want = reference.dump();
    let stride: u64 = std::env::var("QPM_CRASH_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|k| *k > 0)
        .unwrap_or(1);
    // Crash points: after each mutating Admin API call, then after each
    // `qpm.SyncConfig` push of the package's files (not an Admin API call).
    let pushes = v["files"]["pushes"].as_u64().unwrap_or(0);
    let points: Vec<(&str, u64)> = (1..=total)
        .filter(|n| n % stride == 0 || *n == 1 || *n == total)
        .map(|n| ("QPM_TEST_CRASH_AFTER", n))
        .chain((1..=pushes).map(|n| ("QPM_TEST_CRASH_AFTER_PUSH", n)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = 4;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    while let Some(&(var, n)) =
                        points.get(next.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
                    {
                        crash_at(setup, args, var, n, &want);
                    }
                })
            })
            .collect();
        for h in handles {
            if let Err(e) = h.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
}

/// One crash point of [`crash_after_every_call`].
fn crash_at(setup: &[&str], args: &[&str], var: &str, n: u64, want: &BTreeMap<String, Value>) {
    let env = Env::new();
    if !setup.is_empty() {
        env.json(setup, 0);
    }
    let out = env
        .cmd()
        .args(args)
        .env(var, n.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} did not crash ({var}={n})");
    let v = env.json(args, 0);
    assert_ne!(v["result"], "failed", "after a crash ({var}={n}): {v}");
    let got = env.dump();
    let keys: std::collections::BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    let diff: Vec<String> = keys
        .into_iter()
        .filter(|k| want.get(*k) != got.get(*k))
        .map(|k| format!("{k}: want {:?}\n got {:?}", want.get(k), got.get(k)))
        .collect();
    assert!(
        diff.is_empty(),
        "{args:?}: end state differs after a crash ({var}={n}):\n{}",
        diff.join("\n")
    );
    if args[0] != "remove" {
        let again = env.json(args, 0);
        assert_eq!(calls(&again).1, 0, "crash ({var}={n}): not converged");
    }
}

#[test]
fn crash_after_every_call_split_browser_install() {
    crash_after_every_call(&[], &["install", &example("split-browser", "1.0.0")]);
}

#[test]
fn crash_after_every_call_dangerzone_install() {
    crash_after_every_call(&[], &["install", &example("dangerzone", "1.0.0")]);
}

#[test]
fn crash_after_every_call_securedrop_install() {
    crash_after_every_call(&[], &["install", &example("securedrop-ws", "1.0.0")]);
}

#[test]
fn crash_after_every_call_securedrop_upgrade() {
    crash_after_every_call(
        &["install", &example("securedrop-ws", "1.0.0")],
        &["upgrade", &example("securedrop-ws", "2.0.0")],
    );
}

#[test]
fn install_and_upgrade_by_name_from_a_repository() {
    let env = Env::new();
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = env
            .cmd()
            .current_dir(home.path())
            .env("QPM_HOME", home.path().join("home"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "qpm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    run(&["key", "generate", "-o", "k"]);
    let pkgs = repo().join("examples/dangerzone");
    run(&[
        "repo",
        "build",
        "pub",
        "--key",
        "k.key",
        &pkgs.display().to_string(),
    ]);
    run(&["repo", "add", "usb", "pub", "--key", "k.pub"]);
    run(&["update"]);
    run(&["install", "dangerzone@1.0.0"]);
    let v = env.json(&["list"], 0);
    assert_eq!(v["packages"][0]["versions"][0], "1.0.0");
    // `plan --all` shows the upgrade and changes nothing.
    let out = run(&["plan", "--all"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Plan: upgrade dangerzone 2.0.0"), "{err}");
    assert_eq!(
        env.json(&["list"], 0)["packages"][0]["versions"][0],
        "1.0.0"
    );
    run(&["upgrade", "--all"]);
    let v = env.json(&["list"], 0);
    assert_eq!(v["packages"][0]["name"], "dangerzone");
    assert_eq!(v["packages"][0]["versions"][0], "2.0.0");
    env.json(&["verify", &example("dangerzone", "2.0.0")], 0);
    // Nothing newer: a no-op.
    let out = run(&["upgrade", "--all"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing to upgrade"),
        "{out:?}"
    );
    // Going back needs --allow-downgrade, and nothing changes without it.
    let out = env
        .cmd()
        .current_dir(home.path())
        .env("QPM_HOME", home.path().join("home"))
        .args(["upgrade", "dangerzone@1.0.0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--allow-downgrade"),
        "{out:?}"
    );
    assert_eq!(
        env.json(&["list"], 0)["packages"][0]["versions"][0],
        "2.0.0"
    );
    run(&["upgrade", "dangerzone@1.0.0", "--allow-downgrade"]);
    assert_eq!(
        env.json(&["list"], 0)["packages"][0]["versions"][0],
        "1.0.0"
    );
}

#[test]
fn running_qubes_are_shut_down_only_with_consent() {
    let env = Env::new();
    env.json(&["install", &example("securedrop-ws", "1.0.0")], 0);
    let mgmt = env.client("mgmt");
    mgmt.start("sd-whonix").unwrap();
    // its data moves to sd-tor and it goes away: it must be halted
    let before = env.state_json();
    let out = env.run(&["upgrade", &example("securedrop-ws", "2.0.0")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--shutdown") && err.contains("sd-whonix"),
        "{err}"
    );
    assert_eq!(env.state_json(), before);
    let v = env.json(
        &["upgrade", "--shutdown", &example("securedrop-ws", "2.0.0")],
        0,
    );
    assert_eq!(v["halt"], serde_json::json!(["sd-whonix"]));
    let names: Vec<String> = mgmt
        .list_qubes()
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert!(!names.contains(&"sd-whonix".to_owned()));
}

#[test]
fn without_the_gatekeeper_the_policy_goes_through_policy_replace() {
    // a simulated dom0 never set up with qpm-dom0 init: the management
    // qube has the simulator's bootstrap policy, with policy.Replace
    let sim = SimDir::new();
    let out = sim.sim().arg("init").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = Env {
        sim,
        state: tempfile::tempdir().unwrap(),
    };
    let pkg = example("dangerzone", "1.0.0");
    let v = env.json(&["install", &pkg], 0);
    assert_eq!(v["result"], "ok");
    assert!(
        v["notes"][0].as_str().unwrap().contains("policy.Replace"),
        "{v}"
    );
    assert!(!env.sim.path().join("dom0/rpc/qpm.PolicySubmit").exists());
    let m = manifest("dangerzone", "1.0.0");
    let want = std::fs::read_to_string(Path::new(&pkg).join(&m.policy_files[0])).unwrap();
    let got =
        std::fs::read_to_string(env.sim.path().join("policy.d/40-qpm-dangerzone.policy")).unwrap();
    assert_eq!(got, want);
    let v = env.json(&["install", &pkg], 0);
    assert_eq!(calls(&v).1, 0);
    env.json(&["remove", "--purge", "dangerzone"], 0);
    assert!(
        !env.sim
            .path()
            .join("policy.d/40-qpm-dangerzone.policy")
            .exists()
    );
}

#[test]
fn removal_is_refused_while_other_qubes_use_the_package() {
    let env = Env::new();
    env.json(&["install", &example("securedrop-ws", "1.0.0")], 0);
    let mgmt = env.client("mgmt");
    mgmt.create("AppVM", "other", "red", Some("debian-13-xfce"))
        .unwrap();
    mgmt.set_property(Some("other"), "netvm", "sd-whonix")
        .unwrap();
    let before = env.state_json();
    let out = env.run(&["remove", "--purge", "securedrop-ws"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`other`.netvm is `sd-whonix`"), "{err}");
    assert_eq!(env.state_json(), before);
    mgmt.set_property(Some("other"), "netvm", "").unwrap();
    env.json(&["remove", "--purge", "securedrop-ws"], 0);
}

#[test]
fn crash_after_every_call_securedrop_remove() {
    crash_after_every_call(
        &["install", &example("securedrop-ws", "1.0.0")],
        &["remove", "securedrop-ws"],
    );
}
