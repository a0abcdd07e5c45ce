//! Errors of Admin API calls: the exception classes qubesd sends, mapped to
//! a typed kind, and what can go wrong on the way (refused by qrexec,
//! aborted by qubesd, malformed replies, transport failures).

use std::fmt;

/// qubesd's exception classes (`qubes/exc.py`), plus the two protocol roots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExceptionKind {
    /// `QubesException` (the base class), or an unknown class.
    Generic,
    /// `QubesVMNotFoundError`.
    VmNotFound,
    /// `QubesVMInvalidUUIDError`.
    VmInvalidUuid,
    /// `QubesVMAlreadyExistsError`.
    VmAlreadyExists,
    /// `QubesVMError`.
    VmError,
    /// `QubesVMInUseError`.
    VmInUse,
    /// `QubesVMNotStartedError`.
    VmNotStarted,
    /// `QubesVMNotRunningError`.
    VmNotRunning,
    /// `QubesVMNotPausedError`.
    VmNotPaused,
    /// `QubesVMNotSuspendedError`.
    VmNotSuspended,
    /// `QubesVMNotHaltedError`.
    VmNotHalted,
    /// `QubesVMShutdownTimeoutError`.
    VmShutdownTimeout,
    /// `QubesNoTemplateError`.
    NoTemplate,
    /// `QubesMemoryError`.
    Memory,
    /// `QubesPoolInUseError`.
    PoolInUse,
    /// `QubesValueError`.
    Value,
    /// `QubesPropertyValueError`.
    PropertyValue,
    /// `QubesNoSuchPropertyError`.
    NoSuchProperty,
    /// `QubesNotImplementedError`.
    NotImplemented,
    /// `QubesFeatureNotFoundError`.
    FeatureNotFound,
    /// `QubesTagNotFoundError`.
    TagNotFound,
    /// `QubesLabelNotFoundError`.
    LabelNotFound,
    /// `QubesInvalidTagError`.
    InvalidTag,
    /// `QubesInvalidLabelError`.
    InvalidLabel,
    /// `QubesInvalidLabelValueError`.
    InvalidLabelValue,
    /// `QubesLabelInUseError`.
    LabelInUse,
    /// `QubesVolumeNotFoundError`.
    VolumeNotFound,
    /// `QubesPoolNotFoundError`.
    PoolNotFound,
    /// `QubesVolumeRevisionNotFoundError`.
    VolumeRevisionNotFound,
    /// `QubesVolumeCopyTokenNotFoundError`.
    VolumeCopyTokenNotFound,
    /// `QubesVolumeCopyInUseError`.
    VolumeCopyInUse,
    /// `BackupCancelledError`.
    BackupCancelled,
    /// `BackupAlreadyRunningError`.
    BackupAlreadyRunning,
    /// `QubesBackupProfileNotFoundError`.
    BackupProfileNotFound,
    /// `ProtocolError`: the request was malformed.
    Protocol,
    /// `PermissionDenied`: refused by an admin-permission handler.
    PermissionDenied,
}

const CLASSES: &[(&str, ExceptionKind)] = {
    use ExceptionKind::*;
    &[
        ("QubesException", Generic),
        ("QubesVMNotFoundError", VmNotFound),
        ("QubesVMInvalidUUIDError", VmInvalidUuid),
        ("QubesVMAlreadyExistsError", VmAlreadyExists),
        ("QubesVMError", VmError),
        ("QubesVMInUseError", VmInUse),
        ("QubesVMNotStartedError", VmNotStarted),
        ("QubesVMNotRunningError", VmNotRunning),
        ("QubesVMNotPausedError", VmNotPaused),
        ("QubesVMNotSuspendedError", VmNotSuspended),
        ("QubesVMNotHaltedError", VmNotHalted),
        ("QubesVMShutdownTimeoutError", VmShutdownTimeout),
        ("QubesNoTemplateError", NoTemplate),
        ("QubesMemoryError", Memory),
        ("QubesPoolInUseError", PoolInUse),
        ("QubesValueError", Value),
        ("QubesPropertyValueError", PropertyValue),
        ("QubesNoSuchPropertyError", NoSuchProperty),
        ("QubesNotImplementedError", NotImplemented),
        ("QubesFeatureNotFoundError", FeatureNotFound),
        ("QubesTagNotFoundError", TagNotFound),
        ("QubesLabelNotFoundError", LabelNotFound),
        ("QubesInvalidTagError", InvalidTag),
        ("QubesInvalidLabelError", InvalidLabel),
        ("QubesInvalidLabelValueError", InvalidLabelValue),
        ("QubesLabelInUseError", LabelInUse),
        ("QubesVolumeNotFoundError", VolumeNotFound),
        ("QubesPoolNotFoundError", PoolNotFound),
        ("QubesVolumeRevisionNotFoundError", VolumeRevisionNotFound),
        ("QubesVolumeCopyTokenNotFoundError", VolumeCopyTokenNotFound),
        ("QubesVolumeCopyInUseError", VolumeCopyInUse),
        ("BackupCancelledError", BackupCancelled),
        ("BackupAlreadyRunningError", BackupAlreadyRunning),
        ("QubesBackupProfileNotFoundError", BackupProfileNotFound),
        ("ProtocolError", Protocol),
        ("PermissionDenied", PermissionDenied),
    ]
};

