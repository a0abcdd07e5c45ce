//! `qpm sim ...` and on-demand start, driving the real `qpm` and `qpm-sim`
//! binaries on temporary state directories.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

/// The `qpm-sim` binary next to `qpm`. `cargo test` builds only this
/// package's binaries, so the simulator, `qpm-dom0` (which sets up its
/// dom0) and `qpm-agent` (its templates' `qpm.SyncConfig`) are built here, once per test run, so that they are never stale.
pub(crate) fn sim_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "qpm-sim",
                "-p",
                "qpm-dom0",
                "-p",
                "qpm-agent",
            ])
            .status()
            .expect("cargo build");
        assert!(
            st.success(),
            "building qpm-sim, qpm-dom0 and qpm-agent failed"
        );
    });
    PathBuf::from(env!("CARGO_BIN_EXE_qpm")).with_file_name("qpm-sim")
}

/// A simulator state directory that is stopped and removed at the end.
pub(crate) struct SimDir {
    pub(crate) dir: tempfile::TempDir,
}

impl SimDir {
    pub(crate) fn new() -> Self {
        sim_bin();
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `qpm` with this simulator (caller as given, none: default).
    pub(crate) fn qpm(&self, caller: Option<&str>) -> Command {
        let mut c = Command::cargo_bin("qpm").unwrap();
        c.env("QPM_SIM", self.path())
            .env("QPM_SIM_BIN", sim_bin())
            .env("QPM_TRANSPORT", "sim")
            .env_remove("QPM_SIM_QUBE")
            .env_remove("XDG_STATE_HOME");
        match caller {
            Some(q) => c.env("QPM_SIM_CALLER", q),
            None => c.env_remove("QPM_SIM_CALLER"),
        };
        c
    }

    pub(crate) fn sim(&self) -> Command {
        let mut c = Command::new(sim_bin());
        c.env("QPM_SIM", self.path());
        c
    }
}

impl Drop for SimDir {
    fn drop(&mut self) {
        let _ = self.qpm(None).args(["sim", "stop"]).output();
    }
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn start_status_stop() {
    let s = SimDir::new();
    let out = s
        .qpm(None)
        .args(["--json", "sim", "status"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "not running is a negative answer"
    );
    assert_eq!(json(&out)["running"], false);

    let out = s
        .qpm(None)
        .args(["--json", "sim", "start"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["started"], true);
    let out = s
        .qpm(None)
        .args(["--json", "sim", "start"])
        .output()
        .unwrap();
    assert_eq!(
        json(&out)["started"],
        false,
        "second start finds it running"
    );

    let out = s
        .qpm(None)
        .args(["--json", "sim", "status"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v = json(&out);
    assert_eq!(v["running"], true);
    assert_eq!(v["status"]["qubes"], 11, "the default machine has 11 qubes");

    let out = s
        .qpm(None)
        .args(["--json", "sim", "stop"])
        .output()
        .unwrap();
    assert_eq!(json(&out)["stopped"], true);
    assert!(!s.path().join("run/qrexec.sock").exists());
    assert!(s.path().join("state.json").exists(), "the state stays");
    let out = s
        .qpm(None)
        .args(["--json", "sim", "stop"])
        .output()
        .unwrap();
    assert_eq!(json(&out)["stopped"], false);
}

#[test]
fn starts_on_demand_and_lists_as_dom0() {
    let s = SimDir::new();
    let out = s.qpm(Some("dom0")).args(["sim", "qubes"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        [
            "dom0",
            "debian-13-xfce",
            "default-dvm",
            "fedora-42-xfce",
            "mgmt",
            "personal",
            "sys-firewall",
            "sys-net",
            "untrusted",
            "vault",
            "work"
        ]
    );
    assert!(
        s.path().join("run/qrexec.sock").exists(),
        "started in the background"
    );
}

#[test]
fn reset_needs_yes_and_a_simulator_directory() {
    let s = SimDir::new();
    let out = s.qpm(None).args(["sim", "reset"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));

    std::fs::write(s.path().join("precious.txt"), "keep me").unwrap();
    let out = s
        .qpm(None)
        .args(["sim", "reset", "--yes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        s.path().join("precious.txt").exists(),
        "a foreign directory is not touched"
    );
    std::fs::remove_file(s.path().join("precious.txt")).unwrap();

    let out = s
        .qpm(None)
        .args(["sim", "reset", "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.path().join("state.json").exists());
    assert!(s.path().join("policy.d/30-qpm-sim-base.policy").exists());
}

#[test]
fn state_survives_a_restart_of_the_simulator() {
    let s = SimDir::new();
    let out = s.qpm(None).args(["sim", "start"]).output().unwrap();
    assert!(out.status.success());
    // dom0 changes a property through the qubesd socket
    let sock = s.path().join("run/qubesd.sock");
    let reply = raw_call(&sock, b"admin.vm.property.Set+memory dom0 name work\0800");
    assert_eq!(reply, b"0\0");
    s.qpm(None).args(["sim", "stop"]).output().unwrap();
    s.qpm(None).args(["sim", "start"]).output().unwrap();
    let reply = raw_call(&sock, b"admin.vm.property.Get+memory dom0 name work\0");
    assert_eq!(reply, b"0\0default=False type=int 800");
}

pub(crate) fn raw_call(sock: &Path, req: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.write_all(req).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn router_runs_services_with_the_qrexec_environment() {
    let s = SimDir::new();
    assert!(
        s.qpm(None)
            .args(["sim", "start"])
            .output()
            .unwrap()
            .status
            .success()
    );
    let script = s.path().join("svc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"argv1=$1 remote=$QREXEC_REMOTE_DOMAIN full=$QREXEC_SERVICE_FULL_NAME arg=$QREXEC_SERVICE_ARGUMENT qube=$QPM_SIM_QUBE\"\ncat\nexit 7\n",
    )
    .unwrap();
    let out = s
        .sim()
        .args(["install-service", "fedora-42-xfce", "test.Echo"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut call = s.sim();
    call.args(["call", "--from", "dom0", "work", "test.Echo+hello"]);
    let out = assert_cmd::Command::from_std(call)
        .write_stdin("from stdin\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "the service's exit status");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "argv1=hello remote=dom0 full=test.Echo+hello arg=hello qube=work\nfrom stdin\n"
    );
    // a service that does not exist
    let out = s
        .sim()
        .args(["call", "--from", "dom0", "work", "test.Nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    // malformed service names are refused
    let out = s
        .sim()
        .args(["call", "--from", "dom0", "work", "bad/name"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126));
    // the qube was started to run it (and its netvm chain)
    let st = raw_call(
        &s.path().join("run/qubesd.sock"),
        b"admin.vm.List+ dom0 name sys-net\0",
    );
    assert!(String::from_utf8_lossy(&st).contains("state=Running"));
}

fn first_words(out: &std::process::Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

#[test]
fn the_host_cli_acts_as_mgmt_under_policy() {
    let s = SimDir::new();
    let out = s.qpm(None).args(["sim", "qubes"]).output().unwrap();
    assert_eq!(
        first_words(&out),
        ["dom0", "debian-13-xfce", "fedora-42-xfce"],
        "the base policy shows mgmt the admin VM and the templates only"
    );
}

#[test]
fn qpm_inside_a_simulated_qube_goes_through_qrexec_client_vm() {
    let s = SimDir::new();
    assert!(
        s.qpm(None)
            .args(["sim", "start"])
            .output()
            .unwrap()
            .status
            .success()
    );
    // a qube created by mgmt becomes visible to mgmt
    let out = s
        .sim()
        .args([
            "call",
            "--from",
            "mgmt",
            "dom0",
            "admin.vm.Create.AppVM+debian-13-xfce",
        ])
        .stdin(std::fs::File::open(write(&s, "payload", "name=mine label=red")).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"0\0");
    let qpm = PathBuf::from(env!("CARGO_BIN_EXE_qpm"));
    let script = format!("exec '{}' sim qubes\n", qpm.display());
    let out = s
        .sim()
        .args(["call", "--from", "dom0", "mgmt", "qubes.VMShell"])
        .stdin(std::fs::File::open(write(&s, "script", &script)).unwrap())
        .output()
        .unwrap();
    assert_eq!(
        first_words(&out),
        ["dom0", "debian-13-xfce", "fedora-42-xfce", "mine"]
    );
    // the same from a qube without any admin.* rule: refused
    let out = s
        .sim()
        .args(["call", "--from", "dom0", "work", "qubes.VMShell"])
        .stdin(std::fs::File::open(write(&s, "script", &script)).unwrap())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(s: &SimDir, name: &str, text: &str) -> PathBuf {
    let p = s.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}
