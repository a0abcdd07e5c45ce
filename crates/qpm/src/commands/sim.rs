//! `qpm sim start|stop|status|reset`: the simulated dom0's lifecycle.

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::ctx::{Ctx, Status};

#[derive(Debug, Subcommand)]
pub(crate) enum SimCommand {
    /// Start the simulator in the background (qpm also does this on demand).
    Start,
}

pub(crate) fn run(cmd: SimCommand, _ctx: &Ctx) -> Result<Status> {
    match cmd {
        SimCommand::Start => bail!("not implemented yet"),
    }
}
