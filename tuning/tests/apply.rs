//! `tuning apply` against fixture roots, and the shipped sysctl file against this machine's kernel.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{exit_code, repository_file, stderr, stdout, tuning, FixtureHost};
use tuning::profile::{normalize, parse_sysctl_conf};

const SYSCTL_DESTINATION: &str = "etc/sysctl.d/60-gateway.conf";
const LIMITS_DESTINATION: &str = "etc/security/limits.d/60-gateway.conf";

fn repository_sysctl_conf() -> String {
    fs::read_to_string(repository_file("sysctl.d/60-gateway.conf")).expect("read the sysctl file")
}

/// The text between `==> <root>/<relative> <==` and the next header (or the end).
fn dry_run_section<'a>(output: &'a str, root: &Path, relative: &str) -> Option<&'a str> {
    let header = format!("==> {} <==\n", root.join(relative).display());
    let start = output.find(&header)? + header.len();
    let rest = &output[start..];
    let end = rest.find("==> ").unwrap_or(rest.len());
    Some(&rest[..end])
}

#[test]
fn dry_run_prints_the_repository_sysctl_file_byte_for_byte_and_changes_nothing() {
    let host = FixtureHost::debian_vm();
    let root = host.root().display().to_string();
    let output = tuning(&["apply", "--dry-run", "--root", &root]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    let printed = stdout(&output);

    let sysctl = dry_run_section(&printed, host.root(), SYSCTL_DESTINATION);
    assert_eq!(sysctl, Some(repository_sysctl_conf().as_str()));
    let limits = dry_run_section(&printed, host.root(), LIMITS_DESTINATION);
    let repository_limits = fs::read_to_string(repository_file("deploy/limits.d/60-gateway.conf"))
        .expect("read the limits file");
    assert_eq!(limits, Some(repository_limits.as_str()));

    assert!(!host.root().join("etc").exists(), "dry run wrote files");
    assert_eq!(host.read("proc/sys/net/core/somaxconn"), "4096\n");
}

#[test]
fn apply_writes_the_files_and_sysctls_and_a_second_run_changes_nothing() {
    let host = FixtureHost::debian_vm();
    let root = host.root().display().to_string();

    let first = tuning(&["apply", "--root", &root]);
    let report = stdout(&first);
    assert_eq!(exit_code(&first), 0, "{report}{}", stderr(&first));
    assert!(
        report.contains(&format!(
            "wrote {} (new)",
            host.root().join(SYSCTL_DESTINATION).display()
        )),
        "{report}"
    );
    assert!(
        report.contains("set net.core.somaxconn: 4096 -> 65535"),
        "{report}"
    );
    assert!(
        report.contains("set net.ipv4.ip_local_port_range: 32768 60999 -> 10000 65535"),
        "{report}"
    );
    assert!(
        !report.contains("net.ipv4.tcp_wmem"),
        "tcp_wmem already matched and must not be reported\n{report}"
    );

    assert_eq!(host.read(SYSCTL_DESTINATION), repository_sysctl_conf());
    assert!(host.read(LIMITS_DESTINATION).contains("nofile     1048576"));
    for entry in parse_sysctl_conf(&repository_sysctl_conf()).expect("the file parses") {
        let file = format!("proc/sys/{}", entry.key.replace('.', "/"));
        assert_eq!(normalize(&host.read(&file)), entry.value, "{}", entry.key);
    }

    let second = tuning(&["apply", "--root", &root]);
    assert_eq!(exit_code(&second), 0, "{}", stderr(&second));
    assert_eq!(
        stdout(&second),
        format!(
            "nothing changed: the profile files and kernel settings under {root} already match\n"
        )
    );
}

#[test]
fn apply_replaces_an_edited_file_and_says_so() {
    let host = FixtureHost::tuned_node();
    let root = host.root().display().to_string();
    host.write(SYSCTL_DESTINATION, "net.core.somaxconn = 1024\n");
    let output = tuning(&["apply", "--root", &root]);
    let report = stdout(&output);
    assert_eq!(exit_code(&output), 0, "{report}{}", stderr(&output));
    assert!(report.contains("(replaced different contents)"), "{report}");
    assert!(
        !report.contains("set "),
        "the tuned node's sysctls already match\n{report}"
    );
    assert_eq!(host.read(SYSCTL_DESTINATION), repository_sysctl_conf());
}

#[test]
fn after_apply_the_sysctls_pass_a_million_connection_check() {
    let host = FixtureHost::debian_vm();
    let root = host.root().display().to_string();
    assert_eq!(exit_code(&tuning(&["apply", "--root", &root])), 0);
    // What the systemd unit and a large node provide; apply cannot change those.
    host.write_limits(("1048576", "1048576"), ("unlimited", "unlimited"));
    host.write_mem_available_kib(30_000_000);
    host.write_sysctl("net.netfilter.nf_conntrack_max", "1310720");
    let output = tuning(&["check", "--target-connections", "1000000", "--root", &root]);
    assert_eq!(exit_code(&output), 0, "{}", stdout(&output));
}

#[test]
fn a_kernel_without_one_of_the_settings_fails_before_anything_is_written() {
    let host = FixtureHost::debian_vm();
    fs::remove_file(host.root().join("proc/sys/net/ipv4/tcp_rmem")).expect("remove tcp_rmem");
    let root = host.root().display().to_string();
    let output = tuning(&["apply", "--root", &root]);
    let message = stderr(&output);
    assert_eq!(exit_code(&output), 3, "{message}");
    assert!(message.contains("net.ipv4.tcp_rmem"), "{message}");
    assert!(message.contains("nothing was changed"), "{message}");
    assert!(!host.root().join("etc").exists());
    assert_eq!(host.read("proc/sys/net/core/somaxconn"), "4096\n");
}

/// Runs `tuning apply` on the real root as an unprivileged user. Refusal happens before any
/// file is touched; should it not, that user could not write /etc anyway.
#[test]
fn apply_on_the_real_host_refuses_without_root_and_changes_nothing() {
    let binary = env!("CARGO_BIN_EXE_tuning");
    // SAFETY: geteuid only reads the process's credentials.
    let running_as_root = unsafe { libc::geteuid() } == 0;
    const DROP_PRIVILEGES: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    let mut command = if running_as_root {
        let can_drop = Command::new("setpriv")
            .args(DROP_PRIVILEGES)
            .arg("true")
            .status()
            .is_ok_and(|status| status.success());
        if !can_drop {
            println!("skipped: running as root and setpriv cannot drop privileges here");
            return;
        }
        let mut command = Command::new("setpriv");
        command.args(DROP_PRIVILEGES).arg(binary);
        command
    } else {
        Command::new(binary)
    };
    let installed = Path::new("/").join(SYSCTL_DESTINATION);
    let existed_before = installed.exists();

    let output = command
        .args(["apply", "--root", "/"])
        .output()
        .expect("run tuning");
    let message = stderr(&output);
    assert_eq!(exit_code(&output), 1, "{message}");
    assert!(message.contains("must run as root"), "{message}");
    assert!(message.contains("nothing was changed"), "{message}");
    assert!(stdout(&output).is_empty());
    assert_eq!(installed.exists(), existed_before);
}

#[test]
fn every_key_in_the_sysctl_file_exists_in_this_kernel() {
    let proc_sys = Path::new("/proc/sys");
    if !proc_sys.is_dir() {
        println!("skipped: /proc/sys is not mounted on this machine");
        return;
    }
    let entries = parse_sysctl_conf(&repository_sysctl_conf()).expect("the file parses");
    assert!(!entries.is_empty());
    let absent: Vec<&str> = entries
        .iter()
        .filter(|entry| !proc_sys.join(entry.key.replace('.', "/")).is_file())
        .map(|entry| entry.key.as_str())
        .collect();
    assert!(absent.is_empty(), "not in /proc/sys: {absent:?}");
}
