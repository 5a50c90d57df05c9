//! `partial-message`, `trickle` and `partial-body`: each connection sends part of one WebSocket
//! message or API request body and holds it. Counted: how the server ended each connection and
//! how long after the first byte of the unfinished input, how many it still held when the hold
//! ended, and its memory before, at the end of the hold and after the clients left.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;

use super::report::{endings, UnfinishedReport};
use super::wire::{
    event_body, masked_text_frame, message_payload, request_head, response_status, server_frame,
    ServerFrame,
};
use super::{ramp, HostileReport, ProgressLine, Settling};
use crate::cause::FailureCause;
use crate::histogram::LatencyHistogram;
use crate::http::HttpEndpoint;
use crate::metrics::resident_kib;
use crate::net::ClientStream;
use crate::plan::{ApiTarget, Common, UnfinishedInput, UnfinishedPlan};
use crate::pusher::{Endpoint, PusherSocket};
use crate::report::{Report, ServerMemory};
use crate::run::{base_report, unix_millis, RunError};
use crate::signing::signed_query;
use crate::source_ips::nth_source;
use crate::tally::{count_cause, CauseCounts};

/// How long after the clients have closed the server's memory is read again.
pub const AFTER_CLOSE_WAIT: Duration = Duration::from_secs(5);
const READ_CHUNK_BYTES: usize = 1024;

/// Where the connections go, and how the server answers there.
enum Target {
    /// Upgraded, `pusher:connection_established` awaited; answered with a close frame.
    WebSocket(Endpoint),
    /// Connected; answered with an HTTP response.
    Api(Rc<HttpEndpoint>),
}

impl Target {
    async fn open(
        &self,
        source: Option<std::net::IpAddr>,
        step_timeout: Duration,
    ) -> Result<ClientStream, FailureCause> {
        match self {
            Target::WebSocket(endpoint) => {
                let opened = Box::pin(PusherSocket::open(endpoint, source, step_timeout)).await?;
                Ok(opened.socket.into_stream())
            }
            Target::Api(endpoint) => {
                let tcp = ClientStream::connect_tcp(endpoint.address, source, step_timeout).await?;
                timeout(step_timeout, ClientStream::wrap(tcp, endpoint.tls.as_ref()))
                    .await
                    .map_err(|_| FailureCause::Timeout)?
            }
        }
    }

    /// Reads until the server ends the connection; returns how (a close code, a status, ...).
    async fn answer(&self, reader: &mut (impl AsyncRead + Unpin)) -> FailureCause {
        let mut received = Vec::new();
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            let read = match reader.read(&mut chunk).await {
                Ok(0) => return FailureCause::EndOfStream,
                Ok(read) => read,
                Err(error) => return FailureCause::from_io(&error),
            };
            received.extend_from_slice(&chunk[..read]);
            let answered = match self {
                Target::WebSocket(_) => close_in(&mut received),
                Target::Api(_) => {
                    response_status(&received).map(|status| status.map(FailureCause::HttpStatus))
                }
            };
            match answered {
                Ok(Some(cause)) => return cause,
                Ok(None) => {}
                Err(cause) => return cause,
            }
        }
    }
}

/// The close among the frames in `received`, dropping the frames before it.
fn close_in(received: &mut Vec<u8>) -> Result<Option<FailureCause>, FailureCause> {
    while let Some((frame, length)) = server_frame(received)? {
        received.drain(..length);
        match frame {
            ServerFrame::Close(Some(code)) => return Ok(Some(FailureCause::CloseCode(code))),
            ServerFrame::Close(None) => return Ok(Some(FailureCause::CloseWithoutCode)),
            ServerFrame::Other => {}
        }
    }
    Ok(None)
}

/// The bytes of the unfinished input, shared by every connection.
struct Unfinished {
    bytes: Vec<u8>,
    /// Sent at once.
    first_part: usize,
    /// Then one more byte every this long, up to all but the last.
    trickle: Option<Duration>,
    /// The payload or body size, for the report.
    size: u64,
}

impl Unfinished {
    fn new(input: &UnfinishedInput) -> Self {
        match input {
            UnfinishedInput::Message { bytes, trickle } => {
                let payload = message_payload(*bytes as usize);
                let frame = masked_text_frame(&payload);
                let header = frame.len() - payload.len();
                Unfinished {
                    first_part: match trickle {
                        Some(_) => header + 1,
                        None => frame.len() - 1,
                    },
                    bytes: frame,
                    trickle: *trickle,
                    size: *bytes,
                }
            }
            UnfinishedInput::Body { bytes, api } => {
                let body = event_body("hostile", *bytes as usize);
                let path = signed_events_path(api, &body);
                let mut request =
                    request_head(&api.endpoint.authority, &path, body.len()).into_bytes();
                request.extend_from_slice(&body);
                Unfinished {
                    first_part: request.len() - 1,
                    bytes: request,
                    trickle: None,
                    size: *bytes,
                }
            }
        }
    }

