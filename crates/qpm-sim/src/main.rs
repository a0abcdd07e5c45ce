#![forbid(unsafe_code)]
//! `qpm-sim`: the simulated dom0.
//!
//! Invoked as `qrexec-client-vm` (through the symlink in `<state>/bin`), it
//! is the qrexec client of the simulated qube named by `QPM_SIM_QUBE`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use qpm_sim::store::StateDir;

/// The simulated dom0 of qpm: qubesd's Admin API and a qrexec router over a
/// state directory, so that qpm runs on any Linux machine.
#[derive(Debug, Parser)]
#[command(name = "qpm-sim", version, max_term_width = 100)]
struct Cli {
    /// State directory (default: `$QPM_SIM`, else a per-user directory).
    #[arg(long = "sim", global = true, env = "QPM_SIM", value_name = "DIR")]
    sim: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the simulator (foreground). With `--fixture` and `--socket`:
    /// a fresh in-memory simulator from a fixture, on one qubesd socket.
    Serve {
        /// Milliseconds added to every call (overlapping for concurrent calls).
        #[arg(long)]
        latency_ms: Option<u64>,
        /// How `ask` is answered: `yes`, `no`, or a shell command that prints
        /// the chosen target (see docs/simulator.md).
        #[arg(long)]
        ask: Option<String>,
        /// Fixture of the conformance schema (with `--socket`).
        #[arg(long, requires = "socket")]
        fixture: Option<PathBuf>,
        /// qubesd socket path (with `--fixture`).
        #[arg(long, requires = "fixture")]
        socket: Option<PathBuf>,
    },
    /// Create the default state without serving it.
    Init,
    /// Replay a conformance transcript through a fresh simulator's qubesd
    /// socket; prints one JSON answer per line.
    Conformance {
        /// Fixture (initial state).
        #[arg(long)]
        fixture: PathBuf,
        /// Transcript (JSON lines).
        cases: PathBuf,
    },
    /// Make a qrexec call as qube SRC (stdin/stdout/stderr are the service's).
    Call {
        /// The calling qube.
        #[arg(long = "from")]
        from: String,
        /// Target qube, `dom0`, `@adminvm`, `@dispvm:NAME`...
        target: String,
        /// `SERVICE[+ARGUMENT]`.
        service: String,
    },
    /// Shut a qube down and start it again (what persists, persists).
    Restart {
        /// The qube.
        qube: String,
    },
    /// Install an executable as a qrexec service of a qube (into its root's
    /// `/etc/qubes-rpc`, or with `--local` into `/usr/local/etc/qubes-rpc`,
    /// which persists in template-based qubes); for `dom0`, into
    /// `<state>/dom0/rpc`.
    InstallService {
        /// The qube (a template to give it to every qube based on it).
        qube: String,
        /// Service name (`NAME` or `NAME+ARG`).
        name: String,
        /// The executable to copy.
        executable: PathBuf,
        /// Install into the private `/usr/local`.
        #[arg(long)]
        local: bool,
    },
    /// Send a control command to the running simulator (`ping`, `status`,
    /// `shutdown`, `stop-qube NAME`).
    Ctl {
        /// The command words.
        #[arg(required = true)]
        words: Vec<String>,
    },
}

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().map(PathBuf::from);
    if argv0
        .as_ref()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "qrexec-client-vm")
    {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let code = qpm_sim::client::qrexec_client_vm(&args);
        return ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255));
    }
    let cli = Cli::parse();
    // a replay expects aborted calls: do not log them as warnings
    let default = if matches!(cli.command, Command::Conformance { .. }) {
        "error"
    } else {
        "warn"
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QPM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qpm-sim: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn state_dir(sim: Option<PathBuf>) -> Result<StateDir> {
    let dir = sim
        .or_else(qpm_sim::store::default_dir)
        .context("no state directory: set QPM_SIM or HOME, or pass --sim")?;
    Ok(StateDir::new(dir))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve {
            latency_ms,
            ask,
            fixture,
            socket,
        } => {
            if let (Some(f), Some(s)) = (fixture, socket) {
                qpm_sim::daemon::serve_fixture(&f, &s)?;
                return Ok(ExitCode::SUCCESS);
            }
            let dir = state_dir(cli.sim)?;
            let opts = qpm_sim::daemon::ServeOptions { latency_ms, ask };
            qpm_sim::daemon::serve(
                &dir,
                &opts,
                qpm_sim::policy::default_engine(&dir.policy_dir()),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init => {
            let dir = state_dir(cli.sim)?;
            dir.open_or_init()?;
            println!("{}", dir.path().display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Conformance { fixture, cases } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            qpm_sim::conformance::run(&fixture, &cases, &mut out).context("conformance replay")?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Call {
            from,
            target,
            service,
        } => {
            let dir = state_dir(cli.sim)?;
            let args = qpm_sim::client::QrexecArgs {
                target,
                service,
                prefix: None,
                local: Vec::new(),
            };
            let code = qpm_sim::client::run_call(&dir.router_socket(), &from, &args)
                .with_context(|| format!("calling through {}", dir.router_socket().display()))?;
            Ok(ExitCode::from(
                u8::try_from(code.clamp(0, 255)).unwrap_or(255),
            ))
        }
        Command::Restart { qube } => {
            let dir = state_dir(cli.sim)?;
            let answer = qpm_sim::client::control(&dir.router_socket(), &format!("restart {qube}"))
                .context("the simulator is not running")?;
            if answer.trim() != "ok" {
                bail!("{}", answer.trim());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::InstallService {
            qube,
            name,
            executable,
            local,
        } => {
            let dir = state_dir(cli.sim)?;
            let sys = dir.load()?;
            let Some(qi) = sys.find(&qube) else {
                bail!("no such qube: {qube:?}")
            };
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                bail!("invalid service name: {name:?}");
            }
            if sys.qube(qi).class == qpm_sim::model::VmClass::AdminVM {
                // dom0 services are executables in <state>/dom0/rpc
                let dst = dir.dom0_rpc_dir().join(&name);
                std::fs::create_dir_all(dir.dom0_rpc_dir())?;
                std::fs::copy(&executable, &dst).with_context(|| {
                    format!("copying {} to {}", executable.display(), dst.display())
                })?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))?;
                println!("{}", dst.display());
                return Ok(ExitCode::SUCCESS);
            }
            if !sys.qube(qi).class.is_qubesvm() {
                bail!("{qube:?} has no qrexec services");
            }
            let files = qpm_sim::qubefs::QubeFiles::new(dir.qubes_dir());
            let base = if local {
                files.private(&qube).join("usrlocal/etc/qubes-rpc")
            } else {
                files.root(&qube).join("etc/qubes-rpc")
            };
            std::fs::create_dir_all(&base)?;
            let dst = base.join(&name);
            std::fs::copy(&executable, &dst).with_context(|| {
                format!("copying {} to {}", executable.display(), dst.display())
            })?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))?;
            if local {
                // the live root gets it too when the qube is running
                let live = files.root(&qube).join("usr/local/etc/qubes-rpc");
                if live.is_dir() {
                    std::fs::copy(&executable, live.join(&name))?;
                }
            }
            println!("{}", dst.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Ctl { words } => {
            let dir = state_dir(cli.sim)?;
            let answer = qpm_sim::client::control(&dir.router_socket(), &words.join(" "))
                .context("the simulator is not running")?;
            print!("{answer}");
            Ok(if answer.starts_with("error") {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
