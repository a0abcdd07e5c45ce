//! Parse a generated 10,000-rule policy from disk and evaluate random
//! requests against 1k, 10k and 100k-rule policies of the same shape.
//!
//! `cargo bench -p qpm-policy --bench policy`; figures in BENCHMARKS.md.

use std::cell::OnceCell;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qpm_policy::{Decision, Policy, Request};

#[path = "support/shape.rs"]
mod shape;

/// (files, rules per file) for 1k, 10k, 100k rules.
const SIZES: [(usize, usize); 3] = [(5, 200), (50, 200), (500, 200)];
const REQUESTS: usize = 100_000;

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_from_disk");
    for (files, per_file) in SIZES {
        let n = files * per_file;
        // Set up only when the benchmark runs (not when filtered out).
        let dir = OnceCell::new();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            let dir = dir.get_or_init(|| {
                let dir = tempfile::tempdir().unwrap();
                shape::write_policy(dir.path(), files, per_file);
                assert_eq!(Policy::load_dir(dir.path()).unwrap().len(), n);
                dir
            });
            b.iter(|| black_box(Policy::load_dir(dir.path()).unwrap()));
        });
    }
    g.finish();
    // The same, plus building the evaluation index (which the first
    // evaluation would otherwise do).
    let mut g = c.benchmark_group("parse_from_disk_and_index");
    for (files, per_file) in SIZES {
        let n = files * per_file;
        let dir = OnceCell::new();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            let dir = dir.get_or_init(|| {
                let dir = tempfile::tempdir().unwrap();
                shape::write_policy(dir.path(), files, per_file);
                dir
            });
            b.iter(|| {
                let p = Policy::load_dir(dir.path()).unwrap();
                p.prepare();
                black_box(p)
            });
        });
    }
    g.finish();
}

fn evaluate(c: &mut Criterion) {
    let sys = shape::system();
    let mut g = c.benchmark_group("evaluate_100k_requests");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));
    for (files, per_file) in SIZES {
        let n = files * per_file;
        let state = OnceCell::new();
        g.throughput(Throughput::Elements(REQUESTS as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            let (policy, reqs) = state.get_or_init(|| {
                let dir = tempfile::tempdir().unwrap();
                shape::write_policy(dir.path(), files, per_file);
                let policy = Policy::load_dir(dir.path()).unwrap();
                policy.prepare();
                let reqs = shape::requests(REQUESTS, n / shape::RULES_PER_SERVICE, 1);
                // The mix of decisions, so the figure is not all "no match".
                let mut mix = [0usize; 3];
                for (s, a, src, t) in &reqs {
                    match policy.evaluate(&Request::new(s, a, src, t), &sys) {
                        Decision::Allow(_) => mix[0] += 1,
                        Decision::Ask(_) => mix[1] += 1,
                        Decision::Deny(_) => mix[2] += 1,
                    }
                }
                eprintln!(
                    "{n} rules: allow {} ask {} deny {} of {REQUESTS}",
                    mix[0], mix[1], mix[2]
                );
                (policy, reqs)
            });
            b.iter(|| {
                for (s, a, src, t) in reqs {
                    black_box(policy.evaluate(&Request::new(s, a, src, t), &sys));
                }
            });
        });
    }
    g.finish();
}

criterion_group!(benches, parse, evaluate);
criterion_main!(benches);
