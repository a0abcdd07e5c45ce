//! The package policy gatekeeper: decides whether a package's qrexec policy
//! stays inside that package's own qubes. Shared by `qpm-dom0` and
//! `qpm policy scope-check`.
#![forbid(unsafe_code)]
