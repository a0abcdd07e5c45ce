//! Apply, review, conflicts, deletions, rollback, persistence, crashes.

use std::os::unix::fs::PermissionsExt;

use qpm_sync::proto::{Code, Tree, flags};

use crate::{Qube, entry, manifest};

#[test]
fn auto_apply_then_unchanged_in_one_round_trip() {
    let q = Qube::auto();
    let files: &[(&str, &[u8])] = &[
        (".gitconfig", b"[user]\n\tname = A\n"),
        (".config/app/app.conf", b"k=1\n"),
    ];
    let (code, o, asked) = q.push(files);
    assert_eq!((code, o.code, o.written), (0, Code::Applied, 2), "{o:?}");
    assert!(asked);
    assert_eq!(q.read_home(".gitconfig").unwrap(), b"[user]\n\tname = A\n");
    let m = std::fs::metadata(q.home.join(".config/app/app.conf")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o644);
    // Nothing changed: the agent answers the manifest with the result.
    let (code, o, asked) = q.push(files);
    assert_eq!((code, o.code), (0, Code::Unchanged));
    assert!(!asked, "a qube with nothing to change costs one round trip");
    assert!(q.pending().is_empty());
}

/// The agent `stat`s the files it placed before the manifest arrives; a
/// directory that became unsafe since the last sync is still refused, and
/// an edit that keeps the size is still found.
#[test]
fn files_checked_ahead_still_pass_the_directory_checks() {
    let q = Qube::auto();
    let files: &[(&str, &[u8])] = &[("shared/a.conf", b"a=1\n"), ("shared/b.conf", b"b=1\n")];
    let (_, o, _) = q.push(files);
    assert_eq!(o.code, Code::Applied, "{o:?}");
    // Same size, new content: found although the manifest is unchanged.
    std::fs::write(q.home.join("shared/b.conf"), b"b=2\n").unwrap();
    let (_, o, asked) = q.push(files);
    assert_eq!((o.code, o.conflicts), (Code::Queued, 1), "{o:?}");
    assert!(asked);
    // A directory of placed files made writable by others: refused.
    let q = Qube::auto();
    q.push(files);
    std::fs::set_permissions(
        q.home.join("shared"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let before = q.snapshot();
    let (code, o, asked) = q.push(files);
    assert_eq!((code, o.code), (1, Code::Refused), "{o:?}");
    assert!(!asked);
    assert_eq!(q.snapshot(), before);
    // Replaced by a symlink to an identical copy elsewhere: refused, not
    // taken as unchanged.
    let q = Qube::auto();
    q.push(files);
    std::fs::rename(q.home.join("shared"), q.outside.join("shared")).unwrap();
    std::os::unix::fs::symlink(q.outside.join("shared"), q.home.join("shared")).unwrap();
    let before = q.snapshot();
    let (code, o, _) = q.push(files);
    assert_eq!((code, o.code), (1, Code::Refused), "{o:?}");
    assert_eq!(q.snapshot(), before);
}

/// A caller that hangs up before sending anything gets no reply and leaves
/// nothing behind.
#[test]
fn call_closed_without_a_request() {
    let q = Qube::auto();
    q.push(&[(".vimrc", b"set nu\n")]);
    let before = q.snapshot();
    let (code, out) = q.raw(b"");
    assert_eq!((code, out.len()), (1, 0));
    assert_eq!(q.snapshot(), before);
    assert!(q.pending().is_empty());
}

#[test]
fn review_queue_yes_and_no() {
    let q = Qube::review();
    let (code, o, _) = q.push(&[(".vimrc", b"set nu\n")]);
    assert_eq!((code, o.code), (0, Code::Queued));
    assert_eq!(
        q.read_home(".vimrc"),
        None,
        "nothing applied before consent"
    );
    let (code, out) = q.review_answer("n\n");
    assert_eq!(code, 1);
    assert!(out.contains("+set nu"), "{out}");
    assert_eq!(q.read_home(".vimrc"), None);
    assert!(q.pending().is_empty());
    q.push(&[(".vimrc", b"set nu\n")]);
    let (code, _) = q.review_answer("y\n");
    assert_eq!(code, 0);
    assert_eq!(q.read_home(".vimrc").unwrap(), b"set nu\n");
}

#[test]
fn local_edit_is_a_conflict_never_silently_overwritten() {
    let q = Qube::auto();
    q.push(&[(".bashrc", b"v1\n")]);
    std::fs::write(q.home.join(".bashrc"), b"my local edit\n").unwrap();
    let (code, o, _) = q.push(&[(".bashrc", b"v2\n")]);
    assert_eq!((code, o.code, o.conflicts), (0, Code::Queued, 1), "{o:?}");
    assert_eq!(q.read_home(".bashrc").unwrap(), b"my local edit\n");
    let (_, out) = q.review_answer("y\n");
    assert!(
        out.contains("WARNING") && out.contains("-my local edit"),
        "{out}"
    );
    assert_eq!(q.read_home(".bashrc").unwrap(), b"v2\n");
    // The local edit is in the backup: rollback restores it.
    let st = q.cmd("rollback").output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_eq!(q.read_home(".bashrc").unwrap(), b"my local edit\n");
}

#[test]
fn deletion_only_of_unchanged_files_qpm_placed() {
    let q = Qube::auto();
    q.push(&[("a", b"1"), ("b", b"2"), ("c", b"3")]);
    std::fs::write(q.home.join("b"), b"edited").unwrap();
    let (_, o, _) = q.push(&[("c", b"3")]);
    assert_eq!(
        (o.code, o.deleted, o.conflicts),
        (Code::Applied, 1, 1),
        "{o:?}"
    );
    assert_eq!(q.read_home("a"), None);
    assert_eq!(q.read_home("b").unwrap(), b"edited");
    assert_eq!(q.read_home("c").unwrap(), b"3");
}

#[test]
fn rollback_restores_previous_versions_and_removes_new_files() {
    let q = Qube::auto();
    q.push(&[("x", b"old")]);
    q.push(&[("x", b"new"), ("y", b"created")]);
    assert_eq!(q.read_home("x").unwrap(), b"new");
    let st = q.cmd("rollback").output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_eq!(q.read_home("x").unwrap(), b"old");
    assert_eq!(q.read_home("y"), None);
    let st = q.cmd("status").arg("--json").output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["history"].as_array().unwrap().len(), 3);
}

#[test]
fn system_paths_with_persistence_use_bind_dirs() {
    let q = Qube::new(
        "allow = [\"~/\", \"/etc/app/\"]\nauto_apply = [\"/etc/app/\"]\ngui = \"never\"\n",
    );
    let mut e = entry("etc/app/app.conf", b"port=1\n");
    e.tree = Tree::System;
    e.flags = flags::PERSIST_BIND_DIRS;
    e.mode = 0o640;
    let m = qpm_sync::proto::Manifest {
        kind: qpm_sync::proto::Kind::Sync,
        source: "cfg".into(),
        entries: vec![e],
    };
    let (code, o, _) = q.push_entries(&m, &[("etc/app/app.conf", b"port=1\n")]);
    assert_eq!((code, o.code), (0, Code::Applied), "{o:?}");
    assert_eq!(
        std::fs::read(q.root.join("etc/app/app.conf")).unwrap(),
        b"port=1\n"
    );
    assert_eq!(
        std::fs::read(q.root.join("rw/bind-dirs/etc/app/app.conf")).unwrap(),
        b"port=1\n"
    );
    let conf =
        std::fs::read_to_string(q.root.join("rw/config/qubes-bind-dirs.d/50_qpm.conf")).unwrap();
    assert!(conf.contains("binds+=( '/etc/app/app.conf' )"), "{conf}");
    let mode = std::fs::metadata(q.root.join("etc/app/app.conf"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640);
}

#[test]
fn status_call_is_cheap_and_answers() {
    let q = Qube::auto();
    q.push(&[("a", b"1")]);
    let m = qpm_sync::proto::Manifest {
        kind: qpm_sync::proto::Kind::Status,
        source: "cfg".into(),
        entries: vec![],
    };
    let mut bytes = Vec::new();
    qpm_sync::proto::write_frame(&mut bytes, qpm_sync::proto::frame::MANIFEST, &m.encode())
        .unwrap();
    let (code, out) = q.raw(&bytes);
    assert_eq!(code, 0);
    let mut r: &[u8] = &out;
    let s = qpm_sync::proto::Status::decode(
        &qpm_sync::proto::read_frame(&mut r, b'S', "s", 1024).unwrap(),
    )
    .unwrap();
    assert_eq!(s.managed, 1);
    assert_eq!(s.last_sync.len(), 32);
}

/// Kill the agent with SIGKILL at every journal step of a sync that replaces
/// two files, deletes one and creates one; after each kill the next agent
/// run must leave either the complete old or the complete new state, and a
/// re-run of the push must converge on the new state.
#[test]
fn crash_at_every_journal_step_converges() {
    let old: &[(&str, &[u8])] = &[("d1/a", b"old a"), ("d2/b", b"old b"), ("gone", b"bye")];
    let new: &[(&str, &[u8])] = &[("d1/a", b"new a"), ("d2/b", b"new b"), ("d3/c", b"new c")];
    let state_of = |q: &Qube| -> Vec<Option<Vec<u8>>> {
        ["d1/a", "d2/b", "gone", "d3/c"]
            .iter()
            .map(|p| q.read_home(p))
            .collect()
    };
    let old_state = vec![
        Some(b"old a".to_vec()),
        Some(b"old b".to_vec()),
        Some(b"bye".to_vec()),
        None,
    ];
    let new_state = vec![
        Some(b"new a".to_vec()),
        Some(b"new b".to_vec()),
        None,
        Some(b"new c".to_vec()),
    ];
    for (crashed_steps, n) in (1..100).enumerate() {
        let mut q = Qube::auto();
        q.push(old);
        q.envs.push(("QPM_AGENT_CRASH_AT".into(), n.to_string()));
        let (code, o, _) = q.push(new);
        q.envs.pop();
        if code == 0 && o.code == Code::Applied {
            assert_eq!(state_of(&q), new_state);
            assert!(crashed_steps >= 8, "only {crashed_steps} steps exercised");
            return;
        }
        // Any agent run recovers first.
        let st = q.cmd("status").output().unwrap();
        assert!(
            st.status.success(),
            "step {n}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        let s = state_of(&q);
        assert!(
            s == old_state || s == new_state,
            "step {n}: mixed state {s:?}"
        );
        assert!(
            !q.state.join("journal.json").exists(),
            "step {n}: journal left"
        );
        // No temporaries left beside targets.
        for d in ["", "d1", "d2", "d3"] {
            if let Ok(rd) = std::fs::read_dir(q.home.join(d)) {
                for e in rd {
                    let name = e.unwrap().file_name().to_string_lossy().into_owned();
                    assert!(
                        !name.starts_with(qpm_fs::TEMP_PREFIX),
                        "step {n}: temp {name} left"
                    );
                }
            }
        }
        let (code, o, _) = q.push(new);
        assert!(
            code == 0 && matches!(o.code, Code::Applied | Code::Unchanged),
            "step {n}: re-run {o:?}"
        );
        assert_eq!(state_of(&q), new_state, "step {n}: re-run did not converge");
    }
    panic!("the sync never completed");
}

#[test]
fn many_files_push() {
    let q = Qube::auto();
    let names: Vec<String> = (0..300).map(|i| format!("d{}/f{i}", i % 10)).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), n.as_bytes())).collect();
    let (code, o, _) = q.push(&files);
    assert_eq!((code, o.code, o.written), (0, Code::Applied, 300));
    let (_, o, asked) = q.push(&files);
    assert_eq!(o.code, Code::Unchanged);
    assert!(!asked);
    let m = manifest(&files);
    assert_eq!(m.entries.len(), 300);
}

