//! /metrics in the Prometheus text format, summed across shards at scrape time.
//!
//! Written out here rather than through prometheus-client: that crate has no summary type, which
//! both latency metrics are, and its metrics own their atomics, where these are the shards' own
//! counters, read only when scraped.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64};

use hdrhistogram::Histogram;

use super::stats::{
    Disconnect, Labelled, PublishFailure, Rejection, ShardStats, TlsFailure, HTTP_STATUSES,
};
use crate::cluster::ClusterStats;
use crate::node::Node;

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One line a shard, for a counter every shard keeps.
fn per_shard(
    out: &mut String,
    node: &Node,
    name: &str,
    help: &str,
    pick: fn(&ShardStats) -> &AtomicU64,
) {
    per_shard_of_kind(out, node, name, "counter", help, pick);
}

/// One line a shard, for a value of the given Prometheus type.
fn per_shard_of_kind(
    out: &mut String,
    node: &Node,
    name: &str,
    kind: &str,
    help: &str,
    pick: fn(&ShardStats) -> &AtomicU64,
) {
    header(out, name, kind, help);
    for (index, shard) in node.shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "{name}{{shard=\"{index}\"}} {}",
            pick(&shard.stats).load(Relaxed)
        );
    }
}

/// Sum over shards of one slot of a labelled counter array.
fn summed(node: &Node, pick: impl Fn(&ShardStats) -> &AtomicU64) -> u64 {
    node.shards
        .iter()
        .map(|s| pick(&s.stats).load(Relaxed))
        .sum()
}

/// One line a reason, summed over shards.
fn by_reason<L: Labelled>(
    out: &mut String,
    node: &Node,
    name: &str,
    help: &str,
    pick: fn(&ShardStats) -> &[AtomicU64],
) {
    header(out, name, "counter", help);
    for reason in L::ALL {
        let total = summed(node, |s| &pick(s)[reason.index()]);
        let _ = writeln!(out, "{name}{{reason=\"{}\"}} {total}", reason.label());
    }
}

/// One line for a value the bridge keeps.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A Prometheus summary in seconds: its quantiles, then its sum and count.
fn summary(
    out: &mut String,
    name: &str,
    help: &str,
    quantiles: &[(&str, f64)],
    (sum, count): (f64, u64),
) {
    header(out, name, "summary", help);
    for (quantile, seconds) in quantiles {
        let _ = writeln!(out, "{name}{{quantile=\"{quantile}\"}} {seconds}");
    }
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {count}");
}

/// The Redis bridge's state and counters; only when clustering is on.
fn render_cluster(out: &mut String, stats: &ClusterStats) {
    single(
        out,
        "gateway_redis_up",
        "gauge",
        "1 while connected to Redis and subscribed.",
        u64::from(stats.is_up()),
    );
    single(
        out,
        "gateway_redis_connects_total",
        "counter",
        "Connections to Redis made, the first one included.",
        stats.connects.load(Relaxed),
    );
    single(
        out,
        "gateway_redis_messages_out_total",
        "counter",
        "Broadcasts published to Redis for the other nodes.",
        stats.messages_out.load(Relaxed),
    );
    single(
        out,
        "gateway_redis_messages_in_total",
        "counter",
        "Broadcasts from other nodes handed to this node's shards.",
        stats.messages_in.load(Relaxed),
    );
    header(
        out,
        "gateway_redis_publish_failures_total",
        "counter",
        "Broadcasts delivered here but not sent to the other nodes, by reason.",
    );
    for reason in PublishFailure::ALL {
        let _ = writeln!(
            out,
            "gateway_redis_publish_failures_total{{reason=\"{}\"}} {}",
            reason.label(),
            stats.publish_failures[reason.index()].load(Relaxed)
        );
    }
    single(
        out,
        "gateway_redis_subscriptions",
        "gauge",
        "Pusher channels this node receives from Redis (those with a local subscriber).",
        stats.subscriptions.load(Relaxed),
    );
    single(
        out,
        "gateway_cluster_nodes",
        "gauge",
        "Other nodes heard from within the heartbeat timeout.",
        stats.nodes.load(Relaxed),
    );
    single(
        out,
        "gateway_cluster_partial_answers_total",
        "counter",
        "Answers that lack the other nodes' share: HTTP API answers (no answer in time, or Redis away), and cache asks the bridge had no room for.",
        stats.partial_answers.load(Relaxed),
    );
    let lag = |value: &AtomicU64| value.load(Relaxed) as f64 / 1e6;
    summary(
        out,
        "gateway_redis_lag_seconds",
        "Time from publish on another node to arrival here (wall clocks of both hosts).",
        &[
            ("0.5", lag(&stats.lag_p50_micros)),
            ("0.99", lag(&stats.lag_p99_micros)),
        ],
        (lag(&stats.lag_sum_micros), stats.lag_count.load(Relaxed)),
    );
    render_redis_shards(out, stats);
}

