//! Repositories end to end: the real `qpm` binary against repositories
//! served by a real HTTP server on loopback (a counting server in this
//! file, and Python's `http.server`), directly and through a CONNECT proxy.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt as _;
use serde_json::Value;

use self::server::{Proxy, Server};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// A scratch setup: its own QPM_HOME and working directory.
struct Env {
    dir: tempfile::TempDir,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn qpm(&self, args: &[&str]) -> Out {
        let out = Command::cargo_bin("qpm")
            .unwrap()
            .args(args)
            .current_dir(self.dir.path())
            .env("QPM_HOME", self.path("home"))
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("all_proxy")
            .output()
            .unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and expects exit 0.
    fn ok(&self, args: &[&str]) -> Out {
        let o = self.qpm(args);
        assert_eq!(
            o.code, 0,
            "qpm {args:?}\nstdout: {}\nstderr: {}",
            o.stdout, o.stderr
        );
        o
    }

    /// Runs and expects a failure whose stderr contains `want`.
    fn fails(&self, args: &[&str], want: &str) -> Out {
        let o = self.qpm(args);
        assert_ne!(o.code, 0, "qpm {args:?} should fail\nstdout: {}", o.stdout);
        assert!(
            o.stderr.contains(want),
            "qpm {args:?}: stderr lacks {want:?}:\n{}",
            o.stderr
        );
        o
    }

    fn key(&self, name: &str) -> String {
        self.ok(&["key", "generate", "-o", name]);
        name.to_owned()
    }

    /// Builds repository `repo` from `pkgs` with key `key`.
    fn build(&self, repo: &str, key: &str, pkgs: &[&Path], extra: &[&str]) {
        let k = format!("{key}.key");
        let mut args: Vec<&str> = vec!["repo", "build", repo, "--key", &k];
        let ps: Vec<String> = pkgs.iter().map(|p| p.display().to_string()).collect();
        args.extend(ps.iter().map(String::as_str));
        args.extend(extra);
        self.ok(&args);
    }

    fn update_json(&self) -> (i32, Value) {
        let o = self.qpm(&["--json", "update"]);
        (o.code, o.json())
    }

    fn cached_archives(&self) -> usize {
        std::fs::read_dir(self.path("home/cache/archives"))
            .map(|r| {
                r.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".qpm"))
                    .count()
            })
            .unwrap_or(0)
    }

    fn state_version(&self, repo: &str) -> Option<u64> {
        let o = self.ok(&["--json", "repo", "list"]);
        o.json()["repos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == repo)
            .and_then(|r| r["version"].as_u64())
    }
}

fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("QPM_REQUIRE_SYSTEM_TESTS").is_none(),
            "{tool} is required (QPM_REQUIRE_SYSTEM_TESTS is set)"
        );
        eprintln!("skipped: {tool} not installed");
    }
    found
}

#[test]
fn publish_update_search_info_download_over_http() {
    let env = Env::new();
    let key = env.key("k");
    env.build("pub", &key, &[&examples()], &[]);
    let srv = Server::start(env.path("pub"));
    env.ok(&["repo", "add", "main", &srv.url(), "--key", "k.pub"]);

    let (code, j) = env.update_json();
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["repos"][0]["status"], "updated");
    assert_eq!(j["repos"][0]["version"], 1);
    assert_eq!(j["repos"][0]["packages"], 6);
    assert_eq!(j["repos"][0]["requests"], 2, "timestamp + index");

    let o = env.ok(&["--json", "search"]);
    let names: Vec<_> = o.json()["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}@{}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "dangerzone@2.0.0",
            "securedrop-ws@2.0.0",
            "split-browser@2.0.0"
        ]
    );
    let o = env.ok(&["search", "disposable"]);
    assert!(
        o.stdout.contains("split-browser") && o.stdout.contains("dangerzone"),
        "{}",
        o.stdout
    );
    assert!(!o.stdout.contains("securedrop"), "{}", o.stdout);
    env.fails(&["search", "no-such-thing"], "");

    let o = env.ok(&["info", "split-browser"]);
    assert!(o.stdout.contains("version:     2.0.0"), "{}", o.stdout);
    assert!(o.stdout.contains("1.0.0      main"), "{}", o.stdout);
    let o = env.ok(&["--json", "info", "split-browser@1"]);
    assert_eq!(o.json()["versions"].as_array().unwrap().len(), 1);

    let o = env.ok(&["--json", "download", "split-browser@1.0.0", "-o", "dl"]);
    let j = o.json();
    assert_eq!(j["package_version"], "1.0.0");
    let got = std::fs::read(env.path("dl/split-browser-1.0.0.qpm")).unwrap();
    let served = std::fs::read(env.path("pub/packages/split-browser-1.0.0.qpm")).unwrap();
    assert_eq!(got, served);
    assert_eq!(env.cached_archives(), 1);

    // Nothing changed: one small request, answered 304 without a body.
    let before = srv.stats();
    let (code, j) = env.update_json();
    assert_eq!(code, 0);
    assert_eq!(j["repos"][0]["status"], "unchanged");
    assert_eq!(j["repos"][0]["requests"], 1);
    assert_eq!(j["repos"][0]["bytes"], 0);
    let after = srv.stats();
    assert_eq!(after.requests - before.requests, 1);
    assert_eq!(after.not_modified - before.not_modified, 1);

    // A new version is picked up; the older archives stay resolvable.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("dz");
    copy_tree(&examples().join("dangerzone/2.0.0"), &p);
    let m = std::fs::read_to_string(p.join("qpm.toml")).unwrap();
    std::fs::write(
        p.join("qpm.toml"),
        m.replace("version = \"2.0.0\"", "version = \"2.1.0\""),
    )
    .unwrap();
    env.build("pub", &key, &[&p], &[]);
    let (code, j) = env.update_json();
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["repos"][0]["status"], "updated");
    assert_eq!(j["repos"][0]["from_version"], 1);
    assert_eq!(j["repos"][0]["version"], 2);
    let o = env.ok(&["--json", "info", "dangerzone"]);
    assert_eq!(o.json()["versions"][0]["version"], "2.1.0");
}

