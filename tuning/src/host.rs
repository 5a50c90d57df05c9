//! Reads the live limits and kernel settings of a host through a root directory.
//!
//! Everything comes from files (`/proc/self/limits` rather than `getrlimit`) so that a fixture
//! tree under any directory stands in for a real host. A file that does not exist is reported as
//! missing (the setting is absent on this kernel); a file that exists but cannot be read or
//! parsed is an error naming that file.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::TuningError;

/// The value `/proc/self/limits` shows as "unlimited".
pub const UNLIMITED: u64 = u64::MAX;

pub const LIMITS_FILE: &str = "proc/self/limits";
pub const MEMINFO_FILE: &str = "proc/meminfo";
pub const OSRELEASE_FILE: &str = "proc/sys/kernel/osrelease";
pub const CONNTRACK_MAX_KEY: &str = "net.netfilter.nf_conntrack_max";

/// A soft and hard resource limit; `UNLIMITED` stands for "unlimited".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimit {
    pub soft: u64,
    pub hard: u64,
}

/// Major and minor number of the running kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u64,
    pub minor: u64,
}

/// What `tuning check` looks at. `None` means the file or line is absent on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    pub open_files: Option<ResourceLimit>,
    pub locked_memory: Option<ResourceLimit>,
    pub file_max: Option<u64>,
    pub nr_open: Option<u64>,
    pub somaxconn: Option<u64>,
    pub tcp_max_syn_backlog: Option<u64>,
    pub ip_local_port_range: Option<[u64; 2]>,
    pub tcp_mem: Option<[u64; 3]>,
    pub tcp_rmem: Option<[u64; 3]>,
    pub tcp_wmem: Option<[u64; 3]>,
    pub netdev_max_backlog: Option<u64>,
    /// Present only while the conntrack module is loaded.
    pub nf_conntrack_max: Option<u64>,
    pub mem_available_bytes: Option<u64>,
    pub kernel: Option<KernelVersion>,
}

/// The file under `/proc/sys` that holds a dotted sysctl key.
pub fn sysctl_path(key: &str) -> PathBuf {
    Path::new("proc/sys").join(key.replace('.', "/"))
}

pub fn read_host(root: &Path) -> Result<HostState, TuningError> {
    let limits = read_optional(&root.join(LIMITS_FILE))?;
    let (open_files, locked_memory) = match limits {
        Some((path, text)) => (
            Some(parse_limit_line(&path, &text, "Max open files")?),
            Some(parse_limit_line(&path, &text, "Max locked memory")?),
        ),
        None => (None, None),
    };
    let mem_available_bytes = match read_optional(&root.join(MEMINFO_FILE))? {
        Some((path, text)) => parse_mem_available(&path, &text)?,
        None => None,
    };
    let kernel = match read_optional(&root.join(OSRELEASE_FILE))? {
        Some((path, text)) => Some(parse_kernel_version(&path, &text)?),
        None => None,
    };
    Ok(HostState {
        open_files,
        locked_memory,
        file_max: read_sysctl::<1>(root, "fs.file-max")?.map(|[v]| v),
        nr_open: read_sysctl::<1>(root, "fs.nr_open")?.map(|[v]| v),
        somaxconn: read_sysctl::<1>(root, "net.core.somaxconn")?.map(|[v]| v),
        tcp_max_syn_backlog: read_sysctl::<1>(root, "net.ipv4.tcp_max_syn_backlog")?.map(|[v]| v),
        ip_local_port_range: read_sysctl::<2>(root, "net.ipv4.ip_local_port_range")?,
        tcp_mem: read_sysctl::<3>(root, "net.ipv4.tcp_mem")?,
        tcp_rmem: read_sysctl::<3>(root, "net.ipv4.tcp_rmem")?,
        tcp_wmem: read_sysctl::<3>(root, "net.ipv4.tcp_wmem")?,
        netdev_max_backlog: read_sysctl::<1>(root, "net.core.netdev_max_backlog")?.map(|[v]| v),
        nf_conntrack_max: read_sysctl::<1>(root, CONNTRACK_MAX_KEY)?.map(|[v]| v),
        mem_available_bytes,
        kernel,
    })
}

/// Reads a file, or `None` if it does not exist. Any other failure is an error naming the file.
fn read_optional(path: &Path) -> Result<Option<(PathBuf, String)>, TuningError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some((path.to_path_buf(), text))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TuningError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_sysctl<const N: usize>(root: &Path, key: &str) -> Result<Option<[u64; N]>, TuningError> {
    match read_optional(&root.join(sysctl_path(key)))? {
        Some((path, text)) => parse_integers::<N>(&path, &text).map(Some),
        None => Ok(None),
    }
}

/// Parses exactly `N` whitespace-separated unsigned integers, the way the kernel prints them.
fn parse_integers<const N: usize>(path: &Path, text: &str) -> Result<[u64; N], TuningError> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let broken = |reason: String| TuningError::Parse {
        path: path.to_path_buf(),
        reason,
    };
    if fields.len() != N {
        return Err(broken(format!(
            "expected {N} integer(s), found {:?}",
            text.trim()
        )));
    }
    let mut values = [0u64; N];
    for (slot, field) in values.iter_mut().zip(&fields) {
        *slot = field
            .parse()
            .map_err(|_| broken(format!("{field:?} is not an unsigned integer")))?;
    }
    Ok(values)
}

