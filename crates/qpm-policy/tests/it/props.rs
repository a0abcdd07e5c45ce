//! Property tests: the canonical printer round-trips, parsing never
//! panics, and the indexed evaluation agrees with a rule-by-rule walk.

use std::collections::BTreeSet;

use proptest::prelude::*;
use qpm_policy::{
    ActionKind, Decision, Domain, LoadOptions, MemorySource, Outcome, Policy, PolicyFile, Request,
    System, TokenKind, VmToken,
};

const NAMES: [&str; 7] = ["work", "vault", "dvm", "sys-usb", "ghost", "dom0", "secret"];

fn uuid_of(name: &str) -> String {
    format!("u-{name}")
}

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(NAMES.to_vec()).prop_map(str::to_owned)
}

fn vm(class: u8) -> impl Strategy<Value = String> {
    // class: 0 source, 1 target, 2 redirect
    let mut options: Vec<BoxedStrategy<String>> = vec![
        name().boxed(),
        name().prop_map(|n| format!("uuid:{}", uuid_of(&n))).boxed(),
        Just("@adminvm".to_owned()).boxed(),
        name().prop_map(|n| format!("@dispvm:{n}")).boxed(),
        name()
            .prop_map(|n| format!("@dispvm:uuid:{}", uuid_of(&n)))
            .boxed(),
    ];
    if class < 2 {
        options.extend([
            Just("*".to_owned()).boxed(),
            Just("@anyvm".to_owned()).boxed(),
            prop::sample::select(vec!["t1", "t2"])
                .prop_map(|t| format!("@tag:{t}"))
                .boxed(),
            prop::sample::select(vec!["AppVM", "AdminVM", "DispVM"])
                .prop_map(|t| format!("@type:{t}"))
                .boxed(),
            prop::sample::select(vec!["t1", "t2"])
                .prop_map(|t| format!("@dispvm:@tag:{t}"))
                .boxed(),
        ]);
    }
    if class >= 1 {
        options.push(Just("@dispvm".to_owned()).boxed());
    }
    if class == 1 {
        options.push(Just("@default".to_owned()).boxed());
    }
    prop::strategy::Union::new(options)
}

fn rule_line() -> impl Strategy<Value = String> {
    let svc_arg = prop_oneof![
        Just(("*".to_owned(), "*".to_owned())),
        (
            prop::sample::select(vec!["qubes.A", "qubes.B"]),
            prop::sample::select(vec!["*", "+", "+x"])
        )
            .prop_map(|(s, a)| (s.to_owned(), a.to_owned())),
    ];
    let yn = || prop::option::of(prop::bool::ANY.prop_map(|b| if b { "yes" } else { "no" }));
    (
        svc_arg,
        vm(0),
        vm(1),
        0..3u8,
        prop::option::of(vm(2)),
        prop::option::of(vm(2)),
        prop::option::of(prop::sample::select(vec!["user", "root", ""])),
        yn(),
        yn(),
        prop::sample::select(vec![" ", "\t", " \t "]),
    )
        .prop_map(
            |((s, a), src, tgt, act, target, dt, user, notify, autostart, sep)| {
                let action = ["allow", "deny", "ask"][act as usize];
                let mut f = vec![s, a, src, tgt.clone(), action.to_owned()];
                if action != "deny" {
                    if let Some(t) = target {
                        f.push(format!("target={t}"));
                    } else if action == "allow" && tgt == "@default" {
                        f.push("target=vault".to_owned());
                    }
                    if let Some(u) = user {
                        f.push(format!("user={u}"));
                    }
                    if let Some(a) = autostart {
                        f.push(format!("autostart={a}"));
                    }
                }
                if action == "ask"
                    && let Some(d) = dt
                {
                    f.push(format!("default_target={d}"));
                }
                if let Some(n) = notify {
                    f.push(format!("notify={n}"));
                }
                f.join(sep)
            },
        )
}

fn file_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        6 => rule_line(),
        1 => Just("# a comment".to_owned()),
        1 => Just(String::new()),
        1 => Just("!include include/x".to_owned()),
        1 => Just("!include-service qubes.A +x include/old".to_owned()),
    ];
    (prop::collection::vec(line, 0..30), prop::bool::ANY)
        .prop_map(|(lines, crlf)| lines.join(if crlf { "\r\n" } else { "\n" }))
}

