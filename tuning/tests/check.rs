//! `tuning check` against fixture hosts, through the built binary.

mod common;

use std::fs;

use common::{exit_code, stderr, stdout, tuning, FixtureHost};
use serde_json::Value;

fn root_argument(host: &FixtureHost) -> String {
    host.root().display().to_string()
}

/// The table row for a setting, split into its whitespace-separated words.
fn row<'a>(table: &'a str, setting: &str) -> Option<Vec<&'a str>> {
    table
        .lines()
        .find(|line| line.starts_with(&format!("{setting} ")))
        .map(|line| line.split_whitespace().collect())
}

fn status_in_table(table: &str, setting: &str) -> Option<String> {
    let words = row(table, setting)?;
    ["ok", "LOW", "HIGH", "missing"]
        .into_iter()
        .find(|status| words.contains(status))
        .map(str::to_string)
}

#[test]
fn a_default_debian_host_fails_100k_and_names_the_limits_that_bite() {
    let host = FixtureHost::debian_vm();
    let root = root_argument(&host);
    let output = tuning(&["check", "--target-connections", "100000", "--root", &root]);
    let table = stdout(&output);
    assert_eq!(exit_code(&output), 1, "{table}{}", stderr(&output));

    assert!(
        table.contains(
            "this host can hold about 52428 connections, limited by net.netfilter.nf_conntrack_max"
        ),
        "{table}"
    );
    for setting in [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_mem",
        "net.core.netdev_max_backlog",
        "net.netfilter.nf_conntrack_max",
    ] {
        assert_eq!(
            status_in_table(&table, setting).as_deref(),
            Some("LOW"),
            "{setting}\n{table}"
        );
    }
    for setting in [
        "RLIMIT_NOFILE (hard)",
        "fs.file-max",
        "fs.nr_open",
        "MemAvailable",
    ] {
        assert_eq!(
            status_in_table(&table, setting).as_deref(),
            Some("ok"),
            "{setting}\n{table}"
        );
    }
    assert!(
        table.contains("sysctl -w net.core.somaxconn=16384"),
        "the fix is an exact command\n{table}"
    );
    assert!(
        table.contains("sysctl -w net.netfilter.nf_conntrack_max=125000"),
        "{table}"
    );
    assert!(
        table.contains("target of 100000 connections: NOT met"),
        "{table}"
    );
}

#[test]
fn a_tuned_node_passes_100k() {
    let host = FixtureHost::tuned_node();
    let root = root_argument(&host);
    let output = tuning(&["check", "--target-connections", "100000", "--root", &root]);
    let table = stdout(&output);
    assert_eq!(exit_code(&output), 0, "{table}{}", stderr(&output));
    assert!(
        table.contains("target of 100000 connections: met"),
        "{table}"
    );
    assert!(
        table.contains("limited by RLIMIT_NOFILE (hard)"),
        "1048576 fds bind before 30 GB of memory\n{table}"
    );
    let rows = table
        .lines()
        .skip_while(|line| !line.starts_with("setting"))
        .skip(1)
        .take_while(|line| !line.is_empty())
        .collect::<Vec<_>>();
    assert_eq!(
        rows.len(),
        13,
        "no conntrack row without the module\n{table}"
    );
    for line in rows {
        assert!(line.contains(" ok "), "{line}");
    }
}

#[test]
fn the_tuned_node_also_holds_a_million_connections_but_not_with_tls() {
    let host = FixtureHost::tuned_node();
    let root = root_argument(&host);
    let plaintext = tuning(&["check", "--target-connections", "1000000", "--root", &root]);
    assert_eq!(exit_code(&plaintext), 0, "{}", stdout(&plaintext));
    let tls = tuning(&[
        "check",
        "--target-connections",
        "1000000",
        "--tls",
        "--root",
        &root,
    ]);
    assert_eq!(exit_code(&tls), 0, "{}", stdout(&tls));

    host.write_mem_available_kib(8_000_000);
    let small = tuning(&[
        "check",
        "--target-connections",
        "1000000",
        "--tls",
        "--root",
        &root,
    ]);
    let table = stdout(&small);
    assert_eq!(exit_code(&small), 1, "{table}");
    assert!(table.contains("limited by MemAvailable"), "{table}");
    assert_eq!(
        status_in_table(&table, "MemAvailable").as_deref(),
        Some("LOW")
    );
}

#[test]
fn a_broken_proc_file_is_a_clear_error_naming_the_file() {
    let host = FixtureHost::tuned_node();
    host.write_sysctl("net.core.somaxconn", "lots");
    let root = root_argument(&host);
    let output = tuning(&["check", "--root", &root]);
    let message = stderr(&output);
    assert_eq!(exit_code(&output), 3, "{message}");
    let file = host.root().join("proc/sys/net/core/somaxconn");
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.contains("\"lots\""), "{message}");
    assert!(!message.contains("panicked"), "{message}");
    assert!(stdout(&output).is_empty(), "no half report");
}

