//! Fixture hosts laid out like `/proc` under a temporary root, and a runner for the built binary.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// Path of a repository file, from the tuning crate's directory.
pub fn repository_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

pub struct FixtureHost {
    directory: TempDir,
}

impl FixtureHost {
    fn empty() -> FixtureHost {
        FixtureHost {
            directory: tempfile::tempdir().expect("create a temporary directory"),
        }
    }

    pub fn root(&self) -> &Path {
        self.directory.path()
    }

    pub fn write(&self, relative: &str, contents: &str) {
        let path = self.root().join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create fixture directories");
        }
        fs::write(&path, contents).expect("write a fixture file");
    }

    pub fn read(&self, relative: &str) -> String {
        fs::read_to_string(self.root().join(relative)).expect("read a fixture file")
    }

    pub fn write_sysctl(&self, key: &str, value: &str) {
        self.write(
            &format!("proc/sys/{}", key.replace('.', "/")),
            &format!("{value}\n"),
        );
    }

    pub fn write_limits(&self, open_files: (&str, &str), locked_memory: (&str, &str)) {
        self.write(
            "proc/self/limits",
            &format!(
                "Limit                     Soft Limit           Hard Limit           Units     \n\
                 Max cpu time              unlimited            unlimited            seconds   \n\
                 Max open files            {:<20} {:<20} files     \n\
                 Max locked memory         {:<20} {:<20} bytes     \n\
                 Max address space         unlimited            unlimited            bytes     \n",
                open_files.0, open_files.1, locked_memory.0, locked_memory.1
            ),
        );
    }

    pub fn write_mem_available_kib(&self, kib: u64) {
        self.write(
            "proc/meminfo",
            &format!(
                "MemTotal:       {} kB\nMemFree:          123456 kB\nMemAvailable:   {kib} kB\n",
                kib + kib / 8
            ),
        );
    }

    /// A 4 GiB Debian 12 VM as installed: systemd's default limits (1024 soft open files),
    /// kernel-sized TCP memory and backlogs, conntrack loaded by a firewall.
    pub fn debian_vm() -> FixtureHost {
        let host = FixtureHost::empty();
        host.write_limits(("1024", "524288"), ("8388608", "8388608"));
        host.write_mem_available_kib(3_500_000);
        host.write("proc/sys/kernel/osrelease", "6.1.0-18-amd64\n");
        host.write_sysctl("fs.file-max", "9223372036854775807");
        host.write_sysctl("fs.nr_open", "1073741816");
        host.write_sysctl("net.core.somaxconn", "4096");
        host.write_sysctl("net.ipv4.tcp_max_syn_backlog", "512");
        host.write_sysctl("net.ipv4.ip_local_port_range", "32768\t60999");
        host.write_sysctl("net.ipv4.tcp_mem", "44433\t59244\t88866");
        host.write_sysctl("net.ipv4.tcp_rmem", "4096\t131072\t6291456");
        host.write_sysctl("net.ipv4.tcp_wmem", "4096\t16384\t4194304");
        host.write_sysctl("net.core.netdev_max_backlog", "1000");
        host.write_sysctl("net.netfilter.nf_conntrack_max", "65536");
        host
    }

    /// A 32 GiB node after `tuning apply` and with the systemd unit's limits; no conntrack.
    pub fn tuned_node() -> FixtureHost {
        let host = FixtureHost::empty();
        host.write_limits(("1048576", "1048576"), ("unlimited", "unlimited"));
        host.write_mem_available_kib(30_000_000);
        host.write("proc/sys/kernel/osrelease", "6.12.9-amd64\n");
        host.write_sysctl("fs.file-max", "4194304");
        host.write_sysctl("fs.nr_open", "1048576");
        host.write_sysctl("net.core.somaxconn", "65535");
        host.write_sysctl("net.ipv4.tcp_max_syn_backlog", "65535");
        host.write_sysctl("net.ipv4.ip_local_port_range", "10000\t65535");
        host.write_sysctl("net.ipv4.tcp_mem", "786432\t1048576\t1572864");
        host.write_sysctl("net.ipv4.tcp_rmem", "4096\t16384\t4194304");
        host.write_sysctl("net.ipv4.tcp_wmem", "4096\t16384\t4194304");
        host.write_sysctl("net.core.netdev_max_backlog", "16384");
        host
    }
}

/// Runs the built `tuning` binary.
pub fn tuning(arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tuning"))
        .args(arguments)
        .output()
        .expect("run the tuning binary")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The exit code, with the output attached to the failure message when there is none.
pub fn exit_code(output: &Output) -> i32 {
    output.status.code().unwrap_or_else(|| {
        panic!(
            "tuning was killed by a signal\nstdout:\n{}\nstderr:\n{}",
            stdout(output),
            stderr(output)
        )
    })
}