fn system() -> impl Strategy<Value = System> {
    let dom = (
        prop::collection::vec(prop::sample::select(vec!["t1", "t2"]), 0..2),
        prop::bool::ANY,
        prop::option::of(prop::sample::select(vec!["dvm", "work"])),
        prop::bool::ANY,
        prop::bool::weighted(0.2),
    );
    prop::collection::vec(dom, 5).prop_map(|doms| {
        let mut s = System::new();
        s.insert(Domain::dom0().with_tag("t1"));
        for (n, (tags, tmpl, dd, running, internal)) in
            ["work", "vault", "dvm", "sys-usb", "secret"]
                .iter()
                .zip(doms)
        {
            let mut d = Domain::new(*n, if *n == "sys-usb" { "DispVM" } else { "AppVM" })
                .with_uuid(uuid_of(n))
                .with_template_for_dispvms(tmpl || *n == "dvm")
                .with_default_dispvm(dd)
                .with_internal(internal)
                .with_power_state(if running { "Running" } else { "Halted" });
            for t in tags {
                d = d.with_tag(t);
            }
            s.insert(d);
        }
        s
    })
}

fn request() -> impl Strategy<Value = (String, String, String, String)> {
    let target = prop_oneof![
        name(),
        name().prop_map(|n| format!("uuid:{}", uuid_of(&n))),
        prop::sample::select(vec![
            "",
            "@default",
            "@adminvm",
            "dom0",
            "@dispvm",
            "@dispvm:dvm",
            "@dispvm:work",
            "@anyvm",
            "@dispvm:uuid:u-dvm"
        ])
        .prop_map(str::to_owned),
    ];
    (
        prop::sample::select(vec!["qubes.A", "qubes.B", "qubes.C"]),
        prop::sample::select(vec!["+", "+x", "+y"]),
        prop::sample::select(vec!["work", "vault", "dvm", "sys-usb", "dom0"]),
        target,
    )
        .prop_map(|(s, a, src, t)| (s.to_owned(), a.to_owned(), src.to_owned(), t))
}

