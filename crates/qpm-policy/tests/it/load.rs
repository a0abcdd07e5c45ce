//! The directory loader: file selection and order, includes, the legacy
//! format, first error wins, and the bounds.

use qpm_policy::{Domain, ErrorKind, LoadOptions, MemorySource, Policy, Request, System, limits};

fn load(files: &[(&str, &str)]) -> Result<Policy, qpm_policy::LoadError> {
    Policy::load(
        &MemorySource::from_files(files.iter().copied()),
        &LoadOptions::default(),
    )
}

fn order(p: &Policy) -> Vec<String> {
    p.rules()
        .map(|(r, _)| format!("{}:{}", r.file, r.line))
        .collect()
}

#[test]
fn file_selection_and_order() {
    let p = load(&[
        ("30-user.policy", "a * w v deny\n"),
        ("30-user-extra.policy", "a * w v deny\n"),
        ("30_user.policy", "a * w v deny\n"),
        ("a.policy", "a * w v deny\n"),
        ("README", "not a policy\n"),
        ("30-user.policy.rpmsave", "garbage\n"),
        (".40-hidden.policy", "garbage\n"),
        ("50-x.policy~", "garbage\n"),
        (".policy", "garbage\n"),
        ("include/not-loaded.policy", "garbage\n"),
    ])
    .unwrap();
    assert_eq!(
        order(&p),
        [
            "30-user-extra.policy:1",
            "30-user.policy:1",
            "30_user.policy:1",
            "a.policy:1"
        ]
    );
}

#[test]
fn invalid_file_name_wins_before_parsing() {
    let e = load(&[("10-a.policy", "syntax error\n"), ("40-Work.policy", "")]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidFilename);
    assert_eq!(&*e.file, "40-Work.policy");
    assert_eq!(e.line, None);
    let e = load(&[("55-a+b.policy", "")]).unwrap_err();
    assert_eq!(&*e.file, "55-a+b.policy");
}

#[test]
fn includes_inline_depth_first() {
    let p = load(&[
        ("10-a.policy", "a * w v deny\n!include include/x\na * w v deny\n!include-dir d\n!include-service b * include/old\n"),
        ("include/x", "x * w v deny\n!include include/y\n"),
        ("include/y", "y * w v deny\n"),
        ("d/20-b.policy", "b * w v deny\n"),
        ("d/10-a.policy", "a * w v deny\n!include include/y\n"),
        ("d/sub/skip.policy", "garbage\n"),
        ("d/README", "garbage\n"),
        ("include/old", "# old format\nw v allow,notify=yes\n"),
        ("20-z.policy", "z * w v deny\n"),
    ])
    .unwrap();
    assert_eq!(
        order(&p),
        [
            "10-a.policy:1",
            "include/x:1",
            "include/y:1",
            "10-a.policy:3",
            "d/10-a.policy:1",
            "include/y:1",
            "d/20-b.policy:1",
            "include/old:2",
            "20-z.policy:1"
        ]
    );
    let (_, old) = p.rule(7).unwrap();
    assert_eq!(old.service.as_deref(), Some("b"));
    assert_eq!(old.action.notify, Some(true));
}

