//! Integration tests of the policy engine.

mod conformance;
mod eval;
mod load;
mod parse;
mod props;
