//! Qubes Admin API wire codec: the request header and payload, success /
//! exception / event frames, byte for byte as qubesd speaks them, plus the
//! framing of the simulated qrexec router.
//!
//! Pure functions over byte slices: no I/O and no dependencies, so the dom0
//! component can use it and an auditor can read it in one sitting.
//!
//! # What it trusts
//!
//! Nothing. Every decoder takes untrusted bytes, bounds them before parsing
//! ([`MAX_REQUEST_LEN`], [`MAX_REPLY_LEN`], [`event::MAX_EVENT_LEN`]), never
//! panics and reports what was wrong. Encoders refuse values that would change
//! the framing (a space in a method name, a NUL in a destination).
//!
//! # The protocol in one picture
//!
//! ```text
//! request:  <method>+<arg> SP <src> SP name SP <dest> NUL <payload...>   then EOF
//! success:  "0" NUL <value...>                                           then EOF
//! error:    "2" NUL <ExceptionClass> NUL <traceback> NUL <message> NUL   then EOF
//! event:    "1" NUL <subject> NUL <event> NUL (<key> NUL <value> NUL)* NUL
//! aborted:  nothing at all, connection closed
//! ```
//!
//! # Example
//!
//! ```
//! use qpm_wire::{Request, Reply};
//!
//! let req = Request::new("admin.vm.property.Get", "netvm", "dom0", "work", b"");
//! let bytes = req.encode().unwrap();
//! assert_eq!(bytes, b"admin.vm.property.Get+netvm dom0 name work\0");
//! assert_eq!(Request::decode(&bytes).unwrap(), req);
//!
//! let reply = Reply::decode(b"0\0default=True type=vm sys-firewall").unwrap();
//! assert_eq!(reply, Reply::Success(b"default=True type=vm sys-firewall".to_vec()));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod event;
pub mod getall;
mod reply;
mod request;
pub mod router;

pub use event::{Event, EventDecoder};
pub use reply::{MAX_REPLY_LEN, Reply, ReplyError, encode_exception, encode_success};
pub use request::{EncodeError, FrameError, MAX_REQUEST_LEN, Request};
