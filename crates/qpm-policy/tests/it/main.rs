//! Integration tests of the policy engine.

mod conformance;