#[test]
fn first_error_wins_in_load_order() {
    // The included file's error comes before a later line of the includer.
    let e = load(&[
        ("10-a.policy", "!include include/x\nbad line\n"),
        ("include/x", "ok * w v deny\nalso bad\n"),
    ])
    .unwrap_err();
    assert_eq!((&*e.file, e.line), ("include/x", Some(2)));
    // Missing include: the directive's line.
    let e = load(&[("10-a.policy", "\n!include include/nope\n")]).unwrap_err();
    assert_eq!(
        (&*e.file, e.line, e.kind),
        ("10-a.policy", Some(2), ErrorKind::IncludeMissing)
    );
    // Include of a directory, include-dir of a file.
    let e = load(&[("10-a.policy", "!include d\n"), ("d/x", "")]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::IncludeMissing);
    let e = load(&[("10-a.policy", "!include-dir d/x\n"), ("d/x", "")]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::IncludeDirMissing);
    // A bad name in an included directory is reported with the dir's path,
    // after what was loaded before it.
    let e = load(&[("10-a.policy", "!include-dir d\n"), ("d/Bad.policy", "")]).unwrap_err();
    assert_eq!(
        (&*e.file, e.kind),
        ("d/Bad.policy", ErrorKind::InvalidFilename)
    );
    let e = load(&[
        ("05-a.policy", "bad\n"),
        ("10-a.policy", "!include-dir d\n"),
        ("d/Bad.policy", ""),
    ])
    .unwrap_err();
    assert_eq!((&*e.file, e.line), ("05-a.policy", Some(1)));
    // Errors in an old-format file point into it.
    let e = load(&[
        ("10-a.policy", "!include-service s * include/old\n"),
        ("include/old", "w v allow\nw v\n"),
    ])
    .unwrap_err();
    assert_eq!(
        (&*e.file, e.line, e.kind),
        ("include/old", Some(2), ErrorKind::FieldCount)
    );
    // Only !include inside an old-format file.
    let e = load(&[
        ("10-a.policy", "!include-service s * include/old\n"),
        ("include/old", "!include-dir d\n"),
    ])
    .unwrap_err();
    assert_eq!(
        (&*e.file, e.kind),
        ("include/old", ErrorKind::InvalidDirective)
    );
    // Paths are relative to the policy root, whichever file holds the directive.
    assert!(
        load(&[
            ("10-a.policy", "!include include/a\n"),
            ("include/a", "!include include/b\n"),
            ("include/b", "")
        ])
        .is_ok()
    );
    let e = load(&[
        ("10-a.policy", "!include include/a\n"),
        ("include/a", "!include b\n"),
        ("include/b", ""),
    ])
    .unwrap_err();
    assert_eq!((&*e.file, e.kind), ("include/a", ErrorKind::IncludeMissing));
}

#[test]
fn include_cycles_get_a_clear_error() {
    let e = load(&[
        ("10-a.policy", "!include include/a\n"),
        ("include/a", "\n\n!include include/a\n"),
    ])
    .unwrap_err();
    assert_eq!(
        (&*e.file, e.line, e.kind),
        ("include/a", Some(3), ErrorKind::IncludeCycle)
    );
    assert!(e.message.contains("include/a -> include/a"), "{e}");
    // Through !include-dir of the root itself.
    let e = load(&[("10-a.policy", "!include-dir .\n")]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::IncludeCycle);
    assert_eq!(
        e.to_string(),
        "10-a.policy:1: include cycle: 10-a.policy -> 10-a.policy"
    );
    // The same file twice is not a cycle.
    assert!(
        load(&[
            ("10-a.policy", "!include i\n!include i\n"),
            ("i", "a * w v deny\n")
        ])
        .is_ok()
    );
}

#[test]
fn thousand_deep_include_chain_is_refused_without_recursion() {
    let mut files: Vec<(String, String)> = vec![("10-a.policy".into(), "!include inc/0\n".into())];
    for i in 0..1000 {
        files.push((
            format!("inc/{i}"),
            format!("a * w v deny\n!include inc/{}\n", i + 1),
        ));
    }
    files.push(("inc/1000".into(), "a * w v deny\n".into()));
    let src = MemorySource::from_files(files.iter().map(|(a, b)| (a.as_str(), b.as_str())));
    let e = Policy::load(&src, &LoadOptions::default()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::IncludeDepth);
    assert!(
        e.message.contains(&limits::MAX_INCLUDE_DEPTH.to_string()),
        "{e}"
    );
    assert_eq!(e.line, Some(2));
    // Just under the limit is fine.
    let depth = limits::MAX_INCLUDE_DEPTH - 1;
    let mut files: Vec<(String, String)> = vec![("10-a.policy".into(), "!include inc/0\n".into())];
    for i in 0..depth - 1 {
        files.push((format!("inc/{i}"), format!("!include inc/{}\n", i + 1)));
    }
    files.push((format!("inc/{}", depth - 1), "a * w v deny\n".into()));
    let src = MemorySource::from_files(files.iter().map(|(a, b)| (a.as_str(), b.as_str())));
    assert_eq!(
        Policy::load(&src, &LoadOptions::default()).unwrap().len(),
        1
    );
}

