//! Round trips per second through each transport against the simulator,
//! sequential and with 8 calls in flight; and reading all properties of 100
//! qubes with GetAll vs per-property Get.
//!
//! Run: `cargo bench -p qpm-admin --bench transports`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qpm_admin::Client;
use qpm_admin::transport::{QrexecClientVm, QubesdSocket, Simulator};
use qpm_sim::daemon::{ServeOptions, serve};
use qpm_sim::store::StateDir;

struct Sim {
    _dir: tempfile::TempDir,
    path: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sim {
    fn start(latency_ms: u64, extra_qubes: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let state = StateDir::new(&path);
        state.open_or_init().unwrap();
        if extra_qubes > 0 {
            let sys = qpm_sim::populate::with_appvms(state.load().unwrap(), extra_qubes);
            std::fs::write(state.state_file(), serde_json::to_vec(&sys).unwrap()).unwrap();
        }
        let opts = ServeOptions {
            latency_ms: Some(latency_ms),
            ask: None,
        };
        let thread = std::thread::spawn(move || {
            let engine = qpm_sim::policy::default_engine(&state.policy_dir());
            serve(&state, &opts, engine).unwrap();
        });
        let router = path.join("run/qrexec.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Simulator::control(&router, "ping").is_err() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            _dir: dir,
            path,
            thread: Some(thread),
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = Simulator::control(&self.path.join("run/qrexec.sock"), "shutdown");
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `qpm-sim` binary (the qrexec-client-vm stand-in), built if needed.
fn stand_in(dir: &Path) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = target.join("qpm-sim");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = target.ends_with("release");
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-p", "qpm-sim"]);
        if release {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success());
    }
    let link = dir.join("qrexec-client-vm");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&bin, &link).unwrap();
    link
}

fn one_call(c: &Client, qube: &str) {
    let p = c.property(Some(qube), "memory").unwrap();
    assert_eq!(p.as_int(), Some(400));
}

fn in_flight(c: &Client, qube: &str, n: u64, threads: usize) -> Duration {
    let start = Instant::now();
    let per = (n as usize).div_ceil(threads);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..per {
                    one_call(c, qube);
                }
            });
        }
    });
    start.elapsed() * (n as u32) / ((per * threads) as u32)
}

fn transports(cr: &mut Criterion) {
    for latency in [0u64, 5] {
        let sim = Sim::start(latency, 0);
        let link_dir = tempfile::tempdir().unwrap();
        let qrexec = stand_in(link_dir.path());
        let router = sim.path.join("run/qrexec.sock");
        // the management qube's calls go through policy (dom0's skip it)
        let mgmt = Client::new(Simulator::new(&router, "mgmt"));
        mgmt.create("AppVM", "managed", "red", Some("fedora-42-xfce"))
            .unwrap();
        let clients: Vec<(&str, Client, &str)> = vec![
            (
                "socket",
                Client::new(QubesdSocket::new(sim.path.join("run/qubesd.sock"))),
                "work",
            ),
            (
                "router",
                Client::new(Simulator::new(&router, "dom0")),
                "work",
            ),
            ("router_as_mgmt_with_policy", mgmt, "managed"),
            (
                "qrexec-client-vm",
                Client::new(
                    QrexecClientVm::new(&qrexec)
                        .with_env("QPM_SIM_QUBE", "dom0")
                        .with_env("QPM_SIM", sim.path.to_str().unwrap()),
                ),
                "work",
            ),
        ];
        let mut g = cr.benchmark_group(format!("roundtrip_latency_{latency}ms"));
        g.throughput(Throughput::Elements(1));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(if latency > 0 { 6 } else { 4 }));
        g.warm_up_time(Duration::from_millis(500));
        for (name, c, qube) in &clients {
            g.bench_function(format!("{name}/sequential"), |b| {
                b.iter(|| one_call(c, qube))
            });
            g.bench_function(format!("{name}/8_in_flight"), |b| {
                b.iter_custom(|n| in_flight(c, qube, n, 8))
            });
        }
        g.finish();
    }
}

fn getall_vs_get(cr: &mut Criterion) {
    let sim = Sim::start(0, 100);
    let c = Client::new(Simulator::new(sim.path.join("run/qrexec.sock"), "dom0"));
    let names: Vec<String> = c
        .list_qubes()
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .filter(|n| n.starts_with("bench-"))
        .take(100)
        .collect();
    assert_eq!(names.len(), 100);
    let props = c.property_list(Some(&names[0])).unwrap();
    let mut g = cr.benchmark_group("all_properties_of_100_qubes");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("getall_100_calls", |b| {
        b.iter(|| {
            for n in &names {
                assert!(c.properties(Some(n)).unwrap().len() > 40);
            }
        })
    });
    g.bench_function(format!("get_{}_calls", 100 * props.len()), |b| {
        b.iter(|| {
            for n in &names {
                for p in &props {
                    c.property(Some(n), p).unwrap();
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, transports, getall_vs_get);
criterion_main!(benches);
