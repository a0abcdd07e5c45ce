//! A small policy directory and requests built from the input: evaluation
//! never panics, is deterministic, agrees with the rule-by-rule explanation,
//! and ask lists keep their invariants.
//!
//! Input: `MAIN 0xff INCLUDE 0xff OLD 0xff REQUESTS 0xff QUBE-BITS`, the three
//! policy texts being `30-main.policy`, `include/x` and `include/old`
//! (0xff never occurs in UTF-8), each request four bytes picking a service,
//! argument, caller and target from small pools, and one byte of bits per
//! qube (class, disposable template, default disposable, running, tags).
#![no_main]

use libfuzzer_sys::fuzz_target;
use qpm_policy::{Decision, Domain, LoadOptions, MemorySource, Outcome, Policy, Request, System};

const NAMES: [&str; 8] = ["dom0", "work", "vault", "dvm", "sys-usb", "secret", "ghost", "uuid:u-vault"];
const SERVICES: [&str; 4] = ["qubes.A", "qubes.B", "qubes.Filecopy", "x"];
const ARGS: [&str; 4] = ["+", "+a", "+b", "+a+b"];
const TARGETS: [&str; 14] = [
    "", "@default", "@adminvm", "dom0", "@dispvm", "@dispvm:dvm", "@dispvm:work", "@dispvm:uuid:u-dvm", "work",
    "vault", "uuid:u-vault", "ghost", "@anyvm", "uuid:00000000-0000-0000-0000-000000000000",
];

fn system(tags: &[u8]) -> System {
    let mut s = System::new();
    s.insert(Domain::dom0().with_tag("t1"));
    for (i, name) in ["work", "vault", "dvm", "sys-usb", "secret"].into_iter().enumerate() {
        let bits = tags.get(i).copied().unwrap_or(0);
        let mut d = Domain::new(name, if bits & 1 != 0 { "DispVM" } else { "AppVM" })
            .with_uuid(format!("u-{name}"))
            .with_template_for_dispvms(name == "dvm" || bits & 2 != 0)
            .with_default_dispvm(if bits & 4 != 0 { None } else { Some("dvm") })
            .with_power_state(if bits & 8 != 0 { "Running" } else { "Halted" })
            .with_internal(name == "secret");
        if bits & 16 != 0 {
            d = d.with_tag("t1");
        }
        if bits & 32 != 0 {
            d = d.with_tag("t2");
        }
        s.insert(d);
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(5, |&b| b == 0xff);
    let mut next = || parts.next().unwrap_or_default();
    let (main, include, old, requests, tags) = (next(), next(), next(), next(), next());
    let src = MemorySource::from_files([
        ("30-main.policy", main.to_vec()),
        ("include/x", include.to_vec()),
        ("include/old", old.to_vec()),
    ]);
    let Ok(policy) = Policy::load(&src, &LoadOptions::default()) else { return };
    let sys = system(tags);
    let _ = policy.lint(Some(&sys));
    for r in requests.chunks_exact(4).take(16) {
        let (s, a, src, t) = (r[0], r[1], r[2], r[3]);
        let req = Request::new(
            SERVICES[s as usize % SERVICES.len()],
            ARGS[a as usize % ARGS.len()],
            NAMES[src as usize % 6],
            TARGETS[t as usize % TARGETS.len()],
        );
        let d = policy.evaluate(&req, &sys);
        assert_eq!(d, policy.evaluate(&req, &sys));
        let ex = policy.explain(&req, &sys);
        assert_eq!(ex.decision, d);
        let _ = ex.to_string();
        let walked = ex
            .considered
            .iter()
            .find(|c| matches!(c.outcome, Outcome::Decided | Outcome::Fault(_)))
            .map(|c| c.rule.index);
        match &d {
            Decision::Deny(x) if x.rule.is_none() => assert_eq!(walked, None),
            other => assert_eq!(walked, other.rule().map(|r| r.index)),
        }
        if let Decision::Ask(ask) = &d {
            assert!(!ask.targets.is_empty());
            assert!(ask.targets.windows(2).all(|w| w[0] < w[1]));
            if let Some(t) = &ask.default_target {
                assert!(ask.targets.contains(t));
            }
        }
    }
});