#[test]
fn fan_out_is_bounded() {
    // Each level includes the next 300 times: 300^3 opens without a bound.
    let lines = |next: &str| format!("!include {next}\n").repeat(300);
    let e = load(&[
        ("10-a.policy", &lines("i1")),
        ("i1", &lines("i2")),
        ("i2", &lines("i3")),
        ("i3", "a * w v deny\n"),
    ])
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge);
}

#[test]
fn file_size_and_encoding() {
    let big = "#".repeat(limits::MAX_FILE_SIZE + 1);
    let e = load(&[("10-a.policy", &big)]).unwrap_err();
    assert_eq!((&*e.file, e.kind), ("10-a.policy", ErrorKind::TooLarge));
    let src = MemorySource::from_files([("10-a.policy", b"a * w v deny\n# caf\xe9\n".to_vec())]);
    let e = Policy::load(&src, &LoadOptions::default()).unwrap_err();
    assert_eq!((e.line, e.kind), (Some(2), ErrorKind::Encoding));
}

#[test]
fn compat_40_reads_the_legacy_directory() {
    let src = MemorySource::from_files([
        ("35-compat.policy", "!compat-4.0\n"),
        (
            "/etc/qubes-rpc/policy/qubes.Gpg",
            "work vault allow\n$include:include/inc\n",
        ),
        ("/etc/qubes-rpc/policy/include/inc", "$anyvm $anyvm ask\n"),
        ("/etc/qubes-rpc/policy/qubes.Gpg+key", "work vault deny\n"),
        (
            "/etc/qubes-rpc/policy/qubes.Filecopy",
            "$anyvm $anyvm ask\n",
        ),
        ("/etc/qubes-rpc/policy/bad name", "garbage\n"),
    ]);
    let p = Policy::load(&src, &LoadOptions::default()).unwrap();
    let got: Vec<String> = p
        .rules()
        .map(|(r, rule)| format!("{}:{} {}", r.file.rsplit('/').next().unwrap(), r.line, rule))
        .collect();
    assert_eq!(
        got,
        [
            "qubes.Filecopy:1 qubes.Filecopy * @anyvm @anyvm ask",
            "qubes.Gpg:1 qubes.Gpg * work vault allow",
            "inc:1 qubes.Gpg * @anyvm @anyvm ask",
            "qubes.Gpg+key:1 qubes.Gpg +key work vault deny",
            "qubes.Gpg+key:0 qubes.Gpg +key @anyvm @anyvm deny",
            "qubes.Gpg+key:0 qubes.Gpg +key @anyvm @adminvm deny",
        ]
    );
    // Without the legacy directory the directive fails on its line.
    let e = load(&[("35-compat.policy", "\n!compat-4.0\n")]).unwrap_err();
    assert_eq!((&*e.file, e.line), ("35-compat.policy", Some(2)));
    // The legacy directory is configurable.
    let src = MemorySource::from_files([
        ("35-compat.policy", "!compat-4.0\n"),
        ("legacy/qubes.A", "w v deny\n"),
    ]);
    let opts = LoadOptions {
        legacy_dir: "legacy".into(),
        ..LoadOptions::default()
    };
    assert_eq!(Policy::load(&src, &opts).unwrap().len(), 1);
}

#[test]
fn validate_a_change_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir(d.join("include")).unwrap();
    std::fs::write(d.join("30-user.policy"), "!include include/x\n").unwrap();
    std::fs::write(d.join("include/x"), "qubes.A * work vault allow\n").unwrap();
    std::fs::write(d.join("50-pkg.policy"), "qubes.B * work vault allow\n").unwrap();
    assert_eq!(Policy::load_dir(d).unwrap().len(), 2);
    // Replacing with a broken file fails, replacing with a good one passes.
    let e = Policy::validate_change(d, "50-pkg.policy", Some(b"qubes.B * work vault maybe\n"))
        .unwrap_err();
    assert_eq!((&*e.file, e.line), ("50-pkg.policy", Some(1)));
    assert_eq!(
        Policy::validate_change(d, "50-pkg.policy", Some(b""))
            .unwrap()
            .len(),
        1
    );
    // A new file.
    assert_eq!(
        Policy::validate_change(d, "60-new.policy", Some(b"qubes.C * w v deny\n"))
            .unwrap()
            .len(),
        3
    );
    // Removing a file that is still included fails.
    let e = Policy::validate_change(d, "include/x", None).unwrap_err();
    assert_eq!(
        (&*e.file, e.line, e.kind),
        ("30-user.policy", Some(1), ErrorKind::IncludeMissing)
    );
    assert_eq!(
        Policy::validate_change(d, "50-pkg.policy", None)
            .unwrap()
            .len(),
        1
    );
    // Nothing was written.
    assert_eq!(
        std::fs::read_to_string(d.join("50-pkg.policy")).unwrap(),
        "qubes.B * work vault allow\n"
    );
}

