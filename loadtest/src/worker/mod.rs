//! The side of a run that holds connections: one worker per process, each with its share.

mod churn;
mod connect;
mod fanout;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::cause::FailureCause;
use crate::histogram::LatencyHistogram;
use crate::link::{FromWorker, Progress, WorkerLink, WorkerSpec, WorkerTask};
use crate::pacing::Pacer;
use crate::pusher::{Endpoint, EndpointError, Opened, PusherSocket, ServerEvent};
use crate::source_ips::nth_source;
use crate::tally::{count_cause, CauseCounts, WorkerTally};

/// How often a worker tells the coordinator its counters.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// How long a closing connection waits for the server's close frame.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("the worker outlived its {0:?} lifetime")]
    Lifetime(Duration),
}

/// Runs one worker to the end and reports its tally (or why it has none) over the link.
pub async fn run(spec: WorkerSpec, mut link: WorkerLink) {
    let lifetime = Duration::from_millis(spec.lifetime_ms);
    let outcome = tokio::time::timeout(lifetime, run_task(spec, &mut link))
        .await
        .unwrap_or(Err(WorkerError::Lifetime(lifetime)));
    match outcome {
        Ok(tally) => link.send(FromWorker::Done(Box::new(tally))),
        Err(error) => link.send(FromWorker::Failed(error.to_string())),
    }
}

async fn run_task(spec: WorkerSpec, link: &mut WorkerLink) -> Result<WorkerTally, WorkerError> {
    let context = Rc::new(WorkerContext {
        endpoint: Endpoint::new(&spec.target)?,
        source_ips: spec.source_ips,
        step_timeout: Duration::from_millis(spec.step_timeout_ms),
        in_flight: Arc::new(Semaphore::new(spec.max_in_flight.max(1))),
    });
    Ok(match spec.task {
        WorkerTask::Connect { first, count, rate } => {
            WorkerTally::Connect(connect::run(context, first, count, rate, link).await)
        }
        WorkerTask::Fanout {
            first,
            count,
            rate,
            channels,
            event,
        } => WorkerTally::Fanout(
            fanout::run(context, first, count, rate, channels, event, link).await,
        ),
        WorkerTask::Churn {
            stride,
            offset,
            concurrency,
            rate,
            duration_ms,
            channels,
        } => WorkerTally::Churn(
            churn::run(
                context,
                churn::Schedule {
                    stride,
                    offset,
                    concurrency,
                    rate,
                    duration: Duration::from_millis(duration_ms),
                },
                channels,
                link,
            )
            .await,
        ),
    })
}

/// What every connection of a worker shares.
pub struct WorkerContext {
    endpoint: Endpoint,
    source_ips: Vec<IpAddr>,
    step_timeout: Duration,
    /// Bounds the handshakes in progress, so a slow server meets a queue here rather than
    /// thousands of half-open sockets.
    in_flight: Arc<Semaphore>,
}

impl WorkerContext {
    /// Opens connection `index` (global numbering) from the next source address in turn. Boxed
    /// because the opening future is large and over before the connection idles, while a task
    /// is sized by its largest state for as long as it lives.
    async fn open(&self, index: u64) -> Result<Opened, FailureCause> {
        Box::pin(PusherSocket::open(
            &self.endpoint,
            nth_source(&self.source_ips, index),
            self.step_timeout,
        ))
        .await
    }
}

/// The counters of a ramp: attempts paced at a rate until each has succeeded or failed.
struct Ramp {
    total: u64,
    started: Instant,
    attempted: Cell<u64>,
    established: Cell<u64>,
    open: Cell<u64>,
    peak_open: Cell<u64>,
    settled: Cell<u64>,
    failed: Cell<u64>,
    dropped: Cell<u64>,
    finished_after: Cell<Option<Duration>>,
    all_settled: Notify,
    failures: RefCell<CauseCounts>,
    drops: RefCell<CauseCounts>,
    connect_latency: RefCell<LatencyHistogram>,
    handshake_latency: RefCell<LatencyHistogram>,
}

impl Ramp {
    fn new(total: u64) -> Self {
        Ramp {
            total,
            started: Instant::now(),
            attempted: Cell::new(0),
            established: Cell::new(0),
            open: Cell::new(0),
            peak_open: Cell::new(0),
            settled: Cell::new(0),
            failed: Cell::new(0),
            dropped: Cell::new(0),
            finished_after: Cell::new(None),
            all_settled: Notify::new(),
            failures: RefCell::new(CauseCounts::new()),
            drops: RefCell::new(CauseCounts::new()),
            connect_latency: RefCell::new(LatencyHistogram::default()),
            handshake_latency: RefCell::new(LatencyHistogram::default()),
        }
    }

