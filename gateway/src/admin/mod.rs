//! The admin port: /metrics, /ready, /health and POST /drain, served by one thread of its own
//! so that scrapes never take time from the shards.

pub mod metrics;
pub mod stats;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use futures_channel::oneshot;
use hdrhistogram::Histogram;
use monoio::net::TcpStream;

use crate::bus::ShardMessage;
use crate::http::{RequestHead, Response};
use crate::node::Node;
use crate::shard::io;

const SHARD_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin port on the current thread until its listener is shut down.
pub fn run(node: Arc<Node>, listener: std::net::TcpListener) -> std::io::Result<()> {
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    runtime.block_on(async move {
        let listener = monoio::net::TcpListener::from_std(listener)?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    monoio::spawn(serve(node.clone(), stream));
                }
                // Shut down as the process exits (the listener no longer listens).
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
                Err(_) => {}
            }
        }
    })
}

async fn serve(node: Arc<Node>, stream: TcpStream) {
    let fd = stream.as_raw_fd();
    let read = async {
        let mut buf = Vec::new();
        loop {
            if let Ok(Some((head, _))) = RequestHead::parse(&buf, 8 * 1024) {
                return Some(head);
            }
            match io::recv_into(&stream, fd, &mut buf, 4096).await {
                Ok(n) if n > 0 && buf.len() <= 8 * 1024 => {}
                _ => return None,
            }
        }
    };
    let Ok(Some(head)) = monoio::time::timeout(REQUEST_TIMEOUT, read).await else {
        return;
    };
    let response = match (head.method.as_str(), head.path()) {
        ("GET", "/metrics") => {
            let latency = merged_latency(&node).await;
            let mut response = Response::json(200, metrics::render(&node, &latency));
            response.content_type = "text/plain; version=0.0.4; charset=utf-8";
            response
        }
        ("GET", "/ready") if node.is_ready() => Response::text(200, "ready"),
        ("GET", "/ready") => Response::text(
            503,
            if node.is_draining() {
                "draining"
            } else {
                "starting"
            },
        ),
        ("GET", "/health") => Response::json(200, node.health()),
        ("POST", "/drain") => {
            if node.start_drain() {
                tracing::info!("drain requested on the admin port");
            }
            Response::text(202, "draining")
        }
        _ => Response::text(
            404,
            "admin routes: GET /metrics, /ready, /health; POST /drain",
        ),
    };
    let _ = io::send_all(&stream, fd, &response.to_bytes(false)).await;
}

/// Asks every shard for its fanout latency histogram and adds them up.
async fn merged_latency(node: &Node) -> Histogram<u64> {
    let mut merged = crate::admin::stats::latency_histogram();
    let mut replies = Vec::new();
    for shard in &node.shards {
        let (reply, receiver) = oneshot::channel();
        if shard.inbox.send(ShardMessage::Latency { reply }).is_ok() {
            replies.push(receiver);
        }
    }
    for receiver in replies {
        if let Ok(Ok(histogram)) = monoio::time::timeout(SHARD_ANSWER_TIMEOUT, receiver).await {
            let _ = merged.add(histogram);
        }
    }
    merged
}
