//! The package manifest (`qpm.toml`): parsing and validation.
//!
//! Parsing is strict: unknown keys are rejected, every value is checked
//! against the rules qubesd will apply, and every error names the file, the
//! line and column, and the field (`qubes.sd-app.netvm`). All errors of a
//! manifest are reported at once. See `docs/package-format.md` for the
//! author's reference.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::names;

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;
/// Most qubes one package may declare.
pub const MAX_QUBES: usize = 64;
/// Most policy source files one package may have.
pub const MAX_POLICY_FILES: usize = 16;
/// Largest combined policy, in bytes (the gatekeeper's per-file limit).
pub const MAX_POLICY_BYTES: usize = 65536;
/// Most `[[files]]` entries.
pub const MAX_FILES: usize = 1024;
/// Most firewall rules per qube.
pub const MAX_FIREWALL_RULES: usize = 256;

/// The manifest's file name inside a package directory.
pub const MANIFEST_NAME: &str = "qpm.toml";

/// One problem in a manifest, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The manifest (or policy) file.
    pub file: PathBuf,
    /// 1-based line, 0 when the whole file is concerned.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub col: usize,
    /// Dotted path of the field, e.g. `qubes.sd-app.netvm`; empty for syntax errors.
    pub field: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.col > 0 {
                write!(f, ":{}", self.col)?;
            }
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": `{}`: {}", self.field, self.message)
        }
    }
}

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The manifest or a file it names could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// One or more problems in the manifest; each names its position.
    #[error("{}", display_all(.0))]
    Invalid(Vec<Diagnostic>),
}

fn display_all(d: &[Diagnostic]) -> String {
    let mut s = String::new();
    for (i, d) in d.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(&d.to_string());
    }
    s
}

/// The class of a qube, as the Admin API names it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
pub enum QubeClass {
    /// A qube whose root comes from a template.
    AppVM,
    /// A template: other qubes' root volume comes from it.
    TemplateVM,
    /// A qube with its own root volume.
    StandaloneVM,
    /// A named disposable based on a disposable template.
    DispVM,
}

impl QubeClass {
    /// The class name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AppVM => "AppVM",
            Self::TemplateVM => "TemplateVM",
            Self::StandaloneVM => "StandaloneVM",
            Self::DispVM => "DispVM",
        }
    }
}

impl fmt::Display for QubeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reference to a qube in a VM-valued setting (`netvm`, `default_dispvm`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum QubeRef {
    /// Explicitly none (empty value on the wire).
    None,
    /// The system default (the property is reset).
    Default,
    /// A qube by name: one of the package's own, or an existing one.
    Name(String),
}

impl QubeRef {
    fn parse(s: &str) -> Self {
        match s {
            "none" | "" => Self::None,
            "default" => Self::Default,
            n => Self::Name(n.to_owned()),
        }
    }

    /// The qube named, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Name(n) => Some(n),
            _ => None,
        }
    }
}

/// A property value as the manifest gives it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(untagged)]
pub enum PropValue {
    /// `true` / `false`.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// Text.
    Str(String),
}

impl PropValue {
    /// The value as qubesd prints it (and accepts it in `property.Set`).
    pub fn to_wire(&self) -> String {
        match self {
            Self::Bool(true) => "True".to_owned(),
            Self::Bool(false) => "False".to_owned(),
            Self::Int(i) => i.to_string(),
            Self::Str(s) => s.clone(),
        }
    }
}

/// The type of a settable property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropType {
    /// `type=bool`.
    Bool,
    /// `type=int`, with an inclusive range.
    Int(i64, i64),
    /// `type=str`, with the values allowed (empty: any printable ASCII).
    Str(&'static [&'static str]),
}

/// Properties a package may set in `[qubes.NAME.properties]`, their type,
/// and whether qubesd refuses to change them while the qube runs.
///
/// VM-valued properties (`template`, `netvm`, `default_dispvm`) and the
/// label have their own keys, so they are not in this table.
pub const SETTABLE_PROPERTIES: &[(&str, PropType, bool)] = &[
    ("autostart", PropType::Bool, false),
    ("debug", PropType::Bool, false),
    ("default_user", PropType::Str(&[]), false),
    ("include_in_backups", PropType::Bool, false),
    ("kernel", PropType::Str(&[]), true),
    ("kernelopts", PropType::Str(&[]), true),
    ("maxmem", PropType::Int(0, 1 << 40), false),
    ("memory", PropType::Int(0, 1 << 40), false),
    ("provides_network", PropType::Bool, true),
    ("qrexec_timeout", PropType::Int(0, 86_400), false),
    ("shutdown_timeout", PropType::Int(0, 86_400), false),
    ("vcpus", PropType::Int(1, 1024), true),
    ("virt_mode", PropType::Str(&["hvm", "pv", "pvh"]), true),
    ("devices_denied", PropType::Str(&[]), false),
];

