//! A hostile qubesd: whatever it sends, the client returns an error (never a
//! panic, never unbounded memory), and well-formed replies still work.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use qpm_admin::transport::QubesdSocket;
use qpm_admin::{Client, Error, ExceptionKind};

/// Serves `replies` in order, one per connection (after reading the request).
fn fake(replies: Vec<Vec<u8>>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qubesd.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for reply in replies {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let mut req = Vec::new();
            let _ = s.read_to_end(&mut req);
            for chunk in reply.chunks(7919) {
                if s.write_all(chunk).is_err() {
                    break;
                }
            }
        }
    });
    (dir, path)
}

fn client(path: &PathBuf) -> Client {
    Client::new(QubesdSocket::new(path))
}

#[test]
fn garbage_replies_are_protocol_errors() {
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"0".to_vec(),
        b"9\0junk".to_vec(),
        b"2\0".to_vec(),
        b"2\0Bad Class\0\0m\0".to_vec(),
        b"1\0\0connection-established\0\0".to_vec(),
        b"0\0\xff\xfe".to_vec(),
        b"0\0dom0 class=AdminVM\n".to_vec(),
        b"0\0dom 0 class=AdminVM state=Running\n".to_vec(),
        b"0\0=x class=AppVM state=Halted\n".to_vec(),
    ];
    let n = cases.len();
    let (_d, p) = fake(cases);
    let c = client(&p);
    let mut errors = Vec::new();
    for _ in 0..n {
        match c.list_qubes() {
            Ok(v) => panic!("accepted a malicious reply: {v:?}"),
            Err(e) => errors.push(e),
        }
    }
    assert!(matches!(errors[0], Error::Aborted { .. }));
    for e in &errors[1..] {
        assert!(matches!(e, Error::Protocol { .. }), "{e}");
    }
}

#[test]
fn oversized_reply_is_refused_without_reading_it_all() {
    let mut big = b"0\0".to_vec();
    big.resize(qpm_wire::MAX_REPLY_LEN + 10, b'a');
    let (_d, p) = fake(vec![big]);
    let e = client(&p).list_qubes().unwrap_err();
    assert!(matches!(e, Error::Protocol { .. }), "{e}");
}

#[test]
fn malformed_property_replies() {
    let cases: Vec<Vec<u8>> = vec![
        b"0\0default=Yes type=int 1".to_vec(),
        b"0\0default=True type=float 1.0".to_vec(),
        b"0\0default=True".to_vec(),
        b"0\0".to_vec(),
        b"0\0a default=True type=str \\x\n".to_vec(),
        b"0\0nospace\n".to_vec(),
        b"0\0a default=True type=str ok\n\n".to_vec(),
    ];
    let (_d, p) = fake(cases);
    let c = client(&p);
    for _ in 0..4 {
        assert!(matches!(
            c.property(Some("work"), "memory"),
            Err(Error::Protocol { .. })
        ));
    }
    for _ in 0..3 {
        assert!(matches!(
            c.properties(Some("work")),
            Err(Error::Protocol { .. })
        ));
    }
}

#[test]
fn exception_classes_are_typed_and_unknown_ones_generic() {
    let (_d, p) = fake(vec![
        b"2\0QubesVMNotFoundError\0\0No such domain: 'x'\0".to_vec(),
        b"2\0SomethingNewError\0\0?\0".to_vec(),
        b"2\0QubesPropertyValueError\0traceback\0bad\0extra\0args\0".to_vec(),
    ]);
    let c = client(&p);
    assert!(c.start("x").unwrap_err().is(ExceptionKind::VmNotFound));
    let e = c.start("x").unwrap_err();
    assert_eq!(e.qubes().unwrap().class, "SomethingNewError");
    assert!(e.is(ExceptionKind::Generic));
    assert!(c.start("x").unwrap_err().is(ExceptionKind::Value));
}

#[test]
fn malicious_event_streams_end_in_errors() {
    let mut huge = b"1\0\0".to_vec();
    huge.resize(qpm_wire::event::MAX_EVENT_LEN + 100, b'e');
    let (_d, p) = fake(vec![
        huge,
        b"1\0\0ok\0\0garbage".to_vec(),
        b"1\0\0\0\0".to_vec(),
        b"1\0\0connection-established\0\0".to_vec(),
    ]);
    let c = client(&p);
    let mut s = c.events(None).unwrap();
    assert!(matches!(s.next_event(), Err(Error::Protocol { .. })));
    let mut s = c.events(None).unwrap();
    assert_eq!(s.next_event().unwrap().unwrap().name, "ok");
    assert!(s.next_event().is_err());
    let mut s = c.events(None).unwrap();
    assert!(s.next_event().is_err());
    let mut s = c.events(None).unwrap();
    assert_eq!(
        s.next_event().unwrap().unwrap().name,
        "connection-established"
    );
    assert!(s.next_event().unwrap().is_none(), "clean end of stream");
}

#[test]
fn arguments_that_would_break_framing_are_refused_locally() {
    let (_d, p) = fake(vec![]);
    let c = client(&p);
    for bad in ["a b", "a\0b", "", "x/y", "-x\n"] {
        let e = c.property(Some("work"), bad).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{bad:?}: {e}");
    }
    assert!(matches!(
        c.start("bad name"),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        c.create("AppVM", "x y", "red", None),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        c.set_firewall("work", &["action=accept\naction=drop".into()]),
        Err(Error::InvalidArgument { .. })
    ));
}
