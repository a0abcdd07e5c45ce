//! Loading a policy directory: file selection and order, includes (depth
//! first, inline), the legacy format, first error wins — iteratively, with
//! bounds on everything an attacker could grow.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::parse::{
    Action, ActionKind, DirectiveKind, ErrorKind, Format, MAX_FILE_SIZE, ParseError, Parsed, Rule,
    parse_file_line, validate_service_argument,
};
use crate::source::{EntryKind, Source, join_key};
use crate::text::{Buf, Fields, LineCursor, Text};
use crate::token::{TokenKind, VmToken};

/// Bounds on what one load may consume. Each is far above any real policy
/// and far below what would hurt dom0.
pub mod limits {
    pub use crate::parse::MAX_FILE_SIZE;
    /// Deepest nesting of `!include`/`!include-dir`/`!include-service`
    /// (the top-level file is depth 1).
    pub const MAX_INCLUDE_DEPTH: usize = 32;
    /// Total bytes read in one load, included files counted each time.
    pub const MAX_TOTAL_BYTES: usize = 64 << 20;
    /// Files opened in one load, repeats counted.
    pub const MAX_FILE_LOADS: usize = 65_536;
    /// Rules in one policy.
    pub const MAX_RULES: usize = 1 << 20;
    /// Entries in one directory.
    pub const MAX_DIR_ENTRIES: usize = 65_536;
}

use limits::*;

/// Where the R4.0 per-service policy lives (`!compat-4.0`).
pub const LEGACY_POLICY_DIR: &str = "/etc/qubes-rpc/policy";

/// Why a policy could not be loaded. qrexec refuses every call then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// The file at fault (its key: relative to the policy root, or absolute).
    pub file: Arc<str>,
    /// The 1-based line, when the error is on a line.
    pub line: Option<u32>,
    /// Category; [`ErrorKind::InvalidFilename`] is the only one that is not
    /// a syntax error in the reference's terms.
    pub kind: ErrorKind,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.escape_debug())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl LoadError {
    fn new(
        file: &Arc<str>,
        line: Option<u32>,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.clone(),
            line,
            kind,
            message: message.into(),
        }
    }

    fn from_parse(file: &Arc<str>, e: ParseError) -> Self {
        Self {
            file: file.clone(),
            line: Some(e.line),
            kind: e.kind,
            message: e.message,
        }
    }
}

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Key of the R4.0 per-service directory read by `!compat-4.0`.
    pub legacy_dir: String,
    /// Load only this top-level file (by key) instead of every `*.policy`
    /// file of the root; its name is not checked.
    pub only_file: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            legacy_dir: LEGACY_POLICY_DIR.to_owned(),
            only_file: None,
        }
    }
}

/// Whether a directory entry is a policy file the loader reads
/// (`*.policy`, not hidden). Its name may still be invalid.
pub fn is_policy_file_name(name: &str) -> bool {
    name.len() > ".policy".len() && name.ends_with(".policy") && !name.starts_with('.')
}

/// Whether a considered file name uses only `[0-9a-z_.-]`.
pub fn is_valid_file_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || matches!(b, b'_' | b'.' | b'-'))
}

/// The result of a load: rules in order and the file each came from.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) files: Vec<Arc<str>>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) rule_file: Vec<u32>,
}

