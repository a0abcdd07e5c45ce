//! Integration tests of the `qpm` binary.

mod policy;
mod repo;
mod sync;
