//! `qpm policy ...`: check, evaluate and explain qrexec policy.

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::ctx::{Ctx, Status};

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Check a policy directory or file for errors and lint findings.
    Check,
}

pub(crate) fn run(cmd: PolicyCommand, _ctx: &Ctx) -> Result<Status> {
    match cmd {
        PolicyCommand::Check => bail!("not implemented yet"),
    }
}
