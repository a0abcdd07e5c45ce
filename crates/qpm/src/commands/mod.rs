//! One module per command group.

use anyhow::Result;

use crate::cli::Command;
use crate::ctx::{Ctx, Status};

pub(crate) mod generate;
pub(crate) mod policy;

pub(crate) fn run(cmd: Command, ctx: &Ctx) -> Result<Status> {
    match cmd {
        Command::Policy(c) => policy::run(c, ctx),
        Command::Generate(a) => generate::run(&a),
    }
}
