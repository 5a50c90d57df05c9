//! Command-line parsing for `tuning check` and `tuning apply`.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::assess::Transport;

/// The target `check` uses without `--target-connections`: the size `sysctl.d/60-gateway.conf`
/// is written for.
pub const DEFAULT_TARGET_CONNECTIONS: u64 = 1_000_000;

pub const USAGE: &str = "\
usage: tuning check [--target-connections N] [--tls] [--json] [--root DIR]
       tuning apply [--dry-run] [--root DIR]

check   compare this host's limits and kernel settings with what N idle connections need
        (default N: 1000000; --tls budgets 4 KiB of gateway memory per connection instead of 1 KiB)
        exit 0: target met, 1: not met, 2: usage error, 3: a host file could not be read
apply   install /etc/sysctl.d/60-gateway.conf and /etc/security/limits.d/60-gateway.conf and set
        the sysctls; needs root on the real host; --dry-run prints the files and changes nothing
        exit 0: applied or already in place, 1: not root, 2: usage error, 3: a write failed
--root  read and write under DIR instead of / (a fixture tree or an image being built)";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    pub target_connections: u64,
    pub transport: Transport,
    pub json: bool,
    pub root: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOptions {
    pub dry_run: bool,
    pub root: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Check(CheckOptions),
    Apply(ApplyOptions),
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("no command given")]
    MissingCommand,
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("{command} does not take {option:?}")]
    UnknownOption {
        command: &'static str,
        option: String,
    },
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("{0} does not take a value")]
    UnexpectedValue(&'static str),
    #[error("--target-connections must be a whole number above 0, not {0:?}")]
    InvalidTarget(String),
    #[error("argument {0:?} is not valid UTF-8")]
    NotUtf8(String),
    #[error("--root {0:?} is not a directory")]
    RootNotDirectory(String),
}

/// One command-line word split into an option name and an inline `=value`, if any.
struct Word {
    name: String,
    inline_value: Option<OsString>,
}

fn split_word(word: OsString) -> Result<Word, UsageError> {
    let text = word
        .into_string()
        .map_err(|word| UsageError::NotUtf8(word.to_string_lossy().into_owned()))?;
    Ok(match text.split_once('=') {
        Some((name, value)) if name.starts_with("--") => Word {
            name: name.to_string(),
            inline_value: Some(OsString::from(value)),
        },
        _ => Word {
            name: text,
            inline_value: None,
        },
    })
}

/// Parses the arguments after the program name.
pub fn parse(arguments: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut arguments = arguments.into_iter();
    let command = arguments.next().ok_or(UsageError::MissingCommand)?;
    let command = split_word(command)?.name;
    match command.as_str() {
        "check" => parse_check(arguments).map(Command::Check),
        "apply" => parse_apply(arguments).map(Command::Apply),
        "help" | "--help" | "-h" => Ok(Command::Help),
        _ => Err(UsageError::UnknownCommand(command)),
    }
}

fn parse_check(mut arguments: impl Iterator<Item = OsString>) -> Result<CheckOptions, UsageError> {
    let mut options = CheckOptions {
        target_connections: DEFAULT_TARGET_CONNECTIONS,
        transport: Transport::Plaintext,
        json: false,
        root: PathBuf::from("/"),
    };
    while let Some(word) = arguments.next() {
        let word = split_word(word)?;
        match word.name.as_str() {
            "--target-connections" => {
                let value = take_value("--target-connections", word.inline_value, &mut arguments)?;
                let text = value.to_string_lossy().into_owned();
                options.target_connections = match text.parse::<u64>() {
                    Ok(target) if target > 0 => target,
                    _ => return Err(UsageError::InvalidTarget(text)),
                };
            }
            "--root" => {
                options.root =
                    PathBuf::from(take_value("--root", word.inline_value, &mut arguments)?)
            }
            "--json" => options.json = flag("--json", word.inline_value)?,
            "--tls" => {
                if flag("--tls", word.inline_value)? {
                    options.transport = Transport::Tls;
                }
            }
            _ => {
                return Err(UsageError::UnknownOption {
                    command: "check",
                    option: word.name,
                })
            }
        }
    }
    Ok(options)
}

