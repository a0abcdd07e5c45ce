//! `qpm-sim conformance`: replays a transcript of recorded qubesd calls
//! through a fresh simulator's qubesd socket and prints one answer per line,
//! in the schema of `conformance/admin/check.py`.

use std::io::{BufRead, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use base64::Engine as _;
use qpm_wire::{Reply, ReplyError};
use serde_json::{Value, json};

use crate::api::{AllowAll, NoHost};
use crate::model::fixture;
use crate::server;
use crate::sim::{Shared, Sim};

/// Largest transcript line accepted.
const MAX_LINE: usize = 1024 * 1024;

/// Why the replay could not run (a mismatch is not an error: it is printed).
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// Reading an input failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The fixture is invalid.
    #[error("{path}: {source}")]
    Fixture {
        /// File.
        path: String,
        /// Cause.
        source: fixture::FixtureError,
    },
    /// A transcript line is invalid.
    #[error("{path}:{line}: {msg}")]
    Line {
        /// File.
        path: String,
        /// Line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
}

fn field(obj: &Value, name: &str) -> Result<Vec<u8>, String> {
    if let Some(s) = obj.get(name).and_then(Value::as_str) {
        return Ok(s.as_bytes().to_vec());
    }
    if let Some(s) = obj.get(format!("{name}_b64")).and_then(Value::as_str) {
        return base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| format!("field {name}_b64: {e}"));
    }
    Ok(Vec::new())
}

/// One call through a qubesd-protocol socket, as a client would make it:
/// returns everything received before EOF.
pub fn socket_call(socket: &Path, header_and_payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(header_and_payload)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        // an aborted connection may surface as a reset
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(out),
        Err(e) => Err(e),
    }
}

/// Replays `cases` against a simulator initialised from `fixture`, writing
/// one JSON answer per line to `out`.
pub fn run(
    fixture_path: &Path,
    cases_path: &Path,
    out: &mut dyn Write,
) -> Result<usize, ConformanceError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ConformanceError::Io {
            path: path.clone(),
            source,
        }
    };
    let text = std::fs::read_to_string(fixture_path).map_err(io(fixture_path))?;
    let sys = fixture::from_fixture(&text).map_err(|source| ConformanceError::Fixture {
        path: fixture_path.display().to_string(),
        source,
    })?;
    let shared = Shared {
        sys,
        host: Box::new(NoHost),
        clone_tokens: Default::default(),
        next_uuid: None,
        persist: None,
    };
    let mut sim = Sim::new(shared, Arc::new(AllowAll));
    sim.uuid_control = true;
    let sim = Arc::new(sim);
    let dir = tempfile::tempdir().map_err(io(Path::new("temporary directory")))?;
    let sock = dir.path().join("qubesd.sock");
    let listener = UnixListener::bind(&sock).map_err(io(&sock))?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let sim = sim.clone();
        let stop = stop.clone();
        std::thread::spawn(move || server::serve_qubesd(sim, listener, stop));
    }
    let file = std::fs::File::open(cases_path).map_err(io(cases_path))?;
    let reader = std::io::BufReader::new(file);
    let mut count = 0;
    for (n, line) in reader.split(b'\n').enumerate() {
        let line = line.map_err(io(cases_path))?;
        let bad = |msg: String| ConformanceError::Line {
            path: cases_path.display().to_string(),
            line: n + 1,
            msg,
        };
        if line.len() > MAX_LINE {
            return Err(bad("line too long".into()));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let obj: Value = serde_json::from_slice(&line).map_err(|e| bad(e.to_string()))?;
        let id = obj.get("id").cloned().ok_or_else(|| bad("no id".into()))?;
        let get = |name: &str| field(&obj, name).map_err(&bad);
        let (src, method, dest, arg, payload) = (
            get("src")?,
            get("method")?,
            get("dest")?,
            get("arg")?,
            get("payload")?,
        );
        let new_uuid = obj
            .pointer("/expect/new_uuid")
            .and_then(Value::as_str)
            .map(str::to_string);
        sim.set_next_uuid(new_uuid);
        let mut req = Vec::with_capacity(payload.len() + 64);
        req.extend_from_slice(&method);
        req.push(b'+');
        req.extend_from_slice(&arg);
        req.push(b' ');
        req.extend_from_slice(if src.is_empty() { b"dom0" } else { &src });
        req.extend_from_slice(b" name ");
        req.extend_from_slice(&dest);
        req.push(0);
        req.extend_from_slice(&payload);
        let raw = socket_call(&sock, &req).map_err(io(&sock))?;
        sim.set_next_uuid(None);
        let answer = match Reply::decode(&raw) {
            Ok(Reply::Success(v)) => match String::from_utf8(v) {
                Ok(s) => json!({"id": id, "ok": true, "response": s}),
                Err(e) => json!({"id": id, "ok": true,
                    "response_b64": base64::engine::general_purpose::STANDARD.encode(e.as_bytes())}),
            },
            Ok(Reply::Exception { class, message, .. }) => {
                json!({"id": id, "ok": false, "exception": class, "message": message})
            }
            Err(ReplyError::Empty) => json!({"id": id, "ok": false, "wire": "abort"}),
            Err(e) => json!({"id": id, "ok": false, "wire": "invalid", "error": e.to_string()}),
        };
        writeln!(out, "{answer}").map_err(io(Path::new("stdout")))?;
        count += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = UnixStream::connect(&sock);
    Ok(count)
}
