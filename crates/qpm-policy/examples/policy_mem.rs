//! Peak memory of the 10,000-rule benchmark policy.
//!
//! `cargo run --release -p qpm-policy --example policy_mem -- [FILES [PER_FILE [REPEAT]]]`
//! writes the policy to a temporary directory, then reports the resident
//! set before loading, after loading, and the peak after 100,000
//! evaluations (from /proc/self/status; run it under `/usr/bin/time -v`
//! for the whole-process peak). With REPEAT, it also loads and evaluates
//! REPEAT more times and reports the fastest round (robust on a busy
//! machine). With a fourth argument DIR, it only writes the policy to DIR
//! and the system description to DIR.json (for measuring `qpm policy eval`).

#![forbid(unsafe_code)]

use std::time::Instant;

use qpm_policy::{Policy, Request};

#[path = "../benches/support/shape.rs"]
mod shape;

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU time of the whole process (all threads: loading parses files in
/// parallel), in nanoseconds (on a busy machine wall
/// time also counts the time other processes had the CPU).
fn cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let files: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let per_file: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let repeat: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    if let Some(out) = args.next() {
        let out = std::path::PathBuf::from(out);
        std::fs::create_dir_all(&out).expect("create the output directory");
        shape::write_policy(&out, files, per_file);
        let json = serde_json::to_string(&shape::system()).expect("system as JSON");
        std::fs::write(out.with_extension("json"), json).expect("write the system description");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    shape::write_policy(dir.path(), files, per_file);
    let sys = shape::system();
    let reqs = shape::requests(100_000, files * per_file / shape::RULES_PER_SERVICE, 1);

    let before = status_kib("VmRSS:");
    let t = Instant::now();
    let policy = Policy::load_dir(dir.path()).expect("policy loads");
    let load = t.elapsed();
    let t = Instant::now();
    policy.prepare();
    let index = t.elapsed();
    let loaded = status_kib("VmRSS:");
    let t = Instant::now();
    let mut allowed = 0usize;
    for (s, a, src, tg) in &reqs {
        allowed += usize::from(policy.is_allowed(&Request::new(s, a, src, tg), &sys));
    }
    let eval = t.elapsed();
    let peak = status_kib("VmHWM:");
    let (mut best_load, mut best_index, mut best_eval) = (load, index, eval);
    let (mut cpu_load, mut cpu_index, mut cpu_eval) = (u64::MAX, u64::MAX, u64::MAX);
    for _ in 0..repeat {
        let (t, c) = (Instant::now(), cpu_ns());
        let p = Policy::load_dir(dir.path()).expect("policy loads");
        best_load = best_load.min(t.elapsed());
        cpu_load = cpu_load.min(cpu_ns() - c);
        let (t, c) = (Instant::now(), cpu_ns());
        p.prepare();
        best_index = best_index.min(t.elapsed());
        cpu_index = cpu_index.min(cpu_ns() - c);
        let (t, c) = (Instant::now(), cpu_ns());
        for (s, a, src, tg) in &reqs {
            std::hint::black_box(p.evaluate(&Request::new(s, a, src, tg), &sys));
        }
        best_eval = best_eval.min(t.elapsed());
        cpu_eval = cpu_eval.min(cpu_ns() - c);
    }
    if repeat > 0 {
        println!(
            "fastest of {} (wall): load {best_load:?}, index {best_index:?}, eval {:?} per request",
            repeat + 1,
            best_eval / 100_000
        );
        println!(
            "fastest of {} (cpu, all threads): load {:.3} ms, index {:.3} ms, eval {:.3} us per request",
            repeat + 1,
            cpu_load as f64 / 1e6,
            cpu_index as f64 / 1e6,
            cpu_eval as f64 / 1e5 / 1e3
        );
    }
    println!("rules: {}", policy.len());
    println!("load: {load:?}, index: {index:?}");
    println!(
        "eval: {:?} per request ({allowed} of 100000 allowed)",
        eval / 100_000
    );
    println!("rss before load: {before} KiB");
    println!(
        "rss after load: {loaded} KiB (policy: {} KiB)",
        loaded.saturating_sub(before)
    );
    println!("peak rss (VmHWM): {peak} KiB");
}