/// A named set (a package's files) and the caller's plain set are kept
/// apart: each push lists only its own files, and neither deletes the
/// other's.
#[test]
fn named_sets_do_not_delete_each_other() {
    let q = Qube::auto();
    let set = |files: &[(&str, &[u8])]| {
        let mut m = manifest(files);
        m.kind = qpm_sync::proto::Kind::SyncSet;
        m.source = "pkg.demo".into();
        q.push_entries(&m, files)
    };
    let (_, o, _) = q.push(&[(".gitconfig", b"mine\n")]);
    assert_eq!(o.code, Code::Applied, "{o:?}");
    let (_, o, _) = set(&[("bookmarks", b"b1\n"), ("old", b"o\n")]);
    assert_eq!(
        (o.code, o.written, o.deleted),
        (Code::Applied, 2, 0),
        "{o:?}"
    );
    assert_eq!(q.read_home(".gitconfig").unwrap(), b"mine\n");
    // The plain set again, without the set's files: nothing deleted.
    let (_, o, _) = q.push(&[(".gitconfig", b"mine\n")]);
    assert_eq!(o.code, Code::Unchanged, "{o:?}");
    assert_eq!(q.read_home("bookmarks").unwrap(), b"b1\n");
    // The set drops a file: only that one goes.
    let (_, o, _) = set(&[("bookmarks", b"b2\n")]);
    assert_eq!(
        (o.code, o.written, o.deleted),
        (Code::Applied, 1, 1),
        "{o:?}"
    );
    assert_eq!(q.read_home("old"), None);
    assert_eq!(q.read_home("bookmarks").unwrap(), b"b2\n");
    assert_eq!(q.read_home(".gitconfig").unwrap(), b"mine\n");
    // The set empty: its files go, the plain set's stay.
    let (_, o, _) = set(&[]);
    assert_eq!((o.code, o.deleted), (Code::Applied, 1), "{o:?}");
    assert_eq!(q.read_home("bookmarks"), None);
    assert_eq!(q.read_home(".gitconfig").unwrap(), b"mine\n");
}

