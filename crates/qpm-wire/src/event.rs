//! The event stream of `admin.Events` and `admin.Vm.Stats`: a sequence of
//! `1\0 <subject>\0 <event>\0 (<key>\0 <value>\0)* \0` messages with no
//! success header, until the client disconnects.

use std::fmt;

/// Longest single event accepted by [`EventDecoder`] (header included).
pub const MAX_EVENT_LEN: usize = 1024 * 1024;
/// Most keyword arguments accepted in one event.
pub const MAX_EVENT_KWARGS: usize = 256;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The qube the event is about; empty for global (system) events.
    pub subject: String,
    /// Event name, e.g. `domain-add` or `property-set:netvm`.
    pub name: String,
    /// Keyword arguments in the order they were sent.
    pub kwargs: Vec<(String, String)>,
}

impl Event {
    /// An event without arguments.
    pub fn new(subject: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            name: name.into(),
            kwargs: Vec::new(),
        }
    }

    /// Adds one keyword argument.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.kwargs.push((key.into(), value.into()));
        self
    }

    /// The value of keyword argument `key`, if present.
    pub fn kwarg(&self, key: &str) -> Option<&str> {
        self.kwargs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Encodes this event as qubesd sends it. NUL bytes inside fields would
    /// break the framing; they are replaced by `?` (qubesd only sends ASCII
    /// names and stringified values).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"1\0");
        let mut field = |s: &str| {
            out.extend(s.bytes().map(|b| if b == 0 { b'?' } else { b }));
            out.push(0);
        };
        field(&self.subject);
        field(&self.name);
        for (k, v) in &self.kwargs {
            // an empty key would end the event early
            field(if k.is_empty() { "?" } else { k });
            field(v);
        }
        out.push(0);
        out
    }
}

/// Why the event stream cannot be decoded further.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventError {
    /// A message does not start with the event header `1\0`.
    BadHeader(Vec<u8>),
    /// One event is longer than [`MAX_EVENT_LEN`].
    TooLong {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// One event has more than [`MAX_EVENT_KWARGS`] arguments.
    TooManyArgs {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A field is not valid UTF-8.
    NotUtf8,
    /// An empty event name.
    EmptyName,
    /// The stream ended in the middle of an event.
    Truncated,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadHeader(h) => write!(f, "unknown event header `{}`", h.escape_ascii()),
            Self::TooLong { limit } => write!(f, "event longer than {limit} bytes"),
            Self::TooManyArgs { limit } => write!(f, "event with more than {limit} arguments"),
            Self::NotUtf8 => f.write_str("event field is not UTF-8"),
            Self::EmptyName => f.write_str("event without a name"),
            Self::Truncated => f.write_str("event stream ended inside an event"),
        }
    }
}

impl std::error::Error for EventError {}

/// Incremental decoder: feed it whatever bytes arrive with [`push`], then
/// take complete events with [`next_event`].
///
/// A stream that starts with an exception frame (`2\0...`, e.g. a refused
/// `admin.Events` call) is reported by [`next_event`] as
/// [`EventError::BadHeader`]; callers that want the exception decode the
/// buffered bytes with [`crate::Reply::decode`] via [`buffered`].
///
/// [`push`]: EventDecoder::push
/// [`next_event`]: EventDecoder::next_event
/// [`buffered`]: EventDecoder::buffered
#[derive(Debug, Default)]
pub struct EventDecoder {
    buf: Vec<u8>,
    failed: Option<EventError>,
}

impl EventDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes received but not yet consumed by an event.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The next complete event, `Ok(None)` when more bytes are needed.
    /// After an error the decoder stays failed.
    pub fn next_event(&mut self) -> Result<Option<Event>, EventError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match parse_one(&self.buf) {
            Ok(Some((event, used))) => {
                self.buf.drain(..used);
                Ok(Some(event))
            }
            Ok(None) => {
                if self.buf.len() > MAX_EVENT_LEN {
                    return Err(self.fail(EventError::TooLong {
                        limit: MAX_EVENT_LEN,
                    }));
                }
                Ok(None)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Call at end of stream: an error if a partial event is buffered.
    pub fn finish(&mut self) -> Result<(), EventError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.fail(EventError::Truncated))
        }
    }

    fn fail(&mut self, e: EventError) -> EventError {
        self.failed = Some(e.clone());
        if matches!(e, EventError::TooLong { .. }) {
            self.buf.clear();
        }
        e
    }
}

