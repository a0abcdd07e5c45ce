//! Signed package repositories: archives, signatures, index, publishing and
//! the client that fetches, verifies and resolves packages.
//!
//! A repository is a directory of static files that any HTTP server, mirror,
//! CDN or USB stick can serve (`docs/repository-format.md`):
//!
//! ```text
//! timestamp.minisig            signed pointer: index version, expiry, hash
//! index/<sha256>.json          the index, named by its hash
//! packages/NAME-VERSION.qpm    reproducible package archives
//! keys/<KEYID>.pub[.minisig]   key rotation statements
//! ```
//!
//! Modules, from the bottom up:
//!
//! * [`sign`]: Ed25519 keys and signatures in minisign's formats;
//! * [`archive`]: reproducible package archives and a strict unpacker;
//! * [`index`]: the index and the signed timestamp, with their limits;
//! * [`publish`]: `qpm repo build`, `qpm package build`, key rotation;
//! * [`transport`]: HTTP(S) through the updates proxy, `file://` and paths;
//! * [`client`]: configured repositories, `update`, search and resolution.
//!
//! # Entry points for the package installer
//!
//! * [`open_package`]: a path to a package directory or a `.qpm` archive
//!   becomes a [`PackageDir`] (unpacked under a fresh private directory if
//!   needed, manifest validated).
//! * [`Client::resolve`](client::Client::resolve): `NAME[@VERSION]` (see [`PackageSpec`])
//!   becomes a [`client::Resolved`] candidate from the verified indexes
//!   (highest matching version; squatted names refused; expired indexes
//!   refused), and [`Client::fetch`](client::Client::fetch) downloads its archive, checks
//!   size and SHA-256 against the signed index before anything is unpacked,
//!   unpacks it and checks that the manifest's name and version are the
//!   ones the index promised, giving a [`PackageDir`].
//! * [`check_upgrade`]: refuses a downgrade unless the user allowed it
//!   (`--allow-downgrade`).
//!
//! ```no_run
//! # fn main() -> Result<(), qpm_repo::Error> {
//! use qpm_repo::{PackageSpec, client::Client, paths::Paths};
//! let client = Client::open(Paths::from_env()?)?;
//! let spec: PackageSpec = "split-browser@^2".parse()?;
//! let candidate = client.resolve(&spec)?;
//! qpm_repo::check_upgrade("split-browser", Some(&"1.0.0".parse().unwrap()), &candidate.entry.version, false)?;
//! let pkg = client.fetch(&candidate, &mut |_done, _total| {})?;
//! println!("{} {}", pkg.manifest.name, pkg.path().display());
//! # Ok(()) }
//! ```
//!
//! What it trusts: the public keys the user configured (and keys those keys
//! signed for rotation), the system clock for expiry, and the local state
//! directory. What it does not: every byte from a repository or a mirror.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::path::{Path, PathBuf};

pub mod archive;
pub mod client;
pub mod index;
pub mod paths;
pub mod publish;
pub mod sign;
pub mod transport;

mod fsutil;

