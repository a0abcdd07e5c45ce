//! In-qube configuration sync: wire protocol, staging, validation, review and
//! atomic apply.
#![forbid(unsafe_code)]
