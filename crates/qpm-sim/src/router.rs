//! The qrexec router: calls from simulated qubes (and from the host acting
//! as a qube) to dom0 and to other qubes, decided by policy, run with the
//! caller's own standard streams.
//!
//! A client sends one [`RouterRequest`] with its stdin, stdout and stderr
//! attached (see [`crate::fdpass`]). The router:
//! 1. checks the names (service `[A-Za-z0-9._-]`, argument
//!    `[A-Za-z0-9._+-]`, at most 65000 bytes, as qrexec);
//! 2. asks policy (source, requested target, service, `+argument`); `ask`
//!    goes to the configured responder; calls from dom0 skip policy, as in
//!    Qubes;
//! 3. runs the call: `admin.*` to dom0 goes to the Admin API with the
//!    caller as source and the requested target as destination (the
//!    descriptor qrexec-daemon builds); `policy.*` to dom0 runs the policy
//!    admin services; other dom0 services are executables in
//!    `<state>/dom0/rpc`; a qube target is started if needed and the service
//!    found in its root (`/usr/local/etc/qubes-rpc/S+A`, `/etc/qubes-rpc/S+A`,
//!    `/usr/local/etc/qubes-rpc/S`, `/etc/qubes-rpc/S`) runs with the
//!    environment a real service gets; `@dispvm:X` creates a disposable,
//!    runs the call in it and removes it;
//! 4. answers with the exit status: the service's, or 126 (refused), 127
//!    (no such service), 125 (cannot execute).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use qpm_wire::router::{MAX_ROUTER_REQUEST_LEN, RouterRequest, RouterStatus};
use qpm_wire::{MAX_REQUEST_LEN, Reply};

use crate::api::{self, Call, Response};
use crate::model::{ApiError, VmClass};
use crate::policy::{Decision, PolicyEngine, PolicyRequest};
use crate::server::{ConnLimit, socket_alive, stream_events, stream_stats};
use crate::sim::Sim;
use crate::store::StateDir;
use crate::{dom0svc, fdpass};

/// Refused by policy (or malformed).
pub const EXIT_REFUSED: i32 = 126;
/// No such service in the target.
pub const EXIT_NO_SERVICE: i32 = 127;
/// The service could not be executed.
pub const EXIT_CANNOT_EXEC: i32 = 125;

/// Longest `service+argument` (qrexec's `MAX_SERVICE_NAME_LEN`).
pub const MAX_SERVICE_LEN: usize = 65000;

/// The router and what it needs.
pub struct Router {
    /// The simulator.
    pub sim: Arc<Sim>,
    /// Its state directory.
    pub dir: StateDir,
    /// Policy.
    pub policy: Arc<dyn PolicyEngine>,
    /// `ask` responder: `yes`, `no`, or a shell command.
    pub ask: String,
    /// Set by the `shutdown` control command.
    pub stop: Arc<AtomicBool>,
    /// When the simulator started.
    pub started: Instant,
}