#[test]
fn disk_loader_ignores_non_files_and_does_not_hang_on_fifos() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir(d.join("dir.policy")).unwrap();
    std::fs::write(d.join("10-a.policy"), "qubes.A * work vault allow\n").unwrap();
    std::os::unix::fs::symlink(d.join("10-a.policy"), d.join("20-link.policy")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(d.join("30-fifo.policy"))
        .status();
    assert_eq!(
        Policy::load_dir(d).unwrap().len(),
        2,
        "a directory is skipped, a symlink to a file followed"
    );
    if fifo.is_ok_and(|s| s.success()) {
        std::fs::write(d.join("40-b.policy"), "!include 30-fifo.policy\n").unwrap();
        let e = Policy::load_dir(d).unwrap_err();
        assert_eq!(
            (&*e.file, e.kind),
            ("40-b.policy", ErrorKind::IncludeMissing)
        );
    }
    // A single file, its includes next to it.
    std::fs::write(d.join("one.policy"), "!include 10-a.policy\n").unwrap();
    assert_eq!(Policy::load_file(d.join("one.policy")).unwrap().len(), 1);
}

#[test]
fn loaded_policy_evaluates() {
    let p = load(&[("30-user.policy", "qubes.A * work vault allow\n")]).unwrap();
    let mut sys = System::new();
    sys.insert(Domain::dom0());
    sys.insert(Domain::new("work", "AppVM"));
    sys.insert(Domain::new("vault", "AppVM"));
    assert!(p.is_allowed(&Request::from_call("qubes.A", "work", "vault"), &sys));
    assert!(!p.is_allowed(&Request::from_call("qubes.A+x", "vault", "work"), &sys));
}

#[test]
fn one_megabyte_inputs_are_handled() {
    // Pseudo-random bytes: an error, no panic.
    let mut x = 0x1234_5678_9abc_def0u64;
    let bytes: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let src = MemorySource::from_files([("10-a.policy", bytes)]);
    assert!(Policy::load(&src, &LoadOptions::default()).is_err());
    // One line of a megabyte.
    let long = format!("qubes.A * work vault allow user={}\n", "u".repeat(1 << 20));
    assert_eq!(load(&[("10-a.policy", &long)]).unwrap().len(), 1);
    // A megabyte of includes of one small file: over the file budget.
    let many = "!include i\n".repeat((1 << 20) / 11);
    let e = load(&[("10-a.policy", &many), ("i", "a * w v deny\n")]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge);
    // A megabyte of rules loads and evaluates.
    let rules = "qubes.A * @anyvm @anyvm allow\n".repeat((1 << 20) / 30);
    let p = load(&[("10-a.policy", &rules)]).unwrap();
    assert_eq!(p.len(), (1 << 20) / 30);
    let mut sys = System::new();
    sys.insert(Domain::new("work", "AppVM"));
    sys.insert(Domain::new("vault", "AppVM"));
    assert!(p.is_allowed(&Request::from_call("qubes.A", "work", "vault"), &sys));
}

