//! Malformed, truncated, oversized, interleaved and slow requests never
//! crash or wedge the simulator.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::{Served, alive, raw};

#[test]
fn malformed_requests_get_no_answer_and_leave_it_alive() {
    let s = Served::start();
    let sock = s.qubesd();
    for bad in [
        &b""[..],
        b"no nul at all",
        b"admin.vm.List dom0\0",
        b"admin.vm.List dom0 name\0",
        b"admin.vm.List dom0 keyword default\0",
        b"admin.vm.List dom0 bogus dom0\0",
        b"\xff\xfe dom0 name dom0\0",
        b"admin.vm.List \xff name dom0\0",
        b"admin.vm.List dom0 name \xff\0",
        b"admin.vm.List+\xff dom0 name dom0\0",
    ] {
        assert_eq!(
            raw(&sock, bad),
            b"",
            "{bad:?} must be aborted without a byte"
        );
        assert!(alive(&sock));
    }
    // well framed but unknown things are answered with exceptions
    assert!(raw(&sock, b"admin.No dom0 name dom0\0").starts_with(b"2\0ProtocolError\0"));
    assert!(
        raw(&sock, b"admin.vm.List dom0 name nosuch\0").starts_with(b"2\0QubesVMNotFoundError\0")
    );
}

#[test]
fn truncated_requests_are_dropped() {
    let s = Served::start();
    let sock = s.qubesd();
    // the client goes away in the middle of the header
    for cut in [1, 5, 14, 20] {
        let full = b"admin.vm.property.Set+memory dom0 name work\x00800";
        let mut c = UnixStream::connect(&sock).unwrap();
        c.write_all(&full[..cut]).unwrap();
        drop(c);
    }
    assert!(alive(&sock));
    // the header arrived but the payload was cut: qubesd sees what came
    assert_eq!(
        raw(&sock, b"admin.vm.property.Set+memory dom0 name work\x00"),
        b"2\0QubesValueError\0\0Failed to parse property value as int\0"
    );
}

#[test]
fn oversized_requests_are_dropped() {
    let s = Served::start();
    let sock = s.qubesd();
    let mut req = b"admin.vm.feature.Set+x dom0 name work\0".to_vec();
    req.resize(65537, b'a');
    assert_eq!(raw(&sock, &req), b"");
    let mut req = b"admin.vm.notes.Set dom0 name work\0".to_vec();
    req.resize(10 * 1024 * 1024, b'a');
    assert_eq!(raw(&sock, &req), b"");
    // exactly at the limit is served
    let mut req = b"admin.vm.notes.Set dom0 name work\0".to_vec();
    req.resize(65536, b'a');
    assert_eq!(raw(&sock, &req), b"0\0");
    assert!(alive(&sock));
}

#[test]
fn slow_and_interleaved_clients_do_not_wedge_it() {
    let s = Served::start();
    let sock = s.qubesd();
    // 100 clients that send half a header and then hang
    let hanging: Vec<UnixStream> = (0..100)
        .map(|_| {
            let mut c = UnixStream::connect(&sock).unwrap();
            c.write_all(b"admin.vm.prop").unwrap();
            c
        })
        .collect();
    // byte-by-byte writers interleaved with normal calls
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let req = format!("admin.vm.feature.Set+slow{i} dom0 name work\0v");
                let mut c = UnixStream::connect(&sock).unwrap();
                for b in req.as_bytes() {
                    c.write_all(&[*b]).unwrap();
                    std::thread::sleep(Duration::from_millis(2));
                }
                c.shutdown(std::net::Shutdown::Write).unwrap();
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut c, &mut out).unwrap();
                out
            })
        })
        .collect();
    let t = Instant::now();
    for _ in 0..50 {
        assert!(alive(&sock));
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "normal calls stay fast: {:?}",
        t.elapsed()
    );
    for w in writers {
        assert_eq!(w.join().unwrap(), b"0\0");
    }
    drop(hanging);
    assert!(alive(&sock));
}

#[test]
fn random_garbage_never_crashes_it() {
    let s = Served::start();
    let sock = s.qubesd();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for i in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 300) as usize;
        let mut buf: Vec<u8> = (0..len)
            .map(|j| (x.rotate_left(j as u32 % 64) & 0xff) as u8)
            .collect();
        if i % 3 == 0 {
            // make some of it well framed
            let mut framed = b"admin.vm.property.Set+label dom0 name work\0".to_vec();
            framed.append(&mut buf);
            buf = framed;
        }
        let _ = raw(&sock, &buf);
    }
    assert!(alive(&sock));
}

#[test]
fn event_subscribers_that_vanish_are_dropped() {
    let s = Served::start();
    let sock = s.qubesd();
    let mut subs = Vec::new();
    for _ in 0..20 {
        let mut c = UnixStream::connect(&sock).unwrap();
        c.write_all(b"admin.Events dom0 name dom0\0").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        subs.push(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    let status = || {
        let out = std::process::Command::new(super::bin())
            .arg("--sim")
            .arg(s.dir.path())
            .args(["ctl", "status"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["subscribers"].as_u64().unwrap()
    };
    assert_eq!(status(), 20);
    drop(subs);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status() != 0 {
        assert!(
            Instant::now() < deadline,
            "subscriptions of closed connections must end"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(alive(&sock));
}

#[test]
fn router_garbage_is_ignored() {
    let s = Served::start();
    for bad in [
        &b""[..],
        b"\x05\0\0\0hello",
        b"\xff\xff\xff\xffxx",
        b"\x10\0\0\0QPMSIM-CALL\0a\0b\0",
    ] {
        let mut c = UnixStream::connect(s.router()).unwrap();
        let _ = c.write_all(bad);
        drop(c);
    }
    assert!(alive(&s.qubesd()));
    let out = std::process::Command::new(super::bin())
        .arg("--sim")
        .arg(s.dir.path())
        .args(["ctl", "ping"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"ok\n");
}
