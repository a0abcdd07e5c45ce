#![forbid(unsafe_code)]
//! `qpm`: install multi-qube applications as one unit and sync configuration
//! into qubes, from a management qube, through the Qubes Admin API.

mod cli;
mod commands;
mod connect;
mod ctx;

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::from_args();
    ctx::init_logging(&cli.global);
    let ctx = ctx::Ctx::new(&cli.global);
    match commands::run(cli.command, &ctx) {
        Ok(status) => status.into(),
        Err(err) => {
            // A closed pipe (e.g. `qpm list | head`) is not an error.
            if err
                .chain()
                .filter_map(|e| e.downcast_ref::<std::io::Error>())
                .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            let mut stderr = anstream::stderr();
            let _ = writeln!(stderr, "error: {err}");
            for cause in err.chain().skip(1) {
                let _ = writeln!(stderr, "  caused by: {cause}");
            }
            ctx::Status::Error.into()
        }
    }
}