impl Loaded {
    /// Reads lines of `f` until one needs the loader (a directive, an error,
    /// the end of the file); rules go straight into `self`.
    fn file_lines(&mut self, f: &mut FileFrame, fields: &mut Fields) -> Step {
        if let Some(pre) = &mut f.pre {
            let (upto, event) = match pre.events.next() {
                Some((n, e)) => (n, Some(e)),
                None => (usize::MAX, None),
            };
            let before = self.rules.len();
            let want = upto.saturating_sub(pre.taken);
            self.rules.extend(pre.rules.by_ref().take(want));
            let added = self.rules.len() - before;
            pre.taken += added;
            self.rule_file.extend(std::iter::repeat_n(f.id, added));
            if self.rules.len() > MAX_RULES {
                let line = self.rules.get(MAX_RULES).map(|r| r.line);
                return Step::Fail(LoadError::new(
                    &f.key,
                    line,
                    ErrorKind::TooLarge,
                    format!("policy has more than {MAX_RULES} rules"),
                ));
            }
            return match event {
                Some(Event::Directive(d)) => {
                    Step::Directive(d, f.key.clone(), f.format.clone(), f.base.clone())
                }
                Some(Event::Error(e)) => Step::Fail(LoadError::from_parse(&f.key, e)),
                None => Step::Pop,
            };
        }
        while let Some((lineno, line)) = f.cursor.next_fields(&f.buf, fields) {
            match parse_file_line(
                &f.buf,
                line,
                fields.of(&f.buf),
                lineno,
                &f.format,
                &mut self.rules,
            ) {
                Ok(Parsed::Nothing) => {}
                Ok(Parsed::Rule) => {
                    self.rule_file.push(f.id);
                    if self.rules.len() > MAX_RULES {
                        return Step::Fail(LoadError::new(
                            &f.key,
                            Some(lineno),
                            ErrorKind::TooLarge,
                            format!("policy has more than {MAX_RULES} rules"),
                        ));
                    }
                }
                Ok(Parsed::Directive(d)) => {
                    return Step::Directive(d, f.key.clone(), f.format.clone(), f.base.clone());
                }
                Err(e) => return Step::Fail(LoadError::from_parse(&f.key, e)),
            }
        }
        match f.error.take() {
            Some(e) => Step::Fail(LoadError::from_parse(&f.key, e)),
            None => Step::Pop,
        }
    }
}

struct FileFrame {
    key: Arc<str>,
    id: u32,
    /// The text, read line by line as the walk goes (first error wins).
    buf: Buf,
    cursor: LineCursor,
    /// An encoding error after the text in `buf`.
    error: Option<ParseError>,
    format: Format,
    /// Directory key include paths are relative to.
    base: Arc<str>,
    /// The file parsed ahead of time on another thread (then `buf` is
    /// empty and `cursor` unused).
    pre: Option<Preparsed>,
}

/// A new-format file parsed ahead of the walk: its rules, and the lines
/// that need the loader (directives, the first error) with the number of
/// rules before each.
struct Preparsed {
    /// Bytes read (for the loader's total-size limit).
    len: usize,
    rules: std::vec::IntoIter<Rule>,
    events: std::vec::IntoIter<(usize, Event)>,
    /// Rules taken so far.
    taken: usize,
}

enum Event {
    Directive(crate::parse::Directive),
    Error(ParseError),
}

impl Preparsed {
    /// Reads and parses every line of `key` (stopping at the first error).
    fn read(src: &dyn Source, key: &str) -> std::io::Result<Self> {
        let bytes = src.read(key, MAX_FILE_SIZE)?;
        let len = bytes.len();
        if len > MAX_FILE_SIZE {
            // The walk reports this when it reaches the file.
            return Err(std::io::Error::other("too large"));
        }
        let (text, error) = decode(bytes);
        let buf: Buf = Arc::new(text);
        let mut rules = Vec::with_capacity(buf.len() / 40);
        let mut events = Vec::new();
        let mut fields = Fields::new();
        let mut cursor = LineCursor::default();
        let mut failed = false;
        while let Some((lineno, line)) = cursor.next_fields(&buf, &mut fields) {
            match parse_file_line(
                &buf,
                line,
                fields.of(&buf),
                lineno,
                &Format::New,
                &mut rules,
            ) {
                Ok(Parsed::Nothing | Parsed::Rule) => {}
                Ok(Parsed::Directive(d)) => events.push((rules.len(), Event::Directive(d))),
                Err(e) => {
                    events.push((rules.len(), Event::Error(e)));
                    failed = true;
                    break;
                }
            }
        }
        if let Some(e) = error.filter(|_| !failed) {
            events.push((rules.len(), Event::Error(e)));
        }
        Ok(Self {
            len,
            rules: rules.into_iter(),
            events: events.into_iter(),
            taken: 0,
        })
    }
}

/// Files of the root directory parsed ahead on other threads, by key.
type Prefetched = std::collections::HashMap<String, Preparsed>;

type CompatEntry = (Option<Text>, Option<Text>, String);

