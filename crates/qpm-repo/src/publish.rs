//! Publishing: package archives, repositories, key rotation.
//!
//! A repository directory is updated in an order that keeps it consistent
//! for clients reading it at any moment (and for mirrors copying it in
//! directory order): archives first, then the new index under its hash
//! name, then `timestamp.minisig`, written atomically, last. The previous
//! index file is kept so a client that read the old timestamp just before
//! can still fetch it; older ones are removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::index::{self, Entry, Index, Timestamp};
use crate::sign::{PublicKey, SecretKey, Signature};
use crate::{Error, archive, fsutil};

/// Name of the signed pointer file at the repository root.
pub const TIMESTAMP_FILE: &str = "timestamp.minisig";

/// What `qpm package build` produced.
#[derive(Debug, Clone, Serialize)]
pub struct BuiltPackage {
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// The archive written.
    pub path: PathBuf,
    /// Its SHA-256.
    pub sha256: String,
    /// Its size.
    pub size: u64,
}

/// The archive file name of a package version.
pub fn archive_name(name: &str, version: &semver::Version) -> String {
    format!("{name}-{version}.{}", archive::EXTENSION)
}

/// Builds the archive of package directory `dir` into directory `out_dir`
/// (`NAME-VERSION.qpm`), replacing an existing file only if it differs.
pub fn build_package(dir: &Path, out_dir: &Path) -> Result<BuiltPackage, Error> {
    let (m, bytes) = archive::build_bytes(dir)?;
    std::fs::create_dir_all(out_dir).map_err(|source| Error::Io {
        op: "create directory",
        path: out_dir.to_owned(),
        source,
    })?;
    let name = archive_name(&m.name, &m.version);
    fsutil::write_atomic(out_dir, &name, &bytes, 0o644)?;
    Ok(BuiltPackage {
        name: m.name,
        version: m.version.to_string(),
        path: out_dir.join(name),
        sha256: fsutil::sha256_hex(&bytes),
        size: bytes.len() as u64,
    })
}

/// Options of [`build_repository`].
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// When the signed metadata expires (Unix seconds).
    pub expires: u64,
    /// Index version to write; default: the previous one plus one.
    pub version: Option<u64>,
}

/// What [`build_repository`] did.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// The repository directory.
    pub repo: PathBuf,
    /// New index version.
    pub version: u64,
    /// Expiry (Unix seconds).
    pub expires: u64,
    /// Expiry, RFC 3339.
    pub expires_at: String,
    /// Package versions added by this build (`name@version`).
    pub added: Vec<String>,
    /// Package versions in the index.
    pub packages: usize,
    /// Index path.
    pub index: String,
    /// Index SHA-256.
    pub sha256: String,
    /// Index size.
    pub size: u64,
    /// Signing key id.
    pub key: String,
}

