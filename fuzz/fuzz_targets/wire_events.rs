//! The incremental event decoder, fed in arbitrary chunks: never panics,
//! bounded, and decoded events re-encode to the bytes consumed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qpm_wire::EventDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let cut = (split as usize).min(rest.len());
    let mut d = EventDecoder::new();
    let mut reencoded = Vec::new();
    for chunk in [&rest[..cut], &rest[cut..]] {
        d.push(chunk);
        while let Ok(Some(e)) = d.next_event() {
            reencoded.extend(e.encode());
        }
    }
    if d.finish().is_ok() {
        assert_eq!(reencoded, rest);
    }
});