enum Frame {
    File(FileFrame),
    /// Files of a directory (the root or `!include-dir`), new format.
    Dir {
        keys: std::vec::IntoIter<String>,
        base: Arc<str>,
        /// The `!include-dir` directive, `None` for the policy root.
        from: Option<At>,
    },
    /// `!compat-4.0`: legacy files, with implicit denies after argument-specific ones.
    Compat {
        entries: std::vec::IntoIter<CompatEntry>,
        pending_denies: Option<CompatEntry>,
        base: Arc<str>,
    },
}

enum Step {
    Directive(crate::parse::Directive, Arc<str>, Format, Arc<str>),
    Fail(LoadError),
    Open(String, Format, Arc<str>, Option<At>),
    OpenLegacy(CompatEntry, Arc<str>),
    Denies(CompatEntry),
    Pop,
}

/// Where an error about opening something is reported.
#[derive(Clone)]
struct At {
    file: Arc<str>,
    line: Option<u32>,
}

pub(crate) struct Loader<'s> {
    src: &'s dyn Source,
    opts: &'s LoadOptions,
    out: Loaded,
    ids: BTreeMap<Arc<str>, u32>,
    stack: Vec<Frame>,
    depth: usize,
    bytes: usize,
    loads: usize,
    /// Root files parsed ahead (see [`Loader::load_parallel`]).
    prefetched: Prefetched,
    /// Root files being parsed ahead by workers, by chunk, and whether the
    /// chunk's results are still to come; the walk waits for a chunk when
    /// it first needs one of its files.
    pending: Vec<(Vec<String>, bool)>,
    /// Where workers send `(chunk, results)`.
    results: Option<std::sync::mpsc::Receiver<(usize, Vec<std::io::Result<Preparsed>>)>>,
}

/// Fewest root files worth parsing on other threads.
const PARALLEL_MIN_FILES: usize = 8;
/// Most threads used to parse root files.
const PARALLEL_MAX_THREADS: usize = 4;

impl<'s> Loader<'s> {
    pub(crate) fn new(src: &'s dyn Source, opts: &'s LoadOptions) -> Self {
        Self {
            src,
            opts,
            out: Loaded::default(),
            ids: BTreeMap::new(),
            stack: Vec::new(),
            depth: 0,
            bytes: 0,
            loads: 0,
            prefetched: Prefetched::new(),
            pending: Vec::new(),
            results: None,
        }
    }

    pub(crate) fn load(mut self) -> Result<Loaded, LoadError> {
        let root: Arc<str> = Arc::from("");
        let keys = match &self.opts.only_file {
            Some(k) => vec![k.clone()],
            None => {
                let at = At {
                    file: Arc::from("."),
                    line: None,
                };
                self.policy_files("", &at)?
            }
        };
        self.stack.push(Frame::Dir {
            keys: keys.into_iter(),
            base: root,
            from: None,
        });
        self.run()?;
        Ok(self.out)
    }

    /// Like [`Loader::load`], parsing the root directory's files on up to
    /// [`PARALLEL_MAX_THREADS`] threads. The walk (includes, limits, error
    /// order) is unchanged: the first part of the files is parsed by the
    /// walk itself while workers parse the rest, and a worker's files are
    /// used when the walk reaches them. Same result as `load`, always.
    pub(crate) fn load_parallel(
        mut self,
        sync_src: &'s (dyn Source + Sync),
    ) -> Result<Loaded, LoadError> {
        if self.opts.only_file.is_some() {
            return self.load();
        }
        let at = At {
            file: Arc::from("."),
            line: None,
        };
        let keys = self.policy_files("", &at)?;
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(PARALLEL_MAX_THREADS);
        if threads < 2 || keys.len() < PARALLEL_MIN_FILES {
            return self.load();
        }
        let per = keys.len().div_ceil(threads);
        let (tx, rx) = std::sync::mpsc::channel();
        self.results = Some(rx);
        std::thread::scope(|scope| {
            for (chunk, work) in keys.chunks(per).enumerate().skip(1) {
                let tx = tx.clone();
                let work = work.to_vec();
                self.pending.resize_with(chunk, || (Vec::new(), false));
                self.pending.push((work.clone(), false));
                let spawned = std::thread::Builder::new()
                    .name("qpm-policy-load".into())
                    .spawn_scoped(scope, move || {
                        let mut total = 0usize;
                        let results = work
                            .iter()
                            .map(|k| {
                                // Past the total limit, leave the rest to the walk.
                                if total > MAX_TOTAL_BYTES {
                                    return Err(std::io::Error::other("over the total limit"));
                                }
                                let r = Preparsed::read(sync_src, k);
                                if let Ok(p) = &r {
                                    total = total.saturating_add(p.len);
                                }
                                r
                            })
                            .collect();
                        // The walk may have stopped at an error already.
                        let _ = tx.send((chunk, results));
                    });
                // Without a thread, the walk reads these files itself.
                if let Some(p) = self.pending.get_mut(chunk) {
                    p.1 = spawned.is_ok();
                }
            }
            drop(tx);
            let root: Arc<str> = Arc::from("");
            self.stack.push(Frame::Dir {
                keys: keys.into_iter(),
                base: root,
                from: None,
            });
            let r = self.run();
            // Drop the receiver so that workers of a walk that stopped early
            // finish (the scope joins them).
            self.results = None;
            r.map(|()| std::mem::take(&mut self.out))
        })
    }

