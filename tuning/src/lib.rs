//! Host tuning for the gateway: `tuning check` compares a host's limits and kernel settings with
//! what a number of idle connections needs, `tuning apply` installs the recommended profile.
//! See tuning/PLAYBOOK.md.

pub mod apply;
pub mod assess;
pub mod cli;
pub mod error;
pub mod host;
pub mod profile;
pub mod report;

use std::ffi::OsString;
use std::io::Write;

use crate::apply::Privilege;
use crate::cli::{ApplyOptions, CheckOptions, Command, UsageError, USAGE};
use crate::error::TuningError;

/// Process exit codes, documented in the usage text and the playbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `check`: target met. `apply`: applied, or nothing to change.
    Success = 0,
    /// `check`: target not met. `apply`: refused, not root.
    NotMet = 1,
    Usage = 2,
    /// A host file could not be read, parsed or written.
    Failure = 3,
}

/// What the binary learns from the operating system, passed in so tests can vary it.
#[derive(Debug, Clone, Copy)]
pub struct Environment {
    pub privilege: Privilege,
    pub page_size: u64,
}

/// Runs one command line (without the program name), writing results to `out` and problems
/// to `err`.
pub fn run(
    arguments: impl IntoIterator<Item = OsString>,
    environment: Environment,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Exit {
    let command = cli::parse(arguments).and_then(|command| {
        let root = match &command {
            Command::Check(options) => Some(&options.root),
            Command::Apply(options) => Some(&options.root),
            Command::Help => None,
        };
        match root {
            Some(root) if !root.is_dir() => {
                Err(UsageError::RootNotDirectory(root.display().to_string()))
            }
            _ => Ok(command),
        }
    });
    let outcome = match command {
        Err(usage) => {
            // Nothing useful is left to do if stderr itself is gone.
            let _ = writeln!(err, "tuning: {usage}\n{USAGE}");
            return Exit::Usage;
        }
        Ok(Command::Help) => writeln!(out, "{USAGE}")
            .map(|()| Exit::Success)
            .map_err(TuningError::from),
        Ok(Command::Check(options)) => check(&options, environment, out),
        Ok(Command::Apply(options)) => apply_profile(&options, environment, out),
    };
    match outcome {
        Ok(exit) => exit,
        Err(error) => {
            let _ = writeln!(err, "tuning: {error}");
            match error {
                TuningError::NotRoot => Exit::NotMet,
                _ => Exit::Failure,
            }
        }
    }
}

fn check(
    options: &CheckOptions,
    environment: Environment,
    out: &mut dyn Write,
) -> Result<Exit, TuningError> {
    let host = host::read_host(&options.root)?;
    let assessment = assess::assess(
        &host,
        options.target_connections,
        options.transport,
        environment.page_size,
    );
    if options.json {
        report::write_json(&assessment, &options.root, out)?;
    } else {
        report::write_table(&assessment, &options.root, out)?;
    }
    Ok(if assessment.target_met {
        Exit::Success
    } else {
        Exit::NotMet
    })
}

fn apply_profile(
    options: &ApplyOptions,
    environment: Environment,
    out: &mut dyn Write,
) -> Result<Exit, TuningError> {
    if options.dry_run {
        apply::write_dry_run(&options.root, out)?;
        return Ok(Exit::Success);
    }
    let changes = apply::apply(&options.root, environment.privilege)?;
    if changes.is_empty() {
        writeln!(
            out,
            "nothing changed: the profile files and kernel settings under {} already match",
            options.root.display()
        )?;
        return Ok(Exit::Success);
    }
    for change in &changes {
        writeln!(out, "{}", change.describe())?;
    }
    writeln!(
        out,
        "limits.d applies from the next login; a systemd service takes LimitNOFILE= and \
         LimitMEMLOCK= from its unit (deploy/systemd/gateway.service)"
    )?;
    Ok(Exit::Success)
}
