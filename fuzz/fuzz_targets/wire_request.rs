//! qubesd's request decoder: never panics; a decoded request re-encodes to
//! bytes that decode to the same request (when its fields are encodable).
#![no_main]
use libfuzzer_sys::fuzz_target;
use qpm_wire::{Request, router::RouterRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::decode(data) {
        if let Ok(bytes) = req.encode() {
            assert_eq!(Request::decode(&bytes).as_ref(), Ok(&req));
        }
    }
    if let Ok(r) = RouterRequest::decode(data) {
        let bytes = r.encode().expect("decoded router requests re-encode");
        assert_eq!(RouterRequest::decode(&bytes).as_ref(), Ok(&r));
    }
});
