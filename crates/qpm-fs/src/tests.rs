use super::*;

fn root() -> (tempfile::TempDir, Root) {
    let d = tempfile::tempdir().unwrap();
    let r = Root::open(d.path()).unwrap();
    (d, r)
}

fn rp(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

#[test]
fn relpath_rejects_bad_shapes() {
    for bad in [
        "",
        "/etc/passwd",
        "..",
        "../x",
        "a/../b",
        "a/./b",
        ".",
        "a//b",
        "a/",
        "a\0b",
        "a\nb",
        "a\x1bb",
        "a\u{7f}",
    ] {
        assert!(RelPath::new(bad).is_err(), "{bad:?} accepted");
    }
    assert!(RelPath::new(&"a/".repeat(MAX_DEPTH)).is_err());
    assert!(RelPath::new(&"a/".repeat(MAX_DEPTH - 1).add_last()).is_ok());
    assert!(RelPath::new(&"x".repeat(MAX_NAME_BYTES + 1)).is_err());
    assert!(RelPath::from_bytes(b"a\xffb").is_err());
    assert!(RelPath::from_bytes(b"ok/name.conf").is_ok());
}

trait AddLast {
    fn add_last(self) -> String;
}
impl AddLast for String {
    fn add_last(mut self) -> String {
        self.push('z');
        self
    }
}

#[test]
fn relpath_helpers() {
    let p = rp("a/b/c.conf");
    assert_eq!(p.parent().unwrap().as_str(), "a/b");
    assert_eq!(p.file_name(), "c.conf");
    assert!(p.starts_with(&rp("a/b")));
    assert!(!p.starts_with(&rp("a/bc")));
    assert!(!rp("a/bc").starts_with(&rp("a/b")));
    assert_eq!(p.strip_prefix(&rp("a")).unwrap().as_str(), "b/c.conf");
    assert_eq!(rp("a").parent(), None);
}

#[test]
fn write_read_roundtrip_and_mode() {
    let (_d, r) = root();
    r.create_dirs(&rp("x/y"), 0o700, &DirPolicy::default())
        .unwrap();
    r.write_atomic(&rp("x/y/f"), b"hello", 0o640).unwrap();
    assert_eq!(r.read_limited(&rp("x/y/f"), 5).unwrap(), b"hello");
    assert!(matches!(
        r.read_limited(&rp("x/y/f"), 4),
        Err(Error::TooLarge { .. })
    ));
    let m = r.metadata(&rp("x/y/f")).unwrap().unwrap();
    assert_eq!(m.mode, 0o640);
    assert_eq!(m.kind, Kind::File);
    assert_eq!(r.metadata(&rp("x/y")).unwrap().unwrap().mode, 0o700);
    assert_eq!(r.metadata(&rp("x/nope")).unwrap(), None);
    assert_eq!(r.metadata(&rp("nope/deeper")).unwrap(), None);
    // Replacing keeps no temporary behind.
    r.write_atomic(&rp("x/y/f"), b"again", 0o600).unwrap();
    let names: Vec<_> = r.read_dir(Some(&rp("x/y"))).unwrap();
    assert_eq!(names, vec![("f".to_owned(), Kind::File)]);
}

#[test]
fn symlinks_are_never_followed() {
    let (d, r) = root();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"s").unwrap();
    std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
    std::os::unix::fs::symlink("real", d.path().join("inner")).unwrap();
    std::fs::create_dir(d.path().join("real")).unwrap();
    // Through a directory symlink, outward or inward.
    assert!(matches!(
        r.read_limited(&rp("link/secret"), 10),
        Err(Error::Symlink { .. })
    ));
    assert!(matches!(
        r.write_atomic(&rp("link/new"), b"x", 0o644),
        Err(Error::Symlink { .. })
    ));
    assert!(matches!(
        r.write_atomic(&rp("inner/new"), b"x", 0o644),
        Err(Error::Symlink { .. })
    ));
    assert!(matches!(
        r.create_dirs(&rp("link/sub"), 0o755, &DirPolicy::default()),
        Err(Error::Symlink { .. })
    ));
    assert!(!outside.path().join("new").exists());
    assert!(!outside.path().join("sub").exists());
    // A symlink as the last component is replaced, not written through.
    std::os::unix::fs::symlink(outside.path().join("secret"), d.path().join("f")).unwrap();
    assert!(r.open_read(&rp("f")).is_err());
    r.write_atomic(&rp("f"), b"mine", 0o644).unwrap();
    assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"s");
    assert_eq!(r.metadata(&rp("f")).unwrap().unwrap().kind, Kind::File);
    assert_eq!(
        r.metadata(&rp("link")).unwrap().unwrap().kind,
        Kind::Symlink
    );
}