/// Everything that can go wrong; each message names what and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed.
    #[error("{op} `{}`: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key or signature file is malformed.
    #[error("invalid {what}: {reason}")]
    BadKeyOrSignature {
        /// `public key`, `secret key`, `signature`.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A signature was made by another key than the one expected.
    #[error("signed by key `{found}`, but the trusted key is `{expected}`")]
    WrongKey {
        /// Trusted key id.
        expected: String,
        /// Key id in the signature.
        found: String,
    },
    /// A signature does not verify.
    #[error(
        "bad signature on the {what}: it was not made by the trusted key, or the data was changed"
    )]
    BadSignature {
        /// What was signed.
        what: String,
    },
    /// An archive entry is refused.
    #[error("bad package archive: {reason}: `{entry}`")]
    Archive {
        /// The entry's path (escaped), empty for the archive as a whole.
        entry: String,
        /// Why.
        reason: String,
    },
    /// A package manifest is invalid.
    #[error("invalid package `{}`: {source}", path.display())]
    Manifest {
        /// The package directory.
        path: PathBuf,
        /// The diagnostics.
        source: qpm_pkg::manifest::ManifestError,
    },
    /// Something is larger than its limit.
    #[error("{what} is larger than the limit of {limit}")]
    TooLarge {
        /// What.
        what: String,
        /// The limit (bytes or count).
        limit: u64,
    },
    /// An index or timestamp is malformed.
    #[error("invalid {what}: {reason}")]
    Index {
        /// Which document, with its repository.
        what: String,
        /// Why.
        reason: String,
    },
    /// Downloaded bytes do not match the signed hash.
    #[error("{what}: SHA-256 is {found}, the signed index says {expected} (tampered or corrupt)")]
    HashMismatch {
        /// What was downloaded.
        what: String,
        /// Hash from the signed index.
        expected: String,
        /// Hash of the bytes received.
        found: String,
    },
    /// Downloaded bytes do not have the signed size.
    #[error(
        "{what}: got {found} bytes, the signed index says {expected} (truncated or padded download)"
    )]
    SizeMismatch {
        /// What was downloaded.
        what: String,
        /// Size from the signed index.
        expected: u64,
        /// Bytes received.
        found: u64,
    },
    /// A repository offered an older index than one already seen.
    #[error(
        "repository `{repo}` offers index version {offered}, older than version {seen} already seen: refusing a rollback (replayed or stale mirror)"
    )]
    Rollback {
        /// The repository.
        repo: String,
        /// Version last accepted.
        seen: u64,
        /// Version offered.
        offered: u64,
    },
    /// A repository offered different content under an index version already seen.
    #[error(
        "repository `{repo}` offers a different index under version {version} already seen: refusing it"
    )]
    Equivocation {
        /// The repository.
        repo: String,
        /// The version.
        version: u64,
    },
    /// A repository's signed metadata has expired.
    #[error(
        "repository `{repo}`: the signed index expired at {expires}: refusing it (the repository may be frozen by an attacker, or its publisher has not re-signed it)"
    )]
    Expired {
        /// The repository.
        repo: String,
        /// When it expired (RFC 3339).
        expires: String,
    },
    /// A package name is already provided by another configured repository.
    #[error(
        "repository `{repo}` offers package `{package}`, which repository `{owner}` already provides: refused (pin it with `qpm repo pin {package} {repo}` if this is intended)"
    )]
    Squatting {
        /// The package.
        package: String,
        /// The repository that offered it.
        repo: String,
        /// The repository that provides it.
        owner: String,
    },
    /// A package would be downgraded.
    #[error(
        "package `{package}`: {candidate} is older than the installed {installed}; use --allow-downgrade to downgrade"
    )]
    Downgrade {
        /// The package.
        package: String,
        /// Installed version.
        installed: String,
        /// Version offered.
        candidate: String,
    },
    /// A download failed.
    #[error("cannot fetch `{url}`: {reason}")]
    Transport {
        /// What was fetched.
        url: String,
        /// Why.
        reason: String,
    },
    /// The configuration or state is invalid.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Something named does not exist.
    #[error("{what} not found: `{name}`")]
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// Something named already exists.
    #[error("{what} already exists: `{name}`")]
    Exists {
        /// What kind of thing.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// Bad input from the user (a name, URL, duration).
    #[error("{0}")]
    Usage(String),
}

/// `NAME[@VERSION]`: a package name and an optional version requirement
/// (`split-browser`, `split-browser@2.0.0`, `split-browser@^2`,
/// `split-browser@>=1.2, <3`). A bare version means exactly that version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSpec {
    /// Package name.
    pub name: String,
    /// Versions accepted; `None`: any (the highest is picked).
    pub version: Option<semver::VersionReq>,
}

impl std::str::FromStr for PackageSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let (name, ver) = match s.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        if let Some(e) = qpm_pkg::names::package_name_error(name) {
            return Err(Error::Usage(format!("{e}: `{}`", name.escape_debug())));
        }
        let version = match ver {
            None => None,
            Some(v) => {
                let v = v.trim();
                let req = if semver::Version::parse(v).is_ok() {
                    semver::VersionReq::parse(&format!("={v}"))
                } else {
                    semver::VersionReq::parse(v)
                };
                Some(req.map_err(|e| {
                    Error::Usage(format!(
                        "not a version or version requirement: `{}`: {e}",
                        v.escape_debug()
                    ))
                })?)
            }
        };
        Ok(Self {
            name: name.to_owned(),
            version,
        })
    }
}

