//! `many-channels`: connections occupy many public channels, then the channel list (with
//! subscription counts) is queried one request after the other while bystanders receive events
//! published at a steady rate. The bystanders' delivery latency during the queries is set
//! against a quiet period of the same length just before them.

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;

use super::report::ManyChannelsReport;
use super::{ramp, HostileReport, ProgressLine, Settling};
use crate::cause::FailureCause;
use crate::histogram::LatencyHistogram;
use crate::http::{HttpConnection, HttpEndpoint, HttpError, HttpResponse};
use crate::metrics::resident_kib;
use crate::payload::{unix_micros, ReceivedStamp};
use crate::plan::{Common, ManyChannelsPlan};
use crate::publish::{publish, PublishPlan};
use crate::pusher::{Endpoint, Opened, PusherSocket, ServerEvent};
use crate::report::{round3, Report, ServerMemory};
use crate::run::{base_report, unix_millis, RunError};
use crate::signing::{signed_query, ApiCredentials};
use crate::source_ips::nth_source;
use crate::tally::{count_cause, count_key, merge_causes, CauseCounts};
use crate::worker::{serve_until_stopped, CLOSE_WAIT};

/// The quiet period before the queries lasts the probe's time for every query, times this, so
/// that it is at least as long as the queries turn out to be; and at least `MIN_QUIET`.
pub const QUIET_MARGIN: f64 = 1.5;
pub const MIN_QUIET: Duration = Duration::from_secs(2);
/// Longest wait after the queries for the events published during them.
pub const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// Publishing runs in stretches of this long until the queries are over.
const PUBLISH_STRETCH: Duration = Duration::from_millis(500);
const DRAIN_POLL: Duration = Duration::from_millis(50);
const BYSTANDER_EVENT: &str = "hostile-bystander";

/// What the connections counted.
struct Occupancy {
    occupiers: Settling,
    bystanders: Settling,
    /// Occupiers connected.
    connected: Cell<u64>,
    /// Occupiers and bystanders subscribed and still connected.
    staying: Cell<u64>,
    subscribed: Cell<u64>,
    bystanders_subscribed: Cell<u64>,
    /// Refused subscriptions by the `type` of their `pusher:subscription_error`.
    refused: RefCell<CauseCounts>,
    failures: RefCell<CauseCounts>,
    drops: RefCell<CauseCounts>,
    /// Unix microseconds each received event was sent at, and its latency.
    deliveries: RefCell<Vec<(u64, u64)>>,
}

impl Occupancy {
    fn failed(&self, settling: &Settling, cause: &FailureCause) {
        count_cause(&mut self.failures.borrow_mut(), cause);
        settling.settle();
    }

    fn refused(&self) -> u64 {
        self.refused.borrow().values().sum()
    }

    /// Counts a bystander's test event; returns whether `text` was one.
    fn receive(&self, text: &str) -> bool {
        let Some(event) = ServerEvent::parse(text) else {
            return false;
        };
        if event.event != BYSTANDER_EVENT {
            return false;
        }
        let stamp = event
            .data_string()
            .and_then(|data| serde_json::from_str::<ReceivedStamp>(&data).ok());
        if let Some(stamp) = stamp {
            let latency = unix_micros().saturating_sub(stamp.sent_us);
            self.deliveries.borrow_mut().push((stamp.sent_us, latency));
        }
        true
    }
}

/// The channels, and which occupier subscribes to which.
struct Layout {
    prefix: String,
    channels: u64,
    per_connection: u64,
}

impl Layout {
    fn channel(&self, number: u64) -> String {
        format!("{}-{number}", self.prefix)
    }

    fn bystander_channel(&self) -> String {
        format!("{}-bystanders", self.prefix)
    }

    /// The channels occupier `index` subscribes to.
    fn channels_of(&self, index: u64) -> Range<u64> {
        let first = index * self.per_connection;
        first..(first + self.per_connection).min(self.channels)
    }
}

/// What every connection shares.
struct Shared {
    endpoint: Endpoint,
    source_ips: Vec<std::net::IpAddr>,
    step_timeout: Duration,
    layout: Layout,
    occupancy: Occupancy,
}

impl Shared {
    /// Opens connection `index`; the bystanders come after the occupiers in the numbering.
    async fn open(&self, index: u64) -> Result<Opened, FailureCause> {
        let source = nth_source(&self.source_ips, index);
        Box::pin(PusherSocket::open(
            &self.endpoint,
            source,
            self.step_timeout,
        ))
        .await
    }
}

