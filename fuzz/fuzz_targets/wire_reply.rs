//! The reply decoder: never panics; exceptions re-encode and decode equal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qpm_wire::Reply;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Reply::decode(data) {
        if let Reply::Exception { message, traceback, .. } = &r {
            if message.contains('\0') || traceback.contains('\0') {
                return;
            }
        }
        assert_eq!(Reply::decode(&r.encode()).as_ref(), Ok(&r));
    }
});
