//! The deployment files under deploy/ parse, agree with each other, and reference only metrics
//! the gateway exposes.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::repository_file;
use serde::Deserialize;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

/// Every metric name the gateway exposes on /metrics. Dashboards, alerts and the autoscaler may
/// use only these. The gateway's own test checks this same list against a live /metrics, so a
/// rename on either side fails a test.
const GATEWAY_METRICS: [&str; 19] = [
    "gateway_connections",
    "gateway_max_connections",
    "gateway_connects_total",
    "gateway_disconnects_total",
    "gateway_messages_in_total",
    "gateway_messages_out_total",
    "gateway_bytes_in_total",
    "gateway_bytes_out_total",
    "gateway_fanout_latency_seconds",
    "gateway_slow_consumer_disconnects_total",
    "gateway_inbox_drops_total",
    "gateway_http_requests_total",
    "gateway_rejected_total",
    "gateway_draining",
    "gateway_redis_up",
    "gateway_redis_publish_failures_total",
    "gateway_tls_handshakes_total",
    "gateway_tls_handshake_failures_total",
    "gateway_tls_record_errors_total",
];
/// Summaries among them, whose `_sum` and `_count` series are exposed too.
const SUMMARIES: [&str; 1] = ["gateway_fanout_latency_seconds"];

/// The gateway's default drain window (config key drain_seconds).
const DEFAULT_DRAIN_SECONDS: u64 = 10;

fn is_exposed(name: &str) -> bool {
    GATEWAY_METRICS.contains(&name)
        || SUMMARIES.iter().any(|summary| {
            name.strip_prefix(summary)
                .is_some_and(|suffix| suffix == "_sum" || suffix == "_count")
        })
}

/// Every identifier starting with `gateway_`, wherever it appears in the text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let is_identifier = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("gateway_") {
        let preceded_by_identifier = rest[..start].chars().next_back().is_some_and(is_identifier);
        let tail = &rest[start..];
        let end = tail.find(|c| !is_identifier(c)).unwrap_or(tail.len());
        if !preceded_by_identifier {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

fn read(relative: &str) -> String {
    fs::read_to_string(repository_file(relative))
        .unwrap_or_else(|error| panic!("cannot read {relative}: {error}"))
}

fn yaml_documents(relative: &str) -> Vec<Yaml> {
    let text = read(relative);
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            Yaml::deserialize(document).unwrap_or_else(|error| panic!("{relative}: {error}"))
        })
        .filter(|document| !document.is_null())
        .collect()
}

fn assert_only_exposed_metrics(relative: &str, text: &str) -> BTreeSet<String> {
    let names = metric_names(text);
    let unknown: Vec<&String> = names.iter().filter(|name| !is_exposed(name)).collect();
    assert!(
        unknown.is_empty(),
        "{relative} uses metrics the gateway does not expose: {unknown:?}"
    );
    names
}

fn str_at<'a>(value: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |value, key| value.get(*key))
        .and_then(Yaml::as_str)
}

fn u64_at(value: &Yaml, path: &[&str]) -> Option<u64> {
    path.iter()
        .try_fold(value, |value, key| value.get(*key))
        .and_then(Yaml::as_u64)
}

#[test]
fn the_metric_scanner_finds_names_and_ignores_longer_identifiers() {
    let names = metric_names(
        "sum(rate(gateway_connects_total[5m])) / x_gateway_other + \"gateway_redis_up\"",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["gateway_connects_total", "gateway_redis_up"]
    );
    assert!(is_exposed("gateway_fanout_latency_seconds_count"));
    assert!(!is_exposed("gateway_connections_count"));
    assert!(!is_exposed("gateway_fanout_latency_seconds_bucket"));
}

