//! One policy file: lines to rules and directives, with every validation
//! rule of the reference parser.

use std::fmt;
use std::sync::Arc;

use crate::text::{Buf, Fields, FieldsIn, LineCursor, Text, py_split, py_strip};
use crate::token::{TokenClass, TokenError, TokenKind, VmToken};

/// Largest policy file we read, in bytes (4 MiB). Real files are a few KiB.
pub const MAX_FILE_SIZE: usize = 4 << 20;

/// The category of a syntax or load error.
///
/// The names returned by [`ErrorKind::as_str`] are the `error_detail`
/// categories of the conformance vectors, plus a few of our own for limits
/// the reference does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Fewer than 5 fields (3 in the old format).
    FieldCount,
    /// An action other than `allow`, `deny`, `ask`.
    InvalidAction,
    /// A parameter without `=`.
    ParamSyntax,
    /// The same parameter twice.
    ParamDuplicate,
    /// `notify`/`autostart` not `yes` or `no`.
    ParamBool,
    /// A parameter the action does not take.
    ParamInvalid,
    /// `allow` with target `@default` and no `target=`.
    DefaultAllowNoTarget,
    /// A token not valid in its column or parameter.
    InvalidToken,
    /// A character outside `[A-Za-z0-9._-]` in the service.
    ServiceChars,
    /// A character outside `[A-Za-z0-9._+-]` in the argument.
    ArgumentChars,
    /// An argument that is neither `*` nor starts with `+`.
    ArgumentNoPlus,
    /// Service `*` with an argument other than `*`.
    WildcardServiceArgument,
    /// An unknown directive, or one not allowed here.
    InvalidDirective,
    /// The wrong number of directive parameters.
    DirectiveParams,
    /// An included file does not exist or is not a regular file.
    IncludeMissing,
    /// An included directory does not exist.
    IncludeDirMissing,
    /// A policy file name outside `[0-9a-z_.-]`.
    InvalidFilename,
    /// A file includes itself, directly or not.
    IncludeCycle,
    /// Includes nested deeper than [`crate::limits::MAX_INCLUDE_DEPTH`].
    IncludeDepth,
    /// A file larger than [`MAX_FILE_SIZE`], or a load over one of the
    /// other limits of [`crate::limits`].
    TooLarge,
    /// A file that is not valid UTF-8.
    Encoding,
    /// A file or directory could not be read.
    Io,
}

impl ErrorKind {
    /// Stable lowercase name of the category.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FieldCount => "field_count",
            Self::InvalidAction => "invalid_action",
            Self::ParamSyntax => "param_syntax",
            Self::ParamDuplicate => "param_duplicate",
            Self::ParamBool => "param_bool",
            Self::ParamInvalid => "param_invalid",
            Self::DefaultAllowNoTarget => "default_allow_no_target",
            Self::InvalidToken => "invalid_token",
            Self::ServiceChars => "service_chars",
            Self::ArgumentChars => "argument_chars",
            Self::ArgumentNoPlus => "argument_no_plus",
            Self::WildcardServiceArgument => "wildcard_service_argument",
            Self::InvalidDirective => "invalid_directive",
            Self::DirectiveParams => "directive_params",
            Self::IncludeMissing => "include_missing",
            Self::IncludeDirMissing => "include_dir_missing",
            Self::InvalidFilename => "invalid_filename",
            Self::IncludeCycle => "include_cycle",
            Self::IncludeDepth => "include_depth",
            Self::TooLarge => "too_large",
            Self::Encoding => "encoding",
            Self::Io => "io",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A syntax error on one line of one file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: u32,
    /// Category.
    pub kind: ErrorKind,
    /// What is wrong, for a human.
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(line: u32, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            line,
            kind,
            message: message.into(),
        }
    }
}

/// `allow`, `deny` or `ask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    /// Let the call through.
    Allow,
    /// Refuse the call.
    Deny,
    /// Ask the user.
    Ask,
}

