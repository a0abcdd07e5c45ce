//! dom0's policy administration services (`policy.List`, `policy.Get`,
//! `policy.Replace`, `policy.Remove`, `policy.include.*`, `policy.GetFiles`),
//! as qrexec's `qubes-policy-admin` implements them: executable-style
//! services answering on stdout with exit 0, or exit 1 and
//! `<ExceptionClass> <message>` on stderr.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::policy::PolicyEngine;

/// Largest payload accepted by the policy services.
pub const MAX_POLICY_PAYLOAD: usize = 1024 * 1024;

/// The services served here.
pub const SERVICES: &[&str] = &[
    "policy.List",
    "policy.Get",
    "policy.Replace",
    "policy.Remove",
    "policy.include.List",
    "policy.include.Get",
    "policy.include.Replace",
    "policy.include.Remove",
    "policy.GetFiles",
];

/// Class of an unexpected failure (exit 2, as `qubes-policy-admin` does).
const INTERNAL: &str = "";

#[derive(Debug)]
struct Failure {
    class: &'static str,
    message: String,
}

fn fail(class: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        class,
        message: message.into(),
    }
}

fn protocol(message: impl Into<String>) -> Failure {
    fail("PolicyAdminProtocolException", message)
}

/// Token of a file's content: `sha256:<hex>`.
pub fn token_of(content: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(content)))
}

/// Runs one policy service. Returns the exit status.
pub fn run(
    engine: &dyn PolicyEngine,
    dir: &Path,
    service: &str,
    arg: &str,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let mut payload = Vec::new();
    if stdin
        .take(MAX_POLICY_PAYLOAD as u64 + 1)
        .read_to_end(&mut payload)
        .is_err()
    {
        let _ = writeln!(
            stderr,
            "PolicyAdminProtocolException cannot read the request"
        );
        return 1;
    }
    if payload.len() > MAX_POLICY_PAYLOAD {
        let _ = writeln!(stderr, "PolicyAdminProtocolException request too large");
        return 1;
    }
    match handle(engine, dir, service, arg, &payload) {
        Ok(out) => {
            if stdout
                .write_all(&out)
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return 1;
            }
            0
        }
        Err(f) if f.class == INTERNAL => {
            tracing::error!("{service}+{arg}: {}", f.message);
            let _ = write!(stderr, "Internal error, see the simulator's log");
            2
        }
        Err(f) => {
            let _ = write!(stderr, "{} {}", f.class, f.message);
            1
        }
    }
}

fn lock(dir: &Path) -> Result<fs::File, Failure> {
    let f = fs::File::open(dir)
        .map_err(|e| fail("PolicyAdminException", format!("policy directory: {e}")))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| fail("PolicyAdminException", format!("lock: {e}")))?;
    Ok(f)
}

