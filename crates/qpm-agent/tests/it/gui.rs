//! The consent dialog under Xvfb with the real zenity, answered by clicking
//! its buttons with xdotool. Skips when a program is missing, unless
//! `QPM_REQUIRE_SYSTEM_TESTS=1`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qpm_sync::proto::Code;

use crate::Qube;

fn have(p: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {p}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn tools_or_skip() -> bool {
    let missing: Vec<_> = ["zenity", "Xvfb", "xdotool"]
        .into_iter()
        .filter(|p| !have(p))
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("QPM_REQUIRE_SYSTEM_TESTS").as_deref() == Ok("1") {
        panic!("missing {missing:?} (QPM_REQUIRE_SYSTEM_TESTS=1)");
    }
    eprintln!("skipping GUI test: {missing:?} not installed (apt-get install zenity xvfb xdotool)");
    false
}

struct Xvfb {
    child: Child,
    display: String,
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn xvfb() -> Xvfb {
    // A display number unlikely to collide with parallel tests.
    let n = 90 + (std::process::id() % 800);
    let display = format!(":{n}");
    let child = Command::new("Xvfb")
        .args([
            display.as_str(),
            "-screen",
            "0",
            "1280x800x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = format!("/tmp/.X11-unix/X{n}");
    let t = Instant::now();
    while !std::path::Path::new(&sock).exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "Xvfb did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Xvfb { child, display }
}

fn xdotool(display: &str, args: &[&str]) -> String {
    let out = Command::new("xdotool")
        .args(args)
        .env("DISPLAY", display)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for the dialog, optionally saves a screenshot, clicks a button
/// (`Apply` at the right, `Reject` left of it).
fn answer(display: &str, apply: bool, screenshot: Option<&std::path::Path>) {
    let t = Instant::now();
    let wid = loop {
        let w = xdotool(display, &["search", "--name", "qpm: configuration from"]);
        if let Some(w) = w.lines().next() {
            break w.to_owned();
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "dialog never appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(500));
    if let Some(p) = screenshot {
        let st = Command::new("import")
            .args(["-window", "root"])
            .arg(p)
            .env("DISPLAY", display)
            .status();
        assert!(st.is_ok_and(|s| s.success()), "screenshot failed");
    }
    let geo = xdotool(display, &["getwindowgeometry", "--shell", &wid]);
    let get = |k: &str| -> i64 {
        geo.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (x, y, w, h) = (get("X"), get("Y"), get("WIDTH"), get("HEIGHT"));
    let bx = if apply { x + w - 50 } else { x + w - 140 };
    xdotool(
        display,
        &[
            "mousemove",
            &bx.to_string(),
            &(y + h - 25).to_string(),
            "click",
            "1",
        ],
    );
}

#[test]
fn gui_dialog_apply_and_reject() {
    if !tools_or_skip() {
        return;
    }
    let x = xvfb();
    let mut q = Qube::new("gui = \"auto\"\n");
    q.envs.push(("DISPLAY".into(), x.display.clone()));
    std::fs::write(q.home.join(".gitconfig"), b"[user]\n\tname = Old Name\n").unwrap();
    let shot = if have("import") {
        // Kept in docs/ when asked to refresh it; otherwise into a temp dir.
        Some(match std::env::var("QPM_UPDATE_SCREENSHOT") {
            Ok(_) => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../docs/sync-consent-dialog.png"),
            Err(_) => q.state.parent().unwrap().join("dialog.png"),
        })
    } else {
        None
    };
    let d = x.display.clone();
    let s2 = shot.clone();
    let clicker = std::thread::spawn(move || answer(&d, false, s2.as_deref()));
    let (code, o, _) = q.push(&[
        (
            ".gitconfig",
            b"[user]\n\tname = New Name\n[alias]\n\tlg = log --oneline\n",
        ),
        (".netrc", b"machine x password hunter2\n"),
    ]);
    clicker.join().unwrap();
    assert_eq!((code, o.code), (1, Code::Declined), "{o:?}");
    assert_eq!(
        q.read_home(".gitconfig").unwrap(),
        b"[user]\n\tname = Old Name\n"
    );
    if let Some(s) = &shot {
        assert!(std::fs::metadata(s).unwrap().len() > 1000);
    }
    let d = x.display.clone();
    let clicker = std::thread::spawn(move || answer(&d, true, None));
    let (code, o, _) = q.push(&[(".gitconfig", b"[user]\n\tname = New Name\n")]);
    clicker.join().unwrap();
    assert_eq!((code, o.code), (0, Code::Applied), "{o:?}");
    assert_eq!(
        q.read_home(".gitconfig").unwrap(),
        b"[user]\n\tname = New Name\n"
    );
}

/// With DISPLAY pointing at no server the dialog fails: the sync is queued,
/// not applied.
#[test]
fn dialog_failure_queues() {
    let mut q = Qube::new("gui = \"auto\"\n");
    q.envs.push(("DISPLAY".into(), ":4097".into()));
    let (code, o, _) = q.push(&[("f", b"x")]);
    assert_eq!((code, o.code), (0, Code::Queued), "{o:?}");
    assert_eq!(q.read_home("f"), None);
}