    /// Takes workers' results until chunk `want` is in. A worker that
    /// failed leaves its files to the walk.
    fn receive(&mut self, want: usize) {
        let Some(rx) = &self.results else { return };
        while let Ok((chunk, results)) = rx.recv() {
            let Some((keys, waiting)) = self.pending.get_mut(chunk) else {
                continue;
            };
            *waiting = false;
            for (k, r) in keys.iter().zip(results) {
                if let Ok(p) = r {
                    self.prefetched.insert(k.clone(), p);
                }
            }
            if chunk == want {
                return;
            }
        }
        // Every worker is gone: the walk reads what is left itself.
        for (_, waiting) in &mut self.pending {
            *waiting = false;
        }
    }

    /// The policy files of directory `dir` in load order, names checked.
    fn policy_files(&self, dir: &str, at: &At) -> Result<Vec<String>, LoadError> {
        let entries = self.src.list(dir, MAX_DIR_ENTRIES).map_err(|e| {
            LoadError::new(
                &at.file,
                at.line,
                ErrorKind::Io,
                format!("cannot read directory `{}`: {e}", display_dir(dir)),
            )
        })?;
        if entries.len() > MAX_DIR_ENTRIES {
            return Err(LoadError::new(
                &at.file,
                at.line,
                ErrorKind::TooLarge,
                format!(
                    "directory `{}` has more than {MAX_DIR_ENTRIES} entries",
                    display_dir(dir)
                ),
            ));
        }
        let mut names: Vec<String> = entries
            .into_iter()
            .filter(|(n, k)| *k == EntryKind::File && is_policy_file_name(n))
            .map(|(n, _)| n)
            .collect();
        names.sort();
        if let Some(bad) = names.iter().find(|n| !is_valid_file_name(n)) {
            let key: Arc<str> = Arc::from(join_dir(dir, bad));
            return Err(LoadError::new(
                &key,
                None,
                ErrorKind::InvalidFilename,
                format!(
                    "invalid policy file name (only lowercase letters, digits, `_`, `.` and `-` are allowed): `{}`",
                    bad.escape_debug()
                ),
            ));
        }
        Ok(names.iter().map(|n| join_dir(dir, n)).collect())
    }

    fn file_id(&mut self, key: &Arc<str>) -> u32 {
        if let Some(id) = self.ids.get(key) {
            return *id;
        }
        let id = u32::try_from(self.out.files.len()).unwrap_or(u32::MAX);
        self.out.files.push(key.clone());
        self.ids.insert(key.clone(), id);
        id
    }

    fn push_rule(&mut self, rule: Rule, file: u32, at: &At) -> Result<(), LoadError> {
        if self.out.rules.len() >= MAX_RULES {
            return Err(LoadError::new(
                &at.file,
                at.line,
                ErrorKind::TooLarge,
                format!("policy has more than {MAX_RULES} rules"),
            ));
        }
        self.out.rules.push(rule);
        self.out.rule_file.push(file);
        Ok(())
    }