fn handle(
    engine: &dyn PolicyEngine,
    dir: &Path,
    service: &str,
    arg: &str,
    payload: &[u8],
) -> Result<Vec<u8>, Failure> {
    if !arg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.' | b'_'))
    {
        return Err(protocol("Invalid characters in argument"));
    }
    let include = service.starts_with("policy.include.");
    let op = service.rsplit('.').next().unwrap_or_default();
    let want_arg = !matches!(op, "List");
    let want_payload = matches!(op, "Replace" | "Remove");
    if want_arg && arg.is_empty() && service != "policy.GetFiles" {
        return Err(protocol("Missing argument"));
    }
    if !want_arg && !arg.is_empty() {
        return Err(protocol("Unexpected argument"));
    }
    if !want_payload && !payload.is_empty() {
        return Err(protocol("Unexpected payload"));
    }
    let _guard = lock(dir)?;
    if service == "policy.GetFiles" {
        return get_files(dir, arg);
    }
    if op == "List" {
        return list(dir, include);
    }
    if !arg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(fail(
            "PolicyAdminInvalidFileNameException",
            format!("Invalid file name: {arg}"),
        ));
    }
    let key = if include {
        format!("include/{arg}")
    } else {
        format!("{arg}.policy")
    };
    let path = dir.join(&key);
    let current = match fs::read(&path) {
        Ok(c) => Some(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(fail("PolicyAdminException", e.to_string())),
    };
    match op {
        "Get" => {
            let c = current.ok_or_else(|| {
                fail(
                    "PolicyAdminFileNotFoundException",
                    format!("Not found: {key}"),
                )
            })?;
            let mut out = token_of(&c).into_bytes();
            out.push(b'\n');
            out.extend_from_slice(&c);
            Ok(out)
        }
        "Replace" => {
            let nl = payload
                .iter()
                .position(|&b| b == b'\n')
                .ok_or_else(|| protocol("Payload needs to include first line with token"))?;
            let (token, content) = (
                payload.get(..nl).unwrap_or_default(),
                payload.get(nl + 1..).unwrap_or_default(),
            );
            check_token(token, current.as_deref())?;
            engine
                .validate_change(dir, &key, Some(content))
                .map_err(|e| {
                    fail(
                        "PolicyAdminSyntaxException",
                        format!("Policy change validation failed: {e}"),
                    )
                })?;
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| fail("PolicyAdminException", e.to_string()))?;
            }
            crate::store::atomic_write(&path, content, 0o664)
                .map_err(|e| fail("PolicyAdminException", e.to_string()))?;
            Ok(Vec::new())
        }
        "Remove" => {
            check_token(
                payload.strip_suffix(b"\n").unwrap_or(payload),
                current.as_deref(),
            )?;
            if current.is_none() {
                return Err(fail(
                    "PolicyAdminFileNotFoundException",
                    format!("Not found: {key}"),
                ));
            }
            engine.validate_change(dir, &key, None).map_err(|e| {
                fail(
                    "PolicyAdminSyntaxException",
                    format!("Policy change validation failed: {e}"),
                )
            })?;
            fs::remove_file(&path).map_err(|e| fail("PolicyAdminException", e.to_string()))?;
            if let Ok(d) = fs::File::open(path.parent().unwrap_or(dir)) {
                let _ = d.sync_all();
            }
            Ok(Vec::new())
        }
        _ => Err(protocol(format!("unknown service {service}"))),
    }
}

fn check_token(token: &[u8], current: Option<&[u8]>) -> Result<(), Failure> {
    let token = std::str::from_utf8(token).map_err(|_| protocol("Unrecognized token"))?;
    match (token, current) {
        ("any", _) => Ok(()),
        ("new", None) => Ok(()),
        ("new", Some(_)) => Err(fail(
            "PolicyAdminTokenException",
            "File exists but token is 'new'",
        )),
        (t, _) if !t.starts_with("sha256:") => Err(protocol("Unrecognized token")),
        (_, None) => Err(fail(
            "PolicyAdminTokenException",
            "File doesn't exist, but token isn't 'new'",
        )),
        (t, Some(c)) => {
            let want = token_of(c);
            if subtle_eq(t.as_bytes(), want.as_bytes()) {
                Ok(())
            } else {
                Err(fail("PolicyAdminTokenException", "Token mismatch"))
            }
        }
    }
}

/// Constant-time comparison (tokens are not secrets, but cheap to do right).
fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn list(dir: &Path, include: bool) -> Result<Vec<u8>, Failure> {
    let d: PathBuf = if include {
        dir.join("include")
    } else {
        dir.to_path_buf()
    };
    let mut names = Vec::new();
    if let Ok(entries) = fs::read_dir(&d) {
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = if include {
                Some(name.as_str())
            } else {
                name.strip_suffix(".policy")
            };
            if let Some(s) = stem
                && !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                names.push(s.to_string());
            }
        }
    }
    names.sort();
    Ok(names
        .into_iter()
        .flat_map(|n| format!("{n}\n").into_bytes())
        .collect())
}

