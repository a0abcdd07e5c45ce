//! The command line: global flags and the command tree. Each command group
//! owns its own clap types in `commands/<group>.rs`; this file only wires
//! them together.

use std::ffi::OsString;
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

impl Cli {
    /// Parses the process arguments. `qpm sync ...` (a push is meant to be
    /// quick when nothing changed) is first parsed against the sync
    /// commands alone, without building the rest of the command tree; help,
    /// version and every error come from the whole tree, so they read the
    /// same either way.
    pub(crate) fn from_args() -> Self {
        let args: Vec<OsString> = std::env::args_os().collect();
        if args.get(1).is_some_and(|a| a == "sync")
            && let Ok(c) = SyncCli::try_parse_from(&args)
        {
            let SyncOnly::Sync(command) = c.command;
            return Self {
                global: c.global,
                command: Command::Sync(command),
            };
        }
        Self::parse_from(args)
    }
}

/// The `sync` branch of [`Cli`] alone (see [`Cli::from_args`]).
#[derive(Debug, Parser)]
#[command(name = "qpm")]
struct SyncCli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: SyncOnly,
}

#[derive(Debug, Subcommand)]
enum SyncOnly {
    #[command(subcommand)]
    Sync(commands::sync::SyncCommand),
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_sync_parser_is_well_formed() {
        SyncCli::command().debug_assert();
    }

    #[test]
    fn sync_commands_parse_alike_alone_and_in_the_whole_tree() {
        for args in [
            "qpm sync push",
            "qpm sync push -q q1 q2",
            "qpm sync push --repo /r --state /s --dry-run work",
            "qpm sync -v push --json --transport sim q",
            "qpm sync plan --repo ~/c",
            "qpm sync status q",
            "qpm sync log",
            "qpm sync capture work ~/.gitconfig --yes",
        ] {
            let argv: Vec<&str> = args.split(' ').collect();
            let alone = SyncCli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{args}: {e}"));
            let whole = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{args}: {e}"));
            let SyncOnly::Sync(cmd) = alone.command;
            let Command::Sync(whole_cmd) = whole.command else {
                panic!("{args}: not a sync command in the whole tree");
            };
            assert_eq!(
                format!("{:?} {cmd:?}", alone.global),
                format!("{:?} {whole_cmd:?}", whole.global),
                "{args}"
            );
        }
    }

    #[test]
    fn help_version_and_errors_are_left_to_the_whole_tree() {
        for args in [
            "qpm sync --help",
            "qpm sync push --help",
            "qpm sync --version",
            "qpm sync push --bogus",
            "qpm sync push -q -v",
            "qpm sync",
        ] {
            let argv: Vec<&str> = args.split(' ').collect();
            assert!(SyncCli::try_parse_from(&argv).is_err(), "{args}");
        }
    }
}
