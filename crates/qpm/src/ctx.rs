//! What every command gets: output mode, verbosity and how to reach dom0.

use std::process::ExitCode;

use crate::cli::GlobalArgs;

/// The outcome of a command, mapped to the process exit status in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code, reason = "variants are used as commands land")]
pub(crate) enum Status {
    /// 0: done, allowed, clean.
    Success,
    /// 1: a negative answer: denied, drift or findings, rejected, the user said no.
    Failure,
    /// 2: an error: bad usage, unreadable input, unreachable dom0.
    Error,
}

impl From<Status> for ExitCode {
    fn from(s: Status) -> Self {
        match s {
            Status::Success => ExitCode::SUCCESS,
            Status::Failure => ExitCode::from(1),
            Status::Error => ExitCode::from(2),
        }
    }
}

/// Settings shared by all commands, validated from the global flags.
#[derive(Debug, Clone)]
#[allow(dead_code, reason = "fields are read by commands as they land")]
pub(crate) struct Ctx {
    /// Print one JSON document on stdout instead of human output.
    pub(crate) json: bool,
    /// `-q`: only errors on stderr.
    pub(crate) quiet: bool,
    /// `-v` count.
    pub(crate) verbose: u8,
    /// Global flags as given (transport, simulator directory, ...).
    pub(crate) global: GlobalArgs,
}

impl Ctx {
    pub(crate) fn new(g: &GlobalArgs) -> Self {
        Self {
            json: g.json,
            quiet: g.quiet,
            verbose: g.verbose,
            global: g.clone(),
        }
    }
}

/// Logs go to stderr; `QPM_LOG` takes an env-filter, `-v` raises the level.
pub(crate) fn init_logging(g: &GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let default = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("QPM_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
