//! The simulated qubesd's state and rules: qubes of every class with typed
//! properties (defaults, validation, write-once), features, tags, labels,
//! pools, volumes, firewall; global properties. Everything here is pure
//! (no I/O); the API layer drives it and the store persists it.

pub(crate) mod firewall;
pub mod fixture;
pub(crate) mod lifecycle;
pub(crate) mod ops;
pub(crate) mod pyval;
pub mod schema;
pub mod system;
pub(crate) mod values;

pub use schema::{PropType, VmClass};
pub use system::{Label, Pool, PowerState, Qube, System, Volume};
pub use values::Val;

/// How a call ends when it does not succeed: an exception frame, or an
/// aborted connection (qubesd's answer to any non-Qubes Python exception).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// An exception frame with this class name and message.
    Exception {
        /// Class name as qubesd sends it.
        class: String,
        /// Human message (not compared by the conformance checker).
        message: String,
    },
    /// No frame; the connection is closed. The text names the internal error
    /// for the log.
    Abort(String),
}

impl ApiError {
    /// An exception frame.
    pub fn exc(class: &str, message: impl Into<String>) -> Self {
        Self::Exception {
            class: class.to_string(),
            message: message.into(),
        }
    }

    /// `ProtocolError(message)`.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::exc("ProtocolError", message)
    }

    /// `PermissionDenied(message)`.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::exc("PermissionDenied", message)
    }

    /// An aborted call (internal error in qubesd).
    pub fn abort(what: impl Into<String>) -> Self {
        Self::Abort(what.into())
    }

    /// The exception class name, `None` for an abort.
    pub fn class(&self) -> Option<&str> {
        match self {
            Self::Exception { class, .. } => Some(class),
            Self::Abort(_) => None,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exception { class, message } => write!(f, "{class}: {message}"),
            Self::Abort(m) => write!(f, "aborted: {m}"),
        }
    }
}

impl std::error::Error for ApiError {}

/// Shorthand for results of the model.
pub type ApiResult<T> = Result<T, ApiError>;