impl ActionKind {
    /// `allow`, `deny` or `ask`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Ask => "ask",
        }
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The action column of a rule and its parameters, as given (`None` when a
/// parameter is absent; the defaults are applied at evaluation).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Action {
    /// `allow`, `deny` or `ask`.
    pub kind: ActionKind,
    /// `target=` (allow, ask).
    pub target: Option<VmToken>,
    /// `default_target=` (ask).
    pub default_target: Option<VmToken>,
    /// `user=` (allow, ask); may be empty.
    pub user: Option<Text>,
    /// `notify=` (all actions).
    pub notify: Option<bool>,
    /// `autostart=` (allow, ask).
    pub autostart: Option<bool>,
}

impl Action {
    /// An action with no parameters.
    pub fn new(kind: ActionKind) -> Self {
        Self {
            kind,
            target: None,
            default_target: None,
            user: None,
            notify: None,
            autostart: None,
        }
    }

    /// `notify=` with the action's default (yes for deny, no otherwise).
    pub fn notify_or_default(&self) -> bool {
        self.notify.unwrap_or(self.kind == ActionKind::Deny)
    }

    /// `autostart=` with its default (yes).
    pub fn autostart_or_default(&self) -> bool {
        self.autostart.unwrap_or(true)
    }

    /// `user=` if given and not empty.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref().filter(|u| !u.is_empty())
    }
}

/// One rule: `SERVICE ARGUMENT SOURCE TARGET ACTION [PARAM=VALUE ...]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// 1-based line in its file; 0 for the implicit deny rules that
    /// `!compat-4.0` adds after each argument-specific legacy file.
    pub line: u32,
    /// The service, `None` for `*`.
    pub service: Option<Text>,
    /// The argument with its leading `+`, `None` for `*`.
    pub argument: Option<Text>,
    /// Source column.
    pub source: VmToken,
    /// Target column.
    pub target: VmToken,
    /// Action and parameters.
    pub action: Action,
}

/// A `!` directive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DirectiveKind {
    /// `!include PATH` (in an old-format file: `!include PATH` or
    /// `$include:PATH`, which includes another old-format file).
    Include {
        /// The path as written.
        path: Text,
    },
    /// `!include-dir PATH`.
    IncludeDir {
        /// The path as written.
        path: Text,
    },
    /// `!include-service SERVICE ARGUMENT PATH`.
    IncludeService {
        /// The service, `None` for `*`.
        service: Option<Text>,
        /// The argument, `None` for `*`.
        argument: Option<Text>,
        /// The path as written.
        path: Text,
    },
    /// `!compat-4.0`.
    Compat40,
}

/// A directive and its line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Directive {
    /// 1-based line.
    pub line: u32,
    /// What it asks for.
    pub kind: DirectiveKind,
}

impl DirectiveKind {
    /// The directive keyword, e.g. `!include-dir`.
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::Include { .. } => "!include",
            Self::IncludeDir { .. } => "!include-dir",
            Self::IncludeService { .. } => "!include-service",
            Self::Compat40 => "!compat-4.0",
        }
    }
}

/// A rule or a directive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Item {
    /// A rule.
    Rule(Rule),
    /// A directive.
    Directive(Directive),
}

impl Item {
    /// The item's line.
    pub fn line(&self) -> u32 {
        match self {
            Self::Rule(r) => r.line,
            Self::Directive(d) => d.line,
        }
    }
}

/// The format of a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Format {
    /// The `policy.d` format: five columns and parameters.
    New,
    /// The R4.0 per-service format (`!include-service`, `!compat-4.0`):
    /// `SOURCE TARGET ACTION[,PARAM=VALUE...]`, `$` for `@`, applied to one
    /// service and argument.
    Old {
        /// The service, `None` for `*`.
        service: Option<Text>,
        /// The argument, `None` for `*`.
        argument: Option<Text>,
    },
}

/// A parsed file: its rules and directives in order, each with its line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PolicyFile {
    /// Rules and directives in file order.
    pub items: Vec<Item>,
}

