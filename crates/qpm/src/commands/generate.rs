//! `qpm generate man|completions SHELL`: build artefacts from the clap tree.

use std::io::Write;

use anyhow::Result;
use clap::{Args, CommandFactory, Subcommand};
use clap_complete::Shell;

use crate::cli::Cli;
use crate::ctx::Status;

#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Print the man page (roff) on stdout.
    Man,
    /// Print a completion script for SHELL on stdout.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: Shell,
    },
}

pub(crate) fn run(args: &GenerateArgs) -> Result<Status> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    match args.what {
        What::Man => clap_mangen::Man::new(cmd).render(&mut out)?,
        What::Completions { shell } => clap_complete::generate(shell, &mut cmd, "qpm", &mut out),
    }
    out.flush()?;
    Ok(Status::Success)
}