/// Files (stems) with rules for `service` or `*`: a line-level scan of the
/// policy files (first token of each rule line).
/// `policy.GetFiles+SERVICE`: the files (stems for files inside the
/// directory, absolute paths for files outside it) that hold a rule for
/// SERVICE or `*`, in load order, includes followed.
fn get_files(dir: &Path, service: &str) -> Result<Vec<u8>, Failure> {
    if service.is_empty() {
        return Err(fail("PolicyAdminException", "Service cannot be empty."));
    }
    if service.contains('+') {
        return Err(fail(
            "PolicyAdminException",
            format!("Service {service:?} contains invalid characters: '+'"),
        ));
    }
    let policy = qpm_policy::Policy::load_dir(dir).map_err(|e| Failure {
        class: INTERNAL,
        message: e.to_string(),
    })?;
    let mut files: Vec<String> = Vec::new();
    for (r, rule) in policy.rules() {
        if rule.service.as_ref().is_some_and(|s| s.as_str() != service) {
            continue;
        }
        let name = if r.file.starts_with('/') {
            r.file.to_string()
        } else {
            let base = r.file.rsplit('/').next().unwrap_or_default();
            match base.rfind('.') {
                Some(i) if i > 0 => base[..i].to_string(),
                _ => base.to_string(),
            }
        };
        if !files.contains(&name) {
            files.push(name);
        }
    }
    Ok(files
        .iter()
        .flat_map(|f| format!("{f}\n").into_bytes())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Decision, PolicyRequest};

    struct Accept;
    impl PolicyEngine for Accept {
        fn evaluate(&self, _: &crate::model::System, _: &PolicyRequest<'_>) -> Decision {
            Decision::Deny {
                reason: "test".into(),
            }
        }
        fn validate_change(&self, _: &Path, _: &str, content: Option<&[u8]>) -> Result<(), String> {
            match content {
                Some(c) if c.starts_with(b"bad") => Err("syntax error".into()),
                _ => Ok(()),
            }
        }
    }

    fn call(dir: &Path, service: &str, arg: &str, payload: &[u8]) -> (i32, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(
            &Accept,
            dir,
            service,
            arg,
            &mut &payload[..],
            &mut out,
            &mut err,
        );
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn replace_get_remove_with_tokens() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("include")).unwrap();
        let p = d.path();
        assert_eq!(
            call(p, "policy.Replace", "50-x", b"new\nq.S * a b allow\n").0,
            0
        );
        let (code, _, err) = call(p, "policy.Replace", "50-x", b"new\nx\n");
        assert_eq!(
            (code, err.split(' ').next().unwrap()),
            (1, "PolicyAdminTokenException")
        );
        let (code, out, _) = call(p, "policy.Get", "50-x", b"");
        assert_eq!(code, 0);
        let (token, content) = out.split_once('\n').unwrap();
        assert_eq!(content, "q.S * a b allow\n");
        assert_eq!(token, token_of(content.as_bytes()));
        let (code, _, err) = call(
            p,
            "policy.Replace",
            "50-x",
            format!("{token}\nbad\n").as_bytes(),
        );
        assert_eq!(
            (code, err.split(' ').next().unwrap()),
            (1, "PolicyAdminSyntaxException")
        );
        assert_eq!(call(p, "policy.List", "", b"").1, "50-x\n");
        assert_eq!(call(p, "policy.GetFiles", "q.S", b"").1, "50-x\n");
        assert_eq!(call(p, "policy.GetFiles", "other", b"").1, "");
        assert_eq!(call(p, "policy.Remove", "50-x", b"sha256:00").0, 1);
        assert_eq!(call(p, "policy.Remove", "50-x", token.as_bytes()).0, 0);
        assert_eq!(call(p, "policy.List", "", b"").1, "");
        let (code, _, err) = call(p, "policy.Get", "a.b", b"");
        assert_eq!(
            (code, err.split(' ').next().unwrap()),
            (1, "PolicyAdminInvalidFileNameException")
        );
        let (code, _, err) = call(p, "policy.Get", "a/b", b"");
        assert_eq!(
            (code, err.split(' ').next().unwrap()),
            (1, "PolicyAdminProtocolException")
        );
        assert_eq!(call(p, "policy.Replace", "x", b"no newline").0, 1);
        assert_eq!(call(p, "policy.Replace", "x", b"weird\nx").0, 1);
        assert_eq!(
            call(p, "policy.include.Replace", "inc", b"any\nq.S * a b deny\n").0,
            0
        );
        assert_eq!(call(p, "policy.include.List", "", b"").1, "inc\n");
        // GetFiles follows includes, keeps load order, names a file once
        assert_eq!(
            call(
                p,
                "policy.Replace",
                "40-y",
                b"new\nq.T * a b deny\n!include include/inc\n* * a b deny\n"
            )
            .0,
            0
        );
        assert_eq!(call(p, "policy.GetFiles", "q.S", b"").1, "inc\n40-y\n");
        assert_eq!(call(p, "policy.GetFiles", "q.U", b"").1, "40-y\n");
        let (code, _, err) = call(p, "policy.GetFiles", "", b"");
        assert_eq!(
            (code, err.as_str()),
            (1, "PolicyAdminException Service cannot be empty.")
        );
        assert_eq!(call(p, "policy.GetFiles", "a+b", b"").0, 1);
    }
}