/// Finds packages under `src`: `src` itself when it is a package directory
/// (holds `qpm.toml`) or an archive, else directories and archives below it
/// (up to 4 levels, not following symlinks, skipping hidden names).
pub fn find_packages(src: &Path) -> Result<Vec<PathBuf>, Error> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| Error::Io {
            op: "read",
            path: p,
            source,
        }
    };
    let md = std::fs::metadata(src).map_err(io(src))?;
    if md.is_file() || src.join(qpm_pkg::manifest::MANIFEST_NAME).is_file() {
        return Ok(vec![src.to_owned()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![(src.to_owned(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let mut ents: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(Result::ok)
            .collect();
        ents.sort_by_key(|e| e.file_name());
        for e in ents {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if p.join(qpm_pkg::manifest::MANIFEST_NAME).is_file() {
                    out.push(p);
                } else if depth < 4 {
                    stack.push((p, depth + 1));
                }
            } else if ft.is_file()
                && p.extension().and_then(|x| x.to_str()) == Some(archive::EXTENSION)
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn read_timestamp(repo: &Path) -> Result<Option<(Signature, Timestamp)>, Error> {
    let p = repo.join(TIMESTAMP_FILE);
    if !p.exists() {
        return Ok(None);
    }
    let text = fsutil::read_limited(&p, index::MAX_TIMESTAMP_BYTES, "timestamp")?;
    let text = String::from_utf8(text).map_err(|_| Error::Index {
        what: p.display().to_string(),
        reason: "not UTF-8".into(),
    })?;
    let sig = Signature::parse(&text)?;
    let ts = Timestamp::parse_comment(&sig.trusted_comment, &p.display().to_string())?;
    Ok(Some((sig, ts)))
}

/// Adds the packages found under `sources` to the repository directory
/// `repo` (created if needed), then writes a new index and timestamp
/// signed with `key`. Published versions are immutable: adding a version
/// whose archive differs from the one already published is an error.
pub fn build_repository(
    repo: &Path,
    sources: &[PathBuf],
    key: &SecretKey,
    opts: &BuildOptions,
) -> Result<BuildReport, Error> {
    let pkgs = repo.join("packages");
    let idx_dir = repo.join("index");
    let keys = repo.join("keys");
    for d in [repo, &pkgs, &idx_dir, &keys] {
        std::fs::create_dir_all(d).map_err(|source| Error::Io {
            op: "create directory",
            path: d.to_owned(),
            source,
        })?;
    }
    let prev = read_timestamp(repo)?;
    let version = match (opts.version, &prev) {
        (Some(v), Some((_, p))) if v <= p.version => {
            return Err(Error::Usage(format!(
                "index version {v} is not above the published version {}",
                p.version
            )));
        }
        (Some(v), _) => v,
        (None, Some((_, p))) => p
            .version
            .checked_add(1)
            .ok_or_else(|| Error::Usage("index version overflow".into()))?,
        (None, None) => 1,
    };

    // 1. Archives.
    let mut added = Vec::new();
    for src in sources {
        for p in find_packages(src)? {
            let (name, version, bytes) = if p.is_dir() {
                let (m, b) = archive::build_bytes(&p)?;
                (m.name, m.version, b)
            } else {
                let pd = crate::open_package(&p)?;
                let b =
                    fsutil::read_limited(&p, archive::DEFAULT_LIMITS.max_archive_bytes, "archive")?;
                (pd.manifest.name.clone(), pd.manifest.version.clone(), b)
            };
            let file = archive_name(&name, &version);
            let target = pkgs.join(&file);
            if target.exists() {
                let old = fsutil::read_limited(
                    &target,
                    archive::DEFAULT_LIMITS.max_archive_bytes,
                    "archive",
                )?;
                if old != bytes {
                    return Err(Error::Usage(format!(
                        "{name} {version} is already published with different content \
                         (`{}`); published versions are immutable: raise the version",
                        target.display()
                    )));
                }
                continue;
            }
            fsutil::write_atomic(&pkgs, &file, &bytes, 0o644)?;
            added.push(format!("{name}@{version}"));
        }
    }

    // 2. Index over every archive in packages/.
    let mut entries = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&pkgs)
        .map_err(|source| Error::Io {
            op: "read directory",
            path: pkgs.clone(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some(archive::EXTENSION))
        .collect();
    files.sort();
    for p in files {
        let bytes = fsutil::read_limited(&p, archive::DEFAULT_LIMITS.max_archive_bytes, "archive")?;
        let pd = crate::open_package(&p)?;
        let m = &pd.manifest;
        let file = archive_name(&m.name, &m.version);
        if p.file_name().and_then(|f| f.to_str()) != Some(file.as_str()) {
            return Err(Error::Usage(format!(
                "`{}` holds {} {}; its file name must be `{file}`",
                p.display(),
                m.name,
                m.version
            )));
        }
        entries.push(Entry {
            name: m.name.clone(),
            version: m.version.clone(),
            summary: m.summary.clone(),
            description: m.description.clone(),
            requires: m
                .requires
                .iter()
                .map(|r| format!("{} {}", r.name, r.version))
                .collect(),
            archive: format!("packages/{file}"),
            sha256: fsutil::sha256_hex(&bytes),
            size: bytes.len() as u64,
        });
    }
    entries.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    let idx = Index {
        format: index::FORMAT,
        version,
        expires: opts.expires,
        packages: entries,
    };
    idx.validate("new index")?;
    let bytes = idx.to_bytes();
    let sha = fsutil::sha256_hex(&bytes);
    let index_rel = format!("index/{sha}.json");
    fsutil::write_atomic(&idx_dir, &format!("{sha}.json"), &bytes, 0o644)?;

    // 3. Key file (for reference; clients get the key out of band).
    let pub_name = format!("{}.pub", key.id);
    if !keys.join(&pub_name).exists() {
        fsutil::write_atomic(&keys, &pub_name, key.public().to_file().as_bytes(), 0o644)?;
    }

    // 4. Timestamp, last.
    let ts = Timestamp {
        version,
        expires: opts.expires,
        index: index_rel.clone(),
        size: bytes.len() as u64,
        sha256: sha.clone(),
    };
    let sig = key.sign(&bytes, &ts.to_comment())?;
    fsutil::write_atomic(repo, TIMESTAMP_FILE, sig.to_file().as_bytes(), 0o644)?;

    // 5. Keep the current and the previous index only.
    let keep: Vec<String> = std::iter::once(sha.clone())
        .chain(prev.map(|(_, p)| p.sha256))
        .map(|s| format!("{s}.json"))
        .collect();
    if let Ok(rd) = std::fs::read_dir(&idx_dir) {
        for e in rd.filter_map(Result::ok) {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with(".json") && !keep.contains(&n) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    tracing::info!(
        version,
        packages = idx.packages.len(),
        "repository index signed"
    );
    Ok(BuildReport {
        repo: repo.to_owned(),
        version,
        expires: opts.expires,
        expires_at: crate::format_time(opts.expires),
        added,
        packages: idx.packages.len(),
        index: index_rel,
        sha256: sha,
        size: bytes.len() as u64,
        key: key.id.to_string(),
    })
}

/// The rotation statement for `new`, signed by `old`: `keys/<NEW>.pub` and
/// `keys/<NEW>.pub.minisig` (trusted comment `qpm-key-rotation new=NEW
/// old=OLD`). Returns the two paths. Sign the next build with the new key.
pub fn rotate_key(
    repo: &Path,
    old: &SecretKey,
    new: &PublicKey,
) -> Result<(PathBuf, PathBuf), Error> {
    if old.id == new.id {
        return Err(Error::Usage("the new key is the old key".into()));
    }
    let keys = repo.join("keys");
    std::fs::create_dir_all(&keys).map_err(|source| Error::Io {
        op: "create directory",
        path: keys.clone(),
        source,
    })?;
    let text = new.to_file();
    let comment = rotation_comment(&new.id.to_string(), &old.id.to_string());
    let sig = old.sign(text.as_bytes(), &comment)?;
    let pub_name = format!("{}.pub", new.id);
    let sig_name = format!("{pub_name}.minisig");
    fsutil::write_atomic(&keys, &pub_name, text.as_bytes(), 0o644)?;
    fsutil::write_atomic(&keys, &sig_name, sig.to_file().as_bytes(), 0o644)?;
    Ok((keys.join(pub_name), keys.join(sig_name)))
}

/// The trusted comment of a rotation statement.
pub fn rotation_comment(new: &str, old: &str) -> String {
    format!("{} new={new} old={old}", index::ROTATION_PURPOSE)
}

/// Package versions in a repository directory's current index, by name
/// (for tools and tests).
pub fn list_published(repo: &Path) -> Result<BTreeMap<String, Vec<String>>, Error> {
    let Some((_, ts)) = read_timestamp(repo)? else {
        return Err(Error::NotFound {
            what: "repository",
            name: repo.display().to_string(),
        });
    };
    let bytes = fsutil::read_limited(&repo.join(&ts.index), index::MAX_INDEX_BYTES, "index")?;
    let idx = Index::parse(&bytes, &ts.index)?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in idx.packages {
        out.entry(p.name).or_default().push(p.version.to_string());
    }
    Ok(out)
}