fn valid_service(s: &str) -> bool {
    let (service, arg) = s.split_once('+').unwrap_or((s, ""));
    !service.is_empty()
        && s.len() <= MAX_SERVICE_LEN
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

/// Where a service lives in a qube's root (first existing entry wins).
pub fn find_service(root: &Path, service: &str, arg: &str) -> Option<PathBuf> {
    let full = format!("{service}+{arg}");
    let mut candidates = Vec::new();
    if full.len() <= 255 {
        candidates.push(root.join("usr/local/etc/qubes-rpc").join(&full));
        candidates.push(root.join("etc/qubes-rpc").join(&full));
    }
    candidates.push(root.join("usr/local/etc/qubes-rpc").join(service));
    candidates.push(root.join("etc/qubes-rpc").join(service));
    candidates
        .into_iter()
        .find(|p| std::fs::symlink_metadata(p).is_ok())
}

impl Router {
    /// Accepts connections until asked to stop.
    pub fn serve(self: Arc<Self>, listener: UnixListener) {
        let limit = Arc::new(ConnLimit::default());
        for conn in listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = conn else { continue };
            let me = self.clone();
            let limit = limit.clone();
            let spawned = std::thread::Builder::new()
                .name("router-conn".into())
                .spawn(move || {
                    let Some(_slot) = limit.acquire() else { return };
                    me.connection(stream);
                });
            if let Err(e) = spawned {
                tracing::error!("cannot spawn a router thread: {e}");
            }
        }
    }

    fn connection(&self, mut stream: UnixStream) {
        let Ok((body, fds)) =
            fdpass::recv_with_fds(&mut stream, MAX_ROUTER_REQUEST_LEN, Duration::from_secs(30))
        else {
            return;
        };
        let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
        match RouterRequest::decode(&body) {
            Ok(RouterRequest::Control(cmd)) => {
                let answer = self.control(&cmd);
                let _ = stream.write_all(answer.as_bytes());
            }
            Ok(RouterRequest::Call {
                source,
                target,
                service_and_arg,
            }) => {
                let mut fds = fds.into_iter();
                let (Some(i), Some(o), Some(e)) = (fds.next(), fds.next(), fds.next()) else {
                    let _ = stream.write_all(&RouterStatus(EXIT_REFUSED).encode());
                    return;
                };
                let code = self.call(&source, &target, &service_and_arg, [i, o, e], &stream);
                let _ = stream.write_all(&RouterStatus(code).encode());
            }
            Err(e) => tracing::warn!("bad router request: {e}"),
        }
    }

    fn control(&self, cmd: &str) -> String {
        let mut words = cmd.split_whitespace();
        match (words.next(), words.next()) {
            (Some("ping"), None) => "ok\n".into(),
            (Some("status"), None) => {
                let guard = self.sim.lock();
                let running = guard.sys.qubes.iter().filter(|q| q.is_active()).count();
                format!(
                    "{}\n",
                    serde_json::json!({
                        "pid": std::process::id(),
                        "state_dir": self.dir.path(),
                        "qubes": guard.sys.qubes.len(),
                        "running": running,
                        "uptime_s": self.started.elapsed().as_secs(),
                        "subscribers": self.sim.subscriber_count(),
                    })
                )
            }
            (Some("restart"), Some(name)) => {
                let r = self.sim.with_context(|ctx, ev| {
                    api::stop_qube(ctx, name, ev)?;
                    api::start_qube(ctx, name, ev)
                });
                match r {
                    Ok(()) => "ok\n".into(),
                    Err(e) => format!("error {e}\n"),
                }
            }
            (Some("stop-qube"), Some(name)) => match self
                .sim
                .with_context(|ctx, ev| api::stop_qube(ctx, name, ev))
            {
                Ok(()) => "ok\n".into(),
                Err(e) => format!("error {e}\n"),
            },
            (Some("shutdown"), None) => {
                self.stop.store(true, Ordering::SeqCst);
                // wake the accept loops
                let _ = UnixStream::connect(self.dir.router_socket());
                let _ = UnixStream::connect(self.dir.qubesd_socket());
                "ok\n".into()
            }
            _ => "error unknown command\n".into(),
        }
    }

    /// Decides and runs one call; the exit status.
    pub fn call(
        &self,
        source: &str,
        target: &str,
        service_and_arg: &str,
        fds: [OwnedFd; 3],
        conn: &UnixStream,
    ) -> i32 {
        let [stdin, stdout, stderr] = fds;
        let mut err = File::from(stderr);
        if !valid_service(service_and_arg) {
            let _ = writeln!(err, "Request refused");
            return EXIT_REFUSED;
        }
        let (service, arg) = service_and_arg
            .split_once('+')
            .unwrap_or((service_and_arg, ""));
        let source_is_dom0 = {
            let guard = self.sim.lock();
            match guard.sys.find(source) {
                Some(qi) => guard.sys.qube(qi).class == VmClass::AdminVM,
                None => {
                    drop(guard);
                    let _ = writeln!(err, "Request refused");
                    return EXIT_REFUSED;
                }
            }
        };
        if !self.sim.latency.is_zero() {
            std::thread::sleep(self.sim.latency);
        }
        let argument = format!("+{arg}");
        let decision = if source_is_dom0 {
            // dom0 calls skip policy; its Admin API calls go to qubesd
            // whatever qube they are about
            let t = match target {
                _ if service.starts_with("admin.") => "dom0".to_string(),
                "@adminvm" | "dom0" => "dom0".to_string(),
                t => t.to_string(),
            };
            Decision::Allow {
                target: t,
                user: None,
                autostart: true,
                requested_target: target.to_string(),
            }
        } else {
            let guard = self.sim.lock();
            let req = PolicyRequest {
                source,
                target,
                service,
                argument: &argument,
            };
            self.policy.evaluate(&guard.sys, &req)
        };
        let (target_eff, requested, autostart) = match decision {
            Decision::Allow {
                target,
                requested_target,
                autostart,
                ..
            } => (target, requested_target, autostart),
            Decision::Ask {
                targets,
                default_target,
                requested_target,
                autostart,
                ..
            } => match self.ask_user(source, service, arg, &targets, default_target.as_deref()) {
                Some(t) => (t, requested_target, autostart),
                None => {
                    let _ = writeln!(err, "Request refused");
                    return EXIT_REFUSED;
                }
            },
            Decision::Deny { reason } => {
                tracing::info!("refused {source} -> {target} {service_and_arg}: {reason}");
                let _ = writeln!(err, "Request refused");
                return EXIT_REFUSED;
            }
        };
        if target_eff == "dom0" || target_eff == "@adminvm" {
            return self.dom0_call(source, &requested, service, arg, stdin, stdout, err, conn);
        }
        if let Some(tpl) = target_eff.strip_prefix("@dispvm:") {
            let created = self
                .sim
                .with_context(|ctx, ev| api::new_disposable(ctx, source, tpl, ev));
            let name = match created {
                Ok(n) => n,
                Err(e) => {
                    let _ = writeln!(err, "cannot create a disposable: {e}");
                    return EXIT_REFUSED;
                }
            };
            let code = self.qube_call(source, &name, service, arg, true, stdin, stdout, err, conn);
            let _ = self
                .sim
                .with_context(|ctx, ev| api::stop_qube(ctx, &name, ev));
            return code;
        }
        self.qube_call(
            source,
            &target_eff,
            service,
            arg,
            autostart,
            stdin,
            stdout,
            err,
            conn,
        )
    }

    fn ask_user(
        &self,
        source: &str,
        service: &str,
        arg: &str,
        targets: &[String],
        default: Option<&str>,
    ) -> Option<String> {
        let pick = |t: &str| targets.iter().any(|x| x == t).then(|| t.to_string());
        match self.ask.as_str() {
            "no" | "" => None,
            "yes" => default.and_then(pick).or_else(|| targets.first().cloned()),
            cmd => {
                let out = Command::new("/bin/sh")
                    .arg("-c")
                    .arg(cmd)
                    .env("QPM_ASK_SOURCE", source)
                    .env("QPM_ASK_SERVICE", service)
                    .env("QPM_ASK_ARGUMENT", arg)
                    .env("QPM_ASK_TARGETS", targets.join(" "))
                    .env("QPM_ASK_DEFAULT", default.unwrap_or(""))
                    .stdin(Stdio::null())
                    .stderr(Stdio::inherit())
                    .output()
                    .ok()?;
                if !out.status.success() {
                    return None;
                }
                let text = String::from_utf8_lossy(&out.stdout);
                let first = text.lines().next().unwrap_or("").trim();
                if first.is_empty() {
                    default.and_then(pick)
                } else {
                    pick(first)
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dom0_call(
        &self,
        source: &str,
        requested: &str,
        service: &str,
        arg: &str,
        stdin: OwnedFd,
        stdout: OwnedFd,
        mut err: File,
        conn: &UnixStream,
    ) -> i32 {
        let mut out = File::from(stdout);
        if service.starts_with("admin.") {
            return self.admin_call(source, requested, service, arg, stdin, &mut out, conn);
        }
        let rpc = self.dir.dom0_rpc_dir();
        let full = format!("{service}+{arg}");
        let exe = [rpc.join(&full), rpc.join(service)]
            .into_iter()
            .find(|p| p.exists());
        if let Some(exe) = exe {
            let env = self.service_env(source, "dom0", service, arg, Some(requested));
            return spawn(&exe, arg, &env, &rpc, stdin, out, err, Some(conn));
        }
        if dom0svc::SERVICES.contains(&service) {
            let mut input = File::from(stdin);
            return dom0svc::run(
                &*self.policy,
                &self.dir.policy_dir(),
                service,
                arg,
                &mut input,
                &mut out,
                &mut err,
            );
        }
        let _ = writeln!(err, "Service not found: {service}");
        EXIT_NO_SERVICE
    }

    #[allow(clippy::too_many_arguments)]
    fn admin_call(
        &self,
        source: &str,
        requested: &str,
        method: &str,
        arg: &str,
        stdin: OwnedFd,
        out: &mut File,
        conn: &UnixStream,
    ) -> i32 {
        // the descriptor qrexec-daemon writes: a keyword target other than
        // @adminvm is a framing error for qubesd (no answer)
        let dest = match requested.strip_prefix('@') {
            Some("adminvm") => "dom0".to_string(),
            Some(_) => return 0,
            None => requested.to_string(),
        };
        let header_len = method.len() + arg.len() + source.len() + dest.len() + 9;
        let limit = MAX_REQUEST_LEN.saturating_sub(header_len);
        let Some(payload) = read_bounded(stdin, limit, Duration::from_secs(30)) else {
            return 0;
        };
        let handled = self.sim.call(Call {
            source: source.as_bytes(),
            method: method.as_bytes(),
            dest: dest.as_bytes(),
            arg: arg.as_bytes(),
            payload: &payload,
        });
        match handled.result {
            Ok(Response::Value(v)) => {
                let _ = out.write_all(&qpm_wire::encode_success(v.unwrap_or_default().as_bytes()));
            }
            Ok(Response::Events { source, only }) => {
                stream_events(&self.sim, &source, only.as_deref(), out, || {
                    socket_alive(conn)
                });
            }
            Ok(Response::Stats { source, only }) => {
                stream_stats(&self.sim, &source, only.as_deref(), out, || {
                    socket_alive(conn)
                });
            }
            Err(ApiError::Exception { class, message }) => {
                let _ = out.write_all(
                    &Reply::Exception {
                        class,
                        traceback: String::new(),
                        message,
                    }
                    .encode(),
                );
            }
            Err(ApiError::Abort(why)) => tracing::warn!("call aborted: {why}"),
        }
        0
    }

    fn service_env(
        &self,
        source: &str,
        target: &str,
        service: &str,
        arg: &str,
        requested: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut env = vec![
            ("QREXEC_REMOTE_DOMAIN".to_string(), source.to_string()),
            (
                "QREXEC_SERVICE_FULL_NAME".to_string(),
                format!("{service}+{arg}"),
            ),
            ("QREXEC_SERVICE_ARGUMENT".to_string(), arg.to_string()),
            ("QPM_SIM".to_string(), self.dir.path().display().to_string()),
            ("QPM_SIM_QUBE".to_string(), target.to_string()),
        ];
        match requested {
            Some(r) => {
                let (ty, name) = match r.strip_prefix('@') {
                    Some(k) => ("keyword", k),
                    None => ("name", r),
                };
                env.push(("QREXEC_REQUESTED_TARGET_TYPE".into(), ty.into()));
                if ty == "keyword" {
                    env.push(("QREXEC_REQUESTED_TARGET_KEYWORD".into(), name.into()));
                } else {
                    env.push(("QREXEC_REQUESTED_TARGET".into(), name.into()));
                }
                env.push((
                    "QPM_SIM_POLICY_DIR".into(),
                    self.dir.policy_dir().display().to_string(),
                ));
                env.push((
                    "QPM_SIM_QUBESD_SOCKET".into(),
                    self.dir.qubesd_socket().display().to_string(),
                ));
            }
            None => env.push(("QREXEC_REQUESTED_TARGET_TYPE".into(), String::new())),
        }
        env
    }

    #[allow(clippy::too_many_arguments)]
    fn qube_call(
        &self,
        source: &str,
        target: &str,
        service: &str,
        arg: &str,
        autostart: bool,
        stdin: OwnedFd,
        stdout: OwnedFd,
        mut err: File,
        conn: &UnixStream,
    ) -> i32 {
        let resolved = {
            let guard = self.sim.lock();
            let qi = if let Some(u) = target.strip_prefix("uuid:") {
                guard.sys.find_uuid(u)
            } else {
                guard.sys.find(target)
            };
            qi.map(|qi| {
                let q = guard.sys.qube(qi);
                (q.name.clone(), q.class, q.power)
            })
        };
        let Some((name, class, power)) = resolved else {
            let _ = writeln!(err, "Request refused");
            return EXIT_REFUSED;
        };
        if !class.is_qubesvm() {
            let _ = writeln!(err, "Request refused");
            return EXIT_REFUSED;
        }
        if power != crate::model::PowerState::Running {
            if !autostart || power != crate::model::PowerState::Halted {
                let _ = writeln!(err, "Request refused (target not running)");
                return EXIT_REFUSED;
            }
            if let Err(e) = self
                .sim
                .with_context(|ctx, ev| api::start_qube(ctx, &name, ev))
            {
                let _ = writeln!(err, "cannot start {name}: {e}");
                return EXIT_REFUSED;
            }
        }
        let root = self.dir.qubes_dir().join(&name).join("root");
        let Some(exe) = find_service(&root, service, arg) else {
            let _ = writeln!(err, "Service not found: {service}");
            return EXIT_NO_SERVICE;
        };
        let mut env = self.service_env(source, &name, service, arg, None);
        env.push(("QPM_SIM_ROOT".into(), root.display().to_string()));
        let home = root.join("home/user");
        env.push(("HOME".into(), home.display().to_string()));
        let cwd = if home.is_dir() { home } else { root };
        spawn(
            &exe,
            arg,
            &env,
            &cwd,
            stdin,
            File::from(stdout),
            err,
            Some(conn),
        )
    }
}

/// Waits until `child` exits or the caller's connection closes; in the
/// latter case kills the service (the caller is gone, as when qrexec's
/// client side disconnects).
fn kill_when_caller_leaves(child: &std::process::Child, conn: &UnixStream) {
    use rustix::event::{PollFd, PollFlags, poll};
    use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
    let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) else {
        return;
    };
    // the child is not reaped yet: its pid cannot be reused
    let Ok(pidfd) = pidfd_open(pid, PidfdFlags::empty()) else {
        return;
    };
    loop {
        let mut fds = [
            PollFd::new(&pidfd, PollFlags::IN),
            PollFd::new(conn, PollFlags::empty()),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        if !fds[0].revents().is_empty() {
            return;
        }
        let gone = fds[1].revents();
        if gone.contains(PollFlags::HUP) || gone.contains(PollFlags::ERR) {
            let _ = pidfd_send_signal(&pidfd, Signal::KILL);
            return;
        }
    }
}

/// Reads `fd` to EOF, at most `limit` bytes (more: `None`), within `timeout`.
fn read_bounded(fd: OwnedFd, limit: usize, timeout: Duration) -> Option<Vec<u8>> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let deadline = Instant::now() + timeout;
    let mut f = File::from(fd);
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let ts = Timespec {
            tv_sec: i64::try_from(left.as_secs()).ok()?,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&f, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return None,
        }
        match f.read(&mut chunk) {
            Ok(0) => return Some(out),
            Ok(n) => {
                if out.len() + n > limit {
                    return None;
                }
                out.extend_from_slice(chunk.get(..n)?);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Runs a service executable with the caller's streams; its exit status
/// (128+signal when killed).
#[allow(clippy::too_many_arguments)]
fn spawn(
    exe: &Path,
    arg: &str,
    env: &[(String, String)],
    cwd: &Path,
    stdin: OwnedFd,
    stdout: File,
    mut err: File,
    conn: Option<&UnixStream>,
) -> i32 {
    let mut cmd = Command::new(exe);
    if !arg.is_empty() {
        cmd.arg(arg);
    }
    // Nothing of the host's qrexec or qpm settings leaks into a qube: a
    // service sees only what the simulator sets for it.
    for (k, _) in std::env::vars_os() {
        let k_text = k.to_string_lossy();
        if k_text.starts_with("QREXEC") || k_text.starts_with("QPM_") {
            cmd.env_remove(k);
        }
    }
    let bin = env
        .iter()
        .find(|(k, _)| k == "QPM_SIM")
        .map(|(_, v)| PathBuf::from(v).join("bin"));
    if let Some(bin) = bin {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut parts = vec![bin];
        parts.extend(std::env::split_paths(&path));
        if let Ok(joined) = std::env::join_paths(parts) {
            cmd.env("PATH", joined);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Ok(err_for_child) = err.try_clone() else {
        return EXIT_CANNOT_EXEC;
    };
    cmd.current_dir(cwd)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(err_for_child));
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "cannot execute {}: {e}", exe.display());
            return EXIT_CANNOT_EXEC;
        }
    };
    drop(cmd);
    if let Some(conn) = conn {
        kill_when_caller_leaves(&child, conn);
    }
    match child.wait() {
        Ok(status) => status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(EXIT_CANNOT_EXEC),
        Err(_) => EXIT_CANNOT_EXEC,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        assert!(valid_service("qubes.VMShell"));
        assert!(valid_service("qubes.VMExec+ls+--l"));
        assert!(valid_service("admin.vm.List+"));
        assert!(!valid_service("+x"));
        assert!(!valid_service("a b"));
        assert!(!valid_service("a+b/c"));
        assert!(!valid_service(""));
    }

    #[test]
    fn lookup_order() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("etc/qubes-rpc")).unwrap();
        std::fs::create_dir_all(r.join("usr/local/etc/qubes-rpc")).unwrap();
        std::fs::write(r.join("etc/qubes-rpc/S"), "").unwrap();
        assert_eq!(find_service(r, "S", ""), Some(r.join("etc/qubes-rpc/S")));
        std::fs::write(r.join("usr/local/etc/qubes-rpc/S"), "").unwrap();
        assert_eq!(
            find_service(r, "S", ""),
            Some(r.join("usr/local/etc/qubes-rpc/S"))
        );
        std::fs::write(r.join("etc/qubes-rpc/S+a"), "").unwrap();
        assert_eq!(find_service(r, "S", "a"), Some(r.join("etc/qubes-rpc/S+a")));
        std::fs::write(r.join("etc/qubes-rpc/S+"), "").unwrap();
        assert_eq!(find_service(r, "S", ""), Some(r.join("etc/qubes-rpc/S+")));
        assert_eq!(find_service(r, "T", ""), None);
    }
}
