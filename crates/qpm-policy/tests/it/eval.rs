//! Evaluation rules the vectors do not single out, and the three requests
//! on which qrexec's own engine fails (we refuse them).

use qpm_policy::{Decision, DenyReason, Domain, Policy, Request, System};

fn sys() -> System {
    let mut s = System::new();
    s.insert(Domain::dom0().with_tag("admin-tag"));
    s.insert(
        Domain::new("work", "AppVM")
            .with_uuid("u-work")
            .with_tag("t")
            .with_default_dispvm(Some("dvm"))
            .with_power_state("Running"),
    );
    s.insert(Domain::new("vault", "AppVM").with_uuid("u-vault"));
    s.insert(Domain::new("nodvm", "AppVM").with_uuid("u-nodvm"));
    s.insert(
        Domain::new("dvm", "AppVM")
            .with_uuid("u-dvm")
            .with_template_for_dispvms(true)
            .with_tag("dt"),
    );
    s.insert(
        Domain::new("secret", "AppVM")
            .with_internal(true)
            .with_template_for_dispvms(true),
    );
    s
}

fn decide(policy: &str, source: &str, target: &str, call: &str) -> Decision {
    let p = Policy::from_text("30-user.policy", policy).unwrap();
    p.evaluate(&Request::from_call(call, source, target), &sys())
}

fn reason(d: &Decision) -> DenyReason {
    match d {
        Decision::Deny(d) => d.reason,
        other => panic!("expected deny, got {other:?}"),
    }
}

#[test]
fn uuid_aliases_match_both_ways() {
    let d = decide(
        "qubes.A * work vault allow\n",
        "work",
        "uuid:u-vault",
        "qubes.A",
    );
    let Decision::Allow(a) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        a.target, "uuid:u-vault",
        "the target keeps the caller's spelling"
    );
    assert_eq!(a.target_uuid.as_deref(), Some("uuid:u-vault"));
    assert_eq!(a.requested_target, "uuid:u-vault");
    let d = decide(
        "qubes.A * uuid:u-work uuid:u-vault allow\n",
        "work",
        "vault",
        "qubes.A",
    );
    assert!(
        matches!(d, Decision::Allow(ref a) if a.target == "vault"),
        "{d:?}"
    );
    // An unknown UUID is an unknown name: @default.
    let d = decide(
        "qubes.A * work @default allow target=vault\n",
        "work",
        "uuid:nope",
        "qubes.A",
    );
    assert!(
        matches!(d, Decision::Allow(ref a) if a.requested_target == "@default"),
        "{d:?}"
    );
    // Own UUID is not loopback (strings are compared).
    let d = decide("qubes.A * work * allow\n", "work", "uuid:u-work", "qubes.A");
    assert!(matches!(d, Decision::Allow(_)), "{d:?}");
    let d = decide("qubes.A * work * allow\n", "work", "work", "qubes.A");
    assert_eq!(reason(&d), DenyReason::Loopback);
}

#[test]
fn admin_vm_spellings() {
    for t in [
        "dom0",
        "@adminvm",
        "uuid:00000000-0000-0000-0000-000000000000",
    ] {
        let d = decide("qubes.A * work @adminvm allow\n", "work", t, "qubes.A");
        let Decision::Allow(a) = d else {
            panic!("{t}: {d:?}")
        };
        assert_eq!(
            (
                a.target.as_str(),
                a.target_uuid,
                a.requested_target.as_str()
            ),
            ("dom0", None, t)
        );
        assert_eq!(
            reason(&decide(
                "qubes.A * work @anyvm allow\n",
                "work",
                t,
                "qubes.A"
            )),
            DenyReason::NoMatch
        );
    }
    // dom0 named as such carries its tags for @tag: target columns.
    assert!(
        matches!(decide("qubes.A * work @tag:admin-tag deny\n", "work", "dom0", "qubes.A"), Decision::Deny(ref d) if d.reason == DenyReason::DenyRule)
    );
    // @anyvm sources do not match dom0, `*` and @adminvm do.
    assert_eq!(
        reason(&decide(
            "qubes.A * @anyvm * allow\n",
            "dom0",
            "work",
            "qubes.A"
        )),
        DenyReason::NoMatch
    );
    assert!(matches!(
        decide("qubes.A * dom0 * allow\n", "dom0", "work", "qubes.A"),
        Decision::Allow(_)
    ));
}

