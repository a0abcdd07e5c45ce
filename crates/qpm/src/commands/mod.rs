//! One module per command group.

use anyhow::Result;

use crate::cli::Command;
use crate::ctx::{Ctx, Status};

pub(crate) mod generate;
pub(crate) mod pkg;
pub(crate) mod pkgfiles;
pub(crate) mod policy;
pub(crate) mod repo;
pub(crate) mod sim;
pub(crate) mod sync;

pub(crate) fn run(cmd: Command, ctx: &Ctx) -> Result<Status> {
    match cmd {
        Command::Pkg(c) => pkg::run(c, ctx),
        Command::RepoTop(c) => repo::run(c, ctx),
        Command::Sync(c) => sync::run(c, ctx),
        Command::Policy(c) => policy::run(c, ctx),
        Command::Sim(c) => sim::run(c, ctx),
        Command::Generate(a) => generate::run(&a),
    }
}
