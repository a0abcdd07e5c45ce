//! The package policy store: one file per package in dom0's policy
//! directory, written atomically, under an exclusive lock, only when the
//! scope rules hold.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use qpm_policy::{Policy, System};

use crate::rules::{self, Config, Verdict, Violation};

/// Prefix of every package policy file; the package name and `.policy`
/// follow. `40` sorts after the user's `30-user.policy` (which therefore
/// wins) and before the defaults (`90-*`).
pub const FILE_PREFIX: &str = "40-qpm-";
/// Suffix given to a stored policy that no longer holds: qrexec ignores it.
pub const DISABLED_SUFFIX: &str = ".disabled";

/// Why a store operation failed (not a rejection: see [`Verdict`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The package name is not `[0-9a-z_-]+` (at most 64 bytes).
    #[error("invalid package name {0:?}")]
    BadName(String),
    /// No policy is stored for this package.
    #[error("no policy is installed for package `{0}`")]
    NotFound(String),
    /// The policy directory would not load with this change.
    #[error("the policy directory would not load: {0}")]
    Invalid(String),
    /// A filesystem error.
    #[error("{}: {source}", path.display())]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a submit or remove did to the other stored policies.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Recheck {
    /// Packages whose stored policy no longer holds and was disabled.
    pub disabled: Vec<(String, Vec<Violation>)>,
}

/// A package policy directory (dom0's `/etc/qubes/policy.d`).
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Whether `name` may name a package policy file.
pub fn valid_package(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Store {
    /// The store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, package: &str) -> Result<PathBuf, StoreError> {
        if !valid_package(package) {
            return Err(StoreError::BadName(package.to_owned()));
        }
        Ok(self.dir.join(format!("{FILE_PREFIX}{package}.policy")))
    }

    /// Holds the directory's exclusive lock until dropped.
    fn lock(&self) -> Result<File, StoreError> {
        let path = self.dir.join(".qpm-gatekeeper.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.lock().map_err(io_err(&path))?;
        Ok(f)
    }

    /// The installed policy of `package`.
    pub fn get(&self, package: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(package)?;
        let mut buf = Vec::new();
        match File::open(&path) {
            Ok(f) => {
                f.take(rules::MAX_FILE_BYTES as u64 + 1)
                    .read_to_end(&mut buf)
                    .map_err(io_err(&path))?;
                Ok(buf)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(package.to_owned()))
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Packages with a stored (enabled) policy.
    pub fn packages(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let e = e.map_err(io_err(&self.dir))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(p) = name
                .strip_prefix(FILE_PREFIX)
                .and_then(|n| n.strip_suffix(".policy"))
                && valid_package(p)
            {
                out.push(p.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Checks and installs `policy` for `package`. Nothing is written
    /// unless every rule holds and the whole directory still loads.
    pub fn submit(
        &self,
        package: &str,
        policy: &[u8],
        system: &System,
        config: &Config,
    ) -> Result<(Verdict, Recheck), StoreError> {
        let path = self.path(package)?;
        let _lock = self.lock()?;
        let verdict = rules::check(package, policy, system, config);
        if !verdict.accepted {
            return Ok((verdict, Recheck::default()));
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        Policy::validate_change(&self.dir, &name, Some(policy))
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        write_atomic(&path, policy)?;
        let recheck = self.recheck_locked(system, config, Some(package))?;
        Ok((verdict, recheck))
    }

    /// Removes the policy of `package`.
    pub fn remove(
        &self,
        package: &str,
        system: &System,
        config: &Config,
    ) -> Result<Recheck, StoreError> {
        let path = self.path(package)?;
        let _lock = self.lock()?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(package.to_owned()));
            }
            Err(e) => return Err(io_err(&path)(e)),
        }
        self.recheck_locked(system, config, None)
    }

    /// Re-checks every stored policy against the qubes as they are now,
    /// without changing anything.
    pub fn verify(
        &self,
        system: &System,
        config: &Config,
    ) -> Result<Vec<(String, Verdict)>, StoreError> {
        let _lock = self.lock()?;
        let mut out = Vec::new();
        for p in self.packages()? {
            let text = self.get(&p)?;
            out.push((p.clone(), rules::check(&p, &text, system, config)));
        }
        Ok(out)
    }

    /// Disables (renames away from `.policy`) every stored policy, other
    /// than `skip`, that no longer holds: a qube it names may have been
    /// removed and its name taken by a qube outside the package.
    fn recheck_locked(
        &self,
        system: &System,
        config: &Config,
        skip: Option<&str>,
    ) -> Result<Recheck, StoreError> {
        let mut re = Recheck::default();
        for p in self.packages()? {
            if Some(p.as_str()) == skip {
                continue;
            }
            let path = self.path(&p)?;
            let text = self.get(&p)?;
            let v = rules::check(&p, &text, system, config);
            if !v.accepted {
                let mut to = path.clone().into_os_string();
                to.push(DISABLED_SUFFIX);
                fs::rename(&path, &to).map_err(io_err(&path))?;
                sync_dir(&self.dir)?;
                re.disabled.push((p, v.violations));
            }
        }
        Ok(re)
    }
}

/// Writes `path` atomically: temp file + fsync + rename + directory
/// fsync, mode 0664. The temporary name starts with `.` and does not end in
/// `.policy`, so qrexec never loads it.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("policy");
    // A leading `.` and no `.policy` suffix: qrexec never loads it.
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o664)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}
