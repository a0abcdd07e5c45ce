//! The qrexec router: dom0 services, callers that go away, streaming.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Served, bin};

pub(crate) fn install(s: &Served, qube: &str, name: &str, body: &str) {
    let script = s.dir.path().join(format!("{name}.sh"));
    std::fs::write(&script, body).unwrap();
    let out = Command::new(bin())
        .arg("--sim")
        .arg(s.dir.path())
        .args(["install-service", qube, name])
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_service_dies_with_its_caller() {
    let s = Served::start();
    let pidfile = s.dir.path().join("svc.pid");
    install(
        &s,
        "fedora-42-xfce",
        "test.Sleep",
        &format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 1000\n",
            pidfile.display()
        ),
    );
    let mut caller = Command::new(bin())
        .arg("--sim")
        .arg(s.dir.path())
        .args(["call", "--from", "dom0", "work", "test.Sleep"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pidfile.exists() {
        assert!(Instant::now() < deadline, "service did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    caller.kill().unwrap();
    caller.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(Instant::now() < deadline, "the service outlived its caller");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dom0_services_get_the_dom0_environment() {
    let s = Served::start();
    install(
        &s,
        "dom0",
        "test.Dom0",
        "#!/bin/sh\necho \"$QREXEC_REMOTE_DOMAIN $QREXEC_REQUESTED_TARGET_TYPE $QREXEC_REQUESTED_TARGET $1\"\ntest -d \"$QPM_SIM_POLICY_DIR\" && test -S \"$QPM_SIM_QUBESD_SOCKET\" && echo dom0-paths\n",
    );
    let out = Command::new(bin())
        .arg("--sim")
        .arg(s.dir.path())
        .args(["call", "--from", "dom0", "dom0", "test.Dom0+pkg"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "dom0 name dom0 pkg\ndom0-paths\n"
    );
}

#[test]
fn large_streams_pass_through_both_ways() {
    let s = Served::start();
    install(&s, "fedora-42-xfce", "test.Cat", "#!/bin/sh\nexec cat\n");
    let data: Vec<u8> = (0..8 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let mut cmd = Command::new(bin());
    cmd.arg("--sim")
        .arg(s.dir.path())
        .args(["call", "--from", "dom0", "work", "test.Cat"]);
    let out = assert_cmd::Command::from_std(cmd)
        .write_stdin(data.clone())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "8 MiB echoed byte for byte");
}
