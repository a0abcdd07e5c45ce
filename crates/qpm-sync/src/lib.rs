//! In-qube configuration sync: wire protocol, configuration repository,
//! sender, and the receiver's staging, validation, review and journaled apply.
//!
//! Trust: the receiver ([`receiver::Agent`]) treats every byte of the stream
//! as hostile. It accepts only the manifest format of [`proto`] within its
//! limits, only paths its [`config::AgentConfig`] allows, stages content in a
//! private directory, shows a [`diff`] and applies nothing before consent,
//! then applies all-or-nothing through a journal using [`qpm_fs`]'s rooted,
//! symlink-refusing handles. The sender ([`sender`]) trusts its own
//! configuration repository ([`repo`]) but not the target's replies.
//! [`lint`] flags what can run code in files captured from other qubes.
//!
//! ```
//! use qpm_sync::proto::{Manifest, Kind};
//! let m = Manifest { kind: Kind::Status, source: "cfg".into(), entries: vec![] };
//! assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
//! ```
#![forbid(unsafe_code)]
#![allow(
    clippy::collapsible_if,
    clippy::collapsible_match,
    reason = "separate security checks read better nested"
)]

pub mod config;
pub mod diff;
pub mod lint;
pub mod proto;
pub mod receiver;
pub mod repo;
pub mod sender;
