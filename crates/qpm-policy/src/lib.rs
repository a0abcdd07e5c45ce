//! The qrexec policy engine: a faithful parser and evaluator for the Qubes OS
//! `/etc/qubes/policy.d/*.policy` language, with explanations, lints and a
//! canonical printer.
//!
//! It decides exactly what qrexec's policy daemon decides (checked against
//! the conformance vectors recorded from the reference engine): the same
//! files in the same order, the same syntax errors on the same lines, the
//! same allow / ask / deny with the same target, user, autostart, notify,
//! ask list and default target. It depends on no other qpm crate.
//!
//! # Use
//!
//! ```
//! use qpm_policy::{Decision, Domain, MemorySource, LoadOptions, Policy, Request, System};
//!
//! // A policy directory (here in memory; `Policy::load_dir` reads a real one).
//! let dir = MemorySource::from_files([
//!     ("30-user.policy", "qubes.Filecopy * work @anyvm ask default_target=vault\n!include include/extra\n"),
//!     ("include/extra", "* * @anyvm @anyvm deny notify=no\n"),
//! ]);
//! let policy = Policy::load(&dir, &LoadOptions::default()).unwrap();
//!
//! // The qubes, built in code (or `System::from_json` for the JSON shape
//! // `{"domains": {NAME: {...}}}`).
//! let mut sys = System::new();
//! sys.insert(Domain::dom0());
//! sys.insert(Domain::new("work", "AppVM"));
//! sys.insert(Domain::new("vault", "AppVM"));
//!
//! let call = Request::from_call("qubes.Filecopy", "work", "vault");
//! let Decision::Ask(ask) = policy.evaluate(&call, &sys) else { panic!() };
//! assert_eq!(ask.targets, ["vault"]);
//! assert_eq!(ask.rule.to_string(), "30-user.policy:1");
//! assert!(!policy.is_allowed(&call, &sys)); // non-interactive: ask is a no
//!
//! // Why: the deciding line and every earlier line for the service.
//! let why = policy.explain(&Request::from_call("qubes.OpenURL", "work", "vault"), &sys);
//! assert!(why.to_string().contains("include/extra:1"));
//! ```
//!
//! # What other crates call
//!
//! * Loading: [`Policy::load_dir`], [`Policy::load_file`], [`Policy::load`]
//!   with any [`Source`] ([`DirSource`], [`MemorySource`]), and
//!   [`Policy::validate_change`] / [`Overlay`] to validate a directory with
//!   one file replaced or removed (what `policy.Replace` / `policy.Remove`
//!   check before writing). A [`LoadError`] carries `file`, `line` and an
//!   [`ErrorKind`]; the first error in load order wins, as in qrexec.
//!   Loading is cheap (about 2 ms for 10,000 rules); [`PolicyCache`] keeps
//!   a directory loaded and reloads it when a file's size, mtime or inode
//!   changes.
//! * Deciding: [`Policy::evaluate`] returns a [`Decision`] (allow / ask /
//!   deny with a [`DenyReason`]) and the deciding rule's [`RuleRef`];
//!   [`Policy::is_allowed`] is the non-interactive answer (ask counts as
//!   deny, as for `admin.vm.List` filtering); [`Policy::explain`];
//!   [`Policy::lint`].
//! * One file, position by position (the gatekeeper): [`PolicyFile::parse`]
//!   (first error) and [`PolicyFile::parse_all`] (every line in error), a
//!   [`PolicyFile`] of [`Item`]s: each [`Rule`] with its line, service,
//!   argument, [`VmToken`] source and target (raw text and [`TokenKind`]),
//!   [`Action`] with every parameter; each [`Directive`] with its line.
//!   [`PolicyFile::to_canonical`] prints it back.
//! * [`System`] / [`Domain`]: the qubes, built in code or from JSON.
//!
//! # Trust and bounds
//!
//! Policy text, system descriptions and requests are untrusted. Files are
//! read with a size cap ([`MAX_FILE_SIZE`]); includes are walked with an
//! explicit stack, never recursion, with a depth limit, cycle detection and
//! budgets on files opened, bytes read and rules ([`limits`]). Nothing
//! panics on bad input. The evaluation index uses keyed hashes, so a
//! crafted policy cannot flood it, and every candidate is checked in full.
//!
//! # Where it differs from the reference on purpose
//!
//! * Include cycles, includes deeper than [`limits::MAX_INCLUDE_DEPTH`] and
//!   absurdly large policies are load errors with a clear message (the
//!   reference exhausts its recursion or memory: every call is refused there
//!   too).
//! * The three requests on which the reference engine fails with an internal
//!   error are denied with [`DenyReason::EngineFault`].
//! * A relative include that climbs above the policy directory with `..` is
//!   refused (the reference follows it).
//! * Only one policy directory is loaded (qrexec also merges
//!   `/run/qubes/policy.d`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod text;

mod cache;
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

pub use cache::{MAX_WATCHED_DEPTH, MAX_WATCHED_ENTRIES, PolicyCache};
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
