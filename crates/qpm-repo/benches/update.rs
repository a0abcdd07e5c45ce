//! `qpm update` of a 1,000-package repository, from a directory source:
//! the no-change case (one small read) against a full first fetch.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use qpm_repo::client::{Client, UpdateStatus};
use qpm_repo::index::{Entry, Index, Timestamp};
use qpm_repo::paths::Paths;
use qpm_repo::sign::SecretKey;

fn sha(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

fn repo(dir: &std::path::Path, key: &SecretKey, n: usize) {
    std::fs::create_dir_all(dir.join("index")).unwrap();
    let packages = (0..n)
        .map(|i| Entry {
            name: format!("app-{i:04}"),
            version: format!("1.{}.0", i % 7).parse().unwrap(),
            summary: format!("Test application number {i}, with a summary of usual length"),
            description: None,
            requires: vec![],
            archive: format!("packages/app-{i:04}-1.{}.0.qpm", i % 7),
            sha256: sha(format!("{i}").as_bytes()),
            size: 700,
        })
        .collect();
    let idx = Index {
        format: 1,
        version: 1,
        expires: 4_000_000_000,
        packages,
    };
    let b = idx.to_bytes();
    let h = sha(&b);
    std::fs::write(dir.join(format!("index/{h}.json")), &b).unwrap();
    let ts = Timestamp {
        version: 1,
        expires: idx.expires,
        index: format!("index/{h}.json"),
        size: b.len() as u64,
        sha256: h,
    };
    let sig = key.sign(&b, &ts.to_comment()).unwrap();
    std::fs::write(dir.join("timestamp.minisig"), sig.to_file()).unwrap();
}

fn bench(c: &mut Criterion) {
    let d = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let src = d.path().join("repo");
    repo(&src, &key, 1000);
    let home = d.path().join("home");
    let mut client = Client::open(Paths::under(&home)).unwrap();
    client
        .add_repo("big", src.to_str().unwrap(), &key.public())
        .unwrap();
    let r = client.update(&[], &mut |_, _, _| {}).unwrap();
    assert_eq!(r[0].status, UpdateStatus::Updated);

    let mut g = c.benchmark_group("update_1000_packages");
    g.sample_size(30);
    g.bench_function("no_change", |b| {
        b.iter(|| {
            let r = client.update(&[], &mut |_, _, _| {}).unwrap();
            assert_eq!(r[0].status, UpdateStatus::Unchanged);
            assert_eq!(r[0].requests, 1);
            black_box(r)
        });
    });
    g.bench_function("first_fetch", |b| {
        b.iter_batched(
            || {
                let h = tempfile::tempdir().unwrap();
                let mut c = Client::open(Paths::under(h.path())).unwrap();
                c.add_repo("big", src.to_str().unwrap(), &key.public())
                    .unwrap();
                (h, c)
            },
            |(h, mut c)| {
                let r = c.update(&[], &mut |_, _, _| {}).unwrap();
                assert_eq!(r[0].status, UpdateStatus::Updated);
                black_box((h, r))
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