/// A check of a set names the entries not in place: edited, removed, or
/// never placed by that set; it writes nothing.
#[test]
fn check_names_the_set_files_not_in_place() {
    use qpm_sync::proto::{self, Kind, frame};
    let q = Qube::auto();
    let files: &[(&str, &[u8])] = &[("a", b"1"), ("b", b"2"), ("c", b"3")];
    let mut m = manifest(files);
    m.kind = Kind::SyncSet;
    m.source = "pkg.demo".into();
    let (_, o, _) = q.push_entries(&m, files);
    assert_eq!(o.code, Code::Applied, "{o:?}");
    // "c" is also pushed by the caller's plain set: no longer the set's.
    q.push(&[("c", b"3")]);
    let check = |m: &proto::Manifest| {
        let mut c = m.clone();
        c.kind = Kind::Check;
        let mut bytes = Vec::new();
        proto::write_frame(&mut bytes, frame::MANIFEST, &c.encode()).unwrap();
        let (code, out) = q.raw(&bytes);
        assert_eq!(code, 0);
        let mut r: &[u8] = &out;
        let b = proto::read_frame(&mut r, frame::NEED, "need", 1 << 20).unwrap();
        proto::decode_need(&b, 3).unwrap()
    };
    assert_eq!(check(&m), [2]);
    std::fs::write(q.home.join("a"), b"edited").unwrap();
    std::fs::remove_file(q.home.join("b")).unwrap();
    let before = std::fs::read_dir(&q.state).unwrap().count();
    assert_eq!(check(&m), [0, 1, 2]);
    assert_eq!(q.read_home("a").unwrap(), b"edited");
    assert_eq!(std::fs::read_dir(&q.state).unwrap().count(), before);
}
