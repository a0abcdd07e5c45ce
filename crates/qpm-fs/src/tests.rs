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

#[test]
fn join_name_takes_one_safe_component_within_the_limits() {
    let p = rp("a/b");
    assert_eq!(p.join_name("c.conf").unwrap().as_str(), "a/b/c.conf");
    for bad in ["", ".", "..", "c/d", "c\0", "c\n", "\u{1b}"] {
        assert!(p.join_name(bad).is_err(), "{bad:?} accepted");
    }
    assert!(p.join_name(&"x".repeat(MAX_NAME_BYTES + 1)).is_err());
    let deep = rp(&"a/".repeat(MAX_DEPTH - 2).add_last());
    assert_eq!(deep.depth(), MAX_DEPTH - 1);
    assert!(deep.join_name("x").is_ok());
    assert!(deep.join_name("x").unwrap().join_name("y").is_err());
    assert!(deep.join(&rp("x/y")).is_err());
    let long = rp(&vec!["n".repeat(200); 5].join("/"));
    assert!(long.join_name(&"m".repeat(30)).is_err());
    assert!(long.join(&rp(&"m".repeat(30))).is_err());
}

#[test]
fn list_reads_through_the_handle_and_again_from_the_start() {
    let (d, r) = root();
    std::fs::create_dir_all(d.path().join("dir/sub")).unwrap();
    for i in (0..600).rev() {
        std::fs::write(
            d.path().join(format!("dir/file-{i:04}-{}", "x".repeat(40))),
            "",
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("/etc", d.path().join("dir/link")).unwrap();
    std::fs::write(d.path().join("dir/\u{e9}"), "").unwrap();
    std::fs::write(d.path().join("dir/sub-x"), "").unwrap();
    std::fs::write(d.path().join("dir/sub0"), "").unwrap();
    let mut dir = r.open_dir(&rp("dir")).unwrap();
    let mut l = Listing::default();
    for _ in 0..2 {
        dir.list(&mut l).unwrap();
        assert_eq!(l.len(), 605);
        let names: Vec<(String, Kind)> = l
            .iter()
            .map(|(n, k)| (String::from_utf8(n.to_vec()).unwrap(), k))
            .collect();
        assert_eq!(names[0].0, format!("file-0000-{}", "x".repeat(40)));
        assert_eq!(names[599].0, format!("file-0599-{}", "x".repeat(40)));
        assert_eq!(names[600], ("link".to_owned(), Kind::Symlink));
        // Path order: `sub-x` < `sub/...` < `sub0`.
        assert_eq!(names[601], ("sub-x".to_owned(), Kind::File));
        assert_eq!(names[602], ("sub".to_owned(), Kind::Dir));
        assert_eq!(names[603], ("sub0".to_owned(), Kind::File));
        assert_eq!(names[604], ("\u{e9}".to_owned(), Kind::File));
        let path = |(n, k): &(String, Kind)| {
            if *k == Kind::Dir {
                format!("{n}/")
            } else {
                n.clone()
            }
        };
        assert!(names.windows(2).all(|w| path(&w[0]) < path(&w[1])));
    }
    // The same listing, reused for another directory.
    let mut sub = dir.open_dir(&rp("sub")).unwrap();
    sub.list(&mut l).unwrap();
    assert!(l.is_empty());
    // Files are still `stat`ed relative to the listed handle.
    assert_eq!(
        dir.metadata_name("link").unwrap().unwrap().kind,
        Kind::Symlink
    );
}

/// The checks of `RelPath::new` as first written (char by char, then
/// component by component): the oracle for the byte-wise version.
fn plain_check(s: &str) -> std::result::Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.len() > MAX_PATH_BYTES {
        return Err("too long");
    }
    if s.starts_with('/') {
        return Err("absolute");
    }
    if s.chars().any(|c| c.is_control()) {
        return Err("control character");
    }
    let mut depth = 0usize;
    for comp in s.split('/') {
        depth += 1;
        match comp {
            "" => return Err("empty component"),
            "." | ".." => return Err("dot component"),
            c if c.len() > MAX_NAME_BYTES => return Err("component too long"),
            _ => {}
        }
    }
    if depth > MAX_DEPTH {
        return Err("too deep");
    }
    Ok(())
}

fn rp_unchecked(s: &str) -> RelPath {
    RelPath(s.to_owned())
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
    fn relpath_checks_agree_with_the_plain_reading(s in "([a./\\x00-\\x1f\\x7f\\u{80}-\\u{a0}\\u{e9}]|\\.\\.){0,12}") {
        proptest::prop_assert_eq!(
            RelPath::new(&s).map_err(|e| e.to_string()),
            plain_check(&s).map(|()| rp_unchecked(&s)).map_err(|r| Error::InvalidPath { path: esc(&s), reason: r }.to_string())
        );
    }

    #[test]
    fn relpath_from_bytes_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
        let _ = RelPath::from_bytes(&b);
    }
}
