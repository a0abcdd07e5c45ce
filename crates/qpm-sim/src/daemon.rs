//! `qpm-sim serve`: the simulator over a state directory (both sockets), or
//! a fresh in-memory simulator from a fixture on one qubesd socket.

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::api::AllowAll;
use crate::policy::{EngineFilter, PolicyEngine};
use crate::qubefs::QubeFiles;
use crate::router::Router;
use crate::server;
use crate::sim::{Shared, Sim};
use crate::store::StateDir;

/// Settings of one run (override `config.json`).
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Milliseconds added to each call.
    pub latency_ms: Option<u64>,
    /// `ask` responder.
    pub ask: Option<String>,
}

/// Holds the instance lock for the life of the process.
struct Lock(#[allow(dead_code)] fs::File);

fn take_lock(dir: &StateDir) -> Result<Lock> {
    let path = dir.run_dir().join("lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Lock(f)),
        Err(rustix::io::Errno::WOULDBLOCK) => {
            bail!("a simulator is already running on {}", dir.path().display())
        }
        Err(e) => Err(e).context("locking the state directory"),
    }
}

fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))
}

/// Runs the simulator on `dir` until a `shutdown` control command.
pub fn serve(dir: &StateDir, opts: &ServeOptions, engine: Arc<dyn PolicyEngine>) -> Result<()> {
    let sys = dir.open_or_init()?;
    let _lock = take_lock(dir)?;
    dir.clean_temporaries();
    let config = dir.config()?;
    let files = QubeFiles::new(dir.qubes_dir());
    files
        .reconcile(&sys)
        .context("reconciling qube directories")?;
    let exe = std::env::current_exe().context("locating the qpm-sim executable")?;
    let link = dir.bin_dir().join("qrexec-client-vm");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&exe, &link)
        .with_context(|| format!("creating {}", link.display()))?;
    let shared = Shared {
        sys,
        host: Box::new(files),
        clone_tokens: Default::default(),
        next_uuid: None,
        persist: Some(dir.persister()),
    };
    let filter = Arc::new(EngineFilter(SharedEngine(engine.clone())));
    let mut sim = Sim::new(shared, filter);
    sim.latency = Duration::from_millis(opts.latency_ms.unwrap_or(config.latency_ms));
    let sim = Arc::new(sim);
    let stop = Arc::new(AtomicBool::new(false));
    // The router listens first: whoever waits for the qubesd socket to
    // answer (tests, scripts) can then call through the router at once.
    let router_sock = bind(&dir.router_socket())?;
    let qubesd = bind(&dir.qubesd_socket())?;
    let router = Arc::new(Router {
        sim: sim.clone(),
        dir: dir.clone(),
        policy: engine,
        ask: opts.ask.clone().unwrap_or(config.ask),
        stop: stop.clone(),
        started: Instant::now(),
    });
    {
        let (sim, stop) = (sim, stop.clone());
        std::thread::Builder::new()
            .name("qubesd".into())
            .spawn(move || server::serve_qubesd(sim, qubesd, stop))?;
    }
    {
        let router = router;
        std::thread::Builder::new()
            .name("router".into())
            .spawn(move || router.serve(router_sock))?;
    }
    crate::store::atomic_write(
        &dir.pid_file(),
        format!("{}\n", std::process::id()).as_bytes(),
        0o644,
    )?;
    tracing::info!("simulator serving {}", dir.path().display());
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = fs::remove_file(dir.qubesd_socket());
    let _ = fs::remove_file(dir.router_socket());
    let _ = fs::remove_file(dir.pid_file());
    Ok(())
}

/// A fresh simulator from a fixture on one qubesd socket (no state
/// directory, no policy: this socket is dom0's).
pub fn serve_fixture(fixture: &Path, socket: &Path) -> Result<()> {
    let text =
        fs::read_to_string(fixture).with_context(|| format!("reading {}", fixture.display()))?;
    let sys = crate::model::fixture::from_fixture(&text)
        .with_context(|| fixture.display().to_string())?;
    let shared = Shared {
        sys,
        host: Box::new(crate::api::NoHost),
        clone_tokens: Default::default(),
        next_uuid: None,
        persist: None,
    };
    let sim = Arc::new(Sim::new(shared, Arc::new(AllowAll)));
    let listener = bind(socket)?;
    server::serve_qubesd(sim, listener, Arc::new(AtomicBool::new(false)));
    Ok(())
}

/// A policy engine shared between the router and the Admin API filter.
pub struct SharedEngine(pub Arc<dyn PolicyEngine>);

impl PolicyEngine for SharedEngine {
    fn evaluate(
        &self,
        sys: &crate::model::System,
        req: &crate::policy::PolicyRequest<'_>,
    ) -> crate::policy::Decision {
        self.0.evaluate(sys, req)
    }
    fn validate_change(&self, dir: &Path, key: &str, content: Option<&[u8]>) -> Result<(), String> {
        self.0.validate_change(dir, key, content)
    }
}