#[test]
fn the_dashboard_parses_and_covers_every_gateway_metric() {
    const FILE: &str = "deploy/grafana/gateway-dashboard.json";
    let text = read(FILE);
    let dashboard: Json = serde_json::from_str(&text).expect("the dashboard is JSON");
    let used = assert_only_exposed_metrics(FILE, &text);
    let missing: Vec<&&str> = GATEWAY_METRICS
        .iter()
        .filter(|name| !used.contains(**name))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard does not show {missing:?}"
    );

    let panels = dashboard["panels"].as_array().expect("panels is a list");
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64()),
            "duplicate panel id in {panel}"
        );
        assert!(panel["gridPos"].is_object(), "{}", panel["title"]);
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("a panel has targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("a target has an expr");
            assert!(
                !metric_names(expr).is_empty(),
                "{}: {expr} reads no gateway metric",
                panel["title"]
            );
        }
    }
}

#[test]
fn the_alert_rules_parse_and_cover_the_failure_modes() {
    const FILE: &str = "deploy/prometheus/alerts.yml";
    let text = read(FILE);
    assert_only_exposed_metrics(FILE, &text);
    let documents = yaml_documents(FILE);
    assert_eq!(documents.len(), 1);
    let groups = documents[0]["groups"]
        .as_sequence()
        .expect("groups is a list");
    let rules: Vec<&Yaml> = groups
        .iter()
        .flat_map(|group| group["rules"].as_sequence().expect("rules is a list"))
        .collect();
    let mut alert_names = BTreeSet::new();
    for rule in &rules {
        let name = str_at(rule, &["alert"]).expect("every rule is an alert");
        assert!(alert_names.insert(name), "duplicate alert {name}");
        let expr = str_at(rule, &["expr"]).expect("an alert has an expr");
        assert!(
            !metric_names(expr).is_empty(),
            "{name} reads no gateway metric"
        );
        assert!(
            str_at(rule, &["labels", "severity"]).is_some(),
            "{name} has no severity"
        );
        assert!(
            str_at(rule, &["annotations", "summary"]).is_some(),
            "{name} has no summary"
        );
    }
    let expr_reading = |metric: &str, also: &str| {
        rules.iter().any(|rule| {
            str_at(rule, &["expr"])
                .is_some_and(|expr| metric_names(expr).contains(metric) && expr.contains(also))
        })
    };
    assert!(
        expr_reading("gateway_max_connections", "0.85"),
        "host ceiling"
    );
    assert!(
        expr_reading("gateway_slow_consumer_disconnects_total", "rate("),
        "slow consumers"
    );
    assert!(expr_reading("gateway_redis_up", "== 0"), "Redis down");
    assert!(expr_reading("gateway_inbox_drops_total", ""), "inbox drops");
    assert!(
        expr_reading("gateway_http_requests_total", "status=~\"5..\""),
        "HTTP 5xx"
    );
    assert!(
        expr_reading("gateway_rejected_total", "rate("),
        "rejections"
    );
}