impl PolicyFile {
    /// Parses a new-format file, stopping at the first error (the loader's
    /// behaviour).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let (file, errors) = parse_text(&Arc::new(text.to_owned()), &Format::New, true);
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(file),
        }
    }

    /// Parses a new-format file and reports **every** line in error (in
    /// line order), together with the items of the lines that parsed.
    pub fn parse_all(text: &str) -> (Self, Vec<ParseError>) {
        parse_text(&Arc::new(text.to_owned()), &Format::New, false)
    }

    /// Like [`PolicyFile::parse`] but for any [`Format`].
    pub fn parse_format(text: &str, format: &Format) -> Result<Self, ParseError> {
        let (file, errors) = parse_text(&Arc::new(text.to_owned()), format, true);
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(file),
        }
    }

    /// The rules, in order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.items.iter().filter_map(|i| match i {
            Item::Rule(r) => Some(r),
            Item::Directive(_) => None,
        })
    }

    /// The directives, in order.
    pub fn directives(&self) -> impl Iterator<Item = &Directive> {
        self.items.iter().filter_map(|i| match i {
            Item::Directive(d) => Some(d),
            Item::Rule(_) => None,
        })
    }
}

/// Parses text in `format`. With `stop_at_first`, parsing stops at the first
/// error and the items before it are returned with it; otherwise every line
/// is tried.
pub(crate) fn parse_text(
    buf: &Buf,
    format: &Format,
    stop_at_first: bool,
) -> (PolicyFile, Vec<ParseError>) {
    let mut items = Vec::new();
    let mut errors = Vec::new();
    let mut rules = Vec::with_capacity(1);
    let mut cursor = LineCursor::default();
    let mut fields = Fields::new();
    while let Some((lineno, line)) = cursor.next_fields(buf, &mut fields) {
        let res = parse_file_line(buf, line, fields.of(buf), lineno, format, &mut rules);
        match res {
            Ok(Parsed::Rule) => items.extend(rules.pop().map(Item::Rule)),
            Ok(Parsed::Directive(d)) => items.push(Item::Directive(d)),
            Ok(Parsed::Nothing) => {}
            Err(e) => {
                errors.push(e);
                if stop_at_first {
                    break;
                }
            }
        }
    }
    (PolicyFile { items }, errors)
}

/// What a line held.
pub(crate) enum Parsed {
    /// A blank line or a comment.
    Nothing,
    /// A rule, pushed onto the caller's vector.
    Rule,
    /// A directive.
    Directive(Directive),
}

/// Parses one line (a part of `buf`) of a file in `format`; a rule is
/// pushed onto `rules` (built in place: rules are large).
pub(crate) fn parse_file_line(
    buf: &Buf,
    line: &str,
    fields: FieldsIn<'_, '_>,
    lineno: u32,
    format: &Format,
    rules: &mut Vec<Rule>,
) -> Result<Parsed, ParseError> {
    match format {
        Format::New => parse_line_into(buf, fields, lineno, rules),
        Format::Old { service, argument } => parse_old_line(line, lineno, service, argument, rules),
    }
}

/// Parses one line of a new-format file. `Ok(None)` for blank lines and
/// comments.
pub fn parse_line(line: &str, lineno: u32) -> Result<Option<Item>, ParseError> {
    let buf: Buf = Arc::new(line.to_owned());
    let mut rules = Vec::with_capacity(1);
    let mut fields = Fields::new();
    let mut cursor = LineCursor::default();
    // Only the first line of `line` counts.
    cursor.next_fields(&buf, &mut fields);
    Ok(
        match parse_line_into(&buf, fields.of(&buf), lineno, &mut rules)? {
            Parsed::Nothing => None,
            Parsed::Rule => rules.pop().map(Item::Rule),
            Parsed::Directive(d) => Some(Item::Directive(d)),
        },
    )
}