/// A Redis Cluster's masters: whether this node's subscriber connection to each is up, and the
/// channels it holds there; and the channels no live master holds.
fn render_redis_shards(out: &mut String, stats: &ClusterStats) {
    single(
        out,
        "gateway_redis_unplaced_subscriptions",
        "gauge",
        "Redis channels this node wants that no live Redis Cluster master holds now (a failover in progress).",
        stats.unplaced.load(Relaxed),
    );
    let shards = stats.redis_shards.load();
    if shards.is_empty() {
        return;
    }
    header(
        out,
        "gateway_redis_shard_up",
        "gauge",
        "1 while this node's subscriber connection to a Redis Cluster master is up.",
    );
    for shard in shards.iter() {
        let up = u8::from(shard.up);
        let _ = writeln!(
            out,
            "gateway_redis_shard_up{{shard=\"{}\"}} {up}",
            shard.addr
        );
    }
    header(
        out,
        "gateway_redis_shard_subscriptions",
        "gauge",
        "Redis channels this node holds on each Redis Cluster master.",
    );
    for shard in shards.iter() {
        let count = shard.subscriptions;
        let _ = writeln!(
            out,
            "gateway_redis_shard_subscriptions{{shard=\"{}\"}} {count}",
            shard.addr
        );
    }
    header(
        out,
        "gateway_redis_shard_publish_failures_total",
        "counter",
        "Broadcasts a Redis Cluster master did not take (by the master serving their slot when the failure was seen).",
    );
    let mut failures = (**stats.shard_failures.load()).clone();
    for shard in shards.iter() {
        failures.entry(shard.addr.clone()).or_default();
    }
    for (addr, count) in failures {
        let _ = writeln!(
            out,
            "gateway_redis_shard_publish_failures_total{{shard=\"{addr}\"}} {count}"
        );
    }
}

/// The other nodes' sessions of each app with a quota, as this node counts them against it.
fn render_peer_connections(out: &mut String, node: &Node) {
    header(
        out,
        "gateway_cluster_app_connections",
        "gauge",
        "WebSocket connections on the other nodes of each app with a max_connections quota, as their last heartbeats told this node.",
    );
    let apps = node
        .config
        .apps
        .iter()
        .zip(node.peer_app_connections.iter());
    for (app, value) in apps.filter(|(app, _)| app.max_connections > 0) {
        let _ = writeln!(
            out,
            "gateway_cluster_app_connections{{app=\"{}\"}} {}",
            app.id,
            gauge(value)
        );
    }
}

fn gauge(value: &AtomicI64) -> i64 {
    value.load(Relaxed)
}

/// Renders every metric. `latency` is the shards' fanout histograms merged (microseconds).
pub fn render(node: &Node, latency: &Histogram<u64>) -> String {
    let mut out = String::with_capacity(8 * 1024);
    render_sessions(&mut out, node);
    render_traffic(&mut out, node);
    render_webhooks(&mut out, node);
    render_http(&mut out, node);
    render_tls(&mut out, node);
    render_latency(&mut out, latency);
    if let Some(cluster) = &node.cluster {
        render_cluster(&mut out, &cluster.stats);
        render_peer_connections(&mut out, node);
    }
    render_process(&mut out, node);
    out
}

