#![no_main]
//! RelPath validation: whatever is accepted has only safe components.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = qpm_fs::RelPath::from_bytes(data) {
        assert!(!p.as_str().starts_with('/'));
        assert!(p.depth() <= qpm_fs::MAX_DEPTH);
        for c in p.components() {
            assert!(!c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
        }
    }
});