/// Looks up a settable property.
pub fn settable_property(name: &str) -> Option<(PropType, bool)> {
    SETTABLE_PROPERTIES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, t, h)| (*t, *h))
}

/// One firewall rule, in the Admin API's `key=value` form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct FirewallRule {
    /// `accept` or `drop`.
    pub action: String,
    /// `tcp`, `udp` or `icmp`.
    pub proto: Option<String>,
    /// Host name, IP address or network (`10.0.0.0/8`).
    pub dsthost: Option<String>,
    /// Port or range `N-M`.
    pub dstports: Option<String>,
    /// ICMP type.
    pub icmptype: Option<u8>,
    /// `dns`.
    pub specialtarget: Option<String>,
    /// Free text, shown by Qubes tools.
    pub comment: Option<String>,
}

impl FirewallRule {
    /// The rule as one line of `admin.vm.firewall.Set` / `Get`.
    pub fn to_wire(&self) -> String {
        let mut s = format!("action={}", self.action);
        if let Some(p) = &self.proto {
            s.push_str(&format!(" proto={p}"));
        }
        if let Some(h) = &self.dsthost {
            s.push_str(&format!(" dsthost={h}"));
        }
        if let Some(p) = &self.dstports {
            // qubesd always prints a range.
            if p.contains('-') {
                s.push_str(&format!(" dstports={p}"));
            } else {
                s.push_str(&format!(" dstports={p}-{p}"));
            }
        }
        if let Some(t) = self.icmptype {
            s.push_str(&format!(" icmptype={t}"));
        }
        if let Some(t) = &self.specialtarget {
            s.push_str(&format!(" specialtarget={t}"));
        }
        if let Some(c) = &self.comment {
            s.push_str(&format!(" comment={c}"));
        }
        s
    }
}

/// One qube the package creates and manages.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Qube {
    /// Its name.
    pub name: String,
    /// Its class.
    pub class: QubeClass,
    /// AppVM / DispVM: the template (or disposable template) it is based on.
    pub template: Option<String>,
    /// TemplateVM / StandaloneVM: the existing template whose volumes are cloned.
    pub clone: Option<String>,
    /// Label name.
    pub label: String,
    /// `netvm`: `None` means "leave as qubesd sets it".
    pub netvm: Option<QubeRef>,
    /// `default_dispvm`.
    pub default_dispvm: Option<QubeRef>,
    /// A disposable template (`template_for_dispvms`).
    pub disposable_template: bool,
    /// Other properties, by name.
    pub properties: BTreeMap<String, PropValue>,
    /// Features, by name (booleans already mapped to `1` / empty).
    pub features: BTreeMap<String, String>,
    /// Tags the package puts on the qube (besides its ownership tags).
    pub tags: BTreeSet<String>,
    /// Volume sizes in bytes (`private`, `root`).
    pub volumes: BTreeMap<String, u64>,
    /// Firewall rules; `None` leaves the firewall alone.
    pub firewall: Option<Vec<FirewallRule>>,
    /// Whether the qube holds user data: kept on removal unless purged.
    pub data: bool,
    /// Line of its table in the manifest, for messages.
    #[serde(skip)]
    pub line: usize,
}

/// A file to put into a qube after creation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileEntry {
    /// Target qube (one of the package's own).
    pub qube: String,
    /// Path of the source, relative to the package directory.
    pub source: PathBuf,
    /// Absolute destination path inside the qube.
    pub path: String,
    /// Mode bits.
    pub mode: u32,
}

/// A requirement on another package.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Requirement {
    /// Package name.
    pub name: String,
    /// Versions accepted.
    pub version: semver::VersionReq,
}

/// The whole, validated package manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Manifest {
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: semver::Version,
    /// One line saying what it is.
    pub summary: String,
    /// Longer text.
    pub description: Option<String>,
    /// Other packages it needs.
    pub requires: Vec<Requirement>,
    /// Qubes the package creates, in declaration-independent (name) order.
    pub qubes: BTreeMap<String, Qube>,
    /// Policy source files (relative to the package directory), in order.
    pub policy_files: Vec<PathBuf>,
    /// Files to put into qubes.
    pub files: Vec<FileEntry>,
    /// Qubes renamed since earlier versions: old name to new name.
    pub renamed: BTreeMap<String, String>,
    /// Upgrade notes shown in the plan.
    pub upgrade_notes: Option<String>,
}

