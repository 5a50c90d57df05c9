//! `loadtest`: a load generator for Pusher Channels compatible WebSocket servers.

mod cause;
mod cli;
mod handshakes;
mod histogram;
mod hostile;
mod http;
mod link;
mod metrics;
mod net;
mod pacing;
mod payload;
mod plan;
mod publish;
mod pusher;
mod receive_time;
mod report;
mod run;
mod sequence;
mod signing;
mod source_ips;
mod tally;
mod target;
mod tls;
mod worker;

use std::process::ExitCode;

use clap::Parser;
use tokio::task::LocalSet;

use crate::cli::{Cli, Command};
use crate::plan::Plan;

const EXIT_CLEAN: u8 = 0;
const EXIT_ERROR: u8 = 1;
const EXIT_FAILURES: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let open_file_limit = raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadtest: cannot start the runtime: {error}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let local = LocalSet::new();
    let plan = match cli.command {
        Command::Worker => {
            let served = local.block_on(&runtime, link::serve_as_child());
            // The stdin reader may still sit in a blocking read; it is not worth waiting for.
            runtime.shutdown_background();
            return match served {
                Ok(()) => ExitCode::from(EXIT_CLEAN),
                Err(error) => {
                    eprintln!("loadtest worker: {error}");
                    ExitCode::from(EXIT_ERROR)
                }
            };
        }
        Command::Connect(args) => Plan::connect(args, open_file_limit),
        Command::Fanout(args) => Plan::fanout(args, open_file_limit),
        Command::Churn(args) => Plan::churn(args, open_file_limit),
        Command::Handshakes(args) => Plan::handshakes(args, open_file_limit),
        Command::Hostile(args) => Plan::hostile(args, open_file_limit),
    };
    let plan = match plan {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("loadtest: {error}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    for warning in &plan.common().warnings {
        eprintln!("loadtest: warning: {warning}");
    }
    let json_path = plan.common().json.clone();
    let outcome = local.block_on(&runtime, run::run(plan));
    runtime.shutdown_background();
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            eprintln!("loadtest: {error}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    print!("{}", report.render());
    if let Some(path) = json_path {
        let written = serde_json::to_string_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&path, json + "\n"));
        if let Err(error) = written {
            eprintln!("loadtest: cannot write {}: {error}", path.display());
            return ExitCode::from(EXIT_ERROR);
        }
    }
    ExitCode::from(if report.clean {
        EXIT_CLEAN
    } else {
        EXIT_FAILURES
    })
}

/// Raises this process's soft limit on open files to its hard limit, and returns the limit in
/// force. Children inherit it.
fn raise_open_file_limit() -> u64 {
    // A refused raise leaves the soft limit as it was; 1024 is the usual soft limit, for the case
    // where even that cannot be read.
    rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::Resource::NOFILE.get_soft())
        .unwrap_or(1024)
}
