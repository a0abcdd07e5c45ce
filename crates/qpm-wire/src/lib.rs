//! Qubes Admin API wire codec: the request header and payload, success /
//! exception / event frames, byte for byte as qubesd speaks them.
//!
//! Pure functions over byte slices: no I/O and no dependencies, so the dom0
//! component can use it and an auditor can read it in one sitting.
#![forbid(unsafe_code)]
