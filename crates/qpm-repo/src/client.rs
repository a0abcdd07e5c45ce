//! The client: configured repositories, `update`, search and resolution.
//!
//! Configuration (`repos.toml` in [`Paths::config`]) lists repositories in
//! the order they were added, each with its URL and the public key the user
//! trusts, the proxy, and pins. State ([`Paths::state`]) holds, per
//! repository, the last accepted `timestamp.minisig` and index, the key
//! currently trusted (after rotations) and the HTTP validators; plus
//! `claims.json`, which repository provides which package name.
//!
//! What `update` checks for each repository, in order, before anything is
//! stored:
//!
//! 1. the timestamp signature: made by the trusted key, or by a new key
//!    reached through a chain of rotation statements (`keys/<ID>.pub` signed
//!    by the previous key, at most [`MAX_ROTATIONS`] links);
//! 2. expiry (freeze): an expired timestamp is refused, also when the server
//!    says nothing changed;
//! 3. rollback: a version below the last one accepted is refused, and so is
//!    another index under the same version;
//! 4. the index: exact size, SHA-256 and signature against the timestamp,
//!    and `version`/`expires` equal to the timestamp's (mix-and-match);
//! 5. squatting: a package name already provided by another configured
//!    repository is refused for this one (the rest of its index is
//!    accepted) unless the user pinned the name to it.
//!
//! Reads ([`Client::search`], [`Client::resolve`], ...) verify the stored
//! state again (signature and hash) and refuse expired indexes for
//! resolution. [`Client::fetch`] checks an archive's size and SHA-256
//! before unpacking it, and that its manifest names the promised package
//! and version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::index::{self, Entry, Index, Timestamp};
use crate::paths::Paths;
use crate::publish::{TIMESTAMP_FILE, rotation_comment};
use crate::sign::{KeyId, PublicKey, Signature};
use crate::transport::{Fetched, Source, Stats, Transport, Validators};
use crate::{Error, PackageDir, PackageSpec, fsutil};

/// Most rotation statements followed in one update.
pub const MAX_ROTATIONS: usize = 8;
/// Longest repository name.
pub const MAX_REPO_NAME: usize = 32;
/// Largest `repos.toml`.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
const CONFIG_FILE: &str = "repos.toml";
const CLAIMS_FILE: &str = "claims.json";

/// One configured repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Short name (`[a-z][a-z0-9-]*`).
    pub name: String,
    /// `https://...`, `http://...` or `file:///...`.
    pub url: String,
    /// The public key the user trusts (base64 line).
    pub key: String,
}

/// `repos.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP proxy (the qube's updates proxy, `http://127.0.0.1:8082/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Repositories, in the order they were added.
    #[serde(default, rename = "repo")]
    pub repos: Vec<RepoConfig>,
    /// Package name to the repository that must provide it.
    #[serde(default)]
    pub pins: BTreeMap<String, String>,
}

/// A repository's verified state.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The timestamp.
    pub timestamp: Timestamp,
    /// The index.
    pub index: Index,
    /// The key that signed them.
    pub key: PublicKey,
}

/// Outcome of updating one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateStatus {
    /// Nothing changed.
    Unchanged,
    /// A new index was accepted.
    Updated,
    /// Refused or unreachable; the previous state is kept.
    Failed,
}

/// A package name refused for a repository (squatting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    /// The package.
    pub package: String,
    /// The repository that provides it.
    pub owner: String,
}

/// Report of updating one repository.
#[derive(Debug, Clone, Serialize)]
pub struct RepoUpdate {
    /// The repository.
    pub repo: String,
    /// What happened.
    pub status: UpdateStatus,
    /// Index version before.
    pub from_version: Option<u64>,
    /// Index version now.
    pub version: Option<u64>,
    /// Expiry now (Unix seconds).
    pub expires: Option<u64>,
    /// Package versions in the index now.
    pub packages: Option<usize>,
    /// New key id when the key was rotated.
    pub key_rotated_to: Option<String>,
    /// Package names refused for this repository.
    pub refused: Vec<Refused>,
    /// The error, when failed.
    pub error: Option<String>,
    /// Requests made.
    pub requests: u64,
    /// Body bytes received.
    pub bytes: u64,
}