#[test]
fn an_unreadable_proc_file_is_a_clear_error_naming_the_file() {
    let host = FixtureHost::tuned_node();
    let limits = host.root().join("proc/self/limits");
    fs::remove_file(&limits).expect("remove the limits file");
    fs::create_dir(&limits).expect("put a directory in its place");
    let root = root_argument(&host);
    let output = tuning(&["check", "--root", &root]);
    let message = stderr(&output);
    assert_eq!(exit_code(&output), 3, "{message}");
    assert!(
        message.contains(&format!("cannot read {}", limits.display())),
        "{message}"
    );
    assert!(!message.contains("panicked"), "{message}");
}

#[test]
fn a_truncated_limits_file_is_a_clear_error() {
    let host = FixtureHost::tuned_node();
    host.write("proc/self/limits", "Limit  Soft Limit  Hard Limit  Units\n");
    let root = root_argument(&host);
    let output = tuning(&["check", "--root", &root]);
    let message = stderr(&output);
    assert_eq!(exit_code(&output), 3, "{message}");
    assert!(message.contains("no \"Max open files\" line"), "{message}");
}

#[test]
fn absent_settings_are_reported_missing_and_fail_the_target() {
    let host = FixtureHost::tuned_node();
    fs::remove_file(host.root().join("proc/sys/net/ipv4/tcp_mem")).expect("remove tcp_mem");
    let root = root_argument(&host);
    let output = tuning(&["check", "--target-connections", "1000", "--root", &root]);
    let table = stdout(&output);
    assert_eq!(exit_code(&output), 1, "{table}");
    assert_eq!(
        status_in_table(&table, "net.ipv4.tcp_mem").as_deref(),
        Some("missing")
    );
}

/// The keys tuning/PLAYBOOK.md documents for `tuning check --json`.
const SETTING_KEYS: [&str; 6] = [
    "setting",
    "source",
    "current",
    "recommended",
    "status",
    "fix",
];
const MEMORY_KEYS: [&str; 6] = [
    "available_bytes",
    "usable_percent",
    "kernel_bytes_per_connection",
    "gateway_bytes_per_connection",
    "conntrack_bytes_per_connection",
    "bytes_per_connection",
];

#[test]
fn json_output_parses_and_holds_the_documented_keys() {
    let host = FixtureHost::debian_vm();
    let root = root_argument(&host);
    let output = tuning(&[
        "check",
        "--json",
        "--target-connections=100000",
        "--root",
        &root,
    ]);
    assert_eq!(exit_code(&output), 1, "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");

    assert_eq!(report["root"], Value::from(root.as_str()));
    assert_eq!(report["target_connections"], Value::from(100_000));
    assert_eq!(report["transport"], Value::from("plaintext"));
    assert_eq!(report["target_met"], Value::from(false));

    let settings = report["settings"].as_array().expect("settings is a list");
    assert_eq!(settings.len(), 14);
    for setting in settings {
        let object = setting.as_object().expect("each setting is an object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut documented = SETTING_KEYS.to_vec();
        documented.sort_unstable();
        assert_eq!(keys, documented, "{setting}");
    }
    let somaxconn = settings
        .iter()
        .find(|setting| setting["setting"] == "net.core.somaxconn")
        .expect("somaxconn is reported");
    assert_eq!(somaxconn["source"], "/proc/sys/net/core/somaxconn");
    assert_eq!(somaxconn["current"], "4096");
    assert_eq!(somaxconn["recommended"], "16384");
    assert_eq!(somaxconn["status"], "LOW");
    assert_eq!(somaxconn["fix"], "sysctl -w net.core.somaxconn=16384");
    let file_max = settings
        .iter()
        .find(|setting| setting["setting"] == "fs.file-max")
        .expect("file-max is reported");
    assert_eq!(file_max["status"], "ok");
    assert_eq!(file_max["fix"], Value::Null);

    let capacity = &report["capacity"];
    assert_eq!(capacity["connections"], Value::from(52428));
    assert_eq!(capacity["limited_by"], "net.netfilter.nf_conntrack_max");
    let ceilings = capacity["ceilings"].as_array().expect("ceilings is a list");
    assert!(ceilings
        .iter()
        .all(|ceiling| ceiling["limit"].is_string() && ceiling["connections"].is_u64()));
    for key in MEMORY_KEYS {
        assert!(
            capacity["memory"].get(key).is_some(),
            "capacity.memory.{key}"
        );
    }
    assert_eq!(
        capacity["memory"]["bytes_per_connection"],
        Value::from(6464)
    );
}

#[test]
fn usage_errors_exit_with_2() {
    let host = FixtureHost::tuned_node();
    let root = root_argument(&host);
    for arguments in [
        vec!["check", "--target-connections", "many", "--root", &root],
        vec!["check", "--frobnicate"],
        vec!["check", "--root", "/nonexistent/tuning-root"],
        vec!["apply", "--target-connections", "5"],
        vec!["resize"],
        vec![],
    ] {
        let output = tuning(&arguments);
        assert_eq!(exit_code(&output), 2, "{arguments:?}");
        assert!(
            stderr(&output).contains("usage: tuning check"),
            "{arguments:?}"
        );
        assert!(stdout(&output).is_empty(), "{arguments:?}");
    }
}

#[test]
fn help_prints_the_usage() {
    let output = tuning(&["--help"]);
    assert_eq!(exit_code(&output), 0);
    assert!(stdout(&output).contains("tuning apply [--dry-run] [--root DIR]"));
}
