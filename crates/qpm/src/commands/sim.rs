//! `qpm sim start|stop|status|reset|qubes`: the simulated dom0's lifecycle.
//!
//! Every other command starts the simulator by itself when it needs dom0
//! and none runs; these commands manage it explicitly.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use qpm_admin::transport::Simulator;

use crate::connect::{self, StartOptions};
use crate::ctx::{Ctx, Status};

#[derive(Debug, Subcommand)]
pub(crate) enum SimCommand {
    /// Start the simulator in the background (qpm also does this on demand).
    Start {
        /// Milliseconds added to every call (overlapping for concurrent calls).
        #[arg(long)]
        latency_ms: Option<u64>,
        /// How qrexec `ask` is answered: `yes`, `no`, or a shell command that
        /// prints the chosen target (`QPM_ASK_TARGETS` lists the choices).
        #[arg(long)]
        ask: Option<String>,
    },
    /// Stop the simulator (its state stays).
    Stop,
    /// Show whether the simulator runs, and its state directory.
    Status,
    /// Stop the simulator and start over from the default machine.
    Reset {
        /// Required: the whole state directory is replaced.
        #[arg(long)]
        yes: bool,
    },
    /// List the qubes the host's qube sees through the Admin API.
    Qubes,
}

pub(crate) fn run(cmd: SimCommand, ctx: &Ctx) -> Result<Status> {
    let dir = connect::sim_dir(ctx)?;
    match cmd {
        SimCommand::Start { latency_ms, ask } => {
            let started = connect::ensure_sim(&dir, &StartOptions { latency_ms, ask })?;
            if ctx.json {
                println!(
                    "{}",
                    serde_json::json!({"version": 1, "started": started, "state_dir": dir})
                );
            } else if !ctx.quiet {
                let what = if started {
                    "started"
                } else {
                    "already running"
                };
                eprintln!("simulator {what} ({})", dir.display());
            }
            Ok(Status::Success)
        }
        SimCommand::Stop => {
            let stopped = stop(&dir)?;
            if ctx.json {
                println!("{}", serde_json::json!({"version": 1, "stopped": stopped}));
            } else if !ctx.quiet {
                eprintln!(
                    "{}",
                    if stopped {
                        "simulator stopped"
                    } else {
                        "simulator was not running"
                    }
                );
            }
            Ok(Status::Success)
        }
        SimCommand::Status => status(ctx, &dir),
        SimCommand::Reset { yes } => {
            if !yes {
                bail!(
                    "this replaces everything in {}; run again with --yes",
                    dir.display()
                );
            }
            reset(ctx, &dir)?;
            Ok(Status::Success)
        }
        SimCommand::Qubes => {
            let client = connect::admin(ctx)?;
            let qubes = client.list_qubes().context("listing qubes")?;
            if ctx.json {
                let list: Vec<_> = qubes
                    .iter()
                    .map(|q| serde_json::json!({"name": q.name, "class": q.class, "state": q.state, "uuid": q.uuid}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"version": 1, "transport": client.describe(), "qubes": list})
                );
            } else {
                let mut out = std::io::stdout().lock();
                for q in &qubes {
                    let (n, c) = (
                        q.name.escape_debug().to_string(),
                        q.class.escape_debug().to_string(),
                    );
                    writeln!(out, "{n:<31} {c:<13} {}", q.state.escape_debug())?;
                }
            }
            Ok(Status::Success)
        }
    }
}

fn stop(dir: &Path) -> Result<bool> {
    if !connect::sim_running(dir) {
        return Ok(false);
    }
    let answer = Simulator::control(&connect::router_socket(dir), "shutdown")
        .context("asking the simulator to stop")?;
    if answer.trim() != "ok" {
        bail!("the simulator refused to stop: {}", answer.trim());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.join("run/qpm-sim.pid").exists() || dir.join("run/qrexec.sock").exists() {
        if Instant::now() > deadline {
            bail!("the simulator did not stop within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // the instance lock is released when the process exits
    std::thread::sleep(Duration::from_millis(50));
    Ok(true)
}

fn status(ctx: &Ctx, dir: &Path) -> Result<Status> {
    let answer = Simulator::control(&connect::router_socket(dir), "status");
    match answer {
        Ok(text) => {
            let v: serde_json::Value =
                serde_json::from_str(text.trim()).context("parsing the simulator's status")?;
            if ctx.json {
                println!(
                    "{}",
                    serde_json::json!({"version": 1, "running": true, "state_dir": dir, "status": v})
                );
            } else {
                println!(
                    "running (pid {}), {} qubes ({} running), state in {}",
                    v["pid"],
                    v["qubes"],
                    v["running"],
                    dir.display()
                );
            }
            Ok(Status::Success)
        }
        Err(_) => {
            if ctx.json {
                println!(
                    "{}",
                    serde_json::json!({"version": 1, "running": false, "state_dir": dir})
                );
            } else {
                println!("not running (state in {})", dir.display());
            }
            Ok(Status::Failure)
        }
    }
}

fn reset(ctx: &Ctx, dir: &Path) -> Result<()> {
    stop(dir)?;
    if dir.exists() {
        let looks_like_sim = dir.join("state.json").exists()
            || std::fs::read_dir(dir)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
        if !looks_like_sim {
            bail!(
                "{} does not look like a simulator state directory; not touching it",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let bin = connect::sim_binary()?;
    let out = Command::new(&bin)
        .arg("--sim")
        .arg(dir)
        .arg("init")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} init failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if ctx.json {
        println!(
            "{}",
            serde_json::json!({"version": 1, "reset": true, "state_dir": dir})
        );
    } else if !ctx.quiet {
        eprintln!("simulator reset to the default machine ({})", dir.display());
    }
    Ok(())
}