/// `repo list` row.
#[derive(Debug, Clone, Serialize)]
pub struct RepoStatus {
    /// Name.
    pub name: String,
    /// Location.
    pub url: String,
    /// Key id the user added.
    pub key: String,
    /// Key id trusted now (after rotations).
    pub current_key: String,
    /// Index version, if updated once.
    pub version: Option<u64>,
    /// Expiry (Unix seconds).
    pub expires: Option<u64>,
    /// Whether the stored index has expired.
    pub expired: bool,
    /// Package versions.
    pub packages: Option<usize>,
    /// A problem with the stored state.
    pub error: Option<String>,
}

/// One package (name) in search results: its newest version.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    /// Name.
    pub name: String,
    /// Newest version.
    pub version: String,
    /// Summary of that version.
    pub summary: String,
    /// Providing repository.
    pub repo: String,
}

/// A candidate chosen by [`Client::resolve`].
#[derive(Debug, Clone, Serialize)]
pub struct Resolved {
    /// The repository.
    pub repo: String,
    /// Its index entry (name, version, archive, hash, size).
    pub entry: Entry,
    /// Index version it came from.
    pub index_version: u64,
}

/// One index entry with where it comes from, for `info`.
#[derive(Debug, Clone, Serialize)]
pub struct InfoEntry {
    /// The repository.
    pub repo: String,
    /// Whether this repository provides the name (false: refused, squatting).
    pub provides: bool,
    /// The entry.
    #[serde(flatten)]
    pub entry: Entry,
}

fn cfg_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Checks a repository name.
pub fn check_repo_name(name: &str) -> Result<(), Error> {
    let ok = name.len() <= MAX_REPO_NAME
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "a repository name is a lower-case letter, then letters, digits and `-`, at most {MAX_REPO_NAME}: `{}`",
            name.escape_debug()
        )))
    }
}

/// The configured repositories, their state, and the transport.
#[derive(Debug)]
pub struct Client {
    paths: Paths,
    config: Config,
    now: u64,
    transport: std::sync::OnceLock<Transport>,
}

/// An exclusive lock on the state directory, released when dropped.
#[derive(Debug)]
pub struct StateLock {
    _fd: std::fs::File,
}

impl Client {
    /// Opens the client: reads `repos.toml` (none yet: no repositories).
    pub fn open(paths: Paths) -> Result<Self, Error> {
        let p = paths.config.join(CONFIG_FILE);
        let config = if p.exists() {
            let b = fsutil::read_limited(&p, MAX_CONFIG_BYTES, "configuration")?;
            let text = String::from_utf8(b).map_err(|_| cfg_err(&p, "not UTF-8"))?;
            let c: Config = toml::from_str(&text).map_err(|e| cfg_err(&p, e.to_string()))?;
            for r in &c.repos {
                check_repo_name(&r.name).map_err(|e| cfg_err(&p, e.to_string()))?;
                Source::parse(&r.url).map_err(|e| cfg_err(&p, e.to_string()))?;
                PublicKey::parse(&r.key)
                    .map_err(|e| cfg_err(&p, format!("repo `{}`: {e}", r.name)))?;
            }
            c
        } else {
            Config::default()
        };
        Ok(Self {
            paths,
            config,
            now: crate::now_unix(),
            transport: std::sync::OnceLock::new(),
        })
    }

