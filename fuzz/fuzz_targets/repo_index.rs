//! Repository metadata parsers: the index, the timestamp's trusted comment
//! and minisign signature files. Valid input must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qpm_repo::index::{Index, Timestamp};
use qpm_repo::sign::{PublicKey, Signature};

fuzz_target!(|data: &[u8]| {
    if let Ok(idx) = Index::parse(data, "fuzz") {
        let again = Index::parse(&idx.to_bytes(), "fuzz").expect("printed index parses");
        assert_eq!(again, idx);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(sig) = Signature::parse(text) {
            let again = Signature::parse(&sig.to_file()).expect("printed signature parses");
            assert_eq!(again, sig);
            if let Ok(ts) = Timestamp::parse_comment(&sig.trusted_comment, "fuzz") {
                assert_eq!(Timestamp::parse_comment(&ts.to_comment(), "fuzz").unwrap(), ts);
            }
        }
        if let Ok(ts) = Timestamp::parse_comment(text, "fuzz") {
            assert_eq!(ts.to_comment(), text);
        }
        let _ = PublicKey::parse(text);
    }
});