impl Manifest {
    /// Qubes the package refers to but does not create (templates to
    /// clone or base on, netvms, ...), each with the field that names it.
    pub fn external_refs(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut add = |name: &str, field: String| {
            if !self.qubes.contains_key(name) {
                out.entry(name.to_owned()).or_default().push(field);
            }
        };
        for q in self.qubes.values() {
            if let Some(t) = &q.template {
                add(t, format!("qubes.{}.template", q.name));
            }
            if let Some(t) = &q.clone {
                add(t, format!("qubes.{}.clone", q.name));
            }
            if let Some(n) = q.netvm.as_ref().and_then(QubeRef::name) {
                add(n, format!("qubes.{}.netvm", q.name));
            }
            if let Some(n) = q.default_dispvm.as_ref().and_then(QubeRef::name) {
                add(n, format!("qubes.{}.default_dispvm", q.name));
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Raw (serde) layer

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    package: Spanned<RawPackage>,
    #[serde(default)]
    qubes: BTreeMap<Spanned<String>, Spanned<RawQube>>,
    #[serde(default)]
    policy: Option<Spanned<RawPolicy>>,
    #[serde(default)]
    files: Vec<Spanned<RawFile>>,
    #[serde(default)]
    upgrade: Option<Spanned<RawUpgrade>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    name: Spanned<String>,
    version: Spanned<String>,
    summary: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    requires: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQube {
    class: Spanned<String>,
    #[serde(default)]
    template: Option<Spanned<String>>,
    #[serde(default)]
    clone: Option<Spanned<String>>,
    label: Spanned<String>,
    #[serde(default)]
    netvm: Option<Spanned<String>>,
    #[serde(default)]
    default_dispvm: Option<Spanned<String>>,
    #[serde(default)]
    disposable_template: bool,
    #[serde(default)]
    properties: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    features: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    services: BTreeMap<Spanned<String>, Spanned<bool>>,
    #[serde(default)]
    tags: Vec<Spanned<String>>,
    #[serde(default)]
    volumes: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    menu_items: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    firewall: Option<Vec<Spanned<RawFirewallRule>>>,
    #[serde(default)]
    data: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFirewallRule {
    action: String,
    #[serde(default)]
    proto: Option<String>,
    #[serde(default)]
    dsthost: Option<String>,
    #[serde(default)]
    dstports: Option<toml::Value>,
    #[serde(default)]
    icmptype: Option<u8>,
    #[serde(default)]
    specialtarget: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    files: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    qube: Spanned<String>,
    source: Spanned<String>,
    path: Spanned<String>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpgrade {
    #[serde(default)]
    renamed: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    notes: Option<String>,
}

// ---------------------------------------------------------------------------
// Loading

/// Byte offset to 1-based (line, column).
struct Lines<'a> {
    text: &'a str,
}

impl Lines<'_> {
    fn pos(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let col = before.rfind('\n').map_or(before.chars().count(), |i| {
            before.get(i + 1..).unwrap_or("").chars().count()
        }) + 1;
        (line, col)
    }
}

struct Checker<'a> {
    file: &'a Path,
    lines: Lines<'a>,
    diags: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn err(
        &mut self,
        span: std::ops::Range<usize>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) {
        let (line, col) = self.lines.pos(span.start);
        self.diags.push(Diagnostic {
            file: self.file.to_owned(),
            line,
            col,
            field: field.into(),
            message: msg.into(),
        });
    }
}

/// Reads and validates `DIR/qpm.toml` of a package directory, and checks
/// that the files it names exist inside the directory.
pub fn load_dir(dir: &Path) -> Result<Manifest, ManifestError> {
    let path = dir.join(MANIFEST_NAME);
    let text = read_bounded(&path, MAX_MANIFEST_BYTES)?;
    let m = parse(&path, &text)?;
    let mut diags = Vec::new();
    for f in &m.policy_files {
        check_inside(dir, f, &path, "policy.files", &mut diags);
    }
    for f in &m.files {
        check_inside(dir, &f.source, &path, "files.source", &mut diags);
    }
    if diags.is_empty() {
        Ok(m)
    } else {
        Err(ManifestError::Invalid(diags))
    }
}

fn check_inside(dir: &Path, rel: &Path, manifest: &Path, field: &str, diags: &mut Vec<Diagnostic>) {
    let full = dir.join(rel);
    match std::fs::symlink_metadata(&full) {
        Ok(md) if md.is_file() => {}
        Ok(_) => diags.push(Diagnostic {
            file: manifest.to_owned(),
            line: 0,
            col: 0,
            field: field.to_owned(),
            message: format!("`{}` is not a regular file", rel.display()),
        }),
        Err(e) => diags.push(Diagnostic {
            file: manifest.to_owned(),
            line: 0,
            col: 0,
            field: field.to_owned(),
            message: format!("`{}`: {e}", rel.display()),
        }),
    }
}

/// Reads a whole file, refusing anything larger than `limit` bytes.
pub(crate) fn read_bounded(path: &Path, limit: usize) -> Result<String, ManifestError> {
    use std::io::Read;
    let io = |source| ManifestError::Io {
        path: path.to_owned(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    f.take(limit as u64 + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() > limit {
        return Err(ManifestError::Invalid(vec![Diagnostic {
            file: path.to_owned(),
            line: 0,
            col: 0,
            field: String::new(),
            message: format!("file is larger than the limit of {limit} bytes"),
        }]));
    }
    String::from_utf8(buf).map_err(|e| {
        ManifestError::Invalid(vec![Diagnostic {
            file: path.to_owned(),
            line: 0,
            col: 0,
            field: String::new(),
            message: format!("not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()),
        }])
    })
}

/// Parses and validates manifest text; `file` is used in messages only.
pub fn parse(file: &Path, text: &str) -> Result<Manifest, ManifestError> {
    let mut ck = Checker {
        file,
        lines: Lines { text },
        diags: Vec::new(),
    };
    if text.len() > MAX_MANIFEST_BYTES {
        ck.err(
            0..0,
            "",
            format!("manifest is larger than {MAX_MANIFEST_BYTES} bytes"),
        );
        return Err(ManifestError::Invalid(ck.diags));
    }
    let raw: RawManifest = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim_end().to_owned();
            ck.err(span, "", msg);
            return Err(ManifestError::Invalid(ck.diags));
        }
    };
    let m = validate(&mut ck, raw);
    if ck.diags.is_empty() {
        Ok(m)
    } else {
        Err(ManifestError::Invalid(ck.diags))
    }
}

fn validate(ck: &mut Checker<'_>, raw: RawManifest) -> Manifest {
    let pkg = raw.package.into_inner();
    if let Some(e) = names::package_name_error(pkg.name.get_ref()) {
        ck.err(pkg.name.span(), "package.name", e);
    }
    let version = match semver::Version::parse(pkg.version.get_ref()) {
        Ok(v) => v,
        Err(e) => {
            ck.err(
                pkg.version.span(),
                "package.version",
                format!("not a version like `1.2.0`: {e}"),
            );
            semver::Version::new(0, 0, 0)
        }
    };
    let summary = pkg.summary.get_ref().trim().to_owned();
    if summary.is_empty() || summary.len() > 200 || summary.contains('\n') {
        ck.err(
            pkg.summary.span(),
            "package.summary",
            "a summary is one line of 1 to 200 characters",
        );
    }
    let mut requires = Vec::new();
    for r in &pkg.requires {
        match parse_requirement(r.get_ref()) {
            Ok(req) => requires.push(req),
            Err(e) => ck.err(r.span(), "package.requires", e),
        }
    }

    if raw.qubes.len() > MAX_QUBES {
        ck.err(
            0..0,
            "qubes",
            format!("a package may declare at most {MAX_QUBES} qubes"),
        );
    }
    let own: BTreeSet<String> = raw.qubes.keys().map(|k| k.get_ref().clone()).collect();
    let mut qubes = BTreeMap::new();
    for (name, q) in raw.qubes {
        let span = q.span();
        let qube = validate_qube(ck, &name, q.into_inner(), &own);
        let mut qube = qube;
        qube.line = ck.lines.pos(span.start).0;
        qubes.insert(name.into_inner(), qube);
    }
    cross_checks(ck, &qubes);

    let policy_files = match raw.policy {
        Some(p) => {
            let p = p.into_inner();
            if p.files.len() > MAX_POLICY_FILES {
                ck.err(
                    0..0,
                    "policy.files",
                    format!("at most {MAX_POLICY_FILES} policy files"),
                );
            }
            p.files
                .iter()
                .filter_map(|f| match relative_path(f.get_ref()) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        ck.err(f.span(), "policy.files", e);
                        None
                    }
                })
                .collect()
        }
        None => Vec::new(),
    };

    if raw.files.len() > MAX_FILES {
        ck.err(0..0, "files", format!("at most {MAX_FILES} files"));
    }
    let mut files = Vec::new();
    for f in raw.files {
        let f = f.into_inner();
        if !own.contains(f.qube.get_ref()) {
            ck.err(
                f.qube.span(),
                "files.qube",
                format!("`{}` is not one of this package's qubes", f.qube.get_ref()),
            );
        }
        let source = match relative_path(f.source.get_ref()) {
            Ok(p) => p,
            Err(e) => {
                ck.err(f.source.span(), "files.source", e);
                PathBuf::new()
            }
        };
        let path = f.path.get_ref();
        if !path.starts_with('/')
            || path.split('/').any(|c| c == ".." || c == ".")
            || path.contains('\0')
            || path.ends_with('/')
        {
            ck.err(
                f.path.span(),
                "files.path",
                "an absolute file path without `.` or `..` components",
            );
        }
        let mode = match &f.mode {
            None => 0o644,
            Some(m) => match u32::from_str_radix(m.get_ref(), 8) {
                Ok(v) if v <= 0o777 => v,
                _ => {
                    ck.err(
                        m.span(),
                        "files.mode",
                        "an octal mode such as `0644` (no setuid, setgid or sticky bits)",
                    );
                    0o644
                }
            },
        };
        files.push(FileEntry {
            qube: f.qube.into_inner(),
            source,
            path: path.clone(),
            mode,
        });
    }

    let (renamed, upgrade_notes) = match raw.upgrade {
        Some(u) => {
            let u = u.into_inner();
            let mut renamed = BTreeMap::new();
            for (old, new) in u.renamed {
                if let Some(e) = names::qube_name_error(old.get_ref()) {
                    ck.err(old.span(), "upgrade.renamed", e);
                }
                if !own.contains(new.get_ref()) {
                    ck.err(
                        new.span(),
                        "upgrade.renamed",
                        format!("`{}` is not one of this package's qubes", new.get_ref()),
                    );
                }
                if own.contains(old.get_ref()) {
                    ck.err(
                        old.span(),
                        "upgrade.renamed",
                        format!("`{}` is still a qube of this package", old.get_ref()),
                    );
                }
                renamed.insert(old.into_inner(), new.into_inner());
            }
            (renamed, u.notes)
        }
        None => (BTreeMap::new(), None),
    };

    Manifest {
        name: pkg.name.into_inner(),
        version,
        summary,
        description: pkg.description,
        requires,
        qubes,
        policy_files,
        files,
        renamed,
        upgrade_notes,
    }
}

fn parse_requirement(s: &str) -> Result<Requirement, String> {
    let s = s.trim();
    let (name, req) = match s.find(|c: char| c.is_whitespace() || "<>=^~".contains(c)) {
        Some(i) => (s.get(..i).unwrap_or(""), s.get(i..).unwrap_or("").trim()),
        None => (s, "*"),
    };
    if let Some(e) = names::package_name_error(name) {
        return Err(format!("`{s}`: {e}"));
    }
    let version = semver::VersionReq::parse(if req.is_empty() { "*" } else { req })
        .map_err(|e| format!("`{s}`: not a version requirement such as `>= 1.2`: {e}"))?;
    Ok(Requirement {
        name: name.to_owned(),
        version,
    })
}

/// A path inside the package: relative, normal components only.
fn relative_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty()
        || s.starts_with('/')
        || s.contains('\0')
        || s.contains('\\')
        || s.split('/').any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "`{s}` must be a relative path inside the package, without `.` or `..`"
        ));
    }
    Ok(PathBuf::from(s))
}

