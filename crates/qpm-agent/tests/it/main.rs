//! Integration tests driving the real `qpm-agent` binary over pipes.

mod apply;
mod gui;
mod malicious;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use qpm_sync::proto::{self, Entry, Kind, Manifest, Outcome, Tree, frame};

pub(crate) const AGENT: &str = env!("CARGO_BIN_EXE_qpm-agent");

/// A qube's filesystem in a temp dir: `root/`, `root/home/user`, state and
/// a sibling `outside/` that must never change.
pub(crate) struct Qube {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
    pub(crate) home: PathBuf,
    pub(crate) state: PathBuf,
    pub(crate) outside: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) envs: Vec<(String, String)>,
}

impl Qube {
    pub(crate) fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let home = root.join("home/user");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("precious"), b"do not touch\n").unwrap();
        let state = home.join(".local/state/qpm-agent");
        std::fs::create_dir_all(&state).unwrap();
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, config).unwrap();
        Self {
            _dir: dir,
            root,
            home,
            state,
            outside,
            config: config_path,
            envs: vec![("QREXEC_REMOTE_DOMAIN".into(), "cfg".into())],
        }
    }

    pub(crate) fn auto() -> Self {
        Self::new("auto_apply = [\"~/\"]\ngui = \"never\"\n")
    }

    pub(crate) fn review() -> Self {
        Self::new("gui = \"never\"\n")
    }

    pub(crate) fn cmd(&self, sub: &str) -> Command {
        let mut c = Command::new(AGENT);
        c.arg(sub)
            .arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--config")
            .arg(&self.config)
            .env_remove("DISPLAY")
            .env_remove("QPM_AGENT_CRASH_AT")
            .env_remove("QPM_AGENT_TEST_FREE_SPACE");
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c
    }

    /// Sends raw bytes, closes stdin, returns (exit code, stdout).
    pub(crate) fn raw(&self, bytes: &[u8]) -> (i32, Vec<u8>) {
        let mut child = self
            .cmd("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = bytes.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        (out.status.code().unwrap_or(-1), out.stdout)
    }

    /// Full exchange like a sender. Returns (exit code, outcome, whether
    /// data was asked for).
    pub(crate) fn push(&self, files: &[(&str, &[u8])]) -> (i32, Outcome, bool) {
        self.push_entries(&manifest(files), files)
    }

    pub(crate) fn push_entries(
        &self,
        m: &Manifest,
        files: &[(&str, &[u8])],
    ) -> (i32, Outcome, bool) {
        let mut child = self
            .cmd("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        proto::write_frame(&mut stdin, frame::MANIFEST, &m.encode()).unwrap();
        stdin.flush().unwrap();
        let (t, len) = proto::read_header(&mut stdout).unwrap().expect("reply");
        let mut asked = false;
        let res = if t == frame::RESULT {
            drop(stdin);
            proto::read_payload(&mut stdout, len, "r", 1 << 20).unwrap()
        } else {
            assert_eq!(t, frame::NEED);
            asked = true;
            let need = proto::decode_need(
                &proto::read_payload(&mut stdout, len, "n", 1 << 20).unwrap(),
                m.entries.len() as u32,
            )
            .unwrap();
            for i in need {
                let mut p = i.to_be_bytes().to_vec();
                p.extend_from_slice(files[i as usize].1);
                let _ = proto::write_frame(&mut stdin, frame::DATA, &p);
            }
            let _ = proto::write_frame(&mut stdin, frame::END, &[]);
            drop(stdin);
            let mut rest = Vec::new();
            stdout.read_to_end(&mut rest).unwrap();
            let mut r: &[u8] = &rest;
            match proto::read_frame(&mut r, frame::RESULT, "r", 1 << 20) {
                Ok(b) => b,
                Err(_) => Outcome {
                    code: proto::Code::Failed,
                    written: 0,
                    deleted: 0,
                    conflicts: 0,
                    message: "killed".into(),
                }
                .encode(),
            }
        };
        let code = child.wait().unwrap().code().unwrap_or(-1);
        (code, Outcome::decode(&res).unwrap(), asked)
    }

    pub(crate) fn review_answer(&self, answer: &str) -> (i32, String) {
        let mut child = self
            .cmd("review")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(answer.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}\n--- stderr ---\n{err}",
                String::from_utf8_lossy(&out.stdout)
            ),
        )
    }

    pub(crate) fn read_home(&self, p: &str) -> Option<Vec<u8>> {
        std::fs::read(self.home.join(p)).ok()
    }

    /// Everything under root and outside except the agent's state dir.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, String> {
        let mut out = snapshot(&self.root, &self.state);
        out.extend(
            snapshot(&self.outside, &self.state)
                .into_iter()
                .map(|(k, v)| (format!("outside:{k}"), v)),
        );
        out
    }

    /// Names in the state's pending dir.
    pub(crate) fn pending(&self) -> Vec<String> {
        std::fs::read_dir(self.state.join("pending"))
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub(crate) fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d == skip {
            continue;
        }
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let v = if m.file_type().is_symlink() {
                format!("link:{}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("dir:{:o}:{}", m.mode() & 0o7777, m.uid())
            } else if m.is_file() {
                format!(
                    "file:{:o}:{}:{}",
                    m.mode() & 0o7777,
                    m.ino(),
                    blake3::hash(&std::fs::read(&p).unwrap()).to_hex()
                )
            } else {
                format!("other:{:o}", m.mode())
            };
            out.insert(rel, v);
        }
    }
    out
}

pub(crate) fn entry(path: &str, content: &[u8]) -> Entry {
    Entry {
        tree: Tree::Home,
        flags: 0,
        mode: 0o644,
        uid: 0,
        gid: 0,
        size: content.len() as u64,
        hash: *blake3::hash(content).as_bytes(),
        path: qpm_fs::RelPath::new(path).unwrap(),
    }
}

pub(crate) fn manifest(files: &[(&str, &[u8])]) -> Manifest {
    Manifest {
        kind: Kind::Sync,
        source: "cfg".into(),
        entries: files.iter().map(|(p, c)| entry(p, c)).collect(),
    }
}