/// The channel list queries, and how they went.
#[derive(Default)]
struct Queries {
    statuses: CauseCounts,
    latency: LatencyHistogram,
    largest_response: usize,
    /// The body of the last successful answer.
    last_listing: Option<Vec<u8>>,
    done: Rc<Cell<u64>>,
}

/// The publishing of every stretch, added up.
#[derive(Default)]
struct Published {
    attempted: u64,
    accepted: u64,
    failures: CauseCounts,
}

/// Where the publisher and the queries go, and what they count as they go.
struct Api {
    endpoint: Rc<HttpEndpoint>,
    credentials: Rc<ApiCredentials>,
    step_timeout: Duration,
    published_so_far: Rc<Cell<u64>>,
}

/// What the probe, the publishing and the queries gave; times in unix microseconds.
struct Measured {
    probe: Duration,
    published: Published,
    queries: Queries,
    publish_started: u64,
    queries_from: u64,
    queries_to: u64,
}

pub async fn run(common: Common, rate: f64, plan: ManyChannelsPlan) -> Result<Report, RunError> {
    let started_unix_ms = unix_millis();
    let started = Instant::now();
    let rss_before = common.server_pid.map(resident_kib).transpose()?;
    let shared = Rc::new(Shared {
        endpoint: Endpoint::new(&common.target)?,
        source_ips: common.source_ips.clone(),
        step_timeout: common.step_timeout,
        layout: Layout {
            prefix: plan.prefix.clone(),
            channels: plan.channels,
            per_connection: plan.per_connection,
        },
        occupancy: Occupancy {
            occupiers: Settling::new(plan.occupiers()),
            bystanders: Settling::new(plan.bystanders),
            connected: Cell::new(0),
            staying: Cell::new(0),
            subscribed: Cell::new(0),
            bystanders_subscribed: Cell::new(0),
            refused: RefCell::new(CauseCounts::new()),
            failures: RefCell::new(CauseCounts::new()),
            drops: RefCell::new(CauseCounts::new()),
            deliveries: RefCell::new(Vec::new()),
        },
    });
    let api = Api {
        endpoint: plan.api.endpoint.clone(),
        credentials: plan.api.credentials.clone(),
        step_timeout: common.step_timeout,
        published_so_far: Rc::new(Cell::new(0)),
    };
    let queries = Queries::default();
    let progress = ProgressLine::start(common.show_progress, {
        let shared = shared.clone();
        let published = api.published_so_far.clone();
        let queried = queries.done.clone();
        move || {
            let occupancy = &shared.occupancy;
            format!(
                "occupiers {} of {}  channels {} (refused {})  bystanders {}  published {}  \
                 delivered {}  queries {}",
                occupancy.connected.get(),
                occupancy.occupiers.total,
                occupancy.subscribed.get(),
                occupancy.refused(),
                occupancy.bystanders_subscribed.get(),
                published.get(),
                occupancy.deliveries.borrow().len(),
                queried.get()
            )
        }
    });
    let (stop_sender, stop) = watch::channel(false);
    let mut tasks = JoinSet::new();
    connect_all(&shared, rate, common.max_in_flight, &mut tasks, &stop).await;
    let measured = measure(&shared, &api, plan.publish_rate, plan.queries, queries).await;
    let occupancy = &shared.occupancy;
    let expected = measured.published.accepted * occupancy.bystanders_subscribed.get();
    let drain_end = Instant::now() + DRAIN_WAIT;
    while (occupancy.deliveries.borrow().len() as u64) < expected && Instant::now() < drain_end {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let rss_loaded = common.server_pid.map(resident_kib).transpose()?;
    let staying = occupancy.staying.get();
    // Fails only when no connection is left to tell.
    let _ = stop_sender.send(true);
    let closing = async { while tasks.join_next().await.is_some() {} };
    let _ = timeout(CLOSE_WAIT + Duration::from_secs(1), closing).await;
    tasks.abort_all();
    drop(progress);

    let report = many_channels_report(&shared, &plan, measured);
    let mut full = base_report(&common, "hostile", started_unix_ms, started);
    full.clean = report.failures.is_empty()
        && report.drops.is_empty()
        && report.connected == report.connections
        && report.bystanders_subscribed == report.bystanders
        && report.publish_failures.is_empty()
        && report.deliveries == report.expected_deliveries
        && report.query_statuses.get("http_200") == Some(&report.queries);
    full.server_memory = match (common.server_pid, rss_before, rss_loaded) {
        (Some(pid), Some(before), Some(after)) => {
            Some(ServerMemory::new(pid, before, after, Some(staying)))
        }
        _ => None,
    };
    full.hostile = Some(HostileReport::ManyChannels(Box::new(report)));
    Ok(full)
}

/// Opens the occupiers, then the bystanders, each group at `rate`, and returns once every one
/// has subscribed or failed.
async fn connect_all(
    shared: &Rc<Shared>,
    rate: f64,
    max_in_flight: usize,
    tasks: &mut JoinSet<()>,
    stop: &watch::Receiver<bool>,
) {
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let occupancy = &shared.occupancy;
    ramp(
        &occupancy.occupiers,
        rate,
        &in_flight,
        tasks,
        |index, permit| occupy(shared.clone(), index, permit, stop.clone()),
    )
    .await;
    let occupiers = occupancy.occupiers.total;
    ramp(
        &occupancy.bystanders,
        rate,
        &in_flight,
        tasks,
        |index, permit| bystand(shared.clone(), occupiers + index, permit, stop.clone()),
    )
    .await;
}

/// Times a probe query, then publishes to the bystanders through a quiet period sized on the
/// probe and through the queries, which go one after the other.
async fn measure(
    shared: &Shared,
    api: &Api,
    publish_rate: f64,
    count: u64,
    mut queries: Queries,
) -> Measured {
    let mut connection = None;
    let probe = match query(api, &mut connection).await {
        Ok((_, took)) => took,
        Err(_) => api.step_timeout,
    };
    let quiet = MIN_QUIET.max(probe.mul_f64(QUIET_MARGIN * count as f64));
    let publishing = Cell::new(true);
    let publish_started = unix_micros();
    let stretch = || PublishPlan {
        endpoint: api.endpoint.clone(),
        credentials: api.credentials.clone(),
        event: BYSTANDER_EVENT.into(),
        channels: vec![shared.layout.bystander_channel()],
        rate: publish_rate,
        duration: PUBLISH_STRETCH,
        connections: 1,
        payload_bytes: 0,
        step_timeout: api.step_timeout,
        attempted: api.published_so_far.clone(),
    };
    let querying = async {
        tokio::time::sleep(quiet).await;
        let from = unix_micros();
        for _ in 0..count {
            queries.record(query(api, &mut connection).await);
        }
        publishing.set(false);
        (from, unix_micros())
    };
    let (published, (queries_from, queries_to)) =
        tokio::join!(publish_while(stretch, &publishing), querying);
    Measured {
        probe,
        published,
        queries,
        publish_started,
        queries_from,
        queries_to,
    }
}

fn many_channels_report(
    shared: &Shared,
    plan: &ManyChannelsPlan,
    measured: Measured,
) -> ManyChannelsReport {
    let occupancy = &shared.occupancy;
    let Measured {
        probe,
        published,
        queries,
        publish_started,
        queries_from,
        queries_to,
    } = measured;
    let query_micros = queries_to - queries_from;
    let quiet_micros = query_micros.min(queries_from - publish_started);
    let (quiet_latency, during_latency) = split_deliveries(
        &occupancy.deliveries.borrow(),
        queries_from - quiet_micros,
        queries_from,
        queries_to,
    );
    let bystanders_subscribed = occupancy.bystanders_subscribed.get();
    ManyChannelsReport {
        channels: plan.channels,
        per_connection: plan.per_connection,
        connections: plan.occupiers(),
        connected: occupancy.connected.get(),
        subscribed: occupancy.subscribed.get(),
        refused: occupancy.refused.take(),
        failures: occupancy.failures.take(),
        drops: occupancy.drops.take(),
        bystanders: plan.bystanders,
        bystanders_subscribed,
        publish_rate_target: plan.publish_rate,
        publishes_attempted: published.attempted,
        publishes_accepted: published.accepted,
        publish_failures: published.failures,
        expected_deliveries: published.accepted * bystanders_subscribed,
        deliveries: occupancy.deliveries.borrow().len() as u64,
        probe_ms: round3(probe.as_secs_f64() * 1000.0),
        queries: plan.queries,
        query_latency_ms: queries.latency.summary(),
        response_bytes: queries.largest_response as u64,
        channels_listed: queries.last_listing.as_deref().and_then(channels_listed),
        query_statuses: queries.statuses,
        quiet_seconds: round3(quiet_micros as f64 / 1e6),
        query_seconds: round3(query_micros as f64 / 1e6),
        quiet_latency_ms: quiet_latency.summary(),
        during_queries_latency_ms: during_latency.summary(),
    }
}

impl Queries {
    fn record(&mut self, outcome: Result<(HttpResponse, Duration), HttpError>) {
        self.done.set(self.done.get() + 1);
        match outcome {
            Ok((response, took)) => {
                count_key(&mut self.statuses, format!("http_{}", response.status));
                self.latency.record(took);
                self.largest_response = self.largest_response.max(response.body.len());
                if response.status == 200 {
                    self.last_listing = Some(response.body);
                }
            }
            Err(error) => count_key(&mut self.statuses, error.cause_key()),
        }
    }
}

/// One signed `GET /apps/{id}/channels?info=subscription_count` on `connection` (opened when
/// there is none); answers the response and the time from request to response.
async fn query(
    api: &Api,
    connection: &mut Option<HttpConnection>,
) -> Result<(HttpResponse, Duration), HttpError> {
    let open = match connection.take() {
        Some(open) => connection.insert(open),
        None => connection.insert(HttpConnection::open(&api.endpoint, api.step_timeout).await?),
    };
    let credentials = &api.credentials;
    let path = format!("/apps/{}/channels", credentials.app_id);
    let extra = [("info", "subscription_count")];
    let query = signed_query(credentials, "GET", &path, &extra, b"", unix_millis() / 1000);
    let path_and_query = format!("{path}?{query}");
    let sent = Instant::now();
    let answered = open
        .request(&api.endpoint, "GET", &path_and_query, b"", api.step_timeout)
        .await;
    let took = sent.elapsed();
    match answered {
        Ok(response) => {
            if !response.reusable {
                *connection = None;
            }
            Ok((response, took))
        }
        Err(error) => {
            *connection = None;
            Err(error)
        }
    }
}

/// Publishes in stretches while `publishing` holds; returns what every stretch did.
async fn publish_while(stretch: impl Fn() -> PublishPlan, publishing: &Cell<bool>) -> Published {
    let mut published = Published::default();
    while publishing.get() {
        let outcome = publish(stretch()).await;
        published.attempted += outcome.attempted;
        published.accepted += outcome.accepted;
        merge_causes(&mut published.failures, &outcome.failures);
    }
    published
}

/// How many channels a channel list names.
fn channels_listed(body: &[u8]) -> Option<u64> {
    let listing: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(listing.get("channels")?.as_object()?.len() as u64)
}

/// The latencies of the events sent in `[quiet_from, queries_from)` and in
/// `[queries_from, queries_to)`, from `(sent, latency)` pairs in microseconds.
fn split_deliveries(
    deliveries: &[(u64, u64)],
    quiet_from: u64,
    queries_from: u64,
    queries_to: u64,
) -> (LatencyHistogram, LatencyHistogram) {
    let mut quiet = LatencyHistogram::default();
    let mut during = LatencyHistogram::default();
    for &(sent, latency) in deliveries {
        if (quiet_from..queries_from).contains(&sent) {
            quiet.record_micros(latency);
        } else if (queries_from..queries_to).contains(&sent) {
            during.record_micros(latency);
        }
    }
    (quiet, during)
}

/// An occupier: subscribes to its channels all at once, then stays until told to stop.
async fn occupy(
    shared: Rc<Shared>,
    index: u64,
    permit: OwnedSemaphorePermit,
    stop: watch::Receiver<bool>,
) {
    let occupancy = &shared.occupancy;
    let opened = shared.open(index).await;
    let Opened {
        mut socket,
        activity_timeout,
        ..
    } = match opened {
        Ok(opened) => opened,
        Err(cause) => return occupancy.failed(&occupancy.occupiers, &cause),
    };
    occupancy.connected.set(occupancy.connected.get() + 1);
    let channels = shared.layout.channels_of(index);
    let subscribed = Box::pin(subscribe_all(&shared, &mut socket, channels)).await;
    drop(permit);
    if let Err(cause) = subscribed {
        return occupancy.failed(&occupancy.occupiers, &cause);
    }
    occupancy.occupiers.settle();
    stay(&shared, socket, activity_timeout, stop, |_| false).await;
}

/// Sends every subscription, then reads until each has been answered.
async fn subscribe_all(
    shared: &Shared,
    socket: &mut PusherSocket,
    channels: Range<u64>,
) -> Result<(), FailureCause> {
    let occupancy = &shared.occupancy;
    let mut unanswered = channels.end - channels.start;
    for number in channels {
        socket
            .send_subscribe(&shared.layout.channel(number))
            .await?;
    }
    let answers = async {
        while unanswered > 0 {
            let text = socket.next_text().await?;
            let event = ServerEvent::parse(&text).ok_or(FailureCause::UnexpectedMessage)?;
            if socket.answer_ping(&event).await? {
                continue;
            }
            match event.event.as_ref() {
                "pusher_internal:subscription_succeeded" => {
                    occupancy.subscribed.set(occupancy.subscribed.get() + 1);
                }
                "pusher:subscription_error" => {
                    let kind = event.text_field("type").unwrap_or_else(|| "unknown".into());
                    count_key(&mut occupancy.refused.borrow_mut(), kind);
                }
                // The `pusher:error` that may follow a refusal, and anything else.
                _ => continue,
            }
            unanswered -= 1;
        }
        Ok(())
    };
    timeout(shared.step_timeout, answers)
        .await
        .map_err(|_| FailureCause::Timeout)?
}

/// A bystander: subscribes to the bystanders' channel and times the events that arrive there.
async fn bystand(
    shared: Rc<Shared>,
    index: u64,
    permit: OwnedSemaphorePermit,
    stop: watch::Receiver<bool>,
) {
    let occupancy = &shared.occupancy;
    let opened = shared.open(index).await;
    let Opened {
        mut socket,
        activity_timeout,
        ..
    } = match opened {
        Ok(opened) => opened,
        Err(cause) => return occupancy.failed(&occupancy.bystanders, &cause),
    };
    let channel = shared.layout.bystander_channel();
    let subscribed = Box::pin(socket.subscribe(&channel, shared.step_timeout)).await;
    drop(permit);
    if let Err(cause) = subscribed {
        return occupancy.failed(&occupancy.bystanders, &cause);
    }
    occupancy
        .bystanders_subscribed
        .set(occupancy.bystanders_subscribed.get() + 1);
    occupancy.bystanders.settle();
    stay(&shared, socket, activity_timeout, stop, |text| {
        occupancy.receive(text)
    })
    .await;
}

/// Keeps a subscribed connection until told to stop, then closes it; counts it if it ends
/// before.
async fn stay(
    shared: &Shared,
    mut socket: PusherSocket,
    activity_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    on_text: impl FnMut(&str) -> bool,
) {
    let occupancy = &shared.occupancy;
    occupancy.staying.set(occupancy.staying.get() + 1);
    let ended = serve_until_stopped(&mut socket, activity_timeout, &mut stop, on_text).await;
    occupancy.staying.set(occupancy.staying.get() - 1);
    match ended {
        Ok(()) => {
            let _ = socket.close(CLOSE_WAIT).await;
        }
        Err(cause) => count_cause(&mut occupancy.drops.borrow_mut(), &cause),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_split_by_when_they_were_sent() {
        let deliveries = [
            (90, 1_000),
            (100, 2_000),
            (150, 3_000),
            (200, 50_000),
            (250, 7),
        ];
        let (quiet, during) = split_deliveries(&deliveries, 100, 200, 250);
        assert_eq!(quiet.summary().count, 2);
        assert!((quiet.summary().max - 3.0).abs() < 0.01);
        assert_eq!(during.summary().count, 1);
        assert!((during.summary().p50 - 50.0).abs() < 0.1);
    }

    #[test]
    fn listings_are_counted_by_channel() {
        let body = br#"{"channels":{"a":{"subscription_count":1},"b":{"subscription_count":2}}}"#;
        assert_eq!(channels_listed(body), Some(2));
        assert_eq!(channels_listed(b"{}"), None);
    }

    #[test]
    fn occupiers_share_the_channels_out_in_order() {
        let layout = Layout {
            prefix: "hostile-0000abcd".into(),
            channels: 250,
            per_connection: 100,
        };
        assert_eq!(layout.channels_of(0), 0..100);
        assert_eq!(layout.channels_of(2), 200..250);
        assert_eq!(layout.channel(7), "hostile-0000abcd-7");
        assert_eq!(layout.bystander_channel(), "hostile-0000abcd-bystanders");
    }
}