fn validate_qube(
    ck: &mut Checker<'_>,
    name: &Spanned<String>,
    q: RawQube,
    own: &BTreeSet<String>,
) -> Qube {
    let n = name.get_ref();
    let field = |f: &str| format!("qubes.{n}.{f}");
    if let Some(e) = names::qube_name_error(n) {
        ck.err(name.span(), format!("qubes.{n}"), e);
    }
    if names::is_dom0(n) {
        ck.err(
            name.span(),
            format!("qubes.{n}"),
            "a package cannot declare dom0",
        );
    }
    let class = match q.class.get_ref().as_str() {
        "AppVM" => QubeClass::AppVM,
        "TemplateVM" => QubeClass::TemplateVM,
        "StandaloneVM" => QubeClass::StandaloneVM,
        "DispVM" => QubeClass::DispVM,
        other => {
            ck.err(
                q.class.span(),
                field("class"),
                format!("unknown class `{other}`: use AppVM, TemplateVM, StandaloneVM or DispVM"),
            );
            QubeClass::AppVM
        }
    };
    let check_ref = |ck: &mut Checker<'_>, v: &Spanned<String>, f: &str, allow_special: bool| {
        let s = v.get_ref();
        if allow_special && matches!(s.as_str(), "none" | "default" | "") {
            return;
        }
        if names::is_dom0(s) {
            ck.err(v.span(), field(f), "dom0 cannot be named here");
        } else if let Some(e) = names::qube_name_error(s) {
            ck.err(v.span(), field(f), e);
        }
    };
    match class {
        QubeClass::AppVM | QubeClass::DispVM => {
            match &q.template {
                Some(t) => check_ref(ck, t, "template", false),
                None => ck.err(
                    q.class.span(),
                    field("template"),
                    format!("a {class} needs `template`"),
                ),
            }
            if let Some(c) = &q.clone {
                ck.err(c.span(), field("clone"), format!("a {class} is based on a template; `clone` is for TemplateVM and StandaloneVM"));
            }
        }
        QubeClass::TemplateVM | QubeClass::StandaloneVM => {
            match &q.clone {
                Some(c) => check_ref(ck, c, "clone", false),
                None => ck.err(
                    q.class.span(),
                    field("clone"),
                    format!("a {class} needs `clone`: the existing template it is copied from"),
                ),
            }
            if let Some(t) = &q.template {
                ck.err(
                    t.span(),
                    field("template"),
                    format!("a {class} has no template; use `clone`"),
                );
            }
        }
    }
    if let Some(e) = names::label_error(q.label.get_ref()) {
        ck.err(q.label.span(), field("label"), e);
    }
    if let Some(v) = &q.netvm {
        check_ref(ck, v, "netvm", true);
    }
    if let Some(v) = &q.default_dispvm {
        check_ref(ck, v, "default_dispvm", true);
    }
    if q.disposable_template && !matches!(class, QubeClass::AppVM | QubeClass::StandaloneVM) {
        ck.err(
            q.class.span(),
            field("disposable_template"),
            "only an AppVM or StandaloneVM can be a disposable template",
        );
    }

    let mut properties = BTreeMap::new();
    for (k, v) in &q.properties {
        let key = k.get_ref();
        let f = field(&format!("properties.{key}"));
        if matches!(
            key.as_str(),
            "label" | "template" | "netvm" | "default_dispvm" | "template_for_dispvms"
        ) {
            ck.err(
                k.span(),
                f,
                format!("set `{key}` with its own key in the qube's table, not under `properties`"),
            );
            continue;
        }
        let Some((ty, _)) = settable_property(key) else {
            let known: Vec<&str> = SETTABLE_PROPERTIES.iter().map(|(n, _, _)| *n).collect();
            ck.err(
                k.span(),
                f,
                format!(
                    "unknown or read-only property `{key}`; settable: {}",
                    known.join(", ")
                ),
            );
            continue;
        };
        match (ty, v.get_ref()) {
            (PropType::Bool, toml::Value::Boolean(b)) => {
                properties.insert(key.clone(), PropValue::Bool(*b));
            }
            (PropType::Int(lo, hi), toml::Value::Integer(i)) if (lo..=hi).contains(i) => {
                properties.insert(key.clone(), PropValue::Int(*i));
            }
            (PropType::Int(lo, hi), _) => ck.err(
                v.span(),
                f,
                format!("expected a whole number from {lo} to {hi}"),
            ),
            (PropType::Str(allowed), toml::Value::String(s))
                if (allowed.is_empty() || allowed.contains(&s.as_str()))
                    && names::feature_value_error(s).is_none() =>
            {
                properties.insert(key.clone(), PropValue::Str(s.clone()));
            }
            (PropType::Str(allowed), _) if !allowed.is_empty() => {
                ck.err(
                    v.span(),
                    f,
                    format!("expected one of: {}", allowed.join(", ")),
                );
            }
            (PropType::Str(_), _) => ck.err(v.span(), f, "expected a string of printable ASCII"),
            (PropType::Bool, _) => ck.err(v.span(), f, "expected true or false"),
        }
    }

    let mut features = BTreeMap::new();
    for (k, v) in &q.features {
        let key = k.get_ref();
        let f = field(&format!("features.{key}"));
        if let Some(e) = names::feature_name_error(key) {
            ck.err(k.span(), f, e);
            continue;
        }
        if key.starts_with("qpm.") || key == "menu-items" || key.starts_with("service.") {
            let hint = if key.starts_with("qpm.") {
                "`qpm.*` features are qpm's own bookkeeping"
            } else if key == "menu-items" {
                "use `menu_items`"
            } else {
                "use the `services` table"
            };
            ck.err(k.span(), f, format!("feature `{key}` is reserved: {hint}"));
            continue;
        }
        let value = match v.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Boolean(true) => "1".to_owned(),
            toml::Value::Boolean(false) => String::new(),
            toml::Value::Integer(i) => i.to_string(),
            _ => {
                ck.err(
                    v.span(),
                    f,
                    "a feature value is a string, a boolean or a whole number",
                );
                continue;
            }
        };
        if let Some(e) = names::feature_value_error(&value) {
            ck.err(v.span(), f, e);
            continue;
        }
        features.insert(key.clone(), value);
    }
    for (k, v) in &q.services {
        let key = k.get_ref();
        let fname = format!("service.{key}");
        if key.is_empty() || names::feature_name_error(&fname).is_some() {
            ck.err(
                k.span(),
                field(&format!("services.{key}")),
                "a service name may only contain letters, digits, `_`, `.` and `-`",
            );
            continue;
        }
        features.insert(
            fname,
            if *v.get_ref() {
                "1".to_owned()
            } else {
                String::new()
            },
        );
    }
    if let Some(items) = &q.menu_items {
        let mut list = Vec::new();
        for it in items {
            let s = it.get_ref();
            if s.is_empty()
                || !s.ends_with(".desktop")
                || s.contains(char::is_whitespace)
                || names::feature_value_error(s).is_some()
            {
                ck.err(
                    it.span(),
                    field("menu_items"),
                    "a menu item is a `.desktop` file name without spaces",
                );
            } else {
                list.push(s.clone());
            }
        }
        features.insert("menu-items".to_owned(), list.join(" "));
    }

    let mut tags = BTreeSet::new();
    for t in &q.tags {
        let s = t.get_ref();
        if let Some(e) = names::tag_error(s) {
            ck.err(t.span(), field("tags"), e);
        } else if s.starts_with("created-by-")
            || s.starts_with("qpm-")
            || s.starts_with("disp-created-by-")
        {
            ck.err(
                t.span(),
                field("tags"),
                format!("tag `{s}` is reserved (ownership tags are set by Qubes and qpm)"),
            );
        } else {
            tags.insert(s.clone());
        }
    }

    let mut volumes = BTreeMap::new();
    for (k, v) in &q.volumes {
        let key = k.get_ref();
        let f = field(&format!("volumes.{key}"));
        if !matches!(key.as_str(), "private" | "root") {
            ck.err(
                k.span(),
                f,
                "only `private` and `root` volumes can be sized",
            );
            continue;
        }
        if key == "root" && matches!(class, QubeClass::AppVM | QubeClass::DispVM) {
            ck.err(
                k.span(),
                f,
                "the root volume of an AppVM or DispVM comes from its template",
            );
            continue;
        }
        match parse_size(v.get_ref()) {
            Some(bytes) => {
                volumes.insert(key.clone(), bytes);
            }
            None => ck.err(
                v.span(),
                f,
                "a size such as `10GiB`, `512MiB` or a number of bytes",
            ),
        }
    }

    let firewall = q.firewall.as_ref().map(|rules| {
        if rules.len() > MAX_FIREWALL_RULES {
            ck.err(
                0..0,
                field("firewall"),
                format!("at most {MAX_FIREWALL_RULES} rules"),
            );
        }
        rules
            .iter()
            .filter_map(|r| validate_fw(ck, r, &field("firewall")))
            .collect::<Vec<_>>()
    });

    let data = q.data.unwrap_or(match class {
        QubeClass::AppVM | QubeClass::StandaloneVM => !q.disposable_template,
        QubeClass::TemplateVM | QubeClass::DispVM => false,
    });
    let _ = own;

    Qube {
        name: n.clone(),
        class,
        template: q.template.map(Spanned::into_inner),
        clone: q.clone.map(Spanned::into_inner),
        label: q.label.into_inner(),
        netvm: q.netvm.as_ref().map(|v| QubeRef::parse(v.get_ref())),
        default_dispvm: q
            .default_dispvm
            .as_ref()
            .map(|v| QubeRef::parse(v.get_ref())),
        disposable_template: q.disposable_template,
        properties,
        features,
        tags,
        volumes,
        firewall,
        data,
        line: 0,
    }
}