#[test]
fn update_through_a_proxy_and_from_a_directory() {
    let env = Env::new();
    let key = env.key("k");
    env.build("pub", &key, &[&examples().join("dangerzone")], &[]);
    let srv = Server::start(env.path("pub"));
    let proxy = Proxy::start();
    env.ok(&["repo", "proxy", &proxy.url()]);
    env.ok(&["repo", "add", "viaproxy", &srv.url(), "--key", "k.pub"]);
    // Plain path and file:// for USB sticks and air-gapped copies.
    env.ok(&["repo", "add", "usb", "pub", "--key", "k.pub"]);
    let (code, j) = env.update_json();
    // Both provide `dangerzone`: the second is refused (squatting).
    assert_eq!(code, 1, "{j}");
    assert_eq!(j["repos"][0]["status"], "updated");
    assert_eq!(j["repos"][1]["status"], "updated");
    assert_eq!(j["repos"][1]["refused"][0]["package"], "dangerzone");
    // http:// goes through the proxy as a forwarded GET, never CONNECT
    // (which the Qubes updates proxy allows to port 443 only).
    assert!(proxy.forwards() >= 1, "the proxy was not used");
    assert_eq!(proxy.tunnels(), 0, "http:// must not be tunnelled");
    assert_eq!(srv.stats().requests, 2);
    env.ok(&["download", "dangerzone", "-o", "dl"]);
    assert!(env.path("dl/dangerzone-2.0.0.qpm").is_file());
    env.ok(&["repo", "proxy", "--none"]);
    env.ok(&["repo", "remove", "usb"]);
    let o = env.ok(&["repo", "list"]);
    assert!(
        o.stdout.contains("viaproxy") && !o.stdout.contains("usb"),
        "{}",
        o.stdout
    );
    let url = format!("file://{}", env.path("pub").display());
    env.ok(&["repo", "add", "usb", &url, "--key", "k.pub"]);
    env.ok(&["repo", "remove", "viaproxy"]);
    let (code, j) = env.update_json();
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["repos"][0]["status"], "updated");
}