impl fmt::Display for PackageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Refuses to replace `installed` by an older `candidate` unless
/// `allow_downgrade`. Reinstalling the same version is allowed.
pub fn check_upgrade(
    package: &str,
    installed: Option<&semver::Version>,
    candidate: &semver::Version,
    allow_downgrade: bool,
) -> Result<(), Error> {
    match installed {
        Some(i) if candidate < i && !allow_downgrade => Err(Error::Downgrade {
            package: package.to_owned(),
            installed: i.to_string(),
            candidate: candidate.to_string(),
        }),
        _ => Ok(()),
    }
}

/// A package ready to be read: a directory with a validated manifest. When
/// it came from an archive, the directory is private and temporary, and
/// removed when this value is dropped.
#[derive(Debug)]
pub struct PackageDir {
    /// The validated manifest.
    pub manifest: qpm_pkg::manifest::Manifest,
    /// SHA-256 of the archive it was unpacked from, if any.
    pub archive_sha256: Option<String>,
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl PackageDir {
    /// The package directory (holding `qpm.toml`).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens a package given as a directory or as a `.qpm` archive file. An
/// archive is unpacked with [`archive::DEFAULT_LIMITS`] under a fresh
/// private temporary directory; either way the manifest is validated.
pub fn open_package(path: &Path) -> Result<PackageDir, Error> {
    let md = std::fs::metadata(path).map_err(|source| Error::Io {
        op: "open package",
        path: path.to_owned(),
        source,
    })?;
    if md.is_dir() {
        let manifest = load_manifest(path)?;
        return Ok(PackageDir {
            manifest,
            archive_sha256: None,
            path: path.to_owned(),
            _temp: None,
        });
    }
    let sha = fsutil::sha256_file(path, archive::DEFAULT_LIMITS.max_archive_bytes)?;
    unpack_package(path, Some(sha))
}

pub(crate) fn unpack_package(archive: &Path, sha: Option<String>) -> Result<PackageDir, Error> {
    let temp = tempfile::Builder::new()
        .prefix("qpm-pkg-")
        .tempdir()
        .map_err(|source| Error::Io {
            op: "create temporary directory",
            path: std::env::temp_dir(),
            source,
        })?;
    let dir = temp.path().join("pkg");
    archive::unpack_file(archive, &dir, &archive::DEFAULT_LIMITS)?;
    let manifest = load_manifest(&dir)?;
    Ok(PackageDir {
        manifest,
        archive_sha256: sha,
        path: dir,
        _temp: Some(temp),
    })
}

fn load_manifest(dir: &Path) -> Result<qpm_pkg::manifest::Manifest, Error> {
    qpm_pkg::manifest::load_dir(dir).map_err(|source| Error::Manifest {
        path: dir.to_owned(),
        source,
    })
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 (UTC, seconds) for a Unix time.
pub fn format_time(t: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_spec_parses() {
        let s: PackageSpec = "split-browser".parse().unwrap();
        assert_eq!(s.version, None);
        let s: PackageSpec = "split-browser@2.0.0".parse().unwrap();
        let req = s.version.unwrap();
        assert!(req.matches(&"2.0.0".parse().unwrap()));
        assert!(!req.matches(&"2.0.1".parse().unwrap()));
        let s: PackageSpec = "a@^1.2".parse().unwrap();
        assert!(s.version.unwrap().matches(&"1.9.0".parse().unwrap()));
        assert!("Bad".parse::<PackageSpec>().is_err());
        assert!("a@x.y".parse::<PackageSpec>().is_err());
        assert!("../x".parse::<PackageSpec>().is_err());
    }

    #[test]
    fn downgrade_needs_consent() {
        let v = |s: &str| semver::Version::parse(s).unwrap();
        assert!(check_upgrade("p", Some(&v("2.0.0")), &v("1.0.0"), false).is_err());
        assert!(check_upgrade("p", Some(&v("2.0.0")), &v("1.0.0"), true).is_ok());
        assert!(check_upgrade("p", Some(&v("1.0.0")), &v("2.0.0"), false).is_ok());
        assert!(check_upgrade("p", Some(&v("1.0.0")), &v("1.0.0"), false).is_ok());
        assert!(check_upgrade("p", None, &v("1.0.0"), false).is_ok());
        let e = check_upgrade("p", Some(&v("2.0.0")), &v("1.0.0"), false).unwrap_err();
        assert!(e.to_string().contains("--allow-downgrade"), "{e}");
    }
}
