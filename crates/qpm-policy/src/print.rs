//! The canonical form of rules, directives and files: one item a line,
//! fields separated by one space, parameters in a fixed order
//! (`target`, `default_target`, `user`, `notify`, `autostart`). Parsing the
//! canonical form gives back the same items.

use std::fmt::{self, Write as _};

use crate::parse::{Action, Directive, DirectiveKind, Item, PolicyFile, Rule};

fn star(v: Option<&str>) -> &str {
    v.unwrap_or("*")
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())?;
        if let Some(t) = &self.target {
            write!(f, " target={t}")?;
        }
        if let Some(t) = &self.default_target {
            write!(f, " default_target={t}")?;
        }
        if let Some(u) = &self.user {
            write!(f, " user={u}")?;
        }
        if let Some(n) = self.notify {
            write!(f, " notify={}", yes(n))?;
        }
        if let Some(a) = self.autostart {
            write!(f, " autostart={}", yes(a))?;
        }
        Ok(())
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {}",
            star(self.service.as_deref()),
            star(self.argument.as_deref()),
            self.source,
            self.target,
            self.action
        )
    }
}

impl fmt::Display for DirectiveKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Include { path } => write!(f, "!include {path}"),
            Self::IncludeDir { path } => write!(f, "!include-dir {path}"),
            Self::IncludeService {
                service,
                argument,
                path,
            } => write!(
                f,
                "!include-service {} {} {path}",
                star(service.as_deref()),
                star(argument.as_deref())
            ),
            Self::Compat40 => f.write_str("!compat-4.0"),
        }
    }
}

impl fmt::Display for Directive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rule(r) => r.fmt(f),
            Self::Directive(d) => d.fmt(f),
        }
    }
}

impl PolicyFile {
    /// The file in canonical form (new format, no comments, one item a
    /// line, `\n` line ends).
    ///
    /// ```
    /// use qpm_policy::PolicyFile;
    /// let f = PolicyFile::parse("# c\nqubes.Gpg\t*  work  vault allow   notify=yes user=u\n").unwrap();
    /// let text = f.to_canonical();
    /// assert_eq!(text, "qubes.Gpg * work vault allow user=u notify=yes\n");
    /// assert!(PolicyFile::parse(&text).unwrap().same_items(&f));
    /// ```
    pub fn to_canonical(&self) -> String {
        let mut out = String::new();
        for item in &self.items {
            let _ = writeln!(out, "{item}");
        }
        out
    }

    /// Whether both files hold the same rules and directives in the same
    /// order, line numbers aside.
    pub fn same_items(&self, other: &Self) -> bool {
        self.items.len() == other.items.len()
            && self
                .items
                .iter()
                .zip(&other.items)
                .all(|(a, b)| same_item(a, b))
    }
}

fn same_item(a: &Item, b: &Item) -> bool {
    match (a, b) {
        (Item::Rule(x), Item::Rule(y)) => {
            x.service == y.service
                && x.argument == y.argument
                && x.source == y.source
                && x.target == y.target
                && x.action == y.action
        }
        (Item::Directive(x), Item::Directive(y)) => x.kind == y.kind,
        _ => false,
    }
}