/// Sessions and sockets: open, limits, opened and closed.
fn render_sessions(out: &mut String, node: &Node) {
    header(
        out,
        "gateway_connections",
        "gauge",
        "Open WebSocket connections by shard and app.",
    );
    for (index, shard) in node.shards.iter().enumerate() {
        for (app, value) in node.config.apps.iter().zip(shard.stats.connections.iter()) {
            let _ = writeln!(
                out,
                "gateway_connections{{shard=\"{index}\",app=\"{}\"}} {}",
                app.id,
                gauge(value)
            );
        }
    }
    header(
        out,
        "gateway_max_connections",
        "gauge",
        "WebSocket sessions this node holds at once.",
    );
    let _ = writeln!(out, "gateway_max_connections {}", node.max_connections);
    header(
        out,
        "gateway_max_sockets",
        "gauge",
        "Sockets this node accepts at once: sessions plus a reserve for HTTP API requests.",
    );
    let _ = writeln!(out, "gateway_max_sockets {}", node.max_sockets());
    header(
        out,
        "gateway_open_sockets",
        "gauge",
        "Sockets open now, WebSocket and HTTP.",
    );
    let _ = writeln!(
        out,
        "gateway_open_sockets {}",
        node.open_sockets.load(Relaxed)
    );
    header(
        out,
        "gateway_input_held_bytes",
        "gauge",
        "Bytes held for client input not complete yet: WebSocket messages cut by a read, request bodies arriving.",
    );
    let _ = writeln!(out, "gateway_input_held_bytes {}", node.input_budget.used());
    header(
        out,
        "gateway_input_budget_bytes",
        "gauge",
        "The most the node holds for incomplete input (input_budget_bytes).",
    );
    let _ = writeln!(
        out,
        "gateway_input_budget_bytes {}",
        node.input_budget.limit()
    );
    per_shard(
        out,
        node,
        "gateway_connects_total",
        "WebSocket sessions opened.",
        |s| &s.connects,
    );
    per_shard_of_kind(
        out,
        node,
        "gateway_cluster_backlog",
        "gauge",
        "Membership and interest changes waiting for room in the Redis bridge's queue.",
        |s| &s.cluster_backlog,
    );
    per_shard_of_kind(
        out,
        node,
        "gateway_fanout_waiting",
        "gauge",
        "Writes waiting on a shard to be made in slices (broadcasts to wide channels, and what came after them): the subscribers each group of broadcasts to one channel had when queued.",
        |s| &s.fanout_waiting,
    );
    by_reason::<Disconnect>(
        out,
        node,
        "gateway_disconnects_total",
        "WebSocket sessions closed, by reason.",
        |s| &s.disconnects,
    );
}

/// Messages and bytes, both ways, and what was dropped.
fn render_traffic(out: &mut String, node: &Node) {
    per_shard(
        out,
        node,
        "gateway_messages_in_total",
        "Pusher messages received from clients.",
        |s| &s.messages_in,
    );
    per_shard(
        out,
        node,
        "gateway_messages_out_total",
        "Messages queued to subscribers.",
        |s| &s.messages_out,
    );
    per_shard(
        out,
        node,
        "gateway_bytes_in_total",
        "Bytes read from WebSocket clients.",
        |s| &s.bytes_in,
    );
    per_shard(
        out,
        node,
        "gateway_bytes_out_total",
        "Bytes written to WebSocket clients.",
        |s| &s.bytes_out,
    );
    per_shard(
        out,
        node,
        "gateway_slow_consumer_disconnects_total",
        "Clients closed with 4100 because their outbound queue was full.",
        |s| &s.slow_consumer_disconnects,
    );
    per_shard(
        out,
        node,
        "gateway_inbox_drops_total",
        "Cross-shard messages dropped because the shard's inbox was full.",
        |s| &s.inbox_drops,
    );
}

