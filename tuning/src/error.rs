//! Errors that stop `tuning check` or `tuning apply`. Every variant that comes from a file
//! names it, so an operator can go straight to the file that is broken.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TuningError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error("cannot parse {}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },

    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },

    #[error(
        "the kernel has no {key} ({} is missing); nothing was changed",
        path.display()
    )]
    MissingSysctl { key: String, path: PathBuf },

    #[error(
        "the kernel kept {key} = {actual} after writing {wanted} to {}",
        path.display()
    )]
    SysctlNotApplied {
        key: String,
        wanted: String,
        actual: String,
        path: PathBuf,
    },

    #[error("line {line} of the embedded sysctl file: {reason}")]
    SysctlFile { line: usize, reason: String },

    #[error(
        "tuning apply must run as root to change /etc and /proc/sys on this host; nothing was changed"
    )]
    NotRoot,

    #[error("cannot write the report: {0}")]
    Output(#[from] io::Error),
}
