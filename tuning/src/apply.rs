//! `tuning apply`: installs the profile files and sets the profile's sysctls, reporting only what
//! actually changed so that a second run reports nothing.
//!
//! Sysctls are set by writing `<root>/proc/sys/...`, which on the real root is what `sysctl -w`
//! does, so the path exercised by fixture trees is the path that runs on hosts. Every sysctl
//! that needs a change is opened for writing before anything is written, so a read-only
//! `/proc/sys` (a container) or a missing key fails before any file changes.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::TuningError;
use crate::host::sysctl_path;
use crate::profile::{normalize, parse_sysctl_conf, ProfileFile, PROFILE_FILES, SYSCTL_CONF};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    Root,
    Unprivileged,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    FileWritten {
        path: PathBuf,
        existed: bool,
    },
    SysctlSet {
        key: String,
        from: String,
        to: String,
    },
}

impl Change {
    pub fn describe(&self) -> String {
        match self {
            Change::FileWritten {
                path,
                existed: false,
            } => format!("wrote {} (new)", path.display()),
            Change::FileWritten {
                path,
                existed: true,
            } => format!("wrote {} (replaced different contents)", path.display()),
            Change::SysctlSet { key, from, to } => format!("set {key}: {from} -> {to}"),
        }
    }
}

/// Prints each profile file under a `==> path <==` header, exactly as `apply` would write it.
pub fn write_dry_run(root: &Path, out: &mut dyn Write) -> Result<(), TuningError> {
    for file in PROFILE_FILES {
        writeln!(out, "==> {} <==", root.join(file.relative_path).display())?;
        out.write_all(file.contents.as_bytes())?;
    }
    Ok(())
}

/// Changing the real host needs root; another root (a fixture, an image being built) needs only
/// write access to that tree.
pub fn apply(root: &Path, privilege: Privilege) -> Result<Vec<Change>, TuningError> {
    if is_host_root(root) && privilege != Privilege::Root {
        return Err(TuningError::NotRoot);
    }
    let pending_sysctls = open_changed_sysctls(root)?;
    let mut changes = Vec::new();
    for file in PROFILE_FILES {
        if let Some(change) = install_file(root, file)? {
            changes.push(change);
        }
    }
    for pending in pending_sysctls {
        changes.push(pending.write()?);
    }
    Ok(changes)
}

fn is_host_root(root: &Path) -> bool {
    fs::canonicalize(root).is_ok_and(|root| root == Path::new("/"))
}

/// A sysctl whose current value differs from the profile.
struct PendingSysctl {
    key: String,
    from: String,
    to: String,
    path: PathBuf,
}

impl PendingSysctl {
    /// Opens the way `echo value > file` does; procfs ignores the truncation, a fixture needs it.
    fn write(self) -> Result<Change, TuningError> {
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.path)
            .and_then(|mut file| file.write_all(format!("{}\n", self.to).as_bytes()))
            .map_err(|source| TuningError::Write {
                path: self.path.clone(),
                source,
            })?;
        let actual = read_value(&self.path)?;
        if actual != self.to {
            return Err(TuningError::SysctlNotApplied {
                key: self.key,
                wanted: self.to,
                actual,
                path: self.path,
            });
        }
        Ok(Change::SysctlSet {
            key: self.key,
            from: self.from,
            to: self.to,
        })
    }
}

/// Finds the sysctls that differ from the profile and proves each can be opened for writing,
/// before anything is written.
fn open_changed_sysctls(root: &Path) -> Result<Vec<PendingSysctl>, TuningError> {
    let mut pending = Vec::new();
    for entry in parse_sysctl_conf(SYSCTL_CONF)? {
        let path = root.join(sysctl_path(&entry.key));
        if !path.is_file() {
            return Err(TuningError::MissingSysctl {
                key: entry.key,
                path,
            });
        }
        let current = read_value(&path)?;
        if current == entry.value {
            continue;
        }
        OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| TuningError::Write {
                path: path.clone(),
                source,
            })?;
        pending.push(PendingSysctl {
            key: entry.key,
            from: current,
            to: entry.value,
            path,
        });
    }
    Ok(pending)
}

fn read_value(path: &Path) -> Result<String, TuningError> {
    fs::read_to_string(path)
        .map(|text| normalize(&text))
        .map_err(|source| TuningError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes the file through a temporary sibling and a rename, so a reader never sees half of it.
fn install_file(root: &Path, file: ProfileFile) -> Result<Option<Change>, TuningError> {
    let path = root.join(file.relative_path);
    let existing = match fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(source) => return Err(TuningError::Read { path, source }),
    };
    if existing.as_deref() == Some(file.contents.as_bytes()) {
        return Ok(None);
    }
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TuningError::Write { path, source }
    };
    if let Some(directory) = path.parent() {
        fs::create_dir_all(directory).map_err(write_error(directory))?;
    }
    let staging = path.with_extension("conf.new");
    fs::write(&staging, file.contents).map_err(write_error(&staging))?;
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o644))
        .map_err(write_error(&staging))?;
    fs::rename(&staging, &path).map_err(write_error(&path))?;
    Ok(Some(Change::FileWritten {
        path,
        existed: existing.is_some(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unprivileged_user_cannot_change_the_real_host() {
        let result = apply(Path::new("/"), Privilege::Unprivileged);
        assert!(matches!(result, Err(TuningError::NotRoot)), "{result:?}");
    }

    #[test]
    fn the_dry_run_shows_both_files_under_headers() {
        let mut out = Vec::new();
        write_dry_run(Path::new("/staging"), &mut out).expect("writing to memory");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("==> /staging/etc/sysctl.d/60-gateway.conf <==\n"));
        assert!(text.contains("==> /staging/etc/security/limits.d/60-gateway.conf <==\n"));
        assert!(text.contains(SYSCTL_CONF));
    }

    #[test]
    fn change_descriptions_say_what_happened() {
        let set = Change::SysctlSet {
            key: "net.core.somaxconn".to_string(),
            from: "4096".to_string(),
            to: "65535".to_string(),
        };
        assert_eq!(set.describe(), "set net.core.somaxconn: 4096 -> 65535");
        let new_file = Change::FileWritten {
            path: PathBuf::from("/etc/x.conf"),
            existed: false,
        };
        assert_eq!(new_file.describe(), "wrote /etc/x.conf (new)");
    }
}
