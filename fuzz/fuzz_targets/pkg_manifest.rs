//! The package manifest parser and what the planner derives from a valid
//! manifest: never a panic; a valid manifest plans against an empty system
//! and its records round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qpm_pkg::plan::{self, Options};
use qpm_pkg::record::Record;
use qpm_pkg::state::Actual;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = qpm_pkg::manifest::parse("qpm.toml".as_ref(), text) else {
        return;
    };
    for q in m.qubes.values() {
        let settings = plan::desired(q);
        let r = Record {
            qube: q.name.clone(),
            package: m.name.clone(),
            version: m.version.to_string(),
            qubes: m.qubes.keys().cloned().collect(),
            data: q.data,
            settings,
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
    }
    let opts = Options {
        mgmt: "mgmt".into(),
        ..Options::default()
    };
    let _ = plan::plan_apply(&m, "", &Actual::default(), &opts);
});
