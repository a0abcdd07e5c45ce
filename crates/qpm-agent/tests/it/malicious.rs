//! Malicious payloads: each case asserts that the agent refused (or only
//! queued), that nothing outside its staging area was written and that the
//! target files are unchanged.

use std::os::unix::fs::PermissionsExt;

use qpm_sync::proto::{self, Code, Entry, Kind, Manifest, Tree, frame};

use crate::{Qube, entry};

/// Encodes a manifest entry by hand so that invalid values can be sent.
fn raw_entry(tree: u8, flags: u8, mode: u16, size: u64, hash: [u8; 32], path: &[u8]) -> Vec<u8> {
    let mut v = vec![tree, flags];
    v.extend_from_slice(&mode.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&hash);
    v.extend_from_slice(&(path.len() as u16).to_be_bytes());
    v.extend_from_slice(path);
    v
}

fn raw_manifest(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut p = b"QPMS\x00\x01\x01\x03cfg".to_vec();
    p.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        p.extend_from_slice(e);
    }
    p
}

fn frame_bytes(t: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    proto::write_frame(&mut v, t, payload).unwrap();
    v
}

/// A stream: manifest frame of one file `path`, its data and the end frame.
fn stream_for_path(path: &[u8], content: &[u8]) -> Vec<u8> {
    let e = raw_entry(
        0,
        0,
        0o644,
        content.len() as u64,
        *blake3::hash(content).as_bytes(),
        path,
    );
    let mut s = frame_bytes(frame::MANIFEST, &raw_manifest(&[e]));
    let mut d = 0u32.to_be_bytes().to_vec();
    d.extend_from_slice(content);
    s.extend(frame_bytes(frame::DATA, &d));
    s.extend(frame_bytes(frame::END, &[]));
    s
}

fn stream(m: &Manifest, data: &[&[u8]]) -> Vec<u8> {
    let mut s = frame_bytes(frame::MANIFEST, &m.encode());
    for (i, d) in data.iter().enumerate() {
        let mut p = (i as u32).to_be_bytes().to_vec();
        p.extend_from_slice(d);
        s.extend(frame_bytes(frame::DATA, &p));
    }
    s.extend(frame_bytes(frame::END, &[]));
    s
}

fn one(m_entry: Entry, data: &[u8]) -> Vec<u8> {
    stream(
        &Manifest {
            kind: Kind::Sync,
            source: "cfg".into(),
            entries: vec![m_entry],
        },
        &[data],
    )
}

/// Sends `bytes` to a prepared qube; asserts refusal, an unchanged tree and
/// an empty staging area, and that the reply is the fixed minimal one.
fn refused(q: &Qube, bytes: &[u8]) {
    let before = q.snapshot();
    let (code, out) = q.raw(bytes);
    assert_eq!(code, 1, "agent did not refuse");
    let mut r: &[u8] = &out;
    if out.first() == Some(&frame::NEED) {
        // Refused while reading data: skip the need list.
        let _ = proto::read_frame(&mut r, frame::NEED, "need", 1 << 20).unwrap();
    }
    let o =
        proto::Outcome::decode(&proto::read_frame(&mut r, frame::RESULT, "result", 1024).unwrap())
            .unwrap();
    assert_eq!(o.code, Code::Refused, "{o:?}");
    assert!(
        o.message == "invalid stream" || o.message.starts_with("refused;"),
        "reply leaks details: {:?}",
        o.message
    );
    assert_eq!(q.snapshot(), before, "files changed");
    assert!(
        q.pending().is_empty(),
        "staging left behind: {:?}",
        q.pending()
    );
}

fn default_refused(bytes: &[u8]) {
    refused(&Qube::auto(), bytes);
}

fn with_existing(setup: impl FnOnce(&Qube), bytes: &[u8]) {
    let q = Qube::auto();
    setup(&q);
    refused(&q, bytes);
}