#[test]
fn python_http_server_with_if_modified_since() {
    if !require_tool("python3") {
        return;
    }
    let env = Env::new();
    let key = env.key("k");
    env.build("pub", &key, &[&examples()], &[]);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(env.path("pub"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(&mut child);
    let url = format!("http://127.0.0.1:{port}/");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    env.ok(&["repo", "add", "py", &url, "--key", "k.pub"]);
    let (code, j) = env.update_json();
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["repos"][0]["status"], "updated");
    let (code, j) = env.update_json();
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["repos"][0]["status"], "unchanged");
    assert_eq!(j["repos"][0]["requests"], 1);
    assert_eq!(
        j["repos"][0]["bytes"], 0,
        "python answers 304 to If-Modified-Since"
    );
    env.ok(&["download", "securedrop-ws@1.0.0", "-o", "dl"]);
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

#[test]
fn package_build_is_reproducible() {
    let env = Env::new();
    let src = examples().join("securedrop-ws/2.0.0");
    let o = env.ok(&[
        "--json",
        "package",
        "build",
        src.to_str().unwrap(),
        "-o",
        "a",
    ]);
    let j = o.json();
    let copy = env.path("copy");
    copy_tree(&src, &copy);
    let o2 = env.ok(&["--json", "package", "build", "copy", "-o", "b"]);
    assert_eq!(j["sha256"], o2.json()["sha256"]);
    let a = std::fs::read(env.path("a/securedrop-ws-2.0.0.qpm")).unwrap();
    let b = std::fs::read(env.path("b/securedrop-ws-2.0.0.qpm")).unwrap();
    assert_eq!(a, b);
    // An invalid package is refused with the manifest's position.
    std::fs::write(
        copy.join("qpm.toml"),
        "[package]\nname = \"x\"\nversion = \"1\"\n",
    )
    .unwrap();
    env.fails(&["package", "build", "copy"], "qpm.toml");
}

// ---------------------------------------------------------------- bad input

#[test]
fn bad_signature_is_refused_and_nothing_is_stored() {
    let env = Env::new();
    let key = env.key("k");
    env.build("pub", &key, &[&examples().join("dangerzone")], &[]);
    let srv = Server::start(env.path("pub"));
    env.ok(&["repo", "add", "main", &srv.url(), "--key", "k.pub"]);
    // Raise the version in the signed comment: the signature breaks.
    let ts = env.path("pub/timestamp.minisig");
    let text = std::fs::read_to_string(&ts).unwrap();
    std::fs::write(&ts, text.replace("version=1 ", "version=9 ")).unwrap();
    let o = env.fails(&["update"], "bad signature");
    assert_eq!(o.code, 1);
    assert_eq!(env.state_version("main"), None);
    env.fails(&["download", "dangerzone", "-o", "dl"], "not found");
    assert!(!env.path("dl").exists());
}

#[test]
fn wrong_key_is_refused() {
    let env = Env::new();
    let key = env.key("k");
    env.key("other");
    env.build("pub", &key, &[&examples().join("dangerzone")], &[]);
    let srv = Server::start(env.path("pub"));
    env.ok(&["repo", "add", "main", &srv.url(), "--key", "other.pub"]);
    env.fails(&["update"], "trusted key");
    assert_eq!(env.state_version("main"), None);
}

#[test]
fn tampered_archive_is_refused_and_not_cached() {
    let env = Env::new();
    let key = env.key("k");
    env.build("pub", &key, &[&examples().join("dangerzone")], &[]);
    let srv = Server::start(env.path("pub"));
    env.ok(&["repo", "add", "main", &srv.url(), "--key", "k.pub"]);
    env.ok(&["update"]);
    let a = env.path("pub/packages/dangerzone-2.0.0.qpm");
    let mut b = std::fs::read(&a).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&a, b).unwrap();
    env.fails(&["download", "dangerzone", "-o", "dl"], "SHA-256");
    assert_eq!(env.cached_archives(), 0);
    assert!(!env.path("dl/dangerzone-2.0.0.qpm").exists());
    // Swapped for another (validly built) archive of the same size or not: refused too.
    std::fs::copy(env.path("pub/packages/dangerzone-1.0.0.qpm"), &a).unwrap();
    let o = env.qpm(&["download", "dangerzone@2.0.0", "-o", "dl"]);
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("SHA-256") || o.stderr.contains("truncated"),
        "{}",
        o.stderr
    );
    assert_eq!(env.cached_archives(), 0);
}

#[test]
fn truncated_download_is_refused() {
    let env = Env::new();
    let key = env.key("k");
    env.build("pub", &key, &[&examples().join("securedrop-ws")], &[]);
    let srv = Server::start(env.path("pub"));
    env.ok(&["repo", "add", "main", &srv.url(), "--key", "k.pub"]);
    env.ok(&["update"]);
    // The server announces the full length and closes half-way.
    srv.truncate("packages/securedrop-ws-2.0.0.qpm", 300);
    env.fails(&["download", "securedrop-ws", "-o", "dl"], "truncated");
    assert_eq!(env.cached_archives(), 0);
    assert!(!env.path("dl").join("securedrop-ws-2.0.0.qpm").exists());
}

#[test]
fn replayed_older_index_is_refused() {
    let env = Env::new();
    let key = env.key("k");
    env.build("pub", &key, &[&examples().join("dangerzone/1.0.0")], &[]);
    // Keep the version-1 metadata, as an attacker or a stale mirror would.
    let old_ts = std::fs::read(env.path("pub/timestamp.minisig")).unwrap();
    let srv = Server::start(env.path("pub"));
    env.ok(&["repo", "add", "main", &srv.url(), "--key", "k.pub"]);
    env.ok(&["update"]);
    env.build("pub", &key, &[&examples().join("dangerzone/2.0.0")], &[]);
    env.ok(&["update"]);
    assert_eq!(env.state_version("main"), Some(2));
    std::fs::write(env.path("pub/timestamp.minisig"), &old_ts).unwrap();
    let o = env.fails(&["update"], "rollback");
    assert!(
        o.stderr.contains("version 1, older than version 2"),
        "{}",
        o.stderr
    );
    assert_eq!(env.state_version("main"), Some(2));
    let o = env.ok(&["--json", "info", "dangerzone"]);
    assert_eq!(o.json()["versions"][0]["version"], "2.0.0");
}

