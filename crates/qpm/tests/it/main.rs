//! CLI tests: they drive the real `qpm` binary.

mod policy;
