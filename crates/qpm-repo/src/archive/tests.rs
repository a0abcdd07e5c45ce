use std::path::Path;

use super::*;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// A gzip'd ustar archive with raw, unchecked names and types.
/// (name, type, mode, data, link name)
pub(crate) type RawEntry<'a> = (&'a [u8], tar::EntryType, u32, &'a [u8], &'a [u8]);

pub(crate) fn raw_archive(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, mode, data, link) in entries {
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn try_unpack(bytes: &[u8], limits: &Limits) -> (Result<Unpacked, Error>, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    let r = unpack(bytes, &d.path().join("out"), limits);
    (r, d)
}

#[test]
fn builds_are_reproducible() {
    for app in [
        "split-browser/1.0.0",
        "securedrop-ws/2.0.0",
        "dangerzone/1.0.0",
    ] {
        let src = examples().join(app);
        let (_, a) = build_bytes(&src).unwrap();
        // A copy has other mtimes, inode order and maybe modes from umask.
        let d = tempfile::tempdir().unwrap();
        let copy = d.path().join("pkg");
        copy_tree(&src, &copy);
        std::fs::write(copy.join(".hidden-editor-file"), b"x").unwrap();
        let (_, b) = build_bytes(&copy).unwrap();
        assert_eq!(a, b, "{app}: archives differ");
        // gzip header: no name, mtime 0.
        assert_eq!(&a[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255]);
    }
}

#[test]
fn round_trip_keeps_content_and_normalises_modes() {
    use std::os::unix::fs::PermissionsExt as _;
    let src = examples().join("split-browser/2.0.0");
    let d = tempfile::tempdir().unwrap();
    let copy = d.path().join("pkg");
    copy_tree(&src, &copy);
    std::fs::write(copy.join("files/run.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        copy.join("files/run.sh"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::fs::create_dir(copy.join("empty")).unwrap();
    let (m, bytes) = build_bytes(&copy).unwrap();
    assert_eq!(m.name, "split-browser");
    let (r, t) = try_unpack(&bytes, &DEFAULT_LIMITS);
    let st = r.unwrap();
    assert_eq!(st.files, 4);
    assert_eq!(st.dirs, 3);
    let out = t.path().join("out");
    assert_eq!(
        std::fs::read(out.join("qpm.toml")).unwrap(),
        std::fs::read(src.join("qpm.toml")).unwrap()
    );
    let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("files/run.sh"), 0o755);
    assert_eq!(mode("qpm.toml"), 0o644);
    assert_eq!(mode("empty"), 0o755);
    assert_eq!(mode(""), 0o700);
    qpm_pkg::manifest::load_dir(&out).unwrap();
}

#[test]
fn refuses_links_devices_and_special_files_when_building() {
    let d = tempfile::tempdir().unwrap();
    let copy = d.path().join("pkg");
    copy_tree(&examples().join("dangerzone/1.0.0"), &copy);
    std::os::unix::fs::symlink("/etc/passwd", copy.join("policy/link")).unwrap();
    let e = build_bytes(&copy).unwrap_err().to_string();
    assert!(e.contains("policy/link") && e.contains("symlinks"), "{e}");
}

#[test]
fn hostile_archives_are_refused_and_leave_nothing() {
    use tar::EntryType as T;
    let ok: &[u8] = b"x";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "`..`",
            raw_archive(&[(b"../escape", T::Regular, 0o644, ok, b"")]),
        ),
        (
            "`..`",
            raw_archive(&[(b"a/../../escape", T::Regular, 0o644, ok, b"")]),
        ),
        (
            "absolute",
            raw_archive(&[(b"/etc/cron.d/x", T::Regular, 0o644, ok, b"")]),
        ),
        (
            "links",
            raw_archive(&[(b"l", T::Symlink, 0o777, b"", b"/etc/passwd")]),
        ),
        (
            "links",
            raw_archive(&[(b"l", T::Link, 0o644, b"", b"qpm.toml")]),
        ),
        ("devices", raw_archive(&[(b"d", T::Char, 0o644, b"", b"")])),
        ("devices", raw_archive(&[(b"d", T::Block, 0o644, b"", b"")])),
        ("FIFO", raw_archive(&[(b"f", T::Fifo, 0o644, b"", b"")])),
        (
            "setuid",
            raw_archive(&[(b"s", T::Regular, 0o4755, ok, b"")]),
        ),
        (
            "setuid",
            raw_archive(&[(b"s", T::Directory, 0o1777, b"", b"")]),
        ),
        (
            "duplicate",
            raw_archive(&[
                (b"a", T::Regular, 0o644, ok, b""),
                (b"a", T::Regular, 0o644, ok, b""),
            ]),
        ),
        (
            "file is used as a directory",
            raw_archive(&[
                (b"a", T::Regular, 0o644, ok, b""),
                (b"a/b", T::Regular, 0o644, ok, b""),
            ]),
        ),
        (
            "empty path component",
            raw_archive(&[(b"a//b", T::Regular, 0o644, ok, b"")]),
        ),
        (
            "control character",
            raw_archive(&[(b"a\x1b[2J", T::Regular, 0o644, ok, b"")]),
        ),
        (
            "not allowed",
            raw_archive(&[(b"x", T::XHeader, 0o644, b"20 path=/etc/passwd\n", b"")]),
        ),
        (
            "not allowed",
            raw_archive(&[(b"././@LongLink", T::GNULongName, 0o644, b"../../x\0", b"")]),
        ),
        ("not a package archive", b"\x1f\x8b\x08\x00garbage".to_vec()),
    ];
    for (want, bytes) in cases {
        let (r, t) = try_unpack(&bytes, &DEFAULT_LIMITS);
        let e = r.expect_err(want).to_string();
        assert!(e.contains(want), "want {want:?}, got {e}");
        assert!(!t.path().join("out").exists(), "{want}: output left behind");
        assert!(!t.path().join("escape").exists());
    }
}