/// promtool checks PromQL syntax; the dashboard's expressions go through it as recording rules,
/// with Grafana's variables replaced by values.
#[test]
fn promtool_accepts_the_alerts_and_the_dashboard_queries() {
    if Command::new("promtool").arg("--version").output().is_err() {
        println!("skipped: promtool is not installed (Debian package prometheus)");
        return;
    }
    let check = |path: &Path| {
        let output = Command::new("promtool")
            .args(["check", "rules"])
            .arg(path)
            .output()
            .expect("run promtool");
        assert!(
            output.status.success(),
            "{}: {}{}",
            path.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    check(&repository_file("deploy/prometheus/alerts.yml"));

    let dashboard: Json =
        serde_json::from_str(&read("deploy/grafana/gateway-dashboard.json")).expect("JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .filter_map(|target| target["expr"].as_str())
        .map(|expr| {
            expr.replace("$__rate_interval", "5m")
                .replace("$instance", ".*")
        })
        .collect();
    assert!(!exprs.is_empty());
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(index, expr)| {
            serde_json::json!({"record": format!("dashboard:query_{index}"), "expr": expr})
        })
        .collect();
    let rules_file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("dashboard-rules.yml");
    // JSON is YAML, which promtool reads.
    fs::write(&path, rules_file.to_string()).expect("write the rules");
    check(&path);
}

fn kubernetes_documents() -> Vec<(String, Yaml)> {
    let mut documents = Vec::new();
    let directory = repository_file("deploy/k8s");
    let mut files: Vec<String> = fs::read_dir(&directory)
        .expect("read deploy/k8s")
        .map(|entry| {
            entry
                .expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    files.sort();
    for file in files {
        for document in yaml_documents(&format!("deploy/k8s/{file}")) {
            documents.push((file.clone(), document));
        }
    }
    documents
}

fn find_kind<'a>(documents: &'a [(String, Yaml)], kind: &str) -> Vec<&'a Yaml> {
    documents
        .iter()
        .filter(|(_, document)| str_at(document, &["kind"]) == Some(kind))
        .map(|(_, document)| document)
        .collect()
}

#[test]
fn the_kubernetes_manifests_parse_and_the_kustomization_lists_them_all() {
    let documents = kubernetes_documents();
    let kinds: BTreeSet<&str> = documents
        .iter()
        .map(|(file, document)| {
            assert!(
                str_at(document, &["apiVersion"]).is_some(),
                "{file}: no apiVersion"
            );
            assert!(
                str_at(document, &["metadata", "name"]).is_some(),
                "{file}: no name"
            );
            str_at(document, &["kind"]).unwrap_or_else(|| panic!("{file}: no kind"))
        })
        .collect();
    let expected = [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
    ];
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), expected);

    let kustomization = &yaml_documents("deploy/k8s/kustomization.yaml")[0];
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_sequence()
        .expect("resources is a list")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let files: BTreeSet<&str> = documents.iter().map(|(file, _)| file.as_str()).collect();
    assert_eq!(listed, files);

    for (file, document) in &documents {
        let text = serde_norway::to_string(document).expect("serialize");
        assert_only_exposed_metrics(file, &text);
    }
}

/// The container port number behind a probe's or Service's named port.
fn container_port(container: &Yaml, name_or_number: &Yaml) -> Option<u64> {
    if let Some(number) = name_or_number.as_u64() {
        return Some(number);
    }
    let name = name_or_number.as_str()?;
    container["ports"]
        .as_sequence()?
        .iter()
        .find(|port| str_at(port, &["name"]) == Some(name))
        .and_then(|port| u64_at(port, &["containerPort"]))
}

#[test]
fn the_deployment_probes_drains_and_fits_its_grace_period() {
    let documents = kubernetes_documents();
    let config_map = find_kind(&documents, "ConfigMap")[0];
    let gateway_json: Json = serde_json::from_str(
        str_at(config_map, &["data", "gateway.json"]).expect("the ConfigMap holds gateway.json"),
    )
    .expect("gateway.json is JSON");
    let drain_seconds = gateway_json["drain_seconds"]
        .as_u64()
        .expect("gateway.json sets drain_seconds");

    let deployment = find_kind(&documents, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    let liveness = &container["livenessProbe"]["httpGet"];
    assert_eq!(str_at(liveness, &["path"]), Some("/health"));
    assert_eq!(container_port(container, &liveness["port"]), Some(6001));
    let readiness = &container["readinessProbe"]["httpGet"];
    assert_eq!(str_at(readiness, &["path"]), Some("/ready"));
    assert_eq!(container_port(container, &readiness["port"]), Some(9601));

    let pre_stop: Vec<&str> = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .expect("preStop runs a command")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let script = pre_stop.join(" ");
    assert!(script.contains("POST /drain"), "{script}");
    assert!(script.contains("/dev/tcp/127.0.0.1/9601"), "{script}");
    let sleep_seconds: u64 = script
        .split("sleep ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|seconds| seconds.parse().ok())
        .expect("preStop sleeps a whole number of seconds");
    assert!(
        sleep_seconds >= drain_seconds,
        "the sleep must outlast the drain"
    );
    let grace = u64_at(pod, &["terminationGracePeriodSeconds"]).expect("grace period set");
    assert!(
        grace >= sleep_seconds + drain_seconds + 5,
        "grace {grace}s cannot fit preStop {sleep_seconds}s plus a {drain_seconds}s drain"
    );

    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][bound].get(resource).is_some(),
                "resources.{bound}.{resource}"
            );
        }
    }
    let sysctls: Vec<&str> = pod["securityContext"]["sysctls"]
        .as_sequence()
        .expect("pod sysctls")
        .iter()
        .filter_map(|sysctl| str_at(sysctl, &["name"]))
        .collect();
    assert_eq!(sysctls, ["net.ipv4.ip_local_port_range"]);

    let service = find_kind(&documents, "Service")
        .into_iter()
        .find(|service| str_at(service, &["spec", "type"]) == Some("LoadBalancer"))
        .expect("a LoadBalancer Service");
    let port = &service["spec"]["ports"][0];
    assert_eq!(u64_at(port, &["port"]), Some(443));
    assert_eq!(container_port(container, &port["targetPort"]), Some(6443));

    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let budget = find_kind(&documents, "PodDisruptionBudget")[0];
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&service["spec"]["selector"], labels);

    let autoscaler = find_kind(&documents, "HorizontalPodAutoscaler")[0];
    assert_eq!(
        str_at(&autoscaler["spec"], &["scaleTargetRef", "name"]),
        str_at(deployment, &["metadata", "name"])
    );
    let metric = &autoscaler["spec"]["metrics"][0];
    assert_eq!(str_at(metric, &["type"]), Some("Pods"));
    assert_eq!(
        str_at(metric, &["pods", "metric", "name"]),
        Some("gateway_connections")
    );
}

