//! A loaded policy: rules in evaluation order, the file each came from, and
//! an index by service, argument and source.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::load::{LoadError, LoadOptions, Loader};
use crate::parse::Rule;
use crate::source::{DirSource, MemorySource, Overlay, Source};
use crate::token::TokenKind;

/// Where a rule is: its file (key relative to the policy root) and line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleRef {
    /// Position of the rule in evaluation order.
    pub index: usize,
    /// The file's key, e.g. `30-user.policy` or `include/extra`.
    pub file: Arc<str>,
    /// 1-based line; 0 for the implicit rules of `!compat-4.0`.
    pub line: u32,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{} (implicit)", self.file.escape_debug())
        } else {
            write!(f, "{}:{}", self.file.escape_debug(), self.line)
        }
    }
}

/// The kind of source column a rule is filed under in the index. Rules
/// with a `@dispvm:` source never match a caller and are not indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum SourceKey {
    Name = 1,
    Uuid = 2,
    Tag = 3,
    Type = 4,
    Admin = 5,
    AnyVm = 6,
    Wildcard = 7,
}

/// A hasher that passes `u64` keys through (they are already keyed hashes).
#[derive(Default, Clone, Copy)]
pub(crate) struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type PassThroughMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<PassThrough>>;

/// Rules by (service, argument, source): a request looks only at the lists
/// its service, argument and caller can match, merged in rule order.
///
/// Keys are keyed (per policy, random) hashes, so a crafted policy cannot
/// flood a bucket; every candidate is still checked against the request,
/// so a collision costs time, never correctness.
#[derive(Debug, Default)]
pub(crate) struct Index {
    hasher: RandomState,
    /// Key -> range in `rules`.
    slots: PassThroughMap<(u32, u32)>,
    /// Rule numbers, grouped by key, each group in rule order.
    rules: Vec<u32>,
}

/// splitmix64's finaliser: spreads the combined hash.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Index {
    /// Hash standing for `*` in the service or argument column.
    pub(crate) const ANY: u64 = 0x9e37_79b9_7f4a_7c15;

    /// The keyed hash of a service, argument or source value.
    pub(crate) fn hash(&self, s: &str) -> u64 {
        self.hasher.hash_one(s)
    }

    /// The slot key of a (service, argument, source) triple of hashes.
    pub(crate) fn key(svc: u64, arg: u64, kind: SourceKey, value: u64) -> u64 {
        mix(svc
            ^ arg.rotate_left(21)
            ^ value.rotate_left(42)
            ^ (kind as u64).wrapping_mul(0xd6e8_feb8_6659_fd93))
    }

    /// The rules filed under `key`, in order.
    pub(crate) fn get(&self, key: u64) -> &[u32] {
        match self.slots.get(&key) {
            Some(&(start, end)) => self
                .rules
                .get(start as usize..end as usize)
                .unwrap_or_default(),
            None => &[],
        }
    }

    fn build(rules: &[Rule]) -> Self {
        let mut idx = Index::default();
        let mut keyed: Vec<(u64, u32)> = Vec::with_capacity(rules.len());
        // Consecutive rules often share a service: hash it once.
        let mut last_svc: Option<(&str, u64)> = None;
        for (i, r) in rules.iter().enumerate() {
            let kind = match r.source.kind() {
                TokenKind::Name => SourceKey::Name,
                TokenKind::Uuid => SourceKey::Uuid,
                TokenKind::Tag => SourceKey::Tag,
                TokenKind::Type => SourceKey::Type,
                TokenKind::AdminVm => SourceKey::Admin,
                TokenKind::AnyVm => SourceKey::AnyVm,
                TokenKind::Wildcard => SourceKey::Wildcard,
                // `@dispvm:...` sources never match a calling qube.
                _ => continue,
            };
            let svc = match r.service.as_deref() {
                None => Self::ANY,
                Some(s) => match last_svc {
                    Some((ls, h)) if ls == s => h,
                    _ => {
                        let h = idx.hash(s);
                        last_svc = Some((s, h));
                        h
                    }
                },
            };
            let arg = r.argument.as_deref().map_or(Self::ANY, |a| idx.hash(a));
            let value = match kind {
                SourceKey::Name | SourceKey::Uuid | SourceKey::Tag | SourceKey::Type => {
                    idx.hash(r.source.value())
                }
                _ => 0,
            };
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            keyed.push((Self::key(svc, arg, kind, value), i));
        }
        keyed.sort_unstable();
        idx.rules = keyed.iter().map(|&(_, i)| i).collect();
        idx.slots.reserve(keyed.len() / 2);
        let mut start = 0usize;
        for w in keyed.chunk_by(|a, b| a.0 == b.0) {
            let end = start.saturating_add(w.len());
            if let Some(&(k, _)) = w.first() {
                idx.slots.insert(
                    k,
                    (
                        u32::try_from(start).unwrap_or(u32::MAX),
                        u32::try_from(end).unwrap_or(u32::MAX),
                    ),
                );
            }
            start = end;
        }
        idx
    }
}

