//! The qrexec policy engine: a faithful parser and evaluator for the Qubes OS
//! `/etc/qubes/policy.d/*.policy` language, plus explain and lints.
//!
//! Depends on no other qpm crate.
#![forbid(unsafe_code)]

mod text;

pub mod conformance;
mod eval;
mod explain;
mod lint;
pub mod load;
mod parse;
mod policy;
mod print;
pub mod source;
mod system;
mod token;

pub use eval::{Allowed, Ask, Decision, Denied, DenyReason, Request};
pub use explain::{Considered, Contribution, Explanation, Outcome};
pub use lint::{Finding, KNOWN_CLASSES, Lint, MAX_ASK_PROBES, MAX_SHADOW_COMPARISONS};
pub use load::{LoadError, LoadOptions, limits};
pub use parse::{
    Action, ActionKind, Directive, DirectiveKind, ErrorKind, Format, Item, MAX_FILE_SIZE,
    ParseError, PolicyFile, Rule, parse_line,
};
pub use policy::{Policy, RuleRef};
pub use source::{DirSource, EntryKind, MemorySource, Overlay, Source};
pub use system::{ADMIN_VM_CLASS, Domain, System, SystemError};
pub use text::Text;
pub use token::{ADMIN_VM_UUID, TokenClass, TokenError, TokenKind, VmToken};