    fn opened(&self, opened: &Opened) {
        self.established.set(self.established.get() + 1);
        self.open.set(self.open.get() + 1);
        self.peak_open
            .set(self.peak_open.get().max(self.open.get()));
        self.connect_latency
            .borrow_mut()
            .record(opened.connect_time);
        self.handshake_latency
            .borrow_mut()
            .record(opened.handshake_time);
    }

    /// An attempt failed; `was_open` when it failed after the connection was established.
    fn failed(&self, cause: &FailureCause, was_open: bool) {
        if was_open {
            self.open.set(self.open.get() - 1);
        }
        self.failed.set(self.failed.get() + 1);
        count_cause(&mut self.failures.borrow_mut(), cause);
        self.settle();
    }

    /// An attempt is over, one way or the other.
    fn settle(&self) {
        self.settled.set(self.settled.get() + 1);
        if self.settled.get() == self.total {
            self.finished_after.set(Some(self.started.elapsed()));
            self.all_settled.notify_one();
        }
    }

    /// An established connection ended, by `cause` if it was not asked to.
    fn closed(&self, cause: Option<&FailureCause>) {
        self.open.set(self.open.get() - 1);
        if let Some(cause) = cause {
            self.dropped.set(self.dropped.get() + 1);
            count_cause(&mut self.drops.borrow_mut(), cause);
        }
    }

    fn progress(&self) -> Progress {
        Progress {
            attempted: self.attempted.get(),
            open: self.open.get(),
            failed: self.failed.get(),
            dropped: self.dropped.get(),
            ..Progress::default()
        }
    }

    /// Starts `make(index, permit)` for indices `first..first + total` at `rate` per second,
    /// each holding an in-flight permit until its handshake is over.
    async fn run<T, F, Attempt>(
        &self,
        context: &WorkerContext,
        first: u64,
        rate: f64,
        tasks: &mut JoinSet<T>,
        mut make: F,
    ) where
        T: 'static,
        F: FnMut(u64, OwnedSemaphorePermit) -> Attempt,
        Attempt: Future<Output = T> + 'static,
    {
        let mut pacer = Pacer::new(rate);
        let end = first + self.total;
        let mut next = first;
        while next < end {
            let batch = pacer.next_batch().await;
            for _ in 0..batch {
                if next == end {
                    break;
                }
                let Ok(permit) = context.in_flight.clone().acquire_owned().await else {
                    return;
                };
                self.attempted.set(self.attempted.get() + 1);
                tasks.spawn_local(make(next, permit));
                next += 1;
            }
        }
    }
}

/// Keeps a connection alive until `stop`: answers the server's `pusher:ping` and pings after
/// `activity_timeout` of silence. Every text frame goes to `on_text` first, which returns
/// whether it was the frame's only consumer.
///
/// The stop signal and the silence timer are created once rather than per frame: under fanout
/// every connection takes thousands of frames, and re-registering both each time showed up as
/// a large share of the client's time.
pub async fn serve_until_stopped(
    socket: &mut PusherSocket,
    activity_timeout: Duration,
    stop: &mut watch::Receiver<bool>,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<(), FailureCause> {
    let stopped = stop.wait_for(|stopped| *stopped);
    tokio::pin!(stopped);
    let silence = tokio::time::sleep(activity_timeout);
    tokio::pin!(silence);
    let mut last_activity = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => return Ok(()),
            text = socket.next_text() => {
                last_activity = Instant::now();
                let text = text?;
                if on_text(&text) {
                    continue;
                }
                if let Some(event) = ServerEvent::parse(&text) {
                    socket.answer_ping(&event).await?;
                }
            }
            () = &mut silence => {
                // The timer is moved on only when it fires, not on every frame.
                let silent_since = last_activity + activity_timeout;
                if Instant::now() >= silent_since {
                    socket.ping().await?;
                    last_activity = Instant::now();
                    silence.as_mut().reset((last_activity + activity_timeout).into());
                } else {
                    silence.as_mut().reset(silent_since.into());
                }
            }
        }
    }
}

/// Sends progress every `PROGRESS_INTERVAL`.
fn progress_ticker() -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticker
}