/// `line` is a part of `buf`; the tokens share `buf`.
fn parse_line_into(
    buf: &Buf,
    fields: FieldsIn<'_, '_>,
    lineno: u32,
    rules: &mut Vec<Rule>,
) -> Result<Parsed, ParseError> {
    // `str.split()` gives the same fields as strip-then-split, and the
    // stripped line starts with the first field.
    let Some(first) = fields.get(0) else {
        return Ok(Parsed::Nothing);
    };
    if first.starts_with('#') {
        return Ok(Parsed::Nothing);
    }
    if first.starts_with('!') {
        return parse_directive(buf, fields, lineno).map(Parsed::Directive);
    }
    let (Some(service), Some(argument), Some(source), Some(target), Some(action)) = (
        fields.get(0),
        fields.get(1),
        fields.get(2),
        fields.get(3),
        fields.get(4),
    ) else {
        return Err(ParseError::new(
            lineno,
            ErrorKind::FieldCount,
            "wrong number of fields: a rule needs SERVICE ARGUMENT SOURCE TARGET ACTION",
        ));
    };
    let (service, argument) = validate_service_argument(
        Text::within(buf, service),
        Text::within(buf, argument),
        lineno,
    )?;
    build_rule(
        buf,
        service,
        argument,
        source,
        target,
        action,
        fields.from(5),
        lineno,
        rules,
    )?;
    Ok(Parsed::Rule)
}

fn directive_params<const N: usize>(
    buf: &Buf,
    params: &[&str],
    keyword: &str,
    usage: &str,
    lineno: u32,
) -> Result<[Text; N], ParseError> {
    if params.len() != N {
        return Err(ParseError::new(
            lineno,
            ErrorKind::DirectiveParams,
            format!(
                "invalid number of parameters for {keyword}: expected `{usage}`, got {}",
                params.len()
            ),
        ));
    }
    Ok(std::array::from_fn(|i| {
        Text::within(buf, params.get(i).copied().unwrap_or_default())
    }))
}

fn parse_directive(
    buf: &Buf,
    fields: FieldsIn<'_, '_>,
    lineno: u32,
) -> Result<Directive, ParseError> {
    let keyword = fields.get(0).unwrap_or_default();
    let params: Vec<&str> = fields.from(1).collect();
    let kind = match keyword {
        "!include" => {
            let [path] = directive_params::<1>(buf, &params, keyword, "!include PATH", lineno)?;
            DirectiveKind::Include { path }
        }
        "!include-dir" => {
            let [path] = directive_params::<1>(buf, &params, keyword, "!include-dir PATH", lineno)?;
            DirectiveKind::IncludeDir { path }
        }
        "!include-service" => {
            let [service, argument, path] = directive_params::<3>(
                buf,
                &params,
                keyword,
                "!include-service SERVICE ARGUMENT PATH",
                lineno,
            )?;
            let (service, argument) = validate_service_argument(service, argument, lineno)?;
            DirectiveKind::IncludeService {
                service,
                argument,
                path,
            }
        }
        "!compat-4.0" => {
            directive_params::<0>(buf, &params, keyword, "!compat-4.0", lineno)?;
            DirectiveKind::Compat40
        }
        other => {
            return Err(ParseError::new(
                lineno,
                ErrorKind::InvalidDirective,
                format!(
                    "invalid directive (expected !include, !include-dir, !include-service or !compat-4.0): `{}`",
                    other.escape_debug()
                ),
            ));
        }
    };
    Ok(Directive { line: lineno, kind })
}

/// Parses one line of an old-format (per-service) file.
fn parse_old_line(
    line: &str,
    lineno: u32,
    service: &Option<Text>,
    argument: &Option<Text>,
    rules: &mut Vec<Rule>,
) -> Result<Parsed, ParseError> {
    let line = py_strip(line);
    if line.is_empty() || line.starts_with('#') {
        return Ok(Parsed::Nothing);
    }
    let line: Buf = Arc::new(
        line.replace("$include:", "!include ")
            .replace('$', "@")
            .replace(',', " "),
    );
    let buf = &line;
    if line.starts_with('!') {
        let mut fields = py_split(&line);
        let keyword = fields.next().unwrap_or_default();
        if keyword != "!include" {
            return Err(ParseError::new(
                lineno,
                ErrorKind::InvalidDirective,
                format!(
                    "invalid directive in a per-service file (only !include or $include: is allowed): `{}`",
                    keyword.escape_debug()
                ),
            ));
        }
        let params: Vec<&str> = fields.collect();
        let [path] = directive_params::<1>(buf, &params, keyword, "!include PATH", lineno)?;
        return Ok(Parsed::Directive(Directive {
            line: lineno,
            kind: DirectiveKind::Include { path },
        }));
    }
    let mut fields = py_split(&line);
    let (Some(source), Some(target), Some(action)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(ParseError::new(
            lineno,
            ErrorKind::FieldCount,
            "wrong number of fields: a per-service rule needs SOURCE TARGET ACTION",
        ));
    };
    build_rule(
        buf,
        service.clone(),
        argument.clone(),
        source,
        target,
        action,
        fields,
        lineno,
        rules,
    )?;
    Ok(Parsed::Rule)
}