/// Webhook events by outcome, and retries.
fn render_webhooks(out: &mut String, node: &Node) {
    header(
        out,
        "gateway_webhook_events_total",
        "counter",
        "Webhook events by outcome: sent, cancelled (undone within the hold, or repeated), failed (given up after retries), dropped (the sender's queue was full).",
    );
    let webhooks = &node.webhook_stats;
    let dropped = summed(node, |s| &s.webhook_drops);
    for (outcome, value) in [
        ("sent", webhooks.sent.load(Relaxed)),
        ("cancelled", webhooks.cancelled.load(Relaxed)),
        ("failed", webhooks.failed.load(Relaxed)),
        ("dropped", dropped),
    ] {
        let _ = writeln!(
            out,
            "gateway_webhook_events_total{{outcome=\"{outcome}\"}} {value}"
        );
    }
    header(
        out,
        "gateway_webhook_retries_total",
        "counter",
        "Webhook requests that failed and were scheduled again.",
    );
    let _ = writeln!(
        out,
        "gateway_webhook_retries_total {}",
        webhooks.retries.load(Relaxed)
    );
}

/// HTTP requests by status, and refusals by reason.
fn render_http(out: &mut String, node: &Node) {
    header(
        out,
        "gateway_http_requests_total",
        "counter",
        "HTTP responses by status.",
    );
    for (slot, status) in HTTP_STATUSES
        .iter()
        .map(|s| s.to_string())
        .chain(["other".to_string()])
        .enumerate()
    {
        let total = summed(node, |s| &s.http_requests[slot]);
        let _ = writeln!(
            out,
            "gateway_http_requests_total{{status=\"{status}\"}} {total}"
        );
    }
    by_reason::<Rejection>(
        out,
        node,
        "gateway_rejected_total",
        "Bad input and limits answered with an error, by reason.",
        |s| &s.rejected,
    );
}

/// TLS handshakes, their failures, record errors and certificate reloads.
fn render_tls(out: &mut String, node: &Node) {
    per_shard(
        out,
        node,
        "gateway_tls_handshakes_total",
        "TLS handshakes completed.",
        |s| &s.tls_handshakes,
    );
    per_shard(
        out,
        node,
        "gateway_tls_record_errors_total",
        "TLS connections closed after the handshake for a record that failed authentication or broke the protocol.",
        |s| &s.tls_record_errors,
    );
    by_reason::<TlsFailure>(
        out,
        node,
        "gateway_tls_handshake_failures_total",
        "TLS handshakes that failed, by reason.",
        |s| &s.tls_failures,
    );
    if let Some(tls) = &node.tls {
        for (name, help, value) in [
            (
                "gateway_tls_cert_reloads_total",
                "Certificate reloads that took effect.",
                &tls.store.reloads,
            ),
            (
                "gateway_tls_cert_reload_failures_total",
                "Certificate reloads refused (the old one stayed).",
                &tls.store.reload_failures,
            ),
        ] {
            header(out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Relaxed));
        }
    }
}

/// Fanout latency, merged across shards.
fn render_latency(out: &mut String, latency: &Histogram<u64>) {
    let seconds = |quantile| latency.value_at_quantile(quantile) as f64 / 1e6;
    summary(
        out,
        "gateway_fanout_latency_seconds",
        "Time from publish to queued on a shard's subscribers.",
        &[
            ("0.5", seconds(0.5)),
            ("0.9", seconds(0.9)),
            ("0.99", seconds(0.99)),
            ("0.999", seconds(0.999)),
        ],
        (latency.mean() * latency.len() as f64 / 1e6, latency.len()),
    );
}

/// The node's lifecycle and how it runs.
fn render_process(out: &mut String, node: &Node) {
    header(out, "gateway_draining", "gauge", "1 while the node drains.");
    let _ = writeln!(out, "gateway_draining {}", u8::from(node.is_draining()));
    header(
        out,
        "gateway_uptime_seconds",
        "gauge",
        "Seconds since start.",
    );
    let _ = writeln!(
        out,
        "gateway_uptime_seconds {}",
        node.started.elapsed().as_secs()
    );
    header(out, "gateway_info", "gauge", "How this node runs.");
    let _ = writeln!(
        out,
        "gateway_info{{io_driver=\"{}\",shards=\"{}\",version=\"{}\"}} 1",
        node.io_driver,
        node.shards.len(),
        env!("CARGO_PKG_VERSION")
    );
}
