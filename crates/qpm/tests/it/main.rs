//! Integration tests of the `qpm` binary.

mod gatekeeper;
mod pkg;
mod pkgfiles;
mod policy;
mod repo;
mod sim;
mod sync;