    fn run(&mut self) -> Result<(), LoadError> {
        let mut fields = Fields::new();
        while let Some(frame) = self.stack.last_mut() {
            let step = match frame {
                Frame::File(f) => self.out.file_lines(f, &mut fields),
                Frame::Dir { keys, base, from } => match keys.next() {
                    Some(k) => Step::Open(k, Format::New, base.clone(), from.clone()),
                    None => Step::Pop,
                },
                Frame::Compat {
                    entries,
                    pending_denies,
                    base,
                } => match pending_denies.take() {
                    Some(e) => Step::Denies(e),
                    None => match entries.next() {
                        Some(e) => {
                            if e.1.is_some() {
                                *pending_denies = Some(e.clone());
                            }
                            Step::OpenLegacy(e, base.clone())
                        }
                        None => Step::Pop,
                    },
                },
            };
            match step {
                Step::Directive(d, key, format, base) => {
                    let at = At {
                        file: key,
                        line: Some(d.line),
                    };
                    self.directive(d.kind, &format, &base, &at)?;
                }
                Step::Fail(e) => return Err(e),
                Step::Open(key, format, base, from) => {
                    let at = from.unwrap_or_else(|| At {
                        file: Arc::from(key.as_str()),
                        line: None,
                    });
                    self.open(&key, format, base, &at, true)?;
                }
                Step::OpenLegacy((service, argument, key), base) => {
                    let at = At {
                        file: Arc::from(key.as_str()),
                        line: None,
                    };
                    self.open(&key, Format::Old { service, argument }, base, &at, true)?;
                }
                Step::Denies((service, argument, key)) => {
                    let file: Arc<str> = Arc::from(key.as_str());
                    let id = self.file_id(&file);
                    let at = At { file, line: None };
                    for target in ["@anyvm", "@adminvm"] {
                        let rule = implicit_deny(service.clone(), argument.clone(), target);
                        self.push_rule(rule, id, &at)?;
                    }
                }
                Step::Pop => {
                    if let Some(Frame::File(_)) = self.stack.pop() {
                        self.depth = self.depth.saturating_sub(1);
                    }
                }
            }
        }
        Ok(())
    }

    fn resolve(
        &self,
        base: &str,
        path: &str,
        at: &At,
        kind: ErrorKind,
    ) -> Result<String, LoadError> {
        join_key(base, path).ok_or_else(|| {
            LoadError::new(
                &at.file,
                at.line,
                kind,
                format!(
                    "path leaves the policy directory: `{}`",
                    path.escape_debug()
                ),
            )
        })
    }

    fn directive(
        &mut self,
        d: DirectiveKind,
        format: &Format,
        base: &Arc<str>,
        at: &At,
    ) -> Result<(), LoadError> {
        match d {
            DirectiveKind::Include { path } => {
                let key = self.resolve(base, &path, at, ErrorKind::IncludeMissing)?;
                // In an old-format file, `!include` includes old format
                // for the same service.
                self.open(&key, format.clone(), base.clone(), at, false)
            }
            DirectiveKind::IncludeService {
                service,
                argument,
                path,
            } => {
                let key = self.resolve(base, &path, at, ErrorKind::IncludeMissing)?;
                self.open(
                    &key,
                    Format::Old { service, argument },
                    base.clone(),
                    at,
                    false,
                )
            }
            DirectiveKind::IncludeDir { path } => {
                let key = self.resolve(base, &path, at, ErrorKind::IncludeDirMissing)?;
                if self.src.kind(&key) != EntryKind::Dir {
                    return Err(LoadError::new(
                        &at.file,
                        at.line,
                        ErrorKind::IncludeDirMissing,
                        format!("!include-dir: not a directory: `{}`", path.escape_debug()),
                    ));
                }
                let keys = self.policy_files(&key, at)?;
                self.stack.push(Frame::Dir {
                    keys: keys.into_iter(),
                    base: base.clone(),
                    from: Some(at.clone()),
                });
                Ok(())
            }
            DirectiveKind::Compat40 => {
                if self.stack.iter().any(|f| matches!(f, Frame::Compat { .. })) {
                    return Err(LoadError::new(
                        &at.file,
                        at.line,
                        ErrorKind::InvalidDirective,
                        "!compat-4.0 is not recursive",
                    ));
                }
                let entries = self.legacy_entries(at)?;
                self.stack.push(Frame::Compat {
                    entries: entries.into_iter(),
                    pending_denies: None,
                    base: Arc::from(self.opts.legacy_dir.as_str()),
                });
                Ok(())
            }
        }
    }