    /// Bytes of the message or body itself in the first part.
    fn first_part_of_input(&self) -> u64 {
        self.size - (self.bytes.len() - self.first_part) as u64
    }

    async fn send(&self, writer: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<()> {
        writer.write_all(&self.bytes[..self.first_part]).await?;
        writer.flush().await?;
        let Some(interval) = self.trickle else {
            return Ok(());
        };
        for byte in self.first_part..self.bytes.len() - 1 {
            tokio::time::sleep(interval).await;
            writer.write_all(&self.bytes[byte..=byte]).await?;
            writer.flush().await?;
        }
        Ok(())
    }
}

/// The path and signed query of `POST /apps/{id}/events` with `body`: the request would be
/// accepted, size allowing, if the body ever arrived whole.
fn signed_events_path(api: &ApiTarget, body: &[u8]) -> String {
    let credentials = &api.credentials;
    let path = format!("/apps/{}/events", credentials.app_id);
    let query = signed_query(credentials, "POST", &path, &[], body, unix_millis() / 1000);
    format!("{path}?{query}")
}

/// What the connections counted.
struct Hold {
    settling: Settling,
    opened: Cell<u64>,
    /// Opened and not ended by the server.
    open: Cell<u64>,
    failures: RefCell<CauseCounts>,
    /// Time from the first byte of the unfinished input to the end, by how it ended.
    endings: RefCell<BTreeMap<String, LatencyHistogram>>,
}

impl Hold {
    fn failed(&self, cause: &FailureCause) {
        count_cause(&mut self.failures.borrow_mut(), cause);
        self.settling.settle();
    }

    fn opened(&self) {
        self.opened.set(self.opened.get() + 1);
        self.open.set(self.open.get() + 1);
        self.settling.settle();
    }

    fn ended(&self, how: &FailureCause, after: Duration) {
        self.open.set(self.open.get() - 1);
        self.endings
            .borrow_mut()
            .entry(how.key())
            .or_default()
            .record(after);
    }

