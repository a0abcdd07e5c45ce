//! Signed package repositories: index format, signatures, verification.
#![forbid(unsafe_code)]
