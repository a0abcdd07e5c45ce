//! Qubes' own tools against the simulator: a Python script replays the
//! requests qubesadmin sends (qvm-ls, qvm-prefs, qubes-prefs, qvm-create
//! with classes and pools, qvm-features, qvm-tags, qvm-firewall, qvm-volume,
//! qvm-clone, qvm-remove, qvm-start/kill) on the qubesd socket and checks
//! every answer the way qubesadmin parses it, including the differences
//! found by running the real tools (docs/simulator.md).

use std::process::Command;

use super::Served;

#[test]
fn qubesadmin_request_sequences() {
    let python = Command::new("python3").arg("--version").output();
    if python.is_err() {
        assert!(
            std::env::var_os("QPM_REQUIRE_SYSTEM_TESTS").is_none(),
            "python3 is required"
        );
        eprintln!("skipping: python3 not found");
        return;
    }
    let s = Served::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/qubesadmin_compat.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(s.qubesd())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok 11 qubes\n");
}
