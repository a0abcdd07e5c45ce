//! Integration tests of the `qpm` binary.

mod gatekeeper;
mod policy;
mod repo;
mod sim;
mod sync;