fn parse_apply(mut arguments: impl Iterator<Item = OsString>) -> Result<ApplyOptions, UsageError> {
    let mut options = ApplyOptions {
        dry_run: false,
        root: PathBuf::from("/"),
    };
    while let Some(word) = arguments.next() {
        let word = split_word(word)?;
        match word.name.as_str() {
            "--dry-run" => options.dry_run = flag("--dry-run", word.inline_value)?,
            "--root" => {
                options.root =
                    PathBuf::from(take_value("--root", word.inline_value, &mut arguments)?)
            }
            _ => {
                return Err(UsageError::UnknownOption {
                    command: "apply",
                    option: word.name,
                })
            }
        }
    }
    Ok(options)
}

fn take_value(
    option: &'static str,
    inline_value: Option<OsString>,
    arguments: &mut impl Iterator<Item = OsString>,
) -> Result<OsString, UsageError> {
    inline_value
        .or_else(|| arguments.next())
        .filter(|value| !value.is_empty())
        .ok_or(UsageError::MissingValue(option))
}

fn flag(option: &'static str, inline_value: Option<OsString>) -> Result<bool, UsageError> {
    match inline_value {
        None => Ok(true),
        Some(_) => Err(UsageError::UnexpectedValue(option)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &[&str]) -> Result<Command, UsageError> {
        parse(words.iter().map(OsString::from))
    }

    #[test]
    fn check_takes_its_options_in_either_spelling() {
        let parsed = parse_words(&[
            "check",
            "--target-connections=100000",
            "--json",
            "--tls",
            "--root",
            "/tmp/host",
        ]);
        assert_eq!(
            parsed,
            Ok(Command::Check(CheckOptions {
                target_connections: 100_000,
                transport: Transport::Tls,
                json: true,
                root: PathBuf::from("/tmp/host"),
            }))
        );
    }

    #[test]
    fn check_defaults_to_the_profile_size_on_the_real_root() {
        assert_eq!(
            parse_words(&["check"]),
            Ok(Command::Check(CheckOptions {
                target_connections: DEFAULT_TARGET_CONNECTIONS,
                transport: Transport::Plaintext,
                json: false,
                root: PathBuf::from("/"),
            }))
        );
    }

    #[test]
    fn apply_takes_dry_run_and_root() {
        assert_eq!(
            parse_words(&["apply", "--dry-run", "--root=/mnt/image"]),
            Ok(Command::Apply(ApplyOptions {
                dry_run: true,
                root: PathBuf::from("/mnt/image"),
            }))
        );
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        assert_eq!(parse_words(&[]), Err(UsageError::MissingCommand));
        assert_eq!(
            parse_words(&["tune"]),
            Err(UsageError::UnknownCommand("tune".to_string()))
        );
        assert_eq!(
            parse_words(&["check", "--target-connections"]),
            Err(UsageError::MissingValue("--target-connections"))
        );
        assert_eq!(
            parse_words(&["check", "--target-connections", "lots"]),
            Err(UsageError::InvalidTarget("lots".to_string()))
        );
        assert_eq!(
            parse_words(&["check", "--target-connections", "0"]),
            Err(UsageError::InvalidTarget("0".to_string()))
        );
        assert_eq!(
            parse_words(&["apply", "--json"]),
            Err(UsageError::UnknownOption {
                command: "apply",
                option: "--json".to_string()
            })
        );
        assert_eq!(
            parse_words(&["check", "--json=yes"]),
            Err(UsageError::UnexpectedValue("--json"))
        );
        assert_eq!(
            parse_words(&["check", "--root="]),
            Err(UsageError::MissingValue("--root"))
        );
    }

    #[test]
    fn help_is_a_command() {
        assert_eq!(parse_words(&["--help"]), Ok(Command::Help));
    }
}