macro_rules! cases {
    ($($name:ident => $body:expr;)*) => {
        $(#[test] fn $name() { $body })*
    };
}

cases! {
    traversal_dotdot => default_refused(&stream_for_path(b"../escape", b"x"));
    traversal_inner_dotdot => default_refused(&stream_for_path(b"a/../../escape", b"x"));
    traversal_deep_dotdot => default_refused(&stream_for_path(b"a/b/../../../../outside/precious", b"x"));
    absolute_path => default_refused(&stream_for_path(b"/etc/passwd", b"x"));
    dot_component => default_refused(&stream_for_path(b"./x", b"x"));
    empty_component => default_refused(&stream_for_path(b"a//b", b"x"));
    trailing_slash => default_refused(&stream_for_path(b"a/", b"x"));
    empty_path => default_refused(&stream_for_path(b"", b"x"));
    nul_in_name => default_refused(&stream_for_path(b"a\0b", b"x"));
    bad_utf8_name => default_refused(&stream_for_path(b"a\xff\xfe", b"x"));
    escape_sequence_in_name => default_refused(&stream_for_path(b"x\x1b[2J", b"x"));
    newline_in_name => default_refused(&stream_for_path(b"x\ny", b"x"));
    overlong_path => default_refused(&stream_for_path("a/".repeat(600).trim_end_matches('/').as_bytes(), b"x"));
    overlong_component => default_refused(&stream_for_path("n".repeat(300).as_bytes(), b"x"));
    too_deep => default_refused(&stream_for_path("d/".repeat(40).trim_end_matches('/').as_bytes(), b"x"));
    duplicate_paths => default_refused(&stream(&Manifest { kind: Kind::Sync, source: "cfg".into(), entries: vec![entry("a", b"1"), entry("a", b"1")] }, &[b"1", b"1"]));
    case_colliding_paths => default_refused(&stream(&Manifest { kind: Kind::Sync, source: "cfg".into(), entries: vec![entry(".Bashrc", b"1"), entry(".bashrc", b"1")] }, &[b"1", b"1"]));
    file_and_dir_collision => default_refused(&stream(&Manifest { kind: Kind::Sync, source: "cfg".into(), entries: vec![entry("a", b"1"), entry("a/b", b"1")] }, &[b"1", b"1"]));
    setuid_mode => default_refused(&{ let mut e = entry("bin/x", b"x"); e.mode = 0o4755; one(e, b"x") });
    setgid_mode => default_refused(&{ let mut e = entry("bin/x", b"x"); e.mode = 0o2755; one(e, b"x") });
    sticky_and_type_bits => default_refused(&frame_bytes(frame::MANIFEST, &raw_manifest(&[raw_entry(0, 0, 0o170644_u32 as u16, 1, *blake3::hash(b"x").as_bytes(), b"dev")])));
    unknown_flag_bits => default_refused(&frame_bytes(frame::MANIFEST, &raw_manifest(&[raw_entry(0, 0x80, 0o644, 1, *blake3::hash(b"x").as_bytes(), b"f")])));
    unknown_tree => default_refused(&frame_bytes(frame::MANIFEST, &raw_manifest(&[raw_entry(7, 0, 0o644, 1, *blake3::hash(b"x").as_bytes(), b"f")])));
    persist_flag_on_home_file => default_refused(&frame_bytes(frame::MANIFEST, &raw_manifest(&[raw_entry(0, 2, 0o644, 1, *blake3::hash(b"x").as_bytes(), b"f")])));
    huge_file_declared => default_refused(&frame_bytes(frame::MANIFEST, &raw_manifest(&[raw_entry(0, 0, 0o644, proto::MAX_FILE_SIZE + 1, [0; 32], b"big")])));
    total_size_over_config_limit => {
        let q = Qube::new("auto_apply = [\"~/\"]\ngui = \"never\"\nmax_total_size = 10\n");
        refused(&q, &stream(&Manifest { kind: Kind::Sync, source: "cfg".into(), entries: vec![entry("a", b"123456"), entry("b", b"123456")] }, &[b"123456", b"123456"]));
    };
    too_many_files_declared => {
        let mut p = b"QPMS\x00\x01\x01\x03cfg".to_vec();
        p.extend_from_slice(&(proto::MAX_FILES + 1).to_be_bytes());
        default_refused(&frame_bytes(frame::MANIFEST, &p));
    };
    many_files_over_config_limit => {
        let q = Qube::new("auto_apply = [\"~/\"]\ngui = \"never\"\nmax_files = 5\n");
        let names: Vec<String> = (0..6).map(|i| format!("f{i}")).collect();
        let m = Manifest { kind: Kind::Sync, source: "cfg".into(), entries: names.iter().map(|n| entry(n, b"x")).collect() };
        let d: [&[u8]; 6] = [b"x"; 6];
        refused(&q, &stream(&m, &d));
    };
    oversized_manifest_frame => {
        let mut h = vec![frame::MANIFEST];
        h.extend_from_slice(&(proto::MAX_MANIFEST_BYTES + 1).to_be_bytes());
        h.extend_from_slice(&[0u8; 1024]);
        default_refused(&h);
    };
    truncated_manifest => {
        let full = stream_for_path(b"f", b"x");
        default_refused(&full[..20]);
    };
    truncated_data => {
        let full = stream_for_path(b"f", b"hello world");
        // Cut inside the data frame.
        let cut = full.len() - 5 - 6;
        default_refused(&full[..cut]);
    };
    missing_end_frame => {
        let full = stream_for_path(b"f", b"hello");
        default_refused(&full[..full.len() - 5]);
    };
    oversized_data_frame => {
        let e = raw_entry(0, 0, 0o644, 5, *blake3::hash(b"hello").as_bytes(), b"f");
        let mut s = frame_bytes(frame::MANIFEST, &raw_manifest(&[e]));
        let mut d = 0u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"hello and much more than declared");
        s.extend(frame_bytes(frame::DATA, &d));
        s.extend(frame_bytes(frame::END, &[]));
        default_refused(&s);
    };
    content_hash_mismatch => {
        let e = raw_entry(0, 0, 0o644, 5, *blake3::hash(b"hello").as_bytes(), b"f");
        let mut s = frame_bytes(frame::MANIFEST, &raw_manifest(&[e]));
        let mut d = 0u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"evil!");
        s.extend(frame_bytes(frame::DATA, &d));
        s.extend(frame_bytes(frame::END, &[]));
        default_refused(&s);
    };
    data_after_end => {
        let mut s = stream_for_path(b"f", b"x");
        s.extend_from_slice(b"trailing garbage");
        default_refused(&s);
    };
    data_frames_out_of_order => {
        let m = Manifest { kind: Kind::Sync, source: "cfg".into(), entries: vec![entry("a", b"1"), entry("b", b"2")] };
        let mut s = frame_bytes(frame::MANIFEST, &m.encode());
        for (i, d) in [(1u32, b"2"), (0u32, b"1")] {
            let mut p = i.to_be_bytes().to_vec();
            p.extend_from_slice(d);
            s.extend(frame_bytes(frame::DATA, &p));
        }
        s.extend(frame_bytes(frame::END, &[]));
        default_refused(&s);
    };
    data_before_manifest => default_refused(&frame_bytes(frame::DATA, b"\0\0\0\0x"));
    bad_magic => default_refused(&frame_bytes(frame::MANIFEST, b"EVIL\x00\x01\x01\x03cfg\0\0\0\0"));
    unsupported_version => default_refused(&frame_bytes(frame::MANIFEST, b"QPMS\x00\x09\x01\x03cfg\0\0\0\0"));
    invalid_source_name => default_refused(&frame_bytes(frame::MANIFEST, b"QPMS\x00\x01\x01\x04c\x1bfg\0\0\0\0"));
    status_with_entries => default_refused(&frame_bytes(frame::MANIFEST, &{ let mut p = b"QPMS\x00\x01\x02\x03cfg".to_vec(); p.extend_from_slice(&1u32.to_be_bytes()); p.extend(raw_entry(0, 0, 0o644, 0, [0; 32], b"f")); p }));
    system_path_not_allowed => default_refused(&{ let mut e = entry("etc/passwd", b"root::0:0::/:/bin/sh\n"); e.tree = Tree::System; one(e, b"root::0:0::/:/bin/sh\n") });
    qrexec_service_dir_never_allowed => {
        let q = Qube::new("allow = [\"/\", \"~/\"]\nauto_apply = [\"/\"]\ngui = \"never\"\n");
        let mut e = entry("etc/qubes-rpc/qpm.SyncConfig", b"#!/bin/sh\nevil\n");
        e.tree = Tree::System;
        refused(&q, &one(e, b"#!/bin/sh\nevil\n"));
    };
    rw_config_never_allowed => {
        let q = Qube::new("allow = [\"/\"]\ngui = \"never\"\n");
        let mut e = entry("rw/config/rc.local", b"evil\n");
        e.tree = Tree::System;
        refused(&q, &one(e, b"evil\n"));
    };
    overwrite_agent_binary => {
        let q = Qube::new("allow = [\"/\"]\ngui = \"never\"\n");
        let mut e = entry("usr/bin/qpm-agent", b"evil");
        e.tree = Tree::System;
        refused(&q, &one(e, b"evil"));
    };
    overwrite_agent_config => {
        // The config file lives inside the root, in an allowed directory.
        let q = Qube::new("");
        std::fs::create_dir_all(q.home.join(".config/qpm-agent")).unwrap();
        let cfg = q.home.join(".config/qpm-agent/config.toml");
        std::fs::write(&cfg, "auto_apply = [\"~/\"]\ngui = \"never\"\n").unwrap();
        let mut q = q;
        q.config = cfg;
        refused(&q, &stream_for_path(b".config/qpm-agent/config.toml", b"allow = [\"/\"]\nauto_apply = [\"/\"]\n"));
    };
    overwrite_agent_state => {
        let q = Qube::auto();
        q.push(&[("seed", b"1")]);
        refused(&q, &stream_for_path(b".local/state/qpm-agent/applied.json", b"{}"));
    };
    caller_not_an_allowed_source => {
        let mut q = Qube::new("sources = [\"cfg\"]\nauto_apply = [\"~/\"]\ngui = \"never\"\n");
        q.envs = vec![("QREXEC_REMOTE_DOMAIN".into(), "untrusted".into())];
        refused(&q, &stream_for_path(b".bashrc", b"evil"));
    };
    more_data_than_free_space => {
        let mut q = Qube::auto();
        q.envs.push(("QPM_AGENT_TEST_FREE_SPACE".into(), "100000".into()));
        let big = vec![b'x'; 200_000];
        refused(&q, &stream_for_path(b"big", &big));
    };
    symlinked_directory_to_outside => with_existing(
        |q| std::os::unix::fs::symlink(&q.outside, q.home.join(".config")).unwrap(),
        &stream_for_path(b".config/precious", b"pwned"),
    );
    symlinked_directory_inside => with_existing(
        |q| { std::fs::create_dir(q.home.join("real")).unwrap(); std::os::unix::fs::symlink("real", q.home.join("alias")).unwrap() },
        &stream_for_path(b"alias/f", b"x"),
    );
    fifo_at_destination => with_existing(
        |q| { assert!(std::process::Command::new("mkfifo").arg(q.home.join("fifo")).status().unwrap().success()) },
        &stream_for_path(b"fifo", b"x"),
    );
    directory_at_destination => with_existing(|q| std::fs::create_dir(q.home.join("adir")).unwrap(), &stream_for_path(b"adir", b"x"));
    world_writable_directory_on_the_way => with_existing(
        |q| { std::fs::create_dir(q.home.join("shared")).unwrap(); std::fs::set_permissions(q.home.join("shared"), std::fs::Permissions::from_mode(0o777)).unwrap() },
        &stream_for_path(b"shared/f", b"x"),
    );
}

