//! A package's `[[files]]` delivered into its qubes through `qpm.SyncConfig`
//! (the real `qpm`, `qpm-sim`, `qpm-dom0` and `qpm-agent`): the agent is the
//! service of the simulated templates, as a fresh simulator installs it.

use std::path::PathBuf;

use serde_json::Value;

use crate::pkg::{Env, calls, example};

const BOOKMARKS: &str = "/home/user/.local/share/split-browser/bookmarks.tsv";
const CONF: &str = "/home/user/.config/split-browser/split-browser.conf";

/// Auto-apply home files in every qube of the template (the user's choice
/// in the qube; without it, deliveries wait for `qpm-agent review`).
fn auto_apply(env: &Env) {
    let dir = env
        .sim
        .path()
        .join("qubes/debian-13-xfce/root/etc/qpm-agent");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "auto_apply = [\"~/\"]\ngui = \"never\"\n",
    )
    .unwrap();
}

/// A file in a qube: its live root while it runs, else its private volume.
fn path_in(env: &Env, qube: &str, path: &str) -> PathBuf {
    let q = env.sim.path().join("qubes").join(qube);
    let running = env
        .client("dom0")
        .qube(qube)
        .is_ok_and(|i| i.state == "Running");
    if running {
        return q.join("root").join(path.trim_start_matches('/'));
    }
    q.join("private").join(path.trim_start_matches('/'))
}

fn read_in(env: &Env, qube: &str, path: &str) -> Option<String> {
    std::fs::read_to_string(path_in(env, qube, path)).ok()
}

fn files_row<'a>(v: &'a Value, qube: &str) -> &'a Value {
    v["files"]["qubes"]
        .as_array()
        .unwrap_or_else(|| panic!("no files summary: {v}"))
        .iter()
        .find(|r| r["qube"] == qube)
        .unwrap_or_else(|| panic!("no files row for {qube}: {v}"))
}

fn record_file(env: &Env) -> PathBuf {
    env.state.path().join("files/split-browser.json")
}

