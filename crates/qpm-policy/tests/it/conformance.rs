//! The public conformance vectors, run through the library; every mismatch
//! is reported by id with the fields that differ.

use std::path::PathBuf;

use serde_json::Value;

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../conformance/policy/public.jsonl")
}

/// The fields `check.py` compares in its full mode.
fn fields(result: &str) -> &'static [&'static str] {
    match result {
        "allow" => &[
            "target",
            "user",
            "autostart",
            "notify",
            "target_uuid",
            "requested_target",
            "rule",
        ],
        "ask" => &[
            "targets_for_ask",
            "default_target",
            "user",
            "autostart",
            "notify",
            "rule",
        ],
        "deny" => &["notify", "deny_reason", "rule"],
        _ => &["error_kind", "error_file", "error_line"],
    }
}

fn norm(field: &str, v: Option<&Value>) -> Value {
    let v = v.cloned().unwrap_or(Value::String("<missing>".into()));
    match (field, v) {
        ("targets_for_ask", Value::Array(mut a)) => {
            a.sort_by_key(|x| x.to_string());
            Value::Array(a)
        }
        ("user", Value::String(s)) if s.is_empty() => Value::Null,
        (_, v) => v,
    }
}

#[test]
fn public_vectors_agree() {
    let text = std::fs::read_to_string(vectors()).expect("vectors are vendored");
    let mut failures = Vec::new();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        n += 1;
        let case: Value = serde_json::from_str(line).unwrap();
        let id = case["id"].as_str().unwrap().to_owned();
        let expect = &case["expect"];
        let got = qpm_policy::conformance::run_line(line).unwrap();
        let result = expect["result"].as_str().unwrap();
        if got["result"] != expect["result"] {
            failures.push(format!(
                "{id}: result expected {} got {}",
                expect["result"], got
            ));
            continue;
        }
        for f in fields(result) {
            if expect.get(*f).is_none() {
                continue;
            }
            let (e, g) = (norm(f, expect.get(*f)), norm(f, got.get(*f)));
            if e != g {
                failures.push(format!("{id}: {f} expected {e} got {g}"));
            }
        }
    }
    assert!(n >= 300, "only {n} cases read");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