#[test]
fn limits_are_enforced() {
    use tar::EntryType as T;
    let big = vec![0u8; 10_000];
    let small = Limits {
        max_file_bytes: 5_000,
        ..DEFAULT_LIMITS
    };
    let (r, _t) = try_unpack(
        &raw_archive(&[(b"big", T::Regular, 0o644, &big, b"")]),
        &small,
    );
    assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");

    let total = Limits {
        max_unpacked_bytes: 15_000,
        ..DEFAULT_LIMITS
    };
    let a = raw_archive(&[
        (b"a", T::Regular, 0o644, &big, b""),
        (b"b", T::Regular, 0o644, &big, b""),
    ]);
    let (r, _t) = try_unpack(&a, &total);
    assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");

    let count = Limits {
        max_entries: 3,
        ..DEFAULT_LIMITS
    };
    let names: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
    let ents: Vec<_> = names
        .iter()
        .map(|n| (n.as_bytes(), T::Regular, 0o644, &b"x"[..], &b""[..]))
        .collect();
    let (r, _t) = try_unpack(&raw_archive(&ents), &count);
    assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");

    let deep = Limits {
        max_depth: 3,
        ..DEFAULT_LIMITS
    };
    let (r, _t) = try_unpack(
        &raw_archive(&[(b"a/b/c/d", T::Regular, 0o644, b"x", b"")]),
        &deep,
    );
    assert!(r.unwrap_err().to_string().contains("too deep"));

    // A gzip bomb: 64 MiB of zeros compress to ~64 KiB.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("bomb").unwrap();
    h.set_size(64 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    let data = std::iter::repeat_n(&zeros, 64)
        .flatten()
        .copied()
        .collect::<Vec<u8>>();
    tar.append(&h, &data[..]).unwrap();
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    let lim = Limits {
        max_unpacked_bytes: 1 << 20,
        max_file_bytes: 128 << 20,
        ..DEFAULT_LIMITS
    };
    let (r, t) = try_unpack(&bomb, &lim);
    assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
    assert!(!t.path().join("out").exists());
}

#[test]
fn truncated_archive_is_refused() {
    let (_, bytes) = build_bytes(&examples().join("securedrop-ws/1.0.0")).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 9, 20] {
        let (r, t) = try_unpack(&bytes[..cut], &DEFAULT_LIMITS);
        assert!(r.is_err(), "cut at {cut}");
        assert!(!t.path().join("out").exists());
    }
}

#[test]
fn refuses_existing_destination() {
    let (_, bytes) = build_bytes(&examples().join("dangerzone/1.0.0")).unwrap();
    let d = tempfile::tempdir().unwrap();
    let r = unpack(&bytes[..], d.path(), &DEFAULT_LIMITS);
    assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
}

mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the names and types, unpacking never writes outside its
        /// directory and never panics.
        #[test]
        fn never_escapes(
            names in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![
                    Just(b"..".to_vec()), Just(b".".to_vec()), Just(b"a".to_vec()),
                    Just(b"".to_vec()), Just(b"/".to_vec()), Just(b"b\x00".to_vec())
                ], 1..5).prop_map(|v| v.join(&b'/')),
                1..6),
            kinds in proptest::collection::vec(prop_oneof![
                Just(tar::EntryType::Regular), Just(tar::EntryType::Directory),
                Just(tar::EntryType::Symlink), Just(tar::EntryType::Link)], 6),
        ) {
            let ents: Vec<_> = names
                .iter()
                .zip(&kinds)
                .filter(|(n, _)| n.len() < 100)
                .map(|(n, k)| (n.as_slice(), *k, 0o644, &b""[..], &b"../x"[..]))
                .collect();
            let bytes = raw_archive(&ents);
            let d = tempfile::tempdir().unwrap();
            let inner = d.path().join("a").join("b");
            std::fs::create_dir_all(&inner).unwrap();
            let _ = unpack(&bytes[..], &inner.join("out"), &DEFAULT_LIMITS);
            // Only `out` may exist next to it, and nothing above.
            let above: Vec<_> = std::fs::read_dir(d.path().join("a")).unwrap().collect();
            prop_assert_eq!(above.len(), 1);
            let beside: Vec<_> = std::fs::read_dir(&inner).unwrap().map(|e| e.unwrap().file_name()).collect();
            prop_assert!(beside.len() <= 1);
            prop_assert!(!d.path().join("x").exists());
        }
    }
}