    /// The legacy per-service files, in the order `!compat-4.0` includes them.
    fn legacy_entries(&self, at: &At) -> Result<Vec<CompatEntry>, LoadError> {
        let dir = self.opts.legacy_dir.as_str();
        let entries = self.src.list(dir, MAX_DIR_ENTRIES).map_err(|e| {
            LoadError::new(
                &at.file,
                at.line,
                ErrorKind::Io,
                format!("!compat-4.0: cannot read the legacy policy directory `{dir}`: {e}"),
            )
        })?;
        if entries.len() > MAX_DIR_ENTRIES {
            return Err(LoadError::new(
                &at.file,
                at.line,
                ErrorKind::TooLarge,
                format!("directory `{dir}` has more than {MAX_DIR_ENTRIES} entries"),
            ));
        }
        // (service, argument) -> name; the argument of `SERVICE` alone is `*`,
        // which sorts before every `+...` argument.
        let mut files: BTreeMap<(String, String), String> = BTreeMap::new();
        for (name, kind) in entries {
            let name_ok = name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_'));
            if kind != EntryKind::File || !name_ok {
                continue;
            }
            let (service, argument) = match name.split_once('+') {
                Some((s, a)) => (s.to_owned(), format!("+{a}")),
                None => (name.clone(), "*".to_owned()),
            };
            files.insert((service, argument), name);
        }
        let mut out = Vec::with_capacity(files.len());
        for ((service, argument), name) in files {
            let line = at.line.unwrap_or(0);
            let (service, argument) =
                validate_service_argument(Text::from(service), Text::from(argument), line)
                    .map_err(|e| LoadError {
                        message: format!(
                            "!compat-4.0: legacy file `{}`: {}",
                            name.escape_debug(),
                            e.message
                        ),
                        ..LoadError::from_parse(&at.file, e)
                    })?;
            out.push((service, argument, join_dir(dir, &name)));
        }
        Ok(out)
    }

