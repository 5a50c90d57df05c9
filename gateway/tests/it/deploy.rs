//! The deployment files agree with the gateway: the settings they pass are valid, and every
//! metric their Grafana dashboard and Prometheus alert rules name exists on a running gateway
//! (TLS and Redis on, so that every family the gateway can expose is there).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::redis::Redis;
use crate::common::{self, free_port, wait_until, Gateway};
use gateway::config::{Config, Port};

/// Metric names (`gateway_...`) mentioned in a text, without the suffixes Prometheus adds to
/// summaries and histograms.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("gateway_") {
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_word {
            let name = &tail[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.insert(base.to_string());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_scanner_finds_whole_names_only() {
    let found = metric_names(
        "rate(gateway_bytes_in_total[5m]) / my_gateway_x + gateway_fanout_latency_seconds_sum",
    );
    let expected: BTreeSet<String> = ["gateway_bytes_in_total", "gateway_fanout_latency_seconds"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn every_metric_the_dashboard_and_alert_rules_use_is_exposed() {
    let certs = std::env::temp_dir().join(format!("gateway-deploy-metrics-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["cert", "--dir", certs.to_str().unwrap()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let redis = Redis::start();
    let gateway = Gateway::start(&[
        "--redis-url",
        &redis.url(),
        "--tls-port",
        &free_port().to_string(),
        "--tls-cert",
        certs.join("chain.pem").to_str().unwrap(),
        "--tls-key",
        certs.join("key.pem").to_str().unwrap(),
    ]);
    assert!(
        wait_until(Duration::from_secs(10), || gateway
            .metric("gateway_redis_up")
            == 1.0),
        "the gateway connects to Redis"
    );
    let (status, body) = common::http_get(gateway.admin_port, "/metrics").unwrap();
    assert_eq!(status, 200);
    let exposed: BTreeSet<String> = body
        .lines()
        .filter(|line| !line.starts_with('#'))
        .flat_map(metric_names)
        .collect();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for file in ["grafana/gateway-dashboard.json", "prometheus/alerts.yml"] {
        let used = metric_names(&std::fs::read_to_string(deploy.join(file)).unwrap());
        assert!(!used.is_empty(), "{file} names metrics");
        let missing: Vec<&String> = used.difference(&exposed).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics the gateway does not expose: {missing:?}"
        );
    }
    std::fs::remove_dir_all(certs).unwrap();
}

fn deploy_yaml(file: &str) -> serde_norway::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_settings_the_deployment_files_pass_are_accepted() {
    let config_map = deploy_yaml("k8s/configmap.yaml");
    let json = config_map["data"]["gateway.json"]
        .as_str()
        .expect("the ConfigMap holds gateway.json");
    let file = std::env::temp_dir().join(format!("gateway-configmap-{}.json", std::process::id()));
    std::fs::write(&file, json).unwrap();
    let secret = [(
        "GATEWAY_APP_SECRET".to_string(),
        "from-the-secret".to_string(),
    )];
    let loaded = Config::load(
        &["--config".to_string(), file.to_str().unwrap().to_string()],
        secret,
    );
    std::fs::remove_file(&file).unwrap();
    let config = loaded.expect("the ConfigMap's gateway.json is a valid configuration");
    assert!(
        config.tls_port != Port::Off && config.redis_url.is_some(),
        "it turns on TLS and clustering"
    );

    // The Service named gateway would put GATEWAY_PORT=tcp://... into every pod's environment.
    let service_link = [(
        "GATEWAY_PORT".to_string(),
        "tcp://127.0.0.1:6001".to_string(),
    )];
    assert!(Config::load(&[], service_link).is_err());
    let deployment = deploy_yaml("k8s/deployment.yaml");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["enableServiceLinks"].as_bool(),
        Some(false),
        "the pods get no service-link variables"
    );

    // The Redis Cluster overlay sets the URL through the environment, over the ConfigMap's.
    let overlay = deploy_yaml("k8s/redis-cluster/redis-url.yaml");
    let env = &overlay["spec"]["template"]["spec"]["containers"][0]["env"][0];
    assert_eq!(env["name"].as_str(), Some("GATEWAY_REDIS_URL"));
    let url = env["value"].as_str().expect("a Redis Cluster URL");
    let cluster_env = [("GATEWAY_REDIS_URL".to_string(), url.to_string())];
    let config = Config::load(&[], cluster_env).expect("the overlay's redis_url is valid");
    assert!(config
        .redis_url
        .is_some_and(|url| url.starts_with("redis-cluster://")));

    let compose = deploy_yaml("docker/compose.yml");
    let command: Vec<String> = compose["x-gateway"]["command"]
        .as_sequence()
        .expect("the compose file gives the gateway's flags")
        .iter()
        .map(|arg| arg.as_str().unwrap().to_string())
        .collect();
    Config::load(&command, []).expect("the compose file's flags are valid settings");
}
