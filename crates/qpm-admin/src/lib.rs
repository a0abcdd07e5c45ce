//! Typed Qubes Admin API client over pluggable transports (qrexec-client-vm,
//! the dom0 qubesd socket, the simulator).
#![forbid(unsafe_code)]
