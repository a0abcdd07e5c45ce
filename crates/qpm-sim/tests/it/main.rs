//! Integration tests of the `qpm-sim` binary.

mod badinput;
mod compat;
mod crash;
mod policy;
mod restart;
mod router;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `qpm-sim serve` on a temporary state directory.
pub(crate) struct Served {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) child: Option<Child>,
}

pub(crate) fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_qpm-sim"))
}

impl Served {
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Self { dir, child: None };
        s.spawn();
        s
    }

    pub(crate) fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    /// Starts `qpm-sim serve ARGS...` on this state directory.
    pub(crate) fn spawn_with(&mut self, args: &[&str]) {
        let child = Command::new(bin())
            .arg("--sim")
            .arg(self.dir.path())
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if UnixStream::connect(self.qubesd()).is_ok() && self.router().exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("simulator did not start");
    }

    pub(crate) fn qubesd(&self) -> PathBuf {
        self.dir.path().join("run/qubesd.sock")
    }

    pub(crate) fn router(&self) -> PathBuf {
        self.dir.path().join("run/qrexec.sock")
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One raw call: everything received before EOF.
pub(crate) fn raw(sock: &Path, req: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(req);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// `admin.vm.List` as dom0 works (the server is alive and not wedged).
pub(crate) fn alive(sock: &Path) -> bool {
    raw(sock, b"admin.vm.List+ dom0 name dom0\0").starts_with(b"0\0dom0 class=AdminVM")
}
