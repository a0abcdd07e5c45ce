//! Reading `admin.Events`.

use std::io::Read;

use qpm_wire::{Event, EventDecoder, Reply};

use crate::error::{Error, ExceptionKind, QubesError, Result};

/// A live event subscription. Dropping it ends the subscription.
pub struct EventStream {
    reader: Box<dyn Read + Send>,
    decoder: EventDecoder,
    dest: String,
    done: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("dest", &self.dest)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// Events decoded from a raw stream.
    pub fn new(reader: Box<dyn Read + Send>, dest: &str) -> Self {
        Self {
            reader,
            decoder: EventDecoder::new(),
            dest: dest.to_string(),
            done: false,
        }
    }

    /// The next event; `Ok(None)` when the stream ended cleanly.
    pub fn next_event(&mut self) -> Result<Option<Event>> {
        let mut buf = [0u8; 8192];
        loop {
            match self.decoder.next_event() {
                Ok(Some(e)) => return Ok(Some(e)),
                Ok(None) => {}
                Err(e) => return Err(self.stream_error(e)),
            }
            if self.done {
                return match self.decoder.finish() {
                    Ok(()) => Ok(None),
                    Err(e) => Err(self.stream_error(e)),
                };
            }
            let n = self
                .reader
                .read(&mut buf)
                .map_err(|e| Error::io("reading events", e))?;
            if n == 0 {
                self.done = true;
                if self.decoder.buffered().is_empty() {
                    return Ok(None);
                }
            }
            self.decoder.push(buf.get(..n).unwrap_or_default());
        }
    }

    fn stream_error(&mut self, e: qpm_wire::event::EventError) -> Error {
        // a refused subscription answers with an exception frame: read it
        // whole (bounded) and report it
        let mut frame = self.decoder.buffered().to_vec();
        if frame.starts_with(b"2\0") && !self.done {
            let _ = (&mut self.reader).take(64 * 1024).read_to_end(&mut frame);
            self.done = true;
        }
        if let Ok(Reply::Exception { class, message, .. }) = Reply::decode(&frame) {
            return Error::Qubes {
                method: "admin.Events".into(),
                dest: self.dest.clone(),
                error: QubesError {
                    kind: ExceptionKind::from_class(&class),
                    class,
                    message,
                },
            };
        }
        Error::Protocol {
            method: "admin.Events".into(),
            dest: self.dest.clone(),
            detail: e.to_string(),
        }
    }
}

impl Iterator for EventStream {
    type Item = Result<Event>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_event().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_events_and_errors() {
        let mut bytes = Event::new("", "connection-established").encode();
        bytes.extend(
            Event::new("work", "domain-start")
                .with("start_guid", "True")
                .encode(),
        );
        let s = EventStream::new(Box::new(std::io::Cursor::new(bytes)), "dom0");
        let got: Vec<Event> = s.map(|e| e.unwrap()).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].subject, "work");
        let mut s = EventStream::new(Box::new(&b"2\0PermissionDenied\0\0no\0"[..]), "dom0");
        assert!(
            s.next_event()
                .unwrap_err()
                .is(ExceptionKind::PermissionDenied)
        );
        // the frame split across reads
        let r = Read::chain(&b"2\0Perm"[..], &b"issionDenied\0\0no\0"[..]);
        let mut s = EventStream::new(Box::new(r), "dom0");
        assert!(
            s.next_event()
                .unwrap_err()
                .is(ExceptionKind::PermissionDenied)
        );
        let mut s = EventStream::new(Box::new(&b"1\0x\0y\0k"[..]), "dom0");
        assert!(matches!(s.next_event(), Err(Error::Protocol { .. })));
    }
}
