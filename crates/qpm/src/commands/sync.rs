//! `qpm sync ...`: push configuration from the config qube into qubes.

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::ctx::{Ctx, Status};

#[derive(Debug, Subcommand)]
pub(crate) enum SyncCommand {
    /// Show per qube what a push would change.
    Plan,
}

pub(crate) fn run(cmd: SyncCommand, _ctx: &Ctx) -> Result<Status> {
    match cmd {
        SyncCommand::Plan => bail!("not implemented yet"),
    }
}
