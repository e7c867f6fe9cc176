//! `pum-loadbench`: pum's load benchmark (issue 2, "Performance").
//!
//! It measures the server CPU time that pum's standalone ingest spends per push of a realistic
//! beacon, beside a hello-world server on the same stack (`pum-hello`: axum on tokio, answers
//! 204 without parsing) measured in the same run on the same machine, and reports the ratio
//! (the design's budget: at most 2.5x).
//!
//! Layout:
//! - [`orchestrate`]: the default command. For each round it runs hello, then pum (a fresh data
//!   directory each time): the server pinned to one CPU with `taskset`, the generator to the
//!   other; it reads the server's utime+stime from `/proc/PID/stat` right before and right after
//!   the measured window, and for pum checks that `metrics_aggregator_record_total` equals the
//!   2xx answers counted by the generator (zero lost, zero double counted).
//! - [`generate`]: `pum-loadbench generate`, the load generator the orchestrator starts as a
//!   pinned child process: N keep-alive HTTP/1.1 connections sending the beacon back to back.
//!
//! Build both servers first (`benches/load.sh` does, then runs this with the defaults).

mod generate;
mod orchestrate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Load benchmark of pum's standalone ingest against a hello-world baseline.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: orchestrate::RunArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The load generator (started by the orchestrator; not for direct use).
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Generate(args)) => generate::main(args),
        None => orchestrate::main(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pum-loadbench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
