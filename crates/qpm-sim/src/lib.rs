//! A simulated dom0: serves the Admin API with qubesd semantics on a unix
//! socket and routes qrexec calls between simulated qubes through real policy
//! evaluation.
#![forbid(unsafe_code)]
