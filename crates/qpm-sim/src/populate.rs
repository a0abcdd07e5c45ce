//! Growing a system for benchmarks and load tests: many AppVMs created
//! through the Admin API handlers (so they are exactly what `Create` makes).

use crate::api::{AllowAll, Call, Context, NoHost, handle};
use crate::model::System;

/// Adds `n` AppVMs named `bench-<i>` (labels and templates rotating over the
/// existing ones); returns the system. Raises the qid limit when `n` needs
/// more qubes than Qubes allows (254).
pub fn with_appvms(mut sys: System, n: usize) -> System {
    let needed = u32::try_from(sys.qubes.len() + n + 1).unwrap_or(u32::MAX);
    sys.max_qid = sys.max_qid.max(needed);
    let templates: Vec<String> = sys
        .qubes
        .iter()
        .filter(|q| q.class == crate::model::VmClass::TemplateVM)
        .map(|q| q.name.clone())
        .collect();
    let labels: Vec<String> = sys.labels.iter().map(|l| l.name.clone()).collect();
    let mut tokens = Default::default();
    let mut host = NoHost;
    for i in 0..n {
        let template = templates
            .get(i % templates.len().max(1))
            .cloned()
            .unwrap_or_default();
        let label = labels
            .get(i % labels.len().max(1))
            .cloned()
            .unwrap_or_default();
        let payload = format!("name=bench-{i} label={label}");
        let mut ctx = Context {
            sys: &mut sys,
            filter: &AllowAll,
            host: &mut host,
            next_uuid: None,
            clone_tokens: &mut tokens,
        };
        let _ = handle(
            &mut ctx,
            Call {
                source: b"dom0",
                method: b"admin.vm.Create.AppVM",
                dest: b"dom0",
                arg: template.as_bytes(),
                payload: payload.as_bytes(),
            },
        );
    }
    sys
}
