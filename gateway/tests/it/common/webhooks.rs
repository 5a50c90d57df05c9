//! A webhook endpoint on loopback that checks every request's signature, for the tests of
//! webhooks on one node and across a cluster.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use gateway::protocol::signature;
use serde_json::Value;

use super::{KEY, SECRET};

/// One webhook request as received, its signature checked.
#[derive(Debug)]
pub struct Hook {
    pub events: Vec<Value>,
    pub at: Instant,
}

/// A webhook endpoint on loopback. Answers 500 to the first `failures` requests, 200 after.
pub struct Receiver {
    port: u16,
    hooks: mpsc::Receiver<Hook>,
}

impl Receiver {
    pub fn start(failures: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (sender, hooks) = mpsc::channel();
        let failures = Arc::new(AtomicUsize::new(failures));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sender = sender.clone();
                let failures = failures.clone();
                std::thread::spawn(move || serve(stream, &sender, &failures));
            }
        });
        Receiver { port, hooks }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/pusher/webhooks", self.port)
    }

    /// Every event received until `quiet` passes without a request, with when it came.
    pub fn collect(&self, quiet: Duration) -> Vec<(Value, Instant)> {
        let mut events = Vec::new();
        while let Ok(hook) = self.hooks.recv_timeout(quiet) {
            events.extend(hook.events.into_iter().map(|e| (e, hook.at)));
        }
        events
    }

    /// Waits for the next request's events.
    pub fn next(&self) -> Hook {
        self.hooks
            .recv_timeout(Duration::from_secs(10))
            .expect("a webhook arrives")
    }
}

/// Serves one keep-alive connection: reads requests, checks them, answers.
fn serve(stream: TcpStream, hooks: &mpsc::Sender<Hook>, failures: &AtomicUsize) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        assert!(
            request_line.starts_with("POST /pusher/webhooks "),
            "{request_line}"
        );
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("header {name} missing"))
        };
        let length: usize = header("content-length").parse().unwrap();
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let body = String::from_utf8(body).unwrap();
        assert_eq!(header("content-type"), "application/json");
        assert_eq!(header("x-pusher-key"), KEY);
        assert!(
            signature::verify(SECRET, &body, &header("x-pusher-signature")),
            "signature of {body}"
        );
        let fail = failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let status = if fail {
            "500 Internal Server Error"
        } else {
            "200 OK"
        };
        let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok");
        writer.write_all(answer.as_bytes()).unwrap();
        if fail {
            continue;
        }
        let payload: Value = serde_json::from_str(&body).unwrap();
        let sent_ms = payload["time_ms"].as_u64().expect("time_ms");
        let now_ms = super::now_secs() * 1000;
        assert!(sent_ms.abs_diff(now_ms) < 60_000, "time_ms {sent_ms}");
        let events = payload["events"].as_array().unwrap().clone();
        let _ = hooks.send(Hook {
            events,
            at: Instant::now(),
        });
    }
}