#[test]
fn fifo_and_devices_are_not_read() {
    let (d, r) = root();
    let st = std::process::Command::new("mkfifo")
        .arg(d.path().join("p"))
        .status();
    if st.map(|s| s.success()).unwrap_or(false) {
        assert!(matches!(
            r.open_read(&rp("p")),
            Err(Error::WrongType { .. })
        ));
    }
    std::os::unix::fs::symlink("/dev/zero", d.path().join("z")).unwrap();
    assert!(r.read_limited(&rp("z"), 10).is_err());
}

#[test]
fn owner_policy_refuses_shared_dirs() {
    let (d, r) = root();
    std::fs::create_dir(d.path().join("shared")).unwrap();
    std::fs::set_permissions(
        d.path().join("shared"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let me = r.root_metadata().unwrap().uid;
    let pol = DirPolicy {
        owner: Some(me),
        chown: None,
    };
    assert!(matches!(
        r.create_dirs(&rp("shared/x"), 0o755, &pol),
        Err(Error::NotOwned { .. })
    ));
    assert!(matches!(
        r.check_dirs(&rp("shared"), &pol),
        Err(Error::NotOwned { .. })
    ));
    let other = DirPolicy {
        owner: Some(me.wrapping_add(1)),
        chown: None,
    };
    std::fs::create_dir(d.path().join("mine")).unwrap();
    assert!(r.check_dirs(&rp("mine"), &other).is_err());
    assert!(r.check_dirs(&rp("mine"), &pol).is_ok());
}

#[test]
fn batch_rename_link_remove() {
    let (_d, r) = root();
    let (_d2, r2) = root();
    let mut t = r.create_temp(None, 0o600).unwrap();
    t.write_all(b"batch").unwrap();
    let tmp = t.finish();
    assert!(tmp.as_str().starts_with(TEMP_PREFIX));
    r.syncfs().unwrap();
    r2.create_dirs(&rp("d"), 0o755, &DirPolicy::default())
        .unwrap();
    r.rename(&tmp, &r2, &rp("d/f")).unwrap();
    r2.sync_dir(Some(&rp("d"))).unwrap();
    assert_eq!(r2.read_limited(&rp("d/f"), 100).unwrap(), b"batch");
    r2.hard_link(&rp("d/f"), &r2, &rp("d/g")).unwrap();
    assert_eq!(r2.metadata(&rp("d/g")).unwrap().unwrap().nlink, 2);
    assert!(r2.remove_file(&rp("d/g")).unwrap());
    assert!(!r2.remove_file(&rp("d/g")).unwrap());
    assert!(r.free_space().unwrap() > 0);
    // A dropped temp file is removed.
    let t = r.create_temp(None, 0o600).unwrap();
    let name = t.rel().clone();
    drop(t);
    assert_eq!(r.metadata(&name).unwrap(), None);
}

#[test]
fn remove_tree_does_not_follow_symlinks() {
    let (d, r) = root();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("keep"), b"k").unwrap();
    std::fs::create_dir_all(d.path().join("t/a/b")).unwrap();
    std::fs::write(d.path().join("t/a/b/f"), b"x").unwrap();
    std::os::unix::fs::symlink(outside.path(), d.path().join("t/a/out")).unwrap();
    r.remove_tree(&rp("t")).unwrap();
    assert!(!d.path().join("t").exists());
    assert!(outside.path().join("keep").exists());
}

#[test]
fn open_dir_is_a_new_root() {
    let (d, r) = root();
    std::fs::create_dir_all(d.path().join("a/b")).unwrap();
    let sub = r.open_dir(&rp("a")).unwrap();
    sub.write_atomic(&rp("b/f"), b"1", 0o644).unwrap();
    assert_eq!(std::fs::read(d.path().join("a/b/f")).unwrap(), b"1");
    std::os::unix::fs::symlink("/", d.path().join("root")).unwrap();
    assert!(r.open_dir(&rp("root")).is_err());
}

proptest::proptest! {
    #[test]
    fn relpath_accepts_only_safe_shapes(s in "\\PC{0,40}") {
        if let Ok(p) = RelPath::new(&s) {
            proptest::prop_assert!(!p.as_str().starts_with('/'));
            for c in p.components() {
                proptest::prop_assert!(!c.is_empty() && c != "." && c != "..");
            }
        }
    }

    #[test]
    fn relpath_from_bytes_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
        let _ = RelPath::from_bytes(&b);
    }
}
