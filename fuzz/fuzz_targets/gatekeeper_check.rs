//! The dom0 policy gatekeeper on fuzzer-chosen policy text, system and
//! configuration: `check` never panics, and every policy it accepts stays
//! inside the package's own qubes (an independent oracle over the parsed
//! rules, see `violation`).
//!
//! Input: `SETUP POLICY`, SETUP being 8 bytes: one byte of bits per qube
//! (`pa`, `pb`, `pd`, `fa`, `fd`, `half`: owned tags, disposable template),
//! one byte choosing the extra targets, one byte choosing the config qube.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qpm_gatekeeper::{Config, ExtraTarget, check};
use qpm_policy::{ActionKind, Domain, PolicyFile, System, TokenKind, VmToken};

const PKG: &str = "p";
const QUBES: [&str; 6] = ["pa", "pb", "pd", "fa", "fd", "half"];
const EXTRA: [(&str, &str); 3] = [("qubes.USBAttach", "fa"), ("qubes.Print+pdf", "fd"), ("qubes.X", "dom0")];

struct Sys {
    system: System,
    owned: Vec<(String, Option<String>, bool)>,
}

fn build(setup: &[u8]) -> (Sys, Config) {
    let mut system = System::new();
    system.insert(Domain::dom0());
    system.insert(Domain::new("mgmt", "AppVM").with_tag("created-by-dom0"));
    let mut owned = Vec::new();
    for (i, name) in QUBES.into_iter().enumerate() {
        let bits = setup.get(i).copied().unwrap_or(match name {
            "pa" | "pb" => 3,
            "pd" => 7,
            _ => 0,
        });
        let dvm = bits & 4 != 0;
        let uuid = format!("00000000-0000-0000-0000-00000000000{i}");
        let mut d = Domain::new(name, if bits & 16 != 0 { "TemplateVM" } else { "AppVM" })
            .with_template_for_dispvms(dvm)
            .with_uuid(uuid.clone());
        if bits & 1 != 0 {
            d = d.with_tag("created-by-mgmt");
        }
        if bits & 2 != 0 {
            d = d.with_tag(format!("qpm-pkg-{PKG}"));
        }
        if bits & 8 != 0 {
            d = d.with_tag("qpm-pkg-other");
        }
        if bits & 32 != 0 {
            d = d.with_tag("created-by-dom0");
        }
        system.insert(d);
        // The oracle's own notion of ownership (docs/gatekeeper.md): the
        // management qube's creation tag and this package's tag, and no other
        // package's tag. Another `created-by-` tag does not matter: a qube
        // created in dom0 carries `created-by-dom0`, and `qpm-dom0 adopt`
        // adds `created-by-mgmt` next to it, which is how dom0 hands it over.
        if bits & 0b1011 == 0b11 {
            owned.push((name.to_owned(), Some(uuid), dvm));
        }
    }
    let extra = setup.get(6).copied().unwrap_or(0);
    let config = Config {
        mgmt: "mgmt".into(),
        extra_targets: EXTRA
            .iter()
            .enumerate()
            .filter(|(i, _)| extra & (1 << i) != 0)
            .map(|(_, (s, t))| ExtraTarget {
                service: (*s).into(),
                target: (*t).into(),
            })
            .collect(),
        config_qube: match setup.get(7).copied().unwrap_or(0) % 3 {
            1 => Some("fa".into()),
            2 => Some("pa".into()),
            _ => None,
        },
    };
    (Sys { system, owned }, config)
}

fn is_owned(sys: &Sys, raw: &str) -> bool {
    sys.owned
        .iter()
        .any(|(n, u, _)| raw == n || u.as_deref().is_some_and(|u| raw.strip_prefix("uuid:") == Some(u)))
}

fn is_owned_dvm(sys: &Sys, name: &str) -> bool {
    sys.owned
        .iter()
        .any(|(n, u, dvm)| *dvm && (name == n || u.as_deref().is_some_and(|u| name.strip_prefix("uuid:") == Some(u))))
}

/// Whether `t` may be named in a rule for `service` (`service+argument`).
fn token_ok(sys: &Sys, config: &Config, t: &VmToken, services: &[String], has_target_param: bool) -> bool {
    let raw = t.to_string();
    match t.kind() {
        TokenKind::AdminVm => false,
        TokenKind::Default => has_target_param,
        TokenKind::DispVmName => raw.strip_prefix("@dispvm:").is_some_and(|n| is_owned_dvm(sys, n)),
        _ => {
            is_owned(sys, &raw)
                || config
                    .extra_targets
                    .iter()
                    .any(|e| e.target == raw && raw != "dom0" && services.iter().any(|s| *s == e.service))
        }
    }
}

fn violation(sys: &Sys, config: &Config, text: &str) -> Option<String> {
    let file = match PolicyFile::parse(text) {
        Ok(f) => f,
        Err(e) => return Some(format!("accepted but does not parse: {e}")),
    };
    if file.rules().count() != file.items.len() {
        return Some("accepted a directive".into());
    }
    for r in file.rules() {
        let svc = r.service.as_deref().map(str::to_owned).unwrap_or_default();
        let arg = r.argument.as_deref().map(str::to_owned).unwrap_or_default();
        let services = [svc.clone(), format!("{svc}{arg}")];
        if r.action.user.as_deref().is_some_and(|u| u != "user") {
            return Some(format!("line {}: user= other than user", r.line));
        }
        let src_any = r.source.kind() == TokenKind::AnyVm;
        let tgt_any = r.target.kind() == TokenKind::AnyVm;
        if src_any || tgt_any {
            let other = if src_any { &r.target } else { &r.source };
            if r.action.kind != ActionKind::Deny || src_any && tgt_any || !is_owned(sys, &other.to_string()) {
                return Some(format!("line {}: @anyvm outside a deny against an owned qube", r.line));
            }
        } else {
            if !token_ok(sys, config, &r.source, &services, false) {
                return Some(format!("line {}: source {} not allowed", r.line, r.source));
            }
            let has_param = r.action.target.is_some() || r.action.default_target.is_some();
            if !token_ok(sys, config, &r.target, &services, has_param) {
                return Some(format!("line {}: target {} not allowed", r.line, r.target));
            }
        }
        for t in [&r.action.target, &r.action.default_target].into_iter().flatten() {
            if t.kind() == TokenKind::Default || !token_ok(sys, config, t, &services, false) {
                return Some(format!("line {}: target= {t} not allowed", r.line));
            }
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let (setup, policy) = data.split_at(data.len().min(8));
    let (sys, config) = build(setup);
    let verdict = check(PKG, policy, &sys.system, &config);
    if !verdict.accepted {
        return;
    }
    let Ok(text) = std::str::from_utf8(policy) else {
        panic!("accepted a policy that is not UTF-8")
    };
    if let Some(v) = violation(&sys, &config, text) {
        panic!("escalation accepted: {v}\n{text}");
    }
});
