//! A simulated dom0: serves the Admin API with qubesd semantics on a unix
//! socket and routes qrexec calls between simulated qubes through real policy
//! evaluation.
//!
//! The pieces:
//! * [`model`]: the system state and qubesd's rules (classes, properties,
//!   defaults, validation, features, tags, labels, volumes, firewall);
//! * [`api`]: the Admin API methods over the model, with qubesd's checks in
//!   qubesd's order;
//! * the servers (qubesd socket, qrexec router), the state directory and
//!   the qube file model live in the other modules and are driven by the
//!   `qpm-sim` binary.
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod conformance;
pub mod daemon;
pub mod defaults;
pub mod dom0svc;
pub mod fdpass;
pub mod model;
pub mod policy;
pub mod policy_engine;
pub mod populate;
pub mod qubefs;
pub mod router;
pub mod server;
pub mod sim;
pub mod store;