/// Finds a line such as `Max open files   1024   524288   files` and returns its soft and
/// hard limit.
fn parse_limit_line(path: &Path, text: &str, name: &str) -> Result<ResourceLimit, TuningError> {
    let broken = |reason: String| TuningError::Parse {
        path: path.to_path_buf(),
        reason,
    };
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .ok_or_else(|| broken(format!("no {name:?} line")))?;
    let mut fields = line.split_whitespace();
    let mut next_limit = |which: &str| -> Result<u64, TuningError> {
        match fields.next() {
            Some("unlimited") => Ok(UNLIMITED),
            Some(field) => field.parse().map_err(|_| {
                broken(format!(
                    "{name}: {which} limit {field:?} is neither a number nor \"unlimited\""
                ))
            }),
            None => Err(broken(format!("{name}: no {which} limit"))),
        }
    };
    let soft = next_limit("soft")?;
    let hard = next_limit("hard")?;
    Ok(ResourceLimit { soft, hard })
}

/// `MemAvailable:  24375268 kB` in bytes; `None` on kernels older than 3.14 that lack the line.
fn parse_mem_available(path: &Path, text: &str) -> Result<Option<u64>, TuningError> {
    let Some(line) = text
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
    else {
        return Ok(None);
    };
    let broken = || TuningError::Parse {
        path: path.to_path_buf(),
        reason: format!("MemAvailable line {:?} is not \"<number> kB\"", line.trim()),
    };
    let mut fields = line.split_whitespace();
    let kib: u64 = fields
        .next()
        .and_then(|field| field.parse().ok())
        .ok_or_else(broken)?;
    if fields.next() != Some("kB") {
        return Err(broken());
    }
    kib.checked_mul(1024).map(Some).ok_or_else(broken)
}

/// `6.1.0-18-amd64` → 6.1.
fn parse_kernel_version(path: &Path, text: &str) -> Result<KernelVersion, TuningError> {
    let release = text.trim();
    let broken = || TuningError::Parse {
        path: path.to_path_buf(),
        reason: format!("kernel release {release:?} does not start with <major>.<minor>"),
    };
    let mut parts = release.split(['.', '-']);
    let mut number = || -> Result<u64, TuningError> {
        parts
            .next()
            .and_then(|part| part.parse().ok())
            .ok_or_else(broken)
    };
    let major = number()?;
    let minor = number()?;
    Ok(KernelVersion { major, minor })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units
Max open files            1024                 524288               files
Max locked memory         unlimited            unlimited            bytes
";

    #[test]
    fn limit_lines_parse_numbers_and_unlimited() {
        let path = Path::new("limits");
        assert_eq!(
            parse_limit_line(path, LIMITS, "Max open files").ok(),
            Some(ResourceLimit {
                soft: 1024,
                hard: 524288
            })
        );
        assert_eq!(
            parse_limit_line(path, LIMITS, "Max locked memory").ok(),
            Some(ResourceLimit {
                soft: UNLIMITED,
                hard: UNLIMITED
            })
        );
    }

    #[test]
    fn a_missing_limit_line_names_the_file_and_the_line() {
        let error = parse_limit_line(Path::new("/x/limits"), "Limit\n", "Max open files")
            .expect_err("no line must be an error");
        let message = error.to_string();
        assert!(message.contains("/x/limits"), "{message}");
        assert!(message.contains("Max open files"), "{message}");
    }

    #[test]
    fn sysctl_values_need_the_exact_number_of_integers() {
        let path = Path::new("tcp_mem");
        assert_eq!(
            parse_integers::<3>(path, "44433\t59244\t88866\n").ok(),
            Some([44433, 59244, 88866])
        );
        assert!(parse_integers::<3>(path, "1 2\n").is_err());
        assert!(parse_integers::<1>(path, "-1\n").is_err());
        assert!(parse_integers::<1>(path, "").is_err());
        assert_eq!(
            parse_integers::<1>(path, "9223372036854775807\n").ok(),
            Some([9223372036854775807])
        );
    }

    #[test]
    fn mem_available_is_converted_to_bytes_and_may_be_absent() {
        let path = Path::new("meminfo");
        let text = "MemTotal: 4000000 kB\nMemAvailable:    3500000 kB\n";
        assert_eq!(
            parse_mem_available(path, text).ok(),
            Some(Some(3_500_000 * 1024))
        );
        assert_eq!(
            parse_mem_available(path, "MemTotal: 1 kB\n").ok(),
            Some(None)
        );
        assert!(parse_mem_available(path, "MemAvailable: lots\n").is_err());
    }

    #[test]
    fn kernel_release_yields_major_and_minor() {
        let path = Path::new("osrelease");
        assert_eq!(
            parse_kernel_version(path, "6.1.0-18-amd64\n").ok(),
            Some(KernelVersion { major: 6, minor: 1 })
        );
        assert_eq!(
            parse_kernel_version(path, "5.4-rc1\n").ok(),
            Some(KernelVersion { major: 5, minor: 4 })
        );
        assert!(parse_kernel_version(path, "linux\n").is_err());
    }

    #[test]
    fn sysctl_keys_map_to_proc_sys_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.tcp_mem"),
            PathBuf::from("proc/sys/net/ipv4/tcp_mem")
        );
    }
}