    /// Uses `now` (Unix seconds) instead of the clock (tests).
    pub fn with_now(mut self, now: u64) -> Self {
        self.now = now;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The directories in use.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    fn transport(&self) -> Result<&Transport, Error> {
        if let Some(t) = self.transport.get() {
            return Ok(t);
        }
        let t = Transport::new(self.config.proxy.as_deref())?;
        Ok(self.transport.get_or_init(|| t))
    }

    /// Takes the exclusive state lock (held by changing commands).
    pub fn lock(&self) -> Result<StateLock, Error> {
        fsutil::create_private_dir(&self.paths.state)?;
        let p = self.paths.state.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|source| Error::Io {
                op: "open",
                path: p.clone(),
                source,
            })?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            Error::Io {
                op: "lock",
                path: p,
                source: e.into(),
            }
        })?;
        Ok(StateLock { _fd: f })
    }

    fn save_config(&self) -> Result<(), Error> {
        fsutil::create_private_dir(&self.paths.config)?;
        let text = toml::to_string(&self.config)
            .map_err(|e| cfg_err(&self.paths.config.join(CONFIG_FILE), e.to_string()))?;
        let text = format!("# qpm repositories: edit with `qpm repo add|remove|pin|proxy`\n{text}");
        fsutil::write_atomic(&self.paths.config, CONFIG_FILE, text.as_bytes(), 0o600)
    }

    fn repo(&self, name: &str) -> Result<&RepoConfig, Error> {
        self.config
            .repos
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| Error::NotFound {
                what: "repository",
                name: name.to_owned(),
            })
    }

    fn repo_state_dir(&self, name: &str) -> PathBuf {
        self.paths.state.join("repos").join(name)
    }

    /// Adds a repository (no network access: `update` fetches it).
    pub fn add_repo(
        &mut self,
        name: &str,
        url: &str,
        key: &PublicKey,
    ) -> Result<RepoConfig, Error> {
        check_repo_name(name)?;
        let src = Source::parse(url)?;
        if self.config.repos.iter().any(|r| r.name == name) {
            return Err(Error::Exists {
                what: "repository",
                name: name.to_owned(),
            });
        }
        let _lock = self.lock()?;
        let dir = self.repo_state_dir(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|source| Error::Io {
                op: "remove",
                path: dir.clone(),
                source,
            })?;
        }
        let r = RepoConfig {
            name: name.to_owned(),
            url: src.to_config(),
            key: key.to_base64(),
        };
        self.config.repos.push(r.clone());
        self.save_config()?;
        Ok(r)
    }

    /// Removes a repository, its state, its claims and the pins naming it.
    pub fn remove_repo(&mut self, name: &str) -> Result<(), Error> {
        self.repo(name)?;
        let _lock = self.lock()?;
        self.config.repos.retain(|r| r.name != name);
        self.config.pins.retain(|_, r| r != name);
        self.save_config()?;
        let mut claims = self.load_claims()?;
        claims.retain(|_, r| r != name);
        self.save_claims(&claims)?;
        let dir = self.repo_state_dir(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|source| Error::Io {
                op: "remove",
                path: dir,
                source,
            })?;
        }
        Ok(())
    }

    /// Sets or clears the HTTP proxy.
    pub fn set_proxy(&mut self, proxy: Option<&str>) -> Result<(), Error> {
        if let Some(p) = proxy {
            Transport::new(Some(p))?;
        }
        let _lock = self.lock()?;
        self.config.proxy = proxy.map(str::to_owned);
        self.save_config()
    }

    /// Pins package `pkg` to repository `repo` (or unpins with `None`).
    pub fn pin(&mut self, pkg: &str, repo: Option<&str>) -> Result<(), Error> {
        if let Some(e) = qpm_pkg::names::package_name_error(pkg) {
            return Err(Error::Usage(format!("{e}: `{}`", pkg.escape_debug())));
        }
        let _lock = self.lock()?;
        match repo {
            Some(r) => {
                self.repo(r)?;
                self.config.pins.insert(pkg.to_owned(), r.to_owned());
            }
            None => {
                if self.config.pins.remove(pkg).is_none() {
                    return Err(Error::NotFound {
                        what: "pin",
                        name: pkg.to_owned(),
                    });
                }
            }
        }
        self.save_config()
    }

    fn load_claims(&self) -> Result<BTreeMap<String, String>, Error> {
        let p = self.paths.state.join(CLAIMS_FILE);
        if !p.exists() {
            return Ok(BTreeMap::new());
        }
        let b = fsutil::read_limited(&p, index::MAX_INDEX_BYTES, "claims")?;
        serde_json::from_slice(&b).map_err(|e| cfg_err(&p, e.to_string()))
    }

    fn save_claims(&self, c: &BTreeMap<String, String>) -> Result<(), Error> {
        fsutil::create_private_dir(&self.paths.state)?;
        let b = serde_json::to_vec_pretty(c).unwrap_or_default();
        fsutil::write_atomic(&self.paths.state, CLAIMS_FILE, &b, 0o600)
    }

    /// The key trusted now for `repo` (after rotations).
    fn trusted_key(&self, repo: &RepoConfig) -> Result<PublicKey, Error> {
        let p = self.repo_state_dir(&repo.name).join("key.pub");
        if p.exists() {
            let b = fsutil::read_limited(&p, 4096, "key")?;
            PublicKey::parse(&String::from_utf8_lossy(&b))
        } else {
            PublicKey::parse(&repo.key)
        }
    }

    /// The stored, verified state of `repo` (`None`: never updated).
    pub fn load_verified(&self, name: &str) -> Result<Option<Verified>, Error> {
        let repo = self.repo(name)?;
        let dir = self.repo_state_dir(name);
        let tp = dir.join(TIMESTAMP_FILE);
        if !tp.exists() {
            return Ok(None);
        }
        let key = self.trusted_key(repo)?;
        let ttext = fsutil::read_limited(&tp, index::MAX_TIMESTAMP_BYTES, "timestamp")?;
        let sig = Signature::parse(&String::from_utf8_lossy(&ttext))?;
        key.verify_comment(&sig)?;
        let ts = Timestamp::parse_comment(&sig.trusted_comment, &tp.display().to_string())?;
        let ip = dir.join("index.json");
        let ib = fsutil::read_limited(&ip, index::MAX_INDEX_BYTES, "index")?;
        check_index_bytes(&ib, &ts, &sig, &key, &ip.display().to_string())?;
        let idx = Index::parse(&ib, &ip.display().to_string())?;
        check_index_matches(&idx, &ts, &ip.display().to_string())?;
        Ok(Some(Verified {
            timestamp: ts,
            index: idx,
            key,
        }))
    }

    fn load_validators(&self, name: &str) -> Validators {
        let p = self.repo_state_dir(name).join("http.json");
        fsutil::read_limited(&p, 4096, "validators")
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Refreshes the indexes of `only` (all when empty). Each repository
    /// is checked and stored on its own: one failing leaves the others'
    /// updates in place and its own previous state untouched.
    pub fn update(
        &mut self,
        only: &[String],
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> Result<Vec<RepoUpdate>, Error> {
        for n in only {
            self.repo(n)?;
        }
        let _lock = self.lock()?;
        let claims_before = self.load_claims()?;
        let mut claims = claims_before.clone();
        // Claims of repositories no longer configured are void.
        claims.retain(|_, r| self.config.repos.iter().any(|c| &c.name == r));
        let mut out = Vec::new();
        for repo in self.config.repos.clone() {
            if !only.is_empty() && !only.contains(&repo.name) {
                continue;
            }
            let mut stats = Stats::default();
            let prev = self.load_verified(&repo.name);
            let mut rep = RepoUpdate {
                repo: repo.name.clone(),
                status: UpdateStatus::Failed,
                from_version: None,
                version: None,
                expires: None,
                packages: None,
                key_rotated_to: None,
                refused: Vec::new(),
                error: None,
                requests: 0,
                bytes: 0,
            };
            let r = match prev {
                Ok(prev) => {
                    rep.from_version = prev.as_ref().map(|p| p.timestamp.version);
                    self.update_one(&repo, prev, &mut claims, &mut rep, &mut stats, progress)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::warn!(repo = %repo.name, "update refused: {e}");
                rep.status = UpdateStatus::Failed;
                rep.error = Some(e.to_string());
            }
            rep.requests = stats.requests;
            rep.bytes = stats.bytes;
            out.push(rep);
        }
        if claims != claims_before {
            self.save_claims(&claims)?;
        }
        Ok(out)
    }

    fn update_one(
        &self,
        repo: &RepoConfig,
        prev: Option<Verified>,
        claims: &mut BTreeMap<String, String>,
        rep: &mut RepoUpdate,
        stats: &mut Stats,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> Result<(), Error> {
        let src = Source::parse(&repo.url)?;
        let t = self.transport()?;
        let dir = self.repo_state_dir(&repo.name);
        let what = |rel: &str| format!("`{}` of repository `{}`", rel, repo.name);
        let cond = prev.as_ref().map(|_| self.load_validators(&repo.name));
        let (tbytes, validators) = match t.get(
            &src,
            TIMESTAMP_FILE,
            cond.as_ref(),
            index::MAX_TIMESTAMP_BYTES,
            stats,
        )? {
            Fetched::NotModified => {
                let Some(p) = prev else {
                    return Err(Error::Transport {
                        url: src.display(TIMESTAMP_FILE),
                        reason: "304 Not Modified without a stored copy".into(),
                    });
                };
                self.check_expiry(&repo.name, p.timestamp.expires)?;
                self.claim(repo, &p.index, claims, rep);
                rep.status = UpdateStatus::Unchanged;
                rep.version = Some(p.timestamp.version);
                rep.expires = Some(p.timestamp.expires);
                rep.packages = Some(p.index.packages.len());
                return Ok(());
            }
            Fetched::Body(b, v) => (b, v),
        };
        let ttext = String::from_utf8(tbytes).map_err(|_| Error::Index {
            what: what(TIMESTAMP_FILE),
            reason: "not UTF-8".into(),
        })?;
        let sig = Signature::parse(&ttext)?;
        let trusted = self.trusted_key(repo)?;
        let key = if sig.key_id == trusted.id {
            trusted.clone()
        } else {
            self.follow_rotation(&src, &trusted, sig.key_id, stats)?
        };
        key.verify_comment(&sig).map_err(|e| match e {
            Error::BadSignature { .. } => Error::BadSignature {
                what: what(TIMESTAMP_FILE),
            },
            e => e,
        })?;
        let ts = Timestamp::parse_comment(&sig.trusted_comment, &what(TIMESTAMP_FILE))?;
        self.check_expiry(&repo.name, ts.expires)?;
        if let Some(p) = &prev {
            if ts.version < p.timestamp.version {
                return Err(Error::Rollback {
                    repo: repo.name.clone(),
                    seen: p.timestamp.version,
                    offered: ts.version,
                });
            }
            if ts.version == p.timestamp.version && ts.sha256 != p.timestamp.sha256 {
                return Err(Error::Equivocation {
                    repo: repo.name.clone(),
                    version: ts.version,
                });
            }
        }
        let (ibytes, idx) = match &prev {
            Some(p) if p.timestamp.sha256 == ts.sha256 => (None, p.index.clone()),
            _ => {
                let mut buf = Vec::new();
                t.fetch_into(
                    &src,
                    &ts.index,
                    None,
                    ts.size,
                    &mut buf,
                    &mut |d, total| progress(&repo.name, d, total),
                    stats,
                )?;
                check_index_bytes(&buf, &ts, &sig, &key, &what(&ts.index))?;
                let idx = Index::parse(&buf, &what(&ts.index))?;
                check_index_matches(&idx, &ts, &what(&ts.index))?;
                (Some(buf), idx)
            }
        };
        let tp = dir.join(TIMESTAMP_FILE);
        let same_ts = fsutil::read_limited(&tp, index::MAX_TIMESTAMP_BYTES, "timestamp")
            .is_ok_and(|old| old == ttext.as_bytes());
        if ibytes.is_none() && !same_ts {
            // Same index, signed again (by a new key): the signature over
            // the index must hold.
            let ip = dir.join("index.json");
            let b = fsutil::read_limited(&ip, index::MAX_INDEX_BYTES, "index")?;
            check_index_bytes(&b, &ts, &sig, &key, &what(&ts.index))?;
        }
        // Everything verified: store (index first, timestamp last), and
        // nothing at all when nothing changed (no fsync on the no-change path).
        fsutil::create_private_dir(&dir)?;
        if let Some(b) = &ibytes {
            fsutil::write_atomic(&dir, "index.json", b, 0o600)?;
        }
        if key.id != trusted.id {
            fsutil::write_atomic(&dir, "key.pub", key.to_file().as_bytes(), 0o600)?;
            rep.key_rotated_to = Some(key.id.to_string());
        }
        if !same_ts {
            fsutil::write_atomic(&dir, TIMESTAMP_FILE, ttext.as_bytes(), 0o600)?;
        }
        if cond.as_ref() != Some(&validators) {
            let vb = serde_json::to_vec(&validators).unwrap_or_default();
            fsutil::write_atomic(&dir, "http.json", &vb, 0o600)?;
        }
        self.claim(repo, &idx, claims, rep);
        rep.status = if prev.as_ref().map(|p| &p.timestamp) == Some(&ts) {
            UpdateStatus::Unchanged
        } else {
            UpdateStatus::Updated
        };
        rep.version = Some(ts.version);
        rep.expires = Some(ts.expires);
        rep.packages = Some(idx.packages.len());
        Ok(())
    }

    fn check_expiry(&self, repo: &str, expires: u64) -> Result<(), Error> {
        if expires <= self.now {
            return Err(Error::Expired {
                repo: repo.to_owned(),
                expires: crate::format_time(expires),
            });
        }
        Ok(())
    }

    /// Records the names `repo` provides and lists those it may not.
    fn claim(
        &self,
        repo: &RepoConfig,
        idx: &Index,
        claims: &mut BTreeMap<String, String>,
        rep: &mut RepoUpdate,
    ) {
        for name in idx.names() {
            let pinned = self.config.pins.get(name);
            match (pinned, claims.get(name)) {
                (Some(p), _) if *p == repo.name => {
                    claims.insert(name.to_owned(), repo.name.clone());
                }
                // Pinned elsewhere by the user: not this repository's, and
                // not an error either.
                (Some(_), _) => {}
                (None, Some(owner)) if *owner != repo.name => rep.refused.push(Refused {
                    package: name.to_owned(),
                    owner: owner.clone(),
                }),
                (None, _) => {
                    claims.insert(name.to_owned(), repo.name.clone());
                }
            }
        }
    }

    fn follow_rotation(
        &self,
        src: &Source,
        trusted: &PublicKey,
        want: KeyId,
        stats: &mut Stats,
    ) -> Result<PublicKey, Error> {
        let t = self.transport()?;
        let mut pending: Vec<(String, Signature, PublicKey)> = Vec::new();
        let mut target = want;
        for _ in 0..MAX_ROTATIONS {
            let rel = format!("keys/{target}.pub");
            let fetch = |rel: &str, stats: &mut Stats| -> Result<String, Error> {
                match t.get(src, rel, None, 4096, stats) {
                    Ok(Fetched::Body(b, _)) => Ok(String::from_utf8_lossy(&b).into_owned()),
                    Ok(Fetched::NotModified) => Err(Error::Transport {
                        url: src.display(rel),
                        reason: "unexpected 304".into(),
                    }),
                    Err(e) => Err(Error::WrongKey {
                        expected: trusted.id.to_string(),
                        found: format!("{target} (and no rotation statement for it: {e})"),
                    }),
                }
            };
            let text = fetch(&rel, stats)?;
            let sig = Signature::parse(&fetch(&format!("{rel}.minisig"), stats)?)?;
            let pk = PublicKey::parse(&text)?;
            if pk.id != target {
                return Err(Error::BadKeyOrSignature {
                    what: "rotation statement",
                    reason: format!("`{rel}` holds key {}", pk.id),
                });
            }
            if sig.trusted_comment != rotation_comment(&target.to_string(), &sig.key_id.to_string())
            {
                return Err(Error::BadKeyOrSignature {
                    what: "rotation statement",
                    reason: format!("`{rel}.minisig` is not a qpm key rotation signature"),
                });
            }
            let signer = sig.key_id;
            pending.push((text, sig, pk));
            if signer == trusted.id {
                let mut key = trusted.clone();
                while let Some((text, sig, pk)) = pending.pop() {
                    key.verify(text.as_bytes(), &sig)
                        .map_err(|_| Error::BadSignature {
                            what: format!("rotation statement for key {}", pk.id),
                        })?;
                    key = pk;
                }
                tracing::info!(from = %trusted.id, to = %key.id, "repository key rotated");
                return Ok(key);
            }
            target = signer;
        }
        Err(Error::WrongKey {
            expected: trusted.id.to_string(),
            found: format!(
                "{want} (no rotation chain from the trusted key within {MAX_ROTATIONS} steps)"
            ),
        })
    }

    /// `repo list`.
    pub fn list(&self) -> Vec<RepoStatus> {
        self.config
            .repos
            .iter()
            .map(|r| {
                let added = PublicKey::parse(&r.key)
                    .map(|k| k.id.to_string())
                    .unwrap_or_default();
                let current = self
                    .trusted_key(r)
                    .map(|k| k.id.to_string())
                    .unwrap_or_default();
                let (v, err) = match self.load_verified(&r.name) {
                    Ok(v) => (v, None),
                    Err(e) => (None, Some(e.to_string())),
                };
                RepoStatus {
                    name: r.name.clone(),
                    url: r.url.clone(),
                    key: added,
                    current_key: current,
                    version: v.as_ref().map(|v| v.timestamp.version),
                    expires: v.as_ref().map(|v| v.timestamp.expires),
                    expired: v.as_ref().is_some_and(|v| v.timestamp.expires <= self.now),
                    packages: v.as_ref().map(|v| v.index.packages.len()),
                    error: err,
                }
            })
            .collect()
    }

    /// All verified indexes, in configuration order (repositories never
    /// updated are skipped; a damaged state is an error).
    fn all_verified(&self) -> Result<Vec<(String, Verified)>, Error> {
        let mut out = Vec::new();
        for r in &self.config.repos {
            if let Some(v) = self.load_verified(&r.name)? {
                out.push((r.name.clone(), v));
            }
        }
        Ok(out)
    }

    /// Which repository provides `name`: the pin, else the claim, else the
    /// first repository (in configuration order) that lists it.
    fn owner(
        &self,
        name: &str,
        claims: &BTreeMap<String, String>,
        all: &[(String, Verified)],
    ) -> Option<String> {
        let configured = |r: &String| self.config.repos.iter().any(|c| &c.name == r);
        if let Some(p) = self.config.pins.get(name).filter(|r| configured(r)) {
            return Some(p.clone());
        }
        if let Some(c) = claims.get(name).filter(|r| configured(r)) {
            return Some(c.clone());
        }
        all.iter()
            .find(|(_, v)| v.index.packages.iter().any(|p| p.name == name))
            .map(|(r, _)| r.clone())
    }

    /// Packages whose name or summary contains `query` (case-insensitive;
    /// empty: all), newest version each, from the repository providing it.
    pub fn search(&self, query: &str) -> Result<Vec<SearchHit>, Error> {
        let all = self.all_verified()?;
        let claims = self.load_claims()?;
        let q = query.to_lowercase();
        let mut hits: BTreeMap<String, SearchHit> = BTreeMap::new();
        for (repo, v) in &all {
            for e in &v.index.packages {
                if self.owner(&e.name, &claims, &all).as_deref() != Some(repo.as_str()) {
                    continue;
                }
                if !q.is_empty()
                    && !e.name.to_lowercase().contains(&q)
                    && !e.summary.to_lowercase().contains(&q)
                {
                    continue;
                }
                let newer = hits.get(&e.name).is_none_or(|h| {
                    h.version
                        .parse::<semver::Version>()
                        .is_ok_and(|hv| e.version > hv)
                });
                if newer {
                    hits.insert(
                        e.name.clone(),
                        SearchHit {
                            name: e.name.clone(),
                            version: e.version.to_string(),
                            summary: e.summary.clone(),
                            repo: repo.clone(),
                        },
                    );
                }
            }
        }
        Ok(hits.into_values().collect())
    }

    /// Every version of `name` in every repository, newest first, marking
    /// those from repositories that do not provide the name.
    pub fn info(&self, name: &str) -> Result<Vec<InfoEntry>, Error> {
        let all = self.all_verified()?;
        let claims = self.load_claims()?;
        let owner = self.owner(name, &claims, &all);
        let mut out = Vec::new();
        for (repo, v) in &all {
            for e in v.index.versions(name) {
                out.push(InfoEntry {
                    repo: repo.clone(),
                    provides: owner.as_deref() == Some(repo.as_str()),
                    entry: e.clone(),
                });
            }
        }
        out.sort_by(|a, b| {
            b.entry
                .version
                .cmp(&a.entry.version)
                .then(a.repo.cmp(&b.repo))
        });
        if out.is_empty() {
            return Err(Error::NotFound {
                what: "package",
                name: name.to_owned(),
            });
        }
        Ok(out)
    }

    /// Resolves `NAME[@VERSION]` to the highest matching version offered by
    /// the repository that provides the name. An expired index is refused.
    pub fn resolve(&self, spec: &PackageSpec) -> Result<Resolved, Error> {
        let all = self.all_verified()?;
        let claims = self.load_claims()?;
        let Some(owner) = self.owner(&spec.name, &claims, &all) else {
            return Err(Error::NotFound {
                what: "package",
                name: spec.name.clone(),
            });
        };
        let Some((_, v)) = all.iter().find(|(r, _)| *r == owner) else {
            return Err(Error::NotFound {
                what: "package",
                name: format!(
                    "{} (repository `{owner}` has no index: run `qpm update`)",
                    spec.name
                ),
            });
        };
        self.check_expiry(&owner, v.timestamp.expires)?;
        let found = v
            .index
            .versions(&spec.name)
            .find(|e| spec.version.as_ref().is_none_or(|r| r.matches(&e.version)));
        match found {
            Some(e) => Ok(Resolved {
                repo: owner,
                entry: e.clone(),
                index_version: v.timestamp.version,
            }),
            None => Err(Error::NotFound {
                what: "package version",
                name: spec.to_string(),
            }),
        }
    }

    /// Downloads (or finds in the cache) the archive of `r`, checking its
    /// size and SHA-256 against the signed index; returns its path in the
    /// cache. Nothing that fails the checks is kept.
    pub fn download(
        &self,
        r: &Resolved,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(PathBuf, Stats), Error> {
        let mut stats = Stats::default();
        let repo = self.repo(&r.repo)?;
        let src = Source::parse(&repo.url)?;
        let cache = self.paths.cache.join("archives");
        fsutil::create_private_dir(&cache)?;
        let target = cache.join(format!("{}.{}", r.entry.sha256, crate::archive::EXTENSION));
        let what = format!("`{}` from repository `{}`", r.entry.archive, r.repo);
        if target.exists() {
            let ok = std::fs::metadata(&target).map(|m| m.len()).ok() == Some(r.entry.size)
                && fsutil::sha256_file(&target, r.entry.size).ok().as_deref()
                    == Some(r.entry.sha256.as_str());
            if ok {
                return Ok((target, stats));
            }
            let _ = std::fs::remove_file(&target);
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".qpm-tmp.")
            .tempfile_in(&cache)
            .map_err(|source| Error::Io {
                op: "create temporary file in",
                path: cache.clone(),
                source,
            })?;
        let mut hw = HashingWriter {
            inner: tmp.as_file_mut(),
            hash: <sha2::Sha256 as sha2::Digest>::new(),
            n: 0,
        };
        let t = self.transport()?;
        // One byte more than promised, so a padded download is detected.
        let res = t.fetch_into(
            &src,
            &r.entry.archive,
            None,
            r.entry.size.saturating_add(1),
            &mut hw,
            progress,
            &mut stats,
        );
        let (n, hash) = (hw.n, hex::encode(sha2::Digest::finalize(hw.hash)));
        match res {
            Ok(_) => {}
            Err(Error::TooLarge { .. }) => {
                return Err(Error::SizeMismatch {
                    what,
                    expected: r.entry.size,
                    found: n,
                });
            }
            Err(e) if n < r.entry.size && n > 0 => {
                return Err(Error::SizeMismatch {
                    what: format!("{what} ({e})"),
                    expected: r.entry.size,
                    found: n,
                });
            }
            Err(e) => return Err(e),
        }
        if n != r.entry.size {
            return Err(Error::SizeMismatch {
                what,
                expected: r.entry.size,
                found: n,
            });
        }
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            hash.as_bytes(),
            r.entry.sha256.as_bytes(),
        )) {
            return Err(Error::HashMismatch {
                what,
                expected: r.entry.sha256.clone(),
                found: hash,
            });
        }
        tmp.as_file().sync_all().map_err(|source| Error::Io {
            op: "sync",
            path: tmp.path().to_owned(),
            source,
        })?;
        tmp.persist(&target).map_err(|e| Error::Io {
            op: "rename into",
            path: target.clone(),
            source: e.error,
        })?;
        Ok((target, stats))
    }

    /// [`download`](Self::download), then unpacks the verified archive under
    /// a fresh private directory, validates the manifest, and checks it is
    /// the package and version the index promised.
    pub fn fetch(
        &self,
        r: &Resolved,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<PackageDir, Error> {
        let (path, _) = self.download(r, progress)?;
        let pd = crate::unpack_package(&path, Some(r.entry.sha256.clone()))?;
        if pd.manifest.name != r.entry.name || pd.manifest.version != r.entry.version {
            return Err(Error::Index {
                what: format!("`{}` from repository `{}`", r.entry.archive, r.repo),
                reason: format!(
                    "the index promises {} {} but the archive holds {} {}",
                    r.entry.name, r.entry.version, pd.manifest.name, pd.manifest.version
                ),
            });
        }
        Ok(pd)
    }
}

struct HashingWriter<'a> {
    inner: &'a mut std::fs::File,
    hash: sha2::Sha256,
    n: u64,
}

impl std::io::Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hash, buf.get(..k).unwrap_or_default());
        self.n = self.n.saturating_add(k as u64);
        Ok(k)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn check_index_bytes(
    b: &[u8],
    ts: &Timestamp,
    sig: &Signature,
    key: &PublicKey,
    what: &str,
) -> Result<(), Error> {
    if b.len() as u64 != ts.size {
        return Err(Error::SizeMismatch {
            what: what.to_owned(),
            expected: ts.size,
            found: b.len() as u64,
        });
    }
    let h = fsutil::sha256_hex(b);
    if h != ts.sha256 {
        return Err(Error::HashMismatch {
            what: what.to_owned(),
            expected: ts.sha256.clone(),
            found: h,
        });
    }
    key.verify(b, sig).map_err(|e| match e {
        Error::BadSignature { .. } => Error::BadSignature {
            what: what.to_owned(),
        },
        e => e,
    })
}

fn check_index_matches(idx: &Index, ts: &Timestamp, what: &str) -> Result<(), Error> {
    if idx.version != ts.version || idx.expires != ts.expires {
        return Err(Error::Index {
            what: what.to_owned(),
            reason: format!(
                "index says version {} expiring {}, the timestamp says version {} expiring {} (mixed metadata)",
                idx.version, idx.expires, ts.version, ts.expires
            ),
        });
    }
    Ok(())
}
