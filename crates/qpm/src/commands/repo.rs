//! Repository commands: `qpm repo ...`, `qpm key ...`, `qpm package build`,
//! `qpm update`, `qpm search`, `qpm info`. Top-level (flattened into the root).

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::ctx::{Ctx, Status};

#[derive(Debug, Subcommand)]
pub(crate) enum RepoTopCommand {
    /// Refresh repository indexes.
    Update,
}

pub(crate) fn run(cmd: RepoTopCommand, _ctx: &Ctx) -> Result<Status> {
    match cmd {
        RepoTopCommand::Update => bail!("not implemented yet"),
    }
}
