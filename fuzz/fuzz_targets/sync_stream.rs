#![no_main]
//! Every decoder of the sync protocol on arbitrary bytes: no panic, and a
//! decoded manifest re-encodes to an equal manifest.
use libfuzzer_sys::fuzz_target;
use qpm_sync::proto::{self, Manifest, frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }
    let _ = proto::decode_need(data, 64);
    let _ = proto::Outcome::decode(data);
    let _ = proto::Status::decode(data);
    let mut r: &[u8] = data;
    if let Ok(p) = proto::read_frame(&mut r, frame::MANIFEST, "manifest", 1 << 16) {
        let _ = Manifest::decode(&p);
    }
});
