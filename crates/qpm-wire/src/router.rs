//! Framing of the simulated dom0's qrexec router socket (not a Qubes
//! protocol; the simulator and its clients only).
//!
//! A client connects, sends one [`RouterRequest`] in a single message with its
//! stdin, stdout and stderr file descriptors attached (`SCM_RIGHTS`), and
//! waits: the router runs the call with those descriptors as the service's
//! standard streams, then answers with one [`RouterStatus`] line. Control
//! requests carry no descriptors and are answered with one text line.

use std::fmt;

/// Longest request accepted (qrexec's own limit on service+argument is 65000).
pub const MAX_ROUTER_REQUEST_LEN: usize = 66000;

const CALL_MAGIC: &[u8] = b"QPMSIM-CALL\0";
const CONTROL_MAGIC: &[u8] = b"QPMSIM-CONTROL\0";

/// What a client asks the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterRequest {
    /// A qrexec call: `source` calls `service_and_arg` on `target`.
    Call {
        /// The calling qube.
        source: String,
        /// The requested target (qube name, `dom0`, `@adminvm`, `@dispvm:X`, ...).
        target: String,
        /// `service[+argument]`.
        service_and_arg: String,
    },
    /// A control command (`ping`, `status`, `shutdown`).
    Control(String),
}

/// Why bytes are not a router request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouterError {
    /// Longer than [`MAX_ROUTER_REQUEST_LEN`].
    TooLong,
    /// Unknown magic or missing fields.
    Malformed,
    /// A field is not UTF-8 or holds a NUL.
    BadField,
}

impl fmt::Display for RouterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooLong => "router request too long",
            Self::Malformed => "malformed router request",
            Self::BadField => "router request field is not valid text",
        })
    }
}

impl std::error::Error for RouterError {}

impl RouterRequest {
    /// Encodes the request (fields must not contain NUL).
    pub fn encode(&self) -> Result<Vec<u8>, RouterError> {
        let mut out = Vec::new();
        let fields: Vec<&str> = match self {
            Self::Call {
                source,
                target,
                service_and_arg,
            } => {
                out.extend_from_slice(CALL_MAGIC);
                vec![source, target, service_and_arg]
            }
            Self::Control(c) => {
                out.extend_from_slice(CONTROL_MAGIC);
                vec![c]
            }
        };
        for f in fields {
            if f.contains('\0') {
                return Err(RouterError::BadField);
            }
            out.extend_from_slice(f.as_bytes());
            out.push(0);
        }
        if out.len() > MAX_ROUTER_REQUEST_LEN {
            return Err(RouterError::TooLong);
        }
        Ok(out)
    }

    /// Decodes one request.
    pub fn decode(buf: &[u8]) -> Result<Self, RouterError> {
        if buf.len() > MAX_ROUTER_REQUEST_LEN {
            return Err(RouterError::TooLong);
        }
        let (rest, n) = if let Some(r) = buf.strip_prefix(CALL_MAGIC) {
            (r, 3)
        } else if let Some(r) = buf.strip_prefix(CONTROL_MAGIC) {
            (r, 1)
        } else {
            return Err(RouterError::Malformed);
        };
        let Some(body) = rest.strip_suffix(b"\0") else {
            return Err(RouterError::Malformed);
        };
        let fields: Vec<&[u8]> = body.split(|&b| b == 0).collect();
        if fields.len() != n {
            return Err(RouterError::Malformed);
        }
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| RouterError::BadField);
        match fields.as_slice() {
            [s, t, a] => Ok(Self::Call {
                source: text(s)?,
                target: text(t)?,
                service_and_arg: text(a)?,
            }),
            [c] => Ok(Self::Control(text(c)?)),
            _ => Err(RouterError::Malformed),
        }
    }
}

/// The router's answer to a call: the exit status the caller should take
/// (the service's own, or qrexec's 126 refused / 127 no such service / 125
/// cannot execute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterStatus(pub i32);

impl RouterStatus {
    /// `exit <code>\n`.
    pub fn encode(self) -> Vec<u8> {
        format!("exit {}\n", self.0).into_bytes()
    }

    /// Parses `exit <code>\n`.
    pub fn decode(buf: &[u8]) -> Result<Self, RouterError> {
        let s = std::str::from_utf8(buf).map_err(|_| RouterError::BadField)?;
        let code = s
            .strip_prefix("exit ")
            .and_then(|r| r.strip_suffix('\n'))
            .ok_or(RouterError::Malformed)?;
        if code.is_empty() || code.len() > 11 {
            return Err(RouterError::Malformed);
        }
        code.parse().map(Self).map_err(|_| RouterError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let r = RouterRequest::Call {
            source: "mgmt".into(),
            target: "dom0".into(),
            service_and_arg: "admin.vm.List".into(),
        };
        assert_eq!(RouterRequest::decode(&r.encode().unwrap()).unwrap(), r);
        let c = RouterRequest::Control("ping".into());
        assert_eq!(RouterRequest::decode(&c.encode().unwrap()).unwrap(), c);
        assert_eq!(
            RouterStatus::decode(&RouterStatus(126).encode()).unwrap(),
            RouterStatus(126)
        );
        assert_eq!(
            RouterStatus::decode(b"exit -1\n").unwrap(),
            RouterStatus(-1)
        );
    }

    #[test]
    fn malformed() {
        assert_eq!(RouterRequest::decode(b"junk"), Err(RouterError::Malformed));
        assert_eq!(
            RouterRequest::decode(b"QPMSIM-CALL\0a\0b\0"),
            Err(RouterError::Malformed)
        );
        assert_eq!(
            RouterRequest::decode(b"QPMSIM-CALL\0a\0b\0c"),
            Err(RouterError::Malformed)
        );
        assert_eq!(
            RouterRequest::decode(b"QPMSIM-CALL\0a\0b\0c\0d\0"),
            Err(RouterError::Malformed)
        );
        assert_eq!(
            RouterRequest::decode(b"QPMSIM-CONTROL\0\xff\0"),
            Err(RouterError::BadField)
        );
        assert!(RouterRequest::Control("a\0".into()).encode().is_err());
        assert!(RouterStatus::decode(b"exit x\n").is_err());
        assert!(RouterStatus::decode(b"exit 1").is_err());
        assert!(RouterStatus::decode(b"exit 99999999999999\n").is_err());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            let _ = RouterRequest::decode(&bytes);
            let _ = RouterStatus::decode(&bytes);
        }
    }
}
