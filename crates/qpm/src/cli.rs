//! The command line: global flags and the command tree. Each command group
//! owns its own clap types in `commands/<group>.rs`; this file only wires
//! them together.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::commands;

/// qpm installs multi-qube applications as one unit and syncs configuration
/// into qubes, from a management qube, through the Qubes Admin API.
///
/// Without a Qubes system around it, qpm talks to a simulated dom0 that it
/// starts on demand (see `qpm sim`), so every command can be tried anywhere.
#[derive(Debug, Parser)]
#[command(name = "qpm", version, propagate_version = true, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every command takes.
#[derive(Debug, Clone, Args)]
pub(crate) struct GlobalArgs {
    /// Print the result as one JSON document on stdout (read commands and
    /// summaries of changing commands).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Say more on stderr (repeat for more detail). `QPM_LOG` takes a filter.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Only print errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// How to reach dom0. `auto` picks the qubesd socket in dom0, qrexec in a
    /// qube and the simulator anywhere else.
    #[arg(long, global = true, value_enum, default_value_t = TransportKind::Auto, env = "QPM_TRANSPORT")]
    pub(crate) transport: TransportKind,
    /// Simulator state directory (default: a per-user directory).
    #[arg(long = "sim", global = true, env = "QPM_SIM", value_name = "DIR")]
    pub(crate) sim_dir: Option<PathBuf>,
}

/// How qpm reaches the Admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TransportKind {
    /// Detect: dom0 socket, qrexec-client-vm, or the simulator.
    Auto,
    /// `qrexec-client-vm DEST METHOD+ARG` (inside a management qube).
    Qrexec,
    /// The qubesd unix socket (in dom0).
    Socket,
    /// The simulated dom0.
    Sim,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    #[command(flatten)]
    Pkg(commands::pkg::PkgCommand),
    #[command(flatten)]
    RepoTop(commands::repo::RepoTopCommand),
    /// Push configuration from the config qube into other qubes.
    #[command(subcommand)]
    Sync(commands::sync::SyncCommand),
    /// Check, evaluate and explain qrexec policy.
    #[command(subcommand)]
    Policy(commands::policy::PolicyCommand),
    /// Control the simulated dom0 used when qpm runs outside Qubes OS.
    #[command(subcommand)]
    Sim(commands::sim::SimCommand),
    /// Generate the man page or shell completions.
    #[command(hide = true)]
    Generate(commands::generate::GenerateArgs),
}
