//! The qrexec policy engine: a faithful parser and evaluator for the Qubes OS
//! `/etc/qubes/policy.d/*.policy` language, plus explain and lints.
//!
//! Depends on no other qpm crate.
#![forbid(unsafe_code)]
