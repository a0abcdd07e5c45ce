//! Reaching dom0: picks the Admin API transport (qubesd socket in dom0,
//! qrexec-client-vm in a qube, the simulator elsewhere) and starts the
//! simulator on demand.
//!
//! `auto` decides in this order:
//! 1. inside a simulated qube (`QPM_SIM_QUBE` set and a `qrexec-client-vm`
//!    on `PATH`): qrexec, exactly as in a real qube;
//! 2. dom0 (`/var/run/qubesd.sock` exists): the qubesd socket;
//! 3. a real qube (`qrexec-client-vm` installed and `/run/qubes` present):
//!    qrexec;
//! 4. anything else: the simulator in `--sim`/`QPM_SIM` (default
//!    `$XDG_STATE_HOME/qpm/sim` or `~/.local/state/qpm/sim`), started in the
//!    background if none runs, with the host acting as the qube named by
//!    `QPM_SIM_CALLER` or the simulator's `config.json` (`mgmt`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use qpm_admin::Client;
use qpm_admin::transport::{QrexecClientVm, QubesdSocket, ServiceConn, Simulator};

use crate::cli::TransportKind;
use crate::ctx::Ctx;

/// qubesd's socket in dom0.
const QUBESD_SOCKET: &str = "/var/run/qubesd.sock";
/// The qrexec client in a qube.
const QREXEC_CLIENT_VM: &str = "/usr/bin/qrexec-client-vm";

/// A transport, decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// qubesd's socket (dom0).
    Socket(PathBuf),
    /// `qrexec-client-vm` (a qube).
    Qrexec(PathBuf),
    /// The simulator in this state directory, calling as this qube.
    Sim {
        /// State directory.
        dir: PathBuf,
        /// The simulated qube the host acts as.
        caller: String,
    },
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn qrexec_program() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("QPM_QREXEC_CLIENT") {
        return Some(PathBuf::from(p));
    }
    on_path("qrexec-client-vm").or_else(|| {
        Path::new(QREXEC_CLIENT_VM)
            .is_file()
            .then(|| PathBuf::from(QREXEC_CLIENT_VM))
    })
}

