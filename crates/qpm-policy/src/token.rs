//! VM tokens: what may stand in the source and target columns, in `target=`
//! and `default_target=`, and in a caller's requested target.

use std::fmt;

use crate::text::Text;

/// The UUID of the admin VM (dom0).
pub const ADMIN_VM_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// Where a token appears. Each place accepts a different set of tokens
/// (the reference parser's `Source`, `Target`, `Redirect` and
/// `IntendedTarget` classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenClass {
    /// The third column of a rule.
    Source,
    /// The fourth column of a rule.
    Target,
    /// The value of `target=` or `default_target=`.
    Redirect,
    /// The target a caller asked for.
    Request,
}

impl TokenClass {
    /// Lowercase name used in error messages (`source`, `target`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Target => "target",
            Self::Redirect => "redirect",
            Self::Request => "requested target",
        }
    }
}

/// The syntactic kind of a VM token.
///
/// The admin VM has three spellings (`@adminvm`, `dom0` and
/// `uuid:00000000-0000-0000-0000-000000000000`); all three have kind
/// [`TokenKind::AdminVm`], and [`VmToken::as_str`] keeps the spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum TokenKind {
    /// A plain qube name (anything not starting with `@`, other than `*`,
    /// `dom0` and `uuid:...`).
    Name,
    /// `uuid:<uuid>`: a qube addressed by its UUID.
    Uuid,
    /// `*`: anything, the admin VM and keywords included.
    Wildcard,
    /// `@anyvm`: any qube except the admin VM.
    AnyVm,
    /// `@adminvm`, `dom0` or the admin VM's UUID.
    AdminVm,
    /// `@default`: the caller named no target.
    Default,
    /// `@type:<class>`.
    Type,
    /// `@tag:<tag>`.
    Tag,
    /// `@dispvm`: a new disposable from the caller's `default_dispvm`.
    DispVm,
    /// `@dispvm:<name>`: a new disposable from that disposable template.
    DispVmName,
    /// `@dispvm:uuid:<uuid>`: the same, the template named by UUID.
    DispVmUuid,
    /// `@dispvm:@tag:<tag>`: a disposable from any template with that tag.
    DispVmTag,
}

impl TokenKind {
    /// Whether this kind may appear in `class`.
    pub fn allowed_in(self, class: TokenClass) -> bool {
        use TokenClass as C;
        use TokenKind as K;
        match self {
            K::Name | K::Uuid | K::AdminVm | K::DispVmName | K::DispVmUuid => true,
            K::Wildcard | K::AnyVm | K::Type | K::Tag | K::DispVmTag => {
                matches!(class, C::Source | C::Target)
            }
            K::Default => matches!(class, C::Target | C::Request),
            K::DispVm => matches!(class, C::Target | C::Redirect | C::Request),
        }
    }

    /// Whether the token names one qube or template by name or UUID
    /// (as opposed to a keyword or a pattern).
    pub fn is_specific(self) -> bool {
        matches!(
            self,
            Self::Name | Self::Uuid | Self::AdminVm | Self::DispVmName | Self::DispVmUuid
        )
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// The token is empty.
    Empty,
    /// A prefix token with nothing after the prefix, such as `@tag:`.
    EmptyValue {
        /// The prefix (`@tag:`, `@type:`, `@dispvm:`, `@dispvm:@tag:`).
        prefix: &'static str,
    },
    /// Not a token of this class.
    Invalid,
}

/// A VM token as written, with its kind.
///
/// ```
/// use qpm_policy::{TokenClass, TokenKind, VmToken};
/// let t = VmToken::parse("@dispvm:@tag:work", TokenClass::Target).unwrap();
/// assert_eq!(t.kind(), TokenKind::DispVmTag);
/// assert_eq!(t.value(), "work");
/// assert!(VmToken::parse("@default", TokenClass::Source).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VmToken {
    raw: Text,
    kind: TokenKind,
}

impl fmt::Debug for VmToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({:?})", self.kind, self.raw)
    }
}

impl fmt::Display for VmToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

const PREFIXES: [(&str, TokenKind); 4] = [
    ("@type:", TokenKind::Type),
    ("@tag:", TokenKind::Tag),
    ("@dispvm:", TokenKind::DispVmName),
    ("@dispvm:@tag:", TokenKind::DispVmTag),
];

impl VmToken {
    /// Classifies `text` without checking where it may appear.
    pub fn classify(text: &str) -> Result<TokenKind, TokenError> {
        if text.is_empty() {
            return Err(TokenError::Empty);
        }
        match text {
            "*" => return Ok(TokenKind::Wildcard),
            "@anyvm" => return Ok(TokenKind::AnyVm),
            "@adminvm" | "dom0" => return Ok(TokenKind::AdminVm),
            "@default" => return Ok(TokenKind::Default),
            "@dispvm" => return Ok(TokenKind::DispVm),
            _ => {}
        }
        if !text.starts_with('@') {
            return Ok(match text.strip_prefix("uuid:") {
                Some(ADMIN_VM_UUID) => TokenKind::AdminVm,
                Some(u) if !u.is_empty() => TokenKind::Uuid,
                _ => TokenKind::Name,
            });
        }
        // Prefixed tokens: the longest prefix whose value does not start
        // with `@` wins (`@dispvm:@tag:x` is a tag token, `@tag:@x` nothing).
        for (prefix, kind) in PREFIXES {
            if let Some(value) = text.strip_prefix(prefix) {
                if value.is_empty() {
                    return Err(TokenError::EmptyValue { prefix });
                }
                if value.starts_with('@') {
                    continue;
                }
                if kind == TokenKind::DispVmName
                    && value.strip_prefix("uuid:").is_some_and(|u| !u.is_empty())
                {
                    return Ok(TokenKind::DispVmUuid);
                }
                return Ok(kind);
            }
        }
        Err(TokenError::Invalid)
    }