/// `30s`, `1m30s` or a bare number of seconds, as Compose and systemd write durations.
fn seconds(duration: &str) -> Option<u64> {
    if let Ok(seconds) = duration.parse() {
        return Some(seconds);
    }
    let mut total = 0;
    let mut number = String::new();
    for c in duration.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let value: u64 = number.parse().ok()?;
        number.clear();
        total += match c {
            's' => value,
            'm' => value * 60,
            'h' => value * 3600,
            _ => return None,
        };
    }
    number.is_empty().then_some(total)
}

#[test]
fn the_compose_file_runs_two_gateways_on_redis() {
    let mut compose = yaml_documents("deploy/docker/compose.yml").remove(0);
    compose.apply_merge().expect("merge keys resolve");
    let services = &compose["services"];
    assert!(services.get("redis").is_some());
    for name in ["gateway-1", "gateway-2"] {
        let gateway = &services[name];
        let command: Vec<&str> = gateway["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} has a command"))
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert_eq!(
            command,
            [
                "--redis-url",
                "redis://redis:6379/",
                "--admin-bind",
                "0.0.0.0"
            ],
            "{name}"
        );
        assert_eq!(
            u64_at(gateway, &["ulimits", "nofile", "soft"]),
            Some(1_048_576)
        );
        assert_eq!(
            u64_at(gateway, &["ulimits", "nofile", "hard"]),
            Some(1_048_576)
        );
        assert!(
            gateway["sysctls"].get("net.core.somaxconn").is_some(),
            "{name}"
        );
        let grace = str_at(gateway, &["stop_grace_period"]).and_then(seconds);
        assert!(
            grace.is_some_and(|grace| grace > DEFAULT_DRAIN_SECONDS),
            "{name}"
        );
        let dockerfile = str_at(gateway, &["build", "dockerfile"]).expect("built here");
        let context = str_at(gateway, &["build", "context"]).expect("a build context");
        let context = repository_file("deploy/docker").join(context);
        assert!(
            context.join(dockerfile).is_file(),
            "{name}: no {dockerfile}"
        );
    }
}

#[test]
fn the_dockerfile_builds_the_gateway_and_runs_it_unprivileged() {
    let dockerfile = read("deploy/docker/Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let from: Vec<&str> = instructions
        .iter()
        .filter_map(|line| line.strip_prefix("FROM "))
        .collect();
    assert_eq!(
        from,
        ["rust:1.95-bookworm AS builder", "debian:bookworm-slim"]
    );
    assert!(dockerfile.contains("cargo build --release --locked -p gateway"));
    let user = instructions
        .iter()
        .rev()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("the image sets a user");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "USER {user}"
    );
    assert!(instructions.contains(&"EXPOSE 6001 9601"));
}

