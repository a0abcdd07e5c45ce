//! Arbitrary bytes (up to 1 MB) as a policy file: loading and parsing never
//! panic and stay bounded; what parses prints canonically and parses back
//! to the same rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qpm_policy::{LoadOptions, MemorySource, Policy, PolicyFile};

fuzz_target!(|data: &[u8]| {
    if data.len() > 1 << 20 {
        return;
    }
    // Through the loader: bytes as a file (encoding, limits, includes of
    // files that do not exist, first error wins).
    let src = MemorySource::from_files([("30-fuzz.policy", data.to_vec())]);
    let loaded = Policy::load(&src, &LoadOptions::default());
    if let Ok(p) = &loaded {
        let _ = p.lint(None);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        assert!(loaded.is_err(), "invalid UTF-8 must not load");
        return;
    };
    // Every line in error, in order; the first is the loader's error for a
    // file without directives.
    let (file, errors) = PolicyFile::parse_all(text);
    assert!(errors.windows(2).all(|w| w[0].line < w[1].line));
    match PolicyFile::parse(text) {
        Ok(f) => {
            assert!(errors.is_empty());
            let printed = f.to_canonical();
            let back = PolicyFile::parse(&printed).expect("canonical form parses");
            assert!(back.same_items(&f), "round trip changed the policy:\n{printed}");
            assert_eq!(back.to_canonical(), printed);
        }
        Err(e) => assert_eq!(Some(&e), errors.first()),
    }
    let _ = file.to_canonical();
});
