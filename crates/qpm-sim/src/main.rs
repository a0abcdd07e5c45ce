#![forbid(unsafe_code)]
//! `qpm-sim`: the simulated dom0.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

/// The simulated dom0 of qpm: qubesd's Admin API and a qrexec router over a
/// state directory, so that qpm runs on any Linux machine.
#[derive(Debug, Parser)]
#[command(name = "qpm-sim", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replay a conformance transcript through a fresh simulator's qubesd
    /// socket; prints one JSON answer per line.
    Conformance {
        /// Fixture (initial state).
        #[arg(long)]
        fixture: PathBuf,
        /// Transcript (JSON lines).
        cases: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qpm-sim: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Conformance { fixture, cases } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            qpm_sim::conformance::run(&fixture, &cases, &mut out).context("conformance replay")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