    /// Parses `text` as a token of `class`.
    pub fn parse(text: &str, class: TokenClass) -> Result<Self, TokenError> {
        Self::check(text, class)?;
        Self::parse_text(Text::from(text), class)
    }

    /// The kind `text` would have in `class`, without building a token.
    pub fn check(text: &str, class: TokenClass) -> Result<TokenKind, TokenError> {
        let kind = Self::classify(text)?;
        if !kind.allowed_in(class) {
            return Err(TokenError::Invalid);
        }
        Ok(kind)
    }

    pub(crate) fn parse_text(raw: Text, class: TokenClass) -> Result<Self, TokenError> {
        let kind = Self::check(&raw, class)?;
        Ok(Self { raw, kind })
    }

    /// A token whose kind is known to be right for `raw`.
    pub(crate) fn new_unchecked(raw: &str, kind: TokenKind) -> Self {
        Self {
            raw: Text::from(raw),
            kind,
        }
    }

    /// The token exactly as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The token as a shared [`Text`].
    pub fn text(&self) -> &Text {
        &self.raw
    }

    /// The kind of token.
    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    /// The part after the keyword: the name for [`TokenKind::Name`] and
    /// [`TokenKind::DispVmName`], the UUID (without `uuid:`) for
    /// [`TokenKind::Uuid`] and [`TokenKind::DispVmUuid`], the tag or class
    /// for the tag and type kinds, and the whole text otherwise.
    pub fn value(&self) -> &str {
        value_of(self.kind, &self.raw)
    }

    /// Whether this token denotes the admin VM (dom0).
    pub fn is_admin_vm(&self) -> bool {
        self.kind == TokenKind::AdminVm
    }
}

/// The value part of `raw`, a token of kind `kind`.
pub(crate) fn value_of(kind: TokenKind, raw: &str) -> &str {
    let strip = |p: &str| raw.strip_prefix(p).unwrap_or(raw);
    match kind {
        TokenKind::Uuid => strip("uuid:"),
        TokenKind::Type => strip("@type:"),
        TokenKind::Tag => strip("@tag:"),
        TokenKind::DispVmName => strip("@dispvm:"),
        TokenKind::DispVmUuid => strip("@dispvm:uuid:"),
        TokenKind::DispVmTag => strip("@dispvm:@tag:"),
        _ => raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TokenClass as C;
    use TokenKind as K;

    fn kind(s: &str, c: TokenClass) -> Result<TokenKind, TokenError> {
        VmToken::parse(s, c).map(|t| t.kind())
    }

    #[test]
    fn kinds_and_classes() {
        assert_eq!(kind("work", C::Source), Ok(K::Name));
        assert_eq!(kind("dom0", C::Redirect), Ok(K::AdminVm));
        assert_eq!(
            kind("uuid:00000000-0000-0000-0000-000000000000", C::Source),
            Ok(K::AdminVm)
        );
        assert_eq!(kind("uuid:abc", C::Request), Ok(K::Uuid));
        assert_eq!(kind("uuid:", C::Source), Ok(K::Name));
        assert_eq!(kind("*", C::Source), Ok(K::Wildcard));
        assert_eq!(kind("*", C::Redirect), Err(TokenError::Invalid));
        assert_eq!(kind("*", C::Request), Err(TokenError::Invalid));
        assert_eq!(kind("@default", C::Source), Err(TokenError::Invalid));
        assert_eq!(kind("@default", C::Target), Ok(K::Default));
        assert_eq!(kind("@default", C::Redirect), Err(TokenError::Invalid));
        assert_eq!(kind("@dispvm", C::Source), Err(TokenError::Invalid));
        assert_eq!(kind("@dispvm", C::Redirect), Ok(K::DispVm));
        assert_eq!(kind("@dispvm:x", C::Source), Ok(K::DispVmName));
        assert_eq!(kind("@dispvm:uuid:x", C::Redirect), Ok(K::DispVmUuid));
        assert_eq!(kind("@dispvm:@tag:x", C::Target), Ok(K::DispVmTag));
        assert_eq!(
            kind("@dispvm:@tag:x", C::Redirect),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            kind("@dispvm:@tag:", C::Target),
            Err(TokenError::EmptyValue {
                prefix: "@dispvm:@tag:"
            })
        );
        assert_eq!(kind("@dispvm:@foo", C::Target), Err(TokenError::Invalid));
        assert_eq!(
            kind("@tag:", C::Source),
            Err(TokenError::EmptyValue { prefix: "@tag:" })
        );
        assert_eq!(kind("@tag:@x", C::Source), Err(TokenError::Invalid));
        assert_eq!(kind("@tag:x", C::Redirect), Err(TokenError::Invalid));
        assert_eq!(kind("@type:AppVM", C::Target), Ok(K::Type));
        assert_eq!(kind("@anyvm", C::Request), Err(TokenError::Invalid));
        assert_eq!(kind("@foo", C::Target), Err(TokenError::Invalid));
        assert_eq!(kind("", C::Target), Err(TokenError::Empty));
        assert_eq!(kind("$anyvm", C::Target), Ok(K::Name));
    }

    #[test]
    fn values() {
        let v = |s: &str| VmToken::parse(s, C::Target).unwrap().value().to_owned();
        assert_eq!(v("@tag:work"), "work");
        assert_eq!(v("@dispvm:uuid:u1"), "u1");
        assert_eq!(v("uuid:u1"), "u1");
        assert_eq!(v("@dispvm:@tag:t"), "t");
        assert_eq!(v("@dispvm:dvm"), "dvm");
        assert_eq!(v("dom0"), "dom0");
    }
}