#[test]
fn install_delivers_reapply_pushes_nothing_upgrade_changes_and_deletes() {
    let env = Env::new();
    auto_apply(&env);
    let v1 = example("split-browser", "1.0.0");
    let v2 = example("split-browser", "2.0.0");

    // --dry-run: the files are in the plan, nothing is written or pushed.
    let v = env.json(&["install", "--dry-run", &v1], 0);
    let row = files_row(&v, "sb-persist");
    assert_eq!(row["files"], 2, "{v}");
    let changes: Vec<&str> = row["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["change"].as_str().unwrap())
        .collect();
    assert_eq!(changes, ["new", "new"], "{v}");
    assert_eq!(v["files"]["pushes"], 0);
    assert!(!env.sim.path().join("qubes/sb-persist").exists());
    assert!(!record_file(&env).exists());
    let out = env.run(&["install", "--dry-run", &v1]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("new      ~/.local/share/split-browser/bookmarks.tsv"),
        "{text}"
    );
    assert!(
        !text.contains("torproject"),
        "contents are never shown: {text}"
    );

    // install: delivered, and the qube the push started is halted again.
    let v = env.json(&["install", &v1], 0);
    assert_eq!(v["result"], "ok", "{v}");
    assert_eq!(v["files"]["pushes"], 1, "{v}");
    let row = files_row(&v, "sb-persist");
    assert_eq!(
        (&row["result"], &row["written"]),
        (&"applied".into(), &2.into()),
        "{v}"
    );
    let want = std::fs::read_to_string(format!("{v1}/files/bookmarks.tsv")).unwrap();
    assert_eq!(
        read_in(&env, "sb-persist", BOOKMARKS).as_deref(),
        Some(want.as_str())
    );
    let mode = std::fs::metadata(path_in(&env, "sb-persist", BOOKMARKS)).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    assert!(
        read_in(&env, "sb-persist", CONF)
            .unwrap()
            .contains("search =")
    );
    let state = env.client("dom0").qube("sb-persist").unwrap().state;
    assert_eq!(state, "Halted");

    // re-apply: no Admin API write and no push.
    let v = env.json(&["install", &v1], 0);
    assert_eq!(calls(&v).1, 0, "{v}");
    assert_eq!(v["files"]["pushes"], 0, "{v}");
    assert_eq!(files_row(&v, "sb-persist")["result"], "as last delivered");

    // The user's own config sync into the same qube, from the same qube.
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("gitconfig"), "[user]\n\tname = U\n").unwrap();
    std::fs::write(
        repo.path().join("qpm-sync.toml"),
        "[[file]]\nsrc = \"gitconfig\"\ndest = \"~/.gitconfig\"\nto = [\"sb-persist\"]\n",
    )
    .unwrap();
    let out = env
        .cmd()
        .env("QPM_SYNC_REPO", repo.path())
        .env("QPM_SYNC_STATE", repo.path().join(".state"))
        .args(["sync", "push", "sb-persist"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(read_in(&env, "sb-persist", "/home/user/.gitconfig").is_some());
    // ... left the qube running: the upgrade needs --shutdown (rename).

    // upgrade: sb-persist becomes sb-vault (its data moves), the bookmarks
    // change, split-browser.conf goes; the user's own file stays.
    let v = env.json(&["plan", "--shutdown", &v2], 0);
    let planned: Vec<String> = files_row(&v, "sb-vault")["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["change"].as_str().unwrap(),
                c["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        planned,
        [
            "modified ~/.local/share/split-browser/bookmarks.tsv",
            "deleted ~/.config/split-browser/split-browser.conf"
        ],
        "{v}"
    );
    let v = env.json(&["upgrade", "--shutdown", &v2], 0);
    assert_eq!(v["result"], "ok", "{v}");
    let row = files_row(&v, "sb-vault");
    assert_eq!(row["result"], "applied", "{v}");
    assert_eq!(
        (&row["written"], &row["deleted"]),
        (&1.into(), &1.into()),
        "{v}"
    );
    let want = std::fs::read_to_string(format!("{v2}/files/bookmarks.tsv")).unwrap();
    assert_eq!(
        read_in(&env, "sb-vault", BOOKMARKS).as_deref(),
        Some(want.as_str())
    );
    assert_eq!(read_in(&env, "sb-vault", CONF), None);
    assert_eq!(
        read_in(&env, "sb-vault", "/home/user/.gitconfig").as_deref(),
        Some("[user]\n\tname = U\n"),
        "the user's own set is not the package's"
    );
    let v = env.json(&["upgrade", &v2], 0);
    assert_eq!((calls(&v).1, &v["files"]["pushes"]), (0, &0.into()), "{v}");

    // remove: the data qube is kept with its files, the record goes.
    assert!(record_file(&env).exists());
    env.json(&["remove", "split-browser"], 0);
    assert!(!record_file(&env).exists());
    assert!(read_in(&env, "sb-vault", BOOKMARKS).is_some());
    assert!(read_in(&env, "sb-vault", "/home/user/.gitconfig").is_some());
}

#[test]
fn a_file_edited_in_the_qube_is_a_conflict_not_overwritten() {
    let env = Env::new();
    auto_apply(&env);
    env.json(&["install", &example("split-browser", "1.0.0")], 0);
    let p = path_in(&env, "sb-persist", BOOKMARKS);
    std::fs::write(&p, "https://example.org/\tmine\n").unwrap();
    let v = env.json(
        &["upgrade", "--shutdown", &example("split-browser", "2.0.0")],
        0,
    );
    let row = files_row(&v, "sb-vault");
    assert_eq!(row["result"], "queued", "a conflict waits for review: {v}");
    assert_eq!(row["conflicts"], 1, "{v}");
    assert_eq!(
        read_in(&env, "sb-vault", BOOKMARKS).as_deref(),
        Some("https://example.org/\tmine\n")
    );
    assert!(
        read_in(&env, "sb-vault", CONF).is_some(),
        "nothing of a queued sync is applied"
    );
    let out = env.run(&["upgrade", &example("split-browser", "2.0.0")]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("queued for review"), "{text}");
}

#[test]
fn a_missing_grant_is_a_clear_error() {
    let env = Env::new();
    auto_apply(&env);
    // A dom0 set up before qpm-dom0 granted package files.
    let base = env.sim.path().join("policy.d/39-qpm-base.policy");
    let text = std::fs::read_to_string(&base).unwrap();
    assert!(text.contains("qpm.SyncConfig * mgmt @tag:created-by-mgmt allow"));
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("qpm.SyncConfig"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&base, text).unwrap();
    let out = env.run(&["install", &example("split-browser", "1.0.0")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("qrexec refused qpm.SyncConfig from mgmt to sb-persist")
            && err.contains("qpm-dom0 init"),
        "{err}"
    );
    assert_eq!(read_in(&env, "sb-persist", BOOKMARKS), None);
    assert!(!record_file(&env).exists());
}

/// The push is the step after the last Admin API call: killed right after
/// it (before its result is recorded), a re-run completes and converges.
#[test]
fn crash_after_the_push_converges() {
    let env = Env::new();
    auto_apply(&env);
    let v1 = example("split-browser", "1.0.0");
    let out = env
        .cmd()
        .args(["install", &v1])
        .env("QPM_TEST_CRASH_AFTER_PUSH", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(read_in(&env, "sb-persist", BOOKMARKS).is_some());
    let v = env.json(&["install", &v1], 0);
    assert_eq!(v["files"]["pushes"], 1, "{v}");
    assert_eq!(files_row(&v, "sb-persist")["result"], "unchanged", "{v}");
    let v = env.json(&["install", &v1], 0);
    assert_eq!((calls(&v).1, &v["files"]["pushes"]), (0, &0.into()), "{v}");
}

/// `qpm status` / `qpm verify` ask running qubes whether the files the
/// package delivered are still as delivered; halted qubes are not started.
#[test]
fn status_and_verify_report_edited_files_in_running_qubes() {
    let env = Env::new();
    auto_apply(&env);
    env.json(&["install", &example("split-browser", "1.0.0")], 0);
    let v = env.json(&["verify", "split-browser"], 0);
    assert_eq!(v["clean"], true, "{v}");
    let notes = v["notes"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| n
            .as_str()
            .unwrap()
            .contains("sb-persist: files not checked: the qube is halted")),
        "{v}"
    );
    assert_eq!(
        env.client("dom0").qube("sb-persist").unwrap().state,
        "Halted"
    );

    let out = env
        .sim
        .sim()
        .args(["restart", "sb-persist"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = env.json(&["verify", "split-browser"], 0);
    assert_eq!(v["clean"], true, "{v}");
    assert_eq!(v["notes"].as_array().unwrap().len(), 0, "{v}");

    std::fs::write(path_in(&env, "sb-persist", BOOKMARKS), "edited\n").unwrap();
    std::fs::remove_file(path_in(&env, "sb-persist", CONF)).unwrap();
    let v = env.json(&["verify", "split-browser"], 1);
    let keys: Vec<&str> = v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "file:~/.config/split-browser/split-browser.conf",
            "file:~/.local/share/split-browser/bookmarks.tsv"
        ],
        "{v}"
    );
    let v = env.json(&["status", "split-browser"], 0);
    assert_eq!(v["differences"].as_array().unwrap().len(), 2, "{v}");
    let v = env.json(&["verify"], 1);
    assert_eq!(v["clean"], false, "{v}");
}