impl ExceptionKind {
    /// The kind of a class name (unknown classes are [`Generic`]).
    ///
    /// [`Generic`]: ExceptionKind::Generic
    pub fn from_class(class: &str) -> Self {
        CLASSES
            .iter()
            .find(|(c, _)| *c == class)
            .map_or(Self::Generic, |(_, k)| *k)
    }

    /// The class name qubesd uses.
    pub fn class(self) -> &'static str {
        CLASSES
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("QubesException", |(c, _)| c)
    }

    /// The parent class (`None` for the roots).
    pub fn parent(self) -> Option<Self> {
        use ExceptionKind::*;
        match self {
            Generic | Protocol | PermissionDenied => None,
            VmInUse | VmNotStarted | VmNotSuspended | VmNotHalted | VmShutdownTimeout
            | NoTemplate | Memory => Some(VmError),
            VmNotRunning | VmNotPaused => Some(VmNotStarted),
            PropertyValue => Some(Value),
            _ => Some(Generic),
        }
    }

    /// Whether this kind is `other` or derives from it (Python `isinstance`).
    pub fn is(self, other: Self) -> bool {
        let mut k = Some(self);
        while let Some(x) = k {
            if x == other {
                return true;
            }
            k = x.parent();
        }
        false
    }
}

/// An exception qubesd reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QubesError {
    /// The typed kind.
    pub kind: ExceptionKind,
    /// The class name as sent (kept for unknown classes).
    pub class: String,
    /// The message (`str(exc)`).
    pub message: String,
}

impl fmt::Display for QubesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message.escape_debug())
    }
}

/// A policy admin service failure (`<Class> <message>` on stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyAdminError {
    /// Class, e.g. `PolicyAdminTokenException`.
    pub class: String,
    /// Message.
    pub message: String,
}

impl fmt::Display for PolicyAdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message.escape_debug())
    }
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// qubesd answered with an exception.
    #[error("{method} on `{dest}`: {error}")]
    Qubes {
        /// The method.
        method: String,
        /// The destination.
        dest: String,
        /// The exception.
        error: QubesError,
    },
    /// qubesd closed the connection without an answer (framing error,
    /// internal error, request too long).
    #[error("{method} on `{dest}`: qubesd aborted the call (empty reply)")]
    Aborted {
        /// The method.
        method: String,
        /// The destination.
        dest: String,
    },
    /// qrexec refused the call (policy), exit status 126.
    #[error("{service} on `{dest}`: refused by qrexec policy")]
    Refused {
        /// The service (method).
        service: String,
        /// The requested target.
        dest: String,
    },
    /// The service does not exist in the target (exit 127).
    #[error("{service} on `{dest}`: no such service")]
    NoSuchService {
        /// The service.
        service: String,
        /// The target.
        dest: String,
    },
    /// A service exited with a failure status.
    #[error("{service} on `{dest}`: exit status {status}")]
    ServiceFailed {
        /// The service.
        service: String,
        /// The target.
        dest: String,
        /// Exit status.
        status: i32,
        /// Its stderr (bounded, lossily decoded).
        stderr: String,
    },
    /// A policy admin service refused the request.
    #[error("{service}: {error}")]
    PolicyAdmin {
        /// The service.
        service: String,
        /// The failure.
        error: PolicyAdminError,
    },
    /// The reply is not what the protocol allows.
    #[error("{method} on `{dest}`: malformed reply: {detail}")]
    Protocol {
        /// The method.
        method: String,
        /// The destination.
        dest: String,
        /// What is wrong.
        detail: String,
    },
    /// The transport failed (process, socket).
    #[error("{what}: {source}")]
    Transport {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An argument cannot be sent as is (would change the framing).
    #[error("invalid {what}: `{value}`")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// Its value (escaped).
        value: String,
    },
}

impl Error {
    /// The qubesd exception, if that is what this is.
    pub fn qubes(&self) -> Option<&QubesError> {
        match self {
            Self::Qubes { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whether qubesd raised `kind` (or a subclass of it).
    pub fn is(&self, kind: ExceptionKind) -> bool {
        self.qubes().is_some_and(|e| e.kind.is(kind))
    }

    /// Whether the call was refused (policy) or denied (admin extension).
    pub fn is_denied(&self) -> bool {
        matches!(self, Self::Refused { .. }) || self.is(ExceptionKind::PermissionDenied)
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Transport {
            what: what.into(),
            source,
        }
    }
}

/// Results of the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchy() {
        use ExceptionKind::*;
        assert!(PropertyValue.is(Value));
        assert!(PropertyValue.is(Generic));
        assert!(!Value.is(PropertyValue));
        assert!(VmNotRunning.is(VmNotStarted));
        assert!(VmNotRunning.is(VmError));
        assert!(!Protocol.is(Generic));
        assert_eq!(
            ExceptionKind::from_class("QubesVMNotFoundError"),
            VmNotFound
        );
        assert_eq!(ExceptionKind::from_class("SomethingNew"), Generic);
        for (c, k) in CLASSES {
            assert_eq!(k.class(), *c);
        }
    }
}