#[test]
fn expired_index_is_refused() {
    let env = Env::new();
    let key = env.key("k");
    env.build(
        "pub",
        &key,
        &[&examples().join("dangerzone")],
        &["--expires", "2001-01-01T00:00:00Z"],
    );
    let srv = Server::start(env.path("pub"));
    env.ok(&["repo", "add", "main", &srv.url(), "--key", "k.pub"]);
    env.fails(&["update"], "expired at 2001-01-01T00:00:00Z");
    assert_eq!(env.state_version("main"), None);
    env.fails(&["download", "dangerzone", "-o", "dl"], "not found");
}

#[test]
fn squatting_is_refused_unless_pinned() {
    let env = Env::new();
    let ka = env.key("ka");
    let kb = env.key("kb");
    env.build("a", &ka, &[&examples()], &[]);
    // Repository b offers its own `split-browser` and a new name.
    let d = tempfile::tempdir().unwrap();
    let evil = d.path().join("split-browser");
    copy_tree(&examples().join("split-browser/2.0.0"), &evil);
    let m = std::fs::read_to_string(evil.join("qpm.toml")).unwrap();
    std::fs::write(
        evil.join("qpm.toml"),
        m.replace("version = \"2.0.0\"", "version = \"9.0.0\""),
    )
    .unwrap();
    env.build("b", &kb, &[&evil], &[]);
    env.ok(&["repo", "add", "a", "a", "--key", "ka.pub"]);
    env.ok(&["update"]);
    env.ok(&["repo", "add", "b", "b", "--key", "kb.pub"]);
    let o = env.fails(
        &["update"],
        "refused package `split-browser`: repository `a` already provides it",
    );
    assert_eq!(o.code, 1);
    // Resolution stays with `a`, even though `b` offers a higher version.
    env.ok(&["download", "split-browser", "-o", "dl"]);
    assert!(env.path("dl/split-browser-2.0.0.qpm").is_file());
    assert!(!env.path("dl/split-browser-9.0.0.qpm").exists());
    let o = env.ok(&["info", "split-browser"]);
    assert!(o.stdout.contains("9.0.0      b  (refused"), "{}", o.stdout);
    // The user pins the name to `b` on purpose.
    env.ok(&["repo", "pin", "split-browser", "b"]);
    env.ok(&["update"]);
    env.ok(&["download", "split-browser", "-o", "dl"]);
    assert!(env.path("dl/split-browser-9.0.0.qpm").is_file());
}

#[test]
fn key_rotation_is_followed_and_forged_rotation_refused() {
    let env = Env::new();
    let k1 = env.key("k1");
    env.key("k2");
    env.key("k3");
    env.build("pub", &k1, &[&examples().join("dangerzone/1.0.0")], &[]);
    let srv = Server::start(env.path("pub"));
    env.ok(&["repo", "add", "main", &srv.url(), "--key", "k1.pub"]);
    env.ok(&["update"]);
    // k1 -> k2 -> k3, the client jumps both steps at once.
    env.ok(&[
        "repo",
        "rotate-key",
        "pub",
        "--old",
        "k1.key",
        "--new",
        "k2.pub",
    ]);
    env.ok(&[
        "repo",
        "rotate-key",
        "pub",
        "--old",
        "k2.key",
        "--new",
        "k3.pub",
    ]);
    env.build("pub", "k3", &[&examples().join("dangerzone/2.0.0")], &[]);
    let (code, j) = env.update_json();
    assert_eq!(code, 0, "{j}");
    let k3_id = std::fs::read_to_string(env.path("k3.pub")).unwrap();
    let k3_id = k3_id.split_whitespace().nth(5).unwrap().to_owned();
    assert_eq!(j["repos"][0]["key_rotated_to"], k3_id.as_str());
    let o = env.ok(&["--json", "repo", "list"]);
    assert_eq!(o.json()["repos"][0]["current_key"], k3_id.as_str());

    // A repository signed by a key nobody rotated to is refused.
    let env2 = Env::new();
    env2.key("good");
    env2.key("evil");
    env2.key("mallory");
    env2.build("pub", "good", &[&examples().join("dangerzone/1.0.0")], &[]);
    let srv2 = Server::start(env2.path("pub"));
    env2.ok(&["repo", "add", "main", &srv2.url(), "--key", "good.pub"]);
    env2.ok(&["update"]);
    // A rotation to `evil` signed by `mallory`, a key the client never trusted.
    env2.ok(&[
        "repo",
        "rotate-key",
        "pub",
        "--old",
        "mallory.key",
        "--new",
        "evil.pub",
    ]);
    env2.build("pub", "evil", &[&examples().join("dangerzone/2.0.0")], &[]);
    env2.fails(&["update"], "rotation");
    assert_eq!(env2.state_version("main"), Some(1));
}

