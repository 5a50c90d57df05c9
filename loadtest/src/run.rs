//! The coordinator: starts the workers, drives the phases of a run, samples the server, prints
//! progress once a second and merges what the workers counted into the report.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::spawn_local;

use crate::handshakes::run_handshakes;
use crate::hostile::run_hostile;
use crate::link::{
    ChannelPublished, FromWorker, LinkError, Progress, ToWorker, WorkerPool, WorkerTask,
};
use crate::metrics::{cpu_seconds, fetch_gauge, resident_kib, MetricsError};
use crate::plan::{ChurnPlan, Common, ConnectPlan, FanoutPlan, Gauge, Plan};
use crate::publish::{publish, PublishPlan};
use crate::pusher::EndpointError;
use crate::report::{
    per_second, round3, ChurnReport, ConnectReport, FanoutReport, GaugeReport, Report, ServerMemory,
};
use crate::tally::{ChurnTally, ConnectTally, FanoutTally, WorkerTally};

const PRINT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the churn coordinator samples the connection gauge.
const GAUGE_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("worker {index} failed: {message}")]
    Worker { index: usize, message: String },
    #[error("worker {0} answered with the figures of another kind of run")]
    WrongTally(usize),
    #[error("every worker is gone before the run ended")]
    WorkersGone,
    #[error("the run reached --max-duration ({0:?}) and was stopped")]
    MaxDuration(Duration),
    #[error("server memory or CPU time: {0}")]
    Memory(#[from] MetricsError),
    #[error(transparent)]
    Setup(#[from] EndpointError),
}

/// The workers and what they last said.
struct Fleet {
    pool: WorkerPool,
    progress: Vec<Progress>,
    subscribed_per_channel: Vec<Option<Vec<u64>>>,
    tallies: Vec<Option<WorkerTally>>,
    started: Instant,
    next_print: Instant,
    show_progress: bool,
}

impl Fleet {
    async fn start(common: &Common, tasks: Vec<WorkerTask>) -> Result<Fleet, RunError> {
        let specs = tasks
            .into_iter()
            .zip(0u32..)
            .map(|(task, index)| common.worker_spec(index, task))
            .collect();
        let pool = WorkerPool::start(specs).await?;
        let workers = pool.len();
        let started = Instant::now();
        Ok(Fleet {
            pool,
            progress: vec![Progress::default(); workers],
            subscribed_per_channel: vec![None; workers],
            tallies: vec![None; workers],
            started,
            next_print: started + PRINT_INTERVAL,
            show_progress: common.show_progress,
        })
    }

    fn total(&self) -> Progress {
        let mut total = Progress::default();
        for progress in &self.progress {
            total += *progress;
        }
        total
    }

    fn all_ready(&self) -> bool {
        self.subscribed_per_channel.iter().all(Option::is_some)
    }

    fn all_done(&self) -> bool {
        self.tallies.iter().all(Option::is_some)
    }

    /// Handles worker events until `until` holds (true) or `pause` passes (false), printing
    /// `line` once a second. The run as a whole is bounded by `--max-duration` in `run`.
    async fn pump(
        &mut self,
        pause: Option<Instant>,
        until: impl Fn(&Fleet) -> bool,
        line: &mut dyn FnMut(&Progress) -> String,
    ) -> Result<bool, RunError> {
        loop {
            if until(self) {
                return Ok(true);
            }
            tokio::select! {
                event = self.pool.next_event() => {
                    let (index, event) = event.ok_or(RunError::WorkersGone)?;
                    self.apply(index, event)?;
                }
                () = tokio::time::sleep_until(self.next_print.into()) => {
                    // Seconds spent outside `pump` are skipped, not printed in a burst.
                    self.next_print = (self.next_print + PRINT_INTERVAL).max(Instant::now());
                    if self.show_progress {
                        let elapsed = self.started.elapsed().as_secs();
                        eprintln!("[{elapsed:>4}s] {}", line(&self.total()));
                    }
                }
                () = sleep_until_or_never(pause) => return Ok(false),
            }
        }
    }

    fn apply(&mut self, index: usize, event: FromWorker) -> Result<(), RunError> {
        match event {
            FromWorker::Progress(progress) => {
                if let Some(slot) = self.progress.get_mut(index) {
                    *slot = progress;
                }
            }
            FromWorker::Ready {
                subscribed_per_channel,
            } => {
                if let Some(slot) = self.subscribed_per_channel.get_mut(index) {
                    *slot = Some(subscribed_per_channel);
                }
            }
            FromWorker::Done(tally) => {
                if let Some(slot) = self.tallies.get_mut(index) {
                    *slot = Some(*tally);
                }
            }
            FromWorker::Failed(message) => return Err(RunError::Worker { index, message }),
        }
        Ok(())
    }

    async fn finish(
        &mut self,
        published: Option<Vec<ChannelPublished>>,
        line: &mut dyn FnMut(&Progress) -> String,
    ) -> Result<Vec<WorkerTally>, RunError> {
        self.pool.broadcast(&ToWorker::Finish { published });
        self.pump(None, Fleet::all_done, line).await?;
        Ok(self.tallies.iter_mut().filter_map(Option::take).collect())
    }
}

async fn sleep_until_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

fn rate_tracker() -> impl FnMut(u64) -> u64 {
    let mut last = 0;
    move |now| {
        let delta = now.saturating_sub(last);
        last = now;
        delta
    }
}

fn tasks_for_shares(
    common: &Common,
    total: u64,
    rate: f64,
    make: impl Fn(u64, u64, f64) -> WorkerTask,
) -> Vec<WorkerTask> {
    common
        .shares(total)
        .into_iter()
        .map(|(first, count)| make(first, count, rate * count as f64 / total as f64))
        .collect()
}

pub fn base_report(
    common: &Common,
    command: &str,
    started_unix_ms: u64,
    started: Instant,
) -> Report {
    Report {
        command: command.into(),
        url: common.url.to_string(),
        workers: common.workers,
        source_ips: common.source_ips.len(),
        started_unix_ms,
        elapsed_seconds: round3(started.elapsed().as_secs_f64()),
        clean: false,
        connect: None,
        fanout: None,
        churn: None,
        handshakes: None,
        hostile: None,
        server_memory: None,
    }
}

pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The server's pid and VmRSS before the run, with `--server-pid`.
fn resident_before(common: &Common) -> Result<Option<(u32, u64)>, RunError> {
    Ok(match common.server_pid {
        Some(pid) => Some((pid, resident_kib(pid)?)),
        None => None,
    })
}

/// Before and now, for `ServerMemory`.
fn resident_now(before: Option<(u32, u64)>) -> Result<Option<(u32, u64, u64)>, RunError> {
    Ok(match before {
        Some((pid, rss_before)) => Some((pid, rss_before, resident_kib(pid)?)),
        None => None,
    })
}

fn server_memory(
    readings: Option<(u32, u64, u64)>,
    connections: Option<u64>,
) -> Option<ServerMemory> {
    readings.map(|(pid, before, after)| ServerMemory::new(pid, before, after, connections))
}

/// Runs the plan within `--max-duration`; past it the run is abandoned, which kills its worker
/// processes.
pub async fn run(plan: Plan) -> Result<Report, RunError> {
    let max_duration = plan.common().max_duration;
    let running = async {
        match plan {
            Plan::Connect(plan) => run_connect(plan).await,
            Plan::Fanout(plan) => run_fanout(plan).await,
            Plan::Churn(plan) => run_churn(plan).await,
            Plan::Handshakes(plan) => run_handshakes(plan).await,
            Plan::Hostile(plan) => run_hostile(plan).await,
        }
    };
    tokio::time::timeout(max_duration, running)
        .await
        .unwrap_or(Err(RunError::MaxDuration(max_duration)))
}

async fn run_connect(plan: ConnectPlan) -> Result<Report, RunError> {
    let started_unix_ms = unix_millis();
    let started = Instant::now();
    let common = &plan.common;
    let rss_before = resident_before(common)?;
    let tasks = tasks_for_shares(common, plan.connections, plan.rate, |first, count, rate| {
        WorkerTask::Connect { first, count, rate }
    });
    let mut fleet = Fleet::start(common, tasks).await?;
    let mut opened = rate_tracker();
    let requested = plan.connections;
    let mut line = |total: &Progress| {
        format!(
            "open {} of {requested}  (+{}/s)  failed {}  dropped {}",
            total.open,
            opened(total.attempted),
            total.failed,
            total.dropped
        )
    };
    fleet.pump(None, Fleet::all_ready, &mut line).await?;
    let hold_end = Instant::now() + plan.hold;
    fleet.pump(Some(hold_end), |_| false, &mut line).await?;
    let (server_gauge, gauge_error) = match &plan.gauge {
        Some(gauge) => match fetch_gauge(&gauge.endpoint, &gauge.metric, common.step_timeout).await
        {
            Ok(value) => (Some(value), None),
            Err(error) => (None, Some(error.to_string())),
        },
        None => (None, None),
    };
    let rss_readings = resident_now(rss_before)?;
    let mut merged = ConnectTally::default();
    for (index, tally) in fleet.finish(None, &mut line).await?.into_iter().enumerate() {
        match tally {
            WorkerTally::Connect(tally) => merged.merge(&tally),
            _ => return Err(RunError::WrongTally(index)),
        }
    }
    let ramp_seconds = merged.ramp_micros as f64 / 1e6;
    let clean = merged.failures.is_empty() && merged.drops.is_empty() && merged.held == requested;
    let mut report = base_report(common, "connect", started_unix_ms, started);
    report.clean = clean;
    report.server_memory = server_memory(rss_readings, Some(merged.held));
    report.connect = Some(ConnectReport {
        requested,
        rate_target: plan.rate,
        hold_seconds: plan.hold.as_secs_f64(),
        attempted: merged.attempted,
        established: merged.established,
        reached: merged.peak_open,
        held: merged.held,
        connects_per_second: per_second(merged.established, ramp_seconds),
        ramp_seconds: round3(ramp_seconds),
        failures: merged.failures,
        drops: merged.drops,
        connect_latency_ms: merged.connect_latency.summary(),
        handshake_latency_ms: merged.handshake_latency.summary(),
        server_gauge_during_hold: server_gauge,
        gauge_error,
    });
    Ok(report)
}

async fn run_fanout(plan: FanoutPlan) -> Result<Report, RunError> {
    let started_unix_ms = unix_millis();
    let started = Instant::now();
    let common = &plan.common;
    let rss_before = resident_before(common)?;
    let channels = plan.channels.clone();
    let event = plan.event.clone();
    let tasks = tasks_for_shares(common, plan.subscribers, plan.rate, |first, count, rate| {
        WorkerTask::Fanout {
            first,
            count,
            rate,
            channels: channels.clone(),
            event: event.clone(),
        }
    });
    let mut fleet = Fleet::start(common, tasks).await?;
    let published_so_far = Rc::new(Cell::new(0u64));
    let mut delivered = rate_tracker();
    let requested = plan.subscribers;
    let published_counter = published_so_far.clone();
    let mut line = |total: &Progress| {
        format!(
            "open {} of {requested}  failed {}  dropped {}  published {}  delivered {} (+{}/s)",
            total.open,
            total.failed,
            total.dropped,
            published_counter.get(),
            total.deliveries,
            delivered(total.deliveries)
        )
    };
    fleet.pump(None, Fleet::all_ready, &mut line).await?;
    let mut subscribed_per_channel = vec![0u64; plan.channels.len()];
    for counts in fleet.subscribed_per_channel.iter().flatten() {
        for (total, count) in subscribed_per_channel.iter_mut().zip(counts) {
            *total += count;
        }
    }

    // The server's CPU from the first publish to the last delivery: what delivering took,
    // without the subscribers' connections and subscriptions before it.
    let cpu_before = common.server_pid.map(cpu_seconds).transpose()?;
    let publishing = publish(PublishPlan {
        endpoint: Rc::new(plan.api),
        credentials: Rc::new(plan.credentials.clone()),
        event: plan.event.as_str().into(),
        channels: plan.channels.clone(),
        rate: plan.publish_rate,
        duration: plan.duration,
        connections: plan.publishers,
        payload_bytes: plan.payload_bytes,
        step_timeout: common.step_timeout,
        attempted: published_so_far.clone(),
    });
    tokio::pin!(publishing);
    let published = tokio::select! {
        outcome = &mut publishing => outcome,
        failed = fleet.pump(None, |_| false, &mut line) => {
            failed?;
            return Err(RunError::WorkersGone);
        }
    };

    let expected: u64 = published
        .per_channel
        .iter()
        .zip(&subscribed_per_channel)
        .map(|(channel, subscribers)| {
            channel
                .published
                .saturating_sub(channel.failed.len() as u64)
                * subscribers
        })
        .sum();
    let drain_end = Instant::now() + plan.drain_timeout;
    fleet
        .pump(
            Some(drain_end),
            |fleet| fleet.total().deliveries >= expected,
            &mut line,
        )
        .await?;
    let server_cpu = match (common.server_pid, cpu_before) {
        (Some(pid), Some(before)) => Some(cpu_seconds(pid)? - before),
        _ => None,
    };
    let subscribed_now = fleet.total().open;
    let memory = server_memory(resident_now(rss_before)?, Some(subscribed_now));
    let mut merged = FanoutTally::default();
    let tallies = fleet
        .finish(Some(published.per_channel.clone()), &mut line)
        .await?;
    for (index, tally) in tallies.into_iter().enumerate() {
        match tally {
            WorkerTally::Fanout(tally) => merged.merge(&tally),
            _ => return Err(RunError::WrongTally(index)),
        }
    }

    let publish_seconds = published.elapsed.as_secs_f64();
    let last_delivery = merged
        .last_delivery_unix_micros
        .max(published.started_unix_micros);
    let window = (last_delivery - published.started_unix_micros) as f64 / 1e6;
    let window = window.max(publish_seconds);
    let clean = merged.subscribed == requested
        && merged.drops.is_empty()
        && published.failures.is_empty()
        && merged.lost == 0
        && merged.duplicated == 0
        && merged.out_of_order == 0
        && merged.malformed == 0
        && merged.deliveries == expected;
    let mut report = base_report(common, "fanout", started_unix_ms, started);
    report.clean = clean;
    report.server_memory = memory;
    report.fanout = Some(FanoutReport {
        subscribers_requested: requested,
        subscribed: merged.subscribed,
        channels: plan.channels.len(),
        subscribe_failures: merged.failures,
        drops: merged.drops,
        publish_rate_target: plan.publish_rate,
        publish_seconds: round3(publish_seconds),
        publishes_attempted: published.attempted,
        publishes_accepted: published.accepted,
        publish_failures: published.failures,
        publishes_per_second: per_second(published.attempted, publish_seconds),
        publish_latency_ms: published.latency.summary(),
        publish_answer_ms: Some(published.answer_latency.summary()).filter(|s| s.count > 0),
        expected_deliveries: expected,
        deliveries: merged.deliveries,
        delivery_window_seconds: round3(window),
        deliveries_per_second: per_second(merged.deliveries, window),
        server_cpu_seconds: server_cpu.map(round3),
        server_cpu_seconds_per_million: server_cpu
            .filter(|_| merged.deliveries > 0)
            .map(|cpu| round3(cpu * 1e6 / merged.deliveries as f64)),
        latency_ms: merged.latency.summary(),
        lost: merged.lost,
        duplicated: merged.duplicated,
        out_of_order: merged.out_of_order,
        malformed: merged.malformed,
        subscribers_with_loss: merged.subscribers_with_loss,
        subscribers_with_duplicates: merged.subscribers_with_duplicates,
        subscribers_out_of_order: merged.subscribers_out_of_order,
        affected_subscribers: merged.affected,
        connect_latency_ms: merged.connect_latency.summary(),
        handshake_latency_ms: merged.handshake_latency.summary(),
    });
    Ok(report)
}

/// Samples the gauge in the background, keeping the latest value and the peak.
struct GaugeWatch {
    latest: Rc<Cell<Option<u64>>>,
    peak: Rc<Cell<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl GaugeWatch {
    fn start(gauge: Rc<Gauge>, step_timeout: Duration, baseline: u64) -> GaugeWatch {
        let latest = Rc::new(Cell::new(Some(baseline)));
        let peak = Rc::new(Cell::new(baseline));
        let task = spawn_local({
            let latest = latest.clone();
            let peak = peak.clone();
            async move {
                let mut ticker = tokio::time::interval(GAUGE_INTERVAL);
                loop {
                    ticker.tick().await;
                    let value = fetch_gauge(&gauge.endpoint, &gauge.metric, step_timeout)
                        .await
                        .ok();
                    latest.set(value);
                    if let Some(value) = value {
                        peak.set(peak.get().max(value));
                    }
                }
            }
        });
        GaugeWatch { latest, peak, task }
    }
}

impl Drop for GaugeWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_churn(plan: ChurnPlan) -> Result<Report, RunError> {
    let started_unix_ms = unix_millis();
    let started = Instant::now();
    let common = &plan.common;
    let rss_before = resident_before(common)?;
    let gauge = Rc::new(plan.gauge);
    let baseline = fetch_gauge(&gauge.endpoint, &gauge.metric, common.step_timeout).await;
    let watch = match &baseline {
        Ok(baseline) => Some(GaugeWatch::start(
            gauge.clone(),
            common.step_timeout,
            *baseline,
        )),
        Err(_) => None,
    };
    let stride = u64::from(common.workers);
    let tasks = common
        .shares(plan.concurrency)
        .into_iter()
        .zip(0u64..)
        .map(|((_, concurrency), offset)| WorkerTask::Churn {
            stride,
            offset,
            concurrency,
            rate: plan.rate * concurrency as f64 / plan.concurrency as f64,
            duration_ms: u64::try_from(plan.duration.as_millis()).unwrap_or(u64::MAX),
            channels: plan.channels.clone(),
        })
        .collect();
    let mut fleet = Fleet::start(common, tasks).await?;
    let mut cycles = rate_tracker();
    let latest_gauge = watch.as_ref().map(|watch| watch.latest.clone());
    let mut line = |total: &Progress| {
        let gauge = latest_gauge
            .as_ref()
            .and_then(|latest| latest.get())
            .map_or("?".to_string(), |value| value.to_string());
        format!(
            "cycles {} ok (+{}/s)  {} failed  {} throttled  in progress {}  server gauge {gauge}",
            total.cycles_succeeded,
            cycles(total.cycles_succeeded + total.cycles_failed),
            total.cycles_failed,
            total.throttled,
            total.open
        )
    };
    fleet.pump(None, Fleet::all_done, &mut line).await?;
    let mut merged = ChurnTally::default();
    for (index, tally) in fleet
        .tallies
        .iter_mut()
        .filter_map(Option::take)
        .enumerate()
    {
        match tally {
            WorkerTally::Churn(tally) => merged.merge(&tally),
            _ => return Err(RunError::WrongTally(index)),
        }
    }
    let peak = watch.as_ref().map(|watch| watch.peak.get());
    drop(watch);

    let (gauge_report, gauge_error) = match baseline {
        Ok(baseline) => {
            let settle_started = Instant::now();
            let settle_end = settle_started + plan.settle_timeout;
            let mut after_churn = None;
            let mut last: Option<u64>;
            loop {
                match fetch_gauge(&gauge.endpoint, &gauge.metric, common.step_timeout).await {
                    Ok(value) => {
                        after_churn.get_or_insert(value);
                        last = Some(value);
                        if value == baseline {
                            break;
                        }
                    }
                    Err(_) => last = None,
                }
                if Instant::now() >= settle_end {
                    break;
                }
                tokio::time::sleep(GAUGE_INTERVAL / 2).await;
            }
            match last {
                Some(settled) => (
                    Some(GaugeReport {
                        metric: gauge.metric.clone(),
                        baseline,
                        peak: peak.unwrap_or(baseline).max(after_churn.unwrap_or(settled)),
                        after_churn: after_churn.unwrap_or(settled),
                        settled,
                        returned_to_baseline: settled == baseline,
                        settle_seconds: round3(settle_started.elapsed().as_secs_f64()),
                    }),
                    None,
                ),
                None => (
                    None,
                    Some("the metrics page stopped answering after the churn".to_string()),
                ),
            }
        }
        Err(error) => (None, Some(error.to_string())),
    };
    let memory = server_memory(resident_now(rss_before)?, None);
    let failed = merged.attempted - merged.succeeded;
    let clean = failed == 0
        && merged.attempted > 0
        && gauge_report
            .as_ref()
            .is_some_and(|gauge| gauge.returned_to_baseline);
    let duration_seconds = plan.duration.as_secs_f64();
    let mut report = base_report(common, "churn", started_unix_ms, started);
    report.clean = clean;
    report.server_memory = memory;
    report.churn = Some(ChurnReport {
        concurrency: plan.concurrency,
        rate_target: plan.rate,
        duration_seconds,
        attempted: merged.attempted,
        succeeded: merged.succeeded,
        failed,
        success_rate: if merged.attempted == 0 {
            0.0
        } else {
            round3(merged.succeeded as f64 / merged.attempted as f64)
        },
        throttled: merged.throttled,
        failures: merged.failures,
        cycles_per_second: per_second(merged.attempted, duration_seconds),
        cycle_latency_ms: merged.cycle_latency.summary(),
        connect_latency_ms: merged.connect_latency.summary(),
        handshake_latency_ms: merged.handshake_latency.summary(),
        gauge: gauge_report,
        gauge_error,
    });
    Ok(report)
}
