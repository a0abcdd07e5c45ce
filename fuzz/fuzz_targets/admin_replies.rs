//! The client's reply parsers: never panic on any bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qpm_admin::parse;

fuzz_target!(|data: &[u8]| {
    let _ = parse::lines(data);
    let _ = parse::names(data);
    let _ = parse::vm_list(data);
    let _ = parse::property(data);
    let _ = parse::property_default(data);
    let _ = parse::property_all(data);
    let _ = parse::key_values(data);
    let _ = parse::current_state(data);
    let _ = parse::flag(data);
    let _ = parse::policy_get(data);
    let _ = qpm_wire::getall::unescape(data);
});
