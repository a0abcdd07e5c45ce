//! Package archive unpacker: any bytes, never a panic, never a file outside
//! the fresh output directory, and nothing left behind on error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qpm_repo::archive::{Limits, unpack};

fuzz_target!(|data: &[u8]| {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let limits = Limits {
        max_archive_bytes: 1 << 20,
        max_unpacked_bytes: 4 << 20,
        max_file_bytes: 1 << 20,
        max_entries: 256,
        ..Limits::default()
    };
    let r = unpack(data, &out, &limits);
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    match r {
        Ok(_) => assert_eq!(names, ["out"]),
        Err(_) => assert!(names.is_empty(), "left behind: {names:?}"),
    }
});
