//! Qubes' persistence model: a restart rebuilds the root from the template
//! and keeps only the private volume (/home, /usr/local, bind-dirs), or with
//! custom-persist only the listed paths.

use std::process::Command;

use super::{Served, bin, raw};

fn shell(s: &Served, qube: &str, script: &str) -> String {
    let mut cmd = Command::new(bin());
    cmd.arg("--sim")
        .arg(s.dir.path())
        .args(["call", "--from", "dom0", qube, "qubes.VMShell"]);
    let out = assert_cmd::Command::from_std(cmd)
        .write_stdin(script.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn restart(s: &Served, qube: &str) {
    let out = Command::new(bin())
        .arg("--sim")
        .arg(s.dir.path())
        .args(["restart", qube])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const WRITE: &str = r#"
set -e
cd "$QPM_SIM_ROOT"
echo home > home/user/note
mkdir -p usr/local/bin && echo local > usr/local/bin/tool
mkdir -p etc/app && echo app > etc/app/app.conf
echo other > etc/other.conf
"#;

const READ: &str = r#"
cd "$QPM_SIM_ROOT"
for f in home/user/note usr/local/bin/tool etc/app/app.conf etc/other.conf home/user/.bashrc; do
  if [ -e "$f" ]; then echo "$f"; fi
done
"#;

#[test]
fn only_the_private_volume_survives() {
    let s = Served::start();
    shell(&s, "work", WRITE);
    assert_eq!(
        shell(&s, "work", READ),
        "home/user/note\nusr/local/bin/tool\netc/app/app.conf\netc/other.conf\nhome/user/.bashrc\n"
    );
    restart(&s, "work");
    assert_eq!(
        shell(&s, "work", READ),
        "home/user/note\nusr/local/bin/tool\nhome/user/.bashrc\n"
    );

    // bind-dirs from /rw/config keep /etc/app
    shell(
        &s,
        "work",
        "set -e; cd \"$QPM_SIM_ROOT\"; mkdir -p rw/config/qubes-bind-dirs.d rw/bind-dirs/etc/app; \
         echo \"binds+=( '/etc/app' )\" > rw/config/qubes-bind-dirs.d/50_test.conf; \
         echo app > rw/bind-dirs/etc/app/app.conf",
    );
    restart(&s, "work");
    assert_eq!(
        shell(&s, "work", "cat \"$QPM_SIM_ROOT/etc/app/app.conf\""),
        "app\n"
    );
    shell(
        &s,
        "work",
        "cd \"$QPM_SIM_ROOT\"; echo v2 > etc/app/app.conf",
    );
    restart(&s, "work");
    assert_eq!(
        shell(&s, "work", "cat \"$QPM_SIM_ROOT/etc/app/app.conf\""),
        "v2\n"
    );
    assert!(
        s.dir
            .path()
            .join("qubes/work/private/bind-dirs/etc/app/app.conf")
            .is_file()
    );
    // the template's root is untouched
    assert!(
        !s.dir
            .path()
            .join("qubes/fedora-42-xfce/root/etc/app")
            .exists()
    );
}

#[test]
fn custom_persist_keeps_only_listed_paths() {
    let s = Served::start();
    let sock = s.qubesd();
    assert_eq!(
        raw(
            &sock,
            b"admin.vm.feature.Set+service.custom-persist dom0 name personal\x001"
        ),
        b"0\0"
    );
    assert_eq!(
        raw(&sock, b"admin.vm.feature.Set+custom-persist.qpm-0 dom0 name personal\x00file:root:root:0644:/etc/other.conf"),
        b"0\0"
    );
    assert_eq!(
        raw(&sock, b"admin.vm.feature.Set+custom-persist.qpm-1 dom0 name personal\x00dir:root:root:0755:/var/lib/app"),
        b"0\0"
    );
    // a bind-dirs config in /rw/config is ignored with custom-persist
    shell(
        &s,
        "personal",
        "set -e; cd \"$QPM_SIM_ROOT\"; mkdir -p rw/config/qubes-bind-dirs.d; \
         echo \"binds+=( '/etc/app' )\" > rw/config/qubes-bind-dirs.d/50_test.conf",
    );
    restart(&s, "personal");
    // the long form pre-created its file and directory
    assert_eq!(
        shell(
            &s,
            "personal",
            "cd \"$QPM_SIM_ROOT\"; test -d var/lib/app && test -f etc/other.conf && echo yes"
        ),
        "yes\n"
    );
    shell(&s, "personal", WRITE);
    restart(&s, "personal");
    // /home is fresh from /etc/skel, /usr/local from the template, /etc/app
    // not bound; /etc/other.conf persisted
    assert_eq!(
        shell(&s, "personal", READ),
        "etc/other.conf\nhome/user/.bashrc\n"
    );
    // listing /home makes it persistent again
    assert_eq!(
        raw(
            &sock,
            b"admin.vm.feature.Set+custom-persist.home dom0 name personal\x00/home"
        ),
        b"0\0"
    );
    restart(&s, "personal");
    shell(&s, "personal", WRITE);
    restart(&s, "personal");
    assert_eq!(
        shell(&s, "personal", READ),
        "home/user/note\netc/other.conf\nhome/user/.bashrc\n"
    );
}

#[test]
fn template_roots_persist_and_reach_their_qubes() {
    let s = Served::start();
    shell(
        &s,
        "fedora-42-xfce",
        "cd \"$QPM_SIM_ROOT\"; echo pkg > etc/installed-by-template",
    );
    restart(&s, "fedora-42-xfce");
    assert_eq!(
        shell(
            &s,
            "fedora-42-xfce",
            "cat \"$QPM_SIM_ROOT/etc/installed-by-template\""
        ),
        "pkg\n"
    );
    restart(&s, "work");
    assert_eq!(
        shell(
            &s,
            "work",
            "cat \"$QPM_SIM_ROOT/etc/installed-by-template\""
        ),
        "pkg\n"
    );
}
