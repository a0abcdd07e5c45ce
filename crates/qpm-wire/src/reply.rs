//! qubesd's answer to one call: a success frame, an exception frame, or
//! nothing at all (the connection was aborted).

use std::fmt;

/// Replies longer than this are refused by [`Reply::decode`]. The largest
/// legitimate replies (a list of thousands of qubes, notes of 256000 bytes)
/// are far below it.
pub const MAX_REPLY_LEN: usize = 16 * 1024 * 1024;

/// Longest exception class name accepted.
const MAX_CLASS_LEN: usize = 128;

/// A decoded reply.
#[derive(Clone, PartialEq, Eq)]
pub enum Reply {
    /// `0\0` followed by the return value (possibly empty).
    Success(Vec<u8>),
    /// `2\0` followed by the exception class, traceback and message.
    Exception {
        /// Class name, e.g. `QubesVMNotFoundError`.
        class: String,
        /// Traceback text (empty unless qubesd runs with `--debug`).
        traceback: String,
        /// `str(exc)`.
        message: String,
    },
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Success(v) => f
                .debug_tuple("Success")
                .field(&String::from_utf8_lossy(v))
                .finish(),
            Self::Exception { class, message, .. } => f
                .debug_struct("Exception")
                .field("class", class)
                .field("message", message)
                .finish_non_exhaustive(),
        }
    }
}

/// Why bytes read from qubesd are not a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyError {
    /// No byte at all: qubesd aborted the call (framing error, internal
    /// error, oversized request).
    Empty,
    /// The reply is longer than [`MAX_REPLY_LEN`].
    TooLong {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The first two bytes are not a known header.
    BadHeader(Vec<u8>),
    /// An event frame where a single reply was expected.
    UnexpectedEvent,
    /// An exception frame that ends before its class and message.
    Truncated,
    /// An exception class name that is empty, too long or not an identifier.
    BadClass,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty reply (qubesd aborted the call)"),
            Self::TooLong { limit } => write!(f, "reply longer than {limit} bytes"),
            Self::BadHeader(h) => write!(f, "unknown reply header `{}`", h.escape_ascii()),
            Self::UnexpectedEvent => f.write_str("event frame where a reply was expected"),
            Self::Truncated => f.write_str("truncated exception frame"),
            Self::BadClass => f.write_str("invalid exception class name"),
        }
    }
}

impl std::error::Error for ReplyError {}

impl Reply {
    /// Decodes everything qubesd sent on one connection.
    pub fn decode(buf: &[u8]) -> Result<Self, ReplyError> {
        if buf.is_empty() {
            return Err(ReplyError::Empty);
        }
        if buf.len() > MAX_REPLY_LEN {
            return Err(ReplyError::TooLong {
                limit: MAX_REPLY_LEN,
            });
        }
        let (header, body) = buf.split_at(buf.len().min(2));
        match header {
            b"0\0" => Ok(Self::Success(body.to_vec())),
            b"1\0" => Err(ReplyError::UnexpectedEvent),
            b"2\0" => decode_exception(body),
            h => Err(ReplyError::BadHeader(h.to_vec())),
        }
    }

    /// Encodes this reply as qubesd would send it.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Success(v) => encode_success(v),
            Self::Exception {
                class,
                traceback,
                message,
            } => {
                let mut out = encode_exception(class, message);
                if !traceback.is_empty() {
                    // class NUL traceback NUL message NUL
                    let at = 2 + class.len() + 1;
                    out.splice(at..at, traceback.bytes());
                }
                out
            }
        }
    }
}

fn decode_exception(body: &[u8]) -> Result<Reply, ReplyError> {
    let mut parts = body.splitn(3, |&b| b == 0);
    let (Some(class), Some(traceback), Some(rest)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ReplyError::Truncated);
    };
    // The message is NUL-terminated; extra NUL-separated fields (old
    // format arguments) are ignored, as the Python client does.
    let message = rest.split(|&b| b == 0).next().unwrap_or_default();
    if class.is_empty()
        || class.len() > MAX_CLASS_LEN
        || !class
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
    {
        return Err(ReplyError::BadClass);
    }
    Ok(Reply::Exception {
        class: String::from_utf8_lossy(class).into_owned(),
        traceback: String::from_utf8_lossy(traceback).into_owned(),
        message: String::from_utf8_lossy(message).into_owned(),
    })
}

/// `0\0` + value.
pub fn encode_success(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 2);
    out.extend_from_slice(b"0\0");
    out.extend_from_slice(value);
    out
}

/// `2\0` + class NUL (empty traceback) NUL message NUL.
pub fn encode_exception(class: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(class.len() + message.len() + 5);
    out.extend_from_slice(b"2\0");
    out.extend_from_slice(class.as_bytes());
    out.extend_from_slice(b"\0\0");
    out.extend_from_slice(message.as_bytes());
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success() {
        assert_eq!(Reply::decode(b"0\0").unwrap(), Reply::Success(vec![]));
        assert_eq!(
            Reply::decode(b"0\0a\0b").unwrap(),
            Reply::Success(b"a\0b".to_vec())
        );
    }

    #[test]
    fn exception() {
        let bytes = encode_exception("QubesVMNotFoundError", "No such domain: 'x'");
        assert_eq!(bytes, b"2\0QubesVMNotFoundError\0\0No such domain: 'x'\0");
        let r = Reply::decode(&bytes).unwrap();
        assert_eq!(
            r,
            Reply::Exception {
                class: "QubesVMNotFoundError".into(),
                traceback: String::new(),
                message: "No such domain: 'x'".into()
            }
        );
        assert_eq!(r.encode(), bytes);
        let with_tb = Reply::Exception {
            class: "X".into(),
            traceback: "tb".into(),
            message: "m".into(),
        };
        assert_eq!(with_tb.encode(), b"2\0X\0tb\0m\0");
        assert_eq!(Reply::decode(&with_tb.encode()).unwrap(), with_tb);
        // missing final NUL is tolerated
        assert!(matches!(
            Reply::decode(b"2\0X\0\0msg"),
            Ok(Reply::Exception { .. })
        ));
    }

    #[test]
    fn malformed() {
        assert_eq!(Reply::decode(b""), Err(ReplyError::Empty));
        assert_eq!(
            Reply::decode(b"0"),
            Err(ReplyError::BadHeader(b"0".to_vec()))
        );
        assert_eq!(
            Reply::decode(b"3\0"),
            Err(ReplyError::BadHeader(b"3\0".to_vec()))
        );
        assert_eq!(
            Reply::decode(b"1\0\0x\0\0"),
            Err(ReplyError::UnexpectedEvent)
        );
        assert_eq!(Reply::decode(b"2\0X"), Err(ReplyError::Truncated));
        assert_eq!(Reply::decode(b"2\0X\0"), Err(ReplyError::Truncated));
        assert_eq!(Reply::decode(b"2\0\0\0m\0"), Err(ReplyError::BadClass));
        assert_eq!(Reply::decode(b"2\0a b\0\0m\0"), Err(ReplyError::BadClass));
        let big = vec![0u8; MAX_REPLY_LEN + 1];
        assert!(matches!(
            Reply::decode(&big),
            Err(ReplyError::TooLong { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = Reply::decode(&bytes);
        }

        #[test]
        fn exception_roundtrip(class in "[A-Za-z_][A-Za-z0-9_]{0,40}", message in "[^\0]{0,80}") {
            let bytes = encode_exception(&class, &message);
            let r = Reply::decode(&bytes).unwrap();
            proptest::prop_assert_eq!(r, Reply::Exception { class, traceback: String::new(), message });
        }
    }
}
