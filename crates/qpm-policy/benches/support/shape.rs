//! The benchmark policy of issue 3, generated deterministically: `files`
//! files of `per_file` rules, one service per 20 rules (500 for 10,000
//! rules), 200 qubes in 20 tags, sources and targets mixing names,
//! `@tag:`, `@anyvm`, `@dispvm`, arguments `*`/`+a`/`+b`, actions
//! allow/deny/ask; and random requests against it.
//!
//! Shared by `benches/policy.rs` and `examples/policy_mem.rs`.

#![allow(dead_code, unreachable_pub)]

use std::fmt::Write as _;
use std::path::Path;

use qpm_policy::{Domain, System};

pub const QUBES: usize = 200;
pub const TAGS: usize = 20;
pub const RULES_PER_SERVICE: usize = 20;

/// A small deterministic PRNG (xorshift64*), so runs compare.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// True with probability `pct`%.
    pub fn pct(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
}

pub fn qube(i: usize) -> String {
    format!("q{i:03}")
}

fn tag(i: usize) -> String {
    format!("tag{i:02}")
}

/// Every tenth qube is a disposable template.
fn dvm(rng: &mut Rng) -> String {
    qube(rng.below(QUBES / 10) * 10)
}

pub fn system() -> System {
    let mut s = System::new();
    s.insert(Domain::dom0());
    let mut rng = Rng::new(7);
    for i in 0..QUBES {
        let mut d = Domain::new(
            qube(i),
            if i % 10 == 0 {
                "AppVM"
            } else {
                ["AppVM", "TemplateVM", "DispVM"][i % 3]
            },
        )
        .with_uuid(format!("00000000-0000-4000-8000-{i:012}"))
        .with_tag(tag(i % TAGS))
        .with_template_for_dispvms(i % 10 == 0)
        .with_power_state(if rng.pct(50) { "Running" } else { "Halted" });
        if rng.pct(30) {
            d = d.with_tag(tag(rng.below(TAGS)));
        }
        if rng.pct(80) {
            d = d.with_default_dispvm(Some(&dvm(&mut rng)));
        }
        s.insert(d);
    }
    s
}

fn source(rng: &mut Rng) -> String {
    match rng.below(100) {
        0..40 => qube(rng.below(QUBES)),
        40..70 => format!("@tag:{}", tag(rng.below(TAGS))),
        70..90 => "@anyvm".to_owned(),
        90..95 => "*".to_owned(),
        _ => format!("@dispvm:{}", dvm(rng)),
    }
}

fn target(rng: &mut Rng) -> String {
    match rng.below(100) {
        0..35 => qube(rng.below(QUBES)),
        35..60 => format!("@tag:{}", tag(rng.below(TAGS))),
        60..80 => "@anyvm".to_owned(),
        80..90 => "@dispvm".to_owned(),
        90..95 => format!("@dispvm:{}", dvm(rng)),
        _ => "@default".to_owned(),
    }
}

fn rule(rng: &mut Rng, services: usize, out: &mut String) {
    let svc = rng.below(services);
    let arg = ["*", "+a", "+b"][rng.below(3)];
    let src = source(rng);
    let tgt = target(rng);
    let _ = write!(out, "svc.S{svc:05}\t{arg}\t{src}\t{tgt}\t");
    let deny = match rng.below(10) {
        0..4 => {
            out.push_str("allow");
            if tgt == "@default" || rng.pct(10) {
                out.push_str(" target=@dispvm");
            }
            if rng.pct(10) {
                out.push_str(" autostart=no");
            }
            false
        }
        4..7 => {
            out.push_str("deny");
            if rng.pct(20) {
                out.push_str(" notify=no");
            }
            true
        }
        _ => {
            out.push_str("ask");
            if rng.pct(30) {
                let _ = write!(out, " default_target={}", qube(rng.below(QUBES)));
            }
            false
        }
    };
    if !deny && rng.pct(10) {
        out.push_str(" user=root");
    }
    out.push('\n');
}

/// The policy files: `(name, text)`, `files * per_file` rules in total; the
/// last rule is the usual `* * @anyvm @anyvm deny`.
pub fn policy(files: usize, per_file: usize) -> Vec<(String, String)> {
    let services = (files * per_file / RULES_PER_SERVICE).max(1);
    let mut rng = Rng::new(42);
    let mut out = Vec::with_capacity(files);
    for f in 0..files {
        let mut text = format!("# generated policy file {f}\n");
        for r in 0..per_file {
            if f + 1 == files && r + 1 == per_file {
                text.push_str("*\t*\t@anyvm\t@anyvm\tdeny\n");
            } else {
                rule(&mut rng, services, &mut text);
            }
        }
        out.push((format!("{:02}-gen-{f:03}.policy", 10 + f % 80), text));
    }
    out
}

pub fn write_policy(dir: &Path, files: usize, per_file: usize) {
    for (name, text) in policy(files, per_file) {
        std::fs::write(dir.join(name), text).expect("write policy file");
    }
}

/// Random requests `(service, argument, source, target)`.
pub fn requests(n: usize, services: usize, seed: u64) -> Vec<(String, String, String, String)> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let svc = if rng.pct(5) {
                "svc.unknown".to_owned()
            } else {
                format!("svc.S{:05}", rng.below(services))
            };
            let arg = ["+a", "+b", "+c", "+"][rng.below(4)].to_owned();
            let src = if rng.pct(2) {
                "dom0".to_owned()
            } else {
                qube(rng.below(QUBES))
            };
            let tgt = match rng.below(100) {
                0..60 => qube(rng.below(QUBES)),
                60..70 => "@dispvm".to_owned(),
                70..80 => "@default".to_owned(),
                80..85 => format!("@dispvm:{}", dvm(&mut rng)),
                85..90 => format!("uuid:00000000-0000-4000-8000-{:012}", rng.below(QUBES)),
                90..95 => "dom0".to_owned(),
                _ => "no-such-qube".to_owned(),
            };
            (svc, arg, src, tgt)
        })
        .collect()
}