#[test]
fn dispvm_resolution() {
    let d = decide(
        "qubes.A * work @dispvm allow\n",
        "work",
        "@dispvm",
        "qubes.A",
    );
    let Decision::Allow(a) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        (a.target.as_str(), a.target_uuid.as_deref()),
        ("@dispvm:dvm", Some("@dispvm:uuid:u-dvm"))
    );
    // Through @dispvm:NAME and @dispvm:@tag: target columns.
    assert!(matches!(
        decide(
            "qubes.A * work @dispvm:dvm allow\n",
            "work",
            "@dispvm",
            "qubes.A"
        ),
        Decision::Allow(_)
    ));
    assert!(matches!(
        decide(
            "qubes.A * work @dispvm:@tag:dt allow\n",
            "work",
            "@dispvm:dvm",
            "qubes.A"
        ),
        Decision::Allow(_)
    ));
    assert!(matches!(
        decide(
            "qubes.A * work @dispvm:dvm allow\n",
            "work",
            "@dispvm:uuid:u-dvm",
            "qubes.A"
        ),
        Decision::Allow(_)
    ));
    // No default disposable.
    assert_eq!(
        reason(&decide(
            "qubes.A * nodvm @dispvm allow\n",
            "nodvm",
            "@dispvm",
            "qubes.A"
        )),
        DenyReason::NoDispvmTemplate
    );
    // Not a template, as request or as target=.
    let d = decide(
        "qubes.A * work * allow\n",
        "work",
        "@dispvm:vault",
        "qubes.A",
    );
    assert!(
        matches!(d, Decision::Deny(ref x) if x.reason == DenyReason::InvalidRequest && x.notify && x.rule.is_none()),
        "{d:?}"
    );
    assert_eq!(
        reason(&decide(
            "qubes.A * work * allow target=@dispvm:vault\n",
            "work",
            "vault",
            "qubes.A"
        )),
        DenyReason::InvalidDispvmTemplate
    );
    // Syntactically invalid requested targets: refused without notification.
    for t in [
        "@anyvm",
        "@tag:t",
        "*",
        "@foo",
        "@dispvm:",
        "@dispvm:@tag:dt",
        "@type:AppVM",
    ] {
        let d = decide("* * @anyvm * allow target=vault\n", "work", t, "qubes.A");
        assert!(
            matches!(d, Decision::Deny(ref x) if x.reason == DenyReason::InvalidRequest && !x.notify),
            "{t}: {d:?}"
        );
    }
}

#[test]
fn autostart_and_notify_defaults() {
    let d = decide(
        "qubes.A * work vault allow autostart=no\n",
        "work",
        "vault",
        "qubes.A",
    );
    assert!(
        matches!(d, Decision::Deny(ref x) if x.reason == DenyReason::Autostart && !x.notify),
        "{d:?}"
    );
    let d = decide(
        "qubes.A * vault work allow autostart=no notify=yes\n",
        "vault",
        "work",
        "qubes.A",
    );
    assert!(
        matches!(d, Decision::Allow(ref a) if a.notify && !a.autostart),
        "{d:?}"
    );
    assert!(matches!(
        decide(
            "qubes.A * work dom0 allow autostart=no\n",
            "work",
            "dom0",
            "qubes.A"
        ),
        Decision::Allow(_)
    ));
    let d = decide("qubes.A * work vault deny\n", "work", "vault", "qubes.A");
    assert!(matches!(d, Decision::Deny(ref x) if x.notify));
    let d = decide(
        "qubes.A * work vault ask autostart=no\nqubes.A * work work allow\n",
        "work",
        "vault",
        "qubes.A",
    );
    assert_eq!(reason(&d), DenyReason::AskNoTargets);
}

#[test]
fn ask_target_collection() {
    // Rules are walked last to first: the deny on line 1 removes vault
    // after line 2 added every qube.
    let p = "qubes.A * work vault deny\nqubes.A * work @anyvm ask default_target=@dispvm\nqubes.A * @anyvm @dispvm:@tag:dt allow\n";
    let Decision::Ask(a) = decide(p, "work", "@default", "qubes.A") else {
        panic!()
    };
    // vault removed by the deny, work is the caller, secret is internal,
    // @dispvm became the caller's default disposable.
    assert_eq!(a.targets, ["@dispvm:dvm", "dvm", "nodvm"]);
    assert_eq!(a.default_target.as_deref(), Some("@dispvm:dvm"));
    // target= offers exactly that, the admin VM as dom0.
    let Decision::Ask(a) = decide(
        "qubes.A * work vault ask target=@adminvm default_target=dom0\n",
        "work",
        "vault",
        "qubes.A",
    ) else {
        panic!()
    };
    assert_eq!(
        (a.targets, a.default_target.as_deref()),
        (vec!["dom0".to_owned()], Some("dom0"))
    );
    // A default target not on the list is dropped.
    let Decision::Ask(a) = decide(
        "qubes.A * work vault ask default_target=uuid:u-vault\n",
        "work",
        "vault",
        "qubes.A",
    ) else {
        panic!()
    };
    assert_eq!(
        (a.targets, a.default_target),
        (vec!["vault".to_owned()], None)
    );
}

#[test]
fn engine_faults_are_refused() {
    // 1. @dispvm:NAME column against @dispvm from a qube without default_dispvm.
    let d = decide(
        "qubes.A * nodvm @dispvm:dvm allow\n",
        "nodvm",
        "@dispvm",
        "qubes.A",
    );
    assert_eq!(reason(&d), DenyReason::EngineFault);
    // 2. Collecting ask targets through a @dispvm: token naming no qube.
    let d = decide(
        "qubes.A * work vault ask\nqubes.A * work @dispvm:ghost allow\n",
        "work",
        "vault",
        "qubes.A",
    );
    assert_eq!(reason(&d), DenyReason::EngineFault);
    // 3. ask autostart=no target= a qube that does not exist.
    let d = decide(
        "qubes.A * work vault ask autostart=no target=ghost\n",
        "work",
        "vault",
        "qubes.A",
    );
    assert_eq!(reason(&d), DenyReason::EngineFault);
}

#[test]
fn noninteractive_evaluation() {
    let p = Policy::from_text("a.policy", "admin.vm.List * mgmt @tag:created-by-mgmt allow target=dom0\nadmin.vm.List * mgmt @anyvm ask\n").unwrap();
    let mut s = sys();
    s.insert(Domain::new("mgmt", "AppVM"));
    s.insert(Domain::new("app", "AppVM").with_tag("created-by-mgmt"));
    assert!(p.is_allowed(&Request::from_call("admin.vm.List", "mgmt", "app"), &s));
    assert!(
        !p.is_allowed(&Request::from_call("admin.vm.List", "mgmt", "work"), &s),
        "ask counts as deny"
    );
}