// ---------------------------------------------------------------- performance

/// `qpm update` of a 1,000-package repository: the first fetch, then the
/// no-change case, which must cost one small request.
#[test]
fn update_with_a_thousand_packages_costs_one_request_when_unchanged() {
    let env = Env::new();
    let key = env.key("k");
    let src = env.path("src");
    for i in 0..1000 {
        let d = src.join(format!("app-{i:04}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("qpm.toml"),
            format!(
                "[package]\nname = \"app-{i:04}\"\nversion = \"1.{}.0\"\nsummary = \"Test application number {i}, with a summary of usual length\"\n\n[qubes.app{i:04}]\nclass = \"AppVM\"\ntemplate = \"debian-13-xfce\"\nlabel = \"blue\"\n",
                i % 7
            ),
        )
        .unwrap();
    }
    let t = std::time::Instant::now();
    env.build("pub", &key, &[&src], &[]);
    let build_time = t.elapsed();
    let srv = Server::start(env.path("pub"));
    env.ok(&["repo", "add", "big", &srv.url(), "--key", "k.pub"]);

    let s0 = srv.stats();
    let t = std::time::Instant::now();
    let (code, j) = env.update_json();
    let first = t.elapsed();
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["repos"][0]["packages"], 1000);
    let s1 = srv.stats();

    let mut times = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let (code, j) = env.update_json();
        times.push(t.elapsed());
        assert_eq!(code, 0);
        assert_eq!(j["repos"][0]["status"], "unchanged");
    }
    let s2 = srv.stats();
    let per_update_requests = (s2.requests - s1.requests) / 5;
    let per_update_bytes = (s2.bytes_out - s1.bytes_out) / 5;
    let per_update_bytes_in = (s2.bytes_in - s1.bytes_in) / 5;
    assert!(
        per_update_bytes_in < 512,
        "a small request: {per_update_bytes_in} bytes"
    );
    assert_eq!(per_update_requests, 1, "one request per repository");
    assert!(
        per_update_bytes < 512,
        "a small request: {per_update_bytes} bytes"
    );
    times.sort();
    eprintln!(
        "repo-bench: build 1000 packages {:.2?}; first update {} requests {} bytes in {:.2?}; \
         no-change update {} request: {} bytes sent, {} bytes received (headers included), median {:.2?}",
        build_time,
        s1.requests - s0.requests,
        s1.bytes_out - s0.bytes_out,
        first,
        per_update_requests,
        per_update_bytes_in,
        per_update_bytes,
        times[2]
    );
}

// ---------------------------------------------------------------- packaging

