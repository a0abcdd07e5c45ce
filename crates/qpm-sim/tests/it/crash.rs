//! A simulator killed with SIGKILL at any moment restarts with a consistent
//! state: the state file loads, every reference is valid, qube directories
//! match the qubes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use qpm_sim::model::{Val, VmClass};
use qpm_sim::store::StateDir;

use super::{Served, alive, raw};

fn writer(sock: std::path::PathBuf, id: usize, stop: Arc<AtomicBool>) -> usize {
    let mut done = 0;
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let name = format!("w{id}x{}", n % 7);
        let calls: Vec<Vec<u8>> = vec![
            format!("admin.vm.Create.AppVM+ dom0 name dom0\0name={name} label=red").into_bytes(),
            format!("admin.vm.property.Set+netvm dom0 name {name}\0sys-firewall").into_bytes(),
            format!("admin.vm.feature.Set+f{n} dom0 name {name}\0v").into_bytes(),
            format!("admin.vm.tag.Set+t{n} dom0 name {name}\0").into_bytes(),
            format!(
                "admin.property.Set+default_netvm dom0 name dom0\0{}",
                if n.is_multiple_of(2) {
                    "sys-net"
                } else {
                    "sys-firewall"
                }
            )
            .into_bytes(),
            format!("admin.vm.Start dom0 name {name}\0").into_bytes(),
            format!("admin.vm.Kill dom0 name {name}\0").into_bytes(),
            format!("admin.vm.Remove dom0 name {name}\0").into_bytes(),
        ];
        for c in calls {
            let Ok(mut s) = std::os::unix::net::UnixStream::connect(&sock) else {
                return done;
            };
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            if s.write_all(&c).is_err() || s.shutdown(std::net::Shutdown::Write).is_err() {
                return done;
            }
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            done += 1;
        }
    }
    done
}

fn check_consistent(dir: &StateDir) {
    let sys = dir.load().expect("state loads after SIGKILL");
    assert!(sys.dom0().is_some());
    let mut names: Vec<&str> = sys.qubes.iter().map(|q| q.name.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len());
    for q in &sys.qubes {
        for (k, v) in &q.props {
            match v {
                Val::Vm(t) => assert!(sys.find(t).is_some(), "{}.{k} -> missing {t}", q.name),
                Val::Label(l) => {
                    assert!(sys.label(*l).is_some(), "{}.label -> missing {l}", q.name)
                }
                _ => {}
            }
        }
    }
    for (k, v) in &sys.globals {
        if let Val::Vm(t) = v {
            assert!(sys.find(t).is_some(), "global {k} -> missing {t}");
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".state.json.tmp")
        })
        .collect();
    assert!(
        leftovers.len() <= 1,
        "at most the temp file of the killed write"
    );
    let _ = VmClass::AppVM;
}

#[test]
fn kill_9_under_write_load_restarts_consistent() {
    let mut s = Served::start();
    let dir = StateDir::new(s.dir.path());
    let mut total = 0;
    for round in 0..8u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..3)
            .map(|id| {
                let (sock, stop) = (s.qubesd(), stop.clone());
                std::thread::spawn(move || writer(sock, id, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(60 + (round * 37) % 200));
        s.kill9();
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            total += w.join().unwrap();
        }
        check_consistent(&dir);
        s.spawn();
        assert!(
            alive(&s.qubesd()),
            "restarts after SIGKILL in round {round}"
        );
        // the directories follow the state after the restart
        let sys = dir.load().unwrap();
        for q in sys.qubes.iter().filter(|q| q.class != VmClass::AdminVM) {
            assert!(
                dir.qubes_dir().join(&q.name).join("private").is_dir(),
                "{} has its files",
                q.name
            );
        }
        for e in std::fs::read_dir(dir.qubes_dir()).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            assert!(
                sys.find(&n).is_some(),
                "directory of a qube that does not exist: {n}"
            );
        }
    }
    assert!(total > 50, "the load really wrote ({total} calls)");
    let reply = raw(&s.qubesd(), b"admin.vm.property.Get+netvm dom0 name work\0");
    assert!(reply.starts_with(b"0\0default="), "{reply:?}");
}
