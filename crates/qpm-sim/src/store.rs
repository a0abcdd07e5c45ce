//! The simulator's state directory.
//!
//! ```text
//! <dir>/
//!   state.json        the system (written atomically after every change)
//!   config.json       simulator settings (caller of the host CLI, ask
//!                     responder, latency)
//!   policy.d/         the simulated dom0's qrexec policy directory
//!   dom0/rpc/         dom0 service executables (e.g. qpm.PolicySubmit)
//!   qubes/<name>/     each qube's files (see qubefs)
//!   bin/              qrexec-client-vm stand-in, on the PATH of services
//!   run/              sockets, pid file, lock
//!   log/              the simulator's log
//! ```
//!
//! Atomic writes: temporary file in the same directory, fsync, rename over
//! the target, fsync of the directory. A `kill -9` at any point leaves the
//! old or the new file, never a mix. (A private helper: the project's
//! `qpm-fs` crate is being written at the same time.)

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::System;
use crate::sim::Persist;

/// Largest state file accepted when loading.
pub const MAX_STATE_LEN: u64 = 256 * 1024 * 1024;

/// Writes `data` to `path` atomically and durably.
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The per-user default state directory: `$XDG_STATE_HOME/qpm/sim`, else
/// `~/.local/state/qpm/sim`.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("qpm/sim"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".local/state/qpm/sim"))
}

/// Simulator settings kept in `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// The qube the host CLI acts as.
    pub caller: String,
    /// How `ask` is answered: `yes`, `no`, or a command (run with `sh -c`).
    pub ask: String,
    /// Added to every call, in milliseconds.
    pub latency_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            caller: "mgmt".into(),
            ask: "no".into(),
            latency_ms: 0,
        }
    }
}

/// A state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The directory (not created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.root
    }
    /// `state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }
    /// `config.json`.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.json")
    }
    /// `policy.d/`.
    pub fn policy_dir(&self) -> PathBuf {
        self.root.join("policy.d")
    }
    /// `dom0/rpc/`.
    pub fn dom0_rpc_dir(&self) -> PathBuf {
        self.root.join("dom0/rpc")
    }
    /// `qubes/`.
    pub fn qubes_dir(&self) -> PathBuf {
        self.root.join("qubes")
    }
    /// `bin/`.
    pub fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }
    /// `run/`.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    /// The qubesd socket.
    pub fn qubesd_socket(&self) -> PathBuf {
        self.run_dir().join("qubesd.sock")
    }
    /// The qrexec router socket.
    pub fn router_socket(&self) -> PathBuf {
        self.run_dir().join("qrexec.sock")
    }
    /// The pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir().join("qpm-sim.pid")
    }
    /// The log file.
    pub fn log_file(&self) -> PathBuf {
        self.root.join("log/qpm-sim.log")
    }

    /// Whether the directory holds a simulator state.
    pub fn is_initialised(&self) -> bool {
        self.state_file().is_file()
    }

    /// Creates the layout, the default system and the base policy if the
    /// directory holds no state yet; returns the loaded system.
    pub fn open_or_init(&self) -> anyhow::Result<System> {
        for d in [
            self.root.clone(),
            self.policy_dir(),
            self.policy_dir().join("include"),
            self.dom0_rpc_dir(),
            self.qubes_dir(),
            self.bin_dir(),
            self.run_dir(),
            self.root.join("log"),
        ] {
            fs::create_dir_all(&d).map_err(|e| anyhow::anyhow!("creating {}: {e}", d.display()))?;
        }
        if !self.config_file().exists() {
            self.save_config(&SimConfig::default())?;
        }
        if !self.is_initialised() {
            let sys = crate::model::fixture::default_system()
                .map_err(|e| anyhow::anyhow!("building the default system: {e}"))?;
            crate::policy::write_base_policy(&self.policy_dir())?;
            crate::defaults::populate_templates(self, &sys)?;
            atomic_write(&self.state_file(), &serde_json::to_vec_pretty(&sys)?, 0o600)?;
        }
        self.load()
    }

    /// Removes temporary files of writes interrupted by a crash.
    pub fn clean_temporaries(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(".state.json.tmp.") || n.starts_with(".config.json.tmp.") {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Loads `state.json`.
    pub fn load(&self) -> anyhow::Result<System> {
        let path = self.state_file();
        let meta = fs::metadata(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if meta.len() > MAX_STATE_LEN {
            anyhow::bail!(
                "{}: state file larger than {MAX_STATE_LEN} bytes",
                path.display()
            );
        }
        let text = fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut sys: System = serde_json::from_slice(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        sys.rebuild();
        Ok(sys)
    }

    /// Reads `config.json` (defaults when absent).
    pub fn config(&self) -> anyhow::Result<SimConfig> {
        match fs::read(self.config_file()) {
            Ok(b) => Ok(serde_json::from_slice(&b)
                .map_err(|e| anyhow::anyhow!("{}: {e}", self.config_file().display()))?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(SimConfig::default()),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", self.config_file().display())),
        }
    }

    /// Writes `config.json`.
    pub fn save_config(&self, c: &SimConfig) -> anyhow::Result<()> {
        atomic_write(&self.config_file(), &serde_json::to_vec_pretty(c)?, 0o600)?;
        Ok(())
    }

    /// A persister writing `state.json`.
    pub fn persister(&self) -> Box<dyn Persist> {
        Box::new(JsonStore {
            path: self.state_file(),
        })
    }
}

struct JsonStore {
    path: PathBuf,
}

impl Persist for JsonStore {
    fn save(&mut self, sys: &System) -> io::Result<()> {
        let data = serde_json::to_vec(sys).map_err(io::Error::other)?;
        atomic_write(&self.path, &data, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        atomic_write(&p, b"one", 0o600).unwrap();
        atomic_write(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