fn validate_fw(
    ck: &mut Checker<'_>,
    r: &Spanned<RawFirewallRule>,
    field: &str,
) -> Option<FirewallRule> {
    let span = r.span();
    let raw = r.get_ref();
    let bad = |ck: &mut Checker<'_>, msg: String| {
        ck.err(span.clone(), field, msg);
    };
    if !matches!(raw.action.as_str(), "accept" | "drop") {
        bad(
            ck,
            format!("action must be `accept` or `drop`, not `{}`", raw.action),
        );
        return None;
    }
    if let Some(p) = &raw.proto
        && !matches!(p.as_str(), "tcp" | "udp" | "icmp")
    {
        bad(
            ck,
            format!("proto must be `tcp`, `udp` or `icmp`, not `{p}`"),
        );
        return None;
    }
    if let Some(h) = &raw.dsthost
        && (h.is_empty()
            || h.len() > 255
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:/_".contains(&b)))
    {
        bad(
            ck,
            format!("dsthost `{h}` is not a host name, address or network"),
        );
        return None;
    }
    let dstports = match &raw.dstports {
        None => None,
        Some(toml::Value::Integer(p)) if (1..=65535).contains(p) => Some(p.to_string()),
        Some(toml::Value::String(s)) => {
            let ok = match s.split_once('-') {
                Some((a, b)) => {
                    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a >= 1 && a <= b)
                }
                None => matches!(s.parse::<u16>(), Ok(p) if p >= 1),
            };
            if !ok {
                bad(
                    ck,
                    format!("dstports `{s}` is not a port or range such as `443` or `8000-8080`"),
                );
                return None;
            }
            Some(s.clone())
        }
        Some(_) => {
            bad(ck, "dstports is a port number or a range string".to_owned());
            return None;
        }
    };
    if dstports.is_some() && !matches!(raw.proto.as_deref(), Some("tcp" | "udp")) {
        bad(ck, "dstports needs proto `tcp` or `udp`".to_owned());
        return None;
    }
    if raw.icmptype.is_some() && raw.proto.as_deref() != Some("icmp") {
        bad(ck, "icmptype needs proto `icmp`".to_owned());
        return None;
    }
    if let Some(t) = &raw.specialtarget
        && t != "dns"
    {
        bad(ck, format!("specialtarget must be `dns`, not `{t}`"));
        return None;
    }
    if let Some(c) = &raw.comment
        && (names::feature_value_error(c).is_some() || c.len() > 1024)
    {
        bad(
            ck,
            "a comment is printable ASCII text of at most 1024 characters".to_owned(),
        );
        return None;
    }
    Some(FirewallRule {
        action: raw.action.clone(),
        proto: raw.proto.clone(),
        dsthost: raw.dsthost.clone(),
        dstports,
        icmptype: raw.icmptype,
        specialtarget: raw.specialtarget.clone(),
        comment: raw.comment.clone(),
    })
}