    fn closed(&self) -> u64 {
        self.opened.get() - self.open.get()
    }
}

/// What every connection shares.
struct Shared {
    target: Target,
    unfinished: Unfinished,
    hold: Hold,
    source_ips: Vec<std::net::IpAddr>,
    step_timeout: Duration,
}

pub async fn run(common: Common, rate: f64, plan: UnfinishedPlan) -> Result<Report, RunError> {
    let started_unix_ms = unix_millis();
    let started = Instant::now();
    let rss_before = common.server_pid.map(resident_kib).transpose()?;
    let unfinished = Unfinished::new(&plan.input);
    let mode: fn(UnfinishedReport) -> HostileReport = match &plan.input {
        UnfinishedInput::Message { trickle: None, .. } => HostileReport::PartialMessage,
        UnfinishedInput::Message {
            trickle: Some(_), ..
        } => HostileReport::Trickle,
        UnfinishedInput::Body { .. } => HostileReport::PartialBody,
    };
    let target = match &plan.input {
        UnfinishedInput::Message { .. } => Target::WebSocket(Endpoint::new(&common.target)?),
        UnfinishedInput::Body { api, .. } => Target::Api(api.endpoint.clone()),
    };
    let shared = Rc::new(Shared {
        target,
        unfinished,
        hold: Hold {
            settling: Settling::new(plan.connections),
            opened: Cell::new(0),
            open: Cell::new(0),
            failures: RefCell::new(CauseCounts::new()),
            endings: RefCell::new(BTreeMap::new()),
        },
        source_ips: common.source_ips.clone(),
        step_timeout: common.step_timeout,
    });
    let progress = ProgressLine::start(common.show_progress, {
        let shared = shared.clone();
        move || {
            let hold = &shared.hold;
            format!(
                "opened {} of {}  failed {}  closed by the server {}  held {}",
                hold.opened.get(),
                hold.settling.total,
                hold.failures.borrow().values().sum::<u64>(),
                hold.closed(),
                hold.open.get()
            )
        }
    });
    let (stop_sender, stop) = watch::channel(false);
    let in_flight = Arc::new(Semaphore::new(common.max_in_flight));
    let mut tasks = JoinSet::new();
    ramp(
        &shared.hold.settling,
        rate,
        &in_flight,
        &mut tasks,
        |index, permit| hold_one(shared.clone(), index, permit, stop.clone()),
    )
    .await;
    tokio::time::sleep(plan.hold).await;
    let held = shared.hold.open.get();
    let rss_held = common.server_pid.map(resident_kib).transpose()?;
    // Fails only when no connection is left to tell; each one closes as it hears.
    let _ = stop_sender.send(true);
    while tasks.join_next().await.is_some() {}
    drop(progress);
    let rss_after_close = match common.server_pid {
        Some(pid) => {
            tokio::time::sleep(AFTER_CLOSE_WAIT).await;
            Some(resident_kib(pid)?)
        }
        None => None,
    };
    let report = unfinished_report(&plan, &shared, held, rss_after_close);
    let mut full = base_report(&common, "hostile", started_unix_ms, started);
    full.clean = report.failures.is_empty() && report.opened == report.connections;
    full.server_memory = match (common.server_pid, rss_before, rss_held) {
        (Some(pid), Some(before), Some(after)) => {
            Some(ServerMemory::new(pid, before, after, Some(held)))
        }
        _ => None,
    };
    full.hostile = Some(mode(report));
    Ok(full)
}

fn unfinished_report(
    plan: &UnfinishedPlan,
    shared: &Shared,
    held: u64,
    rss_after_close_kib: Option<u64>,
) -> UnfinishedReport {
    let hold = &shared.hold;
    let endings = endings(&hold.endings.borrow());
    UnfinishedReport {
        connections: plan.connections,
        bytes: shared.unfinished.size,
        sent_bytes: shared.unfinished.first_part_of_input(),
        interval_ms: shared
            .unfinished
            .trickle
            .map(|interval| interval.as_millis() as u64),
        hold_seconds: plan.hold.as_secs_f64(),
        opened: hold.opened.get(),
        failures: hold.failures.take(),
        closed_by_server: endings.values().map(|ending| ending.count).sum(),
        endings,
        held,
        rss_after_close_kib,
    }
}

/// One connection: open, send the unfinished part, then wait for the server's answer or the
/// end of the hold, whichever comes first. Returning drops the connection.
async fn hold_one(
    shared: Rc<Shared>,
    index: u64,
    permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let source = nth_source(&shared.source_ips, index);
    let opened = shared.target.open(source, shared.step_timeout).await;
    drop(permit);
    let stream = match opened {
        Ok(stream) => stream,
        Err(cause) => return shared.hold.failed(&cause),
    };
    shared.hold.opened();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let first_byte = Instant::now();
    let sending = shared.unfinished.send(&mut writer);
    let answer = shared.target.answer(&mut reader);
    let stopped = stop.wait_for(|stopped| *stopped);
    tokio::pin!(sending, answer, stopped);
    let mut sent = false;
    loop {
        tokio::select! {
            biased;
            how = &mut answer => return shared.hold.ended(&how, first_byte.elapsed()),
            _ = &mut stopped => return,
            // A failed write is not counted: the read that follows says how the server ended.
            _ = &mut sending, if !sent => sent = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::ApiCredentials;
    use crate::target::{Expect, Url};

    #[test]
    fn all_but_the_last_byte_goes_at_once_unless_trickled() {
        let whole = Unfinished::new(&UnfinishedInput::Message {
            bytes: 15_000,
            trickle: None,
        });
        assert_eq!(whole.bytes.len(), 15_000 + 8);
        assert_eq!(whole.first_part, whole.bytes.len() - 1);
        assert_eq!(whole.first_part_of_input(), 14_999);
        let trickled = Unfinished::new(&UnfinishedInput::Message {
            bytes: 65_536,
            trickle: Some(Duration::from_millis(10)),
        });
        assert_eq!(trickled.first_part, 14 + 1, "the header and one byte");
        assert_eq!(trickled.first_part_of_input(), 1);
    }

    #[test]
    fn the_body_follows_a_signed_head_that_announces_all_of_it() {
        let url = Url::parse("http://127.0.0.1:7201", Expect::Http).expect("a URL");
        let api = ApiTarget {
            endpoint: Rc::new(HttpEndpoint::new(&url, None, false).expect("an endpoint")),
            credentials: Rc::new(ApiCredentials {
                app_id: "1".into(),
                key: "app-key".into(),
                secret: "app-secret".into(),
            }),
        };
        let body = Unfinished::new(&UnfinishedInput::Body { bytes: 1000, api });
        let text = String::from_utf8(body.bytes.clone()).expect("text");
        let (head, rest) = text.split_once("\r\n\r\n").expect("a head");
        assert!(
            head.starts_with("POST /apps/1/events?auth_key=app-key&"),
            "{head}"
        );
        assert!(head.contains("&body_md5="), "{head}");
        assert!(head.ends_with("Content-Length: 1000"), "{head}");
        assert_eq!(rest.len(), 1000);
        assert_eq!(body.first_part, body.bytes.len() - 1);
        assert_eq!(body.first_part_of_input(), 999);
    }

    #[test]
    fn the_close_is_found_behind_other_frames() {
        let mut received = [&[0x81, 2][..], b"{}", &[0x88, 2, 0x03, 0xf5]].concat();
        assert_eq!(
            close_in(&mut received[..5].to_vec()),
            Ok(None),
            "not whole yet"
        );
        assert_eq!(
            close_in(&mut received),
            Ok(Some(FailureCause::CloseCode(1013)))
        );
    }
}
