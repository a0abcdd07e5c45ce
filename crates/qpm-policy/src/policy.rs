//! A loaded policy: rules in evaluation order, the file each came from, and
//! an index by service, argument and source.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

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

/// Rule indices of one (service, argument) group, split by the kind of
/// source column so that a request only looks at rules its source can match.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    pub(crate) by_name: HashMap<Box<str>, Vec<u32>>,
    pub(crate) by_uuid: HashMap<Box<str>, Vec<u32>>,
    pub(crate) by_tag: HashMap<Box<str>, Vec<u32>>,
    pub(crate) by_type: HashMap<Box<str>, Vec<u32>>,
    pub(crate) admin: Vec<u32>,
    pub(crate) anyvm: Vec<u32>,
    pub(crate) wildcard: Vec<u32>,
}

impl Bucket {
    fn add(&mut self, i: u32, rule: &Rule) {
        let v = rule.source.value();
        match rule.source.kind() {
            TokenKind::Name => self.by_name.entry(v.into()).or_default().push(i),
            TokenKind::Uuid => self.by_uuid.entry(v.into()).or_default().push(i),
            TokenKind::Tag => self.by_tag.entry(v.into()).or_default().push(i),
            TokenKind::Type => self.by_type.entry(v.into()).or_default().push(i),
            TokenKind::AdminVm => self.admin.push(i),
            TokenKind::AnyVm => self.anyvm.push(i),
            TokenKind::Wildcard => self.wildcard.push(i),
            // `@dispvm:...` sources never match a calling qube.
            _ => {}
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct ServiceIndex {
    pub(crate) by_arg: HashMap<Box<str>, Bucket>,
    pub(crate) any_arg: Bucket,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    pub(crate) by_service: HashMap<Box<str>, ServiceIndex>,
    pub(crate) any_service: Bucket,
}

impl Index {
    fn build(rules: &[Rule]) -> Self {
        let mut idx = Index::default();
        for (i, r) in rules.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            match (&r.service, &r.argument) {
                (None, _) => idx.any_service.add(i, r),
                (Some(s), a) => {
                    let si = idx.by_service.entry(s.clone()).or_default();
                    match a {
                        Some(a) => si.by_arg.entry(a.clone()).or_default().add(i, r),
                        None => si.any_arg.add(i, r),
                    }
                }
            }
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
    pub(crate) index: Index,
}

impl Policy {
    /// Loads every `*.policy` file of the directory `dir` (for example
    /// `/etc/qubes/policy.d`) the way qrexec does.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self, LoadError> {
        Self::load(&DirSource::new(dir.as_ref()), &LoadOptions::default())
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
        let index = Index::build(&rules);
        Self {
            files,
            rules,
            rule_file,
            index,
        }
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