/// A symlink as the final component is never written through: the file is
/// treated as a local change (conflict), queued, and even after consent the
/// link target outside is untouched (the link itself is replaced).
#[test]
fn symlink_at_destination_never_written_through() {
    let q = Qube::auto();
    std::os::unix::fs::symlink(q.outside.join("precious"), q.home.join(".bashrc")).unwrap();
    let before = q.snapshot();
    let (_, o, _) = q.push(&[(".bashrc", b"evil\n")]);
    assert_eq!(o.code, Code::Queued);
    assert_eq!(q.snapshot(), before);
    q.review_answer("y\n");
    assert_eq!(
        std::fs::read(q.outside.join("precious")).unwrap(),
        b"do not touch\n"
    );
    assert!(
        !std::fs::symlink_metadata(q.home.join(".bashrc"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// A hard link to a file outside: replaced by rename, the other name keeps
/// its content.
#[test]
fn hardlink_at_destination_not_written_through() {
    let q = Qube::auto();
    std::fs::hard_link(q.outside.join("precious"), q.home.join("hl")).unwrap();
    let (_, o, _) = q.push(&[("hl", b"evil\n")]);
    assert_eq!(
        o.code,
        Code::Queued,
        "an existing file qpm did not place is a conflict"
    );
    q.review_answer("y\n");
    assert_eq!(
        std::fs::read(q.outside.join("precious")).unwrap(),
        b"do not touch\n"
    );
    assert_eq!(q.read_home("hl").unwrap(), b"evil\n");
}

/// The directory is swapped for a symlink to outside after review was
/// queued and before consent: the apply fails and nothing outside changes.
#[test]
fn symlink_swap_between_staging_and_apply() {
    let q = Qube::review();
    std::fs::create_dir(q.home.join(".config")).unwrap();
    let (_, o, _) = q.push(&[(".config/precious", b"pwned\n")]);
    assert_eq!(o.code, Code::Queued);
    std::fs::remove_dir(q.home.join(".config")).unwrap();
    std::os::unix::fs::symlink(&q.outside, q.home.join(".config")).unwrap();
    let before = q.snapshot();
    let (code, out) = q.review_answer("y\n");
    assert_eq!(code, 1, "{out}");
    assert_eq!(q.snapshot(), before);
    assert_eq!(
        std::fs::read(q.outside.join("precious")).unwrap(),
        b"do not touch\n"
    );
}

/// Many small files and a deep (but legal) tree are accepted and bounded.
#[test]
fn legal_deep_tree_is_accepted() {
    let q = Qube::auto();
    let deep = "d/".repeat(30) + "f";
    let (code, o, _) = q.push(&[(deep.as_str(), b"x")]);
    assert_eq!((code, o.code), (0, Code::Applied));
}

/// Terminal escapes in content are escaped in the review output.
#[test]
fn review_output_escapes_terminal_controls() {
    let q = Qube::review();
    q.push(&[("notes", b"hello\x1b]0;pwned\x07\x1b[2J\n")]);
    let (_, out) = q.review_answer("n\n");
    assert!(!out.contains('\x1b') && !out.contains('\x07'), "{out:?}");
    assert!(out.contains("\\u{1b}"), "{out}");
}