/// The simulator state directory for these flags.
pub(crate) fn sim_dir(ctx: &Ctx) -> Result<PathBuf> {
    if let Some(d) = &ctx.global.sim_dir {
        return Ok(d.clone());
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("qpm/sim"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("HOME is not set; pass --sim DIR")?;
    Ok(PathBuf::from(home).join(".local/state/qpm/sim"))
}

/// The simulated qube the host acts as.
fn sim_caller(dir: &Path) -> String {
    if let Ok(c) = std::env::var("QPM_SIM_CALLER")
        && !c.is_empty()
    {
        return c;
    }
    std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("caller").and_then(|c| c.as_str()).map(str::to_string))
        .unwrap_or_else(|| "mgmt".into())
}

/// Decides the transport.
pub(crate) fn route(ctx: &Ctx) -> Result<Route> {
    let socket = || {
        std::env::var_os("QPM_QUBESD_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(QUBESD_SOCKET))
    };
    let sim = || -> Result<Route> {
        let dir = sim_dir(ctx)?;
        let caller = sim_caller(&dir);
        Ok(Route::Sim { dir, caller })
    };
    match ctx.global.transport {
        TransportKind::Socket => Ok(Route::Socket(socket())),
        TransportKind::Qrexec => Ok(Route::Qrexec(
            qrexec_program().context("qrexec-client-vm not found (set QPM_QREXEC_CLIENT)")?,
        )),
        TransportKind::Sim => sim(),
        TransportKind::Auto => {
            if std::env::var_os("QPM_SIM_QUBE").is_some()
                && let Some(p) = qrexec_program()
            {
                return Ok(Route::Qrexec(p));
            }
            let s = socket();
            if s.exists() {
                return Ok(Route::Socket(s));
            }
            if Path::new("/run/qubes").is_dir()
                && let Some(p) = qrexec_program()
            {
                return Ok(Route::Qrexec(p));
            }
            sim()
        }
    }
}

/// The `qpm-sim` executable: `QPM_SIM_BIN`, next to `qpm`, or on `PATH`.
pub(crate) fn sim_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("QPM_SIM_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let p = dir.join("qpm-sim");
        if p.is_file() {
            return Ok(p);
        }
    }
    on_path("qpm-sim").context(
        "the simulator `qpm-sim` was not found (install it next to qpm or set QPM_SIM_BIN)",
    )
}

/// The router socket of a state directory.
pub(crate) fn router_socket(dir: &Path) -> PathBuf {
    dir.join("run/qrexec.sock")
}

/// Whether a simulator answers on `dir`.
pub(crate) fn sim_running(dir: &Path) -> bool {
    Simulator::control(&router_socket(dir), "ping").is_ok_and(|a| a.trim() == "ok")
}

/// Options of a simulator started by qpm.
#[derive(Debug, Clone, Default)]
pub(crate) struct StartOptions {
    pub(crate) latency_ms: Option<u64>,
    pub(crate) ask: Option<String>,
}

/// Starts the simulator in the background unless one runs; waits until it
/// answers.
pub(crate) fn ensure_sim(dir: &Path, opts: &StartOptions) -> Result<bool> {
    if sim_running(dir) {
        return Ok(false);
    }
    let bin = sim_binary()?;
    let fresh = !dir.join("state.json").exists();
    std::fs::create_dir_all(dir.join("log"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let log_path = dir.join("log/qpm-sim.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--sim").arg(dir).arg("serve");
    if let Some(l) = opts.latency_ms {
        cmd.arg("--latency-ms").arg(l.to_string());
    }
    if let Some(a) = &opts.ask {
        cmd.arg("--ask").arg(a);
    }
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    tracing::info!(
        "started the simulator (pid {}) on {}",
        child.id(),
        dir.display()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if sim_running(dir) {
            bootstrap_dom0(dir, fresh)?;
            return Ok(true);
        }
        if let Ok(Some(status)) = child.try_wait() {
            if sim_running(dir) {
                bootstrap_dom0(dir, fresh)?;
                return Ok(true);
            }
            bail!(
                "the simulator exited ({status}); see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "the simulator did not answer within 20 s; see {}",
        log_path.display()
    )
}

/// A fresh simulated dom0 is set up the way a dom0 administrator sets up
/// Qubes for qpm: `qpm-dom0 init` gives the management qube its Admin API
/// subset and installs the policy gatekeeper. Without `qpm-dom0` (next to
/// `qpm-sim` or on `PATH`) the simulator keeps its own bootstrap policy.
fn bootstrap_dom0(dir: &Path, fresh: bool) -> Result<()> {
    if !fresh {
        return Ok(());
    }
    let next_to_sim = sim_binary()?.with_file_name("qpm-dom0");
    let Some(bin) = next_to_sim
        .is_file()
        .then_some(next_to_sim)
        .or_else(|| on_path("qpm-dom0"))
    else {
        tracing::warn!("qpm-dom0 not found: the simulated dom0 has no policy gatekeeper");
        return install_agent(dir);
    };
    let mgmt = sim_caller(dir);
    if mgmt == "dom0" {
        return install_agent(dir);
    }
    let out = Command::new(&bin)
        .arg("--sim")
        .arg(dir)
        .args(["init", "--mgmt", &mgmt, "--adopt"])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "qpm-dom0 init failed on the simulated dom0: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    tracing::info!("set up the simulated dom0 with `qpm-dom0 init --mgmt {mgmt}`");
    install_agent(dir)
}

/// The `qpm.SyncConfig` service of a simulated qube: `qpm-agent` on the
/// qube's root, configured by the qube's own `/rw/config/qpm-agent.toml`
/// or its template's `/etc/qpm-agent/config.toml` (defaults otherwise:
/// home files, applied only after `qpm-agent review`). Simulated qubes
/// have no display.
fn agent_service(agent: &Path) -> String {
    format!(
        "#!/bin/sh\n\
         unset DISPLAY\n\
         for c in \"$QPM_SIM_ROOT/rw/config/qpm-agent.toml\" \"$QPM_SIM_ROOT/etc/qpm-agent/config.toml\"; do\n\
         \x20 if [ -f \"$c\" ]; then set -- --config \"$c\"; break; fi\n\
         done\n\
         exec '{}' serve --root \"$QPM_SIM_ROOT\" --state \"$QPM_SIM_ROOT/home/user/.local/state/qpm-agent\" \"$@\"\n",
        agent.display()
    )
}

/// A fresh simulated dom0's templates get `qpm-agent` (next to `qpm-sim`
/// or on `PATH`) as their `qpm.SyncConfig` service, as installing the
/// agent's package in a template does on Qubes: packages' `[[files]]`
/// reach the qubes based on them.
fn install_agent(dir: &Path) -> Result<()> {
    let sim = sim_binary()?;
    let next_to_sim = sim.with_file_name("qpm-agent");
    let Some(agent) = next_to_sim
        .is_file()
        .then_some(next_to_sim)
        .or_else(|| on_path("qpm-agent"))
    else {
        tracing::warn!("qpm-agent not found: simulated qubes cannot receive files");
        return Ok(());
    };
    if agent.to_string_lossy().contains('\'') {
        bail!(
            "the path of qpm-agent contains a quote: {}",
            agent.display()
        );
    }
    let wrapper = dir.join("bin/qpm-agent-service");
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::write(&wrapper, agent_service(&agent))
        .with_context(|| format!("writing {}", wrapper.display()))?;
    let admin = Client::new(Simulator::new(router_socket(dir), "dom0"));
    for q in admin.list_qubes()? {
        if q.class != "TemplateVM" {
            continue;
        }
        let out = Command::new(&sim)
            .arg("--sim")
            .arg(dir)
            .args(["install-service", &q.name, "qpm.SyncConfig"])
            .arg(&wrapper)
            .output()
            .with_context(|| format!("running {}", sim.display()))?;
        if !out.status.success() {
            bail!(
                "installing qpm-agent in {}: {}",
                q.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    tracing::info!("installed qpm-agent as qpm.SyncConfig in the simulated templates");
    Ok(())
}

/// The Admin API client for these flags (starting the simulator if needed).
pub(crate) fn admin(ctx: &Ctx) -> Result<Client> {
    Ok(match route(ctx)? {
        Route::Socket(p) => Client::new(QubesdSocket::new(p)),
        Route::Qrexec(p) => Client::new(QrexecClientVm::new(p)),
        Route::Sim { dir, caller } => {
            ensure_sim(&dir, &StartOptions::default())?;
            Client::new(Simulator::new(router_socket(&dir), &caller))
        }
    })
}

/// The Admin API client wrapped so that every call is counted (reads,
/// writes); `QPM_TEST_CRASH_AFTER=N` aborts the process right after the
/// N-th mutating call (the crash tests).
pub(crate) fn admin_counted(ctx: &Ctx) -> Result<(Client, std::sync::Arc<qpm_pkg::calls::Counts>)> {
    use qpm_admin::transport::Transport;
    use std::sync::Arc;
    let inner: Arc<dyn Transport> = match route(ctx)? {
        Route::Socket(p) => Arc::new(QubesdSocket::new(p)),
        Route::Qrexec(p) => Arc::new(QrexecClientVm::new(p)),
        Route::Sim { dir, caller } => {
            ensure_sim(&dir, &StartOptions::default())?;
            Arc::new(Simulator::new(router_socket(&dir), &caller))
        }
    };
    let crash_after = std::env::var("QPM_TEST_CRASH_AFTER")
        .ok()
        .and_then(|v| v.parse().ok());
    let counting = qpm_pkg::calls::Counting::new(inner, crash_after);
    let counts = counting.counts();
    Ok((Client::new(counting), counts))
}

/// The name of the qube qpm runs in (the management qube): `QPM_MGMT`, the
/// simulator's caller, `dom0` on the qubesd socket, else the host name
/// (a qube's host name is its name).
pub(crate) fn mgmt_name(ctx: &Ctx) -> Result<String> {
    if let Ok(m) = std::env::var("QPM_MGMT")
        && !m.is_empty()
    {
        return Ok(m);
    }
    Ok(match route(ctx)? {
        Route::Socket(_) => "dom0".to_owned(),
        Route::Sim { caller, .. } => caller,
        Route::Qrexec(_) => {
            if let Ok(q) = std::env::var("QPM_SIM_QUBE")
                && !q.is_empty()
            {
                return Ok(q);
            }
            let h = std::fs::read_to_string("/etc/hostname").context(
                "reading /etc/hostname to learn the management qube's name (or set QPM_MGMT)",
            )?;
            h.trim().to_owned()
        }
    })
}

/// Opens a qrexec call to a non-Admin-API service (`qpm.SyncConfig`, ...)
/// on `dest`, through the same transport.
pub(crate) fn qrexec_call(ctx: &Ctx, dest: &str, service_and_arg: &str) -> Result<ServiceConn> {
    let client = admin(ctx)?;
    client.service(dest, service_and_arg).with_context(|| {
        format!(
            "calling {service_and_arg} on {dest} via {}",
            client.describe()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_from_config() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            sim_caller(d.path()),
            std::env::var("QPM_SIM_CALLER").unwrap_or_else(|_| "mgmt".into())
        );
        std::fs::write(d.path().join("config.json"), r#"{"caller": "work"}"#).unwrap();
        if std::env::var_os("QPM_SIM_CALLER").is_none() {
            assert_eq!(sim_caller(d.path()), "work");
        }
    }
}