/// Characters allowed in a service name (`RPCNAME_ALLOWED_CHARSET` without `+`).
fn service_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')
}

fn argument_char_ok(c: char) -> bool {
    service_char_ok(c) || c == '+'
}

/// For each byte: 1 if it may be in a service, 2 if in an argument.
const RPC_CHARS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 128 {
        let c = i as u8;
        let base = c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_';
        t[i] = if base {
            3
        } else if c == b'+' {
            2
        } else {
            0
        };
        i += 1;
    }
    t
};

fn all_rpc_chars(s: &str, mask: u8) -> bool {
    s.bytes().all(|b| RPC_CHARS[b as usize] & mask != 0)
}

fn bad_chars(s: &str, ok: fn(char) -> bool) -> String {
    let mut bad: Vec<char> = s.chars().filter(|c| !ok(*c)).collect();
    bad.sort_unstable();
    bad.dedup();
    bad.iter()
        .map(|c| c.escape_debug().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Validates the service and argument columns; `*` becomes `None`.
#[allow(clippy::type_complexity)]
pub(crate) fn validate_service_argument(
    service_text: Text,
    argument_text: Text,
    lineno: u32,
) -> Result<(Option<Text>, Option<Text>), ParseError> {
    let service = (&*service_text != "*").then_some(&*service_text);
    if let Some(s) = service
        && !all_rpc_chars(s, 1)
    {
        return Err(ParseError::new(
            lineno,
            ErrorKind::ServiceChars,
            format!(
                "service contains invalid characters ({}; allowed are letters, digits, `-`, `.`, `_`): `{}`",
                bad_chars(s, service_char_ok),
                s.escape_debug()
            ),
        ));
    }
    let argument = (&*argument_text != "*").then_some(&*argument_text);
    if let Some(a) = argument {
        if !all_rpc_chars(a, 2) {
            return Err(ParseError::new(
                lineno,
                ErrorKind::ArgumentChars,
                format!(
                    "argument contains invalid characters ({}; allowed are letters, digits, `+`, `-`, `.`, `_`): `{}`",
                    bad_chars(a, argument_char_ok),
                    a.escape_debug()
                ),
            ));
        }
        if !a.starts_with('+') {
            return Err(ParseError::new(
                lineno,
                ErrorKind::ArgumentNoPlus,
                format!(
                    "argument must be `*` or start with `+`: `{}`",
                    a.escape_debug()
                ),
            ));
        }
        if service.is_none() {
            return Err(ParseError::new(
                lineno,
                ErrorKind::WildcardServiceArgument,
                format!(
                    "service `*` only takes argument `*`, not `{}`",
                    a.escape_debug()
                ),
            ));
        }
    }
    let (service, argument) = (service.is_some(), argument.is_some());
    Ok((
        service.then_some(service_text),
        argument.then_some(argument_text),
    ))
}

fn token(
    buf: &Buf,
    text: &str,
    class: TokenClass,
    what: &str,
    lineno: u32,
) -> Result<VmToken, ParseError> {
    VmToken::parse_text(Text::within(buf, text), class).map_err(|e| {
        let why = match e {
            TokenError::Empty => "is empty".to_owned(),
            TokenError::EmptyValue { prefix } => format!("has nothing after `{prefix}`"),
            TokenError::Invalid => match VmToken::classify(text) {
                Ok(_) => format!("is not allowed {}", allowed_hint(class)),
                Err(_) => "is not a qube name or a known @keyword".to_owned(),
            },
        };
        ParseError::new(
            lineno,
            ErrorKind::InvalidToken,
            format!("invalid {what}: token {why}: `{}`", text.escape_debug()),
        )
    })
}

fn allowed_hint(class: TokenClass) -> &'static str {
    match class {
        TokenClass::Source => {
            "as source (allowed: a name, uuid:, *, @anyvm, @adminvm, @tag:, @type:, @dispvm:NAME, @dispvm:@tag:)"
        }
        TokenClass::Target => "as target",
        TokenClass::Redirect => {
            "in target=/default_target= (allowed: a name, uuid:, @adminvm, @dispvm, @dispvm:NAME)"
        }
        TokenClass::Request => "as requested target",
    }
}

#[allow(clippy::too_many_arguments)]
fn build_rule<'a>(
    buf: &Buf,
    service: Option<Text>,
    argument: Option<Text>,
    source: &str,
    target: &str,
    action: &str,
    params: impl Iterator<Item = &'a str>,
    lineno: u32,
    rules: &mut Vec<Rule>,
) -> Result<(), ParseError> {
    let source = token(buf, source, TokenClass::Source, "source", lineno)?;
    let target = token(buf, target, TokenClass::Target, "target", lineno)?;
    let kind = match action {
        "allow" => ActionKind::Allow,
        "deny" => ActionKind::Deny,
        "ask" => ActionKind::Ask,
        other => {
            return Err(ParseError::new(
                lineno,
                ErrorKind::InvalidAction,
                format!(
                    "invalid action (expected allow, deny or ask): `{}`",
                    other.escape_debug()
                ),
            ));
        }
    };
    let mut act = Action::new(kind);
    const KEYS: [&str; 5] = ["target", "default_target", "user", "notify", "autostart"];
    let mut seen = [false; KEYS.len()];
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            let hint = if param.starts_with('#') {
                " (comments must be on their own line)"
            } else {
                ""
            };
            return Err(ParseError::new(
                lineno,
                ErrorKind::ParamSyntax,
                format!(
                    "invalid action parameter, expected KEY=VALUE{hint}: `{}`",
                    param.escape_debug()
                ),
            ));
        };
        let allowed = match kind {
            ActionKind::Deny => &["notify"][..],
            ActionKind::Allow => &["target", "user", "notify", "autostart"][..],
            ActionKind::Ask => &["target", "default_target", "user", "notify", "autostart"][..],
        };
        let boolean = |v: &str| match v {
            "yes" => Ok(true),
            "no" => Ok(false),
            _ => Err(ParseError::new(
                lineno,
                ErrorKind::ParamBool,
                format!(
                    "`{key}` can only be `yes` or `no`, not `{}`",
                    v.escape_debug()
                ),
            )),
        };
        match key {
            "notify" => act.notify = Some(boolean(value)?),
            "autostart" => act.autostart = Some(boolean(value)?),
            _ => {}
        }
        let known = KEYS.iter().position(|k| *k == key);
        if let Some(was) = known.and_then(|i| seen.get_mut(i)) {
            if *was {
                return Err(ParseError::new(
                    lineno,
                    ErrorKind::ParamDuplicate,
                    format!("parameter given twice: `{}`", key.escape_debug()),
                ));
            }
            *was = true;
        }
        if !allowed.contains(&key) {
            return Err(ParseError::new(
                lineno,
                ErrorKind::ParamInvalid,
                format!(
                    "`{kind}` takes only {}, not `{}`",
                    allowed.join(", "),
                    key.escape_debug()
                ),
            ));
        }
        match key {
            "target" => {
                act.target = Some(token(buf, value, TokenClass::Redirect, "target=", lineno)?)
            }
            "default_target" => {
                act.default_target = Some(token(
                    buf,
                    value,
                    TokenClass::Redirect,
                    "default_target=",
                    lineno,
                )?);
            }
            "user" => act.user = Some(Text::within(buf, value)),
            _ => {}
        }
    }
    if target.kind() == TokenKind::Default && kind == ActionKind::Allow && act.target.is_none() {
        return Err(ParseError::new(
            lineno,
            ErrorKind::DefaultAllowNoTarget,
            "an `allow` rule with target @default must say where the call goes with target=",
        ));
    }
    rules.push(Rule {
        line: lineno,
        service,
        argument,
        source,
        target,
        action: act,
    });
    Ok(())
}
