//! The package policy gatekeeper: decides whether a package's qrexec policy
//! stays inside that package's own qubes, and stores accepted policies in
//! dom0's policy directory. Shared by `qpm-dom0` (the dom0 services) and
//! `qpm policy scope-check` (the same verdict for authors).
//!
//! # What it trusts
//! Nothing in the submitted policy. It trusts the system description it is
//! given (in dom0: read from qubesd) and the administrator's [`Config`].
//!
//! # The rules
//! A package `P` submitted by management qube `M`. An *owned qube* exists,
//! is not dom0, carries the tags `created-by-M` and `qpm-pkg-P` and no other
//! `qpm-pkg-*` tag. [`check`] accepts a policy only if every line is valid
//! for the real parser (R1); holds only tab, LF and printable ASCII (R2);
//! lines ≤ 4096 bytes, file ≤ 65536 (R3); no directives (R4); no `*`,
//! `admin.*`, `policy.*` or `qpm.*` service (R5); sources are owned qubes,
//! `@dispvm:` of an own disposable template, or `@anyvm` in a deny fence
//! (R6); targets are owned, `@dispvm:` of an own disposable template, an
//! administrator-opened extra target, `@default` with `target=`, or `@anyvm`
//! in a deny fence (R7, R9); `target=`/`default_target=` likewise (R8);
//! never dom0 (R10); no `@anyvm` outside fences, `*`, `@tag:`, `@type:`,
//! bare `@dispvm`, `@dispvm:@tag:`, `uuid:` (R11); names exist and are owned
//! (R12); `user=` only `user` (R13); deny lines are confined too, except a
//! deny fence: `@anyvm` on exactly one side, an owned qube on the other
//! (R14); extra targets only as targets of their service (R15).
//!
//! ```
//! use qpm_gatekeeper::{Config, check};
//! use qpm_policy::{Domain, System};
//! let mut sys = System::new();
//! sys.insert(Domain::dom0());
//! sys.insert(Domain::new("sd-app", "AppVM").with_tag("created-by-mgmt").with_tag("qpm-pkg-sd"));
//! let config = Config { mgmt: "mgmt".into(), extra_targets: vec![], config_qube: None };
//! let v = check("sd", b"qubes.Filecopy * @anyvm sd-app deny\n", &sys, &config);
//! assert!(v.accepted);
//! let v = check("sd", b"qubes.Filecopy * @tag:x sd-app allow\n", &sys, &config);
//! assert_eq!(v.violations[0].line, Some(1));
//! ```
#![forbid(unsafe_code)]

mod rules;
mod store;

pub use rules::{
    Config, ExtraTarget, MAX_FILE_BYTES, MAX_LINE_BYTES, MAX_VIOLATIONS, RuleId, Verdict,
    Violation, check,
};
pub use store::{
    DISABLED_SUFFIX, FILE_PREFIX, Recheck, Store, StoreError, valid_package, write_atomic,
};