/// A loaded qrexec policy, ready to evaluate requests.
///
/// Cheap to share between threads (`Send + Sync`); evaluation never
/// mutates it.
#[derive(Debug)]
pub struct Policy {
    pub(crate) files: Vec<Arc<str>>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) rule_file: Vec<u32>,
    /// Built on first use: loading only to validate needs none.
    index: OnceLock<Index>,
}

impl Policy {
    /// Loads every `*.policy` file of the directory `dir` (for example
    /// `/etc/qubes/policy.d`) the way qrexec does.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self, LoadError> {
        let source = DirSource::new(dir.as_ref());
        let options = LoadOptions::default();
        let loaded = Loader::new(&source, &options).load_parallel(&source)?;
        Ok(Self::from_parts(
            loaded.files,
            loaded.rules,
            loaded.rule_file,
        ))
    }

    /// Loads one file as the whole policy; its includes resolve relative to
    /// its directory.
    pub fn load_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let opts = LoadOptions {
            only_file: Some(name),
            ..LoadOptions::default()
        };
        Self::load(&DirSource::new(dir), &opts)
    }

    /// Loads from any [`Source`].
    pub fn load(source: &dyn Source, options: &LoadOptions) -> Result<Self, LoadError> {
        let loaded = Loader::new(source, options).load()?;
        Ok(Self::from_parts(
            loaded.files,
            loaded.rules,
            loaded.rule_file,
        ))
    }

    /// A policy of one in-memory file called `name` (includes are resolved
    /// among nothing, so they fail).
    pub fn from_text(name: &str, text: &str) -> Result<Self, LoadError> {
        let src = MemorySource::from_files([(name, text)]);
        let opts = LoadOptions {
            only_file: Some(name.to_owned()),
            ..LoadOptions::default()
        };
        Self::load(&src, &opts)
    }

    /// Validates the policy directory `dir` as it would be with the file
    /// `key` replaced by `content` (or removed, with `None`), without
    /// touching the disk: what `policy.Replace` / `policy.Remove` check
    /// before they write. `key` is relative to `dir` (`50-x.policy`,
    /// `include/x`).
    pub fn validate_change(
        dir: impl AsRef<Path>,
        key: &str,
        content: Option<&[u8]>,
    ) -> Result<Self, LoadError> {
        let base = DirSource::new(dir.as_ref());
        let overlay = match content {
            Some(c) => Overlay::new(&base).replace(key, c),
            None => Overlay::new(&base).remove(key),
        };
        Self::load(&overlay, &LoadOptions::default())
    }

    pub(crate) fn from_parts(files: Vec<Arc<str>>, rules: Vec<Rule>, rule_file: Vec<u32>) -> Self {
        Self {
            files,
            rules,
            rule_file,
            index: OnceLock::new(),
        }
    }

    /// The index, built on first use.
    pub(crate) fn index(&self) -> &Index {
        self.index.get_or_init(|| Index::build(&self.rules))
    }

    /// Builds the evaluation index now rather than on the first
    /// [`Policy::evaluate`] (which otherwise pays for it, about as much as
    /// loading). Loading only to validate never needs it.
    pub fn prepare(&self) -> &Self {
        self.index();
        self
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the policy has no rule (every call is denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The keys of the files loaded, in first-load order.
    pub fn files(&self) -> &[Arc<str>] {
        &self.files
    }

    /// The rule at `index` (evaluation order) with its location.
    pub fn rule(&self, index: usize) -> Option<(RuleRef, &Rule)> {
        let rule = self.rules.get(index)?;
        Some((self.rule_ref(index), rule))
    }

    /// All rules in evaluation order, with their location.
    pub fn rules(&self) -> impl ExactSizeIterator<Item = (RuleRef, &Rule)> {
        self.rules
            .iter()
            .enumerate()
            .map(|(i, r)| (self.rule_ref(i), r))
    }

    pub(crate) fn rule_ref(&self, index: usize) -> RuleRef {
        let file = self
            .rule_file
            .get(index)
            .and_then(|&f| self.files.get(f as usize))
            .cloned()
            .unwrap_or_else(|| Arc::from(""));
        RuleRef {
            index,
            file,
            line: self.rules.get(index).map_or(0, |r| r.line),
        }
    }
}