/// The directory holding `qpm`, `qpm-agent` and `qpm-dom0`, building the
/// last two (this test binary's package only builds `qpm`).
fn binaries() -> PathBuf {
    let qpm = PathBuf::from(env!("CARGO_BIN_EXE_qpm"));
    let dir = qpm.parent().unwrap().to_owned();
    // Always ask cargo: it rebuilds only what is stale.
    {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut c = Command::new(cargo);
        c.args(["build", "-q", "-p", "qpm-agent", "-p", "qpm-dom0"])
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
        if profile == "release" {
            c.arg("--release");
        }
        let st = c.status().unwrap();
        assert!(st.success(), "building qpm-agent and qpm-dom0 failed");
    }
    dir
}

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn packages_build_with_the_right_contents_and_the_deb_installs() {
    if !require_tool("dpkg-deb") || !require_tool("rpmbuild") {
        return;
    }
    let bin = binaries();
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/build.sh");
    let o = Command::new("bash")
        .arg(&script)
        .args(["--fast", "--bindir"])
        .arg(&bin)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let version = env!("CARGO_PKG_VERSION");
    let p = |n: &str| out.path().join(n).to_string_lossy().into_owned();
    let arch = run("dpkg", &["--print-architecture"]).trim().to_owned();
    let deb_qpm = p(&format!("qpm_{version}_{arch}.deb"));
    let deb_agent = p(&format!("qpm-agent_{version}_{arch}.deb"));

    // deb contents: path -> mode, owner.
    let listing = |deb: &str| -> Vec<(String, String)> {
        run("dpkg-deb", &["-c", deb])
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(f[1], "root/root", "{l}");
                (f[5].trim_start_matches('.').to_owned(), f[0].to_owned())
            })
            .filter(|(path, mode)| !mode.starts_with('d') && !path.is_empty())
            .collect()
    };
    let agent = listing(&deb_agent);
    assert_eq!(
        agent,
        [
            (
                "/etc/qubes/rpc-config/qpm.SyncConfig".to_owned(),
                "-rw-r--r--".to_owned()
            ),
            (
                "/etc/qubes-rpc/qpm.SyncConfig".to_owned(),
                "-rwxr-xr-x".to_owned()
            ),
            ("/usr/bin/qpm-agent".to_owned(), "-rwxr-xr-x".to_owned()),
        ]
    );
    let cli = listing(&deb_qpm);
    let paths: Vec<&str> = cli.iter().map(|(p, _)| p.as_str()).collect();
    for want in [
        "/usr/bin/qpm",
        "/usr/share/man/man1/qpm.1.gz",
        "/usr/share/bash-completion/completions/qpm",
        "/usr/share/zsh/vendor-completions/_qpm",
        "/usr/share/fish/vendor_completions.d/qpm.fish",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    for (path, mode) in &cli {
        let want = if path == "/usr/bin/qpm" {
            "-rwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        assert_eq!(mode, want, "{path}");
    }
    let control = run("dpkg-deb", &["-f", &deb_agent]);
    assert!(
        control.contains("Package: qpm-agent") && control.contains(&format!("Version: {version}")),
        "{control}"
    );
    let extract = tempfile::tempdir().unwrap();
    run(
        "dpkg-deb",
        &["-x", &deb_agent, extract.path().to_str().unwrap()],
    );
    let svc = std::fs::read_to_string(extract.path().join("etc/qubes-rpc/qpm.SyncConfig")).unwrap();
    assert!(
        svc.starts_with("#!/bin/sh\n") && svc.contains("exec /usr/bin/qpm-agent serve --root /\n"),
        "{svc}"
    );
    let cfg = std::fs::read_to_string(extract.path().join("etc/qubes/rpc-config/qpm.SyncConfig"))
        .unwrap();
    assert!(cfg.lines().any(|l| l == "wait-for-session=true"), "{cfg}");

    // rpm contents.
    let rpm_list = |name: &str| -> Vec<String> {
        let f = p(&format!("{name}-{version}-1.x86_64.rpm"));
        let mut v: Vec<String> = run(
            "rpm",
            &[
                "-qp",
                "--qf",
                "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILENAMES}\n]",
                &f,
            ],
        )
        .lines()
        .map(str::to_owned)
        .collect();
        v.sort();
        v
    };
    assert_eq!(
        rpm_list("qpm-dom0"),
        [
            "-rwxr-xr-x root /etc/qubes-rpc/qpm.PolicyGet",
            "-rwxr-xr-x root /etc/qubes-rpc/qpm.PolicyRemove",
            "-rwxr-xr-x root /etc/qubes-rpc/qpm.PolicySubmit",
            "-rwxr-xr-x root /usr/bin/qpm-dom0",
        ]
    );
    assert_eq!(
        rpm_list("qpm-agent"),
        [
            "-rw-r--r-- root /etc/qubes/rpc-config/qpm.SyncConfig",
            "-rwxr-xr-x root /etc/qubes-rpc/qpm.SyncConfig",
            "-rwxr-xr-x root /usr/bin/qpm-agent",
        ]
    );
    let rq = rpm_list("qpm");
    assert!(
        rq.contains(&"-rwxr-xr-x root /usr/bin/qpm".to_owned()),
        "{rq:?}"
    );
    assert!(
        rq.contains(&"-rw-r--r-- root /usr/share/zsh/site-functions/_qpm".to_owned()),
        "{rq:?}"
    );
    assert!(
        rq.contains(&"-rw-r--r-- root /usr/share/man/man1/qpm.1.gz".to_owned()),
        "{rq:?}"
    );

    // Install the debs on this machine, run them, remove them.
    let is_root = run("id", &["-u"]).trim() == "0";
    if !is_root || !require_tool("dpkg") {
        assert!(
            std::env::var_os("QPM_REQUIRE_SYSTEM_TESTS").is_none(),
            "installing the deb needs root (QPM_REQUIRE_SYSTEM_TESTS is set)"
        );
        eprintln!("skipped: deb installation needs root");
        return;
    }
    let already = Command::new("dpkg")
        .args(["-s", "qpm"])
        .output()
        .unwrap()
        .status
        .success()
        || Path::new("/usr/bin/qpm").exists();
    if already {
        panic!(
            "/usr/bin/qpm or a qpm package is already installed on this machine; refusing to replace it"
        );
    }
    run("dpkg", &["-i", &deb_qpm, &deb_agent]);
    let result = std::panic::catch_unwind(|| {
        let v = run("/usr/bin/qpm", &["--version"]);
        assert_eq!(v.trim(), format!("qpm {version}"));
        let help = run("/usr/bin/qpm-agent", &["--help"]);
        assert!(help.contains("serve"), "{help}");
        let svc = std::fs::metadata("/etc/qubes-rpc/qpm.SyncConfig").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(svc.permissions().mode() & 0o777, 0o755);
        assert!(Path::new("/usr/share/man/man1/qpm.1.gz").is_file());
        let st = run("dpkg", &["-s", "qpm-agent"]);
        assert!(st.contains("Status: install ok installed"), "{st}");
    });
    run("dpkg", &["--purge", "qpm", "qpm-agent"]);
    assert!(!Path::new("/usr/bin/qpm").exists());
    assert!(!Path::new("/etc/qubes-rpc/qpm.SyncConfig").exists());
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

mod server {
    //! A small HTTP/1.1 file server with ETags and counters, and a CONNECT
    //! proxy like the Qubes updates proxy: both on loopback, only for these tests.

    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash as _, Hasher as _};
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Default, Clone, Copy)]
    pub(crate) struct Stats {
        pub(crate) requests: u64,
        pub(crate) not_modified: u64,
        /// Bytes written to clients, headers included.
        pub(crate) bytes_out: u64,
        /// Request bytes received (request line and headers).
        pub(crate) bytes_in: u64,
    }

    struct Shared {
        root: PathBuf,
        stats: Mutex<Stats>,
        truncate: Mutex<Option<(String, usize)>>,
        stop: AtomicBool,
    }

    pub(crate) struct Server {
        port: u16,
        shared: Arc<Shared>,
    }

    fn read_head(r: &mut BufReader<TcpStream>) -> Option<Vec<String>> {
        let mut lines = Vec::new();
        let mut total = 0;
        loop {
            let mut l = String::new();
            let n = r.read_line(&mut l).ok()?;
            if n == 0 {
                return None;
            }
            total += n;
            if total > 16 * 1024 {
                return None;
            }
            let l = l.trim_end().to_owned();
            if l.is_empty() {
                return Some(lines);
            }
            lines.push(l);
        }
    }

    impl Server {
        pub(crate) fn start(root: PathBuf) -> Self {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            let shared = Arc::new(Shared {
                root,
                stats: Mutex::default(),
                truncate: Mutex::default(),
                stop: AtomicBool::new(false),
            });
            let s = shared.clone();
            std::thread::spawn(move || {
                for c in l.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(c) = c else { continue };
                    let s = s.clone();
                    std::thread::spawn(move || serve(c, &s));
                }
            });
            Self { port, shared }
        }

        pub(crate) fn url(&self) -> String {
            format!("http://127.0.0.1:{}/", self.port)
        }

        pub(crate) fn stats(&self) -> Stats {
            *self.shared.stats.lock().unwrap()
        }

        /// Serves only the first `keep` bytes of `path` (announcing all).
        pub(crate) fn truncate(&self, path: &str, keep: usize) {
            *self.shared.truncate.lock().unwrap() = Some((path.to_owned(), keep));
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.shared.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(("127.0.0.1", self.port));
        }
    }

    fn serve(c: TcpStream, s: &Shared) {
        let mut w = c.try_clone().unwrap();
        let mut r = BufReader::new(c);
        while let Some(head) = read_head(&mut r) {
            let mut parts = head[0].split(' ');
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let inm = head.iter().find_map(|h| {
                h.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("if-none-match"))
                    .map(|(_, v)| v.trim().to_owned())
            });
            let rel = target.trim_start_matches('/').to_owned();
            {
                let mut st = s.stats.lock().unwrap();
                st.requests += 1;
                st.bytes_in += head.iter().map(|l| l.len() as u64 + 2).sum::<u64>() + 2;
            }
            let body = if method == "GET" && !rel.split('/').any(|c| c == "..") {
                std::fs::read(s.root.join(&rel)).ok()
            } else {
                None
            };
            let (head_out, body_out, close): (String, Vec<u8>, bool) = match body {
                None => (
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
                    vec![],
                    false,
                ),
                Some(b) => {
                    let mut h = DefaultHasher::new();
                    b.hash(&mut h);
                    let etag = format!("\"{:016x}\"", h.finish());
                    if inm.as_deref() == Some(etag.as_str()) {
                        s.stats.lock().unwrap().not_modified += 1;
                        (
                            format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\n\r\n"),
                            vec![],
                            false,
                        )
                    } else {
                        let cut = s.truncate.lock().unwrap().clone();
                        let (body, close) = match cut {
                            Some((p, keep)) if p == rel => (b[..keep.min(b.len())].to_vec(), true),
                            _ => (b.clone(), false),
                        };
                        (
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\nContent-Type: application/octet-stream\r\n\r\n",
                                b.len()
                            ),
                            body,
                            close,
                        )
                    }
                }
            };
            s.stats.lock().unwrap().bytes_out += (head_out.len() + body_out.len()) as u64;
            if w.write_all(head_out.as_bytes()).is_err() || w.write_all(&body_out).is_err() {
                return;
            }
            let _ = w.flush();
            if close {
                let _ = w.shutdown(Shutdown::Both);
                return;
            }
        }
    }

    /// A proxy that behaves like the Qubes updates proxy (tinyproxy with
    /// `ConnectPort 443`): `CONNECT` only to port 443, plain `http://` by
    /// absolute-form `GET`, forwarded to loopback only. Counts both.
    pub(crate) struct Proxy {
        port: u16,
        tunnels: Arc<AtomicU64>,
        forwards: Arc<AtomicU64>,
    }

    impl Proxy {
        pub(crate) fn start() -> Self {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            let tunnels = Arc::new(AtomicU64::new(0));
            let forwards = Arc::new(AtomicU64::new(0));
            let (t, f) = (tunnels.clone(), forwards.clone());
            std::thread::spawn(move || {
                for c in l.incoming() {
                    let Ok(c) = c else { continue };
                    let (t, f) = (t.clone(), f.clone());
                    std::thread::spawn(move || tunnel(c, &t, &f));
                }
            });
            Self {
                port,
                tunnels,
                forwards,
            }
        }

        pub(crate) fn url(&self) -> String {
            format!("http://127.0.0.1:{}/", self.port)
        }

        pub(crate) fn tunnels(&self) -> u64 {
            self.tunnels.load(Ordering::SeqCst)
        }

        pub(crate) fn forwards(&self) -> u64 {
            self.forwards.load(Ordering::SeqCst)
        }
    }

    /// Forwards an absolute-form `GET` to its loopback origin, the way a
    /// proxy does: origin-form request upstream, the response back.
    fn forward(head: &[String], mut w: TcpStream, count: &AtomicU64) {
        let mut parts = head[0].split(' ');
        let target = parts.nth(1).unwrap_or("");
        let Some(rest) = target.strip_prefix("http://") else {
            let _ = w.write_all(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            return;
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        if !authority.starts_with("127.0.0.1:") {
            let _ = w.write_all(b"HTTP/1.0 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
            return;
        }
        let Ok(mut up) = TcpStream::connect(authority) else {
            let _ = w.write_all(b"HTTP/1.0 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
            return;
        };
        count.fetch_add(1, Ordering::SeqCst);
        let mut req = format!("GET {path} HTTP/1.1\r\n");
        for h in &head[1..] {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        up.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(up);
        let Some(resp) = read_head(&mut r) else {
            return;
        };
        let len: usize = resp
            .iter()
            .find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        let got = r.read_exact(&mut body).is_ok();
        let mut out = resp.join("\r\n").replacen("HTTP/1.1", "HTTP/1.0", 1);
        out.push_str("\r\n\r\n");
        let _ = w.write_all(out.as_bytes());
        if got {
            let _ = w.write_all(&body);
        }
        let _ = w.shutdown(Shutdown::Both);
    }

    fn tunnel(c: TcpStream, count: &AtomicU64, forwards: &AtomicU64) {
        let mut w = c.try_clone().unwrap();
        let mut r = BufReader::new(c);
        let Some(head) = read_head(&mut r) else {
            return;
        };
        let mut parts = head[0].split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if method == "GET" {
            return forward(&head, w, forwards);
        }
        // Like the updates proxy's `ConnectPort 443`: CONNECT to any other
        // port is refused.
        let ok_target = target.ends_with(":443");
        if method != "CONNECT" || !ok_target {
            let _ = w.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
            return;
        }
        let target = target.replace("localhost:", "127.0.0.1:");
        let Ok(up) = TcpStream::connect(target) else {
            let _ = w.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
            return;
        };
        count.fetch_add(1, Ordering::SeqCst);
        let _ = w.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
        let mut up_w = up.try_clone().unwrap();
        let mut up_r = up;
        // Bytes the client sent after the CONNECT head are still buffered.
        let buffered = r.buffer().to_vec();
        let _ = up_w.write_all(&buffered);
        let mut client_r = r.into_inner();
        let a = std::thread::spawn(move || {
            let _ = std::io::copy(&mut client_r, &mut up_w);
            let _ = up_w.shutdown(Shutdown::Write);
        });
        let mut buf = [0u8; 16 * 1024];
        loop {
            match up_r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = w.shutdown(Shutdown::Write);
        let _ = a.join();
    }
}