/// Parses one event from the start of `buf`: the event and the bytes used,
/// `None` if incomplete.
fn parse_one(buf: &[u8]) -> Result<Option<(Event, usize)>, EventError> {
    let Some(header) = buf.get(..2) else {
        if buf.first().is_some_and(|&b| b != b'1') {
            return Err(EventError::BadHeader(buf.to_vec()));
        }
        return Ok(None);
    };
    if header != b"1\0" {
        return Err(EventError::BadHeader(header.to_vec()));
    }
    let mut pos = 2usize;
    let next_field = |pos: &mut usize| -> Result<Option<String>, EventError> {
        let rest = buf.get(*pos..).unwrap_or_default();
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return Ok(None);
        };
        let raw = rest.get(..end).unwrap_or_default();
        *pos = pos.saturating_add(end).saturating_add(1);
        String::from_utf8(raw.to_vec())
            .map(Some)
            .map_err(|_| EventError::NotUtf8)
    };
    let Some(subject) = next_field(&mut pos)? else {
        return Ok(None);
    };
    let Some(name) = next_field(&mut pos)? else {
        return Ok(None);
    };
    if name.is_empty() {
        return Err(EventError::EmptyName);
    }
    let mut kwargs = Vec::new();
    loop {
        let Some(key) = next_field(&mut pos)? else {
            return Ok(None);
        };
        if key.is_empty() {
            return Ok(Some((
                Event {
                    subject,
                    name,
                    kwargs,
                },
                pos,
            )));
        }
        let Some(value) = next_field(&mut pos)? else {
            return Ok(None);
        };
        if kwargs.len() >= MAX_EVENT_KWARGS {
            return Err(EventError::TooManyArgs {
                limit: MAX_EVENT_KWARGS,
            });
        }
        kwargs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_established() {
        let e = Event::new("", "connection-established");
        assert_eq!(e.encode(), b"1\0\0connection-established\0\0");
        let mut d = EventDecoder::new();
        d.push(&e.encode());
        assert_eq!(d.next_event().unwrap(), Some(e));
        assert_eq!(d.next_event().unwrap(), None);
        d.finish().unwrap();
    }

    #[test]
    fn byte_by_byte() {
        let a = Event::new("work", "property-set:netvm")
            .with("name", "netvm")
            .with("newvalue", "sys-net")
            .with("oldvalue", "");
        let b = Event::new("", "domain-add").with("vm", "x");
        let mut bytes = a.encode();
        bytes.extend(b.encode());
        let mut d = EventDecoder::new();
        let mut got = Vec::new();
        for byte in bytes {
            d.push(&[byte]);
            while let Some(e) = d.next_event().unwrap() {
                got.push(e);
            }
        }
        assert_eq!(got, vec![a.clone(), b]);
        assert_eq!(a.kwarg("newvalue"), Some("sys-net"));
        assert_eq!(a.kwarg("nope"), None);
    }

    #[test]
    fn errors() {
        let mut d = EventDecoder::new();
        d.push(b"2\0QubesException\0\0m\0");
        assert!(matches!(d.next_event(), Err(EventError::BadHeader(_))));
        assert!(d.next_event().is_err(), "stays failed");
        let mut d = EventDecoder::new();
        d.push(b"1\0\0\0\0");
        assert_eq!(d.next_event(), Err(EventError::EmptyName));
        let mut d = EventDecoder::new();
        d.push(b"1\0x\0\xff\0\0");
        assert_eq!(d.next_event(), Err(EventError::NotUtf8));
        let mut d = EventDecoder::new();
        d.push(b"1\0x\0y\0k\0");
        assert_eq!(d.next_event(), Ok(None));
        assert_eq!(d.finish(), Err(EventError::Truncated));
        let mut d = EventDecoder::new();
        d.push(b"1\0");
        d.push(&vec![b'a'; MAX_EVENT_LEN]);
        assert!(matches!(d.next_event(), Err(EventError::TooLong { .. })));
        let mut d = EventDecoder::new();
        let mut e = Event::new("s", "n");
        for i in 0..=MAX_EVENT_KWARGS {
            e = e.with(format!("k{i}"), "v");
        }
        d.push(&e.encode());
        assert!(matches!(
            d.next_event(),
            Err(EventError::TooManyArgs { .. })
        ));
    }

    #[test]
    fn encode_sanitises() {
        let e = Event::new("a\0b", "n").with("", "v\0");
        assert_eq!(e.encode(), b"1\0a?b\0n\0?\0v?\0\0");
    }

    proptest::proptest! {
        #[test]
        fn roundtrip(subject in "[a-z0-9-]{0,10}", name in "[a-z:-]{1,20}",
                     kwargs in proptest::collection::vec(("[a-z]{1,5}", "[ -~]{0,10}"), 0..5),
                     split in 0usize..100) {
            let e = Event { subject, name, kwargs };
            let bytes = e.encode();
            let cut = split.min(bytes.len());
            let mut d = EventDecoder::new();
            d.push(&bytes[..cut]);
            let first = d.next_event().unwrap();
            d.push(&bytes[cut..]);
            let got = match first { Some(x) => x, None => d.next_event().unwrap().unwrap() };
            proptest::prop_assert_eq!(got, e);
        }

        #[test]
        fn decode_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..50), 0..8)) {
            let mut d = EventDecoder::new();
            for c in chunks {
                d.push(&c);
                while let Ok(Some(_)) = d.next_event() {}
            }
            let _ = d.finish();
        }
    }
}
