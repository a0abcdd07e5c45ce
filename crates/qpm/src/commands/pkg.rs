//! Package commands: `qpm install|upgrade|remove|plan|list|status|verify|history`.
//! They are top-level commands (flattened into the root command).

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::ctx::{Ctx, Status};

#[derive(Debug, Subcommand)]
pub(crate) enum PkgCommand {
    /// List installed packages.
    List,
}

pub(crate) fn run(cmd: PkgCommand, _ctx: &Ctx) -> Result<Status> {
    match cmd {
        PkgCommand::List => bail!("not implemented yet"),
    }
}
