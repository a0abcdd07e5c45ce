//! Every example package in `examples/` loads and validates.

use std::path::PathBuf;

fn examples() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut out = Vec::new();
    for app in std::fs::read_dir(&root).unwrap() {
        let app = app.unwrap().path();
        let Ok(versions) = std::fs::read_dir(&app) else {
            continue;
        };
        for v in versions {
            let v = v.unwrap().path();
            if v.join("qpm.toml").is_file() {
                out.push(v);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn all_examples_load() {
    let all = examples();
    assert!(
        all.len() >= 6,
        "expected the three examples in two versions, found {all:?}"
    );
    for dir in all {
        let m =
            qpm_pkg::manifest::load_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let version = dir.file_name().unwrap().to_str().unwrap();
        assert_eq!(m.version.to_string(), version, "{}", dir.display());
        assert!(!m.policy_files.is_empty(), "{}", dir.display());
    }
}

#[test]
fn securedrop_example_has_the_expected_shape() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/securedrop-ws/1.0.0");
    let m = qpm_pkg::manifest::load_dir(&root).unwrap();
    assert!(m.qubes.len() >= 10, "{}", m.qubes.len());
    assert_eq!(m.policy_files.len(), 2);
}