    /// Reads, parses and pushes the file at `key`. `top` is set for files
    /// selected from a directory listing (errors point at the file itself);
    /// otherwise `at` is the directive that includes it.
    fn open(
        &mut self,
        key: &str,
        format: Format,
        base: Arc<str>,
        at: &At,
        top: bool,
    ) -> Result<(), LoadError> {
        let keyarc: Arc<str> = Arc::from(key);
        if !top && self.src.kind(key) != EntryKind::File {
            return Err(LoadError::new(
                &at.file,
                at.line,
                ErrorKind::IncludeMissing,
                format!(
                    "included file does not exist or is not a regular file: `{}`",
                    key.escape_debug()
                ),
            ));
        }
        if self
            .stack
            .iter()
            .any(|f| matches!(f, Frame::File(ff) if *ff.key == *key))
        {
            let mut chain: Vec<&str> = self
                .stack
                .iter()
                .filter_map(|f| match f {
                    Frame::File(ff) => Some(&*ff.key),
                    _ => None,
                })
                .skip_while(|k| *k != key)
                .collect();
            chain.push(key);
            return Err(LoadError::new(
                &at.file,
                at.line,
                ErrorKind::IncludeCycle,
                format!("include cycle: {}", chain.join(" -> ")),
            ));
        }
        if self.depth >= MAX_INCLUDE_DEPTH {
            return Err(LoadError::new(
                &at.file,
                at.line,
                ErrorKind::IncludeDepth,
                format!("includes nested deeper than {MAX_INCLUDE_DEPTH} levels"),
            ));
        }
        self.loads = self.loads.saturating_add(1);
        if self.loads > MAX_FILE_LOADS {
            return Err(LoadError::new(
                &at.file,
                at.line,
                ErrorKind::TooLarge,
                format!("policy opens more than {MAX_FILE_LOADS} files"),
            ));
        }
        if top && matches!(format, Format::New) {
            if let Some(want) = self
                .pending
                .iter()
                .position(|(keys, waiting)| *waiting && keys.iter().any(|k| k == key))
            {
                self.receive(want);
            }
            if let Some(pre) = self.prefetched.remove(key) {
                self.bytes = self.bytes.saturating_add(pre.len);
                if self.bytes > MAX_TOTAL_BYTES {
                    return Err(LoadError::new(
                        &at.file,
                        at.line,
                        ErrorKind::TooLarge,
                        format!("policy is larger than {MAX_TOTAL_BYTES} bytes in total"),
                    ));
                }
                let id = self.file_id(&keyarc);
                self.depth = self.depth.saturating_add(1);
                self.stack.push(Frame::File(FileFrame {
                    key: keyarc,
                    id,
                    buf: Arc::default(),
                    cursor: LineCursor::default(),
                    error: None,
                    format,
                    base,
                    pre: Some(pre),
                }));
                return Ok(());
            }
        }
        let bytes = self.src.read(key, MAX_FILE_SIZE).map_err(|e| {
            LoadError::new(
                &at.file,
                at.line,
                if top {
                    ErrorKind::Io
                } else {
                    ErrorKind::IncludeMissing
                },
                format!("cannot read `{}`: {e}", key.escape_debug()),
            )
        })?;
        if bytes.len() > MAX_FILE_SIZE {
            return Err(LoadError::new(
                &keyarc,
                None,
                ErrorKind::TooLarge,
                format!("file is larger than {MAX_FILE_SIZE} bytes"),
            ));
        }
        self.bytes = self.bytes.saturating_add(bytes.len());
        if self.bytes > MAX_TOTAL_BYTES {
            return Err(LoadError::new(
                &at.file,
                at.line,
                ErrorKind::TooLarge,
                format!("policy is larger than {MAX_TOTAL_BYTES} bytes in total"),
            ));
        }
        let (text, error) = decode(bytes);
        let id = self.file_id(&keyarc);
        self.depth = self.depth.saturating_add(1);
        // Room for this file's rules (rules are about 40 bytes or more).
        let room = (text.len() / 40).min(MAX_RULES);
        self.out.rules.reserve(room);
        self.out.rule_file.reserve(room);
        self.stack.push(Frame::File(FileFrame {
            key: keyarc,
            id,
            buf: Arc::new(text),
            cursor: LineCursor::default(),
            error,
            format,
            base,
            pre: None,
        }));
        Ok(())
    }
}

/// The UTF-8 text of a file up to the line holding its first invalid byte,
/// and an error for that line.
fn decode(bytes: Vec<u8>) -> (String, Option<ParseError>) {
    match String::from_utf8(bytes) {
        Ok(t) => (t, None),
        Err(e) => {
            let upto = e.utf8_error().valid_up_to();
            let mut bytes = e.into_bytes();
            bytes.truncate(upto);
            let valid = String::from_utf8(bytes).unwrap_or_default();
            let cut = valid.rfind(['\n', '\r']).map_or(0, |p| p.saturating_add(1));
            let mut line = crate::text::Lines::new(&valid).count();
            if valid.is_empty() || valid.ends_with(['\n', '\r']) {
                line = line.saturating_add(1);
            }
            let mut valid = valid;
            valid.truncate(cut);
            (
                valid,
                Some(ParseError::new(
                    u32::try_from(line).unwrap_or(u32::MAX),
                    ErrorKind::Encoding,
                    "file is not valid UTF-8",
                )),
            )
        }
    }
}

fn join_dir(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn display_dir(dir: &str) -> &str {
    if dir.is_empty() { "." } else { dir }
}

fn implicit_deny(service: Option<Text>, argument: Option<Text>, target: &str) -> Rule {
    let target_kind = if target == "@adminvm" {
        TokenKind::AdminVm
    } else {
        TokenKind::AnyVm
    };
    Rule {
        line: 0,
        service,
        argument,
        source: VmToken::new_unchecked("@anyvm", TokenKind::AnyVm),
        target: VmToken::new_unchecked(target, target_kind),
        action: Action::new(ActionKind::Deny),
    }
}
