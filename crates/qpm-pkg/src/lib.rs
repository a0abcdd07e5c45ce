//! Multi-qube application packages: manifest, planner and journaled apply.
//!
//! A package is a directory (or a single-file archive of it) holding a
//! `qpm.toml` manifest, the package's qrexec policy files and files to put
//! into its qubes. [`manifest::load_dir`] reads and validates it; every error
//! names the file, line and field.
//!
//! ```
//! let text = r#"
//! [package]
//! name = "demo"
//! version = "1.0.0"
//! summary = "A demo"
//!
//! [qubes.demo-app]
//! class = "AppVM"
//! template = "debian-13-xfce"
//! label = "blue"
//! netvm = "none"
//! "#;
//! let m = qpm_pkg::manifest::parse("qpm.toml".as_ref(), text).unwrap();
//! assert_eq!(m.qubes["demo-app"].template.as_deref(), Some("debian-13-xfce"));
//! ```
#![forbid(unsafe_code)]

pub mod apply;
pub mod calls;
pub mod journal;
pub mod manifest;
pub mod names;
pub mod plan;
pub mod record;
pub mod state;

use std::path::PathBuf;

/// Why a package operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An Admin API call failed.
    #[error(transparent)]
    Admin(#[from] qpm_admin::Error),
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// Local file trouble (state directory, package files).
    #[error("`{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Another run holds the lock.
    #[error("another qpm run holds `{}`; wait for it to finish", .0.display())]
    Locked(PathBuf),
    /// Checks against the system failed before any change.
    #[error("refused before any change:\n  {}", .0.join("\n  "))]
    Refused(Vec<String>),
    /// The user changed settings the new version changes too.
    #[error("{} setting(s) changed by you are changed by the package too; pass --keep-mine or --take-package:\n  {}", .0.len(), conflicts(.0))]
    Conflicts(Vec<plan::Change>),
    /// Qubes must be halted first.
    #[error("these qubes must be halted for the change (pass --shutdown to let qpm shut them down): {}", .0.join(", "))]
    MustHalt(Vec<String>),
    /// Something outside the package refers to its qubes.
    #[error("cannot remove: other settings refer to the package's qubes:\n  {}", .0.join("\n  "))]
    Blocked(Vec<String>),
    /// The package is not installed.
    #[error("package `{0}` is not installed")]
    NotInstalled(String),
    /// The gatekeeper refused the policy.
    #[error("dom0's gatekeeper rejected the policy:\n  {}", .0.join("\n  "))]
    PolicyRejected(Vec<String>),
    /// Anything else about the plan.
    #[error("{0}")]
    Plan(String),
}

fn show(v: &Option<String>) -> String {
    match v {
        None => "(default)".to_owned(),
        Some(s) => format!("{s:?}"),
    }
}

fn conflicts(c: &[plan::Change]) -> String {
    c.iter()
        .map(|c| {
            format!(
                "{}: {}: yours {}, last applied {}, new version {}",
                c.qube,
                c.key,
                show(&c.yours),
                show(&c.applied),
                show(&c.package)
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}