#[test]
fn policy_cache_reloads_on_change() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir(d.join("include")).unwrap();
    std::fs::write(d.join("30-a.policy"), "!include include/x\n").unwrap();
    std::fs::write(d.join("include/x"), "qubes.A * work vault allow\n").unwrap();
    let mut cache = qpm_policy::PolicyCache::new(d);
    let first = cache.get().unwrap();
    assert_eq!(first.len(), 1);
    // Unchanged: the same policy object.
    assert!(std::sync::Arc::ptr_eq(&first, &cache.get().unwrap()));
    // An included file changes (atomically, as policy.Replace writes).
    std::fs::write(
        d.join("include/x.new"),
        "qubes.A * work vault deny\nqubes.B * work vault deny\n",
    )
    .unwrap();
    std::fs::rename(d.join("include/x.new"), d.join("include/x")).unwrap();
    assert_eq!(cache.get().unwrap().len(), 2);
    // A broken file: the error, until it is fixed.
    std::fs::write(d.join("40-b.policy"), "broken\n").unwrap();
    assert_eq!(&*cache.get().unwrap_err().file, "40-b.policy");
    std::fs::remove_file(d.join("40-b.policy")).unwrap();
    assert_eq!(cache.get().unwrap().len(), 2);
}

#[test]
fn policy_is_shareable_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Policy>();
    shareable::<System>();
    shareable::<qpm_policy::PolicyCache>();
}

/// `Policy::load_dir` parses the root files on several threads; whatever
/// the files hold, it must give exactly what the one-thread walk gives:
/// the same rules in the same order, or the same (first) error.
#[test]
fn parallel_directory_load_equals_the_sequential_walk() {
    fn both(files: &[(String, String)]) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let show = |r: Result<Policy, qpm_policy::LoadError>| match r {
            Ok(p) => p
                .rules()
                .map(|(at, r)| format!("{}:{} {r:?}\n", at.file, at.line))
                .collect(),
            Err(e) => format!("error: {e}"),
        };
        let parallel = show(Policy::load_dir(dir.path()));
        let sequential = show(Policy::load(
            &qpm_policy::DirSource::new(dir.path()),
            &LoadOptions::default(),
        ));
        (parallel, sequential)
    }
    let base: Vec<(String, String)> = (0..24)
        .map(|i| {
            let mut t = format!("# file {i}\n");
            for j in 0..30 {
                t.push_str(&format!(
                    "svc.S{i}x{j} +a work @anyvm ask default_target=vault\n"
                ));
            }
            (format!("{i:02}-f.policy"), t)
        })
        .collect();
    let with = |edits: &[(usize, &str)], extra: &[(&str, &str)]| {
        let mut f = base.clone();
        for (i, line) in edits {
            f[*i].1.push_str(line);
            f[*i].1.push_str("\nlast.rule * @anyvm @anyvm deny\n");
        }
        f.extend(extra.iter().map(|(n, t)| (n.to_string(), t.to_string())));
        f
    };
    let cases = [
        with(&[], &[]),
        // Directives in files the workers parse, and in the walk's own.
        with(
            &[
                (2, "!include inc/a"),
                (20, "!include-dir inc"),
                (23, "!include-service svc.X + inc/old"),
            ],
            &[
                ("inc/a", "x * @anyvm @anyvm deny\n"),
                ("inc/b.policy", "y * @anyvm @anyvm allow\n"),
                ("inc/old", "@anyvm @anyvm deny\n"),
            ],
        ),
        // An error only in a late file, then in an early and a late one
        // (the first in load order wins).
        with(&[(21, "bad rule")], &[]),
        with(
            &[
                (3, "* * @anyvm @anyvm allow target=@anyvm"),
                (21, "bad rule"),
            ],
            &[],
        ),
        // A late file including a missing file, and an include cycle.
        with(&[(22, "!include inc/missing")], &[]),
        with(&[(19, "!include inc/c")], &[("inc/c", "!include inc/c\n")]),
        // A NUL in a late file.
        with(&[(17, "bad \u{0}")], &[]),
    ];
    let mut errors = 0;
    for (n, files) in cases.iter().enumerate() {
        let (parallel, sequential) = both(files);
        assert_eq!(parallel, sequential, "case {n}");
        errors += usize::from(parallel.starts_with("error"));
    }
    assert_eq!(errors, 5, "the error cases must fail");
    let (ok, _) = both(&cases[0]);
    assert_eq!(ok.lines().count(), 24 * 30);
}
