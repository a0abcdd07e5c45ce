//! The simulator with 1,000 qubes: start time of `qpm-sim serve` (until it
//! answers), its memory, and `admin.vm.List` on the qubesd socket.
//!
//! Run: `cargo bench -p qpm-sim --bench scale`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use qpm_sim::store::StateDir;

fn sim_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = target.join("qpm-sim");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "qpm-sim"]);
        if target.ends_with("release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success());
    }
    bin
}

fn call(sock: &Path, req: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(req).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

#[allow(clippy::zombie_processes, reason = "the caller stops the child")]
fn start(bin: &Path, dir: &Path) -> (Child, Duration) {
    let t = Instant::now();
    let child = Command::new(bin)
        .arg("--sim")
        .arg(dir)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = dir.join("run/qubesd.sock");
    loop {
        if answers(&sock) {
            return (child, t.elapsed());
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no answer");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn answers(sock: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return false;
    };
    let mut out = Vec::new();
    s.write_all(b"admin.vm.List+ dom0 name dom0\0").is_ok()
        && s.shutdown(std::net::Shutdown::Write).is_ok()
        && s.read_to_end(&mut out).is_ok()
        && out.starts_with(b"0\0")
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn stop(mut child: Child, dir: &Path) {
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(dir.join("run/qubesd.sock"));
}

fn scale(c: &mut Criterion) {
    let bin = sim_bin();
    let tmp = tempfile::tempdir().unwrap();
    let dir = StateDir::new(tmp.path());
    let sys = qpm_sim::populate::with_appvms(dir.open_or_init().unwrap(), 1000);
    assert_eq!(sys.qubes.len(), 1011);
    std::fs::write(dir.state_file(), serde_json::to_vec(&sys).unwrap()).unwrap();

    // first start creates 1,000 qube directories; later ones only check them
    let (child, first) = start(&bin, tmp.path());
    let list = call(
        &tmp.path().join("run/qubesd.sock"),
        b"admin.vm.List+ dom0 name dom0\0",
    );
    assert_eq!(list.iter().filter(|&&b| b == b'\n').count(), 1011);
    for i in 0..1000 {
        let req = format!("admin.vm.property.GetAll+ dom0 name bench-{i}\0");
        assert!(call(&tmp.path().join("run/qubesd.sock"), req.as_bytes()).starts_with(b"0\0"));
    }
    let rss = rss_kib(child.id());
    let state_len = std::fs::metadata(dir.state_file()).unwrap().len();
    eprintln!(
        "scale: 1,011 qubes: first start {:.1} ms, RSS after List + 1,000 GetAll {} KiB, state.json {} KiB",
        first.as_secs_f64() * 1000.0,
        rss,
        state_len / 1024
    );
    stop(child, tmp.path());

    let mut g = c.benchmark_group("sim_1000_qubes");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("start_until_answering", |b| {
        b.iter_custom(|n| {
            let mut total = Duration::ZERO;
            for _ in 0..n {
                let (child, t) = start(&bin, tmp.path());
                total += t;
                stop(child, tmp.path());
            }
            total
        })
    });
    let (child, _) = start(&bin, tmp.path());
    let sock = tmp.path().join("run/qubesd.sock");
    g.bench_function("vm_list_1011_qubes", |b| {
        b.iter(|| assert!(call(&sock, b"admin.vm.List+ dom0 name dom0\0").len() > 60_000))
    });
    g.bench_function("property_set_with_save", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let req = format!(
                "admin.vm.property.Set+memory dom0 name bench-7\0{}",
                400 + i % 100
            );
            assert_eq!(call(&sock, req.as_bytes()), b"0\0");
        })
    });
    g.finish();
    stop(child, tmp.path());
}

criterion_group!(benches, scale);
criterion_main!(benches);
