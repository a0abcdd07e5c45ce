//! Integration tests of the `qpm` binary.

mod repo;
mod sync;
