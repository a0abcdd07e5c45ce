#![no_main]
//! Every decoder of the sync protocol on arbitrary bytes: no panic, and a
//! decoded manifest re-encodes to an equal manifest. Then the same bytes as
//! a whole stream into a receiving agent (manifest, need list, data and end
//! frames, staging and apply) in a fresh directory, and as a capture reply
//! to the sender: no panic, and nothing written outside the agent's root.
use libfuzzer_sys::fuzz_target;
use qpm_sync::config::{AgentConfig, Gui};
use qpm_sync::proto::{self, Manifest, Tree, frame};
use qpm_sync::receiver::{Agent, AgentOptions};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }
    let _ = proto::decode_need(data, 64);
    let _ = proto::Outcome::decode(data);
    let _ = proto::Status::decode(data);
    let mut r: &[u8] = data;
    if let Ok(p) = proto::read_frame(&mut r, frame::MANIFEST, "manifest", 1 << 16) {
        let _ = Manifest::decode(&p);
    }

    // The sender reading a capture reply.
    let mut r: &[u8] = data;
    if let Ok(path) = qpm_fs::RelPath::new(".gitconfig") {
        let _ = qpm_sync::sender::capture("q", "cfg", Tree::Home, &path, std::io::sink(), &mut r);
    }

    // The receiver: a fresh qube root and state per input.
    let Ok(dir) = tempfile::tempdir() else { return };
    let root = dir.path().join("root");
    if std::fs::create_dir_all(root.join("home/user")).is_err() {
        return;
    }
    let opts = AgentOptions {
        root: root.clone(),
        state: dir.path().join("state"),
        config: AgentConfig {
            auto_apply: vec!["~/".into()],
            gui: Gui::Never,
            ..AgentConfig::default()
        },
        caller: Some("cfg".into()),
        free_space: Some(1 << 30),
        ..AgentOptions::default()
    };
    let Ok(agent) = Agent::open(opts) else { return };
    let mut input: &[u8] = data;
    let mut out = Vec::new();
    let _ = agent.serve(&mut input, &mut out);
    // Only the root and the state directory were written.
    for e in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
        let n = e.file_name();
        assert!(n == "root" || n == "state", "wrote {n:?}");
    }
});