/// `10GiB`, `512 MiB`, `2G`, `1000000` → bytes.
pub fn parse_size(v: &toml::Value) -> Option<u64> {
    match v {
        toml::Value::Integer(i) => u64::try_from(*i).ok().filter(|&b| b > 0),
        toml::Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let n: u64 = num.parse().ok()?;
            let mult: u64 = match unit.trim() {
                "" | "B" => 1,
                "K" | "KiB" => 1 << 10,
                "M" | "MiB" => 1 << 20,
                "G" | "GiB" => 1 << 30,
                "T" | "TiB" => 1 << 40,
                _ => return None,
            };
            n.checked_mul(mult).filter(|&b| b > 0)
        }
        _ => None,
    }
}

fn cross_checks(ck: &mut Checker<'_>, qubes: &BTreeMap<String, Qube>) {
    let mut diag = |q: &Qube, f: &str, msg: String| {
        ck.diags.push(Diagnostic {
            file: ck.file.to_owned(),
            line: q.line,
            col: 0,
            field: format!("qubes.{}.{f}", q.name),
            message: msg,
        });
    };
    for q in qubes.values() {
        if let Some(t) = &q.template
            && let Some(tq) = qubes.get(t)
        {
            match q.class {
                QubeClass::AppVM if tq.class != QubeClass::TemplateVM => {
                    diag(
                        q,
                        "template",
                        format!("`{t}` is a {} of this package, not a TemplateVM", tq.class),
                    );
                }
                QubeClass::DispVM if !tq.disposable_template => {
                    diag(
                        q,
                        "template",
                        format!(
                            "`{t}` is not a disposable template (`disposable_template = true`)"
                        ),
                    );
                }
                _ => {}
            }
        }
        if let Some(t) = &q.clone
            && let Some(tq) = qubes.get(t)
            && tq.class != QubeClass::TemplateVM
        {
            diag(
                q,
                "clone",
                format!("`{t}` is a {}, not a TemplateVM", tq.class),
            );
        }
        if let Some(n) = q.netvm.as_ref().and_then(QubeRef::name) {
            if n == q.name {
                diag(q, "netvm", "a qube cannot be its own netvm".to_owned());
            } else if let Some(nq) = qubes.get(n)
                && nq.properties.get("provides_network") != Some(&PropValue::Bool(true))
            {
                diag(
                    q,
                    "netvm",
                    format!("`{n}` does not set `provides_network = true`"),
                );
            }
        }
        if let Some(n) = q.default_dispvm.as_ref().and_then(QubeRef::name)
            && let Some(dq) = qubes.get(n)
            && !dq.disposable_template
        {
            diag(
                q,
                "default_dispvm",
                format!("`{n}` is not a disposable template"),
            );
        }
    }
    // netvm cycles among the package's own qubes
    for start in qubes.values() {
        let mut seen = BTreeSet::new();
        let mut cur = start;
        while let Some(next) = cur
            .netvm
            .as_ref()
            .and_then(QubeRef::name)
            .and_then(|n| qubes.get(n))
        {
            if !seen.insert(cur.name.as_str()) {
                break;
            }
            if next.name == start.name {
                let chain: Vec<&str> = seen.iter().copied().collect();
                diag(
                    start,
                    "netvm",
                    format!("netvm cycle through {}", chain.join(", ")),
                );
                break;
            }
            cur = next;
        }
    }
}

#[cfg(test)]
mod tests;