/// `Key=value` pairs of one section of a unit file.
fn unit_section<'a>(unit: &'a str, section: &str) -> Vec<(&'a str, &'a str)> {
    let header = format!("[{section}]");
    unit.lines()
        .map(str::trim)
        .skip_while(|line| *line != header)
        .skip(1)
        .take_while(|line| !line.starts_with('['))
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .collect()
}

#[test]
fn the_systemd_unit_sets_limits_hardening_and_outlasts_the_drain() {
    let unit = read("deploy/systemd/gateway.service");
    let service = unit_section(&unit, "Service");
    let value = |key: &str| {
        service
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| *value)
    };
    for (key, expected) in [
        (
            "ExecStart",
            "/usr/local/bin/gateway --config /etc/gateway/gateway.json",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("LimitNOFILE", "1048576"),
        ("LimitMEMLOCK", "infinity"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("User", "gateway"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallArchitectures", "native"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(value(key), Some(expected), "{key}");
    }
    let stop = value("TimeoutStopSec")
        .and_then(seconds)
        .expect("TimeoutStopSec");
    assert!(
        stop > DEFAULT_DRAIN_SECONDS,
        "TimeoutStopSec={stop} cuts the drain short"
    );
    let filter = value("SystemCallFilter").expect("a system call filter");
    assert!(
        filter.starts_with('~'),
        "a deny list, so io_uring stays allowed"
    );
}

/// The groups a `SystemCallFilter=~...` list names, expanded by systemd-analyze, must hold no
/// io_uring call: a filtered io_uring silently turns the gateway into an epoll server.
#[test]
fn the_unit_filters_no_io_uring_call() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: systemd-analyze is not installed");
        return;
    }
    let unit = read("deploy/systemd/gateway.service");
    let service = unit_section(&unit, "Service");
    let filter = service
        .iter()
        .find(|(name, _)| *name == "SystemCallFilter")
        .map(|(_, value)| value.trim_start_matches('~'))
        .expect("a system call filter");
    let mut pending: Vec<String> = filter.split_whitespace().map(str::to_string).collect();
    let mut seen = BTreeSet::new();
    while let Some(entry) = pending.pop() {
        assert!(!entry.starts_with("io_uring"), "{entry} is filtered");
        if !entry.starts_with('@') || !seen.insert(entry.clone()) {
            continue;
        }
        let output = Command::new("systemd-analyze")
            .args(["syscall-filter", &entry])
            .output()
            .expect("run systemd-analyze");
        assert!(output.status.success(), "unknown group {entry}");
        pending.extend(
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .filter(|line| *line != entry)
                .map(str::to_string),
        );
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create a directory");
    for entry in fs::read_dir(from).expect("read a directory") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("a file type");
        if kind.is_symlink() {
            symlink(fs::read_link(entry.path()).expect("a link"), &target).expect("link");
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// `systemd-analyze verify` runs in a scratch root holding this machine's stock units (for
/// the dependencies) and stand-ins for the programs the unit runs, which it checks exist.
#[test]
fn systemd_analyze_verifies_the_unit() {
    let stock_units = Path::new("/usr/lib/systemd/system");
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: systemd-analyze is not installed");
        return;
    }
    if !stock_units.is_dir() {
        println!("skipped: {} is absent", stock_units.display());
        return;
    }
    let root = tempfile::tempdir().expect("temporary root");
    copy_tree(stock_units, &root.path().join("usr/lib/systemd/system"));
    for program in ["usr/local/bin/gateway", "bin/kill"] {
        let path = root.path().join(program);
        fs::create_dir_all(path.parent().expect("a parent")).expect("create bin");
        fs::write(&path, "#!/bin/sh\n").expect("write a stand-in");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("make executable");
    }
    let unit = root.path().join("etc/systemd/system/gateway.service");
    fs::create_dir_all(unit.parent().expect("a parent")).expect("create the unit directory");
    fs::copy(repository_file("deploy/systemd/gateway.service"), &unit).expect("copy the unit");

    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("/etc/systemd/system/gateway.service")
        .output()
        .expect("run systemd-analyze");
    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{complaints}");
    // Unknown keys and bad values are only warnings, so any output is a failure.
    assert!(complaints.trim().is_empty(), "{complaints}");
}
