//! Typed Qubes Admin API client over pluggable transports.
//!
//! qpm talks to dom0 only through this crate. The same code runs against:
//! * a real management qube: [`transport::QrexecClientVm`] runs
//!   `qrexec-client-vm DEST METHOD+ARG` per call (DEST is the qube the call
//!   is about, `dom0` for global calls); qrexec policy decides;
//! * dom0 itself: [`transport::QubesdSocket`] writes qubesd's request header
//!   (`METHOD+ARG dom0 name DEST\0payload`) on `/var/run/qubesd.sock`;
//! * the simulator: [`transport::Simulator`] calls through `qpm-sim`'s qrexec
//!   router as a simulated qube.
//!
//! Replies are untrusted: every reply is decoded by `qpm-wire` and parsed by
//! [`parse`] with size bounds; a malformed reply is an [`Error::Protocol`],
//! never a panic. qubesd's exceptions become [`Error::Qubes`] with a typed
//! [`ExceptionKind`] (with Python's class hierarchy: [`Error::is`]); a call
//! refused by qrexec is [`Error::Refused`]; an aborted call (empty reply) is
//! [`Error::Aborted`].
//!
//! The policy administration services (`policy.List`, `policy.Get`,
//! `policy.Replace` with its `sha256:` token, `policy.Remove`,
//! `policy.include.*`) are dom0 qrexec services, not qubesd methods; the
//! client speaks their exit-status + stderr framing too
//! ([`Error::PolicyAdmin`]).
//!
//! ```no_run
//! use qpm_admin::{Client, transport::QrexecClientVm};
//!
//! let client = Client::new(QrexecClientVm::new("/usr/bin/qrexec-client-vm"));
//! for q in client.list_qubes()? {
//!     let netvm = client.property(Some(&q.name), "netvm")?;
//!     println!("{} {} netvm={}", q.name, q.class, netvm.value);
//! }
//! # Ok::<(), qpm_admin::Error>(())
//! ```
//!
//! Several calls can run at once: [`Client::parallel`] bounds them by
//! [`Client::max_in_flight`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
pub mod error;
pub mod events;
pub mod parse;
pub mod transport;

pub use client::{Client, DEFAULT_MAX_IN_FLIGHT, MAX_SERVICE_OUTPUT, PoolSpec, ShutdownOptions};
pub use error::{Error, ExceptionKind, PolicyAdminError, QubesError, Result};
pub use events::EventStream;
pub use parse::{PropType, Property, QubeInfo};
pub use qpm_wire::Event;
