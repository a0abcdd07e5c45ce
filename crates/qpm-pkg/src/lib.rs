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

pub mod manifest;
pub mod names;
