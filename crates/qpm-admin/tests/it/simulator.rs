//! The client against a real simulator (in-process), through the qubesd
//! socket and through the qrexec router.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qpm_admin::transport::{QubesdSocket, Simulator};
use qpm_admin::{Client, ExceptionKind, ShutdownOptions};
use qpm_sim::store::StateDir;

pub(crate) struct Sim {
    pub(crate) dir: tempfile::TempDir,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sim {
    /// A simulator whose router refuses every call that is not from dom0.
    pub(crate) fn start() -> Self {
        Self::start_with(false)
    }

    /// A simulator whose router follows its base policy (`policy.d`).
    pub(crate) fn start_with_policy() -> Self {
        Self::start_with(true)
    }

    fn start_with(policy: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let thread = std::thread::spawn(move || {
            let engine: Arc<dyn qpm_sim::policy::PolicyEngine> = if policy {
                qpm_sim::policy::default_engine(&state.policy_dir())
            } else {
                Arc::new(qpm_sim::policy::DenyAll)
            };
            qpm_sim::daemon::serve(&state, &Default::default(), engine).unwrap();
        });
        let router = dir.path().join("run/qrexec.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Simulator::control(&router, "ping").is_err() {
            assert!(Instant::now() < deadline, "simulator did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            dir,
            thread: Some(thread),
        }
    }

    pub(crate) fn router(&self) -> PathBuf {
        self.dir.path().join("run/qrexec.sock")
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.path().join("run/qubesd.sock")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = Simulator::control(&self.router(), "shutdown");
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn exercise(c: &Client) {
    let qubes = c.list_qubes().unwrap();
    assert_eq!(qubes[0].name, "dom0");
    assert_eq!(qubes.len(), 11);
    assert_eq!(c.qube("work").unwrap().class, "AppVM");
    c.create("AppVM", "t1", "green", Some("debian-13-xfce"))
        .unwrap();
    assert!(
        c.tags("t1")
            .unwrap()
            .contains(&"created-by-dom0".to_string())
    );
    assert_eq!(
        c.property(Some("t1"), "template").unwrap().value,
        "debian-13-xfce"
    );
    c.set_property(Some("t1"), "memory", "1000").unwrap();
    let all = c.properties(Some("t1")).unwrap();
    assert_eq!(all["memory"].as_int(), Some(1000));
    assert!(!all["memory"].is_default);
    c.reset_property(Some("t1"), "memory").unwrap();
    assert!(c.property(Some("t1"), "memory").unwrap().is_default);
    assert_eq!(c.property_default(Some("t1"), "label").unwrap(), None);
    assert_eq!(c.feature("t1", "x").unwrap(), None);
    c.set_feature("t1", "x", "1").unwrap();
    assert_eq!(
        c.feature_check_with_template("t1", "os")
            .unwrap()
            .as_deref(),
        Some("Linux")
    );
    assert!(c.remove_feature("t1", "x").unwrap());
    assert!(!c.remove_feature("t1", "x").unwrap());
    c.add_tag("t1", "mine").unwrap();
    assert!(c.has_tag("t1", "mine").unwrap());
    assert!(c.remove_tag("t1", "mine").unwrap());
    assert!(!c.remove_tag("t1", "mine").unwrap());
    assert_eq!(c.label_index("green").unwrap(), 4);
    assert_eq!(c.firewall("t1").unwrap(), ["action=accept"]);
    c.set_firewall("t1", &["action=drop".into()]).unwrap();
    assert_eq!(c.firewall("t1").unwrap(), ["action=drop"]);
    c.create("AppVM", "t2", "green", Some("debian-13-xfce"))
        .unwrap();
    c.clone_volumes("t1", "t2").unwrap();
    c.start("t2").unwrap();
    assert_eq!(c.current_state("t2").unwrap()["power_state"], "Running");
    c.shutdown(
        "t2",
        ShutdownOptions {
            force: false,
            wait: true,
        },
    )
    .unwrap();
    let e = c.shutdown("t2", ShutdownOptions::default()).unwrap_err();
    assert!(e.is(ExceptionKind::VmNotStarted), "{e}");
    c.remove("t2").unwrap();
    c.remove("t1").unwrap();
    assert!(c.qube("t1").unwrap_err().is(ExceptionKind::VmNotFound));
    assert!(
        c.remove("debian-13-xfce")
            .unwrap_err()
            .is(ExceptionKind::VmInUse)
    );
    assert!(
        c.remove("sys-firewall")
            .unwrap_err()
            .is(ExceptionKind::VmNotHalted),
        "started with t2"
    );
    assert_eq!(
        c.property(None, "default_netvm").unwrap().as_vm(),
        Some("sys-firewall")
    );
}

#[test]
fn socket_transport() {
    let s = Sim::start();
    exercise(&Client::new(QubesdSocket::new(s.socket())));
}

#[test]
fn simulator_transport_as_dom0() {
    let s = Sim::start();
    exercise(&Client::new(Simulator::new(s.router(), "dom0")));
}

#[test]
fn events_are_streamed() {
    let s = Sim::start();
    let c = Client::new(Simulator::new(s.router(), "dom0"));
    let mut ev = c.events(None).unwrap();
    assert_eq!(
        ev.next_event().unwrap().unwrap().name,
        "connection-established"
    );
    c.set_property(Some("work"), "memory", "999").unwrap();
    // qubesd sends the pre event first, as it forwards every event
    let pre = ev.next_event().unwrap().unwrap();
    assert_eq!(
        (pre.subject.as_str(), pre.name.as_str()),
        ("work", "property-pre-set:memory")
    );
    let e = ev.next_event().unwrap().unwrap();
    assert_eq!(
        (e.subject.as_str(), e.name.as_str()),
        ("work", "property-set:memory")
    );
    assert_eq!(e.kwarg("newvalue"), Some("999"));
    drop(ev);
    // the subscription ends with the reader
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = Simulator::control(&s.router(), "status").unwrap();
        if st.contains("\"subscribers\":0") {
            break;
        }
        assert!(Instant::now() < deadline, "{st}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn calls_run_in_parallel_bounded() {
    let s = Sim::start();
    let c = Client::new(Simulator::new(s.router(), "dom0")).with_max_in_flight(8);
    let names: Vec<String> = c
        .list_qubes()
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .collect();
    let got = c.parallel(names.clone(), |c, n| {
        c.property(Some(&n), "klass").map(|p| p.value)
    });
    assert_eq!(got.len(), names.len());
    assert!(got.iter().all(Result::is_ok));
}

#[test]
fn refused_calls_are_typed() {
    let s = Sim::start();
    // the engine in this test refuses everything that is not from dom0
    let c = Client::new(Simulator::new(s.router(), "mgmt"));
    let e = c.list_qubes().unwrap_err();
    assert!(e.is_denied(), "{e}");
    assert!(matches!(e, qpm_admin::Error::Refused { .. }));
}

#[test]
fn the_management_qube_sees_and_manages_only_what_policy_allows() {
    let s = Sim::start_with_policy();
    let c = Client::new(Simulator::new(s.router(), "mgmt"));
    let names = |c: &Client| -> Vec<String> {
        c.list_qubes()
            .unwrap()
            .into_iter()
            .map(|q| q.name)
            .collect()
    };
    // dom0 (@adminvm) and the templates only
    assert_eq!(names(&c), ["dom0", "debian-13-xfce", "fedora-42-xfce"]);
    let mut ev = c.events(None).unwrap();
    assert_eq!(
        ev.next_event().unwrap().unwrap().name,
        "connection-established"
    );
    c.create("AppVM", "m1", "red", Some("fedora-42-xfce"))
        .unwrap();
    assert!(c.has_tag("m1", "created-by-mgmt").unwrap());
    assert_eq!(
        names(&c),
        ["dom0", "debian-13-xfce", "fedora-42-xfce", "m1"]
    );
    c.set_property(Some("m1"), "memory", "800").unwrap();
    assert_eq!(
        c.property(Some("m1"), "memory").unwrap().as_int(),
        Some(800)
    );
    // read-only on templates, nothing on other qubes
    assert_eq!(
        c.property(Some("fedora-42-xfce"), "klass").unwrap().value,
        "TemplateVM"
    );
    let e = c
        .set_property(Some("fedora-42-xfce"), "memory", "800")
        .unwrap_err();
    assert!(matches!(e, qpm_admin::Error::Refused { .. }), "{e}");
    let e = c.property(Some("work"), "memory").unwrap_err();
    assert!(matches!(e, qpm_admin::Error::Refused { .. }), "{e}");
    // events about qubes mgmt may not see are filtered out
    let dom0 = Client::new(Simulator::new(s.router(), "dom0"));
    dom0.set_feature("work", "secret", "1").unwrap();
    c.set_feature("m1", "mine", "1").unwrap();
    loop {
        let e = ev.next_event().unwrap().unwrap();
        assert_ne!(e.subject, "work", "{e:?}");
        if e.name == "domain-feature-set:mine" {
            assert_eq!(e.subject, "m1");
            break;
        }
    }
    // the policy admin services
    let files = c.policy_list(false).unwrap();
    assert!(files.contains(&"30-qpm-sim-base".to_string()), "{files:?}");
    c.policy_replace("50-test", false, "new", b"test.Echo * mgmt m1 allow\n")
        .unwrap();
    let (token, content) = c.policy_get("50-test", false).unwrap();
    assert_eq!(content, b"test.Echo * mgmt m1 allow\n");
    let e = c
        .policy_replace("50-test", false, &token, b"not a policy\n")
        .unwrap_err();
    assert!(matches!(e, qpm_admin::Error::PolicyAdmin { .. }), "{e:?}");
    c.policy_remove("50-test", false, &token).unwrap();
    c.remove("m1").unwrap();
    assert_eq!(names(&c), ["dom0", "debian-13-xfce", "fedora-42-xfce"]);
}
