//! The request a client writes on qubesd's socket (and qrexec-daemon writes
//! for calls coming from qubes).

use std::fmt;

/// qubesd drops a connection whose request (header and payload together) is
/// longer than this, without answering.
pub const MAX_REQUEST_LEN: usize = 65536;

/// One Admin API call as it travels on qubesd's socket.
///
/// All fields are raw bytes: a decoded request comes from an untrusted peer
/// and may hold anything but the separators that delimit it.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    /// Method name, e.g. `admin.vm.property.Get`.
    pub method: Vec<u8>,
    /// Method argument; empty when there is none.
    pub arg: Vec<u8>,
    /// The calling qube, `dom0` for local clients.
    pub source: Vec<u8>,
    /// The qube the call is about (`dom0` for global calls); a name or
    /// `uuid:<uuid>`. The `keyword adminvm` form is normalised to `dom0`.
    pub dest: Vec<u8>,
    /// Everything after the header's NUL.
    pub payload: Vec<u8>,
}

impl fmt::Debug for Request {
    // The payload may be large or secret: show only its length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &String::from_utf8_lossy(&self.method))
            .field("arg", &String::from_utf8_lossy(&self.arg))
            .field("source", &String::from_utf8_lossy(&self.source))
            .field("dest", &String::from_utf8_lossy(&self.dest))
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Why bytes received on the socket are not a request. qubesd answers all of
/// these by closing the connection without a byte.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The request is longer than [`MAX_REQUEST_LEN`].
    TooLong {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// No NUL byte ends the header.
    NoHeaderEnd,
    /// The header has fewer than four space-separated fields.
    MissingFields,
    /// The destination type is neither `name` nor `keyword adminvm`.
    BadDestType(Vec<u8>),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong { limit } => write!(f, "request longer than {limit} bytes"),
            Self::NoHeaderEnd => f.write_str("request header is not terminated by NUL"),
            Self::MissingFields => f.write_str("request header has fewer than 4 fields"),
            Self::BadDestType(t) => write!(
                f,
                "unsupported destination type `{}`",
                String::from_utf8_lossy(t).escape_debug()
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Why a request cannot be encoded without changing its meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// A field holds a byte that the framing uses as a separator.
    Separator {
        /// Which field (`method`, `arg`, `source`, `dest`).
        field: &'static str,
    },
    /// The method name is empty.
    EmptyMethod,
    /// The encoded request would exceed [`MAX_REQUEST_LEN`].
    TooLong {
        /// The limit that would be exceeded.
        limit: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Separator { field } => {
                write!(f, "request field `{field}` holds a separator byte")
            }
            Self::EmptyMethod => f.write_str("empty method name"),
            Self::TooLong { limit } => write!(f, "request longer than {limit} bytes"),
        }
    }
}

impl std::error::Error for EncodeError {}

impl Request {
    /// A request from text fields (the usual case for a client).
    pub fn new(method: &str, arg: &str, source: &str, dest: &str, payload: &[u8]) -> Self {
        Self {
            method: method.as_bytes().to_vec(),
            arg: arg.as_bytes().to_vec(),
            source: source.as_bytes().to_vec(),
            dest: dest.as_bytes().to_vec(),
            payload: payload.to_vec(),
        }
    }