/// The ask list as the conformance README describes it, with plain string
/// sets: an independent model of the engine's bitset collection. `None`
/// where the reference engine would fail.
fn model_ask_targets(policy: &Policy, sys: &System, req: &Request<'_>) -> Option<Vec<String>> {
    let src = sys.get(req.source);
    let src_admin = src.is_some_and(|d| d.class == "AdminVM");
    let source_ok = |t: &VmToken| match t.kind() {
        TokenKind::Wildcard => true,
        TokenKind::AnyVm => !src_admin,
        TokenKind::AdminVm => src_admin,
        TokenKind::Name => t.value() == req.source,
        TokenKind::Uuid => src.is_some_and(|d| d.uuid.as_deref() == Some(t.value())),
        TokenKind::Type => src.is_some_and(|d| d.class == t.value()),
        TokenKind::Tag => src.is_some_and(|d| d.tags.iter().any(|x| x == t.value())),
        _ => false,
    };
    let expand = |t: &VmToken| -> Option<Vec<String>> {
        let v = t.value();
        let mut out = Vec::new();
        let all = |out: &mut Vec<String>, admin: bool| {
            for d in sys.domains() {
                if admin || d.class != "AdminVM" {
                    out.push(d.name.clone());
                }
                if d.template_for_dispvms {
                    out.push(format!("@dispvm:{}", d.name));
                }
            }
            out.push("@dispvm".into());
        };
        match t.kind() {
            TokenKind::Wildcard => all(&mut out, true),
            TokenKind::AnyVm => all(&mut out, false),
            TokenKind::AdminVm => out.push("@adminvm".into()),
            TokenKind::Type => out.extend(
                sys.domains()
                    .filter(|d| d.class == v)
                    .map(|d| d.name.clone()),
            ),
            TokenKind::Tag => out.extend(
                sys.domains()
                    .filter(|d| d.tags.iter().any(|x| x == v))
                    .map(|d| d.name.clone()),
            ),
            TokenKind::DispVm => out.push("@dispvm".into()),
            TokenKind::DispVmName | TokenKind::DispVmUuid => {
                let d = if t.kind() == TokenKind::DispVmName {
                    sys.get(v)
                } else {
                    sys.by_uuid(v)
                }?;
                if d.template_for_dispvms {
                    out.push(format!("@dispvm:{}", d.name));
                }
            }
            TokenKind::DispVmTag => out.extend(
                sys.domains()
                    .filter(|d| d.template_for_dispvms && d.tags.iter().any(|x| x == v))
                    .map(|d| format!("@dispvm:{}", d.name)),
            ),
            TokenKind::Name => out.extend(sys.get(v).map(|d| d.name.clone())),
            TokenKind::Uuid => out.extend(sys.by_uuid(v).map(|d| d.name.clone())),
            _ => {}
        }
        Some(out)
    };
    let matching: Vec<_> = policy
        .rules()
        .filter(|(_, r)| {
            r.service.as_deref().is_none_or(|s| s == req.service)
                && r.argument.as_deref().is_none_or(|a| a == req.argument)
                && source_ok(&r.source)
        })
        .collect();
    let mut set = BTreeSet::new();
    for (_, r) in matching.iter().rev() {
        let tok = r.action.target.as_ref().unwrap_or(&r.target);
        for e in expand(tok)? {
            if r.action.kind == ActionKind::Deny {
                set.remove(&e);
            } else {
                set.insert(e);
            }
        }
    }
    if set.remove("@dispvm")
        && let Some(dd) = src.and_then(|d| d.default_dispvm.as_ref())
    {
        set.insert(format!("@dispvm:{dd}"));
    }
    if set.remove("@adminvm") {
        set.insert("dom0".into());
    }
    set.remove(req.source);
    set.retain(|t| {
        !sys.get(t.strip_prefix("@dispvm:").unwrap_or(t))
            .is_some_and(|d| d.internal)
    });
    Some(set.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// print -> parse gives the same policy, and printing is a fixed point.
    #[test]
    fn canonical_printer_round_trips(text in file_text()) {
        let parsed = PolicyFile::parse(&text).unwrap();
        let printed = parsed.to_canonical();
        let back = PolicyFile::parse(&printed).unwrap();
        prop_assert!(back.same_items(&parsed), "{printed}");
        prop_assert_eq!(back.to_canonical(), printed);
    }

    /// Arbitrary text never panics; the first of all errors is the error.
    #[test]
    fn parsing_never_panics(text in "(?s).{0,400}") {
        let (_, all) = PolicyFile::parse_all(&text);
        match PolicyFile::parse(&text) {
            Ok(_) => prop_assert!(all.is_empty()),
            Err(e) => prop_assert_eq!(Some(&e), all.first()),
        }
        let lines: Vec<u32> = all.iter().map(|e| e.line).collect();
        prop_assert!(lines.windows(2).all(|w| w[0] < w[1]), "{:?}", lines);
    }

    /// Token soup built from real keywords never panics either.
    #[test]
    fn token_soup_never_panics(words in prop::collection::vec(prop::sample::select(vec![
        "*", "+", "+x", "@anyvm", "@adminvm", "@default", "@dispvm", "@dispvm:", "@dispvm:@tag:", "@tag:",
        "@type:x", "uuid:", "dom0", "allow", "deny", "ask", "target=", "target=@dispvm", "notify=yes",
        "default_target=x", "user=", "!include", "!include-dir", "!include-service", "!compat-4.0", "#",
        "\n", "\r", "\r\n", "\t", " ", "$anyvm", "$include:", ",", "=", "qubes.A",
    ]), 0..60)) {
        let text = words.join(" ");
        let _ = PolicyFile::parse_all(&text);
        let src = MemorySource::from_files([("10-a.policy", text.as_str()), ("include/x", text.as_str())]);
        let _ = Policy::load(&src, &LoadOptions::default());
    }

    /// The index finds the same first rule as walking every rule in order,
    /// and evaluation is deterministic.
    #[test]
    fn index_agrees_with_linear_walk(text in file_text(), sys in system(), reqs in prop::collection::vec(request(), 1..8)) {
        let src = MemorySource::from_files([
            ("30-a.policy", text.as_str()),
            ("include/x", "qubes.A * @anyvm @anyvm ask\n"),
            ("include/old", "$anyvm $dispvm allow\nwork vault deny\n"),
        ]);
        let policy = Policy::load(&src, &LoadOptions::default()).unwrap();
        for (s, a, src, t) in &reqs {
            let req = Request::new(s, a, src, t);
            let d = policy.evaluate(&req, &sys);
            prop_assert_eq!(&d, &policy.evaluate(&req, &sys));
            let ex = policy.explain(&req, &sys);
            prop_assert_eq!(&ex.decision, &d);
            let decided = ex.considered.iter().find(|c| matches!(c.outcome, Outcome::Decided | Outcome::Fault(_))).map(|c| c.rule.index);
            match &d {
                Decision::Deny(x) if x.rule.is_none() => prop_assert_eq!(decided, None, "{:?}", ex),
                other => prop_assert_eq!(decided, other.rule().map(|r| r.index)),
            }
            if let Decision::Deny(x) = &d
                && x.reason == qpm_policy::DenyReason::AskNoTargets
            {
                let (_, rule) = policy.rule(x.rule.as_ref().unwrap().index).unwrap();
                if rule.action.target.is_none() && rule.action.autostart_or_default() {
                    prop_assert_eq!(model_ask_targets(&policy, &sys, &req), Some(vec![]));
                }
            }
            if let Decision::Ask(ask) = &d {
                let (_, rule) = policy.rule(ask.rule.index).unwrap();
                if rule.action.target.is_none() && rule.action.autostart_or_default() {
                    let model = model_ask_targets(&policy, &sys, &req);
                    prop_assert_eq!(Some(&ask.targets), model.as_ref());
                }
                prop_assert!(!ask.targets.is_empty());
                // Collected lists never offer the caller (a target= list is
                // taken as written).
                prop_assert!(rule.action.target.is_some() || !ask.targets.contains(src));
                prop_assert!(ask.default_target.as_ref().is_none_or(|t| ask.targets.contains(t)));
            }
        }
    }
}
