//! Integration tests of the `qpm` binary.

mod policy;
mod repo;
mod sim;
mod sync;