    /// The bytes to write on the socket before half-closing it:
    /// `<method>+<arg> <source> name <dest>\0<payload>`. The `+` is always
    /// written, as qrexec does.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        if self.method.is_empty() {
            return Err(EncodeError::EmptyMethod);
        }
        for (field, v, plus_ok) in [
            ("method", &self.method, false),
            ("arg", &self.arg, true),
            ("source", &self.source, true),
        ] {
            if v.iter()
                .any(|&b| b == b' ' || b == 0 || (!plus_ok && b == b'+'))
            {
                return Err(EncodeError::Separator { field });
            }
        }
        if self.dest.contains(&0) {
            return Err(EncodeError::Separator { field: "dest" });
        }
        let len = self
            .method
            .len()
            .saturating_add(self.arg.len())
            .saturating_add(self.source.len())
            .saturating_add(self.dest.len())
            .saturating_add(self.payload.len())
            .saturating_add(9);
        if len > MAX_REQUEST_LEN {
            return Err(EncodeError::TooLong {
                limit: MAX_REQUEST_LEN,
            });
        }
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&self.method);
        out.push(b'+');
        out.extend_from_slice(&self.arg);
        out.push(b' ');
        out.extend_from_slice(&self.source);
        out.extend_from_slice(b" name ");
        out.extend_from_slice(&self.dest);
        out.push(0);
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Parses what a client sent before EOF, exactly as qubesd does: header
    /// up to the first NUL, split on the first three spaces into method+arg,
    /// source, destination type and destination; the method split at its
    /// first `+`.
    pub fn decode(buf: &[u8]) -> Result<Self, FrameError> {
        if buf.len() > MAX_REQUEST_LEN {
            return Err(FrameError::TooLong {
                limit: MAX_REQUEST_LEN,
            });
        }
        let nul = buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(FrameError::NoHeaderEnd)?;
        let (header, rest) = buf.split_at(nul);
        let payload = rest.get(1..).unwrap_or_default();
        let mut fields = header.splitn(4, |&b| b == b' ');
        let (Some(meth_arg), Some(source), Some(dest_type), Some(dest)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(FrameError::MissingFields);
        };
        let dest = match (dest_type, dest) {
            (b"name", d) => d,
            (b"keyword", b"adminvm") => b"dom0".as_slice(),
            (t, _) => return Err(FrameError::BadDestType(t.to_vec())),
        };
        let (method, arg) = match meth_arg.iter().position(|&b| b == b'+') {
            Some(p) => (
                meth_arg.get(..p).unwrap_or_default(),
                meth_arg.get(p + 1..).unwrap_or_default(),
            ),
            None => (meth_arg, &[][..]),
        };
        Ok(Self {
            method: method.to_vec(),
            arg: arg.to_vec(),
            source: source.to_vec(),
            dest: dest.to_vec(),
            payload: payload.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_qrexec() {
        let r = Request::new("admin.vm.List", "", "mgmt", "dom0", b"");
        assert_eq!(r.encode().unwrap(), b"admin.vm.List+ mgmt name dom0\0");
        let r = Request::new("admin.vm.property.Set", "netvm", "dom0", "work", b"sys-net");
        assert_eq!(
            r.encode().unwrap(),
            b"admin.vm.property.Set+netvm dom0 name work\0sys-net"
        );
    }

    #[test]
    fn refuses_separators() {
        for (m, a, s, d) in [
            ("a b", "", "dom0", "x"),
            ("a+b", "", "dom0", "x"),
            ("m", "x y", "dom0", "x"),
            ("m", "", "do m0", "x"),
            ("m", "", "dom0", "x\0"),
            ("m", "a\0", "dom0", "x"),
        ] {
            assert!(
                Request::new(m, a, s, d, b"").encode().is_err(),
                "{m:?} {a:?} {s:?} {d:?}"
            );
        }
        assert_eq!(
            Request::new("", "", "dom0", "x", b"").encode(),
            Err(EncodeError::EmptyMethod)
        );
        let big = vec![b'x'; MAX_REQUEST_LEN];
        assert!(matches!(
            Request::new("m", "", "dom0", "d", &big).encode(),
            Err(EncodeError::TooLong { .. })
        ));
    }

    #[test]
    fn decodes_like_qubesd() {
        let r = Request::decode(b"admin.vm.List dom0 name dom0\0").unwrap();
        assert_eq!(r.method, b"admin.vm.List");
        assert_eq!(r.arg, b"");
        let r = Request::decode(b"m+a+b src keyword adminvm\0pay\0load").unwrap();
        assert_eq!(r.method, b"m");
        assert_eq!(r.arg, b"a+b");
        assert_eq!(r.dest, b"dom0");
        assert_eq!(r.payload, b"pay\0load");
        // dest keeps spaces (split at most three times)
        let r = Request::decode(b"m src name a b\0").unwrap();
        assert_eq!(r.dest, b"a b");
        // empty fields are fields
        let r = Request::decode(b"m  name \0").unwrap();
        assert_eq!(r.source, b"");
        assert_eq!(r.dest, b"");
    }

    #[test]
    fn framing_errors() {
        assert_eq!(
            Request::decode(b"m src name d"),
            Err(FrameError::NoHeaderEnd)
        );
        assert_eq!(Request::decode(b""), Err(FrameError::NoHeaderEnd));
        assert_eq!(
            Request::decode(b"m src name\0"),
            Err(FrameError::MissingFields)
        );
        assert_eq!(
            Request::decode(b"m src keyword default\0"),
            Err(FrameError::BadDestType(b"keyword".to_vec()))
        );
        assert!(matches!(
            Request::decode(b"m src uuid x\0"),
            Err(FrameError::BadDestType(_))
        ));
        let mut big = b"m s name d\0".to_vec();
        big.resize(MAX_REQUEST_LEN + 1, b'x');
        assert!(matches!(
            Request::decode(&big),
            Err(FrameError::TooLong { .. })
        ));
        big.truncate(MAX_REQUEST_LEN);
        assert!(Request::decode(&big).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn roundtrip(
            method in "[a-zA-Z0-9._-]{1,40}",
            arg in "[a-zA-Z0-9._+-]{0,40}",
            source in "[a-zA-Z0-9_.-]{0,31}",
            dest in "[ -~]{0,40}",
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            let r = Request::new(&method, &arg, &source, &dest, &payload);
            let bytes = r.encode().unwrap();
            proptest::prop_assert_eq!(Request::decode(&bytes).unwrap(), r);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = Request::decode(&bytes);
        }
    }
}
