#![forbid(unsafe_code)]
//! `qpm-agent`: the qrexec service that receives configuration in a target
//! qube (`qpm.SyncConfig`), and the commands its user runs to review, roll
//! back and inspect what it received.
//!
//! The stream on stdin is hostile: the caller only ever gets a fixed,
//! minimal reply; details go to the agent's local log in its state
//! directory. Installed as `/etc/qubes-rpc/qpm.SyncConfig` (a wrapper
//! running `qpm-agent serve --root /`).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use qpm_sync::config::AgentConfig;
use qpm_sync::proto::Code;
use qpm_sync::receiver::{Agent, AgentOptions};

/// Receives configuration pushed by the config qube, with review and consent.
#[derive(Debug, Parser)]
#[command(name = "qpm-agent", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Args)]
struct Common {
    /// Filesystem root that system paths are relative to (`/` in a qube).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// State directory (default: ~/.local/state/qpm-agent, or
    /// /rw/qpm-agent as root, on the private volume).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Configuration file (default: /etc/qpm-agent/config.toml if present).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve one qpm.SyncConfig call: the stream on stdin, replies on stdout.
    /// Exit 0 when applied, unchanged or queued; 1 when refused or declined.
    Serve(Common),
    /// Show pending syncs with their diff and ask whether to apply each.
    Review {
        #[command(flatten)]
        common: Common,
        /// Only this sync.
        id: Option<String>,
        /// List pending syncs without asking.
        #[arg(long)]
        list: bool,
    },
    /// Restore the files a sync replaced (default: the last applied one).
    Rollback {
        #[command(flatten)]
        common: Common,
        /// Sync id (see `qpm-agent status`).
        id: Option<String>,
    },
    /// What the agent manages, what is pending, and the history.
    Status {
        #[command(flatten)]
        common: Common,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
}

fn open(c: &Common) -> Result<Agent> {
    let config_path = c.config.clone().or_else(|| {
        let p = PathBuf::from("/etc/qpm-agent/config.toml");
        p.exists().then_some(p)
    });
    let config = match &config_path {
        Some(p) => AgentConfig::load(p)?,
        None => AgentConfig::default(),
    };
    let mut protected: Vec<PathBuf> = config_path.iter().cloned().collect();
    if let Ok(exe) = std::env::current_exe() {
        protected.push(exe);
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let opts = AgentOptions {
        root: c.root.clone(),
        state: c
            .state
            .clone()
            .unwrap_or_else(qpm_sync::receiver::default_state_dir),
        config,
        protected,
        caller: env("QREXEC_REMOTE_DOMAIN"),
        display: env("DISPLAY"),
        crash_at: env("QPM_AGENT_CRASH_AT").and_then(|v| v.parse().ok()),
        free_space: env("QPM_AGENT_TEST_FREE_SPACE").and_then(|v| v.parse().ok()),
    };
    Agent::open(opts).context("opening the agent's root and state")
}

fn prompt(question: &str) -> Result<bool> {
    let mut err = std::io::stderr();
    write!(err, "{question} [y/N] ")?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(c) => {
            let agent = match open(&c) {
                Ok(a) => a,
                Err(e) => {
                    // Fixed reply to the caller; details on stderr (the qube's log).
                    eprintln!("qpm-agent: {e:#}");
                    let o = qpm_sync::proto::Outcome {
                        code: Code::Failed,
                        written: 0,
                        deleted: 0,
                        conflicts: 0,
                        message: "agent unavailable".into(),
                    };
                    let mut out = std::io::stdout().lock();
                    let _ = qpm_sync::proto::write_frame(
                        &mut out,
                        qpm_sync::proto::frame::RESULT,
                        &o.encode(),
                    );
                    let _ = out.flush();
                    return Ok(ExitCode::from(2));
                }
            };
            let stdin = std::io::stdin();
            let mut input = std::io::BufReader::with_capacity(256 * 1024, stdin.lock());
            let mut output = std::io::BufWriter::new(std::io::stdout().lock());
            let o = agent.serve(&mut input, &mut output)?;
            output.flush()?;
            drop(output);
            // The reply is out and nothing is left to write: the process
            // ends here rather than freeing the agent's memory piece by
            // piece first (the caller waits for this exit).
            std::process::exit(match o.code {
                Code::Applied | Code::Unchanged | Code::Queued => 0,
                Code::Declined | Code::Refused => 1,
                Code::Failed => 2,
            })
        }
        Command::Review { common, id, list } => {
            let agent = open(&common)?;
            let plans = match id {
                Some(i) => vec![agent.plan(&i)?],
                None => agent.pending()?,
            };
            if plans.is_empty() {
                eprintln!("nothing to review");
                return Ok(ExitCode::SUCCESS);
            }
            let mut out = std::io::stdout().lock();
            let mut declined = false;
            for p in plans {
                if list {
                    writeln!(
                        out,
                        "{}\t{}\t{} change(s)",
                        p.id,
                        qpm_sync::diff::escape_line(&p.source),
                        p.ops.len()
                    )?;
                    continue;
                }
                write!(out, "{}", agent.review_text(&p)?)?;
                out.flush()?;
                if prompt(&format!(
                    "Apply sync {} from {}?",
                    p.id,
                    qpm_sync::diff::escape_line(&p.source)
                ))? {
                    match agent.apply(&p.id) {
                        Ok(()) => eprintln!("applied {}", p.id),
                        Err(e) => {
                            eprintln!("error: not applied: {e}");
                            declined = true;
                        }
                    }
                } else {
                    agent.discard(&p.id)?;
                    eprintln!("discarded {}", p.id);
                    declined = true;
                }
            }
            Ok(if declined {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Rollback { common, id } => {
            let agent = open(&common)?;
            let rid = agent.rollback(id.as_deref())?;
            eprintln!("rolled back ({rid})");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { common, json } => {
            let agent = open(&common)?;
            let s = agent.status()?;
            let hist = agent.history()?;
            let pending: Vec<_> = agent
                .pending()?
                .into_iter()
                .map(
                    |p| serde_json::json!({"id": p.id, "source": p.source, "changes": p.ops.len()}),
                )
                .collect();
            let mut out = std::io::stdout().lock();
            if json {
                let doc = serde_json::json!({"version": 1, "status": s, "pending": pending, "history": hist});
                writeln!(out, "{doc}")?;
            } else {
                writeln!(out, "managed files: {}", s.managed)?;
                writeln!(
                    out,
                    "last sync:     {}",
                    if s.last_sync.is_empty() {
                        "none"
                    } else {
                        &s.last_sync
                    }
                )?;
                writeln!(out, "pending:       {}", s.pending)?;
                for p in &pending {
                    writeln!(
                        out,
                        "  {} from {} ({} changes)",
                        p["id"].as_str().unwrap_or(""),
                        qpm_sync::diff::escape_line(p["source"].as_str().unwrap_or("")),
                        p["changes"]
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QPM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    match run(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
